"""The results store: every analysis returns a ``Result`` that saves to a run folder
as JSON plus safetensors (no pickle, so opening a result never runs code), written
atomically, and loads back into the same object.

A run folder holds::

    result.json          format_version, analysis, config, data (the Result's JSON fields),
                         metrics (the bag of untyped Results), meta: provenance (model, seed,
                         git, versions, time), the mark ``"written_by": "workbench"`` and the manifest ``files``: the
                         sha256 and size of every other file the run wrote
    arrays.safetensors   the tensor fields by name (absent when the result has none)
    report.html          optional, written by ``workbench.report``

Only a folder holding nothing but what the workbench wrote is ever replaced (``run_folder``).

Loading validates a run: the schema of result.json (format version, the types of config,
data, metrics, meta and the array list), the arrays' checksum recorded at save time (runs
saved before checksums load without it), then the config and every field against their
annotations by the decoder of ``result_fields``; anything wrong is one ``ResultError`` line.
Format-1 runs (numbers in ``metrics``, tensors in ``arrays``) load through ``migrate_v1``.
``list_runs`` never raises: a bad folder is listed as ``analysis: "broken"`` with a reason.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .errors import ResultError, WorkbenchError
from .paths import folder_problem, runs_dir, user_path
from .result_fields import (FieldError, decode, decode_data, encode_data, hints_of, is_typed, json_type, migrate_v1,
                            plain_json, type_name)
from .run_folder import (ARRAYS_FILE, CHECKSUM_KEY, FILES_KEY, MARKER, MARKER_KEY, RESULT_FILE, SIZE_KEY,
                         check_run_target, clean_stale_saves, discard_temp, is_safe_name, manifest, move_into_place,
                         read_result_doc, sha256_file, temp_folder)
from .sections import Section
from .stats import Interval
from .provenance import git_commit, package_versions, provenance  # noqa: F401  (re-exported: analyses import them here)
from .run_folder import is_run_folder  # noqa: F401  (re-exported: callers import it from the results store)

FORMAT_VERSION = 2  # 2: typed fields under "data", tensors by field name; 1 (the metrics bag) loads through migrate_v1


@dataclass
class Result:
    """Base of every analysis result: a dataclass whose fields ARE its data.

    A typed Result declares its data as annotated fields (``Float[Tensor, "layer head"]``,
    numbers, strings, records such as ``HeadEffect`` or ``Interval``); ``save`` and
    ``load_result`` walk them by annotation (``workbench.result_fields``): tensors to
    safetensors, the rest to JSON, checked the same way both ways. ``config`` is the
    analysis's Config (annotate it with the Config class), ``meta`` the provenance,
    ``intervals`` each headline figure's interval.

    ``metrics`` and ``arrays`` are the untyped bag of Results not yet typed (and of format-1
    runs): a typed Result leaves them empty. Declare a typed Result ``@dataclass(kw_only=True)``
    (its fields need no defaults then; see docs/adding-an-analysis.md)."""

    analysis: ClassVar[str] = "result"
    config_cls: ClassVar[type | None] = None  # the bag Results' Config (a typed one annotates ``config``)
    v1_names: ClassVar[dict[str, str]] = {}  # field -> its format-1 key in metrics or arrays, where they differ

    config: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    # ----- what people read -------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The JSON summary the CLI prints with ``--json``: the JSON fields (the bag of an
        untyped Result), intervals last; subclasses may reshape it."""
        if is_typed(type(self)):
            data, _ = encode_data(self)
            out = {k: v for k, v in data.items() if k != "intervals"}
            if data.get("intervals"):
                out["intervals"] = data["intervals"]
        else:
            out = dict(self.metrics)
        if self.path is not None:
            out["run"] = str(self.path)
        return plain_json(out)

    def report_sections(self) -> list[Section]:
        """The sections its analysis's spec draws (``spec.figures``, the one figures door);
        without one, its numbers as one table."""
        from .spec_registry import get_spec

        try:
            figures = get_spec(self.analysis).figures
        except WorkbenchError:
            figures = None
        if figures is not None:
            return figures(self)
        values = encode_data(self)[0] if is_typed(type(self)) else plain_json(self.metrics)
        rows = [{"metric": k, "value": v} for k, v in values.items() if not isinstance(v, (list, dict))]
        return [Section(title=f"{self.analysis}: metrics", tables=[rows])]

    def set_interval(self, name: str, interval: Interval) -> None:
        """Store a figure's interval, where the report, the app and ``benchmarks/headlines.py``
        find it (an untyped Result also keeps it in its metrics, as format 1 did)."""
        self.intervals[name] = interval
        if not is_typed(type(self)):
            self.metrics.setdefault("intervals", {})[name] = interval.to_dict()

    # ----- saving -------------------------------------------------------------
    def default_run_name(self) -> str:
        model = str(self.meta.get("model") or "model").replace("/", "_")
        if len(model.encode()) > 120:  # a long local path: a folder name has 255 bytes at most
            import hashlib

            tail = model.encode()[-100:].decode("utf-8", "ignore")
            model = f"{hashlib.sha256(model.encode()).hexdigest()[:8]}-{tail}"
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return f"{self.analysis}-{model}-{stamp}"

    def save(self, path: str | os.PathLike | None = None, *, extra_files: dict[str, str | bytes] | None = None) -> Path:
        """Write the run folder atomically: everything goes into a temporary sibling
        folder, which is renamed into place only when complete. Returns the folder.
        An existing target must hold nothing but an earlier run (``check_run_target``);
        a killed save's stale leftovers beside it are cleaned first."""
        target = user_path(path) if path is not None else runs_dir() / self.default_run_name()
        check_run_target(target)
        bad = [name for name in extra_files or {} if not is_safe_name(name)]
        if bad:
            raise ValueError(f"extra_files must be plain file names other than {RESULT_FILE}: {bad}")
        self.document()  # a value that does not fit its field is refused before anything is written
        parent = target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            clean_stale_saves(parent)
            tmp = temp_folder(parent, target.name)
        except OSError as exc:
            raise ResultError(
                f"cannot write run folder {target}: {exc.strerror or exc}; choose a writable folder with --out or WORKBENCH_RUNS"
            ) from None
        try:
            self._write_into(tmp, extra_files or {})
            move_into_place(tmp, target)
        except OSError as exc:
            discard_temp(tmp)
            raise ResultError(f"cannot write run folder {target}: {exc.strerror or exc}; choose a writable folder") from None
        except BaseException:
            discard_temp(tmp)
            raise
        self.path = target
        return target

    def document(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What ``save`` writes: result.json (without its manifest) and the tensors by name,
        from the fields (for comparing two results: ``a.document()[0]["data"]``)."""
        try:
            data, tensors = encode_data(self)
        except FieldError as exc:
            raise ResultError(f"this {self.analysis} result does not fit {type(self).__name__}: {exc}") from None
        if is_typed(type(self)) and (self.metrics or self.arrays):
            raise ResultError(f"{type(self).__name__} is typed: its data goes in its fields, not in metrics or arrays")
        tensors |= self.arrays
        doc = {"format_version": FORMAT_VERSION, "analysis": self.analysis, "config": plain_json(self.config),
               "data": data, "metrics": plain_json(self.metrics), "meta": plain_json(self.meta),
               "arrays": sorted(tensors)}
        return doc, tensors

    def _write_into(self, folder: Path, extra_files: dict[str, str | bytes]) -> None:
        """The arrays and extra files first, result.json with the manifest of them last."""
        from safetensors.torch import save_file

        doc, tensors = self.document()
        if tensors:
            # a copy each: safetensors refuses tensors that share storage (views of one another)
            save_file({k: _as_tensor(v).detach().cpu().contiguous().clone() for k, v in tensors.items()},
                      str(folder / ARRAYS_FILE))
        for name, content in extra_files.items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(folder / name, mode) as fh:
                fh.write(content)
        files = manifest(folder)
        if ARRAYS_FILE in files:
            doc[CHECKSUM_KEY], doc[SIZE_KEY] = files[ARRAYS_FILE]["sha256"], files[ARRAYS_FILE]["bytes"]
        doc[MARKER_KEY], doc[FILES_KEY] = MARKER, files
        (folder / RESULT_FILE).write_text(json.dumps(doc, indent=2, allow_nan=False))

    # ----- loading ------------------------------------------------------------
    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """Reshape a format-1 run's bag before ``migrate_v1`` maps it onto the fields; most
        Results need only ``v1_names``."""
        return metrics, arrays

    def check(self) -> None:
        """Every field against its annotation (the code ``save`` runs) and the summary once,
        so a run that does not fit is refused on load in one ``ResultError``, not later on a page."""
        where = self.path / RESULT_FILE if self.path is not None else f"this {self.analysis} result"
        try:
            encode_data(self)
            self.summary()
        except FieldError as exc:
            raise ResultError(f"{where} does not fit {type(self).__name__}: {exc}; "
                              "the run folder is broken, delete it and re-run the analysis") from None
        except _READ_ERRORS as exc:
            raise ResultError(f"{where} does not fit {type(self).__name__}: its summary cannot be built "
                              f"({_brief(exc)}); the run folder is broken, delete it and re-run the analysis") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Result":
        """Load a run folder into this Result type (``load_result`` finds the type itself)."""
        return load_result(path, None if cls is Result else cls)


_READ_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError)


def _brief(exc: BaseException) -> str:
    """``Name: first line of the message`` (at most 160 characters), for one-line errors."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

CHEAP_CHECKSUM_BYTES = 32 << 20  # ``list_runs`` checks the sha256 of arrays files up to this size


def _check_arrays_file(folder: Path, doc: dict[str, Any], full: bool) -> None:
    """The arrays file is there and has the recorded size; with ``full`` (or when the
    file is small enough to hash in a blink), its sha256 too."""
    arr_path = folder / ARRAYS_FILE
    if not doc.get("arrays"):
        return
    if not arr_path.is_file():
        raise ResultError(f"run folder {folder} lacks {ARRAYS_FILE}; it is incomplete, re-run the analysis")
    size = doc.get(SIZE_KEY)
    if size is not None and arr_path.stat().st_size != size:
        raise ResultError(f"{arr_path} is corrupt: it has {arr_path.stat().st_size} bytes where {size} were saved; "
                          "delete the run folder and re-run the analysis")
    if (full or arr_path.stat().st_size <= CHEAP_CHECKSUM_BYTES) and doc.get(CHECKSUM_KEY) is not None:
        try:
            digest = sha256_file(arr_path)
        except OSError as exc:
            raise ResultError(f"{arr_path} cannot be read ({exc.strerror or type(exc).__name__}); check its permissions") from None
        if digest != doc[CHECKSUM_KEY]:
            raise ResultError(f"{arr_path} is corrupt: its sha256 differs from the one recorded when it was saved; "
                              "delete the run folder and re-run the analysis")


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.as_tensor(np.asarray(value))  # cpu: read back from JSON, on the CPU like every loaded tensor


def config_class(result_cls: type[Result]) -> type | None:
    """The Config class of a Result: its ``config`` annotation, else ``config_cls``."""
    hint = hints_of(result_cls).get("config")
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else result_cls.config_cls


def decode_config(config_cls: type | None, raw: Any) -> Any:
    """The Config from its JSON, each field decoded by its annotation (None always fits:
    older runs and optional knobs); old field names go through the Config's ``renamed``."""
    if config_cls is None or raw is None or not dataclasses.is_dataclass(config_cls):
        return raw
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    renamed = getattr(config_cls, "renamed", {})  # old field name -> new, so older runs still load
    hints = hints_of(config_cls)
    kwargs = {}
    for key, value in raw.items():
        key = renamed.get(key, key)
        if key not in names:
            continue
        try:
            value = None if value is None else decode(value, hints.get(key, Any), f"field '{key}'")
        except FieldError:
            raise FieldError(f"field '{key}' is {json_type(value)} ({json.dumps(value)[:40]}), "
                             f"not {type_name(hints[key])}") from None
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return config_cls(**kwargs)


def _read_arrays(folder: Path, doc: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The run's tensors, checked against the recorded checksum and the doc's list of names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    expected = doc.get("arrays") or []
    if not expected:
        return {}
    _check_arrays_file(folder, doc, full=True)
    arr_path = folder / ARRAYS_FILE
    try:
        arrays = load_file(str(arr_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ResultError(f"{arr_path} is corrupt ({type(exc).__name__}); delete the run folder and re-run the analysis") from None
    missing = set(expected) - set(arrays)
    if missing:
        raise ResultError(f"{arr_path} lacks arrays {sorted(missing)}; the run folder is corrupt, re-run the analysis")
    return arrays


def _untyped_v2(doc: dict[str, Any], result_cls: type) -> bool:
    """A format-2 run written while its class was still untyped (its numbers in ``metrics``,
    ``data`` holding at most the intervals): it migrates like a format-1 run."""
    return is_typed(result_cls) and bool(doc.get("metrics")) and not set(doc.get("data") or {}) - {"intervals"}


def load_result(path: str | os.PathLike, result_cls: type[Result] | None = None) -> Result:
    """Rebuild a saved result from its run folder, as ``result_cls`` or else the class its
    analysis's spec names; a missing or corrupt file is a one-line ``ResultError`` that
    says which file and what to do."""
    folder = user_path(path)
    if (problem := folder_problem(folder)) is not None:
        raise ResultError(f"run folder {folder} {problem}; list saved runs with `workbench runs`")
    doc = read_result_doc(folder)
    doc_path = folder / RESULT_FILE
    analysis = doc["analysis"]
    if result_cls is not None and analysis != result_cls.analysis:
        raise ResultError(f"{path} holds a '{analysis}' result, not '{result_cls.analysis}'; open it with load_result")
    result_cls = result_cls or _spec_result_class(analysis) or Result
    arrays = _read_arrays(folder, doc)
    metrics = doc.get("metrics") or {}
    if doc["format_version"] == 1 or _untyped_v2(doc, result_cls):
        metrics = {"intervals": (doc.get("data") or {}).get("intervals") or {}, **metrics}
        data, tensors = migrate_v1(result_cls, metrics, arrays)
    else:
        data, tensors = doc.get("data") or {}, arrays
    bag: dict[str, Any] = {} if is_typed(result_cls) else {"metrics": metrics, "arrays": arrays}
    try:
        config = decode_config(config_class(result_cls), doc.get("config"))
    except (TypeError, ValueError) as exc:
        raise ResultError(f"{doc_path} has a config that does not fit {result_cls.__name__}: {_brief(exc)}; "
                          "re-run the analysis") from None
    try:
        fields = decode_data(result_cls, data, tensors)
    except FieldError as exc:
        raise ResultError(f"{doc_path} does not fit {result_cls.__name__}: {exc}; "
                          "the run folder is broken, delete it and re-run the analysis") from None
    result = result_cls(config=config, meta=doc.get("meta") or {}, path=folder, **bag, **fields)
    result.check()
    return result


def _check_config_types(doc: dict[str, Any], doc_path: Path) -> None:
    """The config builds into its analysis's Config (when an installed analysis knows it)."""
    try:
        result_cls = _spec_result_class(doc["analysis"])
    except Exception:  # noqa: BLE001 - no installed spec to check against: list the run as it is
        return
    if result_cls is None:
        return
    try:
        decode_config(config_class(result_cls), doc.get("config"))
    except (TypeError, ValueError) as exc:
        raise ResultError(f"{doc_path} has a config that does not fit {result_cls.__name__}: {_brief(exc)}; "
                          "re-run the analysis") from None


def _spec_result_class(analysis: str) -> type[Result] | None:
    """The Result class of an installed analysis spec (the spec registry is the only door)."""
    from .spec_registry import result_class

    return result_class(analysis)


def list_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Saved runs under the runs folder, newest first, each as a small dict (path, analysis, model, created)."""
    base = user_path(root) if root is not None else runs_dir()
    if not base.is_dir():
        return []
    runs = []
    for doc_path in base.glob(f"*/{RESULT_FILE}"):
        folder = doc_path.parent
        if folder.name.startswith("."):
            continue
        try:
            doc = read_result_doc(folder)
            _check_arrays_file(folder, doc, full=False)
            _check_config_types(doc, folder / RESULT_FILE)
        except (ResultError, OSError) as exc:
            runs.append({"path": str(folder), "analysis": "broken", "model": None, "created": None,
                         "reason": str(exc)})
            continue
        meta = doc.get("meta") or {}
        runs.append(
            {
                "path": str(folder),
                "analysis": doc["analysis"],
                "model": meta.get("model"),
                "created": meta.get("created"),
                "reason": None,
            }
        )
    runs.sort(key=lambda r: r.get("created") or "", reverse=True)
    return runs
