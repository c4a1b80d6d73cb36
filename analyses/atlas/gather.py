"""Reading the atlas's columns from saved runs (each head-level spec's ``head_columns``), and
``--fill``: running, at its page size, each head-level analysis that has no saved run."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from workbench.errors import WorkbenchError
from workbench.results import Result, list_runs, load_result
from workbench.spec import AnalysisSpec, HeadColumn, check_config

from .records import AtlasColumn, FilledRun

if TYPE_CHECKING:
    from workbench.models import Model


@dataclass
class Gathered:
    """Columns read from Results: values by name and each column's description."""

    values: dict[str, torch.Tensor]
    columns: list[AtlasColumn]


def _column_values(decl: HeadColumn, result: Result) -> dict[str, torch.Tensor]:
    """The columns one declaration gives for one Result: ``{full name: [layer head]}``."""
    try:
        got = decl.values(result)
    except (WorkbenchError, KeyError, AttributeError, TypeError, ValueError):
        return {}
    if got is None:
        return {}
    if isinstance(got, dict):
        # cpu: a result column, moved to the CPU right here
        return {f"{decl.name}_{k}": torch.as_tensor(v).detach().float().cpu() for k, v in got.items() if v is not None}
    return {decl.name: torch.as_tensor(got).detach().float().cpu()}  # cpu: a result column, moved to the CPU right here


def _candidates(spec: AnalysisSpec, model_name: str, runs: list[dict[str, Any]],
                extra: tuple[Result, ...]) -> list[Result | str]:
    """The Results of ``spec`` on the model, newest first: ``extra`` (unsaved), then saved run folders."""
    names = set(spec.result_names)
    candidates: list[Result | str] = [r for r in extra if r.analysis in names and r.meta.get("model") == model_name]
    candidates += [r["path"] for r in runs if r["analysis"] in names]
    return candidates


def _load(cand: Result | str) -> Result | None:
    """A candidate's Result (a saved run that does not load is skipped with a warning)."""
    if not isinstance(cand, str):
        return cand
    try:
        return load_result(cand)
    except WorkbenchError as exc:
        print(f"atlas: skipping {cand}: {exc}", file=sys.stderr)
        return None


def _column(decl: HeadColumn, name: str, spec: AnalysisSpec, result: Result) -> AtlasColumn:
    return AtlasColumn(name=name, analysis=spec.key, unit=decl.unit, direction=int(decl.direction),
                       threshold=decl.threshold, description=decl.description,
                       run=str(result.path) if result.path is not None else "", created=result.meta.get("created"))


def gather(model_name: str, specs_: list[AnalysisSpec], shape: tuple[int, ...] | None = None,
           extra: tuple[Result, ...] = ()) -> Gathered:
    """The newest value of every declared column from the saved runs on ``model_name``
    (``extra`` Results first, as if newest). A run whose grid is not ``shape`` is skipped."""
    runs = [r for r in list_runs() if r.get("model") == model_name]
    got = Gathered({}, [])
    for spec in specs_:
        for cand in _candidates(spec, model_name, runs, extra):
            result = _load(cand)
            if result is None:
                continue
            for decl in spec.head_columns:
                for name, grid in _column_values(decl, result).items():
                    if name in got.values or grid.ndim != 2 or (shape is not None and tuple(grid.shape) != tuple(shape)):
                        continue
                    if shape is None:
                        shape = tuple(grid.shape)
                    got.values[name] = grid
                    got.columns.append(_column(decl, name, spec, result))
    return got


def fill_missing(model: Model, specs_: list[AnalysisSpec], have: set[str], seed: int,
                 progress: bool) -> list[FilledRun]:
    """Run, at its page size, every head-level analysis with no saved run on ``model``; save each."""
    done = []
    for spec in specs_:
        if spec.key in have:
            continue
        fields = {f.name for f in dataclasses.fields(spec.config)}
        values = {k: v for k, v in spec.page_defaults.items() if k in fields}
        if "seed" in fields:
            values["seed"] = seed
        config = spec.config(**values)
        check_config(config)
        spec.check_target(config, model)
        if progress:
            print(f"atlas --fill: running {spec.key} with {values}", file=sys.stderr, flush=True)
        result = spec.run(model, config, progress=progress)
        path = result.save()
        done.append(FilledRun(analysis=spec.key, settings={k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in values.items()}, run=str(path)))
    return done
