"""LRP saliency: which prompt tokens and which heads carried an answer (AttnLRP on the language
model, against gradient x input and attention rollout), and where a CNN looked (LRP on
EfficientNet-Lite0 and the salient-relevance map of Li et al.), each method scored by the same
deletion test: area over the perturbation curve (AOPC, Samek et al. 2017), higher = the ranking
found what the model needs.

Two configs, one ``run``:

* ``LrpConfig`` (prompts): explain ``logit(target) - logit(contrast)`` (or one logit) at the last
  position; with no prompts, ``n_prompts`` prompts of each task (IOI: IO minus S; successor:
  the next month/day/letter/number minus the item asked about), with per-task bootstrap
  intervals over prompts for every AOPC and the paired differences AttnLRP minus each other
  method.  -> ``LrpResult``
* ``LrpImageConfig`` (photographs or image files): explain the top-1 class logit.  -> ``LrpImageResult``
* ``LrpOptions``: the options of ``workbench lrp`` (and the page's form), both modes in one;
  ``run`` turns it into one of the two configs (``--image`` given: images, else prompts).

The engines live in ``attnlrp.py`` (language model), ``cnn.py`` (CNN, SR map) and
``imports.py`` (how zennit and lxt are imported here); all three are imported only when a
run needs them, so importing this module never loads lxt or zennit. The settings live in
``config.py``, the two Result types in ``result.py``, and the two modes in ``prompts.py`` and
``images.py``; this module picks the mode, and every public name stays importable from it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.results import Result
from workbench.checks import checked_run

# the settings, the results and the two modes live in their own modules; their names stay importable from here
from .config import (CONSERVATION_TOLERANCE, DEFAULT_MAX_DELETE, DEFAULT_N, DEFAULT_N_RANDOM, DEFAULT_TASKS,
                     IMAGE_BASELINES, IMAGE_BYTES_PER_PIXEL, IMAGE_FIXED_BYTES, IMAGE_METHODS, METHODS, SPLIT,
                     ImageBaseline, LrpConfig, LrpImageConfig, LrpOptions, check_model, estimate_bytes,
                     wants_language_model)
from .images import blur_baseline, run_images
from .prompts import run_prompts
from .result import LrpImageResult, LrpResult, curve_aopc

if TYPE_CHECKING:
    from workbench.models import Model

__all__ = ["CONSERVATION_TOLERANCE", "DEFAULT_MAX_DELETE", "DEFAULT_N", "DEFAULT_N_RANDOM", "DEFAULT_TASKS",
           "IMAGE_BASELINES", "IMAGE_BYTES_PER_PIXEL", "IMAGE_FIXED_BYTES", "IMAGE_METHODS", "METHODS", "SPLIT",
           "ImageBaseline", "LrpConfig", "LrpImageConfig", "LrpImageResult", "LrpOptions", "LrpResult", "blur_baseline",
           "check_model", "curve_aopc", "estimate_bytes", "run", "run_images", "run_prompts", "wants_language_model"]


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: LrpConfig | LrpImageConfig | LrpOptions | None = None, progress: bool = True) -> Result:
    """Prompt mode with an ``LrpConfig`` (needs ``model``), image mode with an ``LrpImageConfig``
    (``model`` is ignored: the CNN is built here); ``LrpOptions`` pick one of the two."""
    config = config or LrpConfig()
    if isinstance(config, LrpOptions):
        config = config.analysis_config()
    if isinstance(config, LrpImageConfig):
        return run_images(config, progress=progress)
    return run_prompts(model, config, progress=progress)
