"""The TransformerLens 4.x backend: a ``TransformerBridge`` over the same Hugging Face
module. Canonical names are TransformerLens's own, except where the architecture
adapter renames them (``Adapter.tl_names``): with rotary, the workbench's
``hook_q``/``hook_k`` are what attention sees, i.e. after rotary (the bridge's
``hook_rot_q``/``hook_rot_k``; the NeoX bridge has no post-rotary hooks, so those two
names are refused there); with a parallel residual (GPT-NeoX), ``hook_resid_mid`` is the
MLP's input stream (the bridge's ``ln2.hook_in``)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import HookNameError
from .base import HookedModel, Backend, PatchFn


def wrap(model: HookedModel) -> Any:
    """Boot a bridge over a copy of the HF module: the bridge rewires the module it is
    given in place, and the other backends must keep the original."""
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        model.name, hf_model=copy.deepcopy(model.hf), tokenizer=model.tokenizer, device=str(model.device), dtype=model.dtype
    )
    return bridge


def bridge_name(model: HookedModel, name: str) -> str:
    """The bridge's hook name for a canonical name."""
    bridged = model.adapter.tl_name(name)
    if bridged is None or bridged not in model.wrapper.hook_dict:
        raise HookNameError(f"the TransformerLens bridge has no hook '{name}' for this {model.adapter.name} model; "
                            "use the 'hf' or 'nnsight' backend for it")
    return bridged


def forward(
    model: HookedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_names: list[str],
    patches: dict[str, PatchFn],
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    store: dict[str, torch.Tensor] = {}
    fwd_hooks: list[tuple[str, Callable[..., Any]]] = [(bridge_name(model, n), (lambda act, hook, fn=fn: fn(act))) for n, fn in patches.items()]
    for name in cache_names:
        def keep(act: torch.Tensor, hook: Any, name: str = name) -> torch.Tensor:
            store[name] = act if grad else act.detach()
            return act
        fwd_hooks.append((bridge_name(model, name), keep))
    with torch.set_grad_enabled(grad):
        logits = model.wrapper.run_with_hooks(input_ids, fwd_hooks=fwd_hooks, attention_mask=attention_mask)
    return logits, store


BACKEND = Backend("transformer_lens", takes_embeddings=False, wrap=wrap, forward=forward)
