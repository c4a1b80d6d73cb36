"""Attention sinks beyond the first token and ACT's attention calibration (Yu et al.,
"Unveiling and Harnessing Hidden Attention Sinks", ICML 2024; GATECH-EIC/ACT).

Sinks, as in ACT's ``atten_process_*``: for each head and input, the column mean of the
attention map over the queries that can see each position (the column sum divided by the
number of real queries at or after it); positions over ``threshold`` are sinks. Sinks other
than the first token are reported with the heads that have them, their tokens, and the
massive activations in the residual stream at those tokens.

Calibration at inference (ACT): on chosen heads, attention to every non-first sink is
scaled by ``beta`` and the freed mass (1 - beta) x (sink mass) goes to the other visible
positions in proportion to their attention, so rows still sum to one.

Everything ACT chooses is chosen on a calibration split, per task: the candidate heads
(the ``max_search`` heads from layer ``min_layer`` on with the strongest non-first sinks on
the calibration prompts), the heads kept (each candidate calibrated alone at ``beta`` and
``threshold``, kept when it raises calibration accuracy, or keeps it and raises the mean
log-probability of the right option; at most ``max_heads``; the best single head when the
set does worse than it), then ``beta`` and ``threshold`` for that set from the grid
``betas`` x ``thresholds``. Accuracy before and after is then measured once on the task's
held-out split, which chose nothing (``workbench.datasets.multiple_choice``: the splits
share no word or adjective), with Wilson intervals and a paired bootstrap of the difference.

The rooms: ``config`` (settings), ``patterns`` (the sink statistic and the calibration),
``discovery`` (sinks and massive activations), ``scoring`` and ``search`` (ACT's choices and
the held-out measurement), ``records`` and ``result`` (what is saved); this module runs them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from workbench.checks import checked_run
from workbench.datasets.multiple_choice import MCQuestion, task_splits
from workbench.names import head_name
from workbench.results import provenance
from workbench.stats import Interval

from .config import SinksConfig, validate
from .discovery import Discovery, Head, discover
from .patterns import calibrate_pattern, calibration_patches, column_means, find_sinks, token_class
from .records import GridPoint, SearchStep, SinkHead, TaskCalibration
from .result import HELDOUT_FIELDS, SinksResult, interval_name
from .search import search_task

if TYPE_CHECKING:
    from workbench.models import Model

__all__ = ["SinksConfig", "SinksResult", "calibrate_pattern", "calibration_patches", "column_means", "find_sinks",
           "interval_name", "run", "token_class", "validate"]


@dataclass
class Pooled:
    """Every task's calibration prompts together: per-head share and strength [layer head]
    (weighted by prompts), sink token and class counts, and the heads with sinks."""

    n: int
    share: torch.Tensor
    strength: torch.Tensor
    token_counts: Counter[str]
    class_counts: Counter[str]
    sinks: list[SinkHead]


def _prompt_mean(parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """The mean of per-task means weighted by their prompts (summed in task order)."""
    total = parts[0][0] * parts[0][1]
    for mean, n in parts[1:]:
        total = total + mean * n
    return total / sum(n for _, n in parts)


def pool(found: dict[str, Discovery]) -> Pooled:
    """The tasks' discoveries pooled; the heads with sinks strongest first, each with its top tokens."""
    n_total = sum(f["n"] for f in found.values())
    share = _prompt_mean([(f["share"], f["n"]) for f in found.values()])
    strength = _prompt_mean([(f["strength"], f["n"]) for f in found.values()])
    token_counts: Counter[str] = sum((f["token_counts"] for f in found.values()), Counter())
    class_counts: Counter[str] = sum((f["class_counts"] for f in found.values()), Counter())
    head_tokens: dict[Head, Counter[str]] = {}
    for f in found.values():
        for lh, c in f["head_tokens"].items():
            head_tokens.setdefault(lh, Counter()).update(c)
    sink_heads = sorted(head_tokens, key=lambda lh: (-float(strength[lh]), lh))
    sinks = [SinkHead(name=head_name(l, h), layer=l, head=h, share_of_prompts=round(float(share[l, h]), 4),
                      strength=round(float(strength[l, h]), 4), tokens=dict(head_tokens[(l, h)].most_common(5)))
             for l, h in sink_heads]
    return Pooled(n_total, share, strength, token_counts, class_counts, sinks)


