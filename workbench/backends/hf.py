"""The plain-PyTorch backend: forward hooks on the workbench hook points. The fastest
door, and the reference the other backends are tested against."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from .base import HookedModel, Backend, PatchFn


def on_device_of(value: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """A patch's value on the device of the activation it replaces: with a model split over
    devices (``device_map``) a patch made from another layer's cache lives elsewhere."""
    if isinstance(value, torch.Tensor) and value.device != act.device:
        return value.to(act.device)
    return value


@contextmanager
def hooked(model: HookedModel, cache_names: list[str], patches: dict[str, PatchFn], grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Install ``patches`` and cache hooks (which see the patched values) on the hook
    points for the duration of the block; yields the dict the cached names fill."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, fn in patches.items():
            handles.append(model.hook_points[name].register_forward_hook(lambda m, i, o, fn=fn: on_device_of(fn(o), o)))
        for name in cache_names:
            def keep(m: torch.nn.Module, i: Any, o: torch.Tensor, name: str = name) -> None:
                store[name] = o if grad else o.detach()
            handles.append(model.hook_points[name].register_forward_hook(keep))
        with torch.set_grad_enabled(grad):
            yield store
    finally:
        for h in handles:
            h.remove()


def forward(
    model: HookedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_names: list[str],
    patches: dict[str, PatchFn],
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass with ``patches`` applied and ``cache_names`` stored (after patching)."""
    with hooked(model, cache_names, patches, grad) as store:
        out = model.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits, store


def forward_embeds(
    model: HookedModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_names: list[str],
    patches: dict[str, PatchFn],
    grad: bool = False,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """Like ``forward`` but from input embeddings ``[batch pos d_model]`` (a vision-language
    model splices image embeddings into the prompt), optionally continuing a key-value cache.
    Returns logits, the cached names and the (updated) key-value cache or None."""
    use_cache = use_cache or past_key_values is not None
    kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                              "position_ids": position_ids, "use_cache": use_cache}
    if past_key_values is not None:  # transformers 5 calls it `cache`, older versions `past_key_values`
        import inspect

        key = "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"
        kwargs[key] = past_key_values
    with hooked(model, cache_names, patches, grad) as store:
        out = model.hf(**kwargs)
    past = getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)
    return out.logits, store, (past if use_cache else None)


BACKEND = Backend("hf", takes_embeddings=True, wrap=lambda model: None, forward=forward)
