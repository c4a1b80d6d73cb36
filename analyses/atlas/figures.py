"""The head atlas's report sections, its page tiles and its README figures. The pictures
are in ``plots``, the tables in ``tables``, where a head reads from in ``reads_from``; they
are importable from here too (one function serves the page, notebooks and the report)."""
from __future__ import annotations

from typing import Any

from workbench.sections import Section
from workbench.spec import figure

from .plots import (GRID_MARKER, PALETTE, UNSET_COLOUR, atlas_grid, categorical_grid, cluster_grid, column_label,
                    column_scatter, correlation_matrix, depth_profiles, flag_names, is_categorical, strongest_pair)
from .reads_from import READS_FROM, qk_run, reads_from, reads_from_rows
from .result import AtlasResult
from .tables import comparison_rows, correlation_rows, cluster_rows, sources_rows, top_heads_rows

__all__ = ["GRID_MARKER", "PALETTE", "READS_FROM", "UNSET_COLOUR", "atlas_grid", "atlas_sections", "categorical_grid",
           "cluster_grid", "cluster_rows", "column_label", "column_scatter", "comparison_rows", "correlation_matrix",
           "correlation_rows", "depth_profiles", "flag_names", "headline", "headline_figures", "is_categorical",
           "qk_run", "reads_from", "reads_from_rows", "sources_rows", "strongest_pair", "top_heads_rows"]


def _report_heads(result: AtlasResult, i: int, limit: int = 12) -> list[tuple[int, int]]:
    """The heads the report explains: the top two of every column, in column order."""
    seen: list[tuple[int, int]] = []
    for heads in result.atlas(i).top_heads.values():
        for t in heads[:2]:
            key = (int(t.layer), int(t.head_index))
            if key not in seen:
                seen.append(key)
    return seen[:limit]


def _overview(result: AtlasResult, i: int) -> Section:
    a = result.atlas(i)
    filled = "; ".join(f"{f.analysis} at {f.settings}" for f in a.filled)
    text = (f"{a.n_layers} layers x {a.n_heads} heads of {a.model}, {len(a.columns)} columns "
            f"from the newest saved run of each head-level analysis" + (f" (--fill ran: {filled})" if filled else "")
            + (f"; attention entropy and distance on {a.n_attention_prompts} IOI prompts" if a.n_attention_prompts else "")
            + ". Correlations are over all heads (no split: nothing is chosen on them).")
    return Section(f"Head atlas: {a.model}", text=text, tables=[sources_rows(result, i)],
                   figures=[cluster_grid(result, i), correlation_matrix(result, i)])


def _reads_from_section(result: AtlasResult, i: int) -> Section | None:
    qk = qk_run(result, i)
    if qk is None:
        return None
    return Section(f"Head atlas: {result.atlas(i).model}: where the top heads read from",
                   text="Measured: the key-side and query-side sources of each head's attended score "
                        f"(QK attribution on the {qk.config.task if qk.config else ''} prompts of "
                        f"{qk.path.name if qk.path else 'the qk run'}). From the weights: the strongest "
                        "K- and Q-composition writers (Elhage et al. 2021, minus the random baseline).",
                   tables=[reads_from_rows(qk, _report_heads(result, i))])


def _model_sections(result: AtlasResult, i: int) -> list[Section]:
    """One model's sections: overview, top heads, role clusters, correlations, where heads read from."""
    a = result.atlas(i)
    cl = a.clusters
    sil = f", silhouette {cl.silhouette:.3f}" if cl.silhouette is not None else ""
    pair = strongest_pair(result, i)
    out = [_overview(result, i),
           Section(f"Head atlas: {a.model}: top heads of each column, with their ranks in the others",
                   tables=[top_heads_rows(result, i)]),
           Section(f"Head atlas: {a.model}: role clusters", text=f"{cl.method} over {len(cl.columns)} columns, "
                   f"k={cl.k}{sil}.", tables=[cluster_rows(result, i)]),
           Section(f"Head atlas: {a.model}: rank correlations",
                   text="Spearman's rho over heads, Fisher-z 95% interval, two-sided permutation p-value "
                        f"({result.config.n_permutations if result.config else '?'} shuffles); the "
                        "strongest pair drawn head by head.",
                   tables=[correlation_rows(result, i)],
                   figures=[column_scatter(result, *pair, i)] if pair else [])]
    reads = _reads_from_section(result, i)
    return out + ([reads] if reads is not None else [])


def atlas_sections(result: AtlasResult) -> list[Section]:
    out = [s for i in range(len(result.models)) for s in _model_sections(result, i)]
    comp = result.comparison
    if comp:
        out.append(Section(f"Head atlas: {comp.models[0]} vs {comp.models[1]} by relative depth",
                           text=f"Roles present in both: {', '.join(comp.roles_in_both) or 'none'}. {comp.rule}.",
                           tables=[comparison_rows(result)], figures=[depth_profiles(result)]))
    return out


def headline(result: AtlasResult) -> list[tuple[str, Any]]:
    a = result.atlas()
    best = max((c for c in a.correlations if c.rho is not None), key=lambda c: abs(c.rho or 0.0), default=None)
    tiles: list[tuple[str, Any]] = [("heads", a.n_layers * a.n_heads), ("columns", len(a.columns)),
                                    ("role clusters", a.clusters.k)]
    if best is not None:
        tiles.append((f"strongest rank correlation: {best.a} ~ {best.b}", f"{best.rho:.2f}"))
    return tiles


def headline_figures(result: AtlasResult) -> list[dict[str, Any]]:
    """README figures: the number of columns, the strongest correlation with its interval, and k."""
    a = result.atlas()
    out = [figure(f"columns gathered on {a.model}", len(a.columns), n=a.n_layers * a.n_heads, fmt="d")]
    for name, iv in result.intervals.items():
        out.append(figure(name, interval=iv))
    out.append(figure("role clusters (k by silhouette)", a.clusters.k, fmt="d"))
    return out
