"""The ``Adapter`` type: one decoder-only architecture family described as data.

Where the parts are (attribute paths, as in lxt's architecture descriptions), what kind
of norm it uses (LayerNorm centres, RMSNorm does not), whether it has rotary position
embeddings, whether attention and MLP read the same residual (GPT-NeoX's parallel
residual), and the few things that differ in code between families: how the fused or
separate q/k/v projections lay out their weights, and how to build a tiny random model.

Everything above the adapters (hook points, the patching engines, the backends, the
graph of heads and MLPs) asks the adapter instead of testing the architecture's name.

Shapes: ``H`` query heads, ``K`` key-value heads, ``D`` head size, ``M`` model width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


@dataclass(frozen=True)
class QKVWeights:
    """Per-head projection weights in ``nn.Linear`` convention (``x @ w[h].T + b[h]``)."""

    w_q: torch.Tensor  # [H D M]
    w_k: torch.Tensor  # [K D M]
    w_v: torch.Tensor  # [K D M]
    b_q: torch.Tensor | None  # [H D]
    b_k: torch.Tensor | None  # [K D]
    b_v: torch.Tensor | None  # [K D]


def module_attr(owner: nn.Module, name: str) -> nn.Module:
    """``owner.<name>``, a submodule (``attn.q_proj``): torch types a module's attributes as
    ``Tensor | Module``, so the family code reads its parts through this check."""
    value = getattr(owner, name)
    if not isinstance(value, nn.Module):
        raise TypeError(f"{type(owner).__name__}.{name} is a {type(value).__name__}, not a module")
    return value


def tensor_attr(owner: nn.Module, name: str) -> torch.Tensor:
    """``owner.<name>``, a tensor (a parameter such as ``weight``), checked like ``module_attr``."""
    value = getattr(owner, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(owner).__name__}.{name} is a {type(value).__name__}, not a tensor")
    return value


def optional_tensor_attr(owner: nn.Module, name: str) -> torch.Tensor | None:
    """``owner.<name>``, a tensor or None (a ``bias`` a layer may lack)."""
    value = getattr(owner, name)
    if value is not None and not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(owner).__name__}.{name} is a {type(value).__name__}, not a tensor")
    return value


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` [..., D] on its first ``cos.shape[-1]`` dims (all of them for
    Llama, a quarter for Pythia); ``cos`` and ``sin`` broadcast to ``x[..., :rd]``."""
    rd = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if rd == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot = x[..., :rd]
    return torch.cat([rot * cos + rotate_half(rot) * sin, x[..., rd:]], dim=-1)


