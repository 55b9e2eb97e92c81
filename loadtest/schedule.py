"""Stepped concurrency, without Locust: the schedule arithmetic and the recorder of real step
boundaries. (Importing Locust monkey-patches the process with gevent, so the sweep runner and the
tests use this module; ``loadtest/shapes.py`` wraps it in a Locust ``LoadTestShape``.)

A schedule is a list of steps ``(users, seconds)``; the first ``warmup_seconds`` of every step are
not measured (the new users are connecting, queues are filling). ``StepTracker`` records, with
``time.time_ns()``, when each step actually began and ended: Locust polls a shape about once a
second, so real boundaries differ from the plan by up to a second, and the analysis must use the
recorded ones (``steps.parquet``), not the plan.

Schedule syntax (CLI ``--overhead-steps`` / env ``OVERHEAD_STEPS``): ``"1,2,4,8"`` with a common
step length, or per-step lengths ``"1:20,2:20,4:30"``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass



@dataclass(frozen=True)
class StepSchedule:
    steps: tuple[tuple[int, float], ...]  # (users, seconds)
    warmup_seconds: float = 0.0

    def __post_init__(self):
        if not self.steps:
            raise ValueError("a step schedule needs at least one step")
        for users, seconds in self.steps:
            if users < 1 or seconds <= 0:
                raise ValueError(f"bad step ({users} users, {seconds} s): users >= 1, seconds > 0")
        if not 0 <= self.warmup_seconds:
            raise ValueError("warmup_seconds must be >= 0")
        for _, seconds in self.steps:
            if self.warmup_seconds >= seconds:
                raise ValueError(f"warm-up ({self.warmup_seconds} s) must be shorter than every "
                                 f"step ({seconds} s)")

    @classmethod
    def parse(cls, spec: str, step_seconds: float, warmup_seconds: float = 0.0) -> "StepSchedule":
        steps = []
        for item in str(spec).replace(" ", "").split(","):
            if not item:
                continue
            users, _, seconds = item.partition(":")
            steps.append((int(users), float(seconds) if seconds else float(step_seconds)))
        return cls(tuple(steps), float(warmup_seconds))

    @property
    def users(self) -> list[int]:
        return [u for u, _ in self.steps]

    @property
    def total_seconds(self) -> float:
        return sum(s for _, s in self.steps)

    def boundaries(self) -> list[float]:
        """Planned start offsets (s) of each step, plus the end of the last one."""
        out, t = [0.0], 0.0
        for _, seconds in self.steps:
            t += seconds
            out.append(t)
        return out

    def step_at(self, t: float) -> int | None:
        """Index of the step planned at ``t`` seconds after the start, None when finished."""
        if t < 0:
            return 0
        b = self.boundaries()
        for i in range(len(self.steps)):
            if t < b[i + 1]:
                return i
        return None

    def planned(self, start_ns: int) -> list[dict]:
        """The plan as steps.parquet rows, for a given start time (used only as a fallback)."""
        b = self.boundaries()
        w = int(self.warmup_seconds * 1e9)
        return [dict(step=i, users=u, start_ns=start_ns + int(b[i] * 1e9),
                     measure_start_ns=start_ns + int(b[i] * 1e9) + w,
                     end_ns=start_ns + int(b[i + 1] * 1e9))
                for i, (u, _) in enumerate(self.steps)]


def schedule_from_options(options=None) -> StepSchedule:
    """The schedule from Locust's parsed options (which already fold in the OVERHEAD_* env vars),
    else from the environment; with neither, one step of ``-u`` users for ``-t`` (or forever)."""
    def opt(name, env, default=None):
        v = getattr(options, name, None) if options is not None else None
        if v in (None, ""):
            v = os.environ.get(env, default)
        return v

    spec = opt("overhead_steps", "OVERHEAD_STEPS")
    step_seconds = float(opt("overhead_step_seconds", "OVERHEAD_STEP_SECONDS", 20))
    warmup = float(opt("overhead_warmup_seconds", "OVERHEAD_WARMUP_SECONDS", 0))
    if spec:
        return StepSchedule.parse(spec, step_seconds, warmup)
    users = int(getattr(options, "num_users", None) or 1)
    run_time = getattr(options, "run_time", None) or float("inf")
    return StepSchedule(((users, float(run_time)),), 0.0)


class StepTracker:
    """Follows a schedule from elapsed seconds and records each step's real boundaries
    (``rows``: steps.parquet rows; ``end_ns`` is None while a step runs)."""

    def __init__(self, schedule: StepSchedule):
        self.schedule = schedule
        self.rows: list[dict] = []
        self.current: int | None = None
        self.finished = False

    def observe(self, elapsed_s: float, now_ns: int | None = None) -> int | None:
        """The step to run at ``elapsed_s``; a change of step is stamped with ``now_ns``."""
        if self.finished:
            return None
        i = self.schedule.step_at(elapsed_s)
        if i != self.current:
            now = time.time_ns() if now_ns is None else now_ns
            self._close(now)
            if i is not None:
                self.rows.append(dict(step=i, users=self.schedule.steps[i][0], start_ns=now,
                                      measure_start_ns=now + int(self.schedule.warmup_seconds * 1e9),
                                      end_ns=None))
            self.current = i
        if i is None:
            self.finished = True
        return i

    def _close(self, now_ns: int) -> None:
        if self.rows and self.rows[-1]["end_ns"] is None:
            last = self.rows[-1]
            last["end_ns"] = now_ns
            last["measure_start_ns"] = min(last["measure_start_ns"], now_ns)

    def finish(self, now_ns: int | None = None) -> list[dict]:
        """Close the running step (the test stopped, early or on schedule); all rows."""
        self._close(time.time_ns() if now_ns is None else now_ns)
        self.finished = True
        return self.rows

    def progress(self) -> dict:
        s, cur = self.schedule, (self.rows[-1] if self.rows else None)
        return dict(step=self.current, steps=len(s.steps), users=cur["users"] if cur else 0,
                    step_start_ns=cur["start_ns"] if cur else None,
                    step_seconds=s.steps[self.current][1] if self.current is not None else None,
                    total_seconds=s.total_seconds, finished=self.finished)

