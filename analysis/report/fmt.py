"""How the report writes numbers and load levels."""
from __future__ import annotations

import math


def plain_users(n) -> str:
    return f"{int(n)} user" + ("" if int(n) == 1 else "s")


def fmt_pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def fmt_ms(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def fmt_or_dash(x, spec: str) -> str:
    """``x`` formatted with ``spec``; "–" when missing (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
