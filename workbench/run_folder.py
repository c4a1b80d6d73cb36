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
"""
from __future__ import annotations

import hashlib
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

from .errors import ResultError
from .paths import runs_dir, user_path

RESULT_FILE = "result.json"
ARRAYS_FILE = "arrays.safetensors"
MARKER_KEY, MARKER = "written_by", "workbench"  # result.json's mark: the workbench wrote this folder
FILES_KEY = "files"  # name -> {"sha256", "bytes"} of every file of the run but result.json
CHECKSUM_KEY = "arrays_sha256"  # sha256 of arrays.safetensors (also in the manifest; older readers check this)
SIZE_KEY = "arrays_bytes"
# every file a run saved before manifests could hold: result, arrays, ablation's report, the atlas tables
LEGACY_FILES = frozenset({RESULT_FILE, ARRAYS_FILE, "report.html", "atlas.csv", "atlas_columns.csv", "atlas.parquet"})
PARTIAL_MARK = ".workbench-partial"  # inside a temporary folder while a save writes it: owner pid and host
STALE_SECONDS = 3600  # a temporary folder this old is stale whoever owns it (a save takes seconds)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")


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


def is_safe_name(name: Any) -> bool:
    """A plain file name inside the run folder (a manifest must not point outside it)."""
    return (isinstance(name, str) and name not in ("", ".", "..", RESULT_FILE, PARTIAL_MARK) and "/" not in name
            and "\\" not in name and "\0" not in name)


# ----- what the workbench wrote -----------------------------------------------------
def owned_files(folder: Path, option: str = "--out") -> set[str]:
    """The names of the files the workbench wrote in ``folder`` (result.json included; empty
    for an empty folder), or a ``ResultError`` naming the first thing it did not write."""
    entries = {p.name: p for p in folder.iterdir()}
    if not entries:
        return set()
    if RESULT_FILE not in entries or not _is_plain_file(entries[RESULT_FILE]):
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
    if not _is_plain_file(path):
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


def _is_plain_file(path: Path) -> bool:
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


# ----- the atomic write -------------------------------------------------------------
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


# ----- leftovers of killed saves --------------------------------------------------------
def clean_stale_saves(parent: Path) -> None:
    """Hidden temporary folders beside run folders, left by a save that was killed: a
    ``.tmp-`` folder is deleted, an ``.old-`` folder (an earlier run moved aside) is put back
    when its run folder is missing, else its files are deleted. Only stale ones (owner not
    running on this host, or older than an hour), and only what the workbench wrote."""
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(".") and _TEMP_NAME.match(p.name)]
    except OSError:
        return
    for folder in candidates:
        try:
            _clean_one(folder, _TEMP_NAME.match(folder.name))
        except OSError:
            continue  # another process got there first, or it is not ours to touch


def _clean_one(folder: Path, match: re.Match) -> None:
    if not folder.is_dir() or folder.is_symlink():
        return
    pid = int(match["pid"]) if match["pid"] else None
    if match["kind"] == "tmp":
        mark = _read_mark(folder)
        if mark is not None and _is_stale(folder, mark.get("pid"), mark.get("host")):
            _remove_files(folder, {p.name for p in folder.iterdir() if _is_plain_file(p)})
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
    if not _is_plain_file(mark):
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


# ----- result.json's schema (read here and by the results store) -------------------
KNOWN_FORMAT_VERSIONS = (1, 2)  # versions this workbench can read (1: metrics bag; 2: typed fields in "data")


def json_type(value: Any) -> str:
    """How a JSON value reads in an error message (``a string``, ``a number``, ...)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_result_doc(folder: Path) -> dict[str, Any]:
    """result.json of a run folder, parsed and schema-checked (no arrays read): a
    ``ResultError`` naming the file and what is wrong, else the document."""
    doc_path = folder / RESULT_FILE
    if not doc_path.is_file():
        raise ResultError(f"run folder {folder} has no {RESULT_FILE}; it is incomplete or not a run folder, re-run the analysis")
    try:
        doc = json.loads(doc_path.read_text(), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ResultError(f"{doc_path} is corrupt ({type(exc).__name__}); delete the run folder and re-run the analysis") from None
    except OSError as exc:
        raise ResultError(f"{doc_path} cannot be read ({exc.strerror or type(exc).__name__}); check its permissions") from None
    check_doc(doc, doc_path)
    return doc


def check_doc(doc: Any, doc_path: Path | str = RESULT_FILE) -> None:
    """The schema of result.json: a ``ResultError`` for the first thing of the wrong type."""
    def bad(what: str) -> ResultError:
        return ResultError(f"{doc_path} is corrupt: {what}; delete the run folder and re-run the analysis")

    if not isinstance(doc, dict):
        raise bad(f"it holds {json_type(doc)}, not an object")
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad(f"format_version is {json_type(version)}, not a number")
    if version not in KNOWN_FORMAT_VERSIONS:
        raise ResultError(f"{doc_path} has format_version {version}, which this workbench cannot read (it reads "
                          f"{', '.join(map(str, KNOWN_FORMAT_VERSIONS))}); update the workbench or re-run the analysis")
    analysis = doc.get("analysis")
    if not isinstance(analysis, str) or not analysis.strip():
        raise bad(f"analysis is {json_type(analysis)}, not a name")
    for key, allow_null in (("config", True), ("metrics", False), ("meta", False), ("data", False)):
        value = doc.get(key)
        if key not in doc or (value is None and allow_null):
            continue
        if not isinstance(value, dict):
            raise bad(f"{key} is {json_type(value)}, not an object")
    arrays = doc.get("arrays", [])
    if not isinstance(arrays, list) or not all(isinstance(a, str) for a in arrays):
        raise bad("arrays is not a list of names")
    meta = doc.get("meta") or {}
    for key in ("model", "created"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"meta.{key} is {json_type(meta[key])}, not a string")
    checksum = doc.get(CHECKSUM_KEY)
    if checksum is not None and not _is_sha256(checksum):
        raise bad(f"{CHECKSUM_KEY} is not a sha256 hex digest")
    size = doc.get(SIZE_KEY)
    if size is not None and not _is_byte_count(size):
        raise bad(f"{SIZE_KEY} is not a byte count")
    _check_manifest(doc, bad)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_byte_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_manifest(doc: dict[str, Any], bad: Any) -> None:
    """The mark and the manifest of the files the run wrote (runs saved before them have neither)."""
    if MARKER_KEY in doc and doc[MARKER_KEY] != MARKER:
        raise bad(f"{MARKER_KEY} is {json.dumps(doc[MARKER_KEY])[:40]}, not \"{MARKER}\"")
    if FILES_KEY not in doc:
        return
    files = doc[FILES_KEY]
    if not isinstance(files, dict):
        raise bad(f"{FILES_KEY} is {json_type(files)}, not an object")
    for name, entry in files.items():
        if not is_safe_name(name):
            raise bad(f"{FILES_KEY} names {json.dumps(name)[:60]}, which is not a file of the run folder")
        if not isinstance(entry, dict) or not _is_sha256(entry.get("sha256")) or not _is_byte_count(entry.get("bytes")):
            raise bad(f"{FILES_KEY}.{name} is not a sha256 and a byte count")
