"""Runs side by side: per load level (users) x size class, throughput, p50/p99 and where the time
goes (component shares of e2e, the broker share highlighted), plus the broker and workers each run
used (config.json).

    python analysis/compare.py RUN_A RUN_B [...] [--out compare.md] [--label A --label B]
    python analysis/compare.py RUN_CLOSED RUN_OPEN [--match order|throughput]

Closed loop vs open loop (any run with ``--arrivals``, or ``--match`` given): a load-mode table
instead. Open-loop steps are labelled by their rate, closed-loop steps by their users; rows are
paired per size class by the order of the steps (``--match order``, default) or, with ``--match
throughput``, each step of the first run is paired with the step of every other run nearest its
measured throughput. Shown: mean rate (req/s), e2e mean/p50/p95/p99 from each run's own e2e
definition (open loop: intended send -> recv, so schedule lag counts; closed loop: send -> recv)
and the schedule lag (intended -> real send) p50/p99, then component shares as above.

Closed loop: a Pareto view too (throughput vs p99 per run and load level, Pareto-optimal points
marked, ``--p99-budget MS`` names the best configuration; compare.md and compare_pareto.png).

``--repeats``: the runs are repeats of one configuration; each cell shows mean ± 95% CI.

Prints a rich table and writes compare.md (default: next to the runs, in the first run
directory's parent). The summaries are the breakdown report's own (``analysis.report``): same
closure, same step windows.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import pareto
from analysis.report import uncertainty
from analysis.report.attribution import UNCOVERED
from analysis.report.load import load_run, open_loop_view
from analysis.report.summary import assign_steps, size_sort_key, summarize
from analysis.report.views import attribute_both

HIGHLIGHT = "broker"


@dataclass
class RunSummary:
    label: str
    path: Path
    broker: str
    workers: str
    main: pd.DataFrame        # summarize().main
    components: list
    open_loop: bool = False
    arrivals: str = ""        # poisson | constant (open loop)
    rates: tuple = ()         # target req/s per step (open loop)
    lag: pd.DataFrame | None = None  # step, size_class, lag_p50_ms, lag_p99_ms (intended -> send)


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
    lag = schedule_lag(run.requests, steps)
    if run.is_open_loop:
        requests, spans = open_loop_view(requests, spans)
        if len(steps):
            steps = steps.copy()
            steps["users"] = steps["step"] + 1
    s = summarize(requests, attribute_both(requests, spans).path, steps)   # critical path
    broker, workers = describe_broker(run.config)
    load = run.config.get("load") or {}
    ol = run.open_loop or {}
    return RunSummary(label or Path(path).name, Path(path), broker, workers, s.main, s.components,
                      open_loop=run.is_open_loop, arrivals=str(load.get("arrivals") or ol.get("kind") or ""),
                      rates=tuple(load.get("rates") or ol.get("rates") or ()), lag=lag)


def schedule_lag(requests: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step and size class, over each step's measured window (successful requests): the lag
    intended -> real send, p50/p99 ms (0 for a closed loop, whose intended time is its send)."""
    cols = ["step", "size_class", "lag_p50_ms", "lag_p99_ms"]
    if not len(requests) or steps is None or not len(steps):
        return pd.DataFrame(columns=cols)
    req = requests.copy()
    req["step"] = assign_steps(req, steps).to_numpy()
    req = req[(req["step"] >= 0) & (req["status"] == 200) & req["error"].isna()]
    intended = req["intended_ns"].fillna(req["send_ns"])
    req["lag_ms"] = (req["send_ns"] - intended).clip(lower=0) / 1e6
    g = req.groupby(["step", "size_class"])["lag_ms"]
    out = pd.DataFrame({"lag_p50_ms": g.quantile(0.5), "lag_p99_ms": g.quantile(0.99)}).reset_index()
    return out[cols]


def compare_table(runs: list[RunSummary]) -> tuple[list[str], list[list[str]], list]:
    """Header, rows (users, size, run, req/s, p50, p99, shares...) and the components shown."""
    comps = []
    for r in runs:
        for c in r.components:
            if c not in comps and c != UNCOVERED:
                comps.append(c)
    for c in ("backlog", HIGHLIGHT):   # broker first, backlog beside it, the rest in breakdown order
        if c in comps:
            comps.remove(c)
            comps.insert(0, c)
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


MATCH_MODES = ("order", "throughput")


def _shown_components(runs: list[RunSummary]) -> list:
    comps = []
    for r in runs:
        for c in r.components:
            if c not in comps and c != UNCOVERED:
                comps.append(c)
    comps.append(UNCOVERED)
    return comps


