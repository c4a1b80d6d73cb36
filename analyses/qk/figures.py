"""Figures of QK attribution: the query-side and key-side sources as bars with their
intervals, the top (query, key) pairs, and the layer-by-layer graph of the strongest
compositions; ``sections`` serves the page, the notebooks and every HTML report."""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from workbench.report import Section


def source_bars(rows: list[Any], title: str) -> go.Figure:
    """Horizontal bars of sources (``Source``: mean with its bootstrap interval), strongest at the top."""
    rows = list(reversed(rows))
    mean = np.array([r.mean for r in rows])
    fig = go.Figure(go.Bar(x=mean, y=[r.component for r in rows], orientation="h",
                           error_x={"type": "data", "symmetric": False,
                                    "array": [r.high - r.mean for r in rows],
                                    "arrayminus": [r.mean - r.low for r in rows]}))
    fig.update_layout(title=title, xaxis_title="contribution to the score", height=120 + 24 * len(rows),
                      margin={"l": 140})
    return fig


def composition_graph(scores: torch.Tensor, title: str, k: int = 30) -> go.Figure:
    """Heads as nodes (x = layer, y = head), the ``k`` strongest (writer -> reader) scores of
    [layer head layer head] as edges, wider and darker for larger scores."""
    n_layers, n_heads = scores.shape[:2]
    flat = scores.detach().float().cpu().nan_to_num(float("-inf")).flatten()
    vals, idx = flat.topk(min(k, int(torch.isfinite(flat).sum())))
    fig = go.Figure()
    top = float(vals[0]) if len(vals) else 1.0
    for v, i in zip(vals.tolist(), idx.tolist()):
        la, ha, lb, hb = (int(x) for x in np.unravel_index(i, tuple(scores.shape)))
        w = max(v, 0.0) / top if top > 0 else 0.0
        fig.add_trace(go.Scatter(x=[la, lb], y=[ha, hb], mode="lines", hoverinfo="text", showlegend=False,
                                 text=f"L{la}H{ha} → L{lb}H{hb}: {v:.3f}",
                                 line={"width": 1 + 5 * w, "color": f"rgba(31,119,180,{0.25 + 0.75 * w:.2f})"}))
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    fig.add_trace(go.Scatter(x=layer, y=head, mode="markers", marker={"size": 6, "color": "#444"}, showlegend=False,
                             text=[f"L{l}H{h}" for l, h in zip(layer, head)], hoverinfo="text"))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="head", height=420)
    return fig


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the page."""
    tiles = [("head", result.head), ("top key-side source", result.key_side[0].component),
             ("top query-side source", result.query_side[0].component), ("prompts", result.n_prompts)]
    if result.attended_is_target_share is not None:
        tiles.append(("attends to the target", f"{result.attended_is_target_share:.2f}"))
    return tiles


def _table(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"source": r.component, "mean": f"{r.mean:.4g}", "95% interval": f"[{r.low:.4g}, {r.high:.4g}]"}
            for r in rows]


def sections(result: Any) -> list[Section]:
    r, cfg = result, result.config
    where = f"the prompt {cfg.prompt!r}" if cfg.prompt else f"{r.n_prompts} {cfg.task} prompts"
    text = (f"{r.head}'s pre-softmax score to its attended key, split into (query component, key component) "
            f"pairs on {where} ({r.n_queries} queries); the pairs sum to the score (largest error "
            f"{r.identity_error:.2g}). Intervals: bootstrap over prompts.")
    comp_rows = [{"mode": mode, "writer": w.component, "score − baseline": f"{w.value:.3f}"}
                 for mode in ("K", "Q", "V") for w in r.composition_sources[mode][:5]]
    return [
        Section("QK attribution: the attended key", text=text,
                figures=[source_bars(result.key_side, "Key-side sources"),
                         source_bars(result.query_side, "Query-side sources")],
                tables=[_table(r.top_pairs)]),
        Section("Why here and not there: attended minus runner-up",
                text="The same split for the score difference between the attended key and the second-highest.",
                figures=[source_bars(r.diff_key_side, "Key-side sources of the difference"),
                         source_bars(r.diff_query_side, "Query-side sources of the difference")],
                tables=[_table(r.diff_top_pairs)]),
        Section("Composition from the weights",
                text=f"Elhage et al.'s composition scores minus the random baseline "
                     f"({r.composition_baseline:.3f}) of the same shapes; the strongest writers into {r.head}.",
                figures=[composition_graph(r.composition["K"], "Strongest K-compositions"),
                         composition_graph(r.composition["Q"], "Strongest Q-compositions")],
                tables=[comp_rows]),
    ] + mechanism_section(result)


def mechanism_section(result: Any) -> list[Section]:
    """The held-out K-composition check of induction (induction prompts only)."""
    check = result.mechanism
    if check is None:
        return []
    rows = [{"heads": kind, "chosen on the even prompts": ", ".join(getattr(check, f"{kind}_heads")),
             "share of odd prompts whose top key-side source is a previous-token head":
                 getattr(check, kind).text()} for kind in ("induction", "random")]
    text = ("Olsson et al.'s K-composition, held-out: induction heads, previous-token heads ("
            + ", ".join(check.previous_token_heads) + ") and random control heads are chosen on the even-numbered "
            "prompts; on the odd ones, how often each head's top key-side source is one of those previous-token heads.")
    return [Section("The induction mechanism, held-out", text=text, tables=[rows])]


def headline_figures(result: Any) -> list[dict[str, Any]]:
    from workbench.spec import figure

    return [figure(name, interval=iv, fmt=".2f") for name, iv in result.intervals.items()]
