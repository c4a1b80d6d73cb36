"""The circuit page's and report's tables beside its figures: EAP-IG's convergence, MIB's
scores (edges and node level), the curve under the second ablation, the node reference and
the stability of the discovery. One row dict per line of a table."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import Convergence


def convergence_rows(conv: Convergence | None) -> list[dict[str, Any]]:
    if not conv:
        return []
    rows = []
    for i, s in enumerate(conv.steps):
        row = {"steps": s, "Spearman vs max": conv.spearman_vs_max[i], f"top-{conv.k} Jaccard": conv.topk_jaccard_vs_max[i]}
        if conv.faithfulness:
            row[f"faithfulness top-{conv.k} (validation)"] = conv.faithfulness[i]
        rows.append(row)
    return rows


def mib_rows(result: Any) -> list[dict[str, Any]]:
    """MIB's scores per method (test prompts): CPR (signed scores, higher is better) and CMD
    (absolute scores, lower is better), with their bootstrap intervals, and the curve."""
    rows = []
    by_level = [("edges", m, c) for m, c in (result.mib or {}).items()]
    by_level += [("heads (node level)", m, c) for m, c in (getattr(result, "mib_nodes", None) or {}).items()]
    for level, method, c in by_level:
        rows.append({"method": method, "level": level, "ablation": c.ablation, "prompts": c.n_prompts,
                     "CPR": _iv(c.cpr), "CMD": _iv(c.cmd),
                     "faithfulness at MIB's fractions (absolute scores)": ", ".join(
                         f"{p * 100:g}%: {f:.2f}" for p, f in zip(c.fractions, c.faithfulness_absolute))})
    return rows


def beside_rows(result: Any) -> list[dict[str, Any]]:
    """The validation curve under the second ablation, one row per (method, size)."""
    c = result.faithfulness_curve_beside
    if c is None:
        return []
    return [{"method": meth, "ablation (beside)": result.beside_ablation or "second", "edges kept": n,
             "faithfulness (validation)": f}
            for meth, row in c.methods.items() for n, f in zip(row.n_edges, row.faithfulness)]


def node_rows(result: Any) -> list[dict[str, Any]]:
    """Node circuits (top-k heads, every MLP kept) by the exact reference and by each method."""
    ref = result.node_reference
    if ref is None:
        return []
    rows = []
    for name, faith in ref.faithfulness.items():
        agree = ref.agreement.get(name, {})
        rows.append({"head ranking": name, **{f"{k} heads": f for k, f in zip(ref.heads, faith)},
                     "Spearman vs exact": agree.get("spearman"), "top-10 overlap": agree.get("top10_overlap")})
    return rows


def stability_rows(result: Any) -> list[dict[str, Any]]:
    st = result.stability
    return [dataclasses.asdict(st)] if st else []


def _iv(iv: Any) -> str:
    return f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]"
