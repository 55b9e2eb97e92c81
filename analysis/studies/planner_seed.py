"""The WoSC '23 paper's two optimisation models, exactly, as integer programs (scipy.optimize.milp, HiGHS).

(1) soft real-time:  min N_G  s.t.  max_i (W_i(mbs_i) + t_i * L_i(mbs_i)) <= T,
    sum_i (t_i + 1) * mbs_i >= N,  1 <= mbs_i <= MB_i,  0 <= t_i <= M_i,  1 <= N_G <= NGPU;
(2) relaxed:         max NGPU * sum_i (t_i + 1) * mbs_i  s.t. the same time, batch and call bounds.

Instance i's first call (batch mbs_i) takes W_i(mbs_i) - the warm-up call, which also processes its
batch (hence t_i + 1) - and each of its t_i further calls L_i(mbs_i) = a_i * mbs_i + c_i. N_G counts
the instances used (u_i = 1; an unused one has no mbs_i, t_i). The products t_i * L_i(mbs_i) and the
non-linear W_i(mbs_i) are made linear exactly by one binary z_{i,m} per batch size m (sum_m z_{i,m}
= u_i) and an integer t_{i,m} <= K_{i,m} * z_{i,m}, where K_{i,m} = min(M_i, floor((T - W_i(m)) /
L_i(m))) is the most further calls that fit in T with batch m (m is left out when W_i(m) > T).
Images = sum m * (t_{i,m} + z_{i,m}). (1)'s optimum count is the MILP's; among plans with that count
the one with the smallest makespan is then picked (ties in (1) are otherwise arbitrary; see
``_least_makespan``). ``brute_force`` enumerates
every (mbs_i, t_i) (and unused) per instance, for the tests' small instances.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

EPS = 1e-9


@dataclass(frozen=True)
class SeedInstance:
    name: str
    a: float                 # L(m) = a*m + c  (ms)
    c: float
    wa: float                # W(m) = wa*m + wc (ms): the first call, batch m
    wc: float
    max_batch: int           # MB_i
    max_calls: int = 10**6   # M_i (bound on t_i)

    def L(self, m: int) -> float:
        return self.a * m + self.c

    def W(self, m: int) -> float:
        return self.wa * m + self.wc

    def K(self, m: int, T: float) -> int:
        """Most further calls t with W(m) + t*L(m) <= T (-1: even the warm-up call misses T)."""
        w, l_ = self.W(m), self.L(m)
        if w > T + EPS:
            return -1
        if l_ <= 0:
            return self.max_calls
        return min(self.max_calls, int(math.floor((T - w) / l_ + EPS)))


@dataclass
class SeedPlan:
    feasible: bool
    status: str
    images: int
    choice: list = field(default_factory=list)   # per instance: (mbs, t) or None (unused)
    makespan_ms: float = 0.0
    objective: float = 0.0

    @property
    def used(self) -> int:
        return sum(1 for c in self.choice if c is not None)


def _variables(instances, T):
    """(i, m, K) for every instance and batch size whose warm-up call fits in T."""
    return [(i, m, k) for i, inst in enumerate(instances) for m in range(1, inst.max_batch + 1)
            if (k := inst.K(m, T)) >= 0]


def _solve(instances, T, N=None):
    """One MILP. Variables: z (binary) then t (integer) per (i, m). With N: min sum z s.t. images >= N;
    without: max images."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    V = _variables(instances, T)
    n, nI = len(V), len(instances)
    if n == 0:
        return None, V
    A, lo, hi = np.zeros((n + nI + 1, 2 * n)), [], []
    for j, (_, _, k) in enumerate(V):                 # t_{i,m} - K z_{i,m} <= 0
        A[j, n + j], A[j, j] = 1, -k
        lo.append(-np.inf); hi.append(0)
    for i in range(nI):                               # sum_m z_{i,m} = u_i <= 1
        A[n + i, [j for j, v in enumerate(V) if v[0] == i]] = 1
        lo.append(0); hi.append(1)
    img = np.array([m for _, m, _ in V] * 2, float)   # images = sum m (z + t)
    A[-1] = img
    lo.append(N if N is not None else 0); hi.append(np.inf)
    cost = np.r_[np.ones(n), np.zeros(n)] if N is not None else -img
    ub = np.array([1] * n + [k for _, _, k in V], float)
    res = milp(cost, constraints=LinearConstraint(A, lo, hi), integrality=np.ones(2 * n),
               bounds=Bounds(np.zeros(2 * n), ub), options={"time_limit": 120})
    return res, V


