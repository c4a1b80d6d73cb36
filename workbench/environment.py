"""The environment a command runs in: HOME, the workbench cache folder, TMPDIR, free disk
and standard output. When one of them stops the workbench, the user gets one line that
names the variable or folder to fix, not a traceback from deep inside ``os.mkdir``."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from .errors import EnvironmentProblem
from .paths import describe_path, user_path

REASONS = {
    errno.ENOSPC: "the disk is full",
    getattr(errno, "EDQUOT", -1): "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way",
}


def reason(exc: OSError) -> str:
    """Why a write failed, in words a user acts on."""
    return REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def os_error_of(exc: BaseException) -> OSError | None:
    """The operating-system error inside ``exc``: itself, or one that a library reported as
    text (safetensors raises "I/O error: No space left on device (os error 28)")."""
    import re

    if isinstance(exc, OSError):
        return exc
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def home_folder() -> Path:
    """$HOME as the cache's root; an empty or relative HOME would put the cache somewhere
    nobody meant (``/`` or the current folder), so it is refused with the fix."""
    home = os.environ.get("HOME")
    if home is None:
        return Path.home()  # unset: the password database's home folder
    fix = "set HOME to your home folder, or WORKBENCH_CACHE to a writable folder"
    if not home.strip():
        raise EnvironmentProblem(f"HOME is set but empty, so the workbench cache has no place; {fix}")
    if not os.path.isabs(home):
        raise EnvironmentProblem(f"HOME={home} is not an absolute path; {fix}")
    return Path(home)


def cache_root() -> Path:
    """``$WORKBENCH_CACHE`` (``~`` expanded) or ``$HOME/.cache/workbench``."""
    env = os.environ.get("WORKBENCH_CACHE")  # empty counts as unset, as WORKBENCH_RUNS does
    return user_path(env) if env else home_folder() / ".cache" / "workbench"


def cache_fix(space: bool = False) -> str:
    """Which variable moves the cache: the one that placed it."""
    env = os.environ.get("WORKBENCH_CACHE")
    where = "a writable folder on a disk with space" if space else "a writable folder"
    if env:
        return f"(WORKBENCH_CACHE={env}); point WORKBENCH_CACHE at {where}"
    return f"(under HOME={os.environ.get('HOME', '~')}); set WORKBENCH_CACHE to {where}, or fix HOME"


def cache_problem(path: Path, exc: OSError) -> EnvironmentProblem:
    """One line for a cache folder that cannot be made or written."""
    blocker = _first_non_folder(path)
    why = f"{blocker} {describe_path(blocker)}, not a folder" if blocker is not None else reason(exc)
    full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    return EnvironmentProblem(f"the workbench cache folder {path} cannot be written: {why} {cache_fix(full)}")


def cache_dir(*parts: str) -> Path:
    """The user cache folder (``$WORKBENCH_CACHE`` or ``~/.cache/workbench``), created on demand;
    a cache that cannot be made is one line naming the variable to fix."""
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_problem(path, exc) from None
    return path


def _first_non_folder(path: Path) -> Path | None:
    """The first existing part of ``path`` (from the root down) that is not a folder."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
        if not part.exists():
            return None
    return None


def check_tmpdir() -> None:
    """A TMPDIR that is set but is not a writable folder: Python would fall back to /tmp
    without a word (and fill a disk the user meant to spare), other tools would fail."""
    value = os.environ.get("TMPDIR")
    if not value:
        return
    from .paths import describe_path

    path = Path(value)
    what = describe_path(path)
    if what != "is a folder":
        raise EnvironmentProblem(f"TMPDIR={value} {what}{', not a folder' if what.startswith('is a') else ''}; "
                                 "point TMPDIR at a writable folder or unset it")
    if not os.access(path, os.W_OK | os.X_OK):
        raise EnvironmentProblem(f"TMPDIR={value} is not writable; point TMPDIR at a writable folder or unset it")


class ClosedOutput(EnvironmentProblem):
    """The program reading standard output has gone (``workbench runs | head``): not an
    error to report, the command stops quietly with the shell's SIGPIPE status."""

    exit_code = 128 + 13


class GuardedStream:
    """Standard output whose write errors (a closed pipe, a full disk behind ``>``) become one
    ``EnvironmentProblem`` line instead of a traceback, and are raised once."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _output_problem(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise _output_problem(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _output_problem(exc: OSError) -> EnvironmentProblem:
    """One line for a full disk behind ``>``; a quiet stop for a reader that has gone."""
    _silence_stdout()
    if exc.errno == errno.EPIPE:
        return ClosedOutput("standard output was closed before the output was written (broken pipe: the program "
                            "reading it stopped); pipe it into a program that reads all of it, or into a file")
    return EnvironmentProblem(f"cannot write to standard output ({reason(exc)}); redirect it to a file on a disk "
                              "with space, or drop the redirection")


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null so the interpreter's last flush of the unwritten
    bytes cannot fail again ("Exception ignored ... BrokenPipeError")."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(null)
    except (OSError, ValueError):
        pass


def guard_stdout() -> None:
    """Wrap ``sys.stdout`` once (a closed descriptor 1 leaves it None: nothing to guard)."""
    if sys.stdout is not None and not isinstance(sys.stdout, GuardedStream):
        sys.stdout = GuardedStream(sys.stdout)