@dataclass
class Searched:
    """ACT on every task: the calibration rows, search steps, grid points, intervals by their
    stored names, and the held-out tensors by field and task."""

    rows: list[TaskCalibration]
    search: list[SearchStep]
    grid: list[GridPoint]
    intervals: dict[str, Interval]
    heldout: dict[str, dict[str, torch.Tensor]]


def search_tasks(model: Model, splits: dict[str, tuple[list[MCQuestion], list[MCQuestion]]],
                 found: dict[str, Discovery], cfg: SinksConfig, progress: bool) -> Searched:
    """ACT per task: choices on the calibration split, one measurement on the held-out split."""
    out = Searched([], [], [], {}, {k: {} for k in HELDOUT_FIELDS})
    for t in cfg.tasks:
        row, srch, grd, extra = search_task(model, t, splits[t][0], splits[t][1], found[t], cfg, progress)
        out.rows.append(row)
        out.search += srch
        out.grid += grd
        for what, tensor in extra["arrays"].items():
            out.heldout[what][t] = tensor
        out.intervals.update({interval_name(t, k): v for k, v in extra["intervals"].items()})
    return out


def search_parameters(cfg: SinksConfig, model: Model) -> dict[str, Any]:
    """Every setting the search ran with, and the number of heads it chose among."""
    s = model.shape
    return {"tasks": list(cfg.tasks), "n_calib": cfg.n_calib, "n_heldout": cfg.n_heldout,
            "max_search": cfg.max_search, "max_heads": cfg.max_heads, "min_layer": cfg.min_layer,
            "min_queries": cfg.min_queries, "search_beta": cfg.beta,
            "search_threshold": cfg.threshold, "betas": list(cfg.betas),
            "thresholds": list(cfg.thresholds), "n_heads_in_model": s.n_layers * s.n_heads}


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: SinksConfig | None = None, progress: bool = True) -> SinksResult:
    """Per task: find non-first sinks on the calibration prompts, search ACT's heads, beta and
    threshold on them, and measure accuracy before and after on the held-out split."""
    cfg = config or SinksConfig()
    validate(cfg)
    splits = {t: task_splits(t, cfg.n_calib, cfg.n_heldout, seed=cfg.seed) for t in cfg.tasks}
    # 1-2. sinks and massive activations on each task's calibration prompts
    found = {t: discover(model, splits[t][0], cfg, progress) for t in cfg.tasks}
    pooled = pool(found)
    # 3. ACT per task: choices on the calibration split, one measurement on the held-out split
    done = search_tasks(model, splits, found, cfg, progress)
    first = found[cfg.tasks[0]]
    result = SinksResult(
        config=cfg, sinks=pooled.sinks, calibration=done.rows, search=done.search, grid=done.grid,
        search_parameters=search_parameters(cfg, model), n_sink_prompts=pooled.n,
        n_sinks_beyond_first=sum(f["n_sinks"] for f in found.values()), n_heads_with_sinks=len(pooled.sinks),
        sink_tokens=dict(pooled.token_counts.most_common(15)), sink_token_classes=dict(pooled.class_counts),
        massive_activations=[r for f in found.values() for r in f["massive"]],
        first_token_massive_activations=[r for f in found.values() for r in f["first_massive"]],
        example_tokens=first["example_tokens"], example_prompt=first["example_prompt"],
        sink_share=pooled.share, sink_strength=pooled.strength, example_column_means=first["example_column_means"],
        example_sinks=first["example_sinks"], heldout_before=done.heldout["heldout_before"],
        heldout_after=done.heldout["heldout_after"], heldout_logp_before=done.heldout["heldout_logp_before"],
        heldout_logp_after=done.heldout["heldout_logp_after"], meta=provenance(model=model.name, seed=cfg.seed))
    for name, iv in done.intervals.items():
        result.set_interval(name, iv)
    return result
