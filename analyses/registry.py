"""The one registry of analyses that the CLI, the app and the results store read.
Adding an analysis is one module in ``analyses/`` plus one line here (auto-circuit's
``PruneAlgo`` registry is the model). Modules are imported lazily, so a slow import
(lxt, zennit) costs only the commands that use it."""
from __future__ import annotations

import importlib
from types import ModuleType

ANALYSES: dict[str, str] = {
    "ablation": "analyses.head_ablation",
    "circuit": "analyses.circuits",
    "reuse": "analyses.circuit_reuse",
    "retrieval": "analyses.retrieval_heads",
    "sinks": "analyses.attention_sinks",
    "icl": "analyses.icl_regression",
    "vhd": "analyses.vision_heads",
    "lrp": "analyses.lrp_saliency",
}


def get(name: str) -> ModuleType:
    """The analysis module registered under ``name``."""
    if name not in ANALYSES:
        raise KeyError(f"unknown analysis '{name}'; known: {', '.join(ANALYSES)}")
    return importlib.import_module(ANALYSES[name])


def available() -> dict[str, str]:
    """The registered analyses whose module exists in this checkout."""
    return {k: v for k, v in ANALYSES.items() if importlib.util.find_spec(v) is not None}


def import_all() -> None:
    """Import every available analysis (registers their Result classes)."""
    for module in available().values():
        importlib.import_module(module)
