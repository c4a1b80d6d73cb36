"""The nnsight backend: a ``LanguageModel`` over the same Hugging Face module; the
canonical names resolve to the workbench hook-point modules inside it, read and set
through nnsight's trace context.

Remote mode (``load_model(..., backend="nnsight", remote=True)``, ``--remote``): every
forward is one ``lm.trace(..., remote=True)``, which nnsight serialises and runs on NDIF
(the model is named, never sent). NDIF runs the stock Hugging Face module, which has no
workbench hook points, so remote traces read and write the stock modules instead
(``NATIVE``): the residual stream at the decoder layer's input/output, z at the output
projection's input, the attention and MLP outputs. ``remote="local"`` sends the very same
traces through nnsight's local simulation of the remote path (serialise, hide the local
modules, deserialise, run), which is what the tests run.
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch

from ..errors import HookNameError, InputError, ModelNotAvailable
from .base import HookedModel, Backend, PatchFn

NATIVE = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
"""The per-layer canonical names a remote trace reaches (in the order a layer runs them)."""


def wrap(model: HookedModel) -> Any:
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


def _module_paths(model: HookedModel) -> dict[str, str]:
    cached = getattr(model.hf, "_wb_hook_paths", None)
    if cached is None:
        by_id = {id(m): p for p, m in model.hf.named_modules()}
        cached = {name: by_id[id(hp)] for name, hp in model.hook_points.items()}
        model.hf._wb_hook_paths = cached
    return cached


def forward(
    model: HookedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_names: list[str],
    patches: dict[str, PatchFn],
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if getattr(model, "remote", False):
        return native_forward(model, input_ids, attention_mask, cache_names, patches, grad=grad)
    return hooked_forward(model, input_ids, attention_mask, cache_names, patches, grad=grad)


def hooked_forward(
    model: HookedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_names: list[str],
    patches: dict[str, PatchFn],
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


# ---------------------------------------------------------------------------- remote (NDIF)
def _native_slot(name: str) -> tuple[int, int]:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if not m or m.group(2) not in NATIVE:
        raise HookNameError(f"'{name}' is not reachable in a remote nnsight trace (NDIF runs the stock model, without "
                            f"workbench hook points); remote traces reach blocks.L.{{{', '.join(NATIVE)}}}")
    return int(m.group(1)), NATIVE.index(m.group(2))


def _native_paths(model: HookedModel, layer: int) -> dict[str, str]:
    """Module paths (in the stock model) of one layer's decoder block, attention output projection,
    attention and MLP."""
    cached = getattr(model.hf, "_wb_native_paths", None)
    if cached is None:
        by_id = {id(m): p for p, m in model.hf.named_modules()}
        ad = model.adapter
        cached = []
        for blk in ad.layers(model.hf):
            attn = ad.attn(blk)
            cached.append({"block": by_id[id(blk)], "attn": by_id[id(attn)], "out_proj": by_id[id(ad.out_proj(attn))],
                           "mlp": by_id[id(ad.mlp(blk))]})
        model.hf._wb_native_paths = cached
    return cached[layer]


def native_forward(
    model: HookedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_names: list[str],
    patches: dict[str, PatchFn],
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One trace on the stock modules, sent through nnsight's remote mechanism (``model.remote``:
    True for NDIF, "local" for nnsight's local simulation of it). Same contract as ``forward``."""
    lm = model.wrapper
    s = model.shape
    names = sorted(set(cache_names) | set(patches), key=_native_slot)
    plan = [(n, *_native_slot(n), _native_paths(model, _native_slot(n)[0])) for n in names]
    saved: dict[str, Any] = {}
    heads, d_head = s.n_heads, s.d_head
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask if attention_mask is not None else torch.ones_like(input_ids)}
    with torch.set_grad_enabled(grad):
        with lm.trace(inputs, use_cache=False, remote=model.remote):
            for name, _layer, slot, paths in plan:
                fn = patches.get(name)
                if slot == 0:  # residual stream into the block: its first input
                    env = _envoy(lm, paths["block"])
                    if fn is not None:
                        env.input = fn(env.input)
                    value = env.input
                elif slot == 1:  # z: the output projection's input, [b p h*d] -> [b p h d]
                    env = _envoy(lm, paths["out_proj"])
                    flat = env.input
                    if fn is not None:
                        flat = fn(flat.reshape(*flat.shape[:-1], heads, d_head)).reshape(flat.shape)
                        env.input = flat
                    value = flat.reshape(*flat.shape[:-1], heads, d_head)
                else:
                    env = _envoy(lm, paths["attn" if slot == 2 else "mlp" if slot == 3 else "block"])
                    out = env.output
                    tup = isinstance(out, tuple)
                    value = out[0] if tup else out
                    if fn is not None:
                        value = fn(value)
                        env.output = (value, *out[1:]) if tup else value
                if name in cache_names:
                    saved[name] = value.save()
            logits = lm.output.logits.save()
    store = {n: (v if grad else v.detach()) for n, v in saved.items()}
    return logits, store


def remote_requirements() -> tuple[str, str]:
    """NDIF's host and the API key, or one line naming what is missing."""
    from nnsight import CONFIG

    key = os.environ.get("NDIF_API_KEY") or getattr(CONFIG.API, "APIKEY", None)
    host = os.environ.get("NDIF_HOST") or CONFIG.API.HOST
    if not key:
        raise InputError("--remote needs an NDIF API key: set NDIF_API_KEY (get one at https://login.ndif.us) "
                         "or run without --remote")
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(host, timeout=5).close()
    except urllib.error.HTTPError:
        pass  # the host answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"--remote cannot reach NDIF at {host} ({type(reason).__name__}); check the network "
                         "(or NDIF_HOST) or run without --remote") from None
    return host, key


def load_remote(hub_id: str, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """The hub model NDIF hosts, built here on the meta device (config and tokenizer only; no
    weights are downloaded): ``(LanguageModel, its HF module, its tokenizer)``. ``models``
    assembles the ``Model`` from them, as it does for every backend."""
    import warnings

    remote_requirements()
    from nnsight import LanguageModel

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lm = LanguageModel(hub_id, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(f"the config and tokenizer of '{hub_id}' are not reachable ({type(exc).__name__}); "
                                "--remote needs the hub for them (the weights stay on NDIF)") from None
    return lm, lm._model, lm.tokenizer


BACKEND = Backend("nnsight", takes_embeddings=False, wrap=wrap, forward=forward)
