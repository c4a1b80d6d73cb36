"""Figures of the head atlas: the layer-by-head grid coloured by one column (clickable on the
page), two columns against each other, the correlation matrix, the role clusters, and two
models' depth profiles; the report sections and the README figures. One function serves the
page, notebooks and the report. Categorical values (role clusters, 0/1 flags) get one
qualitative colour and one legend entry each, never a continuous colour bar."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from workbench.report import Section
from workbench.spec import figure

GRID_MARKER = 18
PALETTE = plotly.colors.qualitative.D3
UNSET_COLOUR = "#bbbbbb"  # cluster -1 (not clustered) and NaN flags


def column_label(col: dict[str, Any]) -> str:
    arrow = "higher" if col["direction"] > 0 else "lower"
    unit = f", {col['unit']}" if col.get("unit") else ""
    return f"{col['name']} ({arrow} = stronger{unit})"


def is_categorical(col: dict[str, Any]) -> bool:
    """A column whose values name a category (a 0/1 flag), not an amount."""
    return col.get("unit") == "flag"


def _grid_layout(fig: go.Figure, title: str, n_layers: int, n_heads: int, legend_px: int = 0) -> go.Figure:
    """Layer (rows, 0 at the top) by head (columns), one square marker per head; ``legend_px``
    widens the figure for a legend so the grid keeps its size."""
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer",
                      height=max(320, 22 * n_layers + 140), width=max(360, 40 * n_heads + 220) + legend_px,
                      clickmode="event+select", dragmode=False, margin=dict(l=50, r=20, t=50, b=40))
    fig.update_xaxes(tickmode="linear", dtick=1, range=[-0.6, n_heads - 0.4])
    fig.update_yaxes(tickmode="linear", dtick=max(1, n_layers // 15), range=[n_layers - 0.5, -0.5])
    return fig


def _heads(n_layers: int, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
    return np.divmod(np.arange(n_layers * n_heads), n_heads)


def _colour(value: int) -> str:
    """A category's colour, by its value (so "yes" is the same colour in every figure)."""
    return UNSET_COLOUR if value < 0 else PALETTE[value % len(PALETTE)]


def categorical_grid(labels: np.ndarray, names: dict[int, str], title: str, what: str = "") -> go.Figure:
    """A [layer head] grid of integer categories: one trace (qualitative colour, legend entry)
    per category, in category order; customdata carries (layer, head) for clicks."""
    n_layers, n_heads = labels.shape
    layer, head = _heads(n_layers, n_heads)
    flat = labels.flatten()
    fig = go.Figure()
    for value in sorted(int(v) for v in np.unique(flat)):
        sel = flat == value
        name = names.get(value, str(value))
        fig.add_trace(go.Scatter(
            x=head[sel], y=layer[sel], mode="markers", name=name, customdata=np.stack([layer[sel], head[sel]], axis=1),
            text=[f"L{l}H{h}<br>{what}{name}" for l, h in zip(layer[sel], head[sel])], hovertemplate="%{text}<extra></extra>",
            marker=dict(symbol="square", size=GRID_MARKER, color=_colour(value), line=dict(width=0))))
    fig.update_layout(legend=dict(title=what.rstrip(": ") or None))
    longest = max((len(names.get(int(v), str(v))) for v in np.unique(flat)), default=0)
    return _grid_layout(fig, title, n_layers, n_heads, legend_px=60 + 6 * longest)


