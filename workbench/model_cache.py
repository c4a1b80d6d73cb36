"""The embedded model's converted copy in the workbench cache, verified before each use.

The GGUF is converted once to safetensors (``model_sources._convert_gguf``); the conversion records
each file's size and sha256 (``CHECKSUMS``) before the folder is renamed into place. Every
later load compares the files with that record (sizes and modification times first, the
sha256 only when a file's time changed), and a broken copy (truncated, edited, half
deleted) is converted again, or named with the folder to delete when that fails, instead
of breaking every run with a traceback."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import ModelNotAvailable, WorkbenchError

CHECKSUMS = "workbench-checksums.json"
NEEDED = ("config.json", "tokenizer_config.json", "model.safetensors")
NOT_CONVERTED = "not converted yet"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksums(folder: Path) -> None:
    """Write ``CHECKSUMS`` for every file in ``folder`` (atomically: temp file, rename)."""
    files: dict[str, Any] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name != CHECKSUMS:
            st = path.stat()
            files[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256(path)}
    tmp = folder / f".{CHECKSUMS}.{os.getpid()}"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, folder / CHECKSUMS)


def damage(folder: Path) -> str | None:
    """None when the converted copy matches its record; else what is wrong with it."""
    if not any((folder / name).exists() for name in NEEDED):
        return NOT_CONVERTED
    try:
        files = json.loads((folder / CHECKSUMS).read_text())["files"]
    except FileNotFoundError:
        return _adopt(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {CHECKSUMS} is unreadable"
    for name in NEEDED:
        if name not in files:
            return f"{name} is missing"
    for name, rec in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        st = path.stat()
        if st.st_size != rec.get("size"):
            return f"{name} is {st.st_size} bytes, not the {rec.get('size')} it had when converted"
        if st.st_mtime_ns != rec.get("mtime_ns") and sha256(path) != rec.get("sha256"):
            return f"{name} does not match the checksum recorded at conversion"
    return _weights_damage(folder)


def _weights_damage(folder: Path) -> str | None:
    """A weights file cut short while it was written (a writer that did not report the full
    disk) has a checksum too: its header against its size tells (a few kB read)."""
    from .model_checks import safetensors_header

    for path in sorted(folder.glob("*.safetensors")):
        try:
            safetensors_header(path)
        except (ValueError, OSError) as exc:
            return f"{path.name} {exc}"
    return None


def _adopt(folder: Path) -> str | None:
    """A copy converted before checksums were recorded: kept (and its checksums recorded)
    when every needed file is there and the weights file is whole; else its damage."""
    for name in NEEDED:
        if not (folder / name).is_file():
            return f"{name} is missing"
    try:
        json.loads((folder / "config.json").read_text())
    except (ValueError, OSError) as exc:
        return f"config.json is damaged ({type(exc).__name__})"
    if (problem := _weights_damage(folder)) is not None:
        return problem
    try:
        record_checksums(folder)
    except OSError:
        pass  # a read-only cache: verified now, recorded another time
    return None


def ensure_converted(folder: Path, convert: Callable[[Path], None]) -> Path:
    """The verified converted copy in ``folder``: converted when missing, converted again
    when broken; a failure is one line naming the folder (and the variable that placed it)."""
    from .environment import cache_problem, os_error_of

    problem = damage(folder)
    if problem is None:
        return folder
    if problem == NOT_CONVERTED:
        print(f"converting the embedded model once into {folder} (about 30 s) ...", file=sys.stderr, flush=True)
    else:
        print(f"the converted model in {folder} is broken ({problem}); converting it again (about 30 s) ...",
              file=sys.stderr, flush=True)
    try:
        convert(folder)
    except WorkbenchError as exc:
        if problem == NOT_CONVERTED:
            raise
        raise ModelNotAvailable(f"the converted model in {folder} is broken ({problem}) and cannot be converted again "
                                f"here ({exc}); delete the folder (rm -rf {folder}) and run again") from None
    except Exception as exc:  # noqa: BLE001 - a full disk or a permission, however the writer reports it
        if (os_error := os_error_of(exc)) is None:
            raise
        raise cache_problem(folder, os_error) from None
    after = damage(folder)
    if after is not None:
        raise ModelNotAvailable(f"the converted model in {folder} is broken right after converting ({after}); "
                                f"is the disk full? free space, delete the folder (rm -rf {folder}) and run again")
    return folder
