"""The tables and notes printed to the terminal (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from analysis.report.tables import MAIN_FIXED, main_table

CONSOLE_MIN_SHARE = 0.01   # components under this share of e2e at every step stay in report.md only


def make_console() -> Console:
    console = Console()
    if not console.is_terminal:  # piped or logged: rich would squeeze the table into 80 columns
        console = Console(width=max(console.width, 200))
    return console


def print_tables(report, console: Console | None = None) -> None:
    """``report``: a ``cli.Report``. The main table (mean ms, share of e2e) with the components
    that matter somewhere (>= 1% of e2e) and ``other``, then the validity lines and findings."""
    console = console or make_console()
    s = report.summary
    head, rows = main_table(s, with_p50=False, steps=report.steps)
    head = [h.removesuffix(" ms") for h in head]
    keep = [i for i, h in enumerate(head)
            if i < MAIN_FIXED and h not in ("errors", "p95") or h == "other"
            or i >= MAIN_FIXED and (s.main[f"{h}_share"].fillna(0).max() >= CONSOLE_MIN_SHARE)]
    dropped = [h for i, h in enumerate(head) if i >= MAIN_FIXED and i not in keep]
    t = Table(title=f"Where the time goes — {report.run.path.name} — critical path "
                    f"(mean ms, share of e2e; work view in report.md)",
              title_justify="left")
    for i in keep:
        t.add_column(head[i], justify="right", no_wrap=False)
    last_load = None
    for r in rows:
        if last_load is not None and r[0] != last_load:
            t.add_section()
        last_load = r[0]
        t.add_row(*(r[i] for i in keep))
    console.print(t)
    if dropped:
        console.print(f"(under 1% of e2e at every step, in report.md: {', '.join(dropped)})",
                      highlight=False)
    console.print("[bold]Validity[/bold]")
    for v in report.validity:
        console.print(f" • {v.replace('**', '')}", highlight=False)
    console.print("[bold]What this says[/bold]")
    for n in report.findings:
        console.print(f" • {n}", highlight=False)
