"""Llama-style decoders (Llama, SmolLM2, Mistral; Qwen2 in ``qwen2`` adds q/k/v biases): RMSNorm, rotary position
embeddings, separate q/k/v projections with grouped-query attention (``n_kv_heads`` <=
``n_heads``), a gated MLP, sequential residual."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, QKVWeights, module_attr, optional_tensor_attr, tensor_attr


def _bias(lin: nn.Module, heads: int, d: int) -> torch.Tensor | None:
    b = getattr(lin, "bias", None)
    return None if b is None else b.view(heads, d)


class LlamaAdapter(Adapter):
    def qkv(self, attn: nn.Module, x: torch.Tensor, shape: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = shape.d_head
        lead = x.shape[:-1]
        q_proj, k_proj, v_proj = (module_attr(attn, name) for name in ("q_proj", "k_proj", "v_proj"))
        return q_proj(x).view(*lead, -1, d), k_proj(x).view(*lead, -1, d), v_proj(x).view(*lead, -1, d)

    def qkv_weights(self, attn: nn.Module, shape: Any) -> QKVWeights:
        s = shape
        q_proj, k_proj, v_proj = (module_attr(attn, name) for name in ("q_proj", "k_proj", "v_proj"))
        return QKVWeights(
            w_q=tensor_attr(q_proj, "weight").view(s.n_heads, s.d_head, s.d_model),
            w_k=tensor_attr(k_proj, "weight").view(s.n_kv_heads, s.d_head, s.d_model),
            w_v=tensor_attr(v_proj, "weight").view(s.n_kv_heads, s.d_head, s.d_model),
            b_q=_bias(q_proj, s.n_heads, s.d_head),
            b_k=_bias(k_proj, s.n_kv_heads, s.d_head),
            b_v=_bias(v_proj, s.n_kv_heads, s.d_head),
        )

    def out_weights(self, attn: nn.Module, shape: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        lin = module_attr(attn, "o_proj")  # nn.Linear: weight [M, H*D]
        return tensor_attr(lin, "weight").T.view(shape.n_heads, shape.d_head, -1), optional_tensor_attr(lin, "bias")

    def tiny(self, vocab_size: int, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int,
             bos_token_id: int | None = None, eos_token_id: int | None = None) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_model * 2, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=512,
            tie_word_embeddings=True, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        )
        return LlamaForCausalLM(cfg)


ADAPTER = LlamaAdapter(
    name="llama",
    model_types=("llama", "mistral"),
    base_path="model",
    embed_path="embed_tokens",
    layers_path="layers",
    final_norm_path="norm",
    attn_path="self_attn",
    attn_norm_path="input_layernorm",
    mlp_norm_path="post_attention_layernorm",
    mlp_path="mlp",
    out_proj_path="o_proj",
    centred_norm=False,
    rotary_path="rotary_emb",
    tl_names=(("attn.hook_q", "attn.hook_rot_q"), ("attn.hook_k", "attn.hook_rot_k")),
    description="Llama family (RMSNorm, rotary, grouped-query attention)",
)
