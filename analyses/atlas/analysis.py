"""The head atlas: every head of a model, seen by every head-level analysis at once.

The atlas reads analyses only through the registry: each spec's ``head_columns`` declare the
per-head quantities it contributes (name, unit, direction) and how to read them from a saved
Result's typed fields. ``run`` gathers the newest saved run of every such analysis on the
model (``fill`` runs the missing ones at their page sizes, ``spec.page_defaults``), adds two
quantities of its own (attention entropy and mean attention distance, on IOI prompts), and
joins them into one table: one row per (layer, head), one column per quantity, with the run
each column came from. On that table: Spearman rank correlations between every pair of
columns with permutation p-values, the top heads of each column with their ranks in the
others, and role clusters. Two models (``--model A --model B``) are lined up by relative depth.

The rooms: ``config``, ``gather`` (columns from saved runs, ``--fill``), ``own_columns`` (the
atlas's own measurements and head cards), ``crossstats`` (statistics across columns),
``build`` (one model's atlas), ``records`` and ``result`` (what is saved); this module runs them.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from workbench.checks import checked_run
from workbench.results import Result, provenance
from workbench.spec import check_config

from . import crossstats
from .build import build_one, lineup
from .config import AtlasConfig, head_level_keys, head_level_specs
from .own_columns import attention_columns, head_card
from .records import Comparison
from .result import AtlasResult

if TYPE_CHECKING:
    from workbench.models import Model

__all__ = ["AtlasConfig", "AtlasResult", "attention_columns", "head_card", "head_level_keys", "head_level_specs",
           "load_target", "run"]


def load_target(config: AtlasConfig, common: Any) -> list[Model]:
    """Every model named by ``--model``, on the common backend, device and dtype."""
    from workbench.models import load_model

    check_config(config)
    models = []
    for name in config.models:
        print(f"loading {name} ...", file=sys.stderr, flush=True)
        models.append(load_model(name, backend=common.backend, device=common.device, dtype=common.dtype,
                                 compile=common.compile or None))
    return models


def _set_headline_interval(result: AtlasResult) -> None:
    """The strongest correlation of the first model, with its interval, as the run's headline figure."""
    first = result.atlas(0)
    best = max((c for c in first.correlations if c.rho is not None), key=lambda c: abs(c.rho or 0.0), default=None)
    if best is not None and best.interval:
        result.set_interval(f"Spearman {best.a} vs {best.b} over heads", best.interval)


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(target: Model | list[Model] | tuple[Model, ...] | None, config: AtlasConfig | None = None,
        progress: bool = True, results: tuple[Result, ...] = ()) -> AtlasResult:
    """The atlas of each model in ``target`` (a loaded model, a list of them, or None: the
    saved runs of ``config.models[0]`` alone, with no model forward). ``results`` are unsaved
    Results to read as if they were the newest runs (the ablation report's own run)."""
    cfg = config or AtlasConfig()
    check_config(cfg)
    models = [] if target is None else (list(target) if isinstance(target, (list, tuple)) else [target])
    names = [m.name for m in models] or list(cfg.models[:1])
    built = [build_one(name, models[i] if i < len(models) else None, cfg, progress, tuple(results))
             for i, name in enumerate(names)]
    comparison = None
    if len(built) == 2:
        comparison = Comparison.from_row(crossstats.compare([lineup(b) for b in built]))
    patterns: dict[str, torch.Tensor] = {str(i): b.card_pattern for i, b in enumerate(built) if b.card_pattern is not None}
    result = AtlasResult(config=cfg, models=names, atlases=[b.atlas for b in built], comparison=comparison,
                         tables={str(i): b.table for i, b in enumerate(built)},
                         cluster_grids={str(i): b.clusters for i, b in enumerate(built)}, card_patterns=patterns,
                         meta=provenance(model=names[0], seed=cfg.seed))
    _set_headline_interval(result)
    return result
