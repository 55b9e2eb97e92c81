"""Plan instances and batch sizes from batch-latency fits, solved exactly.

Model: instance i has a fitted batch time ``t_i(b) = a_i*b + c_i`` (ms) and a warm-up ``w_i`` (ms).
Given ``n_i`` images and a batch size ``b_i`` (1..max batch) it runs ``ceil(n_i/b_i)`` batches of
size ``b_i`` (the last one padded) after its warm-up, finishing at
``w_i + ceil(n_i/b_i) * t_i(b_i)`` (0 if it gets no images).

* ``most_images(instances, T)``: the most images a fixed set processes within deadline T. Each
  instance is independent, so the optimum is the sum of per-instance capacities
  ``cap_i(T) = max_b b * floor((T - w_i) / t_i(b))``, searched over every b.
* ``fewest_instances(instances, N, T)``: the fewest instances that process N images within T.
  An instance that can run k batches of b within T can also run any n <= k*b images within T
  (ceil(n/b) <= k), so a set is feasible iff its capacities sum to >= N: the fewest instances
  are the largest capacities. Among those, images are then spread to minimise the makespan
  (smallest t with sum cap_i(t) >= N, t over the finite set of reachable finish times).

Both are exact over the integer ranges (tests compare with brute force).

    python -m analysis.studies.planner --fits RUN_DIR|fits.json --deadline-ms 500 --images 200
        [--copies 2] [--max-batch 32] [--out RUN_DIR] [--formulation seed|compact]
        [--warmup WARMUP_RUN_DIR] [--memory INPUT_SIZE_RUN_DIR] [--memory-budget-mib 1024]

``--formulation seed`` (the default) solves the WoSC '23 paper's two models exactly instead
(``planner_seed``: a MILP; W_i by batch size, MB_i from memory, M_i); ``--formulation compact``
is the model below. The seed report compares both on the same instances.

``--fits`` is a batch_latency run directory (its ``fits.csv``: one instance per model, times
``--copies``) or a JSON list of ``{"name", "a", "c", "w"[, "max_batch"]}``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

EPS = 1e-9


@dataclass(frozen=True)
class Instance:
    name: str
    a: float             # ms per image
    c: float             # ms per batch
    w: float = 0.0       # warm-up ms
    max_batch: int = 32

    def batch_ms(self, b: int) -> float:
        t = self.a * b + self.c
        if t <= 0:
            raise ValueError(f"{self.name}: non-positive batch time {t} ms at batch {b}")
        return t

    def finish(self, n: int, b: int) -> float:
        return 0.0 if n <= 0 else self.w + math.ceil(n / b) * self.batch_ms(b)


@dataclass(frozen=True)
class Assignment:
    name: str
    batch: int
    batches: int
    images: int
    finish_ms: float


@dataclass
class Plan:
    feasible: bool
    images: int
    assignments: list
    deadline_ms: float

    @property
    def used(self) -> int:
        return sum(1 for x in self.assignments if x.images > 0)

    @property
    def makespan_ms(self) -> float:
        return max((x.finish_ms for x in self.assignments), default=0.0)


def capacity(inst: Instance, T: float, max_batch: int | None = None) -> tuple[int, int, int]:
    """(images, batch, batches): the most images ``inst`` finishes within T (ties: smaller b)."""
    best = (0, 1, 0)
    if T + EPS < inst.w:
        return best
    for b in range(1, (max_batch or inst.max_batch) + 1):
        k = int(math.floor((T - inst.w) / inst.batch_ms(b) + EPS))
        if k > 0 and b * k > best[0]:
            best = (b * k, b, k)
    return best


def best_batch(inst: Instance, n: int, max_batch: int | None = None) -> tuple[int, float]:
    """Batch size finishing ``n`` images earliest (ties: smaller b) and that finish time."""
    if n <= 0:
        return 1, 0.0
    return min(((b, inst.finish(n, b)) for b in range(1, (max_batch or inst.max_batch) + 1)),
               key=lambda x: (x[1] + 0.0, x[0]))


def _assign(inst: Instance, n: int, max_batch: int | None) -> Assignment:
    if n <= 0:
        return Assignment(inst.name, 0, 0, 0, 0.0)
    b, f = best_batch(inst, n, max_batch)
    return Assignment(inst.name, b, math.ceil(n / b), n, f)


def most_images(instances, T: float, max_batch: int | None = None) -> Plan:
    out, total = [], 0
    for inst in instances:
        n, b, k = capacity(inst, T, max_batch)
        total += n
        out.append(Assignment(inst.name, b if n else 0, k, n, inst.finish(n, b) if n else 0.0))
    return Plan(True, total, out, T)


def _finish_times(inst: Instance, T: float, max_batch: int | None) -> set:
    ts = set()
    for b in range(1, (max_batch or inst.max_batch) + 1):
        t = inst.batch_ms(b)
        k = 1
        while inst.w + k * t <= T + EPS:
            ts.add(inst.w + k * t)
            k += 1
    return ts


def fewest_instances(instances, N: int, T: float, max_batch: int | None = None) -> Plan:
    instances = list(instances)
    caps = [capacity(i, T, max_batch)[0] for i in instances]
    order = sorted(range(len(instances)), key=lambda j: -caps[j])
    chosen, acc = [], 0
    for j in order:
        if acc >= N:
            break
        chosen.append(j)
        acc += caps[j]
    if acc < N:
        return Plan(False, acc, [Assignment(instances[j].name, 0, 0, 0, 0.0) for j in range(len(instances))], T)
    # Spread N over the chosen instances with the smallest makespan (exact over reachable times).
    cand = sorted(set().union(*(_finish_times(instances[j], T, max_batch) for j in chosen)))
    lo, hi = 0, len(cand) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(capacity(instances[j], cand[mid], max_batch)[0] for j in chosen) >= N:
            hi = mid
        else:
            lo = mid + 1
    t = cand[lo]
    left, n_of = N, {}
    for j in chosen:
        n = min(left, capacity(instances[j], t, max_batch)[0])
        n_of[j] = n
        left -= n
    assigns = [_assign(instances[j], n_of.get(j, 0), max_batch) for j in range(len(instances))]
    return Plan(True, N, assigns, T)


def load_instances(src: str, copies: int = 1, max_batch: int | None = None) -> list[Instance]:
    p = Path(src)
    if p.is_dir():
        import pandas as pd
        df = pd.read_csv(p / "fits.csv")
        base = [Instance(r.model, float(r.a_ms_per_image), float(r.c_ms), float(r.warmup_ms),
                         max_batch or int(r.max_batch_measured)) for r in df.itertuples()]
    else:
        data = json.loads(p.read_text())
        data = data.get("instances", data) if isinstance(data, dict) else data
        base = [Instance(d["name"], float(d["a"]), float(d["c"]), float(d.get("w", 0.0)),
                         int(d.get("max_batch", max_batch or 32))) for d in data]
    out = []
    for inst in base:
        for k in range(copies):
            name = inst.name if copies == 1 else f"{inst.name}#{k + 1}"
            out.append(Instance(name, inst.a, inst.c, inst.w, inst.max_batch))
    return out


def plan_frame(plan: Plan, instances):
    import pandas as pd
    rows = []
    for inst, x in zip(instances, plan.assignments):
        rows.append({"instance": x.name, "a_ms": inst.a, "c_ms": inst.c, "warmup_ms": inst.w,
                     "batch": x.batch, "batches": x.batches, "images": x.images,
                     "padded": x.batch * x.batches - x.images if x.images else 0,
                     "finish_ms": x.finish_ms})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fits", required=False, help="batch_latency run dir or JSON list of instances")
    p.add_argument("--deadline-ms", type=float, default=None, help="default 1000 (smoke 200)")
    p.add_argument("--images", type=int, default=None, help="N for question (a); default 200 (smoke 40)")
    p.add_argument("--copies", type=int, default=2, help="instances per fitted model (run dir input)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="default: the largest measured batch of the run dir (no extrapolation), else 32")
    p.add_argument("--smoke", action="store_true", help="without --fits: a built-in example fit set")
    p.add_argument("--out", default=None)
    p.add_argument("--formulation", choices=("seed", "compact"), default="seed",
                   help="seed: the WoSC '23 paper's models as a MILP (planner_seed); compact: this module's")
    p.add_argument("--warmup", default=None, help="seed: warmup_model run dir (W by batch), else the "
                   "first-run line of the --fits run dir")
    p.add_argument("--memory", default=None, help="seed: input_size run dir (memfit.csv) for MB_i")
    p.add_argument("--memory-budget-mib", type=float, default=1024.0, help="seed: RSS budget per instance")
    p.add_argument("--side", type=int, default=None, help="seed: input side for MB_i (default: the model's)")
    p.add_argument("--max-calls", type=int, default=10**6, help="seed: M_i, the bound on t_i")
    a = p.parse_args(argv)
    from analysis.studies.report import Study
    T = a.deadline_ms or (200.0 if a.smoke else 1000.0)
    N = a.images or (40 if a.smoke else 200)
    if a.fits:
        instances = load_instances(a.fits, a.copies, a.max_batch)
        source = a.fits
    elif a.smoke:
        instances = [Instance("example_fast", 2.0, 1.0, 10.0, a.max_batch or 16),
                     Instance("example_slow", 7.0, 1.5, 5.0, a.max_batch or 16)]
        source = "built-in example (--smoke without --fits)"
    else:
        p.error("--fits RUN_DIR|JSON is required (or --smoke for a built-in example)")
    st = Study("planner", a.out, a, threads=1)
    if a.formulation == "seed":
        from analysis.studies import planner_seed
        fits_dir = a.fits if a.fits and Path(a.fits).is_dir() else None
        seed, notes = planner_seed.from_compact(instances, fits_dir, a.warmup, a.memory, a.memory_budget_mib,
                                                side=a.side, max_calls=a.max_calls)
        planner_seed.report(st, seed, instances, notes, N, T)
        st.finish()
        return 0
    st.text(f"Instances from {source}; deadline T = {T:g} ms; max batch "
            f"(per instance: {sorted({i.max_batch for i in instances})}). Finish time "
            f"of an instance = warm-up + ceil(n/b) x (a*b + c); solved exactly (see module docstring).")
    pa = fewest_instances(instances, N, T)
    pb = most_images(instances, T)
    da, db = plan_frame(pa, instances), plan_frame(pb, instances)
    if pa.feasible:
        st.text(f"## (a) Fewest instances for N = {N} images within {T:g} ms\n\n**{pa.used} of "
                f"{len(instances)} instances**, makespan {pa.makespan_ms:.1f} ms (images spread over "
                f"the chosen instances to minimise it).")
    else:
        st.text(f"## (a) Fewest instances for N = {N} images within {T:g} ms\n\n**Infeasible**: all "
                f"{len(instances)} instances together finish at most {pa.images} images in time.")
    st.table(da, "plan_fewest_instances")
    st.text(f"## (b) Most images within {T:g} ms on all {len(instances)} instances\n\n"
            f"**{pb.images} images**, makespan {pb.makespan_ms:.1f} ms.")
    st.table(db, "plan_most_images")
    st.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
