"""Pick the Triton kernel or its PyTorch reference for the patching ops.

Automatic: the Triton kernel when the tensors are on CUDA and Triton imports; otherwise
the reference. Force either with ``backend="triton"|"reference"`` or the environment
variable ``WORKBENCH_KERNEL`` (``auto``, ``triton``, ``reference``). Forcing ``triton``
on CPU tensors works only under Triton's interpreter (``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from . import reference

CHOICES = ("auto", "triton", "reference")


class KernelChoiceError(ValueError):
    """An unknown kernel backend was asked for (the workbench reports it as bad input)."""


class KernelUnavailable(RuntimeError):
    """The Triton kernel was forced where it cannot run."""


def _triton_module() -> Any | None:
    try:
        from . import patch_mix
    except Exception:  # noqa: BLE001 - triton missing or broken: fall back
        return None
    return patch_mix


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def choose(device: torch.device | str, backend: str | None = None) -> str:
    """'triton' or 'reference' for tensors on ``device``; raises if a forced choice is impossible."""
    want = backend or os.environ.get("WORKBENCH_KERNEL", "auto")
    if want not in CHOICES:
        raise KernelChoiceError(f"unknown kernel backend '{want}'; choose one of {', '.join(CHOICES)}")
    if want == "reference":
        return "reference"
    on_cuda = torch.device(device).type == "cuda"
    usable = (on_cuda or _interpreting()) and _triton_module() is not None
    if want == "triton" and not usable:
        raise KernelUnavailable(
            "the Triton kernel needs CUDA tensors and Triton (or TRITON_INTERPRET=1 set before import on the CPU); "
            "use backend='reference' or WORKBENCH_KERNEL=auto"
        )
    if want == "auto":
        return "triton" if on_cuda and usable else "reference"
    return "triton"


def _impl(name: str, device: torch.device, backend: str | None) -> Callable:
    which = choose(device, backend)
    module = _triton_module() if which == "triton" else reference
    return getattr(module, name)


def patch_mix_project(z, source, mask, w_o, bias=None, backend: str | None = None) -> torch.Tensor:
    """Dispatching ``patch_mix_project`` (see ``reference`` for shapes)."""
    return _impl("patch_mix_project", z.device, backend)(z, source, mask, w_o, bias)


def masked_edge_sum(base, deltas, mask, backend: str | None = None) -> torch.Tensor:
    """Dispatching ``masked_edge_sum`` (see ``reference`` for shapes)."""
    return _impl("masked_edge_sum", deltas.device, backend)(base, deltas, mask)
