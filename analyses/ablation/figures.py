"""Figures of the head-ablation report: the layer-by-head effect grid and the top heads."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench.figures.common import bar_top_heads, head_grid
from workbench.names import head_name
from workbench.sections import Section


def effect_grid(result: Any) -> go.Figure:
    cfg = result.config
    return head_grid(result.effect, f"Change in logit difference when each head is {cfg.ablation}-ablated ({cfg.task}, n={result.n_prompts})",
                     colorbar="Δ logit diff")


def top_heads_bar(result: Any, k: int = 15) -> go.Figure:
    return bar_top_heads(result.effect, f"Top {k} heads by |effect|", k=k, xaxis="Δ logit diff")


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the ablation page."""
    return [("clean logit diff (IO - S)", f"{result.clean_logit_diff:.3f}"), ("accuracy", f"{result.accuracy:.3f}"),
            ("prompts", result.n_prompts)]


def ablation_sections(result: Any) -> list:
    summary = [{"clean logit diff (IO - S)": result.clean_logit_diff, "std": result.clean_logit_diff_std,
                "accuracy": result.accuracy, "prompts": result.n_prompts, "forward passes": result.n_forwards}]
    top = [{"head": head_name(t.layer, t.head), "layer": t.layer, "head index": t.head, "effect": t.effect}
           for t in result.top_heads]
    text = (f"Each head's output is replaced by its {result.config.ablation} over the corrupted (ABC) prompts at every "
            f"position; the effect is the mean change in the logit difference. Example prompt: {result.example_prompt!r}")
    return [
        Section("Model on the task", tables=[summary]),
        Section("Head ablation", text=text, figures=[effect_grid(result), top_heads_bar(result)], tables=[top]),
    ]


def headline_figures(result: Any) -> list[dict[str, Any]]:
    """README row: the task as the model does it, and the costliest heads, chosen on one half
    of the prompts and measured on the other."""
    from workbench.spec import figure

    return [figure(name, interval=iv, fmt=".2f") for name, iv in result.intervals.items()]
