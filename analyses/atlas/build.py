"""One model's atlas: its columns gathered from saved runs (``--fill`` runs the missing
analyses), the atlas's own columns and head card when there is a model forward, and the
statistics across columns (``crossstats``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from workbench.errors import InputError
from workbench.results import Result

from . import crossstats
from .config import AtlasConfig, head_level_specs
from .gather import Gathered, fill_missing, gather
from .own_columns import ATLAS_COLUMNS, attention_columns, head_card
from .records import Clustering, Correlation, FilledRun, HeadCard, ModelAtlas, TopHead, table

if TYPE_CHECKING:
    import numpy as np

    from workbench.models import Model


@dataclass
class Built:
    """One model's atlas and its tensors: the [column layer head] table, the [layer head]
    cluster of each head, and the head cards' attention patterns (None without a model)."""

    atlas: ModelAtlas
    table: torch.Tensor
    clusters: torch.Tensor
    card_pattern: torch.Tensor | None


def _columns(name: str, model: Model | None, config: AtlasConfig, progress: bool,
             extra: tuple[Result, ...]) -> tuple[Gathered, list[FilledRun]]:
    """The columns of the saved runs on ``name`` (after ``--fill``), then the atlas's own."""
    specs_ = [s for s in head_level_specs() if not config.analyses or s.key in config.analyses]
    shape = (model.shape.n_layers, model.shape.n_heads) if model is not None else None
    got = gather(name, specs_, shape, extra)
    filled: list[FilledRun] = []
    if config.fill and model is not None:
        have = {c.analysis for c in got.columns}
        filled = fill_missing(model, specs_, have, config.seed, progress)
        if filled:
            got = gather(name, specs_, shape, extra)
    got = Gathered(dict(got.values), list(got.columns))
    if model is not None:
        for col, grid in attention_columns(model, config.n_prompts, config.seed).items():
            got.values[col] = grid
            got.columns.append(ATLAS_COLUMNS[col])
    if not got.values:
        raise InputError(f"no saved run of any head-level analysis on {name} ({', '.join(s.key for s in specs_)}); "
                         f"run one (e.g. `workbench induction --model {name}`) or pass --fill")
    return got, filled


def flat_table(table: torch.Tensor) -> np.ndarray:
    """[column head] a [column layer head] table as float64 numbers, heads flattened layer-major."""
    return table.reshape(table.shape[0], -1).cpu().numpy().astype(float)


def build_one(name: str, model: Model | None, config: AtlasConfig, progress: bool,
              extra: tuple[Result, ...] = ()) -> Built:
    got, filled = _columns(name, model, config, progress, extra)
    card: HeadCard | None = None
    pattern = None
    if model is not None:
        card, pattern = head_card(model, config.prompt, k=5)
    n_layers, n_heads = next(iter(got.values.values())).shape
    order = [c.name for c in got.columns]
    stacked = torch.stack([got.values[c] for c in order])  # [column layer head]
    flat = flat_table(stacked)
    directions = [c.direction for c in got.columns]
    labels, clusters = crossstats.role_clusters(flat, order, directions, config.n_clusters, int(n_heads))
    atlas = ModelAtlas(
        model=name, n_layers=int(n_layers), n_heads=int(n_heads), columns=got.columns, filled=filled,
        n_attention_prompts=config.n_prompts if model is not None else 0,
        correlations=[Correlation.from_row(r) for r in
                      crossstats.correlations(flat, order, config.n_permutations, config.seed)],
        top_heads={col: [TopHead.from_row(r) for r in rows] for col, rows in
                   crossstats.top_heads(flat, order, directions, int(n_heads), config.top_k).items()},
        clusters=Clustering.from_row(clusters), card=card)
    # cpu: cluster labels from scikit-learn, a result array
    grid = torch.as_tensor(labels).reshape(int(n_layers), int(n_heads))
    return Built(atlas, stacked, grid, pattern)


def lineup(built: Built) -> tuple[dict[str, Any], np.ndarray]:
    """What ``crossstats.compare`` reads of one model's atlas: its size, its columns and its table."""
    a = built.atlas
    return ({"model": a.model, "n_layers": a.n_layers, "n_heads": a.n_heads, "columns": table(a.columns)},
            flat_table(built.table))
