"""PyTorch references of the patching kernels, with exactly the kernels' signatures.

They are the fallback where there is no GPU (and what the Triton kernels are tested
against). Both follow the same contract:

``patch_mix_project(z, source, mask, w_o, bias=None)``
    z       [C N S H D]   head outputs of the run being patched (may be an expanded view)
    source  [N S H D]     the values patched in (corrupt run, mean, zero; may be expanded)
    mask    [C S H] bool  per configuration: which (position, head) take ``source``
    w_o     [H D M]       the output projection, per head (M = d_model)
    bias    [M] or None
    returns [C N S M] = sum_{h,d} where(mask[c,s,h], source[n,s,h,d], z[c,n,s,h,d]) * w_o[h,d,:] + bias

``masked_edge_sum(base, deltas, mask)``
    base    [N S M] or [C N S M]   the destination's clean input (residual stream)
    deltas  [E N S M] or [E C N S M]  per source edge: patched output - current output
    mask    [C E] (bool or float)  per configuration: which edges are patched (or a weight)
    returns [C N S M] = base + sum_e mask[c,e] * deltas[e]
"""
from __future__ import annotations

import torch


def patch_mix_project(
    z: torch.Tensor,
    source: torch.Tensor,
    mask: torch.Tensor,
    w_o: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mix clean/corrupt head outputs under the per-configuration masks, then project."""
    c, n, s, h, d = z.shape
    mixed = torch.where(mask[:, None, :, :, None], source[None].to(z.dtype), z)  # [C N S H D]
    flat = mixed.reshape(c, n, s, h * d)
    out = flat @ w_o.reshape(h * d, -1).to(z.dtype)
    if bias is not None:
        out = out + bias.to(z.dtype)
    return out


def masked_edge_sum(base: torch.Tensor, deltas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The destination's input under each configuration: base plus the masked source deltas."""
    weights = mask.to(deltas.dtype)
    if deltas.ndim == 4:  # deltas shared by the configurations [E N S M]
        out = torch.einsum("ce,ensm->cnsm", weights, deltas)
    else:  # per-configuration deltas [E C N S M]
        out = torch.einsum("ce,ecnsm->cnsm", weights, deltas)
    return (base if base.ndim == 4 else base[None]) + out
