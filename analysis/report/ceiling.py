"""The pipeline against its inference-only ceiling (RUN_DIR/ceiling.json, measured by the sweep
before the steps): the report's first finding and its "Inference-only ceiling" table.

The pipeline's figure is the step with the highest goodput (successes within the SLO per second;
every success without one). Per size class the ceiling is that class's mix (one detection + its
mean k crops). A run that sends several size classes is compared with the ceiling of the same
blend: with fractions ``f_c`` of the requests, ``1 / sum(f_c / ceiling_c)`` (the models' time per
request averaged over the blend).

Where the rest went: at that step, the critical path's non-inference share, its queueing
(``queue`` + ``backlog``), and CPU per request: the pipeline's processes' cores per request
(gateway, workers, broker and inference servers: every recorded process but the load generator)
against the inference CPU per request the ceiling's mix used (its process, plus the inference
server the sweep started).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.report.fmt import fmt_ms, fmt_pct
from analysis.report.load import Run
from analysis.report.summary import Summary, size_sort_key
from overhead.contract.ceiling import CeilingRecord
from overhead.contract.records import COMPONENTS

QUEUEING = ("queue", "backlog")


@dataclass(frozen=True)
class CeilingRatio:
    """The pipeline at its best step against the ceiling (per size class, and the blend)."""
    step: int
    users: int
    pipeline_rps: float                      # all sizes, the step's goodput
    ceiling_rps: float                       # the blend's ceiling
    per_size: dict[str, tuple[float, float]]  # size -> (pipeline req/s, ceiling req/s of its share)

    @property
    def ratio(self) -> float:
        return self.pipeline_rps / self.ceiling_rps if self.ceiling_rps > 0 else math.nan


def best_step(summary: Summary) -> pd.Series | None:
    st = summary.steps[summary.steps["requests"] > 0]
    if st.empty:
        return None
    col = "goodput_rps" if "goodput_rps" in st.columns else "throughput_rps"
    return st.loc[st[col].idxmax()]


def ceiling_ratio(ceiling: CeilingRecord | None, summary: Summary) -> CeilingRatio | None:
    if ceiling is None or not ceiling.measured:
        return None
    step = best_step(summary)
    if step is None:
        return None
    col = "goodput_rps" if "goodput_rps" in step.index else "throughput_rps"
    cells = summary.main[summary.main["step"] == step["step"]]
    cells = cells[cells["requests"] > 0]
    total = float(cells["requests"].sum())
    mixes = {s: ceiling.mix(s) for s in cells["size_class"]}
    if not total or any(m is None or m.rps <= 0 for m in mixes.values()):
        return None
    frac = {r.size_class: r.requests / total for r in cells.itertuples()}
    blend = 1.0 / sum(f / mixes[s].rps for s, f in frac.items())
    pipe = float(step[col])
    per = {s: (pipe * f, blend * f) for s, f in sorted(frac.items(), key=lambda x: size_sort_key(x[0]))}
    return CeilingRatio(int(step["step"]), int(step["users"]), pipe, blend, per)


def ceiling_findings(run: Run, summary: Summary, users) -> list[str]:
    c = run.ceiling
    if c is None:
        return ["The inference-only ceiling was not measured for this run (no ceiling.json: an "
                "older sweep, or a run from the Locust web UI), so how close the pipeline came to "
                "what its models alone deliver is unknown."]
    if not c.measured:
        return [f"The inference-only ceiling was not measured ({c.status}: {c.reason})."]
    cr = ceiling_ratio(c, summary)
    if cr is None:
        return ["The inference-only ceiling was measured, but no step has successful requests of "
                "its size classes to compare with it."]
    who = users(cr.users)
    if len(cr.per_size) == 1:
        size = next(iter(cr.per_size))
        head = (f"Pipeline reached {fmt_pct(cr.ratio)} of the inference-only ceiling "
                f"({cr.pipeline_rps:.1f} req/s of {cr.ceiling_rps:.1f}) at {who}, {size}.")
    else:
        alone = "; ".join(f"{m.size_class} {m.rps:.1f}" for m in
                          sorted(c.mixes, key=lambda m: size_sort_key(m.size_class)))
        per = "; ".join(f"{s} {p:.1f} of {z:.1f}" for s, (p, z) in cr.per_size.items())
        head = (f"Pipeline reached {fmt_pct(cr.ratio)} of the inference-only ceiling "
                f"({cr.pipeline_rps:.1f} req/s of {cr.ceiling_rps:.1f}, the ceiling of this run's "
                f"blend of size classes) at {who}; per size class {per} req/s (each class alone: "
                f"{alone} req/s).")
    ks = {round(m.k, 2) for m in c.mixes}
    if len(ks) == 1 and len(c.mixes) > 1:
        head += (f" The ceiling is the same for every size class within noise (the detector's "
                 f"input is fixed after resize; k = {ks.pop():g} crops everywhere).")
    head += _k_check(run, c) + _ceiling_bound(run, c, cr)
    if cr.ratio > 1.05:
        head += (" Above 100%: the ceiling phase got less CPU than the steps did (another process "
                 "busy on shared cores then?); the CPU per request below is the steadier figure.")
    return [head + " " + _where_the_rest_went(run, summary, cr, c)]


def _k_check(run: Run, c: CeilingRecord) -> str:
    """Say so when the requests' mean crop count differs from the one the ceiling used."""
    req = run.requests
    ok = req[(req["status"] == 200) & req["error"].isna() & (req["k"] >= 0)]
    off = []
    for m in c.mixes:
        seen = ok.loc[ok["size_class"] == m.size_class, "k"]
        if len(seen) and abs(seen.mean() - m.k) > 0.25:
            off.append(f"{m.size_class} {seen.mean():.2f} (ceiling {m.k:.2f})")
    return (" The requests' mean crops differ from the ceiling's (its images are a sample of the "
            "corpus): " + "; ".join(off) + ".") if off else ""


