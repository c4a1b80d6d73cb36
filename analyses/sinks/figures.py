"""Figures of the attention-sink analysis: which heads have sinks beyond the first token,
per-head sink maps over an example prompt's tokens, the sink tokens, and ACT's
calibration accuracy before and after; the page's headline tiles."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench.figures.common import head_grid, head_label


def sink_strength_grid(result: Any) -> go.Figure:
    return head_grid(result.sink_strength, "Strength of sinks beyond the first token (mean over prompts of the "
                     "largest non-first column mean)", colorbar="column mean", diverging=False)


def sink_share_grid(result: Any) -> go.Figure:
    return head_grid(result.sink_share, "Share of prompts where the head has a sink beyond the first token",
                     colorbar="share", diverging=False)


def sink_map(result: Any, n_heads: int = 12) -> go.Figure:
    """Column means of the strongest sink heads over the example prompt's tokens; sinks
    beyond the first token are outlined."""
    cm = result.example_column_means.float()  # [L H pos]
    sinks = result.example_sinks
    heads = [(s["layer"], s["head"]) for s in result.sinks[:n_heads]]
    if not heads:
        heads = [(0, 0)]
    z = [cm[l, h].tolist() for l, h in heads]
    tokens = result.example_tokens
    labels = [f"{i}:{t!r}" for i, t in enumerate(tokens)]
    rows = [head_label(l, h) for l, h in heads]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=rows, colorscale="Blues", zmin=0, colorbar={"title": "column mean"},
                               hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>"))
    xs, ys = [], []
    for r, (l, h) in enumerate(heads):
        for k in sinks[l, h].nonzero().flatten().tolist():
            xs.append(labels[k])
            ys.append(rows[r])
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker={"symbol": "square-open", "size": 14, "color": "red"},
                             name=f"sink (> {result.config.threshold})"))
    fig.update_layout(title="Sink maps on an example prompt (strongest sink heads)", xaxis_title="token",
                      yaxis_title="head", yaxis_autorange="reversed", height=max(320, 26 * len(heads) + 160))
    return fig


def sink_tokens_bar(result: Any) -> go.Figure:
    counts = result.sink_tokens
    fig = go.Figure(go.Bar(x=[repr(t) for t in counts], y=list(counts.values())))
    fig.update_layout(title="Tokens at sinks beyond the first token (head x prompt occurrences)", xaxis_title="token",
                      yaxis_title="count")
    return fig


def calibration_bar(result: Any) -> go.Figure:
    heads = result.calibrated_heads
    fig = go.Figure([
        go.Bar(name="before", x=["calibration split", "held-out split"],
               y=[result.calibration_split_before, result.calibration_before]),
        go.Bar(name=f"after (ACT, beta={result.config.beta})", x=["calibration split", "held-out split"],
               y=[result.calibration_split_after, result.calibration_after]),
    ])
    fig.update_layout(barmode="group", title=f"Multiple-choice accuracy with {len(heads)} calibrated heads: "
                      f"{', '.join(heads) or 'none'}", yaxis_title="accuracy", yaxis_range=[0, 1])
    return fig


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the sinks page."""
    return [("sinks beyond the first token", result.n_sinks_beyond_first),
            ("heads with such sinks", result.n_heads_with_sinks),
            ("held-out accuracy before", f"{result.calibration_before:.3f}"),
            ("after calibration", f"{result.calibration_after:.3f}")]


def sinks_sections(result: Any) -> list:
    from workbench.report import Section

    classes = ", ".join(f"{k}: {v}" for k, v in result.sink_token_classes.items())
    text = (f"{result.n_sinks_beyond_first} sinks beyond the first token (head x prompt x position) in "
            f"{result.n_heads_with_sinks} heads; token classes: {classes}. Calibration on the held-out split: "
            f"{result.calibration_before:.3f} -> {result.calibration_after:.3f} ({result.n_heldout} questions). "
            f"Example prompt: {result.example_prompt!r}")
    search = result.search
    return [
        Section("Attention sinks beyond the first token", text=text,
                figures=[sink_strength_grid(result), sink_map(result), sink_tokens_bar(result)]),
        Section("Massive activations at sink tokens (and at the first token)",
                tables=[t for t in (result.massive_activations, result.first_token_massive_activations) if t]),
        Section("ACT attention calibration", text="Head search: single-head calibration gain on the calibration split.",
                figures=[calibration_bar(result)], tables=[search] if search else []),
    ]
