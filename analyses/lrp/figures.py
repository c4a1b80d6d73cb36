"""Figures of the LRP saliency analysis: prompts with tokens coloured by relevance, the per-head
relevance grid, deletion curves with AOPC, and photographs with LRP / SR / gradient overlays and
their top classes. Every function takes a result (or its parts) and returns a ``go.Figure``."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.common import to_numpy, bar_top_heads, head_grid, line_curves
from workbench.spec import figure

from .analysis import METHODS as PROMPT_METHODS

METHOD_LABELS = {"attnlrp": "AttnLRP", "gradient_x_input": "gradient x input", "rollout": "attention rollout",
                 "random": "random order", "lrp": "LRP", "sr": "SR map", "gradient": "gradient"}


# ---------------------------------------------------------------------------- prompts
def token_relevance(tokens: Sequence[str], relevance, title: str = "token relevance") -> go.Figure:
    """One prompt as a row of tokens, each cell coloured by its relevance (red +, blue -)."""
    r = to_numpy(relevance).reshape(1, -1)
    lim = float(np.abs(r).max()) or 1.0
    labels = [t.replace(" ", "␣") for t in tokens]
    fig = go.Figure(go.Heatmap(
        z=r, x=list(range(len(tokens))), y=[""], text=[labels], texttemplate="%{text}",
        customdata=[[f"{v:.4g}" for v in r[0]]],
        hovertemplate="%{text}: %{customdata}<extra></extra>", colorscale="RdBu_r", zmin=-lim, zmax=lim,
        colorbar={"title": "relevance"},
    ))
    fig.update_layout(title=title, height=200, xaxis={"showticklabels": False}, margin={"l": 20, "r": 20, "t": 50, "b": 20})
    return fig


def method_comparison(tokens: Sequence[str], relevances: dict[str, Any], title: str = "token relevance by method") -> go.Figure:
    """Methods as rows, tokens as columns; each row scaled by its largest |value|."""
    rows, names = [], []
    for name, r in relevances.items():
        r = to_numpy(r)
        rows.append(r / (np.abs(r).max() or 1.0))
        names.append(METHOD_LABELS.get(name, name))
    labels = [f"{i}:{t!r}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=np.stack(rows), x=labels, y=names, colorscale="RdBu_r", zmin=-1, zmax=1,
                               hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>", colorbar={"title": "R / max|R|"}))
    fig.update_layout(title=title, height=120 + 40 * len(rows), yaxis_autorange="reversed")
    return fig


def head_relevance_grid(result: Any, title: str = "AttnLRP relevance per head (mean over prompts)") -> go.Figure:
    return head_grid(result.head_relevance, title, colorbar="relevance")


def top_heads(result: Any, k: int = 15) -> go.Figure:
    return bar_top_heads(result.head_relevance, "heads carrying the most relevance (AttnLRP)", k=k, xaxis="relevance")


def deletion_figure(result: Any, unit: str = "tokens deleted") -> go.Figure:
    """Mean explained value after deleting the most relevant inputs first, one curve per method,
    AOPC in the legend."""
    curves, x = {}, None
    aopc = result.aopc
    for method, arr in result.deletion_curves.items():
        a = to_numpy(arr)
        mean = np.nanmean(a, axis=0)
        if x is None:
            x = np.arange(len(mean)) * result.deletion_step
        curves[f"{METHOD_LABELS.get(method, method)} (AOPC {aopc.get(method, float('nan')):.3g})"] = mean
    yaxis = "explained logit" if unit != "tokens deleted" else "explained logit (difference)"
    return line_curves(x, curves, "deletion test: most relevant first", unit, yaxis)


def aopc_bar(aopc: dict[str, float], title: str = "area over the perturbation curve (higher = more faithful)") -> go.Figure:
    names = [METHOD_LABELS.get(k, k) for k in aopc]
    fig = go.Figure(go.Bar(x=names, y=[float(v) for v in aopc.values()], text=[f"{v:.3g}" for v in aopc.values()]))
    fig.update_layout(title=title, yaxis_title="AOPC", height=320)
    return fig


def aopc_by_task_figure(result: Any) -> go.Figure:
    """Mean AOPC per method, one group of bars per task, with the bootstrap interval over prompts."""
    fig = go.Figure()
    tasks = result.tasks
    methods = list(next(iter(result.aopc_by_task.values())))
    for m in methods:
        ys, lo, hi = [], [], []
        for t in tasks:
            iv = result.task_interval(t, f"AOPC {m}")
            v = result.aopc_by_task[t][m]
            ys.append(v)
            lo.append(v - iv.low if iv is not None else 0.0)
            hi.append(iv.high - v if iv is not None else 0.0)
        fig.add_trace(go.Bar(name=METHOD_LABELS.get(m, m), x=tasks, y=ys,
                             error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
    fig.update_layout(barmode="group", title="AOPC per task (95% bootstrap interval over prompts; higher = more faithful)",
                      yaxis_title="AOPC (explained logit difference)", height=360)
    return fig


def _iv_text(iv: Any, fmt: str = ".3g") -> str:
    return "n/a" if iv is None else iv.text(fmt)


def task_table(result: Any) -> list[dict[str, Any]]:
    """One row per task: n, accuracy, AOPC per method, AttnLRP minus each, conservation figures."""
    rows = []
    n_by_task = {t: result.prompt_tasks.count(t) for t in result.tasks}
    for t in result.tasks:
        row: dict[str, Any] = {"task": t, "prompts": n_by_task[t], "accuracy": _iv_text(result.task_interval(t, "accuracy"), ".2f")}
        for m in result.aopc_by_task.get(t, {}):
            row[f"AOPC {METHOD_LABELS.get(m, m)}"] = _iv_text(result.task_interval(t, f"AOPC {m}"))
        for m in result.aopc_by_task.get(t, {}):
            if m != "attnlrp":
                row[f"AttnLRP - {METHOD_LABELS.get(m, m)}"] = _iv_text(result.task_interval(t, f"AOPC attnlrp - {m}"))
        row["token-only conservation error"] = _iv_text(result.task_interval(t, "token-only conservation error"))
        row["softmax-absorbed share"] = _iv_text(result.task_interval(t, "softmax-absorbed share"))
        rows.append(row)
    return rows


def prompt_sections(result: Any) -> list:
    """HTML report sections for a prompt result."""
    from workbench.report import Section

    tokens = result.tokens(0)
    rel = {k: result.relevance(k, 0) for k in PROMPT_METHODS}
    text = (f"{result.n_prompts} prompt(s), task(s) {result.task}; intervals are 95% bootstrap intervals over the prompts "
            f"of each task (AttnLRP minus another method: paired, the same prompts resampled). Conservation, two "
            f"numbers: the accounting identity (tokens + the relevance absorbed at the softmax, measured at its hooks "
            f"and added back, against the explained value) holds to {result.conservation_error:.2e} (tolerance "
            f"{result.conservation_tolerance:.0e}) and checks the bookkeeping only; the tokens alone miss the "
            f"explained value by {result.token_conservation_error:.1%} on average (token-only conservation error), "
            f"and the softmax rule absorbs on average {result.softmax_absorbed_fraction:.1%} of it (signed).")
    aopc = result.aopc
    rows = [{"method": METHOD_LABELS.get(k, k), "AOPC (all prompts)": v} for k, v in aopc.items()]
    io_share, io_top1 = result.io_share, result.io_top1_rate
    if io_share is not None:
        for row, k in zip(rows, aopc):
            row["IO share"] = io_share.get(k, float("nan"))
            row["IO most relevant"] = (io_top1 or {}).get(k, float("nan"))
    figs = [token_relevance(tokens, rel["attnlrp"], f"AttnLRP relevance: {result.prompts[0]!r}"),
            method_comparison(tokens, rel), head_relevance_grid(result), deletion_figure(result)]
    tables = [rows]
    if result.task_interval(result.tasks[0], "AOPC attnlrp") is not None:
        figs.insert(0, aopc_by_task_figure(result))
        tables.insert(0, task_table(result))
    return [Section(title="LRP saliency: tokens and heads (AttnLRP)", text=text, tables=tables, figures=figs)]


def headline_figures(result: Any) -> list[dict[str, Any]]:
    """The README's LRP rows (``benchmarks/headlines.py``): per task, AOPC of AttnLRP and AttnLRP
    minus random / rollout / gradient x input with paired bootstrap intervals, the model's accuracy,
    and the conservation figures: the identity, the token-only error and the absorbed share."""
    out = []
    for t in result.tasks:
        def iv(name: str, t: str = t) -> Any:
            return result.task_interval(t, name)

        out.append(figure(f"{t}: model accuracy (target over contrast)", interval=iv("accuracy"), fmt=".2f"))
        out.append(figure(f"{t}: AOPC AttnLRP", interval=iv("AOPC attnlrp")))
        for m in ("random", "rollout", "gradient_x_input"):
            if iv(f"AOPC attnlrp - {m}") is not None:
                out.append(figure(f"{t}: AOPC AttnLRP minus {METHOD_LABELS[m]}", interval=iv(f"AOPC attnlrp - {m}")))
        out.append(figure(f"{t}: token-only conservation error |sum R_tokens - f| / |f|",
                          interval=iv("token-only conservation error")))
        out.append(figure(f"{t}: share of f absorbed at the softmax", interval=iv("softmax-absorbed share")))
    out.append(figure("accounting identity |sum R_tokens + absorbed - f| / |f| (max over prompts)",
                      result.conservation_error, n=result.n_prompts, split="test", fmt=".1e"))
    return out


# ---------------------------------------------------------------------------- images
def _overlay(fig: go.Figure, image: np.ndarray, heat: np.ndarray | None, row: int, col: int, diverging: bool,
             show_scale: bool = False) -> None:
    fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=row, col=col)
    if heat is None:
        return
    if diverging:
        lim = float(np.percentile(np.abs(heat), 99.5)) or 1.0
        kw = {"colorscale": "RdBu_r", "zmin": -lim, "zmax": lim}
    else:
        kw = {"colorscale": "Inferno", "zmin": 0, "zmax": float(np.percentile(heat, 99.5)) or 1.0}
    fig.add_trace(go.Heatmap(z=heat, opacity=0.6, showscale=show_scale, hovertemplate="%{z:.3g}<extra></extra>", **kw),
                  row=row, col=col)


def image_maps(result: Any, i: int = 0) -> go.Figure:
    """The photograph, its LRP map (signed), its SR map and its gradient map, overlaid."""
    name = result.names[i]
    image = to_numpy(result.image(i)).astype(np.uint8)
    lrp = to_numpy(result.saliency("lrp", i))
    sr = to_numpy(result.saliency("sr", i))
    grad = to_numpy(result.saliency("gradient", i))
    top = result.top_classes[name][0]
    fig = make_subplots(rows=1, cols=4, subplot_titles=(f"{name}: {top.name} ({top.prob:.0%})", "LRP", "SR map", "gradient"))
    _overlay(fig, image, None, 1, 1, False)
    _overlay(fig, image, lrp, 1, 2, True)
    _overlay(fig, image, sr, 1, 3, False)
    _overlay(fig, image, grad, 1, 4, False)
    for c in range(1, 5):
        fig.update_xaxes(visible=False, row=1, col=c)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c)
    fig.update_layout(height=330, margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def top_classes_figure(result: Any, i: int = 0) -> go.Figure:
    name = result.names[i]
    top = result.top_classes[name]
    fig = go.Figure(go.Bar(x=[t.prob for t in top][::-1], y=[t.name for t in top][::-1], orientation="h"))
    fig.update_layout(title=f"top classes: {name}", xaxis_title="probability", height=60 + 40 * len(top))
    return fig


def image_sections(result: Any) -> list:
    from workbench.report import Section

    top_classes = result.top_classes
    rows = [{"image": n, "top-1": t, "p": top_classes[n][0].prob} for n, t in result.top1.items()]
    aopc_rows = [{"method": METHOD_LABELS.get(k, k), "AOPC": v} for k, v in result.aopc.items()]
    text = (f"EfficientNet-Lite0 (ImageNet). LRP rules: {result.rules}. Deletion: regions of "
            f"{result.config.region}px, {result.config.step} per step, up to {result.removed_fraction_max:.0%} of the "
            f"image, replaced by a {result.config.baseline} baseline.")
    figs = [aopc_bar(result.aopc), deletion_figure(result, unit="regions deleted")]
    figs += [image_maps(result, i) for i in range(len(result.names))]
    return [Section(title="LRP saliency: EfficientNet-Lite0, LRP and SR maps", text=text, tables=[rows, aopc_rows], figures=figs)]


# ---------------------------------------------------------------------------- the spec's figures
def is_image_result(result: Any) -> bool:
    return getattr(result, "analysis", None) == "lrp_image"


def lrp_sections(result: Any) -> list:
    """The report sections (and the page's figures) of either kind of LRP run."""
    return image_sections(result) if is_image_result(result) else prompt_sections(result)


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the LRP page."""
    if is_image_result(result):
        first = result.names[0]
        aopc = result.aopc
        return [("images", len(result.names)), (f"top-1 ({first})", result.top1[first]),
                ("AOPC LRP", f"{aopc.get('lrp', float('nan')):.3g}"), ("AOPC SR map", f"{aopc.get('sr', float('nan')):.3g}")]
    return [("explained value", f"{result.target_value_mean:.3f}"),
            ("identity error", f"{result.conservation_error:.1e}"),
            ("token-only conservation error", f"{result.token_conservation_error:.1%}"),
            ("softmax-absorbed share", f"{result.softmax_absorbed_fraction:.1%}"), ("prompts", result.n_prompts)]


def image_headline_figures(result: Any) -> list[dict[str, Any]]:
    """The README's CNN row: AOPC of LRP, the SR map and the gradient map over the photographs,
    LRP minus random and minus the gradient (paired bootstrap over the photographs)."""
    from workbench.stats import bootstrap, bootstrap_diff

    per = result.aopc_per_image
    n = len(result.names)
    top1 = ", ".join(f"{k} -> {v}" for k, v in result.top1.items())
    out = [figure(f"photographs explained (top-1: {top1})", n, n=n, split="photos", fmt=".0f")]
    for m in ("lrp", "sr", "gradient"):
        if m in per:
            out.append(figure(f"AOPC {METHOD_LABELS[m]}", interval=bootstrap(per[m], split="photos")))
    for m in ("random", "gradient"):
        if m in per and "lrp" in per:
            out.append(figure(f"AOPC LRP minus {METHOD_LABELS[m]}", interval=bootstrap_diff(per["lrp"], per[m], split="photos")))
    return out