def _ceiling_bound(run: Run, c: CeilingRecord, cr: CeilingRatio) -> str:
    """Whether the CPU or the model instances bound the ceiling: the cores its mix kept busy
    against the machine's (only where that CPU is all of the models': embedded sessions, or a
    server the sweep started and measured)."""
    cores = (run.config.get("machine") or {}).get("cores")
    s = c.settings
    if not cores or not (c.backend == "embedded" or "server pid" in str(s.get("cpu_of", ""))):
        return ""
    busy = _weighted(c, cr, lambda m: m.cpu_s / m.seconds if m.cpu_s is not None and m.seconds
                     else None)
    if busy is None:
        return ""
    inst = (f"{s.get('detector_instances', 1)} detector and {s.get('classifier_instances', '?')} "
            f"classifier instance(s), {s.get('intra_op_threads', '?')} thread(s) each")
    if busy < 0.85 * cores:
        return (f" The ceiling's models kept {busy:.2f} of the machine's {cores} cores busy: its "
                f"model instances ({inst}) bound it, not the CPU. More classifier instances "
                f"(`--workers`) raise it while cores are left, but then the pipeline's data "
                f"handling competes with inference for the same cores.")
    return f" The ceiling's models kept {busy:.2f} of the machine's {cores} cores busy ({inst})."


def _where_the_rest_went(run: Run, summary: Summary, cr: CeilingRatio, c: CeilingRecord) -> str:
    cells = summary.main[(summary.main["step"] == cr.step) & (summary.main["requests"] > 0)]
    w = cells["requests"] / cells["requests"].sum()

    def share(comp: str) -> float:
        col = f"{comp}_share"
        return float((cells[col].fillna(0) * w).sum()) if col in cells.columns else 0.0

    parts = [f"non-inference share of the critical path {fmt_pct(1 - share('inference'))}",
             f"queueing (queue + backlog) {fmt_pct(sum(share(q) for q in QUEUEING))}"]
    cpu = _cpu_ms_per_request(run, cr)
    text = cpu_breakdown_text(cpu, _inference_cpu_ms(c, cr), data_cpu_ms(c, cr))
    if text:
        parts.append(text)
    return "Where the rest went at that step: " + "; ".join(parts) + "."


