"""Figures of the in-context regression analysis (``analyses.icl.analysis``): per-head
KQ and OV heatmaps at a checkpoint, pattern scores over training, error over context
length, loss curves. Heads are ``L0H{h}`` (one layer)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.common import to_numpy, head_label
from workbench.spec import figure


def _token_labels(d: int) -> list[str]:
    return [f"x{i + 1}" for i in range(d)] + ["y"]


def _checkpoint(result, step_index: int) -> tuple[int, int]:
    steps = result.checkpoint_steps.tolist()
    i = int(step_index) % len(steps)
    return i, steps[i]


def kq_heatmaps(result, step_index: int = -1) -> go.Figure:
    """One heatmap per head of KQ = W_Q^T W_K [query entry, key entry] at a checkpoint."""
    kq = to_numpy(result.kq)  # [S head D D]
    i, step = _checkpoint(result, step_index)
    H, D = kq.shape[1], kq.shape[2]
    labels = _token_labels(D - 1)
    lim = float(np.abs(kq[i]).max()) or 1.0
    fig = make_subplots(rows=1, cols=H, subplot_titles=[head_label(0, h) for h in range(H)], horizontal_spacing=0.04)
    for h in range(H):
        fig.add_trace(go.Heatmap(z=kq[i, h], x=labels, y=labels, zmin=-lim, zmax=lim, zmid=0, colorscale="RdBu_r",
                                 showscale=h == H - 1, hovertemplate="query %{y} key %{x}: %{z:.3f}<extra></extra>"),
                      row=1, col=h + 1)
        fig.update_yaxes(autorange="reversed", row=1, col=h + 1)
    fig.update_layout(title=f"KQ per head at step {step} (rows: query entry, columns: key entry)",
                      height=320, margin={"l": 40, "r": 20, "t": 70, "b": 40})
    return fig


def ov_heatmap(result, step_index: int = -1) -> go.Figure:
    """OV = W_V^T O_h per head [head, token entry] at a checkpoint; the y column holds mu_h."""
    ov = to_numpy(result.ov)  # [S head D]
    i, step = _checkpoint(result, step_index)
    H, D = ov.shape[1], ov.shape[2]
    lim = float(np.abs(ov[i]).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=ov[i], x=_token_labels(D - 1), y=[head_label(0, h) for h in range(H)],
                               zmin=-lim, zmax=lim, zmid=0, colorscale="RdBu_r",
                               hovertemplate="%{y} reads %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"OV per head at step {step} (last column = mu_h)", yaxis_autorange="reversed",
                      height=max(220, 40 * H + 120), margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return fig


def pattern_curves(result) -> go.Figure:
    """The pattern scores over training: per head KQ off-diagonal share, diagonal spread, share
    touching y, omega_h, OV share outside y, mu_h; and the zero-sum ratio |sum mu| / sum |mu|."""
    steps = np.array(result.checkpoint_steps.tolist())
    panels = [("kq_offdiag_share", "KQ off-diagonal share"), ("kq_diag_cv", "KQ diagonal spread (CV)"),
              ("kq_y_share", "KQ share touching y"), ("omega", "omega_h"),
              ("ov_offlast_share", "OV share outside y"), ("mu", "mu_h"),
              ("zero_sum_ratio", "|sum mu| / sum |mu|")]
    fig = make_subplots(rows=2, cols=4, subplot_titles=[t for _, t in panels], vertical_spacing=0.14)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for k, (key, _) in enumerate(panels):
        vals = to_numpy(result.curve(key))
        r, c = k // 4 + 1, k % 4 + 1
        if vals.ndim == 1:
            fig.add_trace(go.Scatter(x=steps, y=vals, mode="lines", name="zero-sum", line={"color": "black"},
                                     showlegend=False), row=r, col=c)
            continue
        for h in range(vals.shape[1]):
            fig.add_trace(go.Scatter(x=steps, y=vals[:, h], mode="lines", name=head_label(0, h),
                                     line={"color": palette[h % len(palette)]}, legendgroup=str(h),
                                     showlegend=k == 0), row=r, col=c)
        if key == "kq_diag_cv":
            fig.update_yaxes(type="log", row=r, col=c)
    fig.update_xaxes(title_text="step", row=2)
    fig.update_layout(title="Pattern scores over training", height=560, margin={"l": 50, "r": 20, "t": 70, "b": 40})
    return fig


def mse_by_length(result) -> go.Figure:
    """Mean squared error of every predictor against context length (dotted line: training length)."""
    lengths = result.lengths
    table = to_numpy(result.mse_by_length)
    names = result.predictors
    fig = go.Figure()
    for i, name in enumerate(names):
        dash = "dot" if name.startswith("gd") or name == "ridge" else "solid"
        fig.add_trace(go.Scatter(x=lengths, y=table[i], mode="lines+markers", name=name, line={"dash": dash}))
    fig.add_vline(x=result.n, line_dash="dot", line_color="grey", annotation_text="training n")
    fig.update_layout(title="Error on fresh prompts over context length", xaxis_title="context length",
                      yaxis_title="mean squared error", xaxis_type="log", yaxis_type="log", height=420)
    return fig


def loss_curves(result, smooth: int = 50) -> go.Figure:
    """Training loss (moving average over ``smooth`` steps) of each trained model."""
    fig = go.Figure()
    names = {"model": f"multi-head (H={result.heads})", "single_head": "single head", "linear": "linear attention"}
    for key, loss in result.losses.items():
        name = names.get(key, key)
        loss = to_numpy(loss)
        k = max(1, min(smooth, len(loss)))
        avg = np.convolve(loss, np.ones(k) / k, mode="valid")
        fig.add_trace(go.Scatter(x=np.arange(k, len(loss) + 1), y=avg, mode="lines", name=name))
    fig.update_layout(title="Training loss", xaxis_title="step", yaxis_title="squared error", yaxis_type="log",
                      height=380)
    return fig


def seed_table_figure(result) -> go.Figure:
    """The zero-sum ratio |sum mu| / sum |mu| of every seed at each head count, with the
    criterion's threshold: below it, the seed reached the opposite-sign pattern."""
    rows = result.seed_table
    fig = go.Figure()
    for h in dict.fromkeys(r.heads for r in rows):
        sel = [r for r in rows if r.heads == h]
        iv = result.reached_share(h)
        share = f"{iv.value:.0%} [{iv.low:.0%}, {iv.high:.0%}]" if iv is not None else ""
        fig.add_trace(go.Scatter(x=[f"H={h}"] * len(sel), y=[r.zero_sum_ratio for r in sel], mode="markers+text",
                                 text=[f"seed {r.seed}" for r in sel], textposition="middle right",
                                 name=f"H={h}: {sum(r.reached for r in sel)}/{len(sel)} reached {share}",
                                 marker={"size": 10}))
    fig.add_hline(y=result.zero_sum_threshold, line_dash="dot", line_color="grey",
                  annotation_text=f"criterion: ratio < {result.zero_sum_threshold}")
    fig.update_layout(title="Seed table: |sum mu| / sum |mu| at the end of training (0 = zero-sum, 1 = same sign)",
                      yaxis_title="zero-sum ratio", yaxis_range=[-0.05, 1.05], height=380)
    return fig


