"""Architecture adapters: one module per decoder family, each an ``Adapter`` that says
where the layers, attention, norms, rotary embedding, output projection and MLP are,
and how to run one decoder layer on a residual stream (architecture as data, in the
spirit of lxt). ``adapter_for(model)`` picks one by the Hugging Face config's
``model_type`` (falling back to the module layout for wrappers), so nothing outside
this package tests an architecture's name.

    llama     Llama, SmolLM2, Mistral: RMSNorm, rotary, grouped-query attention
    qwen2     Qwen2 / Qwen2.5: the Llama layout with q/k/v biases
    gemma2    Gemma-2: four norms, soft-capping, sliding window (whole models; head writes split at the post-attention norm)
    gpt2      GPT-2: LayerNorm, learned positions, fused Conv1D q/k/v
    neox      GPT-NeoX / Pythia: LayerNorm, partial rotary, fused q/k/v, parallel residual
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from . import gemma2, gpt2, gpt_neox, llama, qwen2
from .base import Adapter, QKVWeights, apply_rotary, causal_mask, rotary_grad, rotate_half

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (llama.ADAPTER, qwen2.ADAPTER, gemma2.ADAPTER, gpt2.ADAPTER,
                                                    gpt_neox.ADAPTER)}
"""The families by name (``Model.arch``)."""

_BY_MODEL_TYPE = {t: a for a in ADAPTERS.values() for t in a.model_types}

__all__ = ["ADAPTERS", "Adapter", "QKVWeights", "adapter_for", "apply_rotary", "causal_mask", "rotary_grad",
           "rotate_half"]


def adapter_for(model_or_hf: Any) -> Adapter:
    """The adapter of a workbench ``Model`` or a Hugging Face causal LM, by ``config.model_type``
    (by layout only when the config names no model type); a one-line error otherwise."""
    hf = getattr(model_or_hf, "hf", None)
    hf = model_or_hf if hf is None else hf
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type:
        adapter = _BY_MODEL_TYPE.get(model_type)
        adapter = adapter.for_config(config) if adapter is not None and adapter.matches(hf) else None
    else:
        adapter = next((a for a in ADAPTERS.values() if a.matches(hf)), None)
    if adapter is None:
        kind = getattr(config, "model_type", None) or type(hf).__name__
        raise InputError(f"unsupported model architecture '{kind}' ({type(hf).__name__}); supported: "
                         + ", ".join(a.description for a in ADAPTERS.values()))
    return adapter
