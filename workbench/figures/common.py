"""Figure building blocks shared by every analysis: the layer-by-head grid, top-head
bars, token-by-token heatmaps and curves. Heads are always ``L{l}H{h}``."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=float)


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def head_grid(values, title: str, colorbar: str = "", diverging: bool = True, zmid: float | None = 0.0) -> go.Figure:
    """A [layer head] heatmap with L{l}H{h} hover labels (layer 0 at the top)."""
    z = to_numpy(values)
    n_layers, n_heads = z.shape
    text = [[head_label(l, h) for h in range(n_heads)] for l in range(n_layers)]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(n_heads)), y=list(range(n_layers)), text=text,
            hovertemplate="%{text}: %{z:.4g}<extra></extra>",
            colorscale="RdBu_r" if diverging else "Viridis", zmid=zmid if diverging else None,
            colorbar={"title": colorbar},
        )
    )
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed",
                      xaxis={"dtick": 1}, yaxis={"dtick": 1 if n_layers <= 16 else 2},
                      height=max(320, 18 * n_layers + 120), margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def bar_top_heads(values, title: str, k: int = 15, xaxis: str = "effect", by_abs: bool = True) -> go.Figure:
    """The k heads with the largest values (by magnitude when ``by_abs``), as horizontal bars."""
    z = to_numpy(values)
    flat = np.abs(z).ravel() if by_abs else z.ravel()
    order = np.argsort(-flat)[:k]
    n_heads = z.shape[1]
    labels = [head_label(int(i // n_heads), int(i % n_heads)) for i in order]
    vals = [float(z.ravel()[i]) for i in order]
    fig = go.Figure(go.Bar(x=vals[::-1], y=labels[::-1], orientation="h"))
    fig.update_layout(title=title, xaxis_title=xaxis, height=max(300, 22 * len(labels) + 100),
                      margin={"l": 80, "r": 20, "t": 50, "b": 50})
    return fig


def token_heatmap(matrix, tokens: Sequence[str], title: str, key_tokens: Sequence[str] | None = None) -> go.Figure:
    """A query-by-key matrix (e.g. one head's attention pattern) labelled with tokens."""
    z = to_numpy(matrix)
    q_labels = [f"{i}:{t!r}" for i, t in enumerate(tokens)]
    k_labels = [f"{i}:{t!r}" for i, t in enumerate(key_tokens or tokens)]
    fig = go.Figure(go.Heatmap(z=z, x=k_labels, y=q_labels, colorscale="Blues", zmin=0,
                               hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="key token", yaxis_title="query token", yaxis_autorange="reversed",
                      height=max(350, 22 * len(tokens) + 150))
    return fig


def line_curves(x, curves: dict[str, Sequence[float]], title: str, xaxis: str, yaxis: str) -> go.Figure:
    """Several named curves over a shared x axis."""
    fig = go.Figure()
    for name, ys in curves.items():
        fig.add_trace(go.Scatter(x=list(to_numpy(x)), y=list(to_numpy(ys)), mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis)
    return fig