def _capacity(inst, T):
    """(images, mbs, t): the most one instance finishes within T (ties: smaller mbs)."""
    best = (0, 0, 0)
    for m in range(1, inst.max_batch + 1):
        k = inst.K(m, T)
        if k >= 0 and m * (k + 1) > best[0]:
            best = (m * (k + 1), m, k)
    return best


def _least_makespan(instances, N, T, k):
    """Tie-break for (1), not part of the paper: with k instances (the MILP's optimum), the smallest
    makespan. Instances are independent, so k instances reach N within T' iff the k largest
    per-instance capacities at T' sum to >= N; T' is searched over every reachable finish time."""
    cand = sorted({inst.W(m) + t * inst.L(m) for inst in instances for m in range(1, inst.max_batch + 1)
                   for t in range(0, inst.K(m, T) + 1)})

    def pick(t_):
        caps = sorted(((_capacity(inst, t_), i) for i, inst in enumerate(instances)), reverse=True)[:k]
        return caps if sum(c[0][0] for c in caps) >= N else None
    lo, hi = 0, len(cand) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pick(cand[mid]):
            hi = mid
        else:
            lo = mid + 1
    choice = [None] * len(instances)
    for (_, m, t), i in pick(cand[lo]):
        choice[i] = (m, t)
    return choice


def _plan(res, V, instances, T) -> SeedPlan:
    if res is None or res.x is None:
        return SeedPlan(False, getattr(res, "message", "no batch size fits T"), 0, [None] * len(instances))
    n = len(V)
    x = np.round(res.x[:2 * n]).astype(int)
    choice = [None] * len(instances)
    for j, (i, m, _) in enumerate(V):
        if x[j]:
            choice[i] = (m, int(x[n + j]))
    images = sum(m * (t + 1) for c in choice if c for m, t in [c])
    span = max((instances[i].W(m) + t * instances[i].L(m) for i, c in enumerate(choice) if c
                for m, t in [c]), default=0.0)
    return SeedPlan(True, res.message, images, choice, span, float(res.fun))


def fewest_instances(instances, N: int, T: float) -> SeedPlan:
    res, V = _solve(instances, T, N=N)
    if res is None or not res.success:
        return SeedPlan(False, res.message if res is not None else "no batch size fits T", 0,
                        [None] * len(instances))
    plan = _plan(res, V, instances, T)
    plan.choice = _least_makespan(instances, N, T, plan.used)
    plan.images = sum(m * (t + 1) for c in plan.choice if c for m, t in [c])
    plan.makespan_ms = max(instances[i].W(m) + t * instances[i].L(m)
                           for i, c in enumerate(plan.choice) if c for m, t in [c])
    return plan


def most_images(instances, T: float) -> SeedPlan:
    res, V = _solve(instances, T)
    plan = _plan(res if res is not None and res.success else None, V, instances, T)
    plan.objective = len(instances) * plan.images        # the paper's NGPU x sum (a constant factor)
    return plan


def _options(inst, T):
    return [None] + [(m, t) for m in range(1, inst.max_batch + 1) for t in range(0, inst.K(m, T) + 1)]


def brute_force(instances, T: float, N: int | None = None):
    """(fewest used for N, or None) if N is given, else the most images: every combination."""
    best = None
    for combo in itertools.product(*(_options(i, T) for i in instances)):
        images = sum(m * (t + 1) for c in combo if c for m, t in [c])
        if N is None:
            best = images if best is None else max(best, images)
        elif images >= N:
            used = sum(c is not None for c in combo)
            best = used if best is None else min(best, used)
    return best


