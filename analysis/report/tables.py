"""The report's tables as strings (head, rows), shared by report.md, report.html and the console,
and the "what ran" items read from config.json."""
from __future__ import annotations

import json
import re

import pandas as pd

from analysis.report.attribution import STAGE_UNCOVERED
from analysis.report.fmt import fmt_ms, fmt_or_dash, fmt_pct
from analysis.report.load import Run
from analysis.report.summary import Summary, size_sort_key

Table = tuple[list[str], list[list[str]]]
MAIN_FIXED = 9   # main-table columns before the components
GATEWAY_SKIP = {"host", "port", "spans_dir", "log_level", "access_log", "pid", "started_ns", "ready",
                "git_rev", "models_dir", "calibration_crop_sleep_ms"}
GATEWAY_WORDS = {   # a setting in words ({v}: its value); others read "name value"
    "broker": "broker {v}", "classifier": "classifier {v}", "detector": "detector {v}",
    "backend": "inference backend {v}", "k": "{v} crops classified per image",
    "workers": "{v} classifier worker thread(s) in the gateway", "threads": "{v} request threads",
    "intra_op_threads": "{v} ONNX Runtime thread(s) per model", "max_batch": "batches of up to {v}",
    "max_delay_ms": "batch wait up to {v} ms", "worker_batch": "classifier batches of up to {v}",
    "reduced": "reduced-size JPEG decode {v}", "score_threshold": "detections kept from score {v}",
    "iou_threshold": "NMS IoU {v}", "max_upload_mb": "uploads up to {v} MiB",
    "max_pixels": "images up to {v} pixels", "result_timeout_s": "results awaited up to {v} s",
    "publish_timeout_s": "broker room awaited up to {v} s", "spans": "span recording {v}",
    "triton_url": "Triton at {v}", "tfserving_url": "TF Serving at {v}",
}


def main_table(summary: Summary, with_p50: bool, steps: pd.DataFrame | None = None) -> Table:
    """Per step and size: counts, req/s, e2e, and per component "mean[ / p50] (share)"; steps
    that are not valid (``steps``: ``step_view``) are marked."""
    head = ["load" if summary.load_labels else "users", "size", "requests", "errors", "req/s",
            "e2e mean", "p50", "p95", "p99"] + [f"{c} ms" for c in summary.components]
    bad = set()
    if steps is not None and "valid" in steps.columns:
        bad = {int(x) for x, v in zip(steps["step"], steps["valid"]) if v is False}
    rows = []
    for r in summary.main.to_dict("records"):
        load = summary.load_labels.get(int(r["users"])) or str(r["users"])
        row = [load + (" ⚠ not valid" if int(r["step"]) in bad else ""), r["size_class"],
               str(r["requests"]), str(r["errors"]), f"{r['throughput_rps']:.1f}",
               *(fmt_ms(r[k]) for k in ("e2e_mean_ms", "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms"))]
        for c in summary.components:
            p50 = f" / {fmt_ms(r[f'{c}_p50_ms'])}" if with_p50 else ""
            row.append(f"{fmt_ms(r[f'{c}_mean_ms'])}{p50} ({fmt_pct(r[f'{c}_share'])})")
        rows.append(row)
    return head, rows


def headline_table(summary: Summary, steps: pd.DataFrame | None = None, top: int = 5) -> Table:
    """The main table narrowed to a laptop screen: the ``top`` components with the largest mean
    share over the run, ``other``, and the rest summed in one column (the full table is folded
    below it in report.html). Cells: mean ms (share of mean end-to-end)."""
    head, rows = main_table(summary, with_p50=False, steps=steps)
    comps = list(summary.components)
    if len(comps) <= top + 2:
        return head, rows
    main = summary.main
    share = {c: float(main[f"{c}_share"].fillna(0).mean()) for c in comps}
    keep = set(sorted((c for c in comps if c != "other"), key=share.get, reverse=True)[:top])
    keep |= {"other"} & set(comps)
    idx = [i for i, c in enumerate(comps) if c in keep]
    rest = [c for c in comps if c not in keep]
    head = head[:MAIN_FIXED] + [head[MAIN_FIXED + i] for i in idx] + [f"rest ({len(rest)}) ms"]
    out = []
    for r, row in zip(main.to_dict("records"), rows):
        ms = sum(float(r[f"{c}_mean_ms"] or 0) for c in rest)
        e2e = float(r["e2e_mean_ms"] or 0)
        out.append(row[:MAIN_FIXED] + [row[MAIN_FIXED + i] for i in idx]
                   + [f"{fmt_ms(ms)} ({fmt_pct(ms / e2e if e2e else None)})"])
    return head, out


