"""Activation patching (Meng et al.; Wang et al.): run the clean prompts with one
component's activation taken from the corrupt run and record the metric.

* residual stream, layer by position (``blocks.{l}.hook_resid_pre``);
* attention heads, layer by head and layer by head by position (through the batched
  engine ``workbench.patching.engine.run_head_patches``);
* MLP outputs, by layer (and by layer and position).

Every function folds many patch configurations into one batch (configs x prompts).
Results are raw metric values; ``normalized_effect`` turns them into
(patched - clean) / (corrupt - clean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..cache import Tokens, forward
from ..errors import InputError
from .engine import head_masks_all_positions, head_masks_per_position, run_head_patches


@dataclass
class PatchGrid:
    """Metric after patching [*grid] (mean over prompts), with the clean and corrupt metrics."""

    patched: torch.Tensor
    clean: float
    corrupt: float

    @property
    def normalized(self) -> torch.Tensor:
        denom = self.corrupt - self.clean
        if abs(denom) < 1e-8:
            raise InputError("clean and corrupt metrics are equal, so the normalised effect is undefined; "
                             "use a corruption that changes the answer")
        return (self.patched - self.clean) / denom

    @property
    def effect(self) -> torch.Tensor:
        return self.patched - self.clean


def check_pair(clean: Tokens, corrupt: Tokens) -> None:
    if clean.input_ids.shape != corrupt.input_ids.shape or not torch.equal(clean.attention_mask, corrupt.attention_mask):
        raise InputError(f"clean and corrupt prompts differ in token length ({tuple(clean.input_ids.shape)} vs "
                         f"{tuple(corrupt.input_ids.shape)} or padding); patching needs token-aligned pairs")


def last_logits(logits: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """[batch vocab]: each prompt's logits at its last (unpadded) position."""
    return logits[torch.arange(logits.shape[0], device=logits.device), tokens.last_positions]


def baseline_metrics(model: Any, clean: Tokens, corrupt: Tokens, metric: Callable, names: list[str]):
    """(mean clean metric, mean corrupt metric, the corrupt run's cache of ``names``)."""
    with torch.no_grad():
        lc, _ = forward(model, clean, [])
        lk, cache = forward(model, corrupt, names)
    return float(metric(last_logits(lc, clean)).mean()), float(metric(last_logits(lk, corrupt)).mean()), cache


def _sweep(model: Any, clean: Tokens, name_of: Callable[[int], str], configs: list[tuple[int, torch.Tensor]],
           source: dict[str, torch.Tensor], metric: Callable, max_batch: int, progress: bool, desc: str) -> torch.Tensor:
    """Generic batched sweep: config i patches ``name_of(layer)`` where ``pos_mask`` [pos] is True."""
    n = len(clean)
    per = max(1, max_batch // n)
    out = []
    for start in tqdm(range(0, len(configs), per), desc=desc, disable=not progress, leave=False):
        chunk = configs[start:start + per]
        c = len(chunk)
        big = Tokens(clean.input_ids.repeat(c, 1), clean.attention_mask.repeat(c, 1))
        by_layer: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for i, (layer, pos_mask) in enumerate(chunk):
            by_layer.setdefault(layer, []).append((i, pos_mask))
        patches = {}
        for layer, items in by_layer.items():
            src = source[name_of(layer)]

            def fn(act, items=items, src=src, c=c):
                a = act.view(c, n, *act.shape[1:]).clone()
                for i, pos_mask in items:
                    a[i][:, pos_mask] = src[:, pos_mask].to(a.dtype)
                return a.view_as(act)

            patches[name_of(layer)] = fn
        with torch.no_grad():
            logits, _ = forward(model, big, [], patches)
        out.append(metric(last_logits(logits, big).view(c, n, -1)).mean(1))
    return torch.cat(out)


def patch_residual(model: Any, clean: Tokens, corrupt: Tokens, metric: Callable, max_batch: int = 256,
                   progress: bool = False) -> PatchGrid:
    """Residual stream into each layer, patched at one position at a time: [layer pos]."""
    check_pair(clean, corrupt)
    L, P = model.shape.n_layers, clean.input_ids.shape[1]
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    c, k, cache = baseline_metrics(model, clean, corrupt, metric, names)
    # cpu: a CPU position mask may index an activation on any device
    configs = [(l, torch.arange(P) == p) for l in range(L) for p in range(P)]
    vals = _sweep(model, clean, lambda l: f"blocks.{l}.hook_resid_pre", configs, dict(cache), metric, max_batch,
                  progress, "resid patching")
    return PatchGrid(vals.view(L, P), c, k)


def patch_mlps(model: Any, clean: Tokens, corrupt: Tokens, metric: Callable, per_position: bool = False,
               max_batch: int = 256, progress: bool = False) -> PatchGrid:
    """MLP outputs patched by layer [layer] (or by layer and position [layer pos])."""
    check_pair(clean, corrupt)
    L, P = model.shape.n_layers, clean.input_ids.shape[1]
    names = [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    c, k, cache = baseline_metrics(model, clean, corrupt, metric, names)
    if per_position:
        # cpu: a CPU position mask may index an activation on any device
        configs = [(l, torch.arange(P) == p) for l in range(L) for p in range(P)]
    else:
        # cpu: a CPU position mask may index an activation on any device
        configs = [(l, torch.ones(P, dtype=torch.bool)) for l in range(L)]
    vals = _sweep(model, clean, lambda l: f"blocks.{l}.hook_mlp_out", configs, dict(cache), metric, max_batch,
                  progress, "mlp patching")
    return PatchGrid(vals.view(L, P) if per_position else vals, c, k)


def patch_heads(model: Any, clean: Tokens, corrupt: Tokens, metric: Callable, per_position: bool = False,
                max_batch: int = 512, progress: bool = False) -> PatchGrid:
    """Head outputs z patched from the corrupt run: [layer head] (or [layer head pos]).
    Runs on the batched engine (``run_head_patches``)."""
    check_pair(clean, corrupt)
    s = model.shape
    P = clean.input_ids.shape[1]
    names = [f"blocks.{l}.attn.hook_z" for l in range(s.n_layers)]
    c, k, cache = baseline_metrics(model, clean, corrupt, metric, names)
    source = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(s.n_layers)}
    masks = (head_masks_per_position if per_position else head_masks_all_positions)(s.n_layers, s.n_heads, P)
    sweep = run_head_patches(model, clean, source, masks, lambda logits, idx: metric(logits),
                             max_batch=max(max_batch, len(clean)), progress=progress, desc="head patching")
    vals = sweep.metric.mean(1)
    shape = (s.n_layers, s.n_heads, P) if per_position else (s.n_layers, s.n_heads)
    return PatchGrid(vals.view(*shape), c, k)
