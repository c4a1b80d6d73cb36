"""The workbench hook points: identity modules installed inside a Hugging Face model
at every place the canonical (TransformerLens) names refer to, so the plain-PyTorch
and nnsight backends read and write activations at exactly the same places.

Canonical names (``l`` a zero-based layer)::

    hook_embed                      token embeddings              [batch pos d_model]
    blocks.{l}.hook_resid_pre       residual stream into layer l  [batch pos d_model]
    blocks.{l}.attn.hook_q          queries (after rotary)        [batch pos head d_head]
    blocks.{l}.attn.hook_k          keys (after rotary)           [batch pos kv_head d_head]
    blocks.{l}.attn.hook_v          values                        [batch pos kv_head d_head]
    blocks.{l}.attn.hook_attn_scores  pre-softmax scores, masked  [batch head query key]
    blocks.{l}.attn.hook_pattern    attention probabilities       [batch head query key]
    blocks.{l}.attn.hook_z          per-head output before W_O    [batch pos head d_head]
    blocks.{l}.hook_attn_out        attention output after W_O    [batch pos d_model]
    blocks.{l}.hook_resid_mid       residual after attention      [batch pos d_model]
    blocks.{l}.hook_mlp_out         MLP output                    [batch pos d_model]
    blocks.{l}.hook_resid_post      residual out of layer l       [batch pos d_model]
    ln_final.hook_normalized        final norm output             [batch pos d_model]

Keys and values stay at ``n_kv_heads`` (grouped-query attention); every per-head
quantity downstream of them (scores, pattern, z) is per query head.
"""
from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from .adapters import adapter_for
from .errors import HookNameError

ATTN_IMPL = "workbench"


class HookPoint(nn.Module):
    """An identity module: a named place where forward hooks (or nnsight) can read and
    replace an activation."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return self.name


class AttnHooks(nn.Module):
    """The per-layer attention hook points, attached to the HF attention module as ``wb_hooks``."""

    def __init__(self, layer: int) -> None:
        super().__init__()
        for short in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, short, HookPoint(f"blocks.{layer}.attn.{short}"))


class BlockHooks(nn.Module):
    """The per-layer residual hook points, attached to the HF decoder layer as ``wb_hooks``."""

    def __init__(self, layer: int) -> None:
        super().__init__()
        for short in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(self, short, HookPoint(f"blocks.{layer}.{short}"))


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[batch kv_head pos d] -> [batch kv_head*n_rep pos d]."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def workbench_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with hook points at q, k, v, scores, pattern and z. Numerically the
    same as transformers' eager attention."""
    hooks: AttnHooks = module.wb_hooks
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    q = hooks.hook_q(query.transpose(1, 2)).transpose(1, 2)
    k = hooks.hook_k(key.transpose(1, 2)).transpose(1, 2)
    v = hooks.hook_v(value.transpose(1, 2)).transpose(1, 2)
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : k.shape[-2]]
    scores = hooks.hook_attn_scores(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    pattern = hooks.hook_pattern(pattern)
    z = torch.matmul(pattern, v).transpose(1, 2).contiguous()
    z = hooks.hook_z(z)
    return z, pattern


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPL, workbench_attention)
    AttentionMaskInterface.register(ATTN_IMPL, eager_mask)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def install_hook_points(hf_model: nn.Module) -> tuple[str, dict[str, HookPoint]]:
    """Install the hook points into ``hf_model`` (idempotent) and switch it to the
    workbench attention. Returns the architecture family (its adapter's name) and
    canonical name -> HookPoint. Where the parts are comes from ``workbench.adapters``;
    with a parallel residual (GPT-NeoX) ``hook_resid_mid`` is the MLP's input stream,
    i.e. the layer's input."""
    adapter = adapter_for(hf_model)
    _register_attention()
    embed, layers, final_norm = adapter.embed(hf_model), adapter.layers(hf_model), adapter.final_norm(hf_model)
    hf_model.set_attn_implementation(ATTN_IMPL) if hasattr(hf_model, "set_attn_implementation") else None
    hf_model.config._attn_implementation = ATTN_IMPL
    points: dict[str, HookPoint] = {}
    if not hasattr(hf_model, "wb_embed_hook"):
        hf_model.wb_embed_hook = HookPoint("hook_embed")
        hf_model.wb_final_hook = HookPoint("ln_final.hook_normalized")
        embed.register_forward_hook(lambda m, i, o: hf_model.wb_embed_hook(o))
        final_norm.register_forward_hook(lambda m, i, o: hf_model.wb_final_hook(o))
        for idx, layer in enumerate(layers):
            attn, norm2, mlp = adapter.attn(layer), adapter.mlp_norm(layer), adapter.mlp(layer)
            attn.wb_hooks = AttnHooks(idx)
            layer.wb_hooks = BlockHooks(idx)
            bh = layer.wb_hooks
            layer.register_forward_pre_hook(_resid_pre_hook(bh), with_kwargs=True)
            layer.register_forward_hook(lambda m, i, o, bh=bh: _replace_first(o, bh.hook_resid_post(_first(o))))
            attn.register_forward_hook(lambda m, i, o, bh=bh: _replace_first(o, bh.hook_attn_out(_first(o))))
            norm2.register_forward_pre_hook(lambda m, args, bh=bh: (bh.hook_resid_mid(args[0]), *args[1:]))
            mlp.register_forward_hook(lambda m, i, o, bh=bh: bh.hook_mlp_out(_first(o)))
    points["hook_embed"] = hf_model.wb_embed_hook
    for idx, layer in enumerate(layers):
        attn = adapter.attn(layer)
        for short in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            points[f"blocks.{idx}.{short}"] = getattr(layer.wb_hooks, short)
        for short in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            points[f"blocks.{idx}.attn.{short}"] = getattr(attn.wb_hooks, short)
    points["ln_final.hook_normalized"] = hf_model.wb_final_hook
    return adapter.name, points


def unhooked_copy(hf_model: nn.Module) -> nn.Module:
    """A deep copy of a hooked model without the module hooks ``install_hook_points`` added
    (they would call the original model's hook points). The attention hook points live in
    the attention function and keep working on the copy's own modules. For analyses that
    rewrite a model's modules (LRP rules) without touching the shared one."""
    import copy

    clone = copy.deepcopy(hf_model)
    for module in clone.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return clone


def _resid_pre_hook(bh: BlockHooks):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (bh.hook_resid_pre(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = bh.hook_resid_pre(kwargs["hidden_states"])
        return args, kwargs

    return hook


def check_names(valid: list[str] | dict, names: list[str]) -> None:
    """Raise a one-line ``HookNameError`` for the first unknown name, listing the nearest valid ones."""
    for name in names:
        if name not in valid:
            near = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
            hint = f"nearest valid names: {', '.join(near)}" if near else "see model.hook_names for all valid names"
            raise HookNameError(f"unknown hook name '{name}'; {hint}")


def execution_order(model: Any) -> list[str]:
    """Canonical names in the order a forward pass reaches them (nnsight needs
    interventions in that order). Measured once per model on a two-token input."""
    order = getattr(model.hf, "_wb_exec_order", None)
    if order is None:
        seen: list[str] = []
        handles = [hp.register_forward_hook(lambda m, i, o, n=n: seen.append(n)) for n, hp in model.hook_points.items()]
        try:
            with torch.no_grad():
                ids = torch.zeros(1, 2, dtype=torch.long, device=next(model.hf.parameters()).device)
                model.hf(input_ids=ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        order = list(dict.fromkeys(seen)) + [n for n in model.hook_points if n not in seen]
        model.hf._wb_exec_order = order
    return order
