"""Is a load step stable? Windowed throughput and latency, as Triton's perf_analyzer judges it.

A step's measured part is cut into windows of ``window_s`` seconds, aligned to the end of the step
(the last windows are the ones that matter; a partial window at the start is dropped). Per window:
successful completions, throughput (completions / window_s) and p50 latency. The step is
**stable** when the last ``k`` (3) windows' throughputs are within ``tolerance`` (10%) of each
other, and so are their p50 latencies (``max <= (1 + tolerance) * min``). It has **enough
requests** when it completed at least ``min_requests`` successful requests in its measured part.

Pure logic on plain numbers, no Locust, no pandas: the locustfile imports it (to decide live
whether to extend a step) and so does the report (to state the validity of a run).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

DEFAULT_WINDOW_S = 5.0
DEFAULT_WINDOWS = 3
DEFAULT_TOLERANCE = 0.10
DEFAULT_MIN_REQUESTS = 100


@dataclass(frozen=True)
class StabilityRule:
    window_s: float = DEFAULT_WINDOW_S
    windows: int = DEFAULT_WINDOWS          # how many last windows must agree
    tolerance: float = DEFAULT_TOLERANCE    # max/min - 1 of throughput and of p50
    min_requests: int = DEFAULT_MIN_REQUESTS

    def __post_init__(self):
        if self.window_s <= 0 or self.windows < 2 or self.tolerance < 0 or self.min_requests < 0:
            raise ValueError(f"bad stability rule {self}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "StabilityRule":
        d = d or {}
        return cls(**{k: d[k] for k in ("window_s", "windows", "tolerance", "min_requests") if k in d})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Window:
    start_ns: int
    end_ns: int
    requests: int            # successful completions in the window
    throughput_rps: float
    p50_ms: float | None     # None when the window is empty


@dataclass
class Verdict:
    stable: bool
    enough_requests: bool
    requests: int
    windows: list[Window] = field(default_factory=list)
    throughput_spread: float | None = None   # max/min - 1 over the last k windows
    p50_spread: float | None = None
    reason: str = ""

    @property
    def valid(self) -> bool:
        return self.stable and self.enough_requests

    def to_dict(self) -> dict:
        d = asdict(self)
        d["valid"] = self.valid
        return d


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def windows(completions: list[tuple[int, float]], start_ns: int, end_ns: int,
            window_s: float) -> list[Window]:
    """Windows of ``window_s`` aligned to ``end_ns`` (full windows only, oldest first).
    ``completions``: ``(recv_ns, latency_ms)`` of the successful requests (any order)."""
    w_ns = int(window_s * 1e9)
    n = int((end_ns - start_ns) // w_ns) if end_ns > start_ns else 0
    if n <= 0:
        return []
    first = end_ns - n * w_ns
    lat: list[list[float]] = [[] for _ in range(n)]
    for recv, ms in completions:
        if first <= recv < end_ns:
            lat[int((recv - first) // w_ns)].append(ms)
    return [Window(first + i * w_ns, first + (i + 1) * w_ns, len(v), len(v) / window_s,
                   _median(v) if v else None) for i, v in enumerate(lat)]


def _spread(values: list[float]) -> float:
    lo, hi = min(values), max(values)
    if hi <= 0:
        return 0.0
    return float("inf") if lo <= 0 else hi / lo - 1


def judge(ws: list[Window], requests: int, rule: StabilityRule = StabilityRule()) -> Verdict:
    """The verdict on a step from its windows and its total successful requests."""
    enough = requests >= rule.min_requests
    v = Verdict(stable=False, enough_requests=enough, requests=requests, windows=ws)
    last = ws[-rule.windows:]
    if len(last) < rule.windows:
        v.reason = f"only {len(ws)} full {rule.window_s:g} s window(s), {rule.windows} needed"
    elif any(w.p50_ms is None for w in last):
        v.reason = "a window without successful requests"
    else:
        v.throughput_spread = _spread([w.throughput_rps for w in last])
        v.p50_spread = _spread([w.p50_ms for w in last])
        v.stable = v.throughput_spread <= rule.tolerance and v.p50_spread <= rule.tolerance
        if not v.stable:
            v.reason = (f"last {rule.windows} windows differ by {100 * v.throughput_spread:.0f}% in "
                        f"throughput and {100 * v.p50_spread:.0f}% in p50 (limit "
                        f"{100 * rule.tolerance:.0f}%)")
    if not enough:
        v.reason = "; ".join(x for x in (v.reason, f"{requests} requests < {rule.min_requests}") if x)
    return v


def assess(completions: list[tuple[int, float]], start_ns: int, end_ns: int,
           rule: StabilityRule = StabilityRule()) -> Verdict:
    """Windows + verdict for one step's measured part ``[start_ns, end_ns)``."""
    inside = [(r, ms) for r, ms in completions if start_ns <= r < end_ns]
    return judge(windows(inside, start_ns, end_ns, rule.window_s), len(inside), rule)


@dataclass
class RunValidity:
    valid: bool
    steps: int
    unstable: list[int]
    too_few: list[int]

    def headline(self) -> str:
        if self.steps == 0:
            return "INVALID: no measured steps."
        if self.valid:
            return f"VALID: all {self.steps} steps stable, each with enough requests."
        parts = []
        if self.unstable:
            parts.append(f"unstable step(s) {', '.join(map(str, self.unstable))}")
        if self.too_few:
            parts.append(f"too few requests in step(s) {', '.join(map(str, self.too_few))}")
        return "NOT VALID: " + "; ".join(parts) + "."


def run_validity(verdicts: dict[int, Verdict]) -> RunValidity:
    unstable = [s for s, v in sorted(verdicts.items()) if not v.stable]
    too_few = [s for s, v in sorted(verdicts.items()) if not v.enough_requests]
    return RunValidity(valid=bool(verdicts) and not unstable and not too_few, steps=len(verdicts),
                       unstable=unstable, too_few=too_few)
