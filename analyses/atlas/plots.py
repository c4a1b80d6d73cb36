"""The atlas's pictures: the layer-by-head grid coloured by one column (clickable on the
page), two columns against each other, the correlation matrix, the role clusters, and two
models' depth profiles. Categorical values (role clusters, 0/1 flags) get one qualitative
colour and one legend entry each, never a continuous colour bar."""
from __future__ import annotations

import math

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from .records import AtlasColumn
from .result import AtlasResult

GRID_MARKER = 18
PALETTE = plotly.colors.qualitative.D3
UNSET_COLOUR = "#bbbbbb"  # cluster -1 (not clustered) and NaN flags


def column_label(col: AtlasColumn) -> str:
    arrow = "higher" if col.direction > 0 else "lower"
    unit = f", {col.unit}" if col.unit else ""
    return f"{col.name} ({arrow} = stronger{unit})"


def is_categorical(col: AtlasColumn) -> bool:
    """A column whose values name a category (a 0/1 flag), not an amount."""
    return col.unit == "flag"


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


def atlas_grid(result: AtlasResult, column: str, i: int = 0) -> go.Figure:
    """Layer (rows) by head (columns), each head a square marker coloured by ``column``; one
    scatter point per head so that a click selects exactly that head (customdata: layer, head).
    A flag column is drawn in two colours with a legend; any other on a colour bar."""
    a = result.atlas(i)
    col = {c.name: c for c in a.columns}[column]
    grid = result.column(column, i).cpu().numpy()
    n_layers, n_heads = grid.shape
    title = f"{a.model}: {column_label(col)}"
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
                    cmin=-limit if limit is not None else None, cmax=limit,
                    colorbar=dict(title=col.unit or column), line=dict(width=0)),
    ))
    return _grid_layout(fig, title, n_layers, n_heads)


def column_scatter(result: AtlasResult, x: str, y: str, i: int = 0) -> go.Figure:
    """Two columns against each other, one point per head, coloured by role cluster; the title
    gives their Spearman rho with its interval and permutation p-value when the atlas has it."""
    a = result.atlas(i)
    cols = {c.name: c for c in a.columns}
    xs, ys = result.column(x, i).cpu().numpy().flatten(), result.column(y, i).cpu().numpy().flatten()
    clusters = result.cluster_labels(i).cpu().numpy().flatten()
    layer, head = _heads(a.n_layers, a.n_heads)
    fig = go.Figure()
    for value in sorted(int(v) for v in np.unique(clusters)):
        sel = clusters == value
        fig.add_trace(go.Scatter(
            x=xs[sel], y=ys[sel], mode="markers", name=f"cluster {value}" if value >= 0 else "not clustered",
            marker=dict(color=_colour(value), size=8, opacity=0.85),
            text=[f"L{l}H{h}" for l, h in zip(layer[sel], head[sel])],
            hovertemplate=f"%{{text}}<br>{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra></extra>"))
    pair = next((c for c in a.correlations if {c.a, c.b} == {x, y} and c.rho is not None), None)
    rho = ""
    if pair is not None:
        iv = pair.interval
        span = f" [{iv.low:.2f}, {iv.high:.2f}]" if iv else ""
        rho = f"<br><sup>Spearman rho {pair.rho:.2f}{span}, permutation p {pair.p:.2g}, n={pair.n} heads</sup>"
    fig.update_layout(title=f"{a.model}: {x} against {y}{rho}", xaxis_title=column_label(cols[x]),
                      yaxis_title=column_label(cols[y]), legend_title_text="role cluster", height=460)
    return fig


def strongest_pair(result: AtlasResult, i: int = 0) -> tuple[str, str] | None:
    """The two columns with the largest |Spearman rho| (None when no pair has one)."""
    pairs = [c for c in result.atlas(i).correlations if c.rho is not None and math.isfinite(c.rho)]
    best = max(pairs, key=lambda c: abs(c.rho or 0.0), default=None)
    return (best.a, best.b) if best else None


def correlation_matrix(result: AtlasResult, i: int = 0) -> go.Figure:
    """Spearman's rho between every pair of columns (hover: the permutation p-value and n)."""
    a = result.atlas(i)
    names = a.column_names()
    n = len(names)
    rho = np.full((n, n), np.nan)
    hover = [["" for _ in range(n)] for _ in range(n)]
    for j in range(n):
        rho[j, j] = 1.0
    for c in a.correlations:
        p, q = names.index(c.a), names.index(c.b)
        if c.rho is not None:
            rho[p, q] = rho[q, p] = c.rho
            hover[p][q] = hover[q][p] = f"rho {c.rho:.3f}, p {c.p:.3g}, n {c.n}"
    fig = go.Figure(go.Heatmap(z=rho, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu_r", text=hover,
                               hovertemplate="%{y} vs %{x}: %{text}<extra></extra>", colorbar=dict(title="rho")))
    fig.update_layout(title=f"{a.model}: Spearman rank correlation between columns (over heads)",
                      height=max(400, 26 * n + 160), yaxis_autorange="reversed")
    return fig


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cluster_grid(result: AtlasResult, i: int = 0) -> go.Figure:
    """Layer by head coloured by role cluster: one colour and legend entry per cluster."""
    a = result.atlas(i)
    labels = result.cluster_labels(i).cpu().numpy().astype(int)
    names = {c.id: f"{c.id}: {_short(c.description)}" for c in a.clusters.clusters}
    names[-1] = "not clustered"
    title = f"{a.model}: role clusters ({a.clusters.method}, k={a.clusters.k})"
    return categorical_grid(labels, names, title, "cluster ")


def depth_profiles(result: AtlasResult) -> go.Figure:
    """Two models lined up by relative depth: each shared column's mean rank per depth bin."""
    comp = result.comparison
    fig = go.Figure()
    if comp is None:
        return fig
    bins = comp.depth_bins
    x = [(b + 0.5) / bins for b in range(bins)]
    for row in comp.roles:
        for tag, dash, profile in (("a", "solid", row.profile_a), ("b", "dash", row.profile_b)):
            model = comp.models[0 if tag == "a" else 1]
            fig.add_trace(go.Scatter(x=x, y=profile, mode="lines+markers", line=dict(dash=dash),
                                     name=f"{row.column} · {model}", legendgroup=row.column))
    fig.update_layout(title="Mean rank of each column by relative depth (solid: first model, dashed: second)",
                      xaxis_title="relative depth (layer + 0.5) / n_layers", yaxis_title="mean rank (1 = strongest)",
                      height=480)
    return fig
