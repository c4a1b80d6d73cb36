"""The one door to an analysis: an ``AnalysisSpec`` per analysis (auto-circuit's typed
``PruneAlgo`` registry is the model), found through the ``workbench.analyses`` entry-point
group, so the core never imports ``analyses/`` and another package can add its own.

A spec names the analysis once (registry key = command = run-folder prefix = page), holds
its ``Config`` and ``Result`` classes, its ``run`` and its figures. The CLI builds the
command's options from the Config's fields (``option()`` metadata: flag, help, range),
the app builds the page from one template, the report and the results store read the
spec. Nothing else needs to know an analysis exists.
"""
from __future__ import annotations

import importlib
import types
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

# re-exported: Configs and the CLI import these from the spec
from .config_fields import base_type, check_config, config_fields, flag_of, option  # noqa: F401
from .errors import InputError, WorkbenchError
from .sections import interval_sections  # noqa: F401  (re-exported: pages import it from the spec)

ENTRY_POINT_GROUP = "workbench.analyses"


@dataclass(frozen=True)
class Headline:
    """One README row: the command that makes it (arguments after ``workbench``, the
    command's defaults unless ``why`` says otherwise) and ``figures(result) -> [dict]``,
    each made by ``figure()``.
    ``benchmarks/headlines.py`` runs the command, reads the figures and writes them to
    ``docs/headlines.json``; the README's table is generated from that file."""

    label: str
    args: tuple[str, ...]
    figures: Callable[[Any], list[dict[str, Any]]]
    why: str = ""


def figure(text: str, value: float | None = None, *, interval: Any = None, n: int | None = None,
           split: str = "", fmt: str = ".3g") -> dict[str, Any]:
    """One headline figure: ``text`` says what it is, the README prints the value (``fmt``),
    its interval, n and split after it. With an ``Interval`` those come from it."""
    if interval is not None:
        value = interval.value if value is None else value
        n = interval.n if n is None else n
        split = split or interval.split
    return {"text": text, "value": value, "fmt": fmt,
            "interval": interval.to_dict() if interval is not None else None, "n": n, "split": split}


@dataclass(frozen=True)
class HeadColumn:
    """One per-head quantity an analysis contributes to the head atlas (``workbench atlas``).

    ``values(result)`` gives a ``[layer head]`` tensor from a saved Result (read through its
    typed properties), a dict of them (one column per key, named ``{name}_{key}``, e.g. one
    per task), or None when this run does not carry the quantity. ``direction`` is +1 when
    larger values mean more of the head's role, -1 when smaller (more negative) ones do (an
    ablation effect). ``threshold``, when given, is the value past which a head has the
    role (used to say whether a role is present in a model)."""

    name: str
    values: Callable[[Any], Any]
    unit: str = ""
    direction: int = 1
    description: str = ""
    threshold: float | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    """Everything the CLI, the app, the report and the results store know of an analysis.

    ``run(target, config, progress) -> Result``; ``target`` is what ``load_target`` returns
    (by default the model named by ``--model``; ``None`` for analyses that build their own).
    ``figures(result) -> list[report.Section]``: one function serves the app, the notebooks
    and the reports. ``headline(result) -> [(label, value)]``: the few numbers a page shows
    as tiles. ``extra_results``: other Result classes the analysis saves (older formats)."""

    key: str
    title: str
    help: str
    config: type
    result: type
    run: Callable[..., Any]
    figures: Callable[[Any], list] | None = None
    headline: Callable[[Any], list[tuple[str, Any]]] | None = None
    aliases: tuple[str, ...] = ()
    extra_results: tuple[type, ...] = ()
    needs_model: Callable[[Any], bool] | bool = True
    load_target: Callable[[Any, Any], Any] | None = None
    finish: Callable[[Any, Any, Any], dict[str, Any]] | None = None
    check_model: Callable[[Any, Any], None] | None = None
    estimate_bytes: Callable[[Any, Any], int] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    page_defaults: dict[str, Any] = field(default_factory=dict)
    page_extra: Callable[[Any], None] | None = None
    description: str = ""
    headlines: tuple[Headline, ...] = ()
    head_columns: tuple[HeadColumn, ...] = ()

    def __post_init__(self) -> None:
        """``spec.run`` is always the checked door (``workbench.checks.checked_run``): a Python
        caller gets the checks the command line makes."""
        from .checks import checked_run, register

        run = checked_run(self.run)
        object.__setattr__(self, "run", run)
        register(run, self)

    @property
    def result_names(self) -> tuple[str, ...]:
        """The ``analysis`` names this spec's results are saved under."""
        return tuple(cls.analysis for cls in (self.result, *self.extra_results))

    def sections(self, result: Any) -> list:
        """The result's report sections: the spec's figures, else the result's own."""
        sections = self.figures(result) if self.figures is not None else result.report_sections()
        return sections + interval_sections(result)

    def check_target(self, config: Any, target: Any) -> None:
        """The checks that need what the analysis runs on (``check_model``, then the memory
        estimate against the free memory), before any work; the CLI and the app both call it."""
        if self.check_model is not None:
            self.check_model(config, target)
        if self.estimate_bytes is not None:
            from .resources import check_memory

            check_memory(self.estimate_bytes(config, target), f"workbench {self.key}")

    def wants_model(self, config: Any) -> bool:
        return self.needs_model(config) if callable(self.needs_model) else bool(self.needs_model)


_SPECS: dict[str, AnalysisSpec] | None = None


def _specs_from(obj: Any, origin: str) -> list[AnalysisSpec]:
    """An entry point may name one spec, a list of specs, or a list of module names whose
    ``SPECS`` (or ``SPEC``) to take: the built-in registry is such a list."""
    if isinstance(obj, AnalysisSpec):
        return [obj]
    if isinstance(obj, types.ModuleType):
        found = getattr(obj, "SPECS", None) or [getattr(obj, "SPEC", None)]
        specs = [s for s in found if isinstance(s, AnalysisSpec)]
        if not specs:
            raise WorkbenchError(f"{origin}: module {obj.__name__} defines no SPEC; add SPEC = AnalysisSpec(...) to it")
        return specs
    if isinstance(obj, (list, tuple)):
        out: list[AnalysisSpec] = []
        for item in obj:
            out += _specs_from(importlib.import_module(item) if isinstance(item, str) else item, origin)
        return out
    raise WorkbenchError(f"{origin} is not an AnalysisSpec or a list of analysis modules")


def specs() -> dict[str, AnalysisSpec]:
    """Every installed analysis by key, in registration order (loaded once)."""
    global _SPECS
    if _SPECS is None:
        found: dict[str, AnalysisSpec] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            for spec in _specs_from(ep.load(), f"entry point {ep.name} = {ep.value}"):
                if spec.key in found:
                    raise WorkbenchError(f"two analyses are registered as '{spec.key}'; rename one")
                found[spec.key] = spec
        _SPECS = found
    return _SPECS


def get_spec(name: str) -> AnalysisSpec:
    """The spec for a key, alias or saved ``analysis`` name; a one-line error otherwise."""
    all_specs = specs()
    if name in all_specs:
        return all_specs[name]
    for spec in all_specs.values():
        if name in spec.aliases or name in spec.result_names:
            return spec
    raise InputError(f"unknown analysis '{name}'; known: {', '.join(all_specs)}")


def result_class(analysis: str) -> type | None:
    """The Result class saved under ``analysis``, or None when no installed spec has it."""
    for spec in specs().values():
        for cls in (spec.result, *spec.extra_results):
            if cls.analysis == analysis:
                return cls
    return None
