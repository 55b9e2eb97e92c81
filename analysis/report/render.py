"""The report's files: breakdown.csv, plots/, report.md and report.html (self-contained: plots
inlined), rendered from the Jinja2 templates in ``templates/`` (HTML autoescaped)."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
import pandas as pd

from analysis.report import tables
from analysis.report.ceiling import ceiling_table
from analysis.report.attribution import E2E
from analysis.report.faults import fault_table
from analysis.report.load import Run
from analysis.report.plots import plot
from analysis.report.summary import Summary
from overhead.contract.rundir import RunDir

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Figure:
    path: Path

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def base64(self) -> str:
        return base64.b64encode(self.path.read_bytes()).decode()


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["md_cell"] = lambda s: str(s).replace("|", "\\|")
    return env


def cross_check_text(cc: dict) -> str:
    """Triton trace vs /v2/models/*/stats per model, as fixed-width text (config.json
    ``serving.cross_check``)."""
    lines = ["Triton trace vs /v2/models/*/stats (mean per request, whole server life):",
             f"  {'model':<18}{'requests t/s':>14}{'queue ms t/s':>18}{'compute ms t/s':>20}  batches"]
    for m, d in cc.items():
        lines.append(f"  {m:<18}{d['trace_requests']:>6} /{d['stats_requests']:>6}"
                     f"{d['trace_queue_ms']:>9.2f} /{d['stats_queue_ms']:>7.2f}"
                     f"{d['trace_compute_ms']:>11.2f} /{d['stats_compute_ms']:>7.2f}  {d['batches']}")
    return "\n".join(lines)


def closure_error(attr: pd.DataFrame) -> float:
    """Largest |components + other - e2e| over the requests, ns."""
    if not len(attr):
        return 0.0
    return (attr[[c for c in attr.columns if c != E2E]].sum(axis=1) - attr[E2E]).abs().max()


TRACE_NAME, TRACE_SLOWEST = "trace_slowest.json", 30


def _slowest_trace(run_dir: Path) -> dict | None:
    """Write the Perfetto timeline of the slowest requests next to the report (a report without
    it still renders)."""
    from analysis.trace_export import build_trace

    try:
        trace = build_trace(run_dir, TRACE_SLOWEST)
    except Exception:
        return None
    (Path(run_dir) / TRACE_NAME).write_text(json.dumps(trace, separators=(",", ":"), default=str))
    return {"name": TRACE_NAME, "requests": trace["otherData"]["requests"]}


def context(run: Run, attr: pd.DataFrame, summary: Summary, notes: list[str], validity: list[str],
            steps: pd.DataFrame, plots: list[Path], work: Summary | None = None) -> dict:
    """Everything both templates show; ``steps``: ``tables.step_view``."""
    serving = run.config.get("serving") or {}
    return dict(
        title=f"Overhead breakdown — {run.path.name}", validity=validity, notes=notes,
        what_ran=tables.what_ran(run.config, run), closure=closure_error(attr),
        main_table=tables.main_table(summary, with_p50=True, steps=steps),
        headline_table=tables.headline_table(summary, steps=steps),
        trace=_slowest_trace(run.path),
        stage_table=tables.stage_table(summary), ceiling_table=ceiling_table(run, summary),
        steps_table=tables.steps_table(summary, run, steps),
        work_table=tables.main_table(work, with_p50=False) if work is not None else None,
        plots=[Figure(p) for p in plots], serving=serving,
        faults_table=fault_table(run.config.get("faults") or [], run.requests, run.steps),
        serving_table=tables.serving_table(serving) if serving else None,
        cross_check=cross_check_text(serving["cross_check"]) if serving.get("cross_check") else "",
        config_json=json.dumps(run.config, indent=2, default=str))


def write_report(run: Run, attr: pd.DataFrame, summary: Summary, notes: list[str],
                 validity: list[str] | None = None, steps: pd.DataFrame | None = None,
                 work: Summary | None = None) -> dict:
    """Write breakdown.csv (critical path), breakdown_work.csv (work view), plots/, report.md and
    report.html into the run directory; return their paths (keys ``csv``, ``plots``, ``md``,
    ``html``, and ``work_csv`` with a work view)."""
    rd = RunDir(run.path)
    summary.main.merge(summary.stages.drop(columns=["requests"]),
                       on=["step", "users", "size_class"], how="left").to_csv(rd.breakdown_csv, index=False)
    files = {}
    if work is not None:
        files["work_csv"] = rd.breakdown_csv.with_name("breakdown_work.csv")
        work.main.to_csv(files["work_csv"], index=False)
    plots = plot(summary, rd.plots)
    ctx = context(run, attr, summary, notes, validity or [],
                  summary.steps if steps is None else steps, plots, work)
    env = environment()
    rd.report_md.write_text(env.get_template("report.md.j2").render(ctx))
    rd.report_html.write_text(env.get_template("report.html.j2").render(ctx))
    return {"csv": rd.breakdown_csv, "plots": plots, "md": rd.report_md, "html": rd.report_html,
            **files}
