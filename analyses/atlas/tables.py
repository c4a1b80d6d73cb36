"""The atlas's tables for reports and notebooks: each column's source, the top heads with
their ranks elsewhere, the correlations, the role clusters and two models side by side."""
from __future__ import annotations

import math
from typing import Any

from .result import AtlasResult


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def top_heads_rows(result: AtlasResult, i: int = 0) -> list[dict[str, Any]]:
    """One row per (column, top head): its value and its rank in every other column."""
    a = result.atlas(i)
    n = a.n_layers * a.n_heads
    rows = []
    for col, heads in a.top_heads.items():
        for k, t in enumerate(heads, 1):
            others = ", ".join(f"{c} {r}" for c, r in t.ranks.items() if c != col)
            rows.append({"column": col, "#": k, "head": t.head, "value": _fmt(t.value),
                         f"rank elsewhere (of {n})": others})
    return rows


def sources_rows(result: AtlasResult, i: int = 0) -> list[dict[str, Any]]:
    return [{"column": c.name, "analysis": c.analysis, "unit": c.unit,
             "stronger": "higher" if c.direction > 0 else "lower", "run": c.run or "(this run)",
             "what": c.description} for c in result.atlas(i).columns]


def correlation_rows(result: AtlasResult, i: int = 0) -> list[dict[str, Any]]:
    rows = []
    for c in sorted(result.atlas(i).correlations, key=lambda c: -abs(c.rho) if c.rho is not None else 1):
        iv = c.interval
        rows.append({"a": c.a, "b": c.b, "rho": _fmt(c.rho),
                     "95% interval": f"[{_fmt(iv.low)}, {_fmt(iv.high)}]" if iv else "-",
                     "permutation p": _fmt(c.p), "n heads": c.n})
    return rows


def cluster_rows(result: AtlasResult, i: int = 0) -> list[dict[str, Any]]:
    return [{"cluster": c.id, "heads": c.size, "described by (mean direction-aware rank scaled to (0, 1], 1 = strongest)": c.description,
             "members": " ".join(c.members[:12]) + (" ..." if c.size > 12 else "")}
            for c in result.atlas(i).clusters.clusters]


def comparison_rows(result: AtlasResult) -> list[dict[str, Any]]:
    comp = result.comparison
    if comp is None:
        return []
    a, b = comp.models
    return [{"column": r.column, f"present in {a}": r.present_a, f"present in {b}": r.present_b,
             f"heads ({a})": r.n_a, f"heads ({b})": r.n_b, f"mean depth ({a})": _fmt(r.depth_a),
             f"mean depth ({b})": _fmt(r.depth_b), f"top ({a})": f"{r.top_a} @ {r.top_depth_a}",
             f"top ({b})": f"{r.top_b} @ {r.top_depth_b}"} for r in comp.roles]