def rotary_grad(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The gradient at the input of ``apply_rotary`` from the gradient ``g`` at its output
    (the transpose of the rotation)."""
    rd = cos.shape[-1]
    cos, sin = cos.to(g.dtype), sin.to(g.dtype)
    if rd == g.shape[-1]:
        return g * cos - rotate_half(g * sin)
    rot = g[..., :rd]
    return torch.cat([rot * cos - rotate_half(rot * sin), g[..., rd:]], dim=-1)


def causal_mask(t: int, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
    """[1 1 t t] additive causal mask (0 where query i may see key j, the dtype's minimum elsewhere),
    on ``device`` (None: torch's default device)."""
    allowed = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=device), torch.finfo(dtype).min)[None, None]


@dataclass(frozen=True)
class Adapter:
    """One architecture family. Paths are attribute paths: ``base_path`` on the causal LM,
    ``embed_path``/``layers_path``/``final_norm_path``/``rotary_path`` on the base model,
    ``attn_path``/``attn_norm_path``/``mlp_norm_path``/``mlp_path`` on a decoder layer,
    ``out_proj_path`` on the attention module."""

    name: str  # the family, also ``Model.arch``: "llama" | "gpt2" | "neox"
    model_types: tuple[str, ...]  # Hugging Face ``config.model_type`` values it covers
    base_path: str
    embed_path: str
    layers_path: str
    final_norm_path: str
    attn_path: str
    attn_norm_path: str
    mlp_norm_path: str
    mlp_path: str
    out_proj_path: str
    centred_norm: bool  # LayerNorm (subtracts the mean) rather than RMSNorm
    rotary_path: str | None = None  # the rotary-embedding module on the base model (None: learned positions)
    parallel: bool = False  # attention and MLP both read the layer's input (GPT-NeoX / Pythia)
    tl_names: tuple[tuple[str, str | None], ...] = ()  # per-layer canonical -> TransformerLens bridge name (None: none)
    description: str = ""
    attn_out_path: str | None = None  # module on a layer whose output joins the residual (None: the attention's)
    mlp_out_path: str | None = None  # likewise for the MLP (None: the MLP's own output)

    # ------------------------------------------------------------------ where the parts are
    @property
    def rotary(self) -> bool:
        return self.rotary_path is not None

    def matches(self, hf: nn.Module) -> bool:
        """Whether ``hf`` has this family's layout (base model, layers, attention, output projection)."""
        try:
            layers = self.layers(hf)
            return bool(layers) and _get(self.attn(layers[0]), self.out_proj_path) is not None
        except (AttributeError, IndexError, TypeError, InputError):
            return False

    def base(self, hf: nn.Module) -> nn.Module:
        """The decoder stack (``hf.model``, ``hf.transformer``, ``hf.gpt_neox``)."""
        base = getattr(hf, self.base_path, None)
        if base is None:
            raise InputError(f"{type(hf).__name__} has no '{self.base_path}' decoder stack; a {self.name} causal LM "
                             "(with its language-model head) is needed")
        return base

    def embed(self, hf: nn.Module) -> nn.Module:
        return _get(self.base(hf), self.embed_path)

    def layers(self, hf: nn.Module) -> list[nn.Module]:
        return list(_get(self.base(hf), self.layers_path))

    def final_norm(self, hf: nn.Module) -> nn.Module:
        return _get(self.base(hf), self.final_norm_path)

    def unembed(self, hf: nn.Module) -> nn.Module:
        get_output_embeddings = getattr(hf, "get_output_embeddings", None)
        out = get_output_embeddings() if get_output_embeddings is not None else None
        return out if out is not None else module_attr(hf, "lm_head")

    def rotary_emb(self, hf: nn.Module) -> nn.Module | None:
        return _get(self.base(hf), self.rotary_path) if self.rotary_path else None

    def attn(self, layer: nn.Module) -> nn.Module:
        return _get(layer, self.attn_path)

    def attn_norm(self, layer: nn.Module) -> nn.Module:
        return _get(layer, self.attn_norm_path)

    def mlp_norm(self, layer: nn.Module) -> nn.Module:
        return _get(layer, self.mlp_norm_path)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return _get(layer, self.mlp_path)

    def out_proj(self, attn: nn.Module) -> nn.Module:
        return _get(attn, self.out_proj_path)

    def attn_out_module(self, layer: nn.Module) -> nn.Module:
        """The module whose output is the attention's write into the residual (``hook_attn_out``):
        the attention itself, or the norm after it (Gemma-2's ``post_attention_layernorm``)."""
        return _get(layer, self.attn_out_path) if self.attn_out_path else self.attn(layer)

    def mlp_out_module(self, layer: nn.Module) -> nn.Module:
        """The module whose output is the MLP's write into the residual (``hook_mlp_out``)."""
        return _get(layer, self.mlp_out_path) if self.mlp_out_path else self.mlp(layer)

    # ------------------------------------------------------------------ family code (subclasses)
    def for_config(self, config: Any) -> "Adapter":
        """This adapter, specialised to one config where a family has variants (NeoX's
        sequential residual)."""
        return self

    def qkv(self, attn: nn.Module, x: torch.Tensor, shape: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised input x [..., M] -> q [..., H, D], k and v [..., K, D] (before rotary),
        with the module's own (fused) projections."""
        raise NotImplementedError

    def qkv_weights(self, attn: nn.Module, shape: Any) -> QKVWeights:
        """The projection weights per head (views of the module's parameters)."""
        raise NotImplementedError

    def out_weights(self, attn: nn.Module, shape: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W_O as a view [H D M] (``z_h @ W_O[h]`` is head h's output) and b_O [M] (or None)."""
        raise NotImplementedError

    def tiny(self, vocab_size: int, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int,
             bos_token_id: int | None = None, eos_token_id: int | None = None) -> nn.Module:
        """A random model of this family with the given sizes (for tests)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared arithmetic
    def scaling(self, attn: nn.Module, shape: Any) -> float:
        """The factor on q.k (1/sqrt(D) unless the module says otherwise)."""
        s = getattr(attn, "scaling", None)
        return float(s) if s is not None else float(shape.d_head) ** -0.5

    def attn_softcap(self, attn: nn.Module) -> float | None:
        """The cap c of soft-capped attention scores, c * tanh(s / c) (None: not capped)."""
        return None

    def sliding_window(self, attn: nn.Module) -> int | None:
        """The keys a query of this layer sees (None: all earlier keys)."""
        return None

    def cap_logits(self, hf: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        """The final logits from the unembedding's output (soft-capped where the family does)."""
        return logits

    def attn_write(self, layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
        """What joins the residual from the attention's output after W_O (the same, unless a
        norm follows the attention: Gemma-2)."""
        return out

    def head_write_scale(self, layer: nn.Module, z: torch.Tensor, shape: Any) -> torch.Tensor | None:
        """Per position [..., 1] the factor on every head's output z [..., H, D] of this layer in its
        residual write (``(z_h * scale) @ write_weights[h]``): None where the writes simply add."""
        return None

    def write_weights(self, layer: nn.Module, shape: Any) -> torch.Tensor:
        """[H D M]: head h writes ``(z_h * head_write_scale) @ W[h]`` into the residual (W_O here)."""
        return self.out_weights(self.attn(layer), shape)[0]

    @staticmethod
    def norm_eps(norm: nn.Module) -> float:
        eps = getattr(norm, "variance_epsilon", None)
        return float(eps if eps is not None else getattr(norm, "eps", 1e-5))

    def norm_input_grad(self, norm: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Closed-form gradient at the norm's input ``x`` [..., M] from the gradient ``g`` at its
        output (``x`` broadcasts against ``g``): RMSNorm, or LayerNorm when ``centred_norm``."""
        m = x.shape[-1]
        weight = getattr(norm, "weight", None)
        u = g * weight if weight is not None else g
        eps = self.norm_eps(norm)
        if self.centred_norm:
            xc = x - x.mean(-1, keepdim=True)
            inv = (xc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
            xhat = xc * inv
            return inv * (u - u.mean(-1, keepdim=True) - xhat * (u * xhat).mean(-1, keepdim=True))
        r = (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        return r * u - x * r.pow(3) * (x * u).sum(-1, keepdim=True) / m

    def rotary_cos_sin(self, hf: nn.Module, x: torch.Tensor,
                       positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) [batch pos rotary_dims] for ``positions`` [batch pos], or None without rotary."""
        module = self.rotary_emb(hf)
        if module is None:
            return None
        return module(x, positions)

    apply_rotary = staticmethod(apply_rotary)
    rotary_grad = staticmethod(rotary_grad)

    def tl_name(self, name: str) -> str | None:
        """The TransformerLens bridge's hook name for a canonical name (None where the bridge
        has no hook at that place)."""
        if name.startswith("blocks.") and self.tl_names:
            _, layer, short = name.split(".", 2)
            renames = dict(self.tl_names)
            if short in renames:
                new = renames[short]
                return None if new is None else f"blocks.{layer}.{new}"
        return name

    # ------------------------------------------------------------------ one decoder layer
    def attention_out(self, layer: nn.Module, x: torch.Tensor, mask_add: torch.Tensor | None, shape: Any,
                      rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of one layer on the residual ``x`` [B T M] with an additive mask [B 1 T T]
        (or None: causal): (attention output after W_O [B T M], head outputs z [B T H D])."""
        attn = self.attn(layer)
        q, k, v = (t.transpose(1, 2) for t in self.qkv(attn, self.attn_norm(layer)(x), shape))  # [B heads T D]
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scale = self.scaling(attn, shape)
        if mask_add is None:  # causal: the fused kernel's fastest case; nothing reads the pattern here
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_add, scale=scale)
        z = z.transpose(1, 2)  # [B T H D]
        w_o, b_o = self.out_weights(attn, shape)
        out = z.reshape(*z.shape[:2], -1) @ w_o.reshape(-1, w_o.shape[-1])
        return (out + b_o if b_o is not None else out), z

    def finish_layer(self, layer: nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The layer's output residual from its input ``x`` and its attention output: the MLP
        reads ``x + attn_out`` (sequential) or ``x`` itself (parallel residual). A float32 ``x``
        with a low-precision ``attn_out`` keeps the residual stream in float32 (the sums) while
        the norm and MLP run in the model's dtype."""
        mid = x + attn_out
        mlp_in = x if self.parallel else mid
        return mid + self.mlp(layer)(self.norm_to(self.mlp_norm(layer), mlp_in, attn_out.dtype))

    def norm_to(self, norm: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``norm(x)`` as ``dtype``, for a residual stream kept in float32 around a 16-bit model.
        RMSNorm computes in float32 anyway, so it reads the float32 stream as it is (one cast,
        not three); LayerNorm wants its weight's dtype."""
        weight = getattr(norm, "weight", None)
        if self.centred_norm and weight is not None and x.dtype != weight.dtype:
            x = x.to(weight.dtype)
        return norm(x).to(dtype)

    def run_layer(self, layer: nn.Module, x: torch.Tensor, mask_add: torch.Tensor | None, shape: Any,
                  rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One decoder layer on the residual ``x`` [B T M], from the adapter's parts: the
        decomposition the patching engines use (equal to ``call_layer`` up to float rounding)."""
        attn_out, _ = self.attention_out(layer, x, mask_add, shape, rotary)
        return self.finish_layer(layer, x, attn_out)

    def call_layer(self, layer: nn.Module, x: torch.Tensor, mask_add: torch.Tensor | None,
                   rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The Hugging Face decoder layer itself on the residual ``x`` [B T M]."""
        if mask_add is None:
            mask_add = causal_mask(x.shape[1], x.dtype, x.device)
        kwargs: dict[str, Any] = {"attention_mask": mask_add}
        if rotary is not None:
            kwargs["position_embeddings"] = rotary
        out = layer(x, **kwargs)
        return out[0] if isinstance(out, tuple) else out
