"""Figures of the attention-sink analysis: which heads have sinks beyond the first token,
per-head sink maps over an example prompt's tokens, the sink tokens, and ACT's
calibration accuracy before and after; the page's headline tiles."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench.figures.common import head_grid, head_label
from workbench.sections import Section

from .records import table
from .result import SinksResult


def sink_strength_grid(result: SinksResult) -> go.Figure:
    return head_grid(result.sink_strength, "Strength of sinks beyond the first token (mean over prompts of the "
                     "largest non-first column mean)", colorbar="column mean", diverging=False)


def sink_map(result: SinksResult, n_heads: int = 12) -> go.Figure:
    """Column means of the strongest sink heads over the example prompt's tokens; sinks
    beyond the first token are outlined."""
    cm = result.example_column_means.float()  # [L H pos]
    sinks = result.example_sinks.bool()
    heads = [(s.layer, s.head) for s in result.sinks[:n_heads]]
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


def sink_tokens_bar(result: SinksResult) -> go.Figure:
    counts = result.sink_tokens
    fig = go.Figure(go.Bar(x=[repr(t) for t in counts], y=list(counts.values())))
    fig.update_layout(title="Tokens at sinks beyond the first token (head x prompt occurrences)", xaxis_title="token",
                      yaxis_title="count")
    return fig


def calibration_bar(result: SinksResult) -> go.Figure:
    """Accuracy before and after ACT per task, on the calibration split (which chose the heads,
    beta and threshold) and on the held-out split (which chose nothing), with 95% Wilson
    intervals; the dotted line is chance."""
    fig = go.Figure()
    rows = result.calibration
    for what, label, color in (("base", "before", "#7f7f7f"), ("act", "after (ACT)", "#1f77b4")):
        xs, ys, hi, lo, text = [], [], [], [], []
        for row in rows:
            t = row.task
            for split, key in (("calibration", f"calibration {what}"), ("held-out", what)):
                iv = result.interval(t, key)
                xs.append(f"{t}<br>{split} (n={iv.n})")
                ys.append(iv.value)
                hi.append(iv.high - iv.value)
                lo.append(iv.value - iv.low)
                text.append(f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]")
        fig.add_trace(go.Bar(name=label, x=xs, y=ys, marker_color=color, hovertext=text,
                             error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
    for i, row in enumerate(rows):
        fig.add_shape(type="line", xref="x", yref="y", x0=2 * i - 0.5, x1=2 * i + 1.5, y0=row.chance,
                      y1=row.chance, line={"dash": "dot", "color": "black"})
    heads = "; ".join(f"{r.task}: {', '.join(r.heads) or 'none'} (beta {r.beta}, threshold {r.threshold})"
                      for r in rows)
    fig.update_layout(barmode="group", title=f"Multiple-choice accuracy before and after ACT<br><sup>{heads}</sup>",
                      yaxis_title="accuracy (95% Wilson interval)", yaxis_range=[0, 1.05])
    return fig


def difference_plot(result: SinksResult) -> go.Figure:
    """The paired held-out differences ACT - base per task (accuracy and log p of the right
    option) with their 95% bootstrap intervals."""
    fig = go.Figure()
    for what, label in (("difference", "accuracy"), ("difference by group", "accuracy, resampling groups"),
                        ("logprob difference", "log p(right option)")):
        xs, ys, hi, lo = [], [], [], []
        for t in result.task_names:
            iv = result.interval(t, what)
            xs.append(f"{t} (n={iv.n})")
            ys.append(iv.value)
            hi.append(iv.high - iv.value)
            lo.append(iv.value - iv.low)
        fig.add_trace(go.Scatter(name=label, x=xs, y=ys, mode="markers", marker={"size": 11},
                                 error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(title="Held-out change with ACT (paired, 95% bootstrap interval)", yaxis_title="ACT - base")
    return fig


def headline(result: SinksResult) -> list[tuple[str, Any]]:
    """The tiles on the sinks page."""
    tiles: list[tuple[str, Any]] = [("sinks beyond the first token", result.n_sinks_beyond_first),
                                    ("heads with such sinks", result.n_heads_with_sinks)]
    for row in result.calibration:
        tiles.append((f"{row.task}: held-out before -> ACT", f"{row.before:.3f} -> {row.after:.3f}"))
    return tiles


def _groups(task: str) -> str:
    return {"category": "words", "sentiment": "adjectives"}.get(task, "questions")


def headline_figures(result: SinksResult) -> list[dict[str, Any]]:
    """The README row: held-out accuracy before and after ACT per task, and their paired difference."""
    from workbench.spec import figure

    out = [figure("heads with sinks beyond the first token", result.n_heads_with_sinks, n=result.n_sink_prompts,
                  split="calibration", fmt="d")]
    for row in result.calibration:
        t = row.task
        out += [figure(f"{t} (chance {row.chance:.2f}): held-out accuracy, base", interval=result.interval(t, "base")),
                figure(f"{t}: held-out accuracy with ACT ({len(row.heads)} heads, beta {row.beta}, "
                       f"threshold {row.threshold})", interval=result.interval(t, "act")),
                figure(f"{t}: ACT - base (paired; bootstrap over {_groups(t)})",
                       interval=result.interval(t, "difference by group"), fmt="+.3f")]
    return out


def sinks_sections(result: SinksResult) -> list[Section]:
    classes = ", ".join(f"{k}: {v}" for k, v in result.sink_token_classes.items())
    text = (f"{result.n_sinks_beyond_first} sinks beyond the first token (head x prompt x position) in "
            f"{result.n_heads_with_sinks} heads over {result.n_sink_prompts} calibration prompts; token classes: "
            f"{classes}. Example prompt: {result.example_prompt!r}")
    calib = " ".join(
        f"{r.task} (chance {r.chance:.2f}): held-out {r.before:.3f} -> {r.after:.3f} "
        f"(n={r.n_heldout}, {r.changed} answers changed), heads {', '.join(r.heads) or 'none'}, "
        f"beta {r.beta}, threshold {r.threshold}, chosen on {r.n_calib} calibration questions."
        for r in result.calibration)
    cfg = result.config
    params = (f"Search: the {cfg.max_search} heads (layer >= {cfg.min_layer}) with the strongest non-first sinks on "
              f"each task's calibration prompts, each calibrated alone at beta {cfg.beta}, threshold {cfg.threshold} "
              f"(a sink must be seen by >= {cfg.min_queries} queries); kept when calibration accuracy rises (or ties "
              f"and log p rises), at most {cfg.max_heads}; then beta in {list(cfg.betas)} x threshold in "
              f"{list(cfg.thresholds)} for the kept set.")
    return [
        Section("Attention sinks beyond the first token", text=text,
                figures=[sink_strength_grid(result), sink_map(result), sink_tokens_bar(result)]),
        Section("Massive activations at sink tokens (and at the first token)",
                tables=[table(t) for t in (result.massive_activations, result.first_token_massive_activations) if t]),
        Section("ACT attention calibration", text=calib + " " + params,
                figures=[calibration_bar(result), difference_plot(result)],
                tables=[table(t) for t in (result.calibration, result.search, result.grid) if t]),
    ]
