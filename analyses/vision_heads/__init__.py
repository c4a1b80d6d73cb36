"""Vision-aware heads: the VHD map, T-VHD along a generated caption and head reinforcement
(VHR chosen on validation scenes, CHAIR and recall on test scenes against random heads and
all heads) on a small vision-language model built from real parts, or on a local Hugging Face
LLaVA (``--llava``) or SmolVLM / Idefics3 (``--vlm``) folder."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import caption_one, run
from .config import VHDConfig
from .result import VHDResult
from .target import check_model, estimate_bytes, load_target, needs_model
from .figures import headline, headline_figures, vision_sections
from .page import page_extra

SPEC = AnalysisSpec(
    key="vhd",
    title="Vision-aware heads (VHD) and head reinforcement (VHR)",
    help="VHD map, T-VHD and VHR (alpha chosen on val scenes; CHAIR/recall on test vs random and all heads).",
    config=VHDConfig,
    result=VHDResult,
    run=run,
    figures=vision_sections,
    headline=headline,
    needs_model=needs_model,
    load_target=load_target,
    check_model=check_model,
    estimate_bytes=estimate_bytes,
    page_defaults={"n_scenes": 4, "n_val": 2, "alphas": (2.0,), "head_sets": ("vhr",), "random_draws": 1},
    page_extra=page_extra,
    description="VHD: L2 distance of each head's output before W_O (blocks.{l}.attn.hook_z) with vs without the "
                "image, per decoding step. VHR amplifies, per layer, the heads above the layer median (outliers "
                "dropped), or the top-k heads of the validation VHD map; alpha and the head set are chosen on "
                "validation scenes, CHAIR and recall reported on test scenes with bootstrap intervals. The "
                "projector is built on first use (minutes on a CPU). See docs/vision-heads.md.",
    headlines=(Headline(label="vision heads (VHD/VHR)", args=("vhd",), figures=headline_figures),),
)

__all__ = ["SPEC", "VHDConfig", "VHDResult", "caption_one", "run"]
