"""Induction heads: per head, the attention from a repeated token to the token that
followed its first occurrence (and, beside it, the previous-token score). A whole small
analysis that gets its command, page and report section from this spec alone."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import InductionConfig, InductionResult, check_model, estimate_bytes, run
from .figures import headline, headline_figures, sections

from .columns import HEAD_COLUMNS  # noqa: E402  (the head atlas's columns)

SPEC = AnalysisSpec(
    head_columns=HEAD_COLUMNS,
    key="induction",
    title="Induction heads",
    help="Score every head's induction and previous-token attention on random token sequences repeated twice.",
    config=InductionConfig,
    result=InductionResult,
    run=run,
    figures=sections,
    headline=headline,
    check_model=check_model,
    estimate_bytes=estimate_bytes,
    page_defaults={"n_prompts": 8},
    headlines=(Headline("induction heads", ("induction",), headline_figures),),
    description="A head's induction score is its mean attention from each token of the second copy to the token "
                "after that token's first occurrence (TransformerLens's offset -(seq_len-1) stripe).",
)
