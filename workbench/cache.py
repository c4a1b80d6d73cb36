"""The shared activation-caching layer: the two doors every analysis goes through.

``run_with_cache(model, inputs, names)`` returns logits and the activations under the
canonical names, only those asked for, streamed over batches (with a progress bar) and
optionally spilled to disk. ``run_with_patches(model, inputs, {name: fn})`` runs with
interventions. Both work the same on the ``hf``, ``transformer_lens`` and ``nnsight``
backends; no analysis sees a backend-specific name.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union, overload

import torch
from tqdm.auto import tqdm

from .backends import PatchFn, backend_for
from .errors import InputError
from .hooks import check_names
from .models import Model


@dataclass
class Tokens:
    """Tokenised inputs: ids and attention mask [batch pos], right-padded."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> "Tokens":
        return Tokens(self.input_ids[start:stop], self.attention_mask[start:stop])

    @property
    def last_positions(self) -> torch.Tensor:
        return self.attention_mask.long().sum(dim=1) - 1


Inputs = Union[str, list[str], torch.Tensor, tuple[torch.Tensor, torch.Tensor], Tokens]
"""What the two doors take: prompts (one or a list), token ids [batch pos] or [pos], an
(ids, attention mask) pair, or ``Tokens``."""


def as_tokens(model: Model, inputs: Inputs) -> Tokens:
    """Prompts (str or list), a token tensor, a (ids, mask) pair or ``Tokens`` -> ``Tokens``."""
    if isinstance(inputs, Tokens):
        return inputs
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.ndim == 2 else inputs[None]
        if ids.shape[0] == 0:
            raise InputError("the input batch is empty; pass at least one prompt")
        return Tokens(ids.to(model.device), torch.ones_like(ids, device=model.device))
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], torch.Tensor):
        return Tokens(inputs[0].to(model.device), inputs[1].to(model.device))
    ids, mask = model.to_tokens(inputs)
    return Tokens(ids, mask)


def forward(
    model: Model,
    tokens: Tokens,
    names: Iterable[str] = (),
    patches: Mapping[str, PatchFn | torch.Tensor] | None = None,
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass on the model's backend: [batch pos vocab] logits and the cached names."""
    names = list(dict.fromkeys(names))
    patches = dict(patches or {})
    check_names(model.hook_points, names + list(patches))
    fns = {n: (_replacer(v) if isinstance(v, torch.Tensor) else v) for n, v in patches.items()}
    return backend_for(model.backend).forward(model, tokens.input_ids, tokens.attention_mask, names, fns, grad)


def _replacer(value: torch.Tensor) -> PatchFn:
    def replace(act: torch.Tensor) -> torch.Tensor:
        try:
            return value.to(act.dtype).expand_as(act).clone()
        except RuntimeError:
            raise InputError(
                f"patch value of shape {tuple(value.shape)} does not fit the activation {tuple(act.shape)}; "
                "pass a tensor of the activation's shape (or one that broadcasts to it)"
            ) from None
    return replace


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations by canonical name. In memory, or spilled to one safetensors shard per
    batch and concatenated when a name is read (so a sweep never holds all of it)."""

    def __init__(self, data: dict[str, torch.Tensor] | None = None, shards: list[Path] | None = None,
                 names: list[str] | None = None, folder: Path | None = None, owns_folder: bool = False) -> None:
        self._data = data or {}
        self._shards = shards or []
        self._names = names if names is not None else list(self._data)
        self.folder = folder
        self._owns = owns_folder

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._data:
            return self._data[name]
        if name not in self._names:
            check_names(self._names, [name])
        from safetensors import safe_open

        parts = []
        for shard in self._shards:
            with safe_open(str(shard), framework="pt") as fh:
                parts.append(fh.get_tensor(name))
        return _cat(parts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def cleanup(self) -> None:
        """Delete the spill folder when the cache made it itself."""
        if self._owns and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate batches along dim 0, right-padding any position axes that differ."""
    if len(parts) == 1:
        return parts[0]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) == 1:
        return torch.cat(parts)
    ndim = parts[0].ndim
    max_shape = [max(p.shape[d] for p in parts) for d in range(1, ndim)]
    padded = []
    for p in parts:
        pad = []
        for d in reversed(range(1, ndim)):
            pad += [0, max_shape[d - 1] - p.shape[d]]
        padded.append(torch.nn.functional.pad(p, pad))
    return torch.cat(padded)


