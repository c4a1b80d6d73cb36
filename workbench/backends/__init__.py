"""The backends, one ``base.Backend`` each, by name. Each module is imported when
its backend is first asked for, so TransformerLens and nnsight load only when used."""
from __future__ import annotations

import importlib

from ..errors import InputError
from .base import Backend, BackendName, HookedModel, PatchFn

BACKENDS: tuple[BackendName, ...] = ("hf", "transformer_lens", "nnsight")
"""hf: plain PyTorch hooks on the workbench hook points (fastest; the reference).
transformer_lens: a TransformerLens 4 ``TransformerBridge`` over the same module.
nnsight: an nnsight ``LanguageModel`` over the same module (and NDIF for remote traces)."""


def backend_for(name: str) -> Backend:
    """The backend called ``name``; one line naming the choices otherwise."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    backend: Backend = importlib.import_module(f"{__name__}.{name}").BACKEND
    return backend


__all__ = ["BACKENDS", "Backend", "BackendName", "HookedModel", "PatchFn", "backend_for"]
