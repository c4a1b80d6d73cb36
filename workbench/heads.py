"""Shared head-level helpers: ranking heads by a score, drawing random heads, and the
patches that mask heads (per batch row, so many masking configurations share a batch).

A head set is a boolean mask [layer head]; a batch of configurations is [config layer head].
Two ways to mask a head, both through canonical hook points:

* ``"query"``: zero the head's query (``blocks.{l}.attn.hook_q``) so it attends uniformly
  to every visible key, exactly what Wu et al.'s masking does (``query_states[:, h] = 0``);
* ``"zero"``: zero the head's output (``blocks.{l}.attn.hook_z``), zero ablation.
"""
from __future__ import annotations

import random
from typing import Callable, Iterable

import torch

from .errors import InputError
from .names import head_name  # noqa: F401  (re-exported: the one head-name format)

MASK_MODES = ("query", "zero")


def top_heads(scores: torch.Tensor, k: int, min_score: float | None = None) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring heads of a [layer head] grid as (layer, head), best first
    (ties broken by position); ``min_score`` drops heads at or below it."""
    flat = scores.detach().float().flatten()
    order = torch.argsort(-flat, stable=True)[: max(0, k)]
    n_heads = scores.shape[1]
    out = [(int(i) // n_heads, int(i) % n_heads) for i in order]
    if min_score is not None:
        # cpu: a 0-dim threshold compares with scores on any device
        limit = torch.tensor(min_score, dtype=scores.dtype)  # compare in the scores' precision
        out = [(l, h) for l, h in out if bool(scores[l, h] > limit)]
    return out


def random_heads(n_layers: int, n_heads: int, k: int, rng: random.Random,
                 exclude: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """``k`` distinct random heads, none of them in ``exclude`` (Wu et al. draw random
    heads outside the retrieval-head list)."""
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in set(exclude)]
    if k > len(pool):
        raise InputError(f"cannot draw {k} random heads from {len(pool)} eligible heads; lower k")
    return rng.sample(pool, k)


def head_set_mask(heads: list[tuple[int, int]], n_layers: int, n_heads: int) -> torch.Tensor:
    """[layer head] boolean mask of a head list."""
    # cpu: a head list's mask, like the head list itself; users move it where it patches
    mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for l, h in heads:
        mask[l, h] = True
    return mask


def mask_patches(configs: torch.Tensor, mode: str = "query", rows_per_config: int = 1,
                 interleave: bool = True) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Patches that mask, for batch row r, the heads of configuration ``c(r)``.

    ``configs`` is [C layer head] boolean. With ``interleave`` (the layout of
    ``generation.decode(..., repeat=C)``) row r belongs to configuration ``r % C``;
    otherwise rows come in C consecutive blocks of ``rows_per_config``."""
    if mode not in MASK_MODES:
        raise InputError(f"unknown mask mode '{mode}'; choose one of {', '.join(MASK_MODES)}")
    if configs.ndim == 2:
        configs = configs[None]
    n_cfg = configs.shape[0]
    hook = "hook_q" if mode == "query" else "hook_z"
    patches: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for layer in configs.any(dim=(0, 2)).nonzero().flatten().tolist():
        keep = (~configs[:, layer]).float()  # [C head]

        def fn(act: torch.Tensor, keep=keep) -> torch.Tensor:
            rows = act.shape[0]
            if interleave:
                idx = torch.arange(rows, device=act.device) % n_cfg
            else:
                idx = torch.arange(rows, device=act.device) // rows_per_config
            factor = keep.to(act.device, act.dtype)[idx]  # [rows head]
            return act * factor[:, None, :, None]

        patches[f"blocks.{layer}.attn.{hook}"] = fn
    return patches