def load_label(r: RunSummary, row) -> str:
    """How a step's load was set: '2 users' (closed loop) or '13 req/s poisson' (open loop)."""
    step = int(row["step"])
    if r.open_loop:
        rate = r.rates[step] if step < len(r.rates) else math.nan
        return f"{rate:g} req/s {r.arrivals}".strip()
    users = int(row["users"])
    return f"{users} user" if users == 1 else f"{users} users"


def loop_pairs(runs: list[RunSummary], match: str = "order") -> list[tuple[str, str, list]]:
    """[(pair label, size, [row of each run or None])]. ``order``: the i-th step of every run (per
    size class); ``throughput``: each row of the first run with, from every other run, the row of
    the same size class nearest in measured throughput."""
    if match not in MATCH_MODES:
        raise ValueError(f"--match must be one of {MATCH_MODES}, not {match!r}")
    sizes = []
    for r in runs:
        if len(r.main):
            sizes += [s for s in r.main["size_class"].unique() if s not in sizes]
    sizes.sort(key=size_sort_key)
    pairs = []
    for size in sizes:
        per_run = [r.main[r.main["size_class"] == size].sort_values("step").reset_index(drop=True)
                   if len(r.main) else r.main for r in runs]
        if match == "order":
            for i in range(max(len(m) for m in per_run)):
                pairs.append((str(i + 1), size, [m.iloc[i] if i < len(m) else None for m in per_run]))
        else:
            ref = per_run[0]
            for i in range(len(ref)):
                x = ref.iloc[i]["throughput_rps"]
                row = [ref.iloc[i]]
                for m in per_run[1:]:
                    if not len(m):
                        row.append(None)
                        continue
                    j = (m["throughput_rps"] - x).abs().to_numpy().argmin()
                    row.append(m.iloc[int(j)])
                pairs.append((str(i + 1), size, row))
    return pairs


def loop_table(runs: list[RunSummary], match: str = "order") -> tuple[list[str], list[list[str]], list]:
    """Closed vs open loop: header, rows and the components shown."""
    comps = _shown_components(runs)
    head = (["pair", "size", "run", "loop", "load", "req/s", "e2e from", "mean ms", "p50 ms", "p95 ms",
             "p99 ms", "lag p50 ms", "lag p99 ms"] + [f"{c} %" for c in comps])
    rows = []
    for pair, size, picked in loop_pairs(runs, match):
        for r, row in zip(runs, picked):
            loop = "open" if r.open_loop else "closed"
            if row is None:
                rows.append([pair, size, r.label, loop] + ["-"] * (len(head) - 4))
                continue
            lag = r.lag if r.lag is not None else pd.DataFrame()
            sel = lag[(lag["step"] == row["step"]) & (lag["size_class"] == size)] if len(lag) else lag
            lp50 = sel.iloc[0]["lag_p50_ms"] if len(sel) else math.nan
            lp99 = sel.iloc[0]["lag_p99_ms"] if len(sel) else math.nan
            rows.append([pair, size, r.label, loop, load_label(r, row), _num(row["throughput_rps"], 1),
                         "intended" if r.open_loop else "send",
                         _num(row["e2e_mean_ms"], 1), _num(row["e2e_p50_ms"], 1),
                         _num(row["e2e_p95_ms"], 1), _num(row["e2e_p99_ms"], 1),
                         _num(lp50, 2), _num(lp99, 2)]
                        + [_pct(row.get(f"{c}_share", math.nan)) for c in comps])
    return head, rows, comps


