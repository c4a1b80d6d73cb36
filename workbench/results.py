"""The results store: every analysis returns a ``Result`` that saves to a run folder
as JSON plus safetensors (no pickle, so opening a result never runs code), written
atomically, and loads back into the same object.

A run folder holds::

    result.json          analysis, config, metrics, provenance (model, seed, git, versions, time),
                         the mark ``"written_by": "workbench"`` and the manifest ``files``: the
                         sha256 and size of every other file the run wrote
    arrays.safetensors   named tensors (absent when the result has none)
    report.html          optional, written by ``workbench.report``

Only a folder holding nothing but what the workbench wrote is ever replaced (``run_folder``).

Loading validates a run: the schema of result.json (format version, the types of config,
metrics, meta and the array list, the config fields against the Config's annotations),
the arrays' checksum recorded at save time (runs saved before checksums load without
it), and every typed property of the Result; anything wrong is one ``ResultError`` line.
``list_runs`` never raises: a bad folder is listed as ``analysis: "broken"`` with a reason.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .errors import ResultError, WorkbenchError
from .paths import folder_problem, runs_dir, user_path
from .run_folder import (ARRAYS_FILE, CHECKSUM_KEY, FILES_KEY, MARKER, MARKER_KEY, RESULT_FILE, SIZE_KEY,
                         check_run_target, clean_stale_saves, discard_temp, is_safe_name, manifest, move_into_place,
                         json_type, read_result_doc, sha256_file, temp_folder)
from .run_folder import is_run_folder  # noqa: F401  (re-exported: callers import it from the results store)

FORMAT_VERSION = 1  # the manifest is an addition older readers ignore: no new version

_RESULT_CLASSES: dict[str, type["Result"]] = {}


def register_result(cls: type["Result"]) -> type["Result"]:
    """Class decorator: make ``load_result`` able to rebuild this result type by its ``analysis`` name."""
    _RESULT_CLASSES[cls.analysis] = cls
    return cls


def _jsonable(value: Any) -> Any:
    """Plain JSON values from numpy / torch scalars, tuples, paths and dataclasses."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def git_commit() -> str | None:
    """The workbench checkout's commit, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a result depends on."""
    names = ["torch", "transformers", "transformer-lens", "nnsight", "numpy", "safetensors", "lxt", "zennit", "triton"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def provenance(model: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """What a reader needs to reproduce a run: model, seed, commit, versions, time, command line."""
    return {
        "model": model,
        "seed": seed,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


@dataclass
class Result:
    """Base of every analysis result.

    ``config``: the analysis's config dataclass; ``metrics``: plain numbers, lists and
    strings (what ``--json`` prints); ``arrays``: named tensors (grids, maps, curves);
    ``meta``: provenance. Subclasses set ``analysis`` and ``config_cls`` and are
    decorated with ``@register_result``.
    """

    analysis: ClassVar[str] = "result"
    config_cls: ClassVar[type | None] = None

    config: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    # ----- what people read -------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The JSON summary the CLI prints with ``--json``; subclasses may reshape it."""
        out = dict(self.metrics)
        if self.path is not None:
            out["run"] = str(self.path)
        return _jsonable(out)

    def report_sections(self) -> list:
        """Sections for HTML reports (``workbench.report``); analyses override this with
        their figures. The base shows the metrics as a table."""
        from .report import Section

        rows = [{"metric": k, "value": v} for k, v in _jsonable(self.metrics).items() if not isinstance(v, (list, dict))]
        return [Section(title=f"{self.analysis}: metrics", tables=[rows])]

    # ----- intervals ----------------------------------------------------------
    def set_interval(self, name: str, interval: Any) -> None:
        """Store a figure's interval (``workbench.stats.Interval``) under ``metrics["intervals"]``,
        where the report, the app and ``benchmarks/headlines.py`` find it."""
        self.metrics.setdefault("intervals", {})[name] = interval.to_dict()

    @property
    def intervals(self) -> dict[str, Any]:
        """Every stored interval by figure name, as ``workbench.stats.Interval``."""
        from .stats import Interval

        return {k: Interval.from_dict(v) for k, v in (self.metrics.get("intervals") or {}).items()}

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

    def _write_into(self, folder: Path, extra_files: dict[str, str | bytes]) -> None:
        """The arrays and extra files first, result.json with the manifest of them last."""
        from safetensors.torch import save_file

        doc = {
            "format_version": FORMAT_VERSION,
            "analysis": self.analysis,
            "config": _jsonable(self.config),
            "metrics": _jsonable(self.metrics),
            "meta": _jsonable(self.meta),
            "arrays": sorted(self.arrays),
        }
        if self.arrays:
            # a copy each: safetensors refuses tensors that share storage (views of one another)
            tensors = {k: _as_tensor(v).detach().cpu().contiguous().clone() for k, v in self.arrays.items()}
            save_file(tensors, str(folder / ARRAYS_FILE))
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
    def check(self) -> None:
        """Read every typed property and the summary once, so a run whose metrics or
        arrays lack a key or hold the wrong type is refused on load (one ``ResultError``)
        rather than crashing a page or a report later. Subclasses may check more."""
        where = self.path / RESULT_FILE if self.path is not None else f"this {self.analysis} result"
        for name in _property_names(type(self)):
            try:
                value = getattr(self, name)
            except WorkbenchError:  # the property's own one-line refusal (not for this kind of run)
                continue
            except _READ_ERRORS as exc:
                raise ResultError(f"{where} does not fit {type(self).__name__}: its '{name}' cannot be read "
                                  f"({_brief(exc)}); the run folder is broken, delete it and re-run the analysis") from None
            expected = _return_annotation(type(self), name)
            if expected is not None and not _value_fits(value, expected):
                raise ResultError(f"{where} does not fit {type(self).__name__}: its '{name}' is not "
                                  f"{_type_name(expected)}; the run folder is broken, delete it and re-run the analysis")
        try:
            self.summary()
        except _READ_ERRORS as exc:
            raise ResultError(f"{where} does not fit {type(self).__name__}: its summary cannot be built "
                              f"({_brief(exc)}); the run folder is broken, delete it and re-run the analysis") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Result":
        """Load a run folder back into its result type (``load_result`` for any type)."""
        result = load_result(path)
        if cls is not Result and not isinstance(result, cls):
            raise ResultError(f"{path} holds a '{result.analysis}' result, not '{cls.analysis}'; open it with load_result")
        return result


_READ_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError)


def _brief(exc: BaseException) -> str:
    """``Name: first line of the message`` (at most 160 characters), for one-line errors."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _property_names(cls: type) -> list[str]:
    """The ``@property`` accessors a Result subclass defines (the base defines none)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Result or not issubclass(klass, Result):
            continue
        names += [n for n, v in vars(klass).items() if isinstance(v, property) and n not in names]
    return names


def _return_annotation(cls: type, name: str) -> Any:
    """The return annotation of property ``name``, or None when it cannot be resolved."""
    prop = getattr(cls, name, None)
    fget = getattr(prop, "fget", None)
    try:
        return typing.get_type_hints(fget).get("return") if fget is not None else None
    except Exception:  # noqa: BLE001 - an unresolvable annotation: no check
        return None


def _type_name(annotation: Any) -> str:
    if typing.get_args(annotation) or not hasattr(annotation, "__name__"):
        return str(annotation).replace("typing.", "").replace("torch.", "")
    return annotation.__name__


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.number)) or (isinstance(value, np.ndarray) and value.size == 1)


