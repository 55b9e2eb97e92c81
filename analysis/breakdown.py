"""Where the time goes: the breakdown report of one run directory.

    python analysis/breakdown.py RUN_DIR        (from any directory; needs only RUN_DIR's files)

Per concurrency step and image size class: requests measured (after the step's warm-up, status
200), errors, throughput, end-to-end mean/p50/p95/p99 from the load generator's exact records,
and for every component its mean and median time and its share of end-to-end.

Closure (docs/architecture.md): each nanosecond of a request's ``[send_ns, recv_ns)`` is given to
the spans covering it, split evenly where spans overlap (k crops in flight at once); what no span
covers is ``other``. So per request the components plus ``other`` equal end-to-end exactly.

Open loop (``--arrivals``/``--rates`` in the sweep): end-to-end runs from each request's intended
send time (``intended_ns``) to ``recv_ns``; the wait before the real send is a ``client-schedule_lag``
component, so closure still holds and the lag is shown.

Validity (top of the report): every step judged by ``overhead/contract/stability.py`` (last 3 windows
within 10% in throughput and p50, enough successful requests), and the load generator checked
(Locust above 0.8 of a core, or an open-loop schedule lag p99 above 20 ms: "measuring the
generator").

Writes report.md, report.html (self-contained), breakdown.csv and plots/ into RUN_DIR; prints the
tables. The code is the package ``analysis/report/`` (one module per concern: load, attribution,
summary, validity, findings, tables, render with Jinja2 templates, plots, console, cli); this file
is its entry point, and ``report``/``main`` here are ``analysis.report.cli``'s.
"""
from __future__ import annotations

import sys

from analysis.report.cli import main, report  # report: loadtest/sweep.py and tests call it

__all__ = ["main", "report"]

if __name__ == "__main__":
    sys.exit(main())
