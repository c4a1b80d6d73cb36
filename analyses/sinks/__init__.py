"""Attention sinks beyond the first token (ACT): the heads and tokens that have them,
massive activations at those tokens, and ACT's attention calibration chosen on a calibration
split and measured on a held-out split of two multiple-choice tasks (docs/sinks.md)."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import run
from .columns import HEAD_COLUMNS  # the head atlas's columns
from .config import SinksConfig
from .figures import headline, headline_figures, sinks_sections
from .result import SinksResult

SPEC = AnalysisSpec(
    head_columns=HEAD_COLUMNS,
    key="sinks",
    title="Attention sinks",
    help="Attention sinks beyond the first token (ACT), massive activations, and attention calibration.",
    config=SinksConfig,
    result=SinksResult,
    run=run,
    figures=sinks_sections,
    headline=headline,
    page_defaults={"n_calib": 8, "n_heldout": 16, "max_search": 2},
    description="ACT: a position is a sink when its column-mean attention (over the queries that see it) is over the "
                "threshold; calibration scales non-first sinks by beta. Heads, beta and threshold are chosen on each "
                "task's calibration split; accuracy before/after is measured on its held-out split.",
    headlines=(Headline("attention sinks (ACT)", ("sinks",), headline_figures),),
)