def seed_rows(result) -> list[dict]:
    return [{"heads": r.heads, "seed": r.seed, "zero-sum ratio": round(r.zero_sum_ratio, 4),
             "reached": r.reached, "mu": ", ".join(f"{v:+.3f}" for v in r.mu),
             "test MSE at n": round(r.mse, 4), "debiased GD MSE": round(r.mse_gd_debiased, 4),
             "train seconds": r.train_seconds} for r in result.seed_table]


def headline_figures(result) -> list[dict]:
    """The README's ICL row (``benchmarks/headlines.py``): per head count, the share of seeds that
    reach the zero-sum pattern (Wilson interval over seeds) and their mean test MSE; the main
    model's test MSE against single-head attention and closed-form debiased GD (bootstrap over
    test prompts)."""
    out = []
    for h in dict.fromkeys(r.heads for r in result.seed_table):
        iv = result.reached_share(h)
        if iv is not None:
            out.append(figure(f"H={h}: share of seeds reaching the zero-sum pattern (|sum mu|/sum|mu| < "
                              f"{result.zero_sum_threshold})", interval=iv, fmt=".2f"))
        mse_iv = result.intervals.get(f"H={h}: test MSE over seeds")
        if mse_iv is not None:
            out.append(figure(f"H={h}: test MSE at n, mean over seeds", interval=mse_iv, fmt=".3f"))
    ivs = result.intervals
    for name, text in (("MSE model at n", f"H={result.heads} seed {result.config.seed if result.config else 0}: test MSE"),
                       ("MSE model - single_head at n", "same model: test MSE minus single-head attention"),
                       ("MSE model - gd_debiased at n", "same model: test MSE minus debiased GD (closed-form step)")):
        if name in ivs:
            out.append(figure(text, interval=ivs[name], fmt=".3f"))
    return out


