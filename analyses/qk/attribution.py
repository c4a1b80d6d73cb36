"""QK attribution: one head's pre-softmax score split into (query component, key component)
pairs.

The residual stream into layer ``L`` is a sum of components: the token embeddings, the
learned position embeddings (GPT-2), every earlier head's output ``z_h @ W_O[h]``, every
earlier layer's attention output bias and every earlier MLP's output. The attention norm
is linear in its input once its scale (1/rms, or 1/std after centring for LayerNorm) is
frozen at the value measured on the whole stream, so each component's share of the
normalised input is ``(x_c - mean(x_c)) * rstd * w`` (or ``x_c * rstd * w``); the norm's
own bias and the projection's bias form one more component, ``bias``. Rotary is a fixed
linear map at a fixed position, so it is applied to each component's query and key
share. The score ``scale * q_i . k_j`` is then bilinear in the two sums, and the pair
contributions ``scale * q_c(i) . k_c'(j)`` add up exactly (to float rounding) to it.

Grouped-query attention: query head ``h`` reads key-value head ``h // (n_heads / n_kv_heads)``
(Hugging Face's ``repeat_kv``). Everything here is float64 on the model's device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.cache import Tokens, run_with_cache
from workbench.errors import InputError
from workbench.heads import head_name

BIAS = "bias"  # the q/k projection's bias plus the norm's bias through it


def component_names(model: Any, layer: int) -> list[str]:
    """The residual components feeding ``layer``, in the order ``decompose`` stacks them,
    then ``bias``."""
    s, adapter = model.shape, model.adapter
    names = ["embed"] + ([] if adapter.rotary else ["pos_embed"])
    layers = adapter.layers(model.hf)
    for l in range(layer):
        names += [head_name(l, h) for h in range(s.n_heads)]
        if adapter.out_weights(adapter.attn(layers[l]), s)[1] is not None:
            names.append(f"L{l} attn bias")
        names.append(f"MLP{l}")
    return names + [BIAS]


@dataclass
class Decomposition:
    """The residual stream into one layer, split into components.

    ``parts`` [component batch pos d_model] (without ``bias``), ``resid`` [batch pos d_model]
    the measured stream, ``scores`` [batch head query key] the model's own pre-softmax scores
    (masked), ``names`` the components (with ``bias`` last)."""

    layer: int
    names: list[str]
    parts: torch.Tensor
    resid: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor

    @property
    def residual_error(self) -> float:
        """Largest |stream - sum of components|: the decomposition's own check."""
        return float((self.resid - self.parts.sum(0)).abs().max())


def decompose(model: Any, tokens: Tokens, layer: int) -> Decomposition:
    """One forward pass: every component of the residual stream into ``layer`` (float64)."""
    s, adapter = model.shape, model.adapter
    if not 0 <= layer < s.n_layers:
        raise InputError(f"layer {layer} is out of range; {model.name} has layers 0..{s.n_layers - 1}")
    names = ["hook_embed", "blocks.0.hook_resid_pre", f"blocks.{layer}.hook_resid_pre",
             f"blocks.{layer}.attn.hook_attn_scores"]
    names += [f"blocks.{l}.attn.hook_z" for l in range(layer)] + [f"blocks.{l}.hook_mlp_out" for l in range(layer)]
    _, cache = run_with_cache(model, tokens, names, return_logits=False)
    f64 = torch.float64
    embed = cache["hook_embed"].to(f64)
    parts = [embed]
    if not adapter.rotary:
        parts.append(cache["blocks.0.hook_resid_pre"].to(f64) - embed)  # learned positions
    layers = adapter.layers(model.hf)
    for l in range(layer):
        w_o, b_o = adapter.out_weights(adapter.attn(layers[l]), s)  # [H D M], [M]
        z = cache[f"blocks.{l}.attn.hook_z"].to(f64)  # [B T H D]
        parts += list(torch.einsum("bthd,hdm->hbtm", z, w_o.detach().to(f64)).unbind(0))
        if b_o is not None:
            parts.append(b_o.detach().to(f64).expand_as(embed))
        parts.append(cache[f"blocks.{l}.hook_mlp_out"].to(f64))
    return Decomposition(layer, component_names(model, layer), torch.stack(parts),
                         cache[f"blocks.{layer}.hook_resid_pre"].to(f64),
                         cache[f"blocks.{layer}.attn.hook_attn_scores"].to(f64),
                         tokens.attention_mask.long().sum(1))


