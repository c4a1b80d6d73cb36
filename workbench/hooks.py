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
                                    (soft-capped first where the family caps them: Gemma-2)
    blocks.{l}.attn.hook_pattern    attention probabilities       [batch head query key]
    blocks.{l}.attn.hook_z          per-head output before W_O    [batch pos head d_head]
    blocks.{l}.hook_attn_out        attention output after W_O    [batch pos d_model]
    blocks.{l}.hook_resid_mid       residual after attention      [batch pos d_model]
    blocks.{l}.hook_mlp_out         MLP output                    [batch pos d_model]

``hook_attn_out`` and ``hook_mlp_out`` are what joins the residual: with Gemma-2's norms after
the attention and the MLP, their outputs (as in TransformerLens), so that resid_mid =
resid_pre + attn_out and resid_post = resid_mid + mlp_out hold for every family.
    blocks.{l}.hook_resid_post      residual out of layer l       [batch pos d_model]
    ln_final.hook_normalized        final norm output             [batch pos d_model]

Keys and values stay at ``n_kv_heads`` (grouped-query attention); every per-head
quantity downstream of them (scores, pattern, z) is per query head.

No hook, no cost: a layer builds its scores and pattern (eager attention) only while something
reads or writes ``hook_attn_scores`` or ``hook_pattern`` of that layer (a PyTorch hook, a global
module hook, an nnsight trace waiting there, or ``output_attentions``); otherwise it runs
PyTorch's fused scaled-dot-product attention, and the two hook points never fire. A layer
with soft-capped scores (Gemma-2's ``attn_logit_softcapping``) always runs the eager path: the
fused kernel cannot cap. The other hook points are identity modules, called whether or not
anything listens (microseconds).
"""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import adapter_for
from .errors import HookNameError, InputError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

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

    hook_q: HookPoint
    hook_k: HookPoint
    hook_v: HookPoint
    hook_attn_scores: HookPoint
    hook_pattern: HookPoint
    hook_z: HookPoint

    def __init__(self, layer: int) -> None:
        super().__init__()
        for short in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, short, HookPoint(f"blocks.{layer}.attn.{short}"))


class BlockHooks(nn.Module):
    """The per-layer residual hook points, attached to the HF decoder layer as ``wb_hooks``."""

    hook_resid_pre: HookPoint
    hook_attn_out: HookPoint
    hook_resid_mid: HookPoint
    hook_mlp_out: HookPoint
    hook_resid_post: HookPoint

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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention with hook points at q, k, v, scores, pattern and z. The scores and the
    pattern are materialised (eager, numerically transformers' eager attention) only when
    something reads or writes them (``reads_pattern``) or the scores are soft-capped
    (``softcap``, Gemma-2: PyTorch's fused scaled-dot-product attention cannot cap them);
    otherwise the fused attention runs and the pattern is never built (no hook, no cost).
    A sliding window comes in ``attention_mask`` as transformers builds it per layer; a
    skipped (None) mask with more keys than the window gets the window here."""
    hooks = module.wb_hooks
    if not isinstance(hooks, AttnHooks):
        raise TypeError(f"{type(module).__name__}.wb_hooks is not the workbench's AttnHooks")
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    q = hooks.hook_q(query.transpose(1, 2)).transpose(1, 2)
    k = hooks.hook_k(key.transpose(1, 2)).transpose(1, 2)
    v = hooks.hook_v(value.transpose(1, 2)).transpose(1, 2)
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    causal = getattr(module, "is_causal", True)
    softcap = kwargs.get("softcap") or getattr(module, "attn_logit_softcapping", None)
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    if attention_mask is None and window and causal and k.shape[2] > window:
        attention_mask = _causal_allowed(q.shape[2], k.shape[2], q.device, window)
    if softcap or reads_pattern(hooks) or kwargs.get("output_attentions"):
        z, pattern = _eager(hooks, q, k, v, attention_mask, scaling, causal, softcap)
    else:
        z, pattern = _sdpa(q, k, v, attention_mask, scaling, causal), None
    z = hooks.hook_z(z.transpose(1, 2).contiguous())
    return z, pattern


def _eager(hooks: AttnHooks, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None,
           scaling: float, causal: bool, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B H S D], k and v [B H T D] -> z [B H S D] and the pattern [B H S T], through the
    scores and pattern hook points; softmax in float32. ``softcap`` c: the scores become
    c * tanh(scores / c) before the mask (as transformers' eager Gemma-2 attention)."""
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is None and causal and q.shape[2] > 1:
        attention_mask = _causal_allowed(q.shape[2], k.shape[2], q.device)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : k.shape[-2]]
    scores = hooks.hook_attn_scores(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    pattern = hooks.hook_pattern(pattern)
    return torch.matmul(pattern, v), pattern


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float,
          causal: bool) -> torch.Tensor:
    """q [B H S D], k and v [B H T D] -> z [B H S D] by PyTorch's fused attention (no pattern).
    A None mask means causal with as many queries as keys, or one query that sees every key
    (how ``workbench_mask`` skips the mask)."""
    if attention_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[..., : k.shape[-2]], scale=scaling)
    is_causal = causal and q.shape[2] > 1
    if is_causal and q.shape[2] != k.shape[2]:  # queries at the end of a longer key range
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_allowed(q.shape[2], k.shape[2], q.device),
                                              scale=scaling)
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scaling)


