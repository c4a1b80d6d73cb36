"""The nnsight backend: a ``LanguageModel`` over the same Hugging Face module; the
canonical names resolve to the workbench hook-point modules inside it, read and set
through nnsight's trace context."""
from __future__ import annotations

from typing import Any, Callable

import torch


def wrap(model: Any) -> Any:
    import warnings

    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LanguageModel(model.hf, tokenizer=model.tokenizer)


def _envoy(lm: Any, path: str) -> Any:
    node = lm
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _module_paths(model: Any) -> dict[str, str]:
    cached = getattr(model.hf, "_wb_hook_paths", None)
    if cached is None:
        by_id = {id(m): p for p, m in model.hf.named_modules()}
        cached = {name: by_id[id(hp)] for name, hp in model.hook_points.items()}
        model.hf._wb_hook_paths = cached
    return cached


def forward(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_names: list[str],
    patches: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from ..hooks import execution_order

    lm = model.wrapper
    paths = _module_paths(model)
    order = execution_order(model)
    names = sorted(set(cache_names) | set(patches), key=order.index)
    saved: dict[str, Any] = {}
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask if attention_mask is not None else torch.ones_like(input_ids)}
    with torch.set_grad_enabled(grad):
        with lm.trace(inputs, use_cache=False):
            for name in names:
                env = _envoy(lm, paths[name])
                if name in patches:
                    env.output = patches[name](env.output)
                if name in cache_names:
                    saved[name] = env.output.save()
            logits = lm.output.logits.save()
    store = {n: (v if grad else v.detach()) for n, v in saved.items()}
    return logits, store
