"""Vision-aware heads: the VHD map, T-VHD along a generated caption and head reinforcement
(VHR, CHAIR before and after against random heads) on a small vision-language model built
from real parts, or on a local LLaVA folder (``--llava``)."""
from workbench.spec import AnalysisSpec

from .analysis import VHDConfig, VHDResult, caption_one, check_model, estimate_bytes, load_target, needs_model, run
from .figures import headline, vision_sections
from .page import page_extra

SPEC = AnalysisSpec(
    key="vhd",
    title="Vision-aware heads (VHD) and head reinforcement (VHR)",
    help="VHD map, T-VHD and VHR (CHAIR before/after vs random heads) on the EfficientNet + smollm2 VLM.",
    config=VHDConfig,
    result=VHDResult,
    run=run,
    figures=vision_sections,
    headline=headline,
    needs_model=needs_model,
    load_target=load_target,
    check_model=check_model,
    estimate_bytes=estimate_bytes,
    page_defaults={"n_scenes": 4, "alphas": (2.0,)},
    page_extra=page_extra,
    description="VHD: L2 distance of each head's output before W_O (blocks.{l}.attn.hook_z) with vs without the "
                "image, per decoding step. VHR amplifies, per layer, the heads above the layer median (outliers "
                "dropped). The projector is built on first use (minutes on a CPU).",
)

__all__ = ["SPEC", "VHDConfig", "VHDResult", "caption_one", "run"]
