"""Per-head attention rebuilt from the model's own weights, for the edge graph
(``workbench.patching.graph``): each head reads its own copy of the residual, so its
query, key and value are recomputed from that per-head input with the norm, projections
and rotary of the model's architecture adapter (``workbench.adapters``).

A head's write into the residual is ``z_h @ W_O[h]`` where the heads' outputs simply add. Where
a norm follows the attention (Gemma-2's ``post_attention_layernorm``, RMSNorm scaling by
``1 + w``), RMSNorm(sum_h r_h) = sum_h (1 + w) * r_h / rms(sum_h r_h) splits it exactly with
the scale taken from the layer's whole output in the same forward: head h writes
``(z_h / rms) @ (W_O[h] * (1 + w))`` (``head_writes`` and ``write_weights``). The edge graph
works with these writes: the sum over a layer's heads is the layer's real write, and a
forward in which some heads change rescales every head of the layer by its new total."""
from __future__ import annotations

from typing import Any

import torch


def attn_modules(model: Any, layer: int) -> tuple[Any, Any, Any]:
    """(decoder layer, attention module, norm before attention) of ``layer``."""
    adapter = model.adapter
    block = adapter.layers(model.hf)[layer]
    return block, adapter.attn(block), adapter.attn_norm(block)


def out_weights(model: Any, layer: int) -> torch.Tensor:
    """W_O of each head of ``layer``: [head d_head d_model] (z_h @ W_O[h] is the head's output)."""
    _, attn, _ = attn_modules(model, layer)
    return model.adapter.out_weights(attn, model.shape)[0]


def attn_scale(model: Any, layer: int) -> float:
    _, attn, _ = attn_modules(model, layer)
    return model.adapter.scaling(attn, model.shape)


def attn_softcap(model: Any, layer: int) -> float | None:
    """The cap c of the layer's soft-capped scores, c * tanh(s / c) (None: not capped)."""
    _, attn, _ = attn_modules(model, layer)
    return model.adapter.attn_softcap(attn)


def write_weights(model: Any, layer: int) -> torch.Tensor:
    """[head d_head d_model]: head h of ``layer`` writes ``head_writes(z)_h @ W[h]`` into the
    residual (W_O itself, or W_O times Gemma-2's post-attention norm weight ``1 + w``)."""
    block, _, _ = attn_modules(model, layer)
    return model.adapter.write_weights(block, model.shape)


def head_writes(model: Any, layer: int, z: torch.Tensor) -> torch.Tensor:
    """The head outputs z [..., head d_head] (``hook_z``) as the residual receives them: z itself,
    or z / rms(the layer's whole attention output in this forward) under a post-attention norm."""
    block, _, _ = attn_modules(model, layer)
    scale = model.adapter.head_write_scale(block, z, model.shape)
    return z if scale is None else z * scale[..., None]


class QKV:
    """Rebuilds per-query-head q, k, v [batch pos head d_head] from per-head residual inputs
    [batch pos head d_model] with the model's own norm and projections (and rotary, whose
    cos/sin it keeps from the model's forward pass)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.adapter = model.adapter
        self.rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handle: Any = None
        rotary_emb = self.adapter.rotary_emb(model.hf)
        if rotary_emb is not None:
            self._handle = rotary_emb.register_forward_hook(self._keep_rotary)

    def _keep_rotary(self, module: Any, inputs: Any, output: Any) -> None:
        self.rotary = (output[0].detach(), output[1].detach())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __call__(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.model.shape
        _, attn, norm = attn_modules(self.model, layer)
        n = norm(x)
        group = torch.arange(s.n_heads, device=x.device) // (s.n_heads // s.n_kv_heads)
        w = self.adapter.qkv_weights(attn, s)
        out = []
        for weight, bias, heads in ((w.w_q, w.b_q, None), (w.w_k, w.b_k, group), (w.w_v, w.b_v, group)):
            weight = weight if heads is None else weight[heads]
            t = torch.einsum("bphm,hdm->bphd", n, weight)
            if bias is not None:
                t = t + (bias if heads is None else bias[heads])
            out.append(t)
        q, k, v = out
        if self.rotary is not None:
            cos, sin = (r[:, :, None, :] for r in self.rotary)
            q, k = self.adapter.apply_rotary(q, cos, sin), self.adapter.apply_rotary(k, cos, sin)
        return q, k, v


def per_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: torch.Tensor, scale: float,
                       scores_in: torch.Tensor, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [b head q k] and z [b pos head d] from per-query-head q, k, v [b pos head d];
    ``masked`` [b head q k] marks the positions the model masks (their score kept as given);
    ``softcap`` c caps the scores, c * tanh(s / c), as the layer does (``attn_softcap``)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = torch.where(masked, scores_in, scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
    return scores, z


def masked_positions(scores: torch.Tensor) -> torch.Tensor:
    """[b head q k] True where the model masks a key (its score is the dtype's minimum)."""
    return scores < torch.finfo(scores.dtype).min / 2
