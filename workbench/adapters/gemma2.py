"""Gemma-2: the Llama layout with four norms per layer, logit soft-capping and an
alternating sliding window.

* norms: RMSNorm scaling by ``1 + weight``; the attention output and the MLP output are each
  normalised again (``post_attention_layernorm``, ``post_feedforward_layernorm``) before
  they join the residual, and the MLP reads ``pre_feedforward_layernorm``;
* attention scores are soft-capped, ``c * tanh(scores / c)`` (``attn_logit_softcapping``),
  scaled by ``query_pre_attn_scalar ** -0.5``; the final logits are soft-capped too;
* layers of type ``sliding_attention`` (every other one) see only the last
  ``sliding_window`` keys.

A head's write into the residual is not additive here (the post-attention norm divides
the sum of the heads by its RMS), so the edge graph of ``workbench.patching.graph`` does
not decompose a Gemma-2 layer; and the workbench attention (``workbench.hooks``) does not
soft-cap yet. Until both are in, ``adapter_for`` refuses a Gemma-2 model with one line;
the adapter itself runs Gemma-2 layers exactly (``run_layer``), which the tests check.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .base import apply_rotary, causal_mask, module_attr, tensor_attr
from .llama import ADAPTER as LLAMA, LlamaAdapter

NOT_YET = ("Gemma-2 models cannot run through the workbench's hook points yet: its attention soft-capping is "
           "not in the workbench attention (workbench/hooks.py) and its post-attention norm makes head writes "
           "non-additive for the edge graph; the Gemma-2 adapter runs single layers only")


class Gemma2Adapter(LlamaAdapter):
    def for_config(self, config: Any) -> "Gemma2Adapter":
        raise InputError(NOT_YET)

    def norm_input_grad(self, norm: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """RMSNorm's closed-form input gradient with Gemma's ``1 + weight`` scale."""
        m = x.shape[-1]
        u = g * (1.0 + tensor_attr(norm, "weight"))
        r = (x.pow(2).mean(-1, keepdim=True) + self.norm_eps(norm)).rsqrt()
        return r * u - x * r.pow(3) * (x * u).sum(-1, keepdim=True) / m

    @staticmethod
    def sliding_window(attn: nn.Module) -> int | None:
        """The keys a query of this layer sees (None: all earlier keys)."""
        return getattr(attn, "sliding_window", None)

    def attention_out(self, layer: nn.Module, x: torch.Tensor, mask_add: torch.Tensor | None, shape: Any,
                      rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the layer's attention write into the residual, after its post-attention norm [B T M],
        head outputs z [B T H D]): soft-capped scores, the sliding window where the layer has one."""
        attn = self.attn(layer)
        q, k, v = (t.transpose(1, 2) for t in self.qkv(attn, self.attn_norm(layer)(x), shape))
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(2, 3)) * self.scaling(attn, shape)
        cap = getattr(attn, "attn_logit_softcapping", None)
        if cap:
            scores = torch.tanh(scores / cap) * cap
        t = x.shape[1]
        mask = causal_mask(t, scores.dtype, x.device) if mask_add is None else mask_add
        window = self.sliding_window(attn)
        if window is not None:
            pos = torch.arange(t, device=x.device)
            far = pos[None, :] <= pos[:, None] - window  # key more than window-1 places back
            mask = mask.masked_fill(far, torch.finfo(scores.dtype).min)
        pattern = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
        z = (pattern @ v).transpose(1, 2)  # [B T H D]
        w_o, b_o = self.out_weights(attn, shape)
        out = z.reshape(*z.shape[:2], -1) @ w_o.reshape(-1, w_o.shape[-1])
        out = out + b_o if b_o is not None else out
        return module_attr(layer, "post_attention_layernorm")(out), z

    def finish_layer(self, layer: nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The residual after the MLP: it reads ``pre_feedforward_layernorm`` of the stream and
        writes through ``post_feedforward_layernorm``."""
        mid = x + attn_out
        mlp = self.mlp(layer)(self.norm_to(self.mlp_norm(layer), mid, attn_out.dtype))
        return mid + module_attr(layer, "post_feedforward_layernorm")(mlp)

    def final_logits(self, hf: nn.Module, resid: torch.Tensor) -> torch.Tensor:
        """Logits from the last residual: final norm, unembedding, soft-capping."""
        logits = self.unembed(hf)(self.final_norm(hf)(resid))
        cap = getattr(hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def tiny(self, vocab_size: int, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int,
             bos_token_id: int | None = None, eos_token_id: int | None = None) -> nn.Module:
        """A random Gemma-2 with a short window (3 keys) and a low attention cap (2.0), so the
        sliding window and the soft-capping both change the answer."""
        from transformers import Gemma2Config, Gemma2ForCausalLM

        cfg = Gemma2Config(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_model * 2, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=d_model // n_heads,
            query_pre_attn_scalar=d_model // n_heads, max_position_embeddings=512, sliding_window=3,
            attn_logit_softcapping=2.0, final_logit_softcapping=5.0, tie_word_embeddings=True,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=0,
        )
        return Gemma2ForCausalLM(cfg)


ADAPTER = Gemma2Adapter(**{**LLAMA.__dict__, "name": "gemma2", "model_types": ("gemma2",),
                           "mlp_norm_path": "pre_feedforward_layernorm", "tl_names": (),
                           "description": "Gemma-2 (four norms, soft-capping, sliding window; single layers only)"})
