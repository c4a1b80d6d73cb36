"""The hub route of the reuse study: ``workbench reuse --model gpt2-medium`` is Merullo et al.'s
setting. Where the model is in the user's Hugging Face cache it loads as any hub model does;
where it is not and the hub cannot be reached, one line names the cache that was searched,
before minutes of network retries."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from workbench.errors import InputError

HUB_HOST = ("huggingface.co", 443)


def hub_id_of(name: str) -> str | None:
    """The hub id a ``--model`` name loads from, or None for embedded, tiny and local models."""
    from workbench.models import MODELS

    spec = MODELS.get(name)
    if spec is not None:
        return spec.hub_id if spec.kind == "hub" else None
    if "/" in name and not Path(name).expanduser().exists():
        return name
    return None


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id or cache reads as "not cached"
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def check_hub_model(name: str) -> None:
    """One-line error when ``name`` is a hub model that is neither cached nor downloadable here."""
    hub = hub_id_of(name)
    if hub is None or in_hub_cache(hub) or hub_reachable():
        return
    raise InputError(f"model '{name}' ({hub}) is not in the Hugging Face cache at {hub_cache_dir()} and the hub "
                     f"cannot be reached; run `huggingface-cli download {hub}` where it can and copy that cache here "
                     f"(or point HF_HUB_CACHE at one), or use the embedded smollm2-135m")


def load_target(config: Any, common: Any) -> Any:
    """The ``--model`` of ``workbench reuse``, after the hub check above."""
    from workbench.models import load_model

    check_hub_model(common.model)
    print(f"loading {common.model} ({common.backend}, {common.device}, {common.dtype}) ...", file=sys.stderr, flush=True)
    return load_model(common.model, backend=common.backend, device=common.device, dtype=common.dtype)
