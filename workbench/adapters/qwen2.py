"""Qwen2 / Qwen2.5: the Llama layout (RMSNorm, rotary, grouped-query attention, gated MLP)
with biases on the q, k and v projections (none on the output projection). The Llama
adapter's per-head weights already carry the biases; this module names the family and
builds its tiny random model from a ``Qwen2Config``."""
from __future__ import annotations

from torch import nn

from .llama import ADAPTER as LLAMA, LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    def tiny(self, vocab_size: int, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int,
             bos_token_id: int | None = None, eos_token_id: int | None = None) -> nn.Module:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_model * 2, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=512,
            tie_word_embeddings=True, bos_token_id=bos_token_id, eos_token_id=eos_token_id, use_sliding_window=False,
        )
        return Qwen2ForCausalLM(cfg)


ADAPTER = Qwen2Adapter(**{**LLAMA.__dict__, "name": "qwen2", "model_types": ("qwen2",),
                          "description": "Qwen2 / Qwen2.5 (Llama layout with q/k/v biases)"})
