"""Figures of the retrieval-head analysis: the layer-by-head score grid, the needle grid
(accuracy over context length and depth), the masking curves and the KV check; the
page's headline tiles."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench.figures.common import bar_top_heads, head_grid, line_curves


def score_grid(result: Any) -> go.Figure:
    return head_grid(result.scores, f"Retrieval score per head ({result.n_counted}/{result.n_tests} tests counted; "
                     f"{result.n_retrieval_heads} heads over {result.config.threshold})", colorbar="retrieval score",
                     diverging=False)


def top_heads_bar(result: Any, k: int = 15) -> go.Figure:
    return bar_top_heads(result.scores, f"Top {k} retrieval heads", k=k, xaxis="retrieval score", by_abs=False)


def needle_grid(result: Any) -> go.Figure:
    z = result.needle_grid.tolist()
    fig = go.Figure(go.Heatmap(z=z, x=[f"{d:g}%" for d in result.depths], y=[str(L) for L in result.context_lengths],
                               zmin=0, zmax=1, colorscale="RdYlGn", colorbar={"title": "accuracy"},
                               hovertemplate="length %{y}, depth %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(title="Needle accuracy (ROUGE-1 recall > 0.5) by context length and depth",
                      xaxis_title="needle depth", yaxis_title="context length (tokens)")
    return fig


def masking_curves(result: Any) -> go.Figure:
    mk = result.masking
    fig = line_curves(mk.k, {"top-k retrieval heads masked": mk.top_accuracy,
                             "k random heads masked (mean of draws)": mk.random_accuracy},
                      f"Needle accuracy with heads masked ({mk.mode} masking)", "heads masked (k)",
                      "needle accuracy")
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def kv_table(result: Any) -> list[dict]:
    kv = result.kv_compression
    return [
        {"cache": "full", "KV cache kept": 1.0, "needle accuracy": kv.full_cache_accuracy},
        {"cache": f"top {len(kv.protected_heads)} retrieval heads full, others sink {kv.sink} + window {kv.window}",
         "KV cache kept": kv.cache_kept, "needle accuracy": kv.accuracy},
        {"cache": "same budget, random heads full", "KV cache kept": kv.random_protected_cache_kept,
         "needle accuracy": kv.random_protected_accuracy},
    ]


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the retrieval page."""
    return [("retrieval heads", result.n_retrieval_heads),
            ("share over threshold", f"{result.share_over_threshold:.1%}"),
            ("needle accuracy", f"{result.needle_accuracy:.2f}"),
            ("KV cache kept", f"{result.kv_compression.cache_kept:.1%}")]


def retrieval_sections(result: Any) -> list:
    from workbench.report import Section

    heads = ", ".join(f"{h['name']} ({h['score']:.2f})" for h in result.retrieval_heads[:12]) or "none"
    text = (f"Wu et al.'s retrieval score over {result.n_tests} needle tests ({result.n_counted} recalled); "
            f"{result.n_retrieval_heads} heads ({result.share_over_threshold:.1%}) score over "
            f"{result.config.threshold}: {heads}.")
    return [
        Section("Retrieval heads: scores", text=text, figures=[score_grid(result), top_heads_bar(result)]),
        Section("Retrieval heads: needle grid and masking", figures=[needle_grid(result), masking_curves(result)]),
        Section("Retrieval heads: KV-cache compression (RazorAttention-style)", tables=[kv_table(result)]),
    ]
