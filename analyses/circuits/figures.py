"""Figures of circuit discovery and the circuit-reuse study: head-score grids, the circuit
as a graph (layers top to bottom, heads left to right, MLPs at the right edge), the head
overlap of two circuits, the head-class table and the intervention bars."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import plotly.graph_objects as go

from workbench.figures.common import bar_top_heads, head_grid
from workbench.names import parse_head

from .records import ThresholdCurve
from .tables import beside_rows, convergence_rows, mib_rows, node_rows, stability_rows

if TYPE_CHECKING:
    from .records import Convergence, FaithfulnessCurve


def _node_xy(name: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    if name == "input":
        return (n_heads - 1) / 2, -1.0
    if name == "logits":
        return (n_heads - 1) / 2, float(n_layers)
    if name.startswith("M"):
        return float(n_heads) + 0.5, int(name[1:]) + 0.5
    l, h = parse_head(name)
    return float(h), float(l)


def circuit_graph(edges: Any, scores: Any, senders: list[str], receivers: list[str], n_layers: int, n_heads: int,
                  title: str = "circuit", max_edges: int = 300) -> go.Figure:
    """The circuit's edges [S R] (bool) drawn between node positions; colour = sign of the score
    (red raises the metric when patched to corrupt, blue lowers it), width = |score|."""
    e = np.asarray(edges.detach().cpu() if hasattr(edges, "detach") else edges).astype(bool)
    sc = np.asarray(scores.detach().cpu().float() if hasattr(scores, "detach") else scores, dtype=float)
    idx = np.argwhere(e)
    if len(idx) > max_edges:
        keep = np.argsort(-np.abs(sc[e]))[:max_edges]
        idx = idx[keep]
    top = max(1e-9, float(np.abs(sc[e]).max())) if e.any() else 1.0
    fig = go.Figure()
    used = set()
    for i, j in idx:
        s, r = senders[i], receivers[j]
        used.update([s, r])
        (x0, y0), (x1, y1) = _node_xy(s, n_heads, n_layers), _node_xy(r, n_heads, n_layers)
        v = sc[i, j]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text",
                                 text=f"{s} → {r}: {v:.3g}", showlegend=False,
                                 line={"width": 0.5 + 4 * abs(v) / top, "color": "crimson" if v > 0 else "royalblue"},
                                 opacity=0.6))
    names = [n for n in list(senders) + ["logits"] if n in used]
    xy = [_node_xy(n, n_heads, n_layers) for n in names]
    fig.add_trace(go.Scatter(x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", text=names,
                             textposition="top center", marker={"size": 9, "color": ["black" if n.startswith("L") else "gray" for n in names]},
                             showlegend=False, hoverinfo="text"))
    fig.update_layout(title=title, xaxis_title="head (MLP at the right)", yaxis_title="layer", yaxis_autorange="reversed",
                      height=max(400, 22 * n_layers + 150))
    return fig


def overlap_grid(ioi_heads: list[str], co_heads: list[str], n_layers: int, n_heads: int,
                 title: str = "in-circuit heads: IOI (1), Colored Objects (2), both (3)") -> go.Figure:
    """A [layer head] grid: 1 only IOI, 2 only Colored Objects, 3 both."""
    z = np.zeros((n_layers, n_heads))
    for n in ioi_heads:
        l, h = parse_head(n)
        z[l, h] += 1
    for n in co_heads:
        l, h = parse_head(n)
        z[l, h] += 2
    return head_grid(z, title, colorbar="1 IOI · 2 CO · 3 both", diverging=False)


def intervention_bars(intervention: Any, title: str = "Colored Objects accuracy (test split)",
                      intervals: dict[str, Any] | None = None) -> go.Figure:
    """Accuracy before, after adjusting the chosen heads, and with random heads adjusted
    (an ``Intervention`` of a reuse result), with 95% intervals where given and the chance level."""
    labels = ["before", f"after ({', '.join(intervention.heads)})", "random heads"]
    vals = [intervention.before, intervention.after, intervention.random_control]
    keys = ["intervention: accuracy before", "intervention: accuracy after", "intervention: accuracy, random heads"]
    found = [(intervals or {}).get(k) for k in keys]
    ivs = [iv for iv in found if iv is not None]
    err = None
    if len(ivs) == len(found):
        err = {"type": "data", "symmetric": False, "array": [iv.high - iv.value for iv in ivs],
               "arrayminus": [iv.value - iv.low for iv in ivs]}
    fig = go.Figure(go.Bar(x=labels, y=vals, error_y=err, text=[f"{v:.2f}" if v is not None else "" for v in vals],
                           textposition="auto"))
    fig.add_hline(y=intervention.chance, line_dash="dash", annotation_text=f"chance {intervention.chance:.2f}")
    fig.update_layout(title=f"{title}, n={intervention.n_prompts}", yaxis_title="accuracy among the prompt's colours",
                      yaxis_range=[0, 1])
    return fig


def faithfulness_figure(curve: FaithfulnessCurve, target: float | None = None, title: str = "") -> go.Figure:
    """Normalised faithfulness against the edges kept (log axis), one line per method (EAP and
    EAP-IG over their top-k sizes, ACDC over its thresholds, each point labelled with its tau),
    the circuit a single-circuit method returned as a point, the target as a dashed line."""
    fig = go.Figure()
    for m, row in curve.methods.items():
        if isinstance(row, ThresholdCurve):  # ACDC: one circuit per threshold, drawn in order of size (an empty circuit at 1)
            pts = sorted(zip(row.n_edges, row.faithfulness, row.tau))
            fig.add_trace(go.Scatter(x=[max(1, n) for n, _, _ in pts], y=[f for _, f, _ in pts], mode="lines+markers+text",
                                     name=f"{m} (by threshold)", text=[f"τ={t:g}" for _, _, t in pts],
                                     textposition="top center", line={"dash": "dot"},
                                     hovertext=[f"τ={t:g}: {n} edges, {f:.3f}" for n, f, t in pts], hoverinfo="text"))
            continue
        fig.add_trace(go.Scatter(x=row.n_edges, y=row.faithfulness, mode="lines+markers", name=m))
    for m, point in curve.extra.items():
        fig.add_trace(go.Scatter(x=[max(1, point.n_edges)], y=[point.faithfulness], mode="markers",
                                 name=f"{m} (returned circuit)", marker={"size": 12, "symbol": "diamond"}))
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target:g}")
    fig.update_layout(title=title or "faithfulness against circuit size (validation prompts)",
                      xaxis_title="edges kept (top |score|, pruned)", xaxis_type="log",
                      yaxis_title="(circuit − all ablated) / (full − all ablated)")
    return fig


def convergence_figure(conv: Convergence) -> go.Figure:
    """EAP-IG with 1, 2, 4, ... steps against its highest step count."""
    from workbench.figures.common import line_curves

    curves: dict[str, Sequence[float]] = {"Spearman vs max steps (all edges)": conv.spearman_vs_max,
              f"top-{conv.k} Jaccard vs max steps": conv.topk_jaccard_vs_max}
    if conv.faithfulness:
        curves[f"faithfulness of the top-{conv.k} circuit"] = conv.faithfulness
    fig = line_curves(conv.steps, curves, "EAP-IG convergence in integration steps", "integration steps", "value")
    fig.update_layout(xaxis_type="log")
    return fig


def circuit_figures(result: Any) -> list[go.Figure]:
    """Head scores, the circuit as a graph, exact head patching (when run), the faithfulness
    curve (EAP, EAP-IG, ACDC when asked for) and the top heads of a circuit result."""
    from workbench.patching.graph import Graph

    L, H = result.head_scores.shape
    g = Graph.build(L, H)
    figs = [head_grid(result.head_scores, f"{result.method} head scores ({result.task})", "Δ metric"),
            circuit_graph(result.circuit, result.edge_scores, list(g.senders), list(g.receivers), L, H,
                          f"{result.task} circuit by {result.method}: {result.n_edges} edges, {result.n_heads} heads")]
    if result.head_patching is not None:
        figs.append(head_grid(result.head_patching, "exact activation patching of heads", "Δ metric"))
    curve = result.faithfulness_curve
    if curve is not None:
        figs.append(faithfulness_figure(curve, result.target, f"{result.task}: faithfulness against circuit size "
                                                                "(validation prompts)"))
    if result.convergence:
        figs.append(convergence_figure(result.convergence))
    figs.append(bar_top_heads(result.head_scores, "top heads by |score|"))
    return figs


def circuit_headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the circuit page."""
    return [("task / method", f"{result.task} / {result.method}"), ("edges", result.n_edges),
            ("heads", result.n_heads), ("faithfulness (test)", f"{result.faithfulness:.2f}"),
            ("target met", {True: "yes", False: "NO", None: "—"}[result.target_met])]