def _cpu_ms_per_request(run: Run, cr: CeilingRatio) -> dict[str, float]:
    """Cores used at the step / its completions per second, per recorded process."""
    out: dict[str, float] = {}
    rps = cr.pipeline_rps
    for row in run.generator_cpu:
        if int(row.get("step", -1)) == cr.step and rps > 0:
            for key, name in (("gateway_cores", "gateway"), ("locust_cores", "load generator")):
                if row.get(key) is not None:
                    out[name] = row[key] / rps * 1e3
    for name, rows in (run.config.get("process_cpu") or {}).items():
        for row in rows:
            if int(row.get("step", -1)) == cr.step and row.get("cores") is not None and rps > 0:
                out[name] = row["cores"] / rps * 1e3
    return out


def _weighted(c: CeilingRecord, cr: CeilingRatio, value) -> float | None:
    """``value(mix)`` averaged over the size classes like the step's requests."""
    total, weight = 0.0, 0.0
    for size, (_, z) in cr.per_size.items():
        m = c.mix(size)
        v = value(m) if m is not None else None
        if v is None:
            return None
        total += v * z
        weight += z
    return total / weight if weight else None


def _inference_cpu_ms(c: CeilingRecord, cr: CeilingRatio) -> float | None:
    """Inference CPU per request in the ceiling's mix."""
    return _weighted(c, cr, lambda m: m.cpu_ms_per_request)


def data_cpu_ms(c: CeilingRecord, cr: CeilingRatio) -> dict[str, float]:
    """CPU ms per request of each data-handling component, measured alone by the ceiling phase."""
    seen = {k for m in c.mixes for k in m.data_cpu_ms}
    comps = [k for k in COMPONENTS if k in seen] + sorted(seen - set(COMPONENTS))
    out = {comp: _weighted(c, cr, lambda m, comp=comp: m.data_cpu_ms.get(comp, 0.0)) for comp in comps}
    return {k: v for k, v in out.items() if v is not None}


def cpu_breakdown_text(cpu: dict[str, float], inference: float | None,
                       data: dict[str, float]) -> str:
    """"CPU per request: the pipeline's processes P ms = inference + data handling + the rest"."""
    pipeline = sum(ms for name, ms in cpu.items() if name != "load generator")
    if not pipeline:
        return ""
    procs = ", ".join(f"{name} {ms:.1f}" for name, ms in cpu.items() if name != "load generator")
    text = f"CPU per request: the pipeline's processes {pipeline:.1f} ms ({procs})"
    if inference:
        text += f" = inference {inference:.1f} (the ceiling's mix)"
        if data:
            text += " + " + " + ".join(f"{k} {v:.1f}" for k, v in data.items()) + " (measured alone)"
        rest = pipeline - inference - sum(data.values())
        text += (f" + the rest (HTTP, broker, Python, thread hand-offs) {rest:.1f}; CPU "
                 f"efficiency (inference / pipeline CPU) {fmt_pct(inference / pipeline)}")
    if cpu.get("load generator") is not None:
        text += f"; the load generator {cpu['load generator']:.1f} ms"
    return text


def ceiling_table(run: Run, summary: Summary):
    """Rows: each model alone, the mix per size class, the pipeline's best step; None without a
    measured ceiling."""
    c = run.ceiling
    if c is None or not c.measured:
        return None
    head = ["measurement", "rate", "callers / instances / batch", "CPU ms per unit"]
    rows = [[f"{s.stage} alone ({s.model})", f"{s.rate:.1f} {s.unit}",
             f"{s.callers} / {s.instances} / {s.batch}",
             fmt_ms(s.cpu_s / s.units * 1e3) if s.cpu_s is not None and s.units else "–"]
            for s in c.stages]
    for m in sorted(c.mixes, key=lambda m: size_sort_key(m.size_class)):
        rows.append([f"mix {m.size_class} (1 detection + {m.k:.2f} crops)", f"{m.rps:.1f} req/s",
                     "", fmt_ms(m.cpu_ms_per_request)])
    cr = ceiling_ratio(c, summary)
    if cr is not None:
        rows.append([f"pipeline, best step ({cr.users} users)", f"{cr.pipeline_rps:.1f} req/s",
                     "", f"ratio {cr.ratio:.2f} of {cr.ceiling_rps:.1f} req/s"])
    return head, rows
