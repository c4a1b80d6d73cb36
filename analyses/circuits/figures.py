"""Figures of circuit discovery and the circuit-reuse study: head-score grids, the circuit
as a graph (layers top to bottom, heads left to right, MLPs at the right edge), the head
overlap of two circuits, the head-class table and the intervention bars."""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from workbench.figures.common import bar_top_heads, head_grid


def _node_xy(name: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    if name == "input":
        return (n_heads - 1) / 2, -1.0
    if name == "logits":
        return (n_heads - 1) / 2, float(n_layers)
    if name.startswith("M"):
        return float(n_heads) + 0.5, int(name[1:]) + 0.5
    l, h = name[1:].split("H")
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
        l, h = map(int, n[1:].split("H"))
        z[l, h] += 1
    for n in co_heads:
        l, h = map(int, n[1:].split("H"))
        z[l, h] += 2
    return head_grid(z, title, colorbar="1 IOI · 2 CO · 3 both", diverging=False)


def intervention_bars(intervention: Any, title: str = "Colored Objects accuracy") -> go.Figure:
    """Accuracy before, after adjusting the chosen heads, and with random heads adjusted
    (an ``Intervention`` of a reuse result)."""
    labels = ["before", f"after ({', '.join(intervention.heads)})", "random heads"]
    vals = [intervention.before, intervention.after, intervention.random_control]
    fig = go.Figure(go.Bar(x=labels, y=vals, text=[f"{v:.2f}" if v is not None else "" for v in vals], textposition="auto"))
    fig.update_layout(title=title, yaxis_title="accuracy", yaxis_range=[0, 1])
    return fig


def circuit_figures(result: Any) -> list[go.Figure]:
    """Head scores, the circuit as a graph, exact head patching (when run), the faithfulness
    curve (EAP, EAP-IG) and the top heads of a circuit result."""
    from workbench.patching.graph import Graph

    L, H = result.head_scores.shape
    g = Graph.build(L, H)
    figs = [head_grid(result.head_scores, f"{result.method} head scores ({result.task})", "Δ metric"),
            circuit_graph(result.circuit, result.edge_scores, list(g.senders), list(g.receivers), L, H,
                          f"{result.task} circuit by {result.method}: {result.n_edges} edges, {result.n_heads} heads")]
    if result.head_patching is not None:
        figs.append(head_grid(result.head_patching, "exact activation patching of heads", "Δ metric"))
    curve = result.faithfulness_curve
    if curve:
        from workbench.figures.common import line_curves

        figs.append(line_curves(curve["n_edges"], {"faithfulness": curve["faithfulness"]},
                                "faithfulness against circuit size", "edges kept (top |score|)", "circuit / full model"))
    figs.append(bar_top_heads(result.head_scores, "top heads by |score|"))
    return figs


def circuit_headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the circuit page."""
    return [("task / method", f"{result.task} / {result.method}"), ("edges", result.n_edges),
            ("heads", result.n_heads), ("faithfulness", f"{result.faithfulness:.2f}")]


def circuit_sections(result: Any) -> list:
    from workbench.report import Section

    rows = [{"task": result.task, "method": result.method, "n_prompts": result.n_prompts,
             "logit_diff": result.logit_diff, "accuracy": result.accuracy, "n_edges": result.n_edges,
             "n_heads": result.n_heads, "faithfulness": result.faithfulness,
             "spearman_vs_patching": result.spearman_vs_patching}]
    edges = [{"sender": s, "receiver": r, "score": v} for s, r, v in result.top_edges]
    return [Section(title=f"Circuit: {result.task} by {result.method}",
                    text="Edges outside the circuit carry their mean over the corrupt prompts; faithfulness is the "
                         "circuit's logit difference over the full model's.",
                    figures=circuit_figures(result), tables=[rows, edges])]


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
        intervention_bars(result.intervention),
    ]


def reuse_tables(result: Any) -> list[list[dict[str, Any]]]:
    """[circuits, head overlap, heads by class, intervention] as table rows."""
    summary = []
    for key in ("ioi", "colored_objects"):
        c = result.circuit(key)
        summary.append({"task": key, "n_heads": c.n_heads, "n_edges": c.n_edges, "faithfulness": c.faithfulness,
                        "logit_diff": c.logit_diff, "accuracy": c.accuracy})
    ov = result.overlap
    overlap = [{"shared heads": len(ov.shared), "share of smaller": ov.share_of_smaller, "jaccard": ov.jaccard,
                "heads": " ".join(ov.shared)}]
    classes = [{"class": r["class"], "IOI circuit": " ".join(r["ioi"]), "Colored Objects circuit": " ".join(r["colored_objects"])}
               for r in result.class_table]
    iv = result.intervention
    inter = [{"heads": " ".join(iv.heads), "before": iv.before, "after": iv.after, "random heads": iv.random_control}]
    return [summary, overlap, classes, inter]


def reuse_headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the reuse page."""
    ioi, co = result.ioi, result.colored_objects
    return [("IOI heads", ioi.n_heads), ("IOI faithfulness", f"{ioi.faithfulness:.2f}"),
            ("Colored Objects heads", co.n_heads), ("CO faithfulness", f"{co.faithfulness:.2f}"),
            ("overlap (share of smaller)", f"{result.overlap.share_of_smaller:.2f}")]


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
