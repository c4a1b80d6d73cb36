"""One prompt's attention patterns for display: tokens as text plus the [head q k]
pattern of one layer, through the caching layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .cache import run_with_cache
from .errors import InputError


@dataclass
class AttentionView:
    tokens: list[str]
    pattern: torch.Tensor  # [head query key]


def attention_patterns(model: Any, prompt: str, layer: int) -> AttentionView:
    if not 0 <= layer < model.shape.n_layers:
        raise InputError(f"layer {layer} is out of range; this model has layers 0..{model.shape.n_layers - 1}")
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = run_with_cache(model, [prompt], [name], return_logits=False)
    ids = model.to_tokens([prompt])[0][0]
    tokens = [model.tokenizer.decode([int(i)]) for i in ids]
    return AttentionView(tokens=tokens, pattern=cache[name][0].float().cpu())
