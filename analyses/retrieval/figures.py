"""Figures of the retrieval-head analysis: the layer-by-head score grid (ranking split),
the replication of the scores on the held-out split, the needle grid, the masking curves
with their intervals and the KV check (held-out split); the page's headline tiles and the
README's headline figures."""
from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from workbench.figures.common import bar_top_heads, head_grid
from workbench.names import head_name
from workbench.spec import figure


def score_grid(result: Any) -> go.Figure:
    return head_grid(result.scores, f"Retrieval score per head, ranking split ({result.n_counted}/{result.n_tests} "
                     f"tests counted; {result.n_retrieval_heads} heads over {result.config.threshold})",
                     colorbar="retrieval score", diverging=False)


def top_heads_bar(result: Any, k: int = 15) -> go.Figure:
    return bar_top_heads(result.scores, f"Top {k} retrieval heads (ranking split)", k=k, xaxis="retrieval score",
                         by_abs=False)


def replication_scatter(result: Any) -> go.Figure:
    """Each head's retrieval score on the ranking split against the held-out split."""
    x = result.scores.flatten().tolist()
    y = result.heldout_scores.flatten().tolist()
    n_heads = result.scores.shape[1]
    names = [head_name(i // n_heads, i % n_heads) for i in range(len(x))]
    rep = result.replication
    title = "Retrieval scores: ranking split vs held-out split"
    if rep:
        rho = f"{rep.spearman:.2f}" if rep.spearman is not None else "undefined (constant scores)"
        title += f" (Spearman {rho}; top {rep.top_n} heads shared: {rep.top_overlap}/{rep.top_n})"
    fig = go.Figure(go.Scatter(x=x, y=y, mode="markers", text=names,
                               hovertemplate="%{text}: ranking %{x:.3f}, held-out %{y:.3f}<extra></extra>"))
    top = max(x + y + [0.01])
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dot", "color": "grey"},
                             showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=title, xaxis_title="score, ranking split", yaxis_title="score, held-out split",
                      showlegend=False)
    return fig


def needle_grid(result: Any) -> go.Figure:
    z = result.needle_grid.tolist()
    split = "held-out split" if result.splits else "all tests"
    fig = go.Figure(go.Heatmap(z=z, x=[f"{d:g}%" for d in result.depths], y=[str(L) for L in result.context_lengths],
                               zmin=0, zmax=1, colorscale="RdYlGn", colorbar={"title": "accuracy"},
                               hovertemplate="length %{y}, depth %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(title=f"Needle accuracy (ROUGE-1 recall > 0.5) by context length and depth, {split}",
                      xaxis_title="needle depth", yaxis_title="context length (tokens)")
    return fig


def _errors(values: list[float], low: list[float], high: list[float]) -> dict[str, Any] | None:
    if not low or len(low) != len(values):
        return None
    up = [h - v if math.isfinite(h) and math.isfinite(v) else 0 for v, h in zip(values, high)]
    down = [v - lo if math.isfinite(lo) and math.isfinite(v) else 0 for v, lo in zip(values, low)]
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down}


def masking_curves(result: Any) -> go.Figure:
    """Needle accuracy over k masked heads, top-k against random, with 95% intervals."""
    mk = result.masking
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=mk.k, y=mk.top_accuracy, mode="lines+markers", name="top-k retrieval heads masked",
                             error_y=_errors(mk.top_accuracy, mk.top_low, mk.top_high)))
    draws = f"mean of {mk.n_random} draws" if mk.n_random else "mean of draws"
    fig.add_trace(go.Scatter(x=mk.k, y=mk.random_accuracy, mode="lines+markers", name=f"k random heads masked ({draws})",
                             error_y=_errors(mk.random_accuracy, mk.random_low, mk.random_high)))
    where = f", {mk.n_tests} held-out tests, 95% intervals" if mk.n_tests else ""
    fig.update_layout(title=f"Needle accuracy with heads masked ({mk.mode} masking{where})",
                      xaxis_title="heads masked (k)", yaxis_title="needle accuracy")
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def _iv_text(iv: Any) -> str:
    return f"[{iv.low:.2f}, {iv.high:.2f}]" if iv is not None else ""