def headline(result) -> list[tuple[str, str]]:
    """The tiles on the ICL page: how close the trained model is to the paper's patterns."""
    gap = result.dgd_pred_gap
    return [("zero-sum |sum mu| / sum |mu|", f"{result.zero_sum_ratio:.3f}"),
            ("KQ off-diagonal share (|mu|-weighted)", f"{result.kq_offdiag_weighted:.3f}"),
            ("OV energy outside y", f"{result.ov_offlast_total:.3f}"),
            ("model vs debiased GD gap", "n/a" if gap is None else f"{gap:.4f}")]


def icl_sections(result) -> list:
    """The report sections (and the page's figures): KQ / OV at the last checkpoint and the
    pattern scores over training; the predictors' errors over context length and the losses."""
    from workbench.report import Section

    gap = result.dgd_pred_gap
    text = (f"H={result.heads} heads, d={result.d}, n={result.n}, {result.steps} steps. Zero-sum ratio "
            f"{result.zero_sum_ratio:.3f}; |mu|-weighted KQ off-diagonal share {result.kq_offdiag_weighted:.3f}; "
            f"OV energy outside y {result.ov_offlast_total:.3f}; model vs debiased GD prediction gap "
            + ("n/a." if gap is None else f"{gap:.4f}."))
    ivs = result.intervals
    rows = []
    for k, v in result.mse.items():
        iv = ivs.get(f"MSE {k} at n")
        rows.append({"predictor": k, "test MSE at training n": v,
                     "95% interval": f"[{iv.low:.4g}, {iv.high:.4g}] (n={iv.n})" if iv is not None else ""})
    steps = ", ".join(f"{k} {v:.4f}" for k, v in result.steps_closed_form.items())
    pred_text = (f"Errors on fresh test prompts (their own generator, never used in training), 95% bootstrap intervals "
                 f"over prompts. GD step sizes derived in closed form at n={result.n} (nothing fitted): {steps}.")
    sections = [Section(title="ICL regression: KQ / OV patterns", text=text,
                        figures=[kq_heatmaps(result), ov_heatmap(result), pattern_curves(result)]),
                Section(title="ICL regression: predictors", text=pred_text, tables=[rows],
                        figures=[mse_by_length(result), loss_curves(result)])]
    if result.seed_table:
        counts = "; ".join(f"H={h}: {iv.value:.0%} of {iv.n} seeds [{iv.low:.0%}, {iv.high:.0%}]"
                           for h in dict.fromkeys(r.heads for r in result.seed_table)
                           for iv in [result.reached_share(h)] if iv is not None)
        sections.append(Section(
            title="ICL regression: seed table", tables=[seed_rows(result)], figures=[seed_table_figure(result)],
            text=(f"Share of seeds reaching the opposite-sign (zero-sum) pattern, criterion fixed beforehand: "
                  f"|sum mu| / sum |mu| < {result.zero_sum_threshold} at the end of training. {counts} "
                  f"(Wilson 95% intervals). Test MSE at n on the same test prompts for every seed.")))
    return sections
