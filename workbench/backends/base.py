"""What a backend is: one way to run a loaded model with the workbench's canonical hook names
(TransformerLens's ``blocks.{l}.attn.hook_z`` ...) read and patched. The three backends
(``hf``, ``transformer_lens``, ``nnsight``) are objects behind this one protocol, so the
caching layer and the model loader ask the backend instead of switching on its name.

Backends see a model through ``HookedModel``, the part of ``workbench.models.Model`` they use:
the core imports the backends, never the other way round."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

import torch

PatchFn = Callable[[torch.Tensor], torch.Tensor]
"""A patch: the activation at a hook point in, its replacement (same shape) out."""

BackendName = Literal["hf", "transformer_lens", "nnsight"]


class HookedModel(Protocol):
    """What a backend reads of a loaded model (``workbench.models.Model`` has all of it)."""

    name: str
    hf: Any
    tokenizer: Any
    wrapper: Any
    hook_points: dict[str, Any]
    remote: bool | str

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def adapter(self) -> Any: ...

    @property
    def shape(self) -> Any: ...


Forward = Callable[[HookedModel, torch.Tensor, "torch.Tensor | None", list[str], dict[str, PatchFn], bool],
                   tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``forward(model, input_ids, attention_mask, cache_names, patches, grad)``: [batch pos vocab]
logits with ``patches`` applied, and ``cache_names`` as stored after patching (detached unless ``grad``)."""


@dataclass(frozen=True)
class Backend:
    """One backend: its name, how it wraps a model once, and one forward pass with patches and a
    cache. Each backend module builds one (``BACKEND``) from its own two functions."""

    name: BackendName
    takes_embeddings: bool  # whether ``forward_embeds`` (from input embeddings, for vision-language models) works
    wrap: Callable[[HookedModel], Any]  # the backend's own object over ``model.hf`` (None: it hooks the module itself)
    forward: Forward
