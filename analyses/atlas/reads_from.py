"""Where a head reads from, for the head card and the report: measured (the query-side and
key-side sources of its attended score in the saved QK-attribution run behind the atlas's
composition columns) and from the weights (its strongest K- and Q-composition writers).
The QK run is read by its fields, as loaded from its run folder (no import of the analysis)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .result import AtlasResult

READS_FROM = ("measured, key side", "measured, query side", "weights, K-composition", "weights, Q-composition")


def qk_run(result: AtlasResult, i: int = 0) -> Any | None:
    """The saved QK-attribution run behind model ``i``'s composition columns (None without one)."""
    from workbench.errors import WorkbenchError
    from workbench.results import load_result

    for c in result.atlas(i).columns:
        if c.analysis == "qk" and c.run:
            try:
                return load_result(c.run)
            except WorkbenchError:
                return None
    return None


def reads_from(qk: Any, layer: int, head: int, k: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Where head (layer, head) reads from, strongest first: measured (the query-side and
    key-side sources of its attended score on the QK run's prompts) and from the weights (its
    strongest K- and Q-composition writers, minus the random baseline)."""
    name = f"L{layer}H{head}"
    measured = qk.head_sources.get(name)
    out = {READS_FROM[0]: [{"source": s.component, "value": s.value} for s in (measured.key if measured else [])[:k]],
           READS_FROM[1]: [{"source": s.component, "value": s.value} for s in (measured.query if measured else [])[:k]]}
    for label, mode in zip(READS_FROM[2:], ("K", "Q")):
        scores = qk.composition[mode][:, :, layer, head].float().cpu()  # [writer layer, writer head]
        flat = scores.nan_to_num(float("-inf")).flatten()
        n = int(np.isfinite(flat.cpu().numpy()).sum())
        vals, idx = flat.topk(min(k, n)) if n else (flat[:0], flat[:0].long())
        out[label] = [{"source": f"L{int(j) // scores.shape[1]}H{int(j) % scores.shape[1]}", "value": float(v)}
                      for v, j in zip(vals, idx)]
    return out


def reads_from_rows(qk: Any, heads: list[tuple[int, int]], k: int = 3) -> list[dict[str, Any]]:
    """The report's table: one row per head, its top sources per kind."""
    rows = []
    for layer, head in heads:
        lists = reads_from(qk, layer, head, k)
        rows.append({"head": f"L{layer}H{head}",
                     **{kind: ", ".join(f"{r['source']} ({r['value']:.3g})" for r in lists[kind]) or "-"
                        for kind in READS_FROM}})
    return rows
