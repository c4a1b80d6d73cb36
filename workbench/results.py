"""The results store: every analysis returns a ``Result`` that saves to a run folder
as JSON plus safetensors (no pickle, so opening a result never runs code), written
atomically, and loads back into the same object.

A run folder holds::

    result.json          analysis, config, metrics, provenance (model, seed, git, versions, time)
    arrays.safetensors   named tensors (absent when the result has none)
    report.html          optional, written by ``workbench.report``
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .errors import ResultError
from .paths import runs_dir

RESULT_FILE = "result.json"
ARRAYS_FILE = "arrays.safetensors"
FORMAT_VERSION = 1

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

    # ----- saving -------------------------------------------------------------
    def default_run_name(self) -> str:
        model = str(self.meta.get("model") or "model").replace("/", "_")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return f"{self.analysis}-{model}-{stamp}"

    def save(self, path: str | os.PathLike | None = None, *, extra_files: dict[str, str | bytes] | None = None) -> Path:
        """Write the run folder atomically: everything goes into a temporary sibling
        folder, which is renamed into place only when complete. Returns the folder.
        An existing target must be an earlier run folder (``check_run_target``)."""
        target = Path(path) if path is not None else runs_dir() / self.default_run_name()
        check_run_target(target)
        parent = target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        except OSError as exc:
            raise ResultError(
                f"cannot write run folder {target}: {exc.strerror or exc}; choose a writable folder with --out or WORKBENCH_RUNS"
            ) from None
        try:
            self._write_into(tmp, extra_files or {})
            if target.exists():
                old = parent / f".{target.name}.old-{os.getpid()}"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ResultError(f"cannot write run folder {target}: {exc.strerror or exc}; choose a writable folder") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = target
        return target

    def _write_into(self, folder: Path, extra_files: dict[str, str | bytes]) -> None:
        from safetensors.torch import save_file

        doc = {
            "format_version": FORMAT_VERSION,
            "analysis": self.analysis,
            "config": _jsonable(self.config),
            "metrics": _jsonable(self.metrics),
            "meta": _jsonable(self.meta),
            "arrays": sorted(self.arrays),
        }
        (folder / RESULT_FILE).write_text(json.dumps(doc, indent=2, allow_nan=False))
        if self.arrays:
            tensors = {k: _as_tensor(v).contiguous() for k, v in self.arrays.items()}
            save_file(tensors, str(folder / ARRAYS_FILE))
        for name, content in extra_files.items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(folder / name, mode) as fh:
                fh.write(content)

    # ----- loading ------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Result":
        """Load a run folder back into its result type (``load_result`` for any type)."""
        result = load_result(path)
        if cls is not Result and not isinstance(result, cls):
            raise ResultError(f"{path} holds a '{result.analysis}' result, not '{cls.analysis}'; open it with load_result")
        return result


def is_run_folder(path: Path) -> bool:
    """A folder the workbench wrote: it holds ``result.json`` and nothing but run files."""
    if not path.is_dir() or not (path / RESULT_FILE).is_file():
        return False
    return all(p.name in (RESULT_FILE, ARRAYS_FILE) or p.suffix in (".html", ".json", ".png") for p in path.iterdir())


def check_run_target(path: str | os.PathLike | None) -> None:
    """Refuse, before any work, an ``--out`` that would replace something the user made:
    it may name a new or empty folder, or an earlier run folder (replaced atomically)."""
    if path is None:
        return
    target = Path(path)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise ResultError(f"--out {target} is an existing file, not a run folder; name a new folder")
    if any(target.iterdir()) and not is_run_folder(target):
        raise ResultError(f"--out {target} is a folder that does not hold a workbench run; "
                          "name a new folder (nothing was changed)")


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
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in names}
    return config_cls(**kwargs)


def load_result(path: str | os.PathLike) -> Result:
    """Rebuild any saved result from its run folder; a missing or corrupt file is a
    one-line ``ResultError`` that says which file and what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise ResultError(f"run folder {folder} does not exist; list saved runs with `workbench runs`")
    doc_path = folder / RESULT_FILE
    if not doc_path.is_file():
        raise ResultError(f"run folder {folder} has no {RESULT_FILE}; it is incomplete or not a run folder, re-run the analysis")
    try:
        doc = json.loads(doc_path.read_text())
        analysis = doc["analysis"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ResultError(f"{doc_path} is corrupt ({type(exc).__name__}); delete the run folder and re-run the analysis") from None
    result_cls = _RESULT_CLASSES.get(analysis) or _spec_result_class(analysis) or Result
    arrays: dict[str, torch.Tensor] = {}
    expected = doc.get("arrays") or []
    if expected:
        arr_path = folder / ARRAYS_FILE
        if not arr_path.is_file():
            raise ResultError(f"run folder {folder} lacks {ARRAYS_FILE}; it is incomplete, re-run the analysis")
        try:
            arrays = load_file(str(arr_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ResultError(f"{arr_path} is corrupt ({type(exc).__name__}); delete the run folder and re-run the analysis") from None
        missing = set(expected) - set(arrays)
        if missing:
            raise ResultError(f"{arr_path} lacks arrays {sorted(missing)}; the run folder is corrupt, re-run the analysis")
    try:
        config = _build_config(result_cls.config_cls, doc.get("config"))
    except TypeError as exc:
        raise ResultError(f"{doc_path} has a config that does not fit {result_cls.__name__}: {exc}; re-run the analysis") from None
    return result_cls(config=config, metrics=doc.get("metrics") or {}, arrays=arrays, meta=doc.get("meta") or {}, path=folder)


def _spec_result_class(analysis: str) -> type[Result] | None:
    """The Result class of an installed analysis spec (the spec registry is the only door)."""
    from .spec import result_class

    return result_class(analysis)


def list_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Saved runs under the runs folder, newest first, each as a small dict (path, analysis, model, created)."""
    base = Path(root) if root is not None else runs_dir()
    if not base.is_dir():
        return []
    runs = []
    for doc_path in base.glob(f"*/{RESULT_FILE}"):
        if doc_path.parent.name.startswith("."):
            continue
        try:
            doc = json.loads(doc_path.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            runs.append({"path": str(doc_path.parent), "analysis": "corrupt", "model": None, "created": None})
            continue
        meta = doc.get("meta") or {}
        runs.append(
            {
                "path": str(doc_path.parent),
                "analysis": doc.get("analysis"),
                "model": meta.get("model"),
                "created": meta.get("created"),
            }
        )
    runs.sort(key=lambda r: r.get("created") or "", reverse=True)
    return runs
