"""GPT-NeoX (Pythia): LayerNorm, partial rotary (the first quarter of each head's dims in
Pythia), one fused ``query_key_value`` projection laid out per head (q | k | v of head 0,
then of head 1 ...), and the parallel residual: attention and MLP both read the layer's
input and their outputs are added to it together (``use_parallel_residual``)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .base import Adapter, QKVWeights, module_attr, optional_tensor_attr, tensor_attr


class NeoXAdapter(Adapter):
    def for_config(self, config: Any) -> Adapter:
        parallel = bool(getattr(config, "use_parallel_residual", True))
        if parallel == self.parallel:
            return self
        names = tuple(p for p in ADAPTER.tl_names if p[0] != "hook_resid_mid") if not parallel else ADAPTER.tl_names
        return replace(self, parallel=parallel, tl_names=names)

    def qkv(self, attn: nn.Module, x: torch.Tensor, shape: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        qkv = module_attr(attn, "query_key_value")(x).view(*lead, shape.n_heads, 3 * shape.d_head)
        q, k, v = qkv.chunk(3, dim=-1)
        return q, k, v

    def qkv_weights(self, attn: nn.Module, shape: Any) -> QKVWeights:
        s = shape
        lin = module_attr(attn, "query_key_value")  # nn.Linear: weight [H*3*D, M]
        w = tensor_attr(lin, "weight").view(s.n_heads, 3, s.d_head, s.d_model)
        bias = optional_tensor_attr(lin, "bias")
        b = None if bias is None else bias.view(s.n_heads, 3, s.d_head)
        return QKVWeights(w[:, 0], w[:, 1], w[:, 2], *((None,) * 3 if b is None else (b[:, 0], b[:, 1], b[:, 2])))

    def out_weights(self, attn: nn.Module, shape: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        lin = module_attr(attn, "dense")  # nn.Linear: weight [M, H*D]
        return tensor_attr(lin, "weight").T.view(shape.n_heads, shape.d_head, -1), optional_tensor_attr(lin, "bias")

    def tiny(self, vocab_size: int, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int,
             bos_token_id: int | None = None, eos_token_id: int | None = None) -> nn.Module:
        """Pythia's shape family (pythia-70m: 6 layers, 8 heads, width 512, MLP 4x, a quarter of
        each head rotary, parallel residual, untied unembedding) at the given sizes."""
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        cfg = GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
            intermediate_size=4 * d_model, max_position_embeddings=512, use_parallel_residual=True,
            tie_word_embeddings=False, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        )
        return GPTNeoXForCausalLM(cfg)


ADAPTER = NeoXAdapter(
    name="neox",
    model_types=("gpt_neox",),
    base_path="gpt_neox",
    embed_path="embed_in",
    layers_path="layers",
    final_norm_path="final_layer_norm",
    attn_path="attention",
    attn_norm_path="input_layernorm",
    mlp_norm_path="post_attention_layernorm",
    mlp_path="mlp",
    out_proj_path="dense",
    centred_norm=True,
    rotary_path="rotary_emb",
    parallel=True,
    # TransformerLens's NeoX bridge fires no post-rotary q/k hooks (its hook_q/hook_k are before
    # rotary), and has no hook_resid_mid on a parallel block: the MLP's input stream is ln2's input
    tl_names=(("attn.hook_q", None), ("attn.hook_k", None), ("hook_resid_mid", "ln2.hook_in")),
    description="GPT-NeoX / Pythia (LayerNorm, partial rotary, fused per-head q/k/v, parallel residual)",
)
