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


class Backend(Protocol):
    """One backend: how it wraps a model once, and one forward pass with patches and a cache."""

    name: BackendName
    takes_embeddings: bool
    """Whether ``forward_embeds`` (a forward from input embeddings, for vision-language models) works."""

    def wrap(self, model: HookedModel) -> Any:
        """The backend's own object over ``model.hf`` (None when it hooks the module directly)."""
        ...

    def forward(
        self,
        model: HookedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache_names: list[str],
        patches: dict[str, PatchFn],
        grad: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[batch pos vocab] logits with ``patches`` applied, and ``cache_names`` as stored
        after patching (detached unless ``grad``)."""
        ...


Forward = Callable[[HookedModel, torch.Tensor, "torch.Tensor | None", list[str], dict[str, PatchFn], bool],
                   tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``forward(model, input_ids, attention_mask, cache_names, patches, grad)``, as ``Backend.forward``."""


@dataclass(frozen=True)
class ModuleBackend:
    """A backend made of its module's two functions (each backend module builds one ``BACKEND``)."""

    name: BackendName
    takes_embeddings: bool
    wrap_fn: Callable[[HookedModel], Any]
    forward_fn: Forward

    def wrap(self, model: HookedModel) -> Any:
        return self.wrap_fn(model)

    def forward(self, model: HookedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                cache_names: list[str], patches: dict[str, PatchFn],
                grad: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.forward_fn(model, input_ids, attention_mask, cache_names, patches, grad)