def circuit_sections(result: Any) -> list:
    from workbench.report import Section

    rows = [{"task": result.task, "format": result.format or "", "method": result.method,
             "prompts (discovery / validation / test)": f"{result.n_prompts} / {result.n_val} / {result.n_test}",
             "logit_diff": result.logit_diff, "accuracy": result.accuracy, "n_edges": result.n_edges,
             "n_heads": result.n_heads, "faithfulness (test)": result.faithfulness,
             "spearman_vs_patching": result.spearman_vs_patching}]
    edges = [{"sender": s, "receiver": r, "score": v} for s, r, v in result.top_edges]
    tables = [rows, result.curve_rows()] + ([convergence_rows(result.convergence)] if result.convergence else []) + [edges]
    tables += [t for t in (mib_rows(result), beside_rows(result), node_rows(result), stability_rows(result)) if t]
    return [Section(title=f"Circuit: {result.task} by {result.method}",
                    text=f"Edges outside the circuit carry their {_ablation_text(result.ablation or 'mean')}. Faithfulness "
                         "is normalised: (circuit − all ablated) / (full model − all ablated). Scores come from the "
                         "discovery prompts, the curve and the size choice from the validation prompts, the reported "
                         f"faithfulness from the test prompts.{_acdc_text(result)} Chosen: {result.target_text()}.",
                    figures=circuit_figures(result), tables=tables)]


