"""The LRP analysis's results: token and head relevance of prompts with the deletion test
(``LrpResult``), and saliency maps of images with the region-deletion test (``LrpImageResult``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from workbench.results import Result
from workbench.stats import Interval

from .config import SPLIT, LrpConfig, LrpImageConfig
from .records import HeadRelevance, TopClass


def _rename_v1(arrays: dict[str, torch.Tensor], prefixes: dict[str, str]) -> dict[str, torch.Tensor]:
    """Format 1's flat ``{prefix}{key}`` tensors as ``{field}/{key}`` entries of dict fields."""
    out = {}
    for name, tensor in arrays.items():
        for prefix, field_name in prefixes.items():
            if name.startswith(prefix):
                name = f"{field_name}/{name[len(prefix):]}"
                break
        out[name] = tensor
    return out


@dataclass(kw_only=True)
class LrpResult(Result):
    """Token relevance (AttnLRP, gradient x input, rollout) of every prompt, head relevance,
    and the deletion test, with per-task statistics."""

    analysis = "lrp"
    v1_names = {"prompt_tokens": "tokens", "token_conservation_error": "token_conservation_error_mean",
                "softmax_absorbed_fraction": "softmax_absorbed_fraction_mean", "target_values": "target_value",
                "conservation_error_per_prompt": "conservation_error",
                "token_conservation_error_per_prompt": "token_conservation_error"}

    config: LrpConfig
    task: str  # the tasks explained, joined by '+' (``ioi+successor``), or ``prompts`` (given prompts)
    tasks: list[str]
    prompt_tasks: list[str]  # the task of each prompt
    n_prompts: int
    prompts: list[str]
    prompt_tokens: list[list[str]]
    targets: list[str]  # the explained token of each prompt
    contrasts: list[str | None]  # the contrast token of each prompt (None: the target logit alone)
    target_value_mean: float
    # the accounting identity: largest |sum(token R) + softmax-absorbed R - value| / |value| over the prompts
    conservation_error: float
    conservation_tolerance: float
    token_conservation_error: float = math.nan  # by the tokens alone: mean over prompts of |sum(token R) - value| / |value|
    softmax_absorbed_fraction: float  # mean share of the explained value absorbed by the softmax rule (signed)
    aopc: dict[str, float]  # area over the deletion curve per method (and ``random``), mean over every prompt
    max_delete: int
    n_random: int
    top_heads: list[HeadRelevance]  # the ten heads of largest mean |AttnLRP relevance|, best first
    split: str = SPLIT
    aopc_by_task: dict[str, dict[str, float]] = field(default_factory=dict)
    accuracy_by_task: dict[str, float] = field(default_factory=dict)  # share of prompts with a positive value
    io_share: dict[str, float] | None = None  # IOI only: the IO name's share of relevance, per method
    io_top1_rate: dict[str, float] | None = None  # IOI only: how often the IO name is the most relevant token
    lengths: Int[Tensor, " prompt"]
    target_values: Float[Tensor, " prompt"]  # the explained value, logit(target) - logit(contrast)
    token_ids: Int[Tensor, "prompt pos"]  # -1 past a prompt's length
    relevance_maps: dict[str, Float[Tensor, "prompt pos"]]  # per method
    head_relevance_by_method: dict[str, Float[Tensor, "prompt layer head"]]  # attnlrp, gradient_x_input
    # per method, the explained value after deleting the most relevant tokens first (NaN past a prompt's length)
    deletion_curves: dict[str, Float[Tensor, "prompt step"]]
    token_conservation_error_per_prompt: Float[Tensor, " prompt"]
    conservation_error_per_prompt: Float[Tensor, " prompt"]
    softmax_absorbed_share: Float[Tensor, " prompt"]

    deletion_step: ClassVar[int] = 1  # tokens deleted per step of the deletion curves

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        return metrics, _rename_v1(arrays, {"head_relevance_": "head_relevance_by_method",
                                            "relevance_": "relevance_maps", "deletion_": "deletion_curves"})

    def tokens(self, i: int = 0) -> list[str]:
        return list(self.prompt_tokens[i])

    def relevance(self, method: str = "attnlrp", i: int = 0) -> torch.Tensor:
        """[pos] token relevance of prompt ``i``."""
        return self.relevance_maps[method][i, :int(self.lengths[i])]

    @property
    def head_relevance(self) -> torch.Tensor:
        """[layer head] AttnLRP head relevance, mean over prompts."""
        return self.head_relevance_by_method["attnlrp"].mean(0)

    def prompt_aopc(self, method: str) -> torch.Tensor:
        """[prompt] AOPC of one method (or ``random``) on each prompt."""
        return torch.tensor([curve_aopc(c) for c in self.deletion_curves[method]])  # cpu: a result array

    def task_interval(self, task: str, figure: str) -> Interval | None:
        """A stored interval of ``task``: figure ``AOPC attnlrp``, ``AOPC attnlrp - random``,
        ``token-only conservation error``, ``softmax-absorbed share``, ``accuracy``."""
        return self.intervals.get(f"{task}: {figure}")

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {
            "tokens": self.tokens(0),
            "relevance": [round(float(v), 6) for v in self.relevance("attnlrp", 0)],
            "head_relevance": [[round(float(v), 6) for v in row] for row in self.head_relevance],
            **{k: data[k] for k in ("conservation_error", "token_conservation_error")},
            "softmax_absorbed_share": data["softmax_absorbed_fraction"],
            "aopc": data["aopc"], "aopc_by_task": data["aopc_by_task"],
            "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
        }
        if self.path is not None:
            out["run"] = str(self.path)
        return out


