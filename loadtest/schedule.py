"""Stepped concurrency, without Locust: the schedule arithmetic and the recorder of real step
boundaries. (Importing Locust monkey-patches the process with gevent, so the sweep runner and the
tests use this module; ``loadtest/shapes.py`` wraps it in a Locust ``LoadTestShape``.)

A schedule is a list of steps ``(users, seconds)``; the first ``warmup_seconds`` of every step are
not measured (the new users are connecting, queues are filling). ``StepTracker`` records, with
the spans' clock (``overhead.contract.clock``), when each step actually began and ended: Locust
polls a shape about once a second, so real boundaries differ from the plan by up to a second, and the analysis must use the
recorded ones (``steps.parquet``), not the plan.

Schedule syntax (CLI ``--overhead-steps`` / env ``OVERHEAD_STEPS``): ``"1,2,4,8"`` with a common
step length, or per-step lengths ``"1:20,2:20,4:30"``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from overhead.contract.clock import now_ns as clock_ns  # the spans' clock



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

    def __init__(self, schedule: StepSchedule, check=None, max_seconds: float | None = None):
        """``check(row, now_ns)``, if given, judges the running step when its planned time is up
        (an ``overhead.contract.stability.Verdict``); a step that is not ``valid`` (stable, with enough
        requests) is held, re-checked at every poll, up to ``max_seconds`` from its start. With a
        check, each step's planned length counts from its real start. ``verdicts``: step → the
        last verdict (as a dict) plus ``extended_s``."""
        self.schedule = schedule
        self.rows: list[dict] = []
        self.current: int | None = None
        self.finished = False
        self.check = check
        self.max_seconds = max_seconds
        self.verdicts: dict[int, dict] = {}
        self._shift = 0.0            # seconds the plan has been pushed back by held steps
        self._start_elapsed = 0.0

    def _hold(self, elapsed_s: float, now_ns: int) -> bool:
        """At the planned end of the current step: judge it; True to keep running it."""
        cur = self.current
        verdict = self.check(self.rows[-1], now_ns)
        ran = elapsed_s - self._start_elapsed
        planned = self.schedule.steps[cur][1]
        limit = max(self.max_seconds or 0.0, planned)
        hold = not verdict.valid and ran < limit
        d = {k: getattr(verdict, k) for k in ("stable", "enough_requests", "requests", "reason",
                                              "throughput_spread", "p50_spread")}
        d.update(valid=verdict.valid, extended_s=round(max(ran - planned, 0.0), 3), checked_ns=now_ns,
                 held=hold)
        self.verdicts[cur] = d
        if hold:
            self._shift = max(self._shift, elapsed_s - self.schedule.boundaries()[cur + 1])
        return hold

    def observe(self, elapsed_s: float, now_ns: int | None = None) -> int | None:
        """The step to run at ``elapsed_s``; a change of step is stamped with ``now_ns``."""
        if self.finished:
            return None
        i = self.schedule.step_at(elapsed_s - self._shift)
        if i != self.current and self.check is not None and self.current is not None:
            if self._hold(elapsed_s, clock_ns() if now_ns is None else now_ns):
                return self.current
        if i != self.current:
            now = clock_ns() if now_ns is None else now_ns
            if self.check is not None and i is not None:  # the step's length counts from now
                self._shift = max(self._shift, elapsed_s - self.schedule.boundaries()[i])
                self._start_elapsed = elapsed_s
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
        self._close(clock_ns() if now_ns is None else now_ns)
        self.finished = True
        return self.rows

    def progress(self) -> dict:
        s, cur = self.schedule, (self.rows[-1] if self.rows else None)
        return dict(step=self.current, steps=len(s.steps), users=cur["users"] if cur else 0,
                    step_start_ns=cur["start_ns"] if cur else None,
                    step_seconds=s.steps[self.current][1] if self.current is not None else None,
                    total_seconds=s.total_seconds, extended_s=round(self._shift, 3),
                    finished=self.finished)



# --- open loop: arrivals at a target rate ------------------------------------------------------

ARRIVALS = ("poisson", "constant")


def parse_rates(spec: str) -> list[float]:
    """``"2,4,8"`` → ``[2.0, 4.0, 8.0]`` (requests per second, each > 0)."""
    rates = [float(x) for x in str(spec).replace(" ", "").split(",") if x]
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"bad rates {spec!r}: comma-separated requests/s, each > 0")
    return rates


class ArrivalProcess:
    """Intended send times of an open-loop load: Poisson (exponential gaps, mean 1/rate) or
    constant (gaps of exactly 1/rate). Times come from the schedule, never from when the previous
    request was answered or actually sent, so a slow service cannot slow the offered load down
    (no coordinated omission). Seeded: the same seed gives the same gaps."""

    def __init__(self, kind: str = "poisson", seed: int | None = 0):
        import random

        if kind not in ARRIVALS:
            raise ValueError(f"unknown arrival process {kind!r}; choose from {ARRIVALS}")
        self.kind = kind
        self.rng = random.Random(seed)

    def gap_s(self, rate: float) -> float:
        return self.rng.expovariate(rate) if self.kind == "poisson" else 1.0 / rate

    def times_ns(self, rate: float, start_ns: int, n: int) -> list[int]:
        """``n`` intended send times from ``start_ns`` (the first one gap after it)."""
        out, t = [], float(start_ns)
        for _ in range(n):
            t += self.gap_s(rate) * 1e9
            out.append(int(t))
        return out