def stage_table(summary: Summary) -> Table:
    keys = [k for k in summary.stage_keys
            if k == STAGE_UNCOVERED or summary.stages[f"{k}_mean_ms"].fillna(0).abs().sum() > 0]
    head = ["load" if summary.load_labels else "users", "size"] + [f"{k} ms" for k in keys]
    rows = [[summary.load_labels.get(int(r["users"])) or str(r["users"]), r["size_class"]] +
            [f"{fmt_ms(r[f'{k}_mean_ms'])} ({fmt_pct(r[f'{k}_share'])})" for k in keys]
            for r in summary.stages.to_dict("records")]
    return head, rows


def step_view(summary: Summary, verdicts: pd.DataFrame | None) -> pd.DataFrame:
    """``summary.steps`` with the validity columns of each step (``Validity.steps``) beside it."""
    if verdicts is None or not len(summary.steps):
        return summary.steps
    return summary.steps.join(verdicts, on="step")


def steps_table(summary: Summary, run: Run, steps: pd.DataFrame) -> Table:
    """Per step, all sizes; ``steps``: ``step_view``."""
    cpu = {c.get("step"): c for c in run.generator_cpu}
    open_loop = "lag_p99_ms" in steps.columns
    head = ["step", "users", "window s", "requests", "errors", "req/s", "mean ms",
            "X·W (users)", "Locust cores", "gateway cores"]
    if open_loop:
        head = (["step", "target req/s"] + head[2:6] + ["mean ms (from intended)", "lag p50 ms",
                "lag p99 ms", "slot waits", "X·W (in flight)"] + head[8:])
    if "goodput_rps" in steps.columns:
        head.append(f"goodput req/s (e2e ≤ {summary.slo_ms:g} ms)" if summary.slo_ms
                    else "goodput req/s (every success)")
    if "saturated" in steps.columns:
        head += ["rejected", "incomplete"]
    if "valid" in steps.columns:
        head.append("stable")
    rows = []
    for r in steps.to_dict("records"):
        c = cpu.get(r["step"], {})
        row = [str(r["step"]), str(r["users"]), f"{r['window_s']:.1f}", str(r["requests"]),
               str(r["errors"]), f"{r['throughput_rps']:.1f}", fmt_ms(r["e2e_mean_ms"]),
               fmt_or_dash(r["littles_n"], ".2f"), fmt_or_dash(c.get("locust_cores"), ".2f"),
               fmt_or_dash(c.get("gateway_cores"), ".2f")]
        if open_loop:
            row[1:2] = [fmt_or_dash(r["target_rps"], "g")]
            row[6:7] = [fmt_ms(r["e2e_mean_ms"]), fmt_ms(r["lag_p50_ms"]), fmt_ms(r["lag_p99_ms"]),
                        str(r["slot_waits"])]
        if "goodput_rps" in r:
            row.append(f"{r['goodput_rps']:.1f}")
        if "saturated" in r:
            row += [str(r["rejected"]), str(r["incomplete"]) + (" (saturated)" if r["saturated"] else "")]
        if "valid" in r:
            row.append("yes" if r["stable"] and r["valid"] else
                       ("–" if r["stable"] is None else f"NO: {r['stability']}"))
        rows.append(row)
    return head, rows


def serving_table(serving: dict) -> Table:
    """Which server and model each stage used (config.json ``serving``)."""
    return (["stage", "server", "model", "protocol"],
            [[stage, str(d["server"]), str(d["model"]), str(serving.get("protocol", ""))]
             for stage, d in (serving.get("stages") or {}).items()])


