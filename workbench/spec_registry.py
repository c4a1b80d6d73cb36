"""The registry of installed analyses: every ``AnalysisSpec`` found through the
``workbench.analyses`` entry-point group, by key. It sits below ``spec`` and imports nothing
of the workbench but its errors, so the results store can find a saved run's Result class
without a circle (spec -> checks -> results -> here)."""
from __future__ import annotations

import importlib
import types
from importlib import metadata
from typing import Any

from .errors import InputError, WorkbenchError

ENTRY_POINT_GROUP = "workbench.analyses"


def _is_spec(obj: Any) -> bool:
    """An ``AnalysisSpec`` (known by its class name: this module may not import ``spec``)."""
    return type(obj).__name__ == "AnalysisSpec" and hasattr(obj, "key") and hasattr(obj, "result")


_SPECS: dict[str, Any] | None = None


def _specs_from(obj: Any, origin: str) -> list[Any]:
    """An entry point may name one spec, a list of specs, or a list of module names whose
    ``SPECS`` (or ``SPEC``) to take: the built-in registry is such a list."""
    if _is_spec(obj):
        return [obj]
    if isinstance(obj, types.ModuleType):
        found = getattr(obj, "SPECS", None) or [getattr(obj, "SPEC", None)]
        specs = [s for s in found if _is_spec(s)]
        if not specs:
            raise WorkbenchError(f"{origin}: module {obj.__name__} defines no SPEC; add SPEC = AnalysisSpec(...) to it")
        return specs
    if isinstance(obj, (list, tuple)):
        out: list[Any] = []
        for item in obj:
            out += _specs_from(importlib.import_module(item) if isinstance(item, str) else item, origin)
        return out
    raise WorkbenchError(f"{origin} is not an AnalysisSpec or a list of analysis modules")


def specs() -> dict[str, Any]:
    """Every installed analysis by key, in registration order (loaded once)."""
    global _SPECS
    if _SPECS is None:
        found: dict[str, Any] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            for spec in _specs_from(ep.load(), f"entry point {ep.name} = {ep.value}"):
                if spec.key in found:
                    raise WorkbenchError(f"two analyses are registered as '{spec.key}'; rename one")
                found[spec.key] = spec
        _SPECS = found
    return _SPECS


def get_spec(name: str) -> Any:
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