def _ablation_text(name: str) -> str:
    """What an ablated edge carries, in words (runs saved before the rename say 'corrupt')."""
    from workbench.patching.ablation import Ablation, parse_ablation

    return {Ablation.COUNTERFACTUAL: "value in the paired corrupt run (counterfactual ablation)",
            Ablation.MEAN: "mean over the corrupt prompts (mean ablation)", Ablation.ZERO: "zero (zero ablation)",
            Ablation.RESAMPLE: "value in another prompt's corrupt run (resample ablation)"}[parse_ablation(name)]


def _acdc_text(result: Any) -> str:
    curve = result.faithfulness_curve
    row = curve.methods.get("acdc") if curve is not None else None
    if not isinstance(row, ThresholdCurve):
        return ""
    cands = row.candidates
    return (f" ACDC's curve: one exact ACDC run per threshold (τ {', '.join(f'{t:g}' for t in row.tau)}) on the "
            f"discovery prompts, each trying the top {cands} EAP-IG edges, its circuit measured on the validation prompts.")


def circuit_headline_figures(result: Any) -> list[dict[str, Any]]:
    """README rows of ``workbench circuit``: the chosen circuit's size and test faithfulness, and
    the validation curve at each size for each method."""
    from workbench.spec import figure

    out = [figure(f"{result.task} {result.method} circuit: edges (chosen on validation; target "
                  f"{result.target:g} {'met' if result.target_met else 'NOT met'})", result.n_edges, n=result.n_val,
                  split="validation", fmt="d"),
           figure(f"{result.task} {result.method} circuit: faithfulness (normalised, {result.ablation} ablation)",
                  interval=result.intervals.get("faithfulness"))]
    c = result.faithfulness_curve
    row = c.methods.get(result.method) if c is not None else None
    if row:
        curve = ", ".join(f"{n_e}: {f:.2f}" for n_e, f in zip(row.n_edges, row.faithfulness))
        out.append(figure(f"{result.task} {result.method} faithfulness by edges kept ({curve}); best", max(row.faithfulness),
                          n=result.n_val, split="validation"))
    beside = result.faithfulness_curve_beside
    brow = beside.methods.get(result.method) if beside is not None else None
    if brow:
        curve = ", ".join(f"{n_e}: {f:.2f}" for n_e, f in zip(brow.n_edges, brow.faithfulness))
        out.append(figure(f"{result.task} {result.method} faithfulness by edges kept, {result.beside_ablation} ablation "
                          f"beside ({curve}); best", max(brow.faithfulness), n=result.n_val, split="validation"))
    st = result.stability
    if st is not None:
        out.append(figure(f"{result.task} {st.method} stability over {st.n_boot} bootstrap resamples of the discovery "
                          f"prompts: mean pairwise Jaccard of the top {st.k_edges} edges (top {st.k_heads} heads: "
                          f"{st.head_jaccard:.2f})", st.edge_jaccard, n=result.n_prompts, split="discovery"))
    for name, iv in result.intervals.items():
        if name.startswith("accuracy"):
            out.append(figure(f"{result.task} full-model {name}", interval=iv))
        elif name.startswith("MIB "):  # runs saved before MIB's scores have none
            kind = "higher" if "CPR" in name else "lower"
            out.append(figure(f"{result.task} {name} ({result.ablation} ablation; {kind} is better)",
                              interval=iv))
    return out


