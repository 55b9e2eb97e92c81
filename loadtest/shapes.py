"""The Locust ``LoadTestShape`` for stepped concurrency (imports Locust: use it only inside the
Locust process; the schedule arithmetic lives in ``loadtest/schedule.py``).

``StepShape`` runs the schedule given by ``--overhead-steps`` / ``--overhead-step-seconds`` /
``--overhead-warmup-seconds`` (or the ``OVERHEAD_*`` env vars), holding a step past its planned
end while the locustfile's stability check says it is not stable yet, and records each step's
real start and end with the spans' clock (``StepTracker``); the locustfile writes them to steps.parquet.
"""
from __future__ import annotations

from locust import LoadTestShape

from loadtest.schedule import StepSchedule, StepTracker, schedule_from_options

SPAWN_RATE = 100.0  # users per second when a step changes: every step starts at once


class StepShape(LoadTestShape):
    # set by the locustfile when steps are extended until stable:
    # {"check": fn(row, now_ns) -> Verdict, "max_seconds": float}
    stability: dict | None = None
    # set by the locustfile in open loop: on_step_end(end_ns) when a step other than the last ends
    on_step_end = None

    def __init__(self, schedule: StepSchedule | None = None):
        super().__init__()
        self.schedule = schedule
        self.tracker: StepTracker | None = None

    def _ensure(self) -> StepTracker:
        if self.tracker is None:
            if self.schedule is None:
                env = getattr(self.runner, "environment", None)
                self.schedule = schedule_from_options(getattr(env, "parsed_options", None))
            st = type(self).stability or {}
            self.tracker = StepTracker(self.schedule, check=st.get("check"),
                                       max_seconds=st.get("max_seconds"))
        return self.tracker

    def reset_time(self):
        super().reset_time()
        self.tracker = None

    def tick(self):
        tracker = self._ensure()
        closed = len(tracker.rows)
        i = tracker.observe(self.get_run_time())
        if type(self).on_step_end is not None and 0 < closed < len(tracker.rows):
            type(self).on_step_end(tracker.rows[closed - 1]["end_ns"])   # a step ended, not the last
        return None if i is None else (self.schedule.steps[i][0], SPAWN_RATE)

    @property
    def steps(self) -> list[dict]:
        return self.tracker.rows if self.tracker else []

    def finish(self) -> list[dict]:
        return self.tracker.finish() if self.tracker else []

    def progress(self) -> dict:
        return self.tracker.progress() if self.tracker else {}
