"""The batched head-patching engine: P patch configurations times N prompts in as few
forward passes as a memory budget allows. A configuration is a boolean mask
[layer head pos]: where True, the head's output z (``blocks.{l}.attn.hook_z``) is
replaced by the source (corrupt run, mean or zero). Only the metric at each prompt's
last token is returned, so the [P N vocab] logits are never held.

Two methods, same answers:
- ``suffix`` (default): the clean run is cached once and each configuration recomputes
  only the layers from its first patched layer and the positions from its first patched
  position (``workbench.patching.suffix``); exact, and on a CPU about 2x (head sweep) to
  4x (head-by-position sweep) less arithmetic than full forwards. The mix of head outputs
  and the output projection is one fused op: the Triton kernel on CUDA, its PyTorch
  reference elsewhere (``kernel=`` forces one: "triton", "reference", "auto").
- ``full``: every configuration is a full forward with hooks on z (the plain batched way;
  also the reference the suffix method is tested against).

Build masks with ``head_masks_all_positions``, ``head_masks_per_position`` or
``masks_from_heads`` (which checks indices); edge patching is in ``workbench.patching.edges``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..cache import Tokens
from ..errors import InputError
from . import suffix as _suffix

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
    # cpu: configuration masks are built on the CPU and moved per chunk
    masks = torch.zeros(n_layers * n_heads, n_layers, n_heads, n_pos, dtype=torch.bool)
    for i in range(n_layers * n_heads):
        masks[i, i // n_heads, i % n_heads, :] = True
    return masks


def head_masks_per_position(n_layers: int, n_heads: int, n_pos: int) -> torch.Tensor:
    """One configuration per (head, position): [L*H*pos layer head pos]."""
    # cpu: configuration masks are built on the CPU and moved per chunk
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
            adapter = model.adapter
            hidden = adapter.base(model.hf)(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                            use_cache=False).last_hidden_state
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), tokens.last_positions]
            return _suffix.unembed_float32(model)(last)
    finally:
        for h in handles:
            h.remove()


def masks_from_heads(model: Any, n_pos: int, configs: list[list[tuple[int, ...]]]) -> torch.Tensor:
    """Masks [P layer head pos] from lists of (layer, head) (every position) or
    (layer, head, position) per configuration; indices are checked against the model."""
    s = model.shape
    # cpu: configuration masks are built on the CPU and moved per chunk
    masks = torch.zeros(len(configs), s.n_layers, s.n_heads, n_pos, dtype=torch.bool)
    for i, cfg in enumerate(configs):
        for item in cfg:
            if len(item) not in (2, 3):
                raise InputError(f"configuration {i}: {item!r} is not (layer, head) or (layer, head, position)")
            l, h = int(item[0]), int(item[1])
            if not 0 <= l < s.n_layers:
                raise InputError(f"configuration {i}: layer {l} is out of range; the model has layers 0..{s.n_layers - 1}")
            if not 0 <= h < s.n_heads:
                raise InputError(f"configuration {i}: head {h} (L{l}H{h}) is out of range; the model has heads 0..{s.n_heads - 1}")
            if len(item) == 3:
                p = int(item[2])
                if not 0 <= p < n_pos:
                    raise InputError(f"configuration {i}: position {p} is out of range; the prompts have positions 0..{n_pos - 1}")
                masks[i, l, h, p] = True
            else:
                masks[i, l, h, :] = True
    return masks


def check_sweep(model: Any, tokens: Tokens, masks: torch.Tensor, max_batch: int, method: str) -> tuple[int, int]:
    """One-line errors for a sweep that cannot run (masks, method, a batch budget below one
    configuration); returns (prompts, positions)."""
    n, n_pos = tokens.input_ids.shape
    check_masks(model, masks, n_pos)
    if method not in ("suffix", "full"):
        raise InputError(f"unknown patching method '{method}'; choose 'suffix' or 'full'")
    if max_batch < n:
        raise InputError(f"max_batch={max_batch} cannot hold one configuration of {n} prompts; raise it to at least {n}")
    return n, n_pos


def run_head_patches(
    model: Any,
    tokens: Tokens,
    source_z: dict[int, torch.Tensor],
    masks: torch.Tensor,
    metric: MetricFn,
    max_batch: int = 512,
    progress: bool = False,
    desc: str = "patching",
    method: str = "suffix",
    kernel: str | None = None,
    clean: Any = None,
) -> HeadPatchSweep:
    """Run every configuration in ``masks`` [P layer head pos] on every prompt.

    ``source_z[l]`` is the value to write into layer l's z where the mask is True:
    [N pos head d_head] (a corrupt run), or anything that broadcasts to it (a mean).
    ``metric(last_logits [C N vocab], prompt_idx [N]) -> [C N]``.
    ``max_batch`` bounds the sequences per forward (configurations x prompts); a
    budget smaller than one configuration's N prompts is an error.
    ``method``: "suffix" (default; exact, recomputes only what a patch changes) or
    "full" (one full forward per chunk of configurations). ``kernel`` forces the fused
    mix-and-project op ("triton" or "reference"); default automatic. ``clean``: a
    ``workbench.patching.suffix.clean_run(model, tokens)`` to reuse across sweeps on the
    same prompts (default: made here, one forward).
    Returns metric [P N], the clean metric [N] and the number of batched passes.
    """
    n, n_pos = check_sweep(model, tokens, masks, max_batch, method)
    missing = sorted(set(masks.any(dim=(0, 2, 3)).nonzero().flatten().tolist()) - set(source_z))
    if missing:
        raise InputError(f"the patch masks patch layers {missing} but source_z has no entry for them; "
                         "pass source_z[l] for every patched layer ([N pos head d_head], or a mean)")
    if method == "full":
        return _run_full(model, tokens, source_z, masks, metric, max_batch, progress, desc)
    return _run_suffix(model, tokens, source_z, masks, metric, max_batch, progress, desc, kernel, clean)


def _run_suffix(model, tokens, source_z, masks, metric, max_batch, progress, desc, kernel, clean_run) -> HeadPatchSweep:
    n = tokens.input_ids.shape[0]
    idx = torch.arange(n)  # cpu: prompt indices: a CPU index may index a tensor on any device
    with torch.no_grad():
        if clean_run is None:
            clean_run = _suffix.clean_run(model, tokens)
        elif clean_run.mask_add.shape[0] != n or clean_run.mask_add.shape[-1] != tokens.input_ids.shape[1]:
            raise InputError("the clean run passed as clean= was made on other prompts; make it with "
                             "workbench.patching.suffix.clean_run(model, tokens) on these tokens")
        runner = _suffix.SuffixRunner(model, clean_run, source_z, kernel=kernel)
        clean_logits = clean_run.last_logits if runner.resid_dtype == model.dtype else runner.clean_logits()
        clean = metric(clean_logits[None], idx)[0]
        out = clean[None].repeat(masks.shape[0], 1)
        chunks = _suffix.plan_chunks(masks, max(1, max_batch // n))
        for cfg, first_layers, p0 in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            logits = runner.run_chunk(masks[cfg].to(model.device), first_layers, p0)
            out[torch.tensor(cfg, device=out.device)] = metric(logits, idx).to(out.dtype)
    return HeadPatchSweep(metric=out, clean_metric=clean, n_forwards=1 + len(chunks))


def _run_full(model, tokens, source_z, masks, metric, max_batch, progress, desc) -> HeadPatchSweep:
    n = tokens.input_ids.shape[0]
    idx = torch.arange(n)  # cpu: prompt indices: a CPU index may index a tensor on any device
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
                # z's device, not the first layer's: under a device map the layers sit on different devices
                src = src.to(device=z.device, dtype=z.dtype)
                s = src.expand(n, *z.shape[1:]) if src.ndim < 4 or src.shape[0] != n else src
                return torch.where(m.to(z.device)[:, None, :, :, None], s[None], z4).view_as(z)

            hooks[l] = fn
        logits = _last_logits(model, big, hooks).view(c, n, -1)
        results.append(metric(logits, idx))
        n_forwards += 1
    return HeadPatchSweep(metric=torch.cat(results), clean_metric=clean, n_forwards=n_forwards)