def normalised_parts(model: Any, dec: Decomposition) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each component's share of the attention norm's output [component batch pos d_model],
    with the norm's scale frozen at its value on the measured stream; and the norm's bias [M]."""
    adapter = model.adapter
    norm = adapter.attn_norm(adapter.layers(model.hf)[dec.layer])
    eps = adapter.norm_eps(norm)
    x, parts = dec.resid, dec.parts
    if adapter.centred_norm:
        xc = x - x.mean(-1, keepdim=True)
        rstd = (xc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        parts = parts - parts.mean(-1, keepdim=True)
    else:
        rstd = (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    weight = getattr(norm, "weight", None)
    out = parts * rstd[None]
    if weight is not None:
        out = out * weight.detach().to(out.dtype)
    bias = getattr(norm, "bias", None)
    return out, (None if bias is None else bias.detach().to(out.dtype))


def head_weights(model: Any, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                              torch.Tensor | None, float]:
    """W_Q [D M], W_K [D M] of the head's key-value group, b_Q, b_K [D] (or None) and the
    score's scale."""
    s, adapter = model.shape, model.adapter
    if not 0 <= head < s.n_heads:
        raise InputError(f"head {head} is out of range; {model.name} has heads 0..{s.n_heads - 1} per layer")
    attn = adapter.attn(adapter.layers(model.hf)[layer])
    w = adapter.qkv_weights(attn, s)
    kv = head // (s.n_heads // s.n_kv_heads)
    return (w.w_q[head].detach(), w.w_k[kv].detach(), None if w.b_q is None else w.b_q[head].detach(),
            None if w.b_k is None else w.b_k[kv].detach(), adapter.scaling(attn, s))


def _project(normed: torch.Tensor, norm_bias: torch.Tensor | None, w: torch.Tensor,
             b: torch.Tensor | None) -> torch.Tensor:
    """[component batch pos M] -> [component+1 batch pos D]: each share through ``w``, then the bias."""
    f64 = normed.dtype
    out = normed @ w.to(f64).T
    bias = torch.zeros(out.shape[-1], dtype=f64, device=out.device)
    if norm_bias is not None:
        bias = bias + norm_bias @ w.to(f64).T
    if b is not None:
        bias = bias + b.to(f64)
    return torch.cat([out, bias.expand_as(out[:1])])


def _rotate(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Rotary at each position (right padding: position = index) on [component batch pos D]."""
    adapter = model.adapter
    if not adapter.rotary:
        return x
    b, t = x.shape[1], x.shape[2]
    pos = torch.arange(t, device=x.device)[None].expand(b, t)
    probe = torch.zeros(1, dtype=model.dtype, device=x.device)
    cos, sin = adapter.rotary_cos_sin(model.hf, probe, pos)  # [B T rd]
    return adapter.apply_rotary(x, cos[None].to(x.dtype), sin[None].to(x.dtype))


def qk_parts(model: Any, dec: Decomposition, head: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Each component's query and key share after rotary: q, k [component batch pos d_head],
    and the scale, so that ``scale * q.sum(0)[b, i] . k.sum(0)[b, j]`` is the score."""
    normed, norm_bias = normalised_parts(model, dec)
    w_q, w_k, b_q, b_k, scale = head_weights(model, dec.layer, head)
    q = _rotate(model, _project(normed, norm_bias, w_q, b_q))
    k = _rotate(model, _project(normed, norm_bias, w_k, b_k))
    return q, k, scale


def pair_scores(q: torch.Tensor, k: torch.Tensor, scale: float, row: int, query: int) -> torch.Tensor:
    """[query_component key_component key] contributions to the score from query position
    ``query`` of batch row ``row`` to every key ``0..query``."""
    return scale * torch.einsum("cd,ekd->cek", q[:, row, query], k[:, row, : query + 1])
