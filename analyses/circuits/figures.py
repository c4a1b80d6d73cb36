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


def intervention_bars(intervention: dict[str, Any], title: str = "Colored Objects accuracy") -> go.Figure:
    """Accuracy before, after adjusting the chosen heads, and with random heads adjusted."""
    labels = ["before", f"after ({', '.join(intervention.get('heads', []))})", "random heads"]
    vals = [intervention.get("before"), intervention.get("after"), intervention.get("random_control")]
    fig = go.Figure(go.Bar(x=labels, y=vals, text=[f"{v:.2f}" if v is not None else "" for v in vals], textposition="auto"))
    fig.update_layout(title=title, yaxis_title="accuracy", yaxis_range=[0, 1])
    return fig


def circuit_figures(result: Any) -> list[go.Figure]:
    from workbench.patching.graph import Graph

    a, m = result.arrays, result.metrics
    L, H = a["head_scores"].shape
    g = Graph.build(L, H)
    figs = [head_grid(a["head_scores"], f"{m.get('method')} head scores ({m.get('task')})", "Δ metric"),
            circuit_graph(a["circuit"], a["edge_scores"], list(g.senders), list(g.receivers), L, H,
                          f"{m.get('task')} circuit by {m.get('method')}: {m.get('n_edges')} edges, {m.get('n_heads')} heads")]
    if "head_patching" in a:
        figs.append(head_grid(a["head_patching"], "exact activation patching of heads", "Δ metric"))
    curve = m.get("faithfulness_curve")
    if curve:
        from workbench.figures.common import line_curves

        figs.append(line_curves(curve["n_edges"], {"faithfulness": curve["faithfulness"]},
                                "faithfulness against circuit size", "edges kept (top |score|)", "circuit / full model"))
    figs.append(bar_top_heads(a["head_scores"], "top heads by |score|"))
    return figs


def circuit_sections(result: Any) -> list:
    from workbench.report import Section

    m = result.metrics
    rows = [{k: m.get(k) for k in ("task", "method", "n_prompts", "logit_diff", "accuracy", "n_edges", "n_heads",
                                  "faithfulness", "spearman_vs_patching")}]
    return [Section(title=f"Circuit: {m.get('task')} by {m.get('method')}",
                    text="Edges outside the circuit carry their mean over the corrupt prompts; faithfulness is the "
                         "circuit's logit difference over the full model's.",
                    figures=circuit_figures(result), tables=[rows])]


def reuse_figures(result: Any) -> list[go.Figure]:
    from workbench.patching.graph import Graph

    a, m = result.arrays, result.metrics
    L, H = a["ioi_head_scores"].shape
    g = Graph.build(L, H)
    return [
        head_grid(a["ioi_head_scores"], "IOI: EAP-IG head scores", "Δ logit diff"),
        head_grid(a["colored_objects_head_scores"], "Colored Objects: EAP-IG head scores", "Δ logit diff"),
        overlap_grid(m["ioi"]["heads"], m["colored_objects"]["heads"], L, H),
        circuit_graph(a["ioi_circuit"], a["ioi_edge_scores"], list(g.senders), list(g.receivers), L, H, "IOI circuit"),
        circuit_graph(a["colored_objects_circuit"], a["colored_objects_edge_scores"], list(g.senders), list(g.receivers),
                      L, H, "Colored Objects circuit"),
        intervention_bars(m["intervention"]),
    ]


def reuse_tables(result: Any) -> list[list[dict[str, Any]]]:
    m = result.metrics
    summary = [{"task": k, "n_heads": m[k]["n_heads"], "n_edges": m[k]["n_edges"], "faithfulness": m[k]["faithfulness"],
                "logit_diff": m[k]["logit_diff"], "accuracy": m[k]["accuracy"]} for k in ("ioi", "colored_objects")]
    ov = m["overlap"]
    overlap = [{"shared heads": len(ov["shared"]), "share of smaller": ov["share_of_smaller"], "jaccard": ov["jaccard"],
                "heads": " ".join(ov["shared"])}]
    classes = [{"class": r["class"], "IOI circuit": " ".join(r["ioi"]), "Colored Objects circuit": " ".join(r["colored_objects"])}
               for r in m["class_table"]]
    iv = m["intervention"]
    inter = [{"heads": " ".join(iv["heads"]), "before": iv["before"], "after": iv["after"], "random heads": iv["random_control"]}]
    return [summary, overlap, classes, inter]


def reuse_sections(result: Any) -> list:
    from workbench.report import Section

    return [Section(title="Circuit reuse: IOI and Colored Objects",
                    text="Circuits by EAP-IG; overlap of in-circuit heads; heads by IOI class; the intervention makes "
                         "mid-layer IOI heads attend from the final token to the wrong colours (as S-inhibition heads "
                         "attend to the repeated subject) and compares accuracy with random mid-layer heads.",
                    figures=reuse_figures(result), tables=reuse_tables(result))]