def kv_table(result: Any) -> list[dict]:
    kv = result.kv_compression
    ivs = result.intervals
    p = len(kv.protected_heads)
    top = ivs.get(f"KV compression, top {p} heads protected")
    rand = ivs.get(f"KV compression, {p} random heads protected ({kv.n_random} draws)")
    full = ivs.get("needle accuracy, unmasked (held-out)")
    n = {"tests": kv.n_tests} if kv.n_tests else {}
    return [
        {"cache": "full", "KV cache kept": 1.0, "needle accuracy": kv.full_cache_accuracy, "95% interval": _iv_text(full), **n},
        {"cache": f"top {p} retrieval heads full, others sink {kv.sink} + window {kv.window}",
         "KV cache kept": kv.cache_kept, "needle accuracy": kv.accuracy, "95% interval": _iv_text(top), **n},
        {"cache": f"same budget, random heads full ({kv.n_random or 1} draws)",
         "KV cache kept": kv.random_protected_cache_kept, "needle accuracy": kv.random_protected_accuracy,
         "95% interval": _iv_text(rand), **n},
    ]


def splits_table(result: Any) -> list[dict]:
    """The two splits: sizes, needles, haystack, prompt lengths, what each figure comes from."""
    return [{"split": s.name, "tests": s.n_tests, "needles": s.n_needles, "haystack": s.haystack,
             "context lengths": ", ".join(map(str, s.context_lengths)),
             "prompt tokens": f"{s.prompt_tokens[0]}-{s.prompt_tokens[1]}" if s.prompt_tokens else "",
             "unmasked accuracy": round(s.accuracy, 3), "used for": s.used_for} for s in result.splits.values()]


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the retrieval page."""
    return [("retrieval heads", result.n_retrieval_heads),
            ("share over threshold", f"{result.share_over_threshold:.1%}"),
            ("held-out needle accuracy", f"{result.heldout_accuracy:.2f}"),
            ("KV cache kept", f"{result.kv_compression.cache_kept:.1%}")]


def headline_figures(result: Any) -> list[dict[str, Any]]:
    """The README's figures: the held-out masking curve (top-k and random), the KV check
    and the retrieval heads found on the ranking split."""
    ivs = result.intervals
    mk, kv = result.masking, result.kv_compression
    p = len(kv.protected_heads)
    heads = ", ".join(f"{h.name} {h.score:.2f}" for h in result.retrieval_heads[:3])
    heads = f" (best: {heads})" if heads else ""
    out = [figure(f"heads with retrieval score over {result.config.threshold}{heads}", result.n_retrieval_heads,
                  n=result.n_tests, split="ranking", fmt="d"),
           figure("needle accuracy, nothing masked", interval=ivs["needle accuracy, unmasked (held-out)"])]
    for k in mk.k[1:]:
        out.append(figure(f"top-{k} retrieval heads masked", interval=ivs[f"top-{k} retrieval heads masked"]))
        rand = ivs.get(f"{k} random heads masked ({mk.n_random} draws)")
        if rand is not None:
            out.append(figure(f"{k} random heads masked ({mk.n_random} draws)", interval=rand))
    out.append(figure(f"KV compression, top {p} heads' KV full, sink {kv.sink} + window {kv.window} elsewhere, "
                      f"{kv.cache_kept:.0%} of the cache kept", interval=ivs[f"KV compression, top {p} heads protected"]))
    rand = ivs.get(f"KV compression, {p} random heads protected ({kv.n_random} draws)")
    if rand is not None:
        out.append(figure(f"same budget on random heads ({kv.random_protected_cache_kept:.0%} kept)", interval=rand))
    return out


def retrieval_sections(result: Any) -> list:
    from workbench.report import Section

    heads = ", ".join(f"{h.name} ({h.score:.2f})" for h in result.retrieval_heads[:12]) or "none"
    text = (f"Wu et al.'s retrieval score over {result.n_tests} ranking needle tests ({result.n_counted} recalled); "
            f"{result.n_retrieval_heads} heads ({result.share_over_threshold:.1%}) score over "
            f"{result.config.threshold}: {heads}.")
    sections = [Section("Retrieval heads: scores (ranking split)", text=text,
                        figures=[score_grid(result), top_heads_bar(result)])]
    if result.splits:
        mk = result.masking
        held = result.splits.get("heldout")
        sections.append(Section(
            "Retrieval heads: splits",
            text=("Heads are scored and ranked on the ranking split; every masking and KV figure is measured on the "
                  "held-out split (other needles, other haystack text). "
                  f"Held-out: {held.n_tests if held else mk.n_tests} tests."),
            tables=[splits_table(result)], figures=[replication_scatter(result)]))
    sections += [
        Section("Retrieval heads: needle grid and masking (held-out split)",
                figures=[needle_grid(result), masking_curves(result)]),
        Section("Retrieval heads: KV-cache compression (RazorAttention-style, held-out split)", tables=[kv_table(result)]),
    ]
    return sections