def flag_names(values: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """A 0/1 flag column as integer categories (-1 for NaN) and their names."""
    labels = np.where(np.isfinite(values), np.round(np.nan_to_num(values)), -1).astype(int)
    return labels, {0: "no", 1: "yes", -1: "no value"}


def atlas_grid(result: Any, column: str, i: int = 0) -> go.Figure:
    """Layer (rows) by head (columns), each head a square marker coloured by ``column``; one
    scatter point per head so that a click selects exactly that head (customdata: layer, head).
    A flag column is drawn in two colours with a legend; any other on a colour bar."""
    a = result.atlas(i)
    col = {c["name"]: c for c in a["columns"]}[column]
    grid = result.column(column, i).cpu().numpy()
    n_layers, n_heads = grid.shape
    title = f"{a['model']}: {column_label(col)}"
    if is_categorical(col):
        labels, names = flag_names(grid)
        return categorical_grid(labels, names, title, f"{column}: ")
    layer, head = _heads(n_layers, n_heads)
    values = grid.flatten()
    text = [f"L{l}H{h}<br>{column} = {v:.4g}" for l, h, v in zip(layer, head, values)]
    diverging = bool(np.nanmin(values) < 0 < np.nanmax(values))
    limit = float(np.nanmax(np.abs(values))) if diverging else None
    fig = go.Figure(go.Scatter(
        x=head, y=layer, mode="markers", customdata=np.stack([layer, head], axis=1), text=text,
        hovertemplate="%{text}<extra></extra>",
        marker=dict(symbol="square", size=GRID_MARKER, color=values, colorscale="RdBu_r" if diverging else "Viridis",
                    cmin=-limit if diverging else None, cmax=limit if diverging else None,
                    colorbar=dict(title=col.get("unit") or column), line=dict(width=0)),
    ))
    return _grid_layout(fig, title, n_layers, n_heads)


def column_scatter(result: Any, x: str, y: str, i: int = 0) -> go.Figure:
    """Two columns against each other, one point per head, coloured by role cluster; the title
    gives their Spearman rho with its interval and permutation p-value when the atlas has it."""
    a = result.atlas(i)
    cols = {c["name"]: c for c in a["columns"]}
    xs, ys = result.column(x, i).cpu().numpy().flatten(), result.column(y, i).cpu().numpy().flatten()
    clusters = result.cluster_grids[str(i)].cpu().numpy().flatten()
    layer, head = _heads(int(a["n_layers"]), int(a["n_heads"]))
    fig = go.Figure()
    for value in sorted(int(v) for v in np.unique(clusters)):
        sel = clusters == value
        fig.add_trace(go.Scatter(
            x=xs[sel], y=ys[sel], mode="markers", name=f"cluster {value}" if value >= 0 else "not clustered",
            marker=dict(color=_colour(value), size=8, opacity=0.85),
            text=[f"L{l}H{h}" for l, h in zip(layer[sel], head[sel])],
            hovertemplate=f"%{{text}}<br>{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra></extra>"))
    pair = next((c for c in a["correlations"] if {c["a"], c["b"]} == {x, y} and c["rho"] is not None), None)
    rho = ""
    if pair is not None:
        iv = pair.get("interval") or {}
        span = f" [{iv['low']:.2f}, {iv['high']:.2f}]" if iv else ""
        rho = f"<br><sup>Spearman rho {pair['rho']:.2f}{span}, permutation p {pair['p']:.2g}, n={pair['n']} heads</sup>"
    fig.update_layout(title=f"{a['model']}: {x} against {y}{rho}", xaxis_title=column_label(cols[x]),
                      yaxis_title=column_label(cols[y]), legend_title_text="role cluster", height=460)
    return fig


def strongest_pair(result: Any, i: int = 0) -> tuple[str, str] | None:
    """The two columns with the largest |Spearman rho| (None when no pair has one)."""
    pairs = [c for c in result.atlas(i)["correlations"] if c["rho"] is not None and math.isfinite(c["rho"])]
    best = max(pairs, key=lambda c: abs(c["rho"]), default=None)
    return (best["a"], best["b"]) if best else None


def correlation_matrix(result: Any, i: int = 0) -> go.Figure:
    """Spearman's rho between every pair of columns (hover: the permutation p-value and n)."""
    a = result.atlas(i)
    names = [c["name"] for c in a["columns"]]
    n = len(names)
    rho = np.full((n, n), np.nan)
    hover = [["" for _ in range(n)] for _ in range(n)]
    for j in range(n):
        rho[j, j] = 1.0
    for c in a["correlations"]:
        p, q = names.index(c["a"]), names.index(c["b"])
        if c["rho"] is not None:
            rho[p, q] = rho[q, p] = c["rho"]
            hover[p][q] = hover[q][p] = f"rho {c['rho']:.3f}, p {c['p']:.3g}, n {c['n']}"
    fig = go.Figure(go.Heatmap(z=rho, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu_r", text=hover,
                               hovertemplate="%{y} vs %{x}: %{text}<extra></extra>", colorbar=dict(title="rho")))
    fig.update_layout(title=f"{a['model']}: Spearman rank correlation between columns (over heads)",
                      height=max(400, 26 * n + 160), yaxis_autorange="reversed")
    return fig


def cluster_grid(result: Any, i: int = 0) -> go.Figure:
    """Layer by head coloured by role cluster: one colour and legend entry per cluster."""
    a = result.atlas(i)
    labels = result.cluster_grids[str(i)].cpu().numpy().astype(int)
    names = {c["id"]: f"{c['id']}: {_short(c['description'])}" for c in a["clusters"]["clusters"]}
    names[-1] = "not clustered"
    title = f"{a['model']}: role clusters ({a['clusters']['method']}, k={a['clusters']['k']})"
    return categorical_grid(labels, names, title, "cluster ")


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def depth_profiles(result: Any) -> go.Figure:
    """Two models lined up by relative depth: each shared column's mean rank per depth bin."""
    comp = result.comparison
    fig = go.Figure()
    bins = comp["depth_bins"]
    x = [(b + 0.5) / bins for b in range(bins)]
    for row in comp["roles"]:
        for tag, dash in (("a", "solid"), ("b", "dash")):
            model = comp["models"][0 if tag == "a" else 1]
            fig.add_trace(go.Scatter(x=x, y=row[f"profile_{tag}"], mode="lines+markers", line=dict(dash=dash),
                                     name=f"{row['column']} · {model}", legendgroup=row["column"]))
    fig.update_layout(title="Mean rank of each column by relative depth (solid: first model, dashed: second)",
                      xaxis_title="relative depth (layer + 0.5) / n_layers", yaxis_title="mean rank (1 = strongest)",
                      height=480)
    return fig


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def top_heads_rows(result: Any, i: int = 0) -> list[dict[str, Any]]:
    """One row per (column, top head): its value and its rank in every other column."""
    a = result.atlas(i)
    n = int(a["n_layers"]) * int(a["n_heads"])
    rows = []
    for col, heads in a["top_heads"].items():
        for k, t in enumerate(heads, 1):
            others = ", ".join(f"{c} {r}" for c, r in t["ranks"].items() if c != col)
            rows.append({"column": col, "#": k, "head": t["head"], "value": _fmt(t["value"]),
                         f"rank elsewhere (of {n})": others})
    return rows


def sources_rows(result: Any, i: int = 0) -> list[dict[str, Any]]:
    return [{"column": c["name"], "analysis": c["analysis"], "unit": c["unit"],
             "stronger": "higher" if c["direction"] > 0 else "lower", "run": c["run"] or "(this run)",
             "what": c["description"]} for c in result.atlas(i)["columns"]]


def correlation_rows(result: Any, i: int = 0) -> list[dict[str, Any]]:
    rows = []
    for c in sorted(result.atlas(i)["correlations"], key=lambda c: -abs(c["rho"]) if c["rho"] is not None else 1):
        iv = c.get("interval") or {}
        rows.append({"a": c["a"], "b": c["b"], "rho": _fmt(c["rho"]),
                     "95% interval": f"[{_fmt(iv.get('low'))}, {_fmt(iv.get('high'))}]" if iv else "-",
                     "permutation p": _fmt(c["p"]), "n heads": c["n"]})
    return rows


def cluster_rows(result: Any, i: int = 0) -> list[dict[str, Any]]:
    return [{"cluster": c["id"], "heads": c["size"], "described by (mean direction-aware rank scaled to (0, 1], 1 = strongest)": c["description"],
             "members": " ".join(c["members"][:12]) + (" ..." if c["size"] > 12 else "")}
            for c in result.atlas(i)["clusters"]["clusters"]]


def comparison_rows(result: Any) -> list[dict[str, Any]]:
    comp = result.comparison
    a, b = comp["models"]
    return [{"column": r["column"], f"present in {a}": r["present_a"], f"present in {b}": r["present_b"],
             f"heads ({a})": r["n_a"], f"heads ({b})": r["n_b"], f"mean depth ({a})": _fmt(r["depth_a"]),
             f"mean depth ({b})": _fmt(r["depth_b"]), f"top ({a})": f"{r['top_a']} @ {r['top_depth_a']}",
             f"top ({b})": f"{r['top_b']} @ {r['top_depth_b']}"} for r in comp["roles"]]


# ----------------------------------------------------------------------------- where a head reads from
READS_FROM = ("measured, key side", "measured, query side", "weights, K-composition", "weights, Q-composition")


def qk_run(result: Any, i: int = 0) -> Any | None:
    """The saved QK-attribution run behind model ``i``'s composition columns (None without one)."""
    from workbench.errors import WorkbenchError
    from workbench.results import load_result

    for c in result.atlas(i)["columns"]:
        if c.get("analysis") == "qk" and c.get("run"):
            try:
                return load_result(c["run"])
            except WorkbenchError:
                return None
    return None


def reads_from(qk: Any, layer: int, head: int, k: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Where head (layer, head) reads from, strongest first: measured (the query-side and
    key-side sources of its attended score on the QK run's prompts) and from the weights (its
    strongest K- and Q-composition writers, minus the random baseline)."""
    name = f"L{layer}H{head}"
    measured = qk.head_sources.get(name)
    out = {READS_FROM[0]: [{"source": s.component, "value": s.value} for s in (measured.key if measured else [])[:k]],
           READS_FROM[1]: [{"source": s.component, "value": s.value} for s in (measured.query if measured else [])[:k]]}
    for label, mode in zip(READS_FROM[2:], ("K", "Q")):
        scores = qk.composition[mode][:, :, layer, head].float().cpu()  # [writer layer, writer head]
        flat = scores.nan_to_num(float("-inf")).flatten()
        n = int(np.isfinite(flat.cpu().numpy()).sum())
        vals, idx = flat.topk(min(k, n)) if n else (flat[:0], flat[:0].long())
        out[label] = [{"source": f"L{int(j) // scores.shape[1]}H{int(j) % scores.shape[1]}", "value": float(v)}
                      for v, j in zip(vals, idx)]
    return out


def reads_from_rows(qk: Any, heads: list[tuple[int, int]], k: int = 3) -> list[dict[str, Any]]:
    """The report's table: one row per head, its top sources per kind."""
    rows = []
    for layer, head in heads:
        lists = reads_from(qk, layer, head, k)
        rows.append({"head": f"L{layer}H{head}",
                     **{kind: ", ".join(f"{r['source']} ({r['value']:.3g})" for r in lists[kind]) or "-"
                        for kind in READS_FROM}})
    return rows


def _report_heads(result: Any, i: int, limit: int = 12) -> list[tuple[int, int]]:
    """The heads the report explains: the top two of every column, in column order."""
    seen: list[tuple[int, int]] = []
    for heads in result.atlas(i)["top_heads"].values():
        for t in heads[:2]:
            key = (int(t["layer"]), int(t["head_index"]))
            if key not in seen:
                seen.append(key)
    return seen[:limit]


def atlas_sections(result: Any) -> list[Section]:
    out = []
    for i in range(result.n_models):
        a = result.atlas(i)
        cl = a["clusters"]
        filled = "; ".join(f"{f['analysis']} at {f['settings']}" for f in a.get("filled") or [])
        text = (f"{a['n_layers']} layers x {a['n_heads']} heads of {a['model']}, {len(a['columns'])} columns "
                f"from the newest saved run of each head-level analysis" + (f" (--fill ran: {filled})" if filled else "")
                + (f"; attention entropy and distance on {a['n_attention_prompts']} IOI prompts" if a['n_attention_prompts'] else "")
                + ". Correlations are over all heads (no split: nothing is chosen on them).")
        out.append(Section(f"Head atlas: {a['model']}", text=text, tables=[sources_rows(result, i)],
                           figures=[cluster_grid(result, i), correlation_matrix(result, i)]))
        out.append(Section(f"Head atlas: {a['model']}: top heads of each column, with their ranks in the others",
                           tables=[top_heads_rows(result, i)]))
        sil = f", silhouette {cl['silhouette']:.3f}" if cl.get("silhouette") is not None else ""
        out.append(Section(f"Head atlas: {a['model']}: role clusters",
                           text=f"{cl['method']} over {len(cl['columns'])} columns, k={cl['k']}{sil}.",
                           tables=[cluster_rows(result, i)]))
        out.append(Section(f"Head atlas: {a['model']}: rank correlations",
                           text="Spearman's rho over heads, Fisher-z 95% interval, two-sided permutation p-value "
                                f"({result.config.n_permutations if result.config else '?'} shuffles); the "
                                "strongest pair drawn head by head.",
                           tables=[correlation_rows(result, i)],
                           figures=[column_scatter(result, *pair, i)] if (pair := strongest_pair(result, i)) else []))
        qk = qk_run(result, i)
        if qk is not None:
            out.append(Section(f"Head atlas: {a['model']}: where the top heads read from",
                               text="Measured: the key-side and query-side sources of each head's attended score "
                                    f"(QK attribution on the {qk.config.task if qk.config else ''} prompts of "
                                    f"{qk.path.name if qk.path else 'the qk run'}). From the weights: the strongest "
                                    "K- and Q-composition writers (Elhage et al. 2021, minus the random baseline).",
                               tables=[reads_from_rows(qk, _report_heads(result, i))]))
    if result.comparison:
        comp = result.comparison
        out.append(Section(f"Head atlas: {comp['models'][0]} vs {comp['models'][1]} by relative depth",
                           text=f"Roles present in both: {', '.join(comp['roles_in_both']) or 'none'}. {comp['rule']}.",
                           tables=[comparison_rows(result)], figures=[depth_profiles(result)]))
    return out


def headline(result: Any) -> list[tuple[str, Any]]:
    a = result.atlas()
    best = max((c for c in a["correlations"] if c["rho"] is not None), key=lambda c: abs(c["rho"]), default=None)
    tiles = [("heads", int(a["n_layers"]) * int(a["n_heads"])), ("columns", len(a["columns"])),
             ("role clusters", a["clusters"]["k"])]
    if best is not None:
        tiles.append((f"strongest rank correlation: {best['a']} ~ {best['b']}", f"{best['rho']:.2f}"))
    return tiles


def headline_figures(result: Any) -> list[dict[str, Any]]:
    """README figures: the number of columns, the strongest correlation with its interval, and k."""
    a = result.atlas()
    out = [figure(f"columns gathered on {a['model']}", len(a["columns"]), n=int(a["n_layers"]) * int(a["n_heads"]),
                  fmt="d")]
    for name, iv in result.intervals.items():
        out.append(figure(name, interval=iv))
    out.append(figure("role clusters (k by silhouette)", a["clusters"]["k"], fmt="d"))
    return out
