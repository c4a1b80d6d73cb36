"""QK attribution: why a head attends where it does. One head's pre-softmax scores split
exactly into (query component, key component) pairs, and Q-/K-/V-composition scores of
every pair of heads from the weights alone."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import QKConfig, QKResult, check_model, estimate_bytes, run
from .columns import HEAD_COLUMNS
from .figures import headline, headline_figures, sections

SPEC = AnalysisSpec(
    key="qk",
    title="QK attribution",
    help="Split one head's attention scores into (query source, key source) pairs; composition scores from the weights.",
    config=QKConfig,
    result=QKResult,
    run=run,
    figures=sections,
    headline=headline,
    check_model=check_model,
    estimate_bytes=estimate_bytes,
    head_columns=HEAD_COLUMNS,
    page_defaults={"n_prompts": 4},
    headlines=(Headline("QK attribution: the K-composition mechanism of induction", ("qk", "--head", "L18H6", "--n", "32"),
                        headline_figures, why="L18H6 is an induction head of SmolLM2 (its attended key is the "
                        "induction target on 0.76 of second-copy tokens); --n 32 gives 16 held-out prompts"),),
    description="With the norm's scale frozen at its measured value and rotary fixed per position, a head's score is "
                "bilinear in the query and key residual streams; each stream is a sum of the embeddings, earlier heads, "
                "MLPs and biases, so the (query, key) pair contributions sum exactly to the score.",
)