def reuse_figures(result: Any) -> list[go.Figure]:
    """Both tasks' head scores, their head overlap, both circuits and the intervention bars."""
    from workbench.patching.graph import Graph

    L, H = result.head_scores("ioi").shape
    g = Graph.build(L, H)
    return [
        head_grid(result.head_scores("ioi"), "IOI: EAP-IG head scores", "Δ logit diff"),
        head_grid(result.head_scores("colored_objects"), "Colored Objects: EAP-IG head scores", "Δ logit diff"),
        overlap_grid(result.ioi.heads, result.colored_objects.heads, L, H),
        circuit_graph(result.circuit_edges("ioi"), result.edge_scores("ioi"), list(g.senders), list(g.receivers),
                      L, H, "IOI circuit"),
        circuit_graph(result.circuit_edges("colored_objects"), result.edge_scores("colored_objects"), list(g.senders),
                      list(g.receivers), L, H, "Colored Objects circuit"),
        intervention_bars(result.intervention, intervals=result.intervals),
    ] + [faithfulness_figure(result.circuit(k).faithfulness_curve, result.circuit(k).target,
                             f"{k}: faithfulness against circuit size (validation prompts)")
         for k in ("ioi", "colored_objects") if result.circuit(k).faithfulness_curve is not None]


def reuse_tables(result: Any) -> list[list[dict[str, Any]]]:
    """[circuits, head overlap, heads by class, intervention] as table rows."""
    summary = []
    for key in ("ioi", "colored_objects"):
        c = result.circuit(key)
        summary.append({"task": key, "n_heads": c.n_heads, "n_edges": c.n_edges,
                        "faithfulness (validation)": c.faithfulness_validation, "faithfulness (test)": c.faithfulness,
                        "target met": c.target_met, "logit_diff": c.logit_diff, "accuracy (test)": c.accuracy})
    ov = result.overlap
    overlap = [{"shared heads": len(ov.shared), "share of smaller": ov.share_of_smaller,
                "random circuits (mean)": ov.null_mean, "permutation p": ov.p_value, "jaccard": ov.jaccard,
                "caveat": result.overlap.caveat, "heads": " ".join(ov.shared)}]
    classes = [{"class": r["class"], "IOI circuit": " ".join(r["ioi"]), "Colored Objects circuit": " ".join(r["colored_objects"])}
               for r in result.class_table]
    iv = result.intervention
    inter = [{"heads": " ".join(iv.heads), "before": iv.before, "after": iv.after, "random heads": iv.random_control,
              "random draws": " ".join(f"{x:.2f}" for x in iv.random_draws), "n prompts": iv.n_prompts,
              "chance": iv.chance}]
    return [summary, overlap, classes, inter]


