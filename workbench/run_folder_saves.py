"""The atomic write of a run folder through a hidden temporary sibling, and the cleaning up
of what a killed save left behind (only what the workbench wrote is ever deleted)."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .run_folder_owned import is_plain_file, is_run_folder, owned_files
from .run_folder_schema import PARTIAL_MARK

STALE_SECONDS = 3600  # a temporary folder this old is stale whoever owns it (a save takes seconds)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")


def temp_folder(parent: Path, name: str) -> Path:
    """A new hidden sibling ``.<name>.tmp-<pid>-<token>`` to write a run into. Made with
    ``os.mkdir``, so its mode follows the umask (``mkdtemp`` would make it 0700 for good),
    and marked with its owner so a later save can tell a killed save's leftovers."""
    for _ in range(100):
        tmp = parent / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        (tmp / PARTIAL_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        return tmp
    raise FileExistsError(f"no free temporary name beside {parent / name}")


def move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished temporary folder to ``target``. An earlier run there is moved
    aside first, checked again, and only the files it wrote are deleted afterwards."""
    (tmp / PARTIAL_MARK).unlink()
    if not target.exists():
        os.rename(tmp, target)
        return
    owned = owned_files(target)  # again: the folder may have changed while the analysis ran
    old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    _remove_files(old, owned, keep_as=target.parent / f"{target.name}.kept-{secrets.token_hex(3)}")


def _remove_files(folder: Path, names: set[str], keep_as: Path | None = None) -> None:
    """Delete these files, then the folder if nothing else is left in it. Anything else (a
    file that appeared in the meantime) stays: renamed to ``keep_as`` when given, so the user
    sees it, with a warning."""
    for name in names:
        (folder / name).unlink(missing_ok=True)
    try:
        os.rmdir(folder)
    except OSError:
        if keep_as is not None:
            os.rename(folder, keep_as)
            print(f"warning: files the workbench did not write were kept in {keep_as}", file=sys.stderr)


def discard_temp(tmp: Path) -> None:
    """Remove this process's own temporary folder after a failed or interrupted save."""
    shutil.rmtree(tmp, ignore_errors=True)

def clean_stale_saves(parent: Path) -> None:
    """Hidden temporary folders beside run folders, left by a save that was killed: a
    ``.tmp-`` folder is deleted, an ``.old-`` folder (an earlier run moved aside) is put back
    when its run folder is missing, else its files are deleted. Only stale ones (owner not
    running on this host, or older than an hour), and only what the workbench wrote."""
    try:
        candidates = [(p, m) for p in parent.iterdir() if p.name.startswith(".") and (m := _TEMP_NAME.match(p.name))]
    except OSError:
        return
    for folder, match in candidates:
        try:
            _clean_one(folder, match)
        except OSError:
            continue  # another process got there first, or it is not ours to touch


def _clean_one(folder: Path, match: re.Match[str]) -> None:
    if not folder.is_dir() or folder.is_symlink():
        return
    pid = int(match["pid"]) if match["pid"] else None
    if match["kind"] == "tmp":
        mark = _read_mark(folder)
        if mark is not None and _is_stale(folder, mark.get("pid"), mark.get("host")):
            _remove_files(folder, {p.name for p in folder.iterdir() if is_plain_file(p)})
        elif mark is None and _is_stale(folder, pid, None) and is_run_folder(folder):
            _remove_files(folder, owned_files(folder))  # a save killed after its mark went, or an older format
        return
    if not _is_stale(folder, pid, socket.gethostname()) or not is_run_folder(folder):
        return  # a folder that only looks like ours is left alone, not even moved
    target = folder.parent / match["name"]
    if not target.exists() and not target.is_symlink():
        os.rename(folder, target)  # killed between moving the earlier run aside and renaming the new one in
    else:
        _remove_files(folder, owned_files(folder))


def _read_mark(folder: Path) -> dict[str, Any] | None:
    mark = folder / PARTIAL_MARK
    if not is_plain_file(mark):
        return None
    try:
        data = json.loads(mark.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_stale(folder: Path, pid: Any, host: Any) -> bool:
    """Older than an hour, or owned by a process of this host that is no longer running."""
    if time.time() - folder.stat().st_mtime > STALE_SECONDS:
        return True
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # running, as another user
        return False
    return False
