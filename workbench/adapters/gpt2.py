"""GPT-2: LayerNorm, learned absolute positions, one fused ``c_attn`` projection (a
``Conv1D``, weights stored [in, out]: columns q | k | v), sequential residual."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, QKVWeights, module_attr, optional_tensor_attr, tensor_attr


class GPT2Adapter(Adapter):
    def qkv(self, attn: nn.Module, x: torch.Tensor, shape: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        q, k, v = module_attr(attn, "c_attn")(x).split(shape.d_model, dim=-1)
        return q.view(*lead, -1, shape.d_head), k.view(*lead, -1, shape.d_head), v.view(*lead, -1, shape.d_head)

    def qkv_weights(self, attn: nn.Module, shape: Any) -> QKVWeights:
        s = shape
        c_attn = module_attr(attn, "c_attn")
        w, b = tensor_attr(c_attn, "weight"), optional_tensor_attr(c_attn, "bias")  # [M, 3M], [3M]
        ws = [w[:, i * s.d_model:(i + 1) * s.d_model].T.reshape(s.n_heads, s.d_head, s.d_model) for i in range(3)]
        bs = [None if b is None else b[i * s.d_model:(i + 1) * s.d_model].view(s.n_heads, s.d_head) for i in range(3)]
        return QKVWeights(ws[0], ws[1], ws[2], bs[0], bs[1], bs[2])

    def out_weights(self, attn: nn.Module, shape: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        conv = module_attr(attn, "c_proj")  # Conv1D: weight [H*D, M]
        return tensor_attr(conv, "weight").view(shape.n_heads, shape.d_head, -1), optional_tensor_attr(conv, "bias")

    def tiny(self, vocab_size: int, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int,
             bos_token_id: int | None = None, eos_token_id: int | None = None) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=vocab_size, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=512,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id)
        return GPT2LMHeadModel(cfg)


ADAPTER = GPT2Adapter(
    name="gpt2",
    model_types=("gpt2",),
    base_path="transformer",
    embed_path="wte",
    layers_path="h",
    final_norm_path="ln_f",
    attn_path="attn",
    attn_norm_path="ln_1",
    mlp_norm_path="ln_2",
    mlp_path="mlp",
    out_proj_path="c_proj",
    centred_norm=True,
    description="GPT-2 (LayerNorm, learned positions, fused Conv1D q/k/v)",
)
