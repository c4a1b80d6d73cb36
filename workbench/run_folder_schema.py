"""result.json of a run folder: its keys (the mark, the manifest of the files the run wrote)
and its schema, read and checked before anything trusts it (by ``workbench.run_folder`` and the
results store)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ResultError

RESULT_FILE = "result.json"
ARRAYS_FILE = "arrays.safetensors"
MARKER_KEY, MARKER = "written_by", "workbench"  # result.json's mark: the workbench wrote this folder
FILES_KEY = "files"  # name -> {"sha256", "bytes"} of every file of the run but result.json
CHECKSUM_KEY = "arrays_sha256"  # sha256 of arrays.safetensors (also in the manifest; older readers check this)
SIZE_KEY = "arrays_bytes"
PARTIAL_MARK = ".workbench-partial"  # inside a temporary folder while a save writes it: owner pid and host
KNOWN_FORMAT_VERSIONS = (1, 2)  # versions this workbench can read (1: metrics bag; 2: typed fields in "data")


def is_safe_name(name: Any) -> bool:
    """A plain file name inside the run folder (a manifest must not point outside it)."""
    return (isinstance(name, str) and name not in ("", ".", "..", RESULT_FILE, PARTIAL_MARK) and "/" not in name
            and "\\" not in name and "\0" not in name)


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
