"""Where and how a model runs: dtype and device checks (one line for each bad choice), the
``--compile`` switch, and accelerate device maps for a model split over devices."""
from __future__ import annotations

import os
from typing import Any

import torch

from .errors import InputError, one_line


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_dtype(dtype: Any) -> torch.dtype:
    """A floating-point torch dtype from a dtype or its name; one line otherwise."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in DTYPES:
            raise InputError(f"unknown dtype '{dtype}'; choose float32, float16 or bfloat16")
        return DTYPES[name]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype {dtype} is not a floating-point type a model can run in; choose float32, float16 or bfloat16")
    return dtype


def _check_device(device: Any) -> torch.device:
    """A device this machine has ('auto' picks CUDA when present); one line otherwise."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device '{device}'; choose cpu, cuda or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device '{device}' is not supported; choose cpu, cuda or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}' was asked for but this machine has no CUDA device; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s); use cuda:0 or auto")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"device '{device}' was asked for but MPS is not available here; use cpu or auto")
    return dev


def compile_wanted(compile: bool | None) -> bool:
    """``compile`` as asked, or when None the ``WORKBENCH_COMPILE`` environment variable (how a
    command line without a ``--compile`` option reaches it)."""
    if compile is not None:
        return bool(compile)
    value = os.environ.get("WORKBENCH_COMPILE", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise InputError(f"WORKBENCH_COMPILE={value!r}: use 1 (compile the patching sweeps) or 0")


# ---------------------------------------------------------------------------- device maps
DEVICE_MAP_HELP = ("--device-map takes 'auto' or an explicit map: JSON like '{\"model.layers.0\": \"cuda:0\", ...}' "
                   "or 'module=device,...' (devices cuda:N, cpu, disk)")


def parse_device_map(value: str | dict[str, Any]) -> str | dict[str, Any]:
    """'auto' (also 'balanced', 'sequential'), a dict, JSON text or 'module=device,...' -> a map
    accelerate takes; one line otherwise."""
    import json

    if isinstance(value, dict):
        doc = value
    else:
        text = str(value).strip()
        if text in ("auto", "balanced", "balanced_low_0", "sequential"):
            return text
        if text.startswith("{"):
            try:
                doc = json.loads(text)
            except ValueError:
                raise InputError(f"--device-map '{text[:60]}' is not valid JSON; {DEVICE_MAP_HELP}") from None
        elif "=" in text:
            doc = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, _, dev = part.partition("=")
                if not key or not dev:
                    raise InputError(f"--device-map entry '{part}' is not module=device; {DEVICE_MAP_HELP}")
                doc[key.strip()] = dev.strip()
        else:
            raise InputError(f"unknown --device-map '{text}'; {DEVICE_MAP_HELP}")
    if not isinstance(doc, dict) or not doc:
        raise InputError(f"--device-map is empty; {DEVICE_MAP_HELP}")
    out: dict[str, Any] = {}
    for key, dev in doc.items():
        if isinstance(dev, int):
            dev = f"cuda:{dev}"
        if dev not in ("cpu", "disk", "meta"):
            _check_device(dev if ":" in str(dev) or dev != "cuda" else "cuda:0")
        out[str(key)] = str(dev)
    return out


def main_device(device_map: dict[str, Any]) -> torch.device:
    """accelerate's main device of a map: the first that is not cpu or disk (cpu when none is)."""
    for dev in device_map.values():
        if str(dev) not in ("cpu", "disk", "meta"):
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else str(dev))
    return torch.device("cpu")


def _dispatch(hf: Any, device_map: str | dict[str, Any], dtype: torch.dtype,
              offload_dir: str | os.PathLike | None) -> tuple[Any, dict[str, Any]]:
    """Place the model's modules by ``device_map`` with accelerate (execution hooks move each
    module's inputs to its device; cpu/disk entries are offloaded when a GPU is the main device)."""
    import tempfile

    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(hf, "_no_split_modules", None) or [])
    if isinstance(device_map, str):  # a strategy: accelerate works the map out
        kwargs: dict[str, Any] = {"no_split_module_classes": no_split, "dtype": dtype}
        if device_map != "sequential":
            kwargs["max_memory"] = get_balanced_memory(hf, low_zero=device_map == "balanced_low_0", **kwargs)
        placement: dict[str, Any] = infer_auto_device_map(hf, **kwargs)
    else:
        placement = device_map
    names = {n for n, _ in hf.named_modules()}
    unknown = [k for k in placement if k and k not in names]
    if unknown:
        top = ", ".join(n for n, _ in hf.named_children())
        raise InputError(f"--device-map names '{unknown[0]}', which is not a module of this model; "
                         f"use module names like {top} or model.layers.N")
    if "disk" in placement.values() and offload_dir is None:
        offload_dir = tempfile.mkdtemp(prefix="wb-offload-")
    try:
        hf = dispatch_model(hf, device_map=placement, offload_dir=str(offload_dir) if offload_dir else None)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"accelerate refused the device map ({one_line(exc)}); {DEVICE_MAP_HELP}, "
                         "covering every module of the model") from None
    return hf, dict(placement)
