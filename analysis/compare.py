"""Runs side by side: per load level (users) x size class, throughput, p50/p99 and where the time
goes (component shares of e2e, the broker share highlighted), plus the broker and workers each run
used (config.json).

    python analysis/compare.py RUN_A RUN_B [...] [--out compare.md] [--label A --label B]

Prints a rich table and writes compare.md (default: next to the runs, in the first run
directory's parent). The summaries are the breakdown report's own (``analysis.breakdown``): same
closure, same step windows.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from analysis.breakdown import (UNCOVERED, attribute, load_run, open_loop_view,  # noqa: E402
                                size_sort_key, summarize)

HIGHLIGHT = "broker"


@dataclass
class RunSummary:
    label: str
    path: Path
    broker: str
    workers: str
    main: pd.DataFrame        # summarize().main
    components: list


def describe_broker(config: dict) -> tuple[str, str]:
    """(broker, workers) as the run's config.json says."""
    b = config.get("broker") or {}
    settings = ((config.get("gateway") or {}).get("settings") or {})
    url = b.get("requested") or b.get("url") or settings.get("broker") or "?"
    if b.get("local"):
        url = f"{url} ({b.get('url')})"
    w = config.get("workers") or {}
    if w.get("processes"):
        workers = f"{w['processes']} process(es)"
    else:
        workers = f"{settings.get('workers', '?')} in gateway"
    return url, workers


def summarize_run(path, label: str | None = None) -> RunSummary:
    run = load_run(path)
    requests, spans, steps = run.requests, run.spans, run.steps
    if run.is_open_loop:
        requests, spans = open_loop_view(requests, spans)
        if len(steps):
            steps = steps.copy()
            steps["users"] = steps["step"] + 1
    s = summarize(requests, attribute(requests, spans), steps)
    broker, workers = describe_broker(run.config)
    return RunSummary(label or Path(path).name, Path(path), broker, workers, s.main, s.components)


def compare_table(runs: list[RunSummary]) -> tuple[list[str], list[list[str]], list]:
    """Header, rows (users, size, run, req/s, p50, p99, shares...) and the components shown."""
    comps = []
    for r in runs:
        for c in r.components:
            if c not in comps and c != UNCOVERED:
                comps.append(c)
    if HIGHLIGHT in comps:      # broker first, then the rest in breakdown order
        comps.remove(HIGHLIGHT)
        comps.insert(0, HIGHLIGHT)
    comps.append(UNCOVERED)
    keys = set()
    for r in runs:
        if len(r.main):
            keys |= set(zip(r.main["users"].astype(int), r.main["size_class"]))
    head = ["users", "size", "run", "req/s", "p50 ms", "p99 ms"] + [f"{c} %" for c in comps]
    rows = []
    for users, size in sorted(keys, key=lambda k: (k[0], size_sort_key(k[1]))):
        for r in runs:
            m = r.main
            sel = m[(m["users"] == users) & (m["size_class"] == size)] if len(m) else m
            if not len(sel):
                rows.append([str(users), size, r.label] + ["-"] * (3 + len(comps)))
                continue
            row = sel.iloc[0]
            rows.append([str(users), size, r.label, _num(row["throughput_rps"], 1),
                         _num(row["e2e_p50_ms"], 1), _num(row["e2e_p99_ms"], 1)]
                        + [_pct(row.get(f"{c}_share", math.nan)) for c in comps])
    return head, rows, comps


def _num(x, digits=1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown(runs: list[RunSummary], head, rows) -> str:
    lines = ["# Runs compared", "", "| run | directory | broker | workers |", "|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.label} | `{r.path}` | `{r.broker}` | {r.workers} |")
    lines += ["", "Per load level and size class: throughput, e2e p50/p99 and each component's "
              "share of mean e2e (closure: the shares plus `other` add up to 100%). "
              f"**{HIGHLIGHT}** = time crops and results spend in the broker.", ""]
    hi = head.index(f"{HIGHLIGHT} %") if f"{HIGHLIGHT} %" in head else -1
    lines.append("| " + " | ".join(f"**{h}**" if i == hi else h for i, h in enumerate(head)) + " |")
    lines.append("|" + "---|" * len(head))
    for row in rows:
        lines.append("| " + " | ".join(f"**{v}**" if i == hi else v for i, v in enumerate(row)) + " |")
    return "\n".join(lines) + "\n"


def print_table(runs, head, rows, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:      # a log or a pipe: do not squeeze the columns
            console = Console(width=220)
    t = Table(title="Runs compared (shares of mean e2e)")
    for h in head:
        hi = h == f"{HIGHLIGHT} %"
        t.add_column(h, justify="left" if h in ("users", "size", "run") else "right",
                     style="bold yellow" if hi else None, header_style="bold yellow" if hi else None)
    last = None
    for row in rows:
        if last is not None and row[:2] != last:
            t.add_section()
        last = row[:2]
        t.add_row(*row)
    console.print(t)
    for r in runs:
        console.print(f"  {r.label}: broker {r.broker}, workers {r.workers}  ({r.path})",
                      highlight=False)


def compare(run_dirs, out=None, labels=None, quiet=False) -> Path:
    labels = list(labels or [])
    names = [Path(p).name for p in run_dirs]
    runs = []
    for i, p in enumerate(run_dirs):
        label = labels[i] if i < len(labels) else names[i]
        if names.count(names[i]) > 1 and i >= len(labels):
            label = f"{names[i]}#{i + 1}"
        runs.append(summarize_run(p, label))
    head, rows, _ = compare_table(runs)
    out = Path(out) if out else Path(run_dirs[0]).resolve().parent / "compare.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(runs, head, rows))
    if not quiet:
        print_table(runs, head, rows)
        print(f"compare: {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="analysis/compare.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", help="run directories written by loadtest/sweep.py")
    ap.add_argument("--out", default=None, help="markdown file (default: RUN_A/../compare.md)")
    ap.add_argument("--label", action="append", default=[], help="name of each run, in order")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        compare(args.run_dirs, args.out, args.label, args.quiet)
    except FileNotFoundError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
