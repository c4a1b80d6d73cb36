"""Which files of a run folder the workbench wrote: the manifest a save records, and the
check that a folder holds nothing else, unchanged, before anything in it is replaced
(``workbench.run_folder`` tells the whole rule)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .errors import ResultError
from .run_folder_schema import (ARRAYS_FILE, CHECKSUM_KEY, FILES_KEY, MARKER, MARKER_KEY, PARTIAL_MARK, RESULT_FILE,
                                SIZE_KEY, read_result_doc)

# every file a run saved before manifests could hold: result, arrays, ablation's report, the atlas tables
LEGACY_FILES = frozenset({RESULT_FILE, ARRAYS_FILE, "report.html", "atlas.csv", "atlas_columns.csv", "atlas.parquet"})


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """One manifest entry: what a later replace checks before deleting the file."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest of a folder being written: every file in it but result.json and the partial mark."""
    return {p.name: file_entry(p) for p in sorted(folder.iterdir()) if p.name not in (RESULT_FILE, PARTIAL_MARK)}


def owned_files(folder: Path, option: str = "--out") -> set[str]:
    """The names of the files the workbench wrote in ``folder`` (result.json included; empty
    for an empty folder), or a ``ResultError`` naming the first thing it did not write."""
    entries = {p.name: p for p in folder.iterdir()}
    if not entries:
        return set()
    if RESULT_FILE not in entries or not is_plain_file(entries[RESULT_FILE]):
        raise _not_a_run(folder, option, f"it has no {RESULT_FILE} the workbench wrote")
    try:
        doc = read_result_doc(folder)
    except ResultError:
        raise _not_a_run(folder, option, f"its {RESULT_FILE} is not a workbench result") from None
    listed = _listed_files(doc)
    if listed is None:
        raise _not_a_run(folder, option, f"its {RESULT_FILE} is not a workbench result")
    foreign = sorted(n for n in entries if n != RESULT_FILE and n not in listed)
    if foreign:
        raise ResultError(f"{option} {folder} is a workbench run folder that also holds {_names(foreign)}, which the "
                          "workbench did not write; move what you keep out of it or name a new folder (nothing was changed)")
    for name in entries.keys() - {RESULT_FILE}:
        if not _unchanged(entries[name], listed[name]):
            raise ResultError(f"{option} {folder} is a workbench run folder whose {name} changed after the run wrote it; "
                              "move it out of the folder or name a new folder (nothing was changed)")
    return set(entries)


def _listed_files(doc: dict[str, Any]) -> dict[str, dict[str, Any] | None] | None:
    """The files a run's result.json says it wrote (entries None where the format kept no
    checksum); None when the document does not come from the workbench."""
    if doc.get(MARKER_KEY) == MARKER and isinstance(doc.get(FILES_KEY), dict):
        return doc[FILES_KEY]
    if MARKER_KEY in doc or FILES_KEY in doc:
        return None
    legacy: dict[str, dict[str, Any] | None] = {n: None for n in LEGACY_FILES - {RESULT_FILE}}
    if doc.get(CHECKSUM_KEY) is not None:  # a run saved before manifests, with its arrays' checksum
        legacy[ARRAYS_FILE] = {"sha256": doc[CHECKSUM_KEY], "bytes": doc.get(SIZE_KEY)}
    return legacy


def _unchanged(path: Path, entry: dict[str, Any] | None) -> bool:
    """A plain file whose size and sha256 are those recorded (no record: any plain file)."""
    if not is_plain_file(path):
        return False
    if entry is None:
        return True
    size = entry.get("bytes")
    if size is not None and path.stat().st_size != size:
        return False
    try:
        return sha256_file(path) == entry.get("sha256")
    except OSError:
        return False


def is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown} and {len(names) - 3} more"


def _not_a_run(folder: Path, option: str, reason: str) -> ResultError:
    return ResultError(f"{option} {folder} is a folder that does not hold a workbench run ({reason}); "
                       "name a new folder (nothing was changed)")


def is_run_folder(path: Path) -> bool:
    """A folder the workbench wrote, holding nothing else (``owned_files`` says why not)."""
    if not path.is_dir() or path.is_symlink():
        return False
    try:
        return bool(owned_files(path))
    except (ResultError, OSError):
        return False