def _num(x, digits=1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown(runs: list[RunSummary], head, rows, match: str | None = None) -> str:
    lines = ["# Runs compared", "", "| run | directory | loop | broker | workers |", "|---|---|---|---|---|"]
    for r in runs:
        loop = f"open ({r.arrivals})" if r.open_loop else "closed"
        lines.append(f"| {r.label} | `{r.path}` | {loop} | `{r.broker}` | {r.workers} |")
    if match:
        lines += ["", f"Closed vs open loop, steps paired by **{match}** (per size class). e2e is "
                  "each run's own definition (`e2e from`): open loop from the intended send time "
                  "(schedule lag included, free of coordinated omission), closed loop from the real "
                  "send. Lag = intended -> real send (0 for a closed loop). Shares: of mean e2e, "
                  "components + `other` = 100%.", ""]
    else:
        lines += ["", "Per load level and size class: throughput, e2e p50/p99 and each component's "
                  "share of mean e2e (closure: the shares plus `other` add up to 100%). "
                  f"Shares are of the critical path (the crop that finished last). **{HIGHLIGHT}** = "
                  f"the broker's own transit of that crop and its result; `backlog` = that crop's "
                  f"wait for a worker busy with other crops.", ""]
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
        t.add_column(h, justify="left" if h in ("users", "pair", "size", "run", "loop", "load",
                                                 "e2e from") else "right",
                     style="bold yellow" if hi else None, header_style="bold yellow" if hi else None)
    last = None
    for row in rows:
        if last is not None and row[:2] != last:
            t.add_section()
        last = row[:2]
        t.add_row(*row)
    console.print(t)
    for r in runs:
        loop = f"open loop ({r.arrivals}), e2e from intended send" if r.open_loop else \
            "closed loop, e2e from send"
        console.print(f"  {r.label}: {loop}; broker {r.broker}, workers {r.workers}  ({r.path})",
                      highlight=False)


def compare(run_dirs, out=None, labels=None, quiet=False, match: str | None = None,
            p99_budget_ms: float | None = None) -> Path:
    """Side by side; the closed-vs-open load-mode table when a run is open loop or ``match`` is
    given (``order`` or ``throughput``). Closed loop: also the Pareto view (``analysis.pareto``:
    a compare.md section and ``compare_pareto.png``), naming the best run under ``p99_budget_ms``."""
    labels = list(labels or [])
    names = [Path(p).name for p in run_dirs]
    runs = []
    for i, p in enumerate(run_dirs):
        label = labels[i] if i < len(labels) else names[i]
        if names.count(names[i]) > 1 and i >= len(labels):
            label = f"{names[i]}#{i + 1}"
        runs.append(summarize_run(p, label))
    if match or any(r.open_loop for r in runs):
        match = match or "order"
        head, rows, _ = loop_table(runs, match)
    else:
        head, rows, _ = compare_table(runs)
    out = Path(out) if out else Path(run_dirs[0]).resolve().parent / "compare.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(runs, head, rows, match)
    front = None
    if not match:
        front = pareto.points(runs)
        if len(front):
            png = pareto.plot(front, out.with_name(out.stem + "_pareto.png"), p99_budget_ms)
            text += "\n".join(pareto.markdown(front, p99_budget_ms) + ["", f"![Pareto]({png.name})", ""])
    out.write_text(text)
    if not quiet:
        print_table(runs, head, rows)
        if front is not None and p99_budget_ms is not None:
            for r in pareto.best_under(front, p99_budget_ms).to_dict("records"):
                print(f"best under p99 {p99_budget_ms:g} ms, {r['size_class']}: {r['run']} at "
                      f"{r['users']} users ({r['throughput_rps']:.1f} req/s, p99 {r['e2e_p99_ms']:.1f} ms)")
        print(f"compare: {out}")
    return out


def compare_repeats(run_dirs, out=None, quiet=False) -> Path:
    """The runs are repeats of one configuration: mean ± 95% CI per (users, size) cell."""
    runs = [summarize_run(p) for p in run_dirs]
    comps = [c for c in dict.fromkeys(c for r in runs for c in r.components)]
    table = uncertainty.repeat_table([r.main for r in runs], comps)
    out = Path(out) if out else Path(run_dirs[0]).resolve().parent / "compare.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(uncertainty.repeat_markdown(table, comps, [str(r.path) for r in runs]))
    if not quiet:
        print(out.read_text())
        print(f"compare: {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="analysis/compare.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", help="run directories written by loadtest/sweep.py")
    ap.add_argument("--out", default=None, help="markdown file (default: RUN_A/../compare.md)")
    ap.add_argument("--label", action="append", default=[], help="name of each run, in order")
    ap.add_argument("--match", choices=MATCH_MODES, default=None,
                    help="closed vs open loop: pair steps by their order (default when a run is "
                         "open loop) or each step of the first run with the nearest throughput")
    ap.add_argument("--p99-budget", type=float, default=None, metavar="MS",
                    help="name the configuration with the most throughput whose p99 stays within MS")
    ap.add_argument("--repeats", action="store_true",
                    help="the runs are repeats of one configuration: mean and 95%% CI per cell")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.repeats:
            compare_repeats(args.run_dirs, args.out, args.quiet)
            return 0
        compare(args.run_dirs, args.out, args.label, args.quiet, args.match, args.p99_budget)
    except FileNotFoundError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
