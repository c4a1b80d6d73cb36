"""Figures of the induction analysis: the layer-by-head grids of both scores and the top
heads; ``sections`` serves the page, the notebooks and every HTML report."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench.figures.common import bar_top_heads, head_grid
from workbench.names import head_name
from workbench.report import Section


def induction_grid(result: Any) -> go.Figure:
    return head_grid(result.induction_score,
                     f"Induction score per head (seq_len={result.seq_len}, n={result.n_prompts})",
                     colorbar="induction score", diverging=False)


def prev_token_grid(result: Any) -> go.Figure:
    return head_grid(result.prev_token_score, "Previous-token score per head", colorbar="prev-token score",
                     diverging=False)


def top_heads_bar(result: Any, k: int = 15) -> go.Figure:
    return bar_top_heads(result.induction_score, f"Top {k} heads by induction score", k=k,
                         xaxis="induction score", by_abs=False)


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the induction page."""
    top = result.top_heads[0]
    return [("top induction head", f"{head_name(top.layer, top.head)} ({top.induction_score:.3f})"),
            (f"heads ≥ {result.threshold:g}", result.n_induction_heads),
            ("prompts", result.n_prompts)]


def sections(result: Any) -> list[Section]:
    layout = ("[BOS] + seq + seq" if result.bos else "seq + seq")
    text = (f"{result.n_prompts} random sequences of {result.seq_len} distinct tokens, fed as {layout}. A head's "
            "induction score is its mean attention from each token of the second copy to the token right after "
            "that token's first occurrence (offset -(seq_len-1)); a head attending uniformly to the past would "
            f"score {result.uniform_baseline:.3f}. Heads at or over {result.threshold:g}: "
            f"{', '.join(result.induction_heads) or 'none'}.")
    top = [{"head": head_name(t.layer, t.head), "induction score": t.induction_score,
            "prev-token score": t.prev_token_score} for t in result.top_heads]
    return [
        Section("Induction heads", text=text, figures=[induction_grid(result), top_heads_bar(result)], tables=[top]),
        Section("Previous-token heads", text="Mean attention from every token to the one right before it, "
                "over the whole repeated sequence: the first half of the induction circuit.",
                figures=[prev_token_grid(result)]),
    ]


def headline_figures(result: Any) -> list[dict[str, Any]]:
    """README row: how many heads pass the threshold, and the top heads' held-out scores."""
    from workbench.spec import figure

    out = [figure(f"heads with induction score over {result.threshold:g}", result.n_induction_heads,
                  n=result.n_prompts, fmt="d"),
           figure("uniform-attention baseline", result.uniform_baseline, fmt=".3f")]
    out += [figure(name, interval=iv, fmt=".2f") for name, iv in result.intervals.items()]
    return out
