"""The batched head-patching engine: P patch configurations times N prompts in as few
forward passes as a memory budget allows. A configuration is a boolean mask
[layer head pos]: where True, the head's output z (``blocks.{l}.attn.hook_z``) is
replaced by the source (corrupt run, mean or zero). Only the metric at each prompt's
last token is returned, so the [P N vocab] logits are never held.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..cache import Tokens
from ..errors import InputError

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(last-token logits [C N vocab], prompt indices [N]) -> metric [C N]."""


@dataclass
class HeadPatchSweep:
    """What a sweep returns: the metric per configuration and prompt [P N], and the clean metric [N]."""

    metric: torch.Tensor
    clean_metric: torch.Tensor
    n_forwards: int


def head_masks_all_positions(n_layers: int, n_heads: int, n_pos: int) -> torch.Tensor:
    """One configuration per head, patching it at every position: [L*H layer head pos]."""
    masks = torch.zeros(n_layers * n_heads, n_layers, n_heads, n_pos, dtype=torch.bool)
    for i in range(n_layers * n_heads):
        masks[i, i // n_heads, i % n_heads, :] = True
    return masks


def head_masks_per_position(n_layers: int, n_heads: int, n_pos: int) -> torch.Tensor:
    """One configuration per (head, position): [L*H*pos layer head pos]."""
    masks = torch.zeros(n_layers * n_heads * n_pos, n_layers, n_heads, n_pos, dtype=torch.bool)
    i = 0
    for l in range(n_layers):
        for h in range(n_heads):
            for p in range(n_pos):
                masks[i, l, h, p] = True
                i += 1
    return masks


def check_masks(model: Any, masks: torch.Tensor, n_pos: int) -> None:
    s = model.shape
    if masks.ndim != 4 or tuple(masks.shape[1:]) != (s.n_layers, s.n_heads, n_pos):
        raise InputError(
            f"patch masks have shape {tuple(masks.shape)}, expected [configs, {s.n_layers}, {s.n_heads}, {n_pos}] "
            "(configs x layers x heads x positions); build them with head_masks_all_positions/per_position"
        )
    if masks.dtype != torch.bool:
        raise InputError(f"patch masks must be boolean, got {masks.dtype}; use masks.bool()")


def _last_logits(model: Any, tokens: Tokens, hooks: dict[int, Callable]) -> torch.Tensor:
    """Last-token logits [B vocab] with z hooks installed on the given layers."""
    handles = [model.hook_points[f"blocks.{l}.attn.hook_z"].register_forward_hook(fn) for l, fn in hooks.items()]
    try:
        with torch.no_grad():
            hidden = model.hf.base_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                         use_cache=False).last_hidden_state
            last = hidden[torch.arange(hidden.shape[0]), tokens.last_positions]
            return model.hf.get_output_embeddings()(last)
    finally:
        for h in handles:
            h.remove()


def run_head_patches(
    model: Any,
    tokens: Tokens,
    source_z: dict[int, torch.Tensor],
    masks: torch.Tensor,
    metric: MetricFn,
    max_batch: int = 512,
    progress: bool = False,
    desc: str = "patching",
) -> HeadPatchSweep:
    """Run every configuration in ``masks`` [P layer head pos] on every prompt.

    ``source_z[l]`` is the value to write into layer l's z where the mask is True:
    [N pos head d_head] (a corrupt run), or anything that broadcasts to it (a mean).
    ``max_batch`` bounds the sequences per forward (configurations x prompts); a
    budget smaller than one configuration's N prompts is an error.
    """
    n, n_pos = tokens.input_ids.shape
    check_masks(model, masks, n_pos)
    if max_batch < n:
        raise InputError(f"max_batch={max_batch} cannot hold one configuration of {n} prompts; raise it to at least {n}")
    idx = torch.arange(n)
    clean = metric(_last_logits(model, tokens, {})[None], idx)[0]
    per_chunk = max(1, max_batch // n)
    results = []
    n_forwards = 1
    for start in tqdm(range(0, masks.shape[0], per_chunk), desc=desc, disable=not progress, leave=False):
        chunk = masks[start : start + per_chunk]
        c = chunk.shape[0]
        big = Tokens(tokens.input_ids.repeat(c, 1), tokens.attention_mask.repeat(c, 1))
        hooks = {}
        for l in chunk.any(dim=(0, 2, 3)).nonzero().flatten().tolist():
            m = chunk[:, l].permute(0, 2, 1)  # [c pos head]
            src = source_z[l]

            def fn(mod, inp, z, m=m, src=src, c=c):
                z4 = z.view(c, n, *z.shape[1:])  # [c N pos head d]
                s = src.to(z.dtype).expand(n, *z.shape[1:]) if src.ndim < 4 or src.shape[0] != n else src.to(z.dtype)
                return torch.where(m[:, None, :, :, None], s[None], z4).view_as(z)

            hooks[l] = fn
        logits = _last_logits(model, big, hooks).view(c, n, -1)
        results.append(metric(logits, idx))
        n_forwards += 1
    return HeadPatchSweep(metric=torch.cat(results), clean_metric=clean, n_forwards=n_forwards)
