"""Attention sinks beyond the first token (ACT): the heads and tokens that have them,
massive activations at those tokens, and ACT's attention calibration before and after."""
from workbench.spec import AnalysisSpec

from .analysis import SinksConfig, SinksResult, run
from .figures import headline, sinks_sections

SPEC = AnalysisSpec(
    key="sinks",
    title="Attention sinks",
    help="Attention sinks beyond the first token (ACT), massive activations, and attention calibration.",
    config=SinksConfig,
    result=SinksResult,
    run=run,
    figures=sinks_sections,
    headline=headline,
    page_defaults={"n_calib": 8, "n_heldout": 8, "max_search": 2},
    description="ACT: a position is a sink when its column-mean attention (over the queries that see it) is over the "
                "threshold; calibration scales non-first sinks by beta.",
)
