"""The LLaVA route (``--llava``): ``HFLlavaAdapter`` is ``hf_vlm.HFVisionAdapter`` for a
``LlavaForConditionalGeneration`` folder (kept under this name for older callers)."""
from __future__ import annotations

import torch

from workbench.analyses.vision_heads.vlm.hf_vlm import HFVisionAdapter


class HFLlavaAdapter(HFVisionAdapter):
    """A local LLaVA checkpoint behind the interface the vision-head analysis uses."""

    def __init__(self, folder: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        super().__init__(folder, kind="llava", dtype=dtype, device=device)
