"""In-context linear regression (He et al. 2025): train one-layer multi-head softmax
attention on in-context regression, read its KQ/OV patterns over training and compare its
predictions with single-head and linear attention, GD, debiased GD and ridge. Builds and
trains its own model, so the command takes no ``--model``."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import ICLConfig, ICLResult, estimate_bytes, run
from .figures import headline, headline_figures, icl_sections
from .page import checkpoint_explorer

SPEC = AnalysisSpec(
    key="icl",
    title="In-context linear regression: multi-head softmax attention",
    help="Train multi-head softmax attention on in-context regression; KQ/OV patterns and predictor errors.",
    config=ICLConfig,
    result=ICLResult,
    run=run,
    figures=icl_sections,
    headline=headline,
    needs_model=False,
    estimate_bytes=estimate_bytes,
    page_defaults={"steps": 1000, "eval_prompts": 2000, "n_seeds": 2},
    headlines=(Headline("in-context regression (He et al.): seed table and predictors", ("icl",), headline_figures),),
    page_extra=checkpoint_explorer,
    description="One-layer attention trained on prompts (x_i, y_i), query (x_q, 0). Patterns of He, Pan, Chen, "
                "Yang (2025): diagonal, homogeneous KQ; last-entry-only, zero-sum OV. The seed table trains H=2 and H=4 "
                "for five seeds each and counts those reaching the zero-sum pattern. GD step sizes are closed form. "
                "Trained models are cached by their settings.",
)