def reuse_headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the reuse page."""
    ioi, co = result.ioi, result.colored_objects
    ov = result.overlap
    return [("IOI heads", ioi.n_heads), ("IOI faithfulness", f"{ioi.faithfulness:.2f}"),
            ("Colored Objects heads", co.n_heads), ("CO faithfulness", f"{co.faithfulness:.2f}"),
            ("overlap (share of smaller)", f"{ov.share_of_smaller:.2f}"
             + (f" (random {ov.null_mean:.2f})" if ov.null_mean is not None else ""))]


def reuse_headline_figures(result: Any) -> list[dict[str, Any]]:
    """README rows of ``workbench reuse``: Colored Objects accuracy against chance, both circuits,
    the overlap against random circuits, the intervention with its controls."""
    from workbench.spec import figure

    iv = result.intervals
    out = [figure(f"Colored Objects accuracy among the prompt's 3 colours, format {result.format} (chance 0.33)",
                  interval=iv.get("intervention: accuracy before"))]
    co_all = (result.colored_objects.accuracies or {}).get("among_all")
    if co_all:
        out.append(figure("Colored Objects accuracy, argmax over all 8 colours (chance 0.125)",
                          interval=co_all.interval()))
    for key, label in (("ioi", "IOI"), ("colored_objects", "Colored Objects")):
        c = result.circuit(key)
        met = "met" if c.target_met else "NOT met"
        out.append(figure(f"{label} circuit: edges (target {c.target} {met} on validation)",
                          c.n_edges, n=c.n_val, split="validation", fmt="d"))
        out.append(figure(f"{label} circuit faithfulness (normalised)", interval=iv.get(f"{key}: faithfulness")))
    ov = result.overlap
    caveat = " (circuits NOT at target faithfulness)" if ov.caveat else ""
    out.append(figure(f"head overlap, share of the smaller circuit{caveat}", ov.share_of_smaller, fmt=".2f"))
    if ov.null_mean is not None:
        out.append(figure(f"same, random circuits of the same head counts (permutation p = {ov.p_value:.3g})",
                          ov.null_mean, n=ov.n_permutations, fmt=".2f"))
    for name, text in (("intervention: accuracy after", f"after adjusting {' '.join(result.intervention.heads)}"),
                       ("intervention: accuracy, random heads", "after adjusting random mid-layer heads"),
                       ("intervention: after - before", "change, after - before"),
                       ("intervention: after - random heads", "after - random heads")):
        if name in iv:
            out.append(figure(f"Colored Objects accuracy {text}", interval=iv[name]))
    return out


def reuse_sections(result: Any) -> list:
    """The reuse study as report (and page) sections: circuits, head overlap, heads by class, intervention."""
    from workbench.report import Section

    summary, overlap, classes, inter = reuse_tables(result)
    figs = reuse_figures(result)
    grids, circuits, bars = figs[:3], figs[3:5], figs[5:]
    return [
        Section(title="Circuit reuse: IOI and Colored Objects",
                text="Circuits by EAP-IG on each task; edges outside a circuit carry their mean over the corrupt "
                     "prompts, and faithfulness is the circuit's logit difference over the full model's.",
                figures=grids[:2], tables=[summary]),
        Section(title="head overlap", text="In-circuit heads shared by the two circuits.",
                figures=[grids[2], *circuits], tables=[overlap]),
        Section(title="heads by class", text="Heads above each IOI class's threshold, in each circuit.",
                tables=[classes]),
        Section(title="intervention",
                text="A few mid-layer IOI-circuit heads are made to attend from the final token to the wrong colours "
                     "(as S-inhibition heads attend to the repeated subject in IOI); Colored Objects accuracy "
                     "before and after, against the same intervention on random mid-layer heads.",
                figures=bars, tables=[inter]),
    ]