def curve_aopc(curve: torch.Tensor) -> float:
    """AOPC of one deletion curve (NaN entries past the prompt's length left out)."""
    c = curve[~torch.isnan(curve)]
    return float((c[0] - c).mean()) if len(c) else float("nan")



@dataclass(kw_only=True)
class LrpImageResult(Result):
    """LRP, salient relevance and gradient maps of images through EfficientNet-lite0, and the
    region-deletion test."""

    analysis = "lrp_image"
    v1_names = {"names": "images", "image_crops": "images"}

    config: LrpImageConfig
    names: list[str]
    top_classes: dict[str, list[TopClass]]  # per image, its top classes, most probable first
    top1: dict[str, str]
    explained_class: dict[str, int]
    aopc: dict[str, float]  # area over the region-deletion curve per method (and ``random``), mean over images
    aopc_per_image: dict[str, list[float]]  # per method (and ``random``), in ``names`` order
    relevance_fraction: list[float]
    rules: str  # the LRP rules of the composite used, in words
    removed_fraction_max: float
    image_crops: UInt8[Tensor, "image h w 3"]  # the centre crops that were explained
    saliency_maps: dict[str, Float[Tensor, "image row col"]]  # lrp (signed), sr, gradient
    deletion_curves: dict[str, Float[Tensor, "image step"]]  # explained logit after deleting the most salient regions

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        return metrics, _rename_v1(arrays, {"map_": "saliency_maps", "deletion_": "deletion_curves"})

    def image(self, i: int = 0) -> torch.Tensor:
        """[H W 3] uint8 the centre crop that was explained."""
        return self.image_crops[i]

    def saliency(self, method: str = "lrp", i: int = 0) -> torch.Tensor:
        """[H W] the ``lrp`` (signed), ``sr`` or ``gradient`` map of image ``i``."""
        return self.saliency_maps[method][i]

    @property
    def deletion_step(self) -> int:
        """Regions deleted per step of the deletion curves."""
        return int(self.config.step) if self.config is not None else 1

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {"top_classes": data["top_classes"], "aopc": data["aopc"]}
        if self.path is not None:
            out["run"] = str(self.path)
        return out
