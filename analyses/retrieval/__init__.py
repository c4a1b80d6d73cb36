"""Retrieval heads (Wu et al.) on needle-in-a-haystack tests: per-head retrieval scores,
the masking test (top-k retrieval heads against k random heads) and a RazorAttention-style
KV-cache compression check."""
from workbench.spec import AnalysisSpec

from .analysis import RetrievalConfig, RetrievalResult, check_model, estimate_bytes, run
from .figures import headline, retrieval_sections

SPEC = AnalysisSpec(
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
    page_defaults={"context_lengths": (200,), "depths": (50.0,), "n_needles": 1, "mask_ks": (2,), "n_random": 1,
                   "kv_protect": 5},
    description="Wu et al.: heads whose attention argmax copies the needle token being generated.",
)
