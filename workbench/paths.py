"""Where the workbench keeps things on disk: the user cache (converted models,
trained toys, projectors) and the runs folder (saved results)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The user cache folder (``$WORKBENCH_CACHE`` or ``~/.cache/workbench``), created on demand."""
    root = Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """The folder that holds run folders (``$WORKBENCH_RUNS`` or ``./runs``)."""
    return Path(os.environ.get("WORKBENCH_RUNS") or "runs")