def choice_frame(plan: SeedPlan, instances):
    import pandas as pd
    rows = []
    for inst, c in zip(instances, plan.choice):
        m, t = c if c else (0, 0)
        rows.append({"instance": inst.name, "a_ms": inst.a, "c_ms": inst.c, "W_a": inst.wa, "W_c": inst.wc,
                     "MB": inst.max_batch, "M": inst.max_calls, "mbs": m, "t": t,
                     "images": m * (t + 1) if c else 0,
                     "finish_ms": inst.W(m) + t * inst.L(m) if c else 0.0})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ inputs from the other studies

def warmup_lines(fits_dir=None, warmup_dir=None) -> dict:
    """{model: (wa, wc, source)}: W(m) = wa*m + wc fitted over first-call times by batch size: the
    warm-up model's predictions (``warmup_dir``/w_by_batch.csv) where it covers the model, else the
    batch-latency run's first runs (``fits_dir``/batch_latency.csv, first_run_ms)."""
    import pandas as pd
    from analysis.studies.fitting import fit_linear
    out = {}
    for d, name, col, src in ((fits_dir, "batch_latency.csv", "first_run_ms", "first-run line"),
                              (warmup_dir, "w_by_batch.csv", "w_ms", "warm-up model")):
        if not d:
            continue
        for m, g in pd.read_csv(f"{d}/{name}").groupby("model"):
            f = fit_linear(g.batch, g[col])
            out[m] = (f.a, f.c, f"{src} (R^2 {f.r2:.3f})")
    return out


def memory_limits(memory_dir, budget_mib: float, cap: int, side: int | None = None) -> dict:
    """{model: (MB, source)} from the input-size study's memfit.csv: the largest batch whose
    process RSS (load + m0 + m1*batch) stays within ``budget_mib`` at ``side`` (default: the
    model's catalog input side if measured, else the nearest measured side); capped at ``cap``."""
    import pandas as pd
    from pipelines.models import get_spec
    df = pd.read_csv(f"{memory_dir}/memfit.csv")
    out = {}
    for m, g in df.groupby("model"):
        want = side or get_spec(m).input_hw[0]
        r = g.iloc[int((g.side - want).abs().argmin())]
        mb = int(math.floor((budget_mib - r.rss_load_mib - r.m0_mib) / r.m1_mib_per_image)) \
            if r.m1_mib_per_image > 0 else cap
        out[m] = (max(0, min(cap, mb)), f"memfit {int(r.side)}px: {r.rss_load_mib:.0f} + {r.m0_mib:.1f} + "
                                        f"{r.m1_mib_per_image:.2f} x mbs MiB <= {budget_mib:g} MiB")
    return out


def from_compact(compact_instances, fits_dir=None, warmup_dir=None, memory_dir=None, budget_mib=1024.0,
                 mb_cap=256, side=None, max_calls=10**6):
    """Seed instances for the compact planner's instances (same a, c); W, MB from the studies' outputs
    when given, else W(m) = w + L(m) (the compact model's warm-up then batch) and MB = its max batch."""
    W = warmup_lines(fits_dir, warmup_dir) if (fits_dir or warmup_dir) else {}
    MB = memory_limits(memory_dir, budget_mib, mb_cap, side) if memory_dir else {}
    out, notes = [], {}
    for ci in compact_instances:
        base = ci.name.split("#")[0]
        wa, wc, wsrc = W.get(base, (ci.a, ci.c + ci.w, "w + L(m) (compact warm-up)"))
        mb, msrc = MB.get(base, (ci.max_batch, "largest measured batch"))
        out.append(SeedInstance(ci.name, ci.a, ci.c, wa, wc, mb, max_calls))
        notes[base] = {"W": wsrc, "MB": msrc}
    return out, notes


