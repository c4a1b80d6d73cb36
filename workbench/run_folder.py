"""Run folders on disk: which files the workbench wrote into one, whether a folder may be
replaced, and the atomic write through a hidden temporary sibling (cleaned up after a
killed save).

result.json carries a marker and a manifest of every other file the run wrote::

    "written_by": "workbench",
    "files": {"arrays.safetensors": {"sha256": "...", "bytes": 1234}, "report.html": {...}}

A folder may be replaced only when it holds nothing but what the workbench wrote: the
manifest's files, unchanged (a file the manifest lists may be missing: nothing is lost);
a run saved before manifests only when its result.json parses as a workbench result and
it holds nothing but the files that format wrote. Replacing deletes only those files, so a
file the workbench did not write is never deleted, even one that appears mid-save.

Every name is importable from here; the rooms are: result.json's keys and schema
(``run_folder_schema``), which files the workbench wrote (``run_folder_owned``), the atomic
write and the cleaning up after killed saves (``run_folder_saves``), and, here, the checks
before any work.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ResultError
from .paths import runs_dir, user_path
from .run_folder_owned import LEGACY_FILES, file_entry, is_run_folder, manifest, owned_files, sha256_file
from .run_folder_saves import STALE_SECONDS, clean_stale_saves, discard_temp, move_into_place, temp_folder
from .run_folder_schema import (ARRAYS_FILE, CHECKSUM_KEY, FILES_KEY, KNOWN_FORMAT_VERSIONS, MARKER, MARKER_KEY,
                                PARTIAL_MARK, RESULT_FILE, SIZE_KEY, check_doc, is_safe_name, json_type,
                                read_result_doc)

__all__ = ["RESULT_FILE", "ARRAYS_FILE", "MARKER_KEY", "MARKER", "FILES_KEY", "CHECKSUM_KEY", "SIZE_KEY",
           "LEGACY_FILES", "PARTIAL_MARK", "STALE_SECONDS", "KNOWN_FORMAT_VERSIONS", "sha256_file", "file_entry",
           "manifest", "is_safe_name", "owned_files", "is_run_folder", "check_run_target", "temp_folder",
           "move_into_place", "discard_temp", "clean_stale_saves", "json_type", "read_result_doc", "check_doc"]


# ----- checks before any work -------------------------------------------------------
def check_run_target(path: str | os.PathLike | None) -> None:
    """Refuse, before any work, an ``--out`` that would replace something the user made:
    it may name a new or empty folder, or an earlier run folder holding nothing but what
    the workbench wrote (replaced atomically); never the current folder or one above it.
    Its nearest existing parent must be a writable folder. ``None`` checks the runs folder
    the run would go to (``$WORKBENCH_RUNS``)."""
    if path is None:
        base = runs_dir()
        if base.exists() and not base.is_dir():
            raise ResultError(f"the runs folder {base} is a file, not a folder; set WORKBENCH_RUNS to a folder or pass --out")
        _check_writable(base, f"the runs folder {base}", "set WORKBENCH_RUNS to a writable folder or pass --out")
        return
    target = user_path(path)
    _check_not_above_here(target)
    if not target.exists() and not target.is_symlink():
        _check_writable(target.parent, f"run folder {target}", "name a folder elsewhere with --out")
        return
    if target.is_symlink() or not target.is_dir():
        raise ResultError(f"--out {target} is an existing file, not a run folder; name a new folder")
    try:
        owned_files(target)
    except OSError as exc:
        raise ResultError(f"--out {target} cannot be read ({exc.strerror or type(exc).__name__}); "
                          "name a new folder (nothing was changed)") from None
    _check_writable(target.parent, f"run folder {target}", "name a folder elsewhere with --out")


def _check_not_above_here(target: Path) -> None:
    """``--out .`` (or ``""``, ``..``, ``/``) would put the run in place of the folder the
    user works in: refused up front rather than failing after the analysis ran."""
    try:
        here, full = Path.cwd().resolve(), target.resolve()
    except (OSError, RuntimeError):  # no current folder, or a symlink loop: the later checks speak
        return
    if full == here or full in here.parents:
        where = "the current folder" if full == here else "a folder above the current one"
        raise ResultError(f"--out '{target}' names {where} ({full}); name a new folder for the run, "
                          "e.g. --out runs/my-run (nothing was changed)")


def _check_writable(folder: Path, what: str, fix: str) -> None:
    """The nearest existing ancestor of ``folder`` (itself included) is a writable folder."""
    probe = folder if str(folder) else Path(".")
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ResultError(f"cannot write {what}: {probe} is a file, not a folder; {fix}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ResultError(f"cannot write {what}: {probe} is not writable; {fix}")
