"""Where the time goes: the breakdown report of one run directory.

    python analysis/breakdown.py RUN_DIR        (from any directory; needs only RUN_DIR's files)

Loads the run, checks the workers' clocks, attributes each request's end-to-end time along its
critical path (the headline) and, as the "work view", evenly over its overlapping spans (closure
both ways), summarizes per step and size class, judges validity, writes report.md, report.html,
breakdown.csv (critical path), breakdown_work.csv and plots/ into RUN_DIR and prints the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field

import pandas as pd

from analysis.report.clocks import clocks_note
from analysis.report.console import make_console, print_tables
from analysis.report.findings import findings
from analysis.report.load import Run, load_run, open_loop_view
from analysis.report.render import write_report
from analysis.report.summary import Summary, summarize
from analysis.report.tables import step_view
from analysis.report.validity import validity_checks
from analysis.report.views import attribute_both


@dataclass
class Report:
    run: Run
    attr: pd.DataFrame                  # critical path (the headline)
    summary: Summary
    findings: list[str]
    files: dict
    validity: list[str] = field(default_factory=list)
    steps: pd.DataFrame | None = None   # summary.steps with each step's validity verdict
    work_attr: pd.DataFrame | None = None   # the work view: even split over overlapping spans
    work: Summary | None = None
    clock_notes: list[str] = field(default_factory=list)
    clocks: pd.DataFrame | None = None      # per process: offset ± error (analysis.report.clocks)


def _view(run: Run) -> tuple[Run, pd.DataFrame, pd.DataFrame, dict]:
    """What the report attributes: (run with its steps, requests, spans, load labels). Open loop:
    e2e from the intended send time, steps labelled by their target rate."""
    if not run.is_open_loop:
        return run, run.requests, run.spans, {}
    requests, spans = open_loop_view(run.requests, run.spans)
    steps, labels = run.steps, {}
    if len(steps):
        steps = steps.assign(users=steps["step"] + 1)   # a distinct load level per step
        labels = {int(st) + 1: (f"{run.rates[int(st)]:g} req/s" if int(st) < len(run.rates) else f"step {st}")
                  for st in steps["step"]}
    return dataclasses.replace(run, steps=steps), requests, spans, labels


def report(run_dir, console=None, quiet: bool = False, slo_ms: float | None = None) -> Report:
    """Load, attribute, summarize, write report files; print unless quiet. ``slo_ms``: goodput's
    latency objective (default: config.json ``load.slo_ms``; none: every success counts)."""
    t0 = time.perf_counter()
    run = load_run(run_dir)
    run_view, requests, spans, labels = _view(run)
    both = attribute_both(requests, spans, run.processes)
    attr = both.path
    slo_ms = slo_ms if slo_ms is not None else run.load.get("slo_ms")
    summary = summarize(requests, attr, run_view.steps, slo_ms)
    work = summarize(requests, both.work, run_view.steps, slo_ms)
    summary.load_labels = work.load_labels = labels
    validity = validity_checks(run_view, requests, summary)
    steps = step_view(summary, validity.steps)
    notes = findings(run_view, summary)
    top = both.clock_notes + clocks_note(both.clocks) + validity.notes
    files = write_report(run_view, attr, summary, notes, top, steps, work=work)
    rep = Report(run=run, attr=attr, summary=summary, findings=notes, files=files,
                 validity=top, steps=steps, work_attr=both.work,
                 work=work, clock_notes=both.clock_notes, clocks=both.clocks)
    if not quiet:
        console = console or make_console()
        print_tables(rep, console)
        console.print(f"report: {files['md']}  (html: {files['html']}; "
                      f"{len(run.requests)} requests, {len(run.spans)} spans, "
                      f"{time.perf_counter() - t0:.1f} s)", highlight=False)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="analysis/breakdown.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run directory written by loadtest/sweep.py")
    ap.add_argument("-q", "--quiet", action="store_true", help="write the files, print only the path")
    ap.add_argument("--slo-ms", type=float, default=None,
                    help="goodput: successes within this end-to-end latency per second (default: "
                         "the run's --slo-ms, else every success)")
    args = ap.parse_args(argv)
    try:
        rep = report(args.run_dir, quiet=args.quiet, slo_ms=args.slo_ms)
    except FileNotFoundError as exc:
        print(f"breakdown: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(rep.files["md"])
    return 0
