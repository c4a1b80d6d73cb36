"""Circuits: discover a circuit (edges between heads and MLPs) by EAP, EAP-IG, ACDC or path
patching and measure its faithfulness (``circuit``), and the IOI -> Colored Objects
circuit-reuse study with head classes and the intervention experiment (``reuse``).
The two share the discovery code and the head classes, so they live in one package."""
from workbench.spec import AnalysisSpec

from . import analysis, reuse
from .analysis import METHODS, TASKS, CircuitConfig, CircuitResult
from .figures import circuit_headline, circuit_sections, reuse_headline, reuse_sections
from .reuse import ReuseConfig, ReuseResult

CIRCUIT_SPEC = AnalysisSpec(
    key="circuit",
    title="Circuit discovery",
    help="Discover a circuit (edges between heads and MLPs) and measure its faithfulness.",
    config=CircuitConfig,
    result=CircuitResult,
    run=analysis.run,
    figures=circuit_sections,
    headline=circuit_headline,
    check_model=analysis.check_model,
    estimate_bytes=analysis.estimate_bytes,
    page_defaults={"n_prompts": 4, "ig_steps": 2, "batch_size": 4, "n_edges": 40},
    description="A circuit on IOI or Colored Objects by EAP, EAP-IG, ACDC or path patching; edges outside it carry "
                "their mean over the corrupt prompts, and faithfulness is the circuit's logit difference over the "
                "full model's.",
)

REUSE_SPEC = AnalysisSpec(
    key="reuse",
    title="Circuits",
    help="IOI vs Colored Objects: circuit overlap, head classes, and the intervention experiment.",
    config=ReuseConfig,
    result=ReuseResult,
    run=reuse.run,
    figures=reuse_sections,
    headline=reuse_headline,
    check_model=reuse.check_model,
    estimate_bytes=reuse.estimate_bytes,
    page_defaults={"n_prompts": 4, "ig_steps": 2, "batch_size": 4, "n_edges": 40},
    description="The IOI and Colored Objects circuits (EAP-IG), their head overlap, the head classes and the "
                "intervention experiment (Merullo et al. 2023); single-task circuits are on the circuit page.",
)

SPECS = [CIRCUIT_SPEC, REUSE_SPEC]

__all__ = ["SPECS", "CIRCUIT_SPEC", "REUSE_SPEC", "TASKS", "METHODS", "CircuitConfig", "CircuitResult",
           "ReuseConfig", "ReuseResult"]
