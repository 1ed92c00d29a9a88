"""How the reports write dollars, shares and spans of time, in text and on chart axes."""

from __future__ import annotations

import math


def format_usd(value: float | None) -> str:
    """Dollars with at least three significant digits: ``$0.0186``, ``$0.000412``,
    ``$12.40``, ``$1,234.00``; ``n/a`` for None."""
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = max(4, 2 - math.floor(math.log10(abs(value))))
    return f"${value:.{decimals}f}"


def format_pct(share: float | None, decimals: int = 1) -> str:
    """A share (0.033) as a percentage (``3.3 %``); ``n/a`` for None."""
    return "n/a" if share is None else f"{100 * share:.{decimals}f} %"


def time_unit(span_s: float) -> tuple[str, float]:
    """The unit a span of this many seconds reads best in, and seconds per unit."""
    if span_s >= 3 * 3600:
        return "h", 3600.0
    if span_s >= 3 * 60:
        return "min", 60.0
    return "s", 1.0


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``raw`` (> 0)."""
    power = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 5.0, 10.0):
        if multiple * power >= raw * (1 - 1e-9):
            return multiple * power
    return 10 * power
