"""Plain-text helpers shared by the terminal renderers: compact numbers and aligned tables whose
last column (usually a reason or message) is never cut."""

from __future__ import annotations

import math
from typing import Any, Sequence


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def duration(seconds: Any) -> str:
    """95.2 -> '1m35s', 3725 -> '1h02m', 7 -> '7s'; '–' for a missing value. Progress lines and reports."""
    if is_missing(seconds):
        return "–"
    minutes, secs = divmod(int(round(float(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def compact(value: Any, digits: int = 3) -> str:
    """A short human form: 3 significant digits, thousands as 'k', empty for missing values."""
    if is_missing(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) < 100_000 else f"{value / 1000:,.0f}k"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 100_000:
            return f"{int(value):,}"
        magnitude = abs(value)
        if magnitude >= 100_000:
            return f"{value / 1000:,.0f}k"
        if magnitude >= 10 ** digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if magnitude >= 1e-3 else f"{value:.2e}"
    return str(value)


def percent(value: Any, signed: bool = False) -> str:
    if is_missing(value):
        return ""
    return f"{value:+.1f}%" if signed else f"{value:.1f}%"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """Columns padded to their widest cell; the last column is left unpadded so long text runs on."""
    cells = [[str(h) for h in headers]] + [["" if is_missing(c) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1])] + [row[-1]]
        lines.append(indent + "  ".join(padded).rstrip())
        if index == 0:
            lines.append(indent + "  ".join("-" * width for width in widths).rstrip())
    return "\n".join(lines)
