"""Gemma-2: the Llama layout with four norms per layer, logit soft-capping and an
alternating sliding window.

* norms: RMSNorm scaling by ``1 + weight``; the attention output and the MLP output are each
  normalised again (``post_attention_layernorm``, ``post_feedforward_layernorm``) before
  they join the residual, and the MLP reads ``pre_feedforward_layernorm``;
* attention scores are soft-capped, ``c * tanh(scores / c)`` (``attn_logit_softcapping``),
  scaled by ``query_pre_attn_scalar ** -0.5``; the final logits are soft-capped too;
* layers of type ``sliding_attention`` (every other one) see only the last
  ``sliding_window`` keys.

Whole models run through the workbench: its attention (``workbench.hooks``) soft-caps the
scores (eagerly: PyTorch's fused attention cannot cap) and takes the window from the mask
transformers builds per layer; ``hook_attn_out`` and ``hook_mlp_out`` sit after the
post-attention and post-feedforward norms (``attn_out_path``, ``mlp_out_path``), as in
TransformerLens; the suffix engine caps, windows and post-normalises the same way. A head's
write is not additive (the post-attention norm divides the sum of the heads by its rms), so
the edge graph splits it exactly at the scale of the same forward (``head_write_scale``,
``write_weights``): head h writes (z_h / rms(layer's output)) @ W_O[h] * (1 + w). Exact edge
patching (``workbench.patching.edges``), path patching (``workbench.patching.path``, which also
caps the scores it rebuilds) and the IOI head scores' direct logit attribution use the same
split, each run at its own scale, and are exact (tests/test_gemma2_patching.py).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import apply_rotary, causal_mask, module_attr, tensor_attr
from .llama import ADAPTER as LLAMA, LlamaAdapter

class Gemma2Adapter(LlamaAdapter):
    def norm_input_grad(self, norm: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """RMSNorm's closed-form input gradient with Gemma's ``1 + weight`` scale."""
        m = x.shape[-1]
        u = g * (1.0 + tensor_attr(norm, "weight"))
        r = (x.pow(2).mean(-1, keepdim=True) + self.norm_eps(norm)).rsqrt()
        return r * u - x * r.pow(3) * (x * u).sum(-1, keepdim=True) / m

    def sliding_window(self, attn: nn.Module) -> int | None:
        """The keys a query of this layer sees (None: all earlier keys)."""
        return getattr(attn, "sliding_window", None)

    def attn_softcap(self, attn: nn.Module) -> float | None:
        cap = getattr(attn, "attn_logit_softcapping", None)
        return float(cap) if cap else None

    def cap_logits(self, hf: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def attn_write(self, layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
        return module_attr(layer, "post_attention_layernorm")(out)

    def head_write_scale(self, layer: nn.Module, z: torch.Tensor, shape: Any) -> torch.Tensor | None:
        """1 / rms of the layer's whole attention output in this forward (``post_attention_layernorm``
        divides the sum of the heads by it): [..., 1] for z [..., H, D]."""
        w_o, b_o = self.out_weights(self.attn(layer), shape)
        raw = z.reshape(*z.shape[:-2], -1) @ w_o.reshape(-1, w_o.shape[-1])
        raw = (raw + b_o if b_o is not None else raw).float()
        norm = module_attr(layer, "post_attention_layernorm")
        return (raw.pow(2).mean(-1, keepdim=True) + self.norm_eps(norm)).rsqrt().to(z.dtype)

    def write_weights(self, layer: nn.Module, shape: Any) -> torch.Tensor:
        """W_O [H D M] times the post-attention norm's ``1 + weight``."""
        w_o = self.out_weights(self.attn(layer), shape)[0]
        return w_o * (1.0 + tensor_attr(module_attr(layer, "post_attention_layernorm"), "weight")).to(w_o.dtype)

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
        cap = self.attn_softcap(attn)
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
        return self.attn_write(layer, out), z

    def finish_layer(self, layer: nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The residual after the MLP: it reads ``pre_feedforward_layernorm`` of the stream and
        writes through ``post_feedforward_layernorm``."""
        mid = x + attn_out
        mlp = self.mlp(layer)(self.norm_to(self.mlp_norm(layer), mid, attn_out.dtype))
        return mid + module_attr(layer, "post_feedforward_layernorm")(mlp)

    def final_logits(self, hf: nn.Module, resid: torch.Tensor) -> torch.Tensor:
        """Logits from the last residual: final norm, unembedding, soft-capping."""
        return self.cap_logits(hf, self.unembed(hf)(self.final_norm(hf)(resid)))

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
                           "mlp_norm_path": "pre_feedforward_layernorm",
                           "attn_out_path": "post_attention_layernorm", "mlp_out_path": "post_feedforward_layernorm",
                           "description": "Gemma-2 (four norms, soft-capping, sliding window)"})
