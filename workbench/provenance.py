"""Provenance of a run: what a reader needs to reproduce it (model, seed, the checkout's
commit, package versions, time, command line), recorded in every run folder's meta."""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    """The workbench checkout's commit, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a result depends on."""
    names = ["torch", "transformers", "transformer-lens", "nnsight", "numpy", "safetensors", "lxt", "zennit", "triton"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def provenance(model: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """What a reader needs to reproduce a run: model, seed, commit, versions, time, command line."""
    return {
        "model": model,
        "seed": seed,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
