"""The ground floor of what people read: a report ``Section`` and the interval table.
Results, specs and reports all import this module, and it imports none of them, so
none of those three imports another in a circle."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """One report section: a heading, a short text, figures (plotly) and tables (rows of dicts)."""

    title: str
    text: str = ""
    figures: list[Any] = field(default_factory=list)
    tables: list[list[dict[str, Any]]] = field(default_factory=list)


def interval_rows(intervals: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: estimate, interval, level, n, method and split (``stats.Interval``)."""
    return [{"figure": name, "estimate": f"{iv.value:.4g}", "interval": f"[{iv.low:.4g}, {iv.high:.4g}]",
             "level": f"{iv.level:.0%}", "n": iv.n, "method": iv.method, "split": iv.split}
            for name, iv in intervals.items()]


def interval_sections(result: Any) -> list[Section]:
    """The result's stored intervals as one table, appended to every page and report."""
    intervals = getattr(result, "intervals", None) or {}
    if not intervals:
        return []
    return [Section("Intervals", text="Each figure with its interval, sample size and the split it was measured on.",
                    tables=[interval_rows(intervals)])]