def _value_fits(value: Any, annotation: Any) -> bool:
    """A loose check of a property's value against its return annotation: scalars,
    strings, tensors and containers (list elements too); anything else passes."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_value_fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation in (int, float):
        return _is_number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is torch.Tensor:
        return isinstance(value, torch.Tensor)
    if annotation in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        elems = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return len(set(elems)) != 1 or all(_value_fits(v, elems[0]) for v in value)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    return True



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


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value can stand for a config field of this annotation (None always
    can: older runs and optional knobs); unknown annotations accept anything."""
    if value is None or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, a) for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path):
        return isinstance(value, str)
    if annotation is tuple or origin is tuple or annotation is list or origin is list:
        if not isinstance(value, list):
            return False
        elems = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return len(set(elems)) != 1 or all(_fits(v, elems[0]) for v in value)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.as_tensor(np.asarray(value))


def _build_config(config_cls: type | None, raw: Any) -> Any:
    if config_cls is None or raw is None or not dataclasses.is_dataclass(config_cls):
        return raw
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    renamed = getattr(config_cls, "renamed", {})  # old field name -> new, so older runs still load
    raw = {renamed.get(k, k): v for k, v in raw.items()}
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: skip the type check
        hints = {}
    for k, v in raw.items():
        if k in names and k in hints and not _fits(v, hints[k]):
            raise TypeError(f"field '{k}' is {json_type(v)} ({json.dumps(v)[:40]}), not {getattr(hints[k], '__name__', hints[k])}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in names}
    return config_cls(**kwargs)


def load_result(path: str | os.PathLike) -> Result:
    """Rebuild any saved result from its run folder; a missing or corrupt file is a
    one-line ``ResultError`` that says which file and what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = user_path(path)
    if (problem := folder_problem(folder)) is not None:
        raise ResultError(f"run folder {folder} {problem}; list saved runs with `workbench runs`")
    doc = read_result_doc(folder)
    doc_path = folder / RESULT_FILE
    analysis = doc["analysis"]
    result_cls = _RESULT_CLASSES.get(analysis) or _spec_result_class(analysis) or Result
    arrays: dict[str, torch.Tensor] = {}
    expected = doc.get("arrays") or []
    if expected:
        _check_arrays_file(folder, doc, full=True)
        arr_path = folder / ARRAYS_FILE
        try:
            arrays = load_file(str(arr_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ResultError(f"{arr_path} is corrupt ({type(exc).__name__}); delete the run folder and re-run the analysis") from None
        missing = set(expected) - set(arrays)
        if missing:
            raise ResultError(f"{arr_path} lacks arrays {sorted(missing)}; the run folder is corrupt, re-run the analysis")
    try:
        config = _build_config(result_cls.config_cls, doc.get("config"))
    except (TypeError, ValueError) as exc:
        raise ResultError(f"{doc_path} has a config that does not fit {result_cls.__name__}: {_brief(exc)}; "
                          "re-run the analysis") from None
    result = result_cls(config=config, metrics=doc.get("metrics") or {}, arrays=arrays, meta=doc.get("meta") or {},
                        path=folder)
    result.check()
    return result


def _check_config_types(doc: dict[str, Any], doc_path: Path) -> None:
    """The config builds into its analysis's Config (when an installed analysis knows it)."""
    try:
        result_cls = _RESULT_CLASSES.get(doc["analysis"]) or _spec_result_class(doc["analysis"])
    except Exception:  # noqa: BLE001 - no installed spec to check against: list the run as it is
        return
    if result_cls is None:
        return
    try:
        _build_config(result_cls.config_cls, doc.get("config"))
    except (TypeError, ValueError) as exc:
        raise ResultError(f"{doc_path} has a config that does not fit {result_cls.__name__}: {_brief(exc)}; "
                          "re-run the analysis") from None


def _spec_result_class(analysis: str) -> type[Result] | None:
    """The Result class of an installed analysis spec (the spec registry is the only door)."""
    from .spec import result_class

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