def what_ran(config: dict, run: Run) -> list[tuple[str, str]]:
    """(label, text) items for "What ran", from config.json."""
    items = _run_items(config.get("run", {})) + _load_items(config.get("load", {}))
    items += _gateway_items(config.get("gateway") or {})
    corpus = config.get("corpus") or {}
    if corpus.get("by_size"):
        items.append(("corpus", "; ".join(
            f"{s}: {v.get('count')} images, mean {v.get('mean_bytes', 0) / 1e3:.0f} kB"
            for s, v in sorted(corpus["by_size"].items(), key=lambda kv: size_sort_key(kv[0])))))
    m = config.get("machine") or {}
    if m:
        items.append(("machine", f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
                                 f"{m.get('mem_gib', '?')} GiB, {m.get('platform', '')}"))
    v = config.get("versions") or {}
    if v:
        items.append(("versions", ", ".join(f"{k} {val}" for k, val in v.items() if val)))
    g = config.get("git") or {}
    if g.get("rev"):
        items.append(("git", f"{g['rev'][:12]}{' (dirty)' if g.get('dirty') else ''}"))
    return items or [("run", f"{run.path.name} (no config.json)")]


def _run_items(r: dict) -> list[tuple[str, str]]:
    if not r:
        return []
    items = [("started", str(r.get("started", "")))]
    if r.get("command"):
        items.append(("command", " ".join(map(str, r["command"]))))
    managed = "gateway started by the sweep" if r.get("managed_gateway") else "external"
    return items + [("target", f"{r.get('host', '')} ({managed})")]


def _load_items(load: dict) -> list[tuple[str, str]]:
    if not load:
        return []
    steps = ", ".join(f"{s['rate']:g}/s×{s['seconds']:g}s" if "rate" in s else
                      f"{s['users']}u×{s['seconds']:g}s" for s in load.get("schedule", []))
    loop = (f"open loop ({load['arrivals']} arrivals, at most {load.get('max_in_flight')} in flight, "
            f"seed {load.get('seed')})" if load.get("arrivals") else "closed loop")
    return [("load", f"{load.get('tool', 'locust')} {load.get('user_class', '')}, {loop}, "
                     f"steps {steps}, warm-up {load.get('warmup_seconds', 0):g} s per step, "
                     f"sizes {', '.join(load.get('sizes') or []) or 'all'}")]


def _plain(k: str, v) -> str | None:
    """One gateway setting in words (``None``: not worth a line)."""
    if v is None or v == "":
        return None
    if isinstance(v, bool) and k in GATEWAY_WORDS:
        v = "on" if v else "off"
    if k in GATEWAY_WORDS:
        return GATEWAY_WORDS[k].format(v=v)
    if isinstance(v, bool):
        return f"{k.replace('_', ' ')} {'on' if v else 'off'}"
    return f"{k.replace('_', ' ')} {v}"


def _gateway_items(gw: dict) -> list[tuple[str, str]]:
    if not gw:
        return []
    settings = gw.get("settings") if isinstance(gw.get("settings"), dict) else gw
    unused = {"triton_url", "tfserving_url"} - {f"{settings.get('backend')}_url"}
    if isinstance(gw.get("preprocessor"), str):
        unused |= {"preprocessor", "reduced"}     # said in words below
    flat = [t for k, v in settings.items()
            if k not in GATEWAY_SKIP | unused and not isinstance(v, (dict, list))
            and (t := _plain(k, v))]
    if isinstance(gw.get("preprocessor"), str):   # e.g. "OpenCVPreprocessor(reduced='auto')"
        m = re.fullmatch(r"(\w+?)Preprocessor\((.*)\)", gw["preprocessor"])
        flat.append("preprocessing with " + (f"{m[1]} ({m[2].replace(chr(39), '')})" if m
                                              else gw["preprocessor"]))
    items = [("gateway", "; ".join(flat) or json.dumps(gw)[:500])]
    models = gw.get("models")
    if isinstance(models, dict):
        items.append(("models", "; ".join(
            f"{role}: {m.get('name', '?')}" + (f" {m['input_hw'][0]}x{m['input_hw'][1]}"
                                               if isinstance(m, dict) and m.get("input_hw") else "")
            for role, m in models.items() if isinstance(m, dict))))
    return items