DIFFERENCES = """## Where the paper's model (seed) and the compact one differ, and why

- **The warm-up call processes images.** Seed: the first call with batch mbs takes W(mbs) and its
  images count, hence (t + 1) x mbs. Compact: a warm-up excess w is paid once, then ceil(n/b) calls of
  L(b). They agree exactly when W(m) = w + L(m) (the default when no warm-up line is given).
- **W depends on the batch size** (seed: a line fitted over first-call times per batch, or the warm-up
  model's predictions) where compact has one w per instance (the median excess over batch sizes).
- **Whole batches only.** Seed counts (t + 1) x mbs >= N images (overshoot allowed, never a partial
  batch); compact serves exactly N, padding the last batch of an instance.
- **Bounds.** Seed: MB_i from the input-size study's memory fit (largest batch whose RSS stays within the
  budget) and t_i <= M_i; compact: the largest measured batch, no bound on calls.
- **Objective of (2).** The paper maximises NGPU x sum (t_i + 1) mbs_i; NGPU is a constant, so the plan
  is the same as maximising the images; the table shows both.
- **Solver.** Seed: one MILP (scipy.optimize.milp / HiGHS) over binaries z_{i,m} and integers t_{i,m};
  compact: exact enumeration per instance. Both are checked against brute force in tests/test_studies.py.
"""


def report(st, seed_instances, compact_instances, notes: dict, N: int, T: float) -> None:
    import pandas as pd
    from analysis.studies import planner as compact
    st.text(f"Formulation **seed** (WoSC '23 models (1) and (2), solved as an integer program with "
            f"scipy.optimize.milp / HiGHS); deadline T = {T:g} ms, N = {N} images, "
            f"{len(seed_instances)} instances.\n\n" + "\n".join(
                f"- {m}: W from {v['W']}; MB from {v['MB']}" for m, v in notes.items()))
    pa, pb = fewest_instances(seed_instances, N, T), most_images(seed_instances, T)
    ca, cb = compact.fewest_instances(compact_instances, N, T), compact.most_images(compact_instances, T)
    if pa.feasible:
        st.text(f"## (1) Fewest instances N_G for N = {N} images within {T:g} ms\n\n**N_G = {pa.used} of "
                f"{len(seed_instances)}**, {pa.images} images, makespan {pa.makespan_ms:.1f} ms (HiGHS: "
                f"{pa.status}).")
    else:
        st.text(f"## (1) Fewest instances N_G for N = {N} images within {T:g} ms\n\n**Infeasible** "
                f"({pa.status}).")
    st.table(choice_frame(pa, seed_instances), "plan_fewest_instances")
    st.text(f"## (2) Most images within {T:g} ms on all {len(seed_instances)} instances\n\n**{pb.images} "
            f"images** (paper's objective NGPU x sum = {pb.objective:g}), makespan {pb.makespan_ms:.1f} ms.")
    st.table(choice_frame(pb, seed_instances), "plan_most_images")
    cmp_ = pd.DataFrame([
        {"question": "(1) fewest instances", "seed": pa.used if pa.feasible else None,
         "compact": ca.used if ca.feasible else None, "seed_images": pa.images, "compact_images": ca.images,
         "seed_makespan_ms": pa.makespan_ms, "compact_makespan_ms": ca.makespan_ms},
        {"question": "(2) most images", "seed": pb.images, "compact": cb.images, "seed_images": pb.images,
         "compact_images": cb.images, "seed_makespan_ms": pb.makespan_ms, "compact_makespan_ms": cb.makespan_ms}])
    st.table(cmp_, "seed_vs_compact", "The same instances under both formulations")
    over = sorted({f"{s.name.split('#')[0]} (MB {s.max_batch} > {c.max_batch})"
                   for s, c in zip(seed_instances, compact_instances) if s.max_batch > c.max_batch})
    if over:
        st.text("Beyond the measured batch sizes, L and W are the fitted lines extrapolated: " + ", ".join(over) + ".")
    st.text(DIFFERENCES)
