"""Retrieval heads (Wu et al.) on needle-in-a-haystack tests: per-head retrieval scores on a
ranking split, then, on held-out needles and haystack text, the masking test (top-k
retrieval heads against k random heads) and a RazorAttention-style KV-cache compression check."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import RetrievalConfig, RetrievalResult, check_model, estimate_bytes, run
from .figures import headline, headline_figures, retrieval_sections

from .columns import HEAD_COLUMNS  # noqa: E402  (the head atlas's columns)

SPEC = AnalysisSpec(
    head_columns=HEAD_COLUMNS,
    key="retrieval",
    title="Retrieval heads",
    help="Retrieval heads on needle-in-a-haystack: scores, masking curves, KV-compression check.",
    config=RetrievalConfig,
    result=RetrievalResult,
    run=run,
    figures=retrieval_sections,
    headline=headline,
    check_model=check_model,
    estimate_bytes=estimate_bytes,
    page_defaults={"context_lengths": (200,), "depths": (50.0,), "n_needles": 1, "n_eval_needles": 2, "mask_ks": (2,),
                   "n_random": 1, "kv_protect": 5},
    headlines=(Headline(label="retrieval heads (Wu et al.): held-out masking and KV compression (RazorAttention-style)",
                        args=("retrieval",), figures=headline_figures),
               Headline(label="retrieval heads at 4,096 tokens: held-out masking and KV compression",
                        args=("retrieval", "--lengths", "4096", "--depths", "50", "--eval-needles", "16",
                              "--batch-size", "1", "--decode-rows", "13"),
                        figures=headline_figures,
                        why="4,096-token contexts at depth 50 % with 16 held-out needles (16 held-out tests, 4 ranking "
                            "tests): one held-out test costs about 245 CPU-seconds here, so the default 48 tests at this "
                            "length would be about 3.3 CPU-hours on this 2-core machine")),
    description="Wu et al.: heads whose attention argmax copies the needle token being generated.",
)
