"""Circuits: discover a circuit (edges between heads and MLPs) by EAP, EAP-IG, ACDC or path
patching and measure its faithfulness (``circuit``), and the IOI -> Colored Objects
circuit-reuse study with head classes and the intervention experiment (``reuse``).
The two share the discovery code and the head classes, so they live in one package."""
from workbench.spec import AnalysisSpec, Headline

from . import analysis, hub, reuse
from .analysis import METHODS, TASKS, CircuitConfig, CircuitResult
from .figures import (circuit_headline, circuit_headline_figures, circuit_sections, reuse_headline,
                      reuse_headline_figures, reuse_sections)
from .reuse import ReuseConfig, ReuseResult

from .columns import CIRCUIT_COLUMNS, REUSE_COLUMNS  # noqa: E402  (the head atlas's columns)

CIRCUIT_SPEC = AnalysisSpec(
    head_columns=CIRCUIT_COLUMNS,
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
    page_defaults={"n_prompts": 4, "ig_steps": 2, "batch_size": 4, "n_val": 4, "n_test": 4, "sizes": "50,200,1000"},
    description="A circuit on IOI or Colored Objects by EAP, EAP-IG, ACDC or path patching. Scores come from the "
                "discovery prompts; faithfulness ((circuit − all ablated) / (full − all ablated), edges outside the "
                "circuit carrying the corrupt prompts' mean) is drawn against the edges kept on validation prompts, "
                "the default circuit is the smallest reaching the target there, and it is measured on test prompts.",
    headlines=(Headline(label="circuits: IOI faithfulness against edges kept (EAP, EAP-IG)", args=("circuit", "--task", "ioi"),
                        figures=circuit_headline_figures),),
)

REUSE_SPEC = AnalysisSpec(
    head_columns=REUSE_COLUMNS,
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
    load_target=hub.load_target,
    page_defaults={"n_prompts": 4, "ig_steps": 2, "batch_size": 4, "n_val": 4, "n_test": 4, "sizes": "50,200,1000",
                   "intervention_prompts": 16, "n_random": 2},
    description="The IOI and Colored Objects circuits (EAP-IG, each at the target faithfulness on validation prompts), "
                "their head overlap against random circuits of the same sizes, the head classes and the intervention "
                "experiment on test prompts (Merullo et al. 2023); single-task circuits are on the circuit page.",
    headlines=(Headline(label="circuit reuse (Merullo et al.): Colored Objects vs chance, overlap, intervention",
                        args=("reuse",), figures=reuse_headline_figures),),
)

SPECS = [CIRCUIT_SPEC, REUSE_SPEC]

__all__ = ["SPECS", "CIRCUIT_SPEC", "REUSE_SPEC", "TASKS", "METHODS", "CircuitConfig", "CircuitResult",
           "ReuseConfig", "ReuseResult"]
