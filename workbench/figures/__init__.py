"""Plotly figure functions. Each takes a Result (or its parts) and returns a
``go.Figure``; the app, the notebooks and the HTML reports call the same functions."""
from .common import bar_top_heads, head_grid, head_label, line_curves, to_numpy, token_heatmap

__all__ = ["head_grid", "head_label", "bar_top_heads", "token_heatmap", "line_curves", "to_numpy"]
