"""LRP saliency: AttnLRP on a language model's prompt (token and head relevance, against
gradient x input and attention rollout) or LRP and the SR map on a photograph
(EfficientNet-Lite0), each method scored by the same deletion test. lxt and zennit are
imported only when a run needs them."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import LrpImageResult, LrpOptions, LrpResult, check_model, estimate_bytes, run, wants_language_model
from .figures import headline, headline_figures, image_headline_figures, lrp_sections
from .page import mode_explorer

from .columns import HEAD_COLUMNS  # noqa: E402  (the head atlas's columns)

SPEC = AnalysisSpec(
    head_columns=HEAD_COLUMNS,
    key="lrp",
    title="LRP saliency",
    help="Explain a prompt with AttnLRP (or an image with LRP and the SR map) and score each method by deletion.",
    config=LrpOptions,
    result=LrpResult,
    run=run,
    figures=lrp_sections,
    headline=headline,
    extra_results=(LrpImageResult,),
    needs_model=wants_language_model,
    check_model=check_model,
    estimate_bytes=estimate_bytes,
    page_defaults={"n_prompts": 2, "max_delete": 6, "n_random": 1},
    page_extra=mode_explorer,
    headlines=(
        Headline("LRP (AttnLRP, lxt rules): deletion test and conservation", ("lrp",), headline_figures),
        Headline("LRP on the CNN (zennit, EfficientNet-Lite0)", ("lrp", "--image", "all"), image_headline_figures,
                 why="--image all selects the image mode (every shipped photograph); its other settings are the defaults"),
    ),
    description="A prompt run explains logit(target) - logit(contrast) at the last position (IOI prompts: IO minus "
                "S; successor prompts: the next month, day, letter or number minus the item asked about), 32 prompts per "
                "task by default with bootstrap intervals; an image run explains EfficientNet-Lite0's top-1 class.",
)