def _causal_allowed(n_query: int, n_key: int, device: torch.device, window: int | None = None) -> torch.Tensor:
    """[1 1 S T] boolean causal mask for queries at the last ``n_query`` of ``n_key`` positions
    (with ``window``: each sees only its last ``window`` keys, itself included)."""
    ones = torch.ones(n_query, n_key, dtype=torch.bool, device=device)
    allowed = ones.tril(n_key - n_query)
    if window is not None:
        allowed = allowed & ~ones.tril(n_key - n_query - window)
    return allowed[None, None]


def reads_pattern(hooks: AttnHooks) -> bool:
    """Whether anything reads or writes this layer's scores or pattern in the running forward,
    so the eager path must build them: a PyTorch hook on either hook point (hf backend,
    generation readers, the engines), a global module hook, or an nnsight trace waiting there."""
    return any(_watched(point) for point in (hooks.hook_attn_scores, hooks.hook_pattern))


def _watched(point: nn.Module) -> bool:
    if point._forward_hooks or point._forward_pre_hooks or point._backward_hooks or point._backward_pre_hooks:
        return True
    g = torch.nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks:
        return True
    return _nnsight_watches(point)


def _nnsight_watches(point: nn.Module) -> bool:
    """An nnsight trace running now that has a worker parked on (or a cache observing) this
    module's input or output. nnsight routes a module through a controller installed as its
    ``forward`` (no PyTorch hook), so its interleaver is asked; unknown internals: True."""
    state = point.__dict__.get("__nnsight__")
    if state is None:
        return False
    try:
        interleaver, _, locations = state.active()
    except Exception:  # an nnsight whose internals differ: stay on the safe (eager) side
        return True
    if interleaver is None:
        return False
    parked, observers = getattr(interleaver, "parked", None), getattr(interleaver, "observers", None)
    if parked is None or observers is None:
        return True
    return any(loc in parked or observers.get(loc) for loc in locations)


def workbench_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' eager (additive) mask, but None where a plain causal mask would do (no
    padding, as many queries as keys or one query): the fused path then runs causal without a
    mask, its fastest kernel, and the eager path builds the causal mask itself."""
    from transformers.masking_utils import sdpa_mask

    kwargs.setdefault("allow_is_causal_skip", True)
    dtype = kwargs.pop("dtype", torch.float32)
    mask = sdpa_mask(*args, **kwargs)
    if mask is None:
        return None
    return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPL, workbench_attention)
    AttentionMaskInterface.register(ATTN_IMPL, workbench_mask)


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
    set_attn_implementation = getattr(hf_model, "set_attn_implementation", None)
    if set_attn_implementation is not None:
        set_attn_implementation(ATTN_IMPL)
    _config(hf_model)._attn_implementation = ATTN_IMPL
    points: dict[str, HookPoint] = {}
    if not hasattr(hf_model, "wb_embed_hook"):
        embed_hook, final_hook = HookPoint("hook_embed"), HookPoint("ln_final.hook_normalized")
        hf_model.wb_embed_hook, hf_model.wb_final_hook = embed_hook, final_hook
        embed.register_forward_hook(lambda m, i, o: embed_hook(o))
        final_norm.register_forward_hook(lambda m, i, o: final_hook(o))
        for idx, layer in enumerate(layers):
            attn, norm2, mlp = adapter.attn(layer), adapter.mlp_norm(layer), adapter.mlp_out_module(layer)
            attn.wb_hooks = AttnHooks(idx)
            bh = BlockHooks(idx)
            layer.wb_hooks = bh
            layer.register_forward_pre_hook(_resid_pre_hook(bh), with_kwargs=True)
            layer.register_forward_hook(lambda m, i, o, bh=bh: _replace_first(o, bh.hook_resid_post(_first(o))))
            adapter.attn_out_module(layer).register_forward_hook(
                lambda m, i, o, bh=bh: _replace_first(o, bh.hook_attn_out(_first(o))))
            norm2.register_forward_pre_hook(lambda m, args, bh=bh: (bh.hook_resid_mid(args[0]), *args[1:]))
            mlp.register_forward_hook(lambda m, i, o, bh=bh: bh.hook_mlp_out(_first(o)))
    points["hook_embed"] = _hook_point(hf_model, "wb_embed_hook")
    for idx, layer in enumerate(layers):
        attn = adapter.attn(layer)
        for short in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            points[f"blocks.{idx}.{short}"] = getattr(layer.wb_hooks, short)
        for short in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            points[f"blocks.{idx}.attn.{short}"] = getattr(attn.wb_hooks, short)
    points["ln_final.hook_normalized"] = _hook_point(hf_model, "wb_final_hook")
    return adapter.name, points


def _hook_point(owner: nn.Module, name: str) -> HookPoint:
    point = getattr(owner, name)
    if not isinstance(point, HookPoint):
        raise TypeError(f"{type(owner).__name__}.{name} is not a workbench HookPoint")
    return point


def _config(hf_model: nn.Module) -> PretrainedConfig:
    """The model's Hugging Face config."""
    from transformers import PretrainedConfig

    config = getattr(hf_model, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise InputError(f"{type(hf_model).__name__} has no Hugging Face config; hook points go into a causal LM")
    return config


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
