"""The report's two attributions of one run's spans, after the workers' clocks are checked:
the critical path (headline: where each request's latency came from) and the work view (even
split: where the time was spent, all crops counted)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.report.attribution import attribute
from analysis.report.backlog import backlog_fraction, busy_intervals, span_roles
from analysis.report.clocks import TABLE_COLUMNS, check_clocks
from analysis.report.critical_path import critical_path


@dataclass
class Attribution:
    path: pd.DataFrame      # critical path, per request (analysis.report.critical_path)
    work: pd.DataFrame      # even split, the crops' waits split into broker / backlog
    clock_notes: list[str]  # warnings of analysis.report.clocks
    clocks: pd.DataFrame = None   # per process: offset ± error (analysis.report.clocks.TABLE_COLUMNS)


def attribute_both(requests: pd.DataFrame, spans: pd.DataFrame,
                   processes: dict | None = None) -> Attribution:
    """Clock check (and correction) of every process's spans, then both attributions."""
    c = check_clocks(requests, spans, span_roles(spans), processes)
    spans, roles = c.spans, c.roles
    busy = busy_intervals(spans, roles)
    return Attribution(critical_path(requests, spans, roles, busy),
                       attribute(requests, spans, backlog_fraction(spans, roles, busy)), c.notes,
                       c.table if c.table is not None else pd.DataFrame(columns=TABLE_COLUMNS))
