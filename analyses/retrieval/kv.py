"""RazorAttention-style KV-cache compression: which KV heads keep the full cache, the score
patches that hide every other key from the compressed heads, and the share of cache kept."""
from __future__ import annotations

from typing import Callable

import torch

from workbench.names import act_name


def kv_protected_groups(heads: list[tuple[int, int]], n_layers: int, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """[layer kv_head] True where a KV head serves at least one protected query head."""
    group = n_heads // n_kv_heads
    # cpu: a head list's mask, like the head list; moved where it patches
    full = torch.zeros(n_layers, n_kv_heads, dtype=torch.bool)
    for l, h in heads:
        full[l, h // group] = True
    return full


def kv_compression_patches(full_kv: torch.Tensor, n_cfg: int, n_heads: int, pad_offsets: torch.Tensor,
                           sink: int, window: int) -> dict[str, Callable]:
    """Score patches (``blocks.{l}.attn.hook_attn_scores`` [rows head 1 key]) that hide, for
    compressed heads, every key but the first ``sink`` real tokens and the last ``window``.
    ``full_kv`` [C layer kv_head]; row r is configuration ``r % C`` and prompt ``r // C``."""
    n_kv = full_kv.shape[2]
    group = n_heads // n_kv
    full_q = full_kv.repeat_interleave(group, dim=2)  # [C layer head]
    patches = {}
    for layer in range(full_kv.shape[1]):
        if bool(full_q[:, layer].all()):
            continue
        keep_full = full_q[:, layer]

        def fn(scores: torch.Tensor, keep_full=keep_full) -> torch.Tensor:
            rows, _, _, k = scores.shape
            cfg = torch.arange(rows, device=scores.device) % n_cfg
            off = pad_offsets.to(scores.device).repeat_interleave(n_cfg)[:, None]  # [rows 1]
            pos = torch.arange(k, device=scores.device)[None]
            kept = ((pos >= off) & (pos < off + sink)) | (pos >= k - window)  # [rows key]
            visible = keep_full.to(scores.device)[cfg][:, :, None] | kept[:, None, :]  # [rows head key]
            return scores.masked_fill(~visible[:, :, None, :], torch.finfo(scores.dtype).min)

        patches[act_name("attn_scores", layer)] = fn
    return patches


def kv_share_kept(full_kv: torch.Tensor, prompt_lens: torch.Tensor, sink: int, window: int) -> float:
    """Share of the prompt's KV cache kept: full KV heads keep every token, the others
    ``min(len, sink + window)``; averaged over prompts. ``full_kv`` [layer kv_head]."""
    n = full_kv.numel()
    n_full = int(full_kv.sum())
    kept = [(n_full * L + (n - n_full) * min(L, sink + window)) / (n * L) for L in prompt_lens.tolist()]
    return float(sum(kept) / len(kept))