def run_with_cache(
    model: Model,
    inputs: Inputs,
    names: Iterable[str],
    batch_size: int | None = None,
    progress: bool = False,
    spill_dir: str | os.PathLike | bool | None = None,
    return_logits: bool = True,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor | None, ActivationCache]:
    """Logits [batch pos vocab] and an ``ActivationCache`` holding only ``names``.

    ``batch_size`` streams the prompts in chunks; ``spill_dir`` (a folder, or True for a
    temporary one) writes each chunk's activations to disk instead of memory. The activations
    stay on the model's device unless ``device`` asks for another (``device="cpu"`` to hold a
    long sweep in host memory): a cache moved silently to the CPU was indexed with masks from
    the model's device (the ablation's GPU bug)."""
    tokens = as_tokens(model, inputs)
    device = model.device if device is None else device
    names = list(dict.fromkeys(names))
    check_names(model.hook_points, names)
    n = len(tokens)
    step = batch_size or n
    if step <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    folder, owns = None, False
    if spill_dir:
        if spill_dir is True:
            folder, owns = Path(tempfile.mkdtemp(prefix="wb-cache-")), True
        else:
            folder = Path(spill_dir)
            folder.mkdir(parents=True, exist_ok=True)
    logits_parts: list[torch.Tensor] = []
    mem_parts: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    shards: list[Path] = []
    chunks = range(0, n, step)
    for i, start in enumerate(tqdm(chunks, desc="caching", disable=not progress, leave=False)):
        chunk = tokens.slice(start, start + step)
        logits, store = forward(model, chunk, names)
        if return_logits:
            logits_parts.append(logits.detach().to(device))
        if folder is not None:
            from safetensors.torch import save_file

            shard = folder / f"shard_{i:05d}.safetensors"
            tmp = shard.with_suffix(".tmp")
            save_file({k: v.detach().to("cpu").contiguous() for k, v in store.items()}, str(tmp))
            os.replace(tmp, shard)
            shards.append(shard)
        else:
            for k in names:
                mem_parts[k].append(store[k].to(device))
    logits_all = _cat(logits_parts) if return_logits else None
    if folder is not None:
        return logits_all, ActivationCache(shards=shards, names=names, folder=folder, owns_folder=owns)
    return logits_all, ActivationCache({k: _cat(v) for k, v in mem_parts.items()}, names=names)


@overload
def run_with_patches(  # type: ignore[overload-overlap]  # no names: logits alone (an empty tuple is also Iterable)
        model: Model, inputs: Inputs, patches: Mapping[str, PatchFn | torch.Tensor],
        names: tuple[()] = (), grad: bool = False) -> torch.Tensor: ...


@overload
def run_with_patches(model: Model, inputs: Inputs, patches: Mapping[str, PatchFn | torch.Tensor],
                     names: Iterable[str], grad: bool = False) -> tuple[torch.Tensor, ActivationCache]: ...


def run_with_patches(
    model: Model,
    inputs: Inputs,
    patches: Mapping[str, PatchFn | torch.Tensor],
    names: Iterable[str] = (),
    grad: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ActivationCache]:
    """Logits with ``patches`` applied (each a function of the activation, or a tensor
    that replaces it). With ``names``, also the (patched) activations."""
    tokens = as_tokens(model, inputs)
    logits, store = forward(model, tokens, names, patches, grad=grad)
    if names:
        return logits, ActivationCache(store)
    return logits


def forward_embeds(
    model: Model,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    names: Iterable[str] = (),
    patches: Mapping[str, PatchFn | torch.Tensor] | None = None,
    grad: bool = False,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, ActivationCache, Any]:
    """One forward pass from input embeddings ``[batch pos d_model]`` instead of token ids, the
    door for vision-language models (image embeddings spliced into the prompt). Same canonical
    names and patches as ``forward``; ``past_key_values`` / ``use_cache`` continue a key-value
    cache for decoding. Returns logits [batch pos vocab], the cache of ``names`` and the
    key-value cache (None unless asked for). The ``hf`` backend only (``hook_embed`` does not
    fire: the embeddings are given)."""
    if not backend_for(model.backend).takes_embeddings:
        raise InputError(f"input embeddings need the 'hf' backend, not '{model.backend}'; load the model with backend='hf'")
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != model.shape.d_model:
        raise InputError(
            f"inputs_embeds must be [batch pos {model.shape.d_model}], got {tuple(inputs_embeds.shape)}; "
            "embed the prompt with the model's embedding size"
        )
    names = list(dict.fromkeys(names))
    patches = dict(patches or {})
    check_names(model.hook_points, names + list(patches))
    fns = {n: (_replacer(v) if isinstance(v, torch.Tensor) else v) for n, v in patches.items()}
    from .backends import hf

    logits, store, past = hf.forward_embeds(model, inputs_embeds, attention_mask, names, fns, grad=grad,
                                            position_ids=position_ids, past_key_values=past_key_values,
                                            use_cache=use_cache)
    return logits, ActivationCache(store, names=names), past
