"""What a vision-heads run returns: ``VHDResult`` (the VHD map, T-VHD, the validation choice
of VHR and CHAIR on the test scenes against controls) and the records it holds."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.results import Result
from workbench.stats import Interval

from .config import VHDConfig
from .intervals import METRICS

N_SHOWN = 8  # scenes whose images travel with the result (for the app page)
CONDITIONS = ("before", "after", "random_control", "all_heads")


@dataclass(frozen=True)
class SweepRow:
    """One validation setting: its head set, alpha, CHAIR scores (``conditions.chair_scores``) and recall - CHAIR_i."""

    head_set: str
    alpha: float
    vhr: dict[str, float]
    objective: float


@dataclass(frozen=True)
class Choice:
    """The validation choice (``choice.choose``): the chosen row, whether it was admissible, the
    share of bootstrap resamples of the validation scenes choosing it and each setting, the floors."""

    index: int
    admissible: bool
    stability: float
    shares: list[float]
    n_resamples: int
    recall_floor: float
    mentioned_floor: float
    settings: list[str]


@dataclass(frozen=True)
class ProjectorRecord:
    """The projector's build record (``vlm.train.build_vlm``), with the sha256 of its weights."""

    loss_curve: list[float] = dataclasses.field(default_factory=list)
    train_seconds: float | None = None
    cached: str | None = None
    sha256: str | None = None
    artifact: str | None = None
    build: str | None = None
    threads: int | None = None
    deterministic: bool | None = None


def projector_record(record: dict[str, Any]) -> ProjectorRecord | None:
    """The build record's fields that ``ProjectorRecord`` keeps (None for a given adapter's empty record)."""
    known = {f.name for f in dataclasses.fields(ProjectorRecord)}
    return ProjectorRecord(**{k: v for k, v in record.items() if k in known}) if record else None


@dataclass(frozen=True)
class VisionHead:
    """A head and its mean VHD."""

    layer: int
    head: int
    name: str
    vhd: float


@dataclass(kw_only=True)
class VHDResult(Result):
    """VHD map, T-VHD, the validation choice of VHR and CHAIR on the test scenes against controls.
    Splits: ``splits`` says where each figure comes from."""

    analysis = "vhd"

    config: VHDConfig
    # arrays
    vhd_map: Float[Tensor, "layer head"]  # mean VHD over decoding steps of the test captions
    vhd_map_val: Float[Tensor, "layer head"] | None = None  # on the validation captions (what top<k> uses)
    vhd_steps: Float[Tensor, "scene step layer head"]  # every decoding step of the unmodified test captions
    valid: Tensor  # [scene step] 1 where a caption token was generated (uint8)
    tvhd: Float[Tensor, "scene step"]  # mean of the top-k head VHDs at each generated token
    images: Tensor  # [shown height width 3] uint8: the first test scenes (at most N_SHOWN)
    selected_rate: Float[Tensor, "layer head"]  # how often the chosen setting scaled each head (test)
    # the settings of the run
    alpha: float  # the amplification reported as "after"
    head_set: str  # the head set reported as "after"
    chosen_by: str  # "val" (chosen there) or "given"
    heads_scaled_per_step: float = 0.0
    criterion: str = ""
    choice: Choice | None = None  # None when the setting was given
    sweep: list[SweepRow] = dataclasses.field(default_factory=list)
    val_before: dict[str, float] = dataclasses.field(default_factory=dict)
    splits: dict[str, str] = dataclasses.field(default_factory=dict)
    n_scenes: int  # test scenes
    n_val: int = 0  # validation scenes
    random_draws: int = 1
    distance: str = "l2"
    where: str = ""  # the hook point VHD is measured at
    vision_tokens: int | None = None
    model: str | None = None
    # heads and CHAIR (test)
    top_heads: list[VisionHead]
    chair: dict[str, dict[str, float]]  # condition -> chair_i, chair_s, recall, mean_words, n_mentioned, ...
    object_token_tvhd: dict[str, Any] = dataclasses.field(default_factory=dict)
    # captions (test)
    captions_before: list[str]
    captions_after: list[str]
    captions_random: list[str]  # the first random-heads draw
    captions_all_heads: list[str] = dataclasses.field(default_factory=list)
    captions_shuffled_image: list[str] | None = None
    caption_tokens: list[list[str]]
    truths: list[list[str]]
    references: list[str]
    # does the model see? (None for an adapter without a projector)
    recall: float
    recall_shuffled_image: float | None = None
    caption_loss: float | None = None
    caption_loss_shuffled_image: float | None = None
    caption_loss_no_image: float | None = None
    caption_loss_n: int | None = None
    object_rank_recall: float | None = None
    object_rank_recall_shuffled_image: float | None = None
    object_rank_recall_chance: float | None = None
    projector: ProjectorRecord | None = None  # None when a given adapter was analysed
    user_image: dict[str, Any] | None = None  # the --image captioned before and after VHR

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """Format 1 kept an empty projector record as ``{}`` and the heads without a record type."""
        metrics = dict(metrics)
        proj = metrics.get("projector") or None
        metrics["projector"] = None if not proj else {k: v for k, v in proj.items()
                                                      if k in {f.name for f in dataclasses.fields(ProjectorRecord)}}
        return metrics, arrays

    @property
    def n_shown(self) -> int:
        """Scenes whose images travel with the result."""
        return int(self.images.shape[0])

    @property
    def loss_curve(self) -> list[float]:
        """The projector's training caption loss per step (empty for a given adapter)."""
        return list(self.projector.loss_curve) if self.projector else []

    @property
    def chair_intervals(self) -> dict[str, dict[str, Interval]]:
        """Test-split bootstrap intervals: condition -> metric (``chair_i``, ``chair_s``,
        ``recall``, ``mentioned``) -> Interval; conditions as in ``chair``."""
        ivs = self.intervals
        return {cond: {m: ivs[f"{m} {cond}"] for m in METRICS if f"{m} {cond}" in ivs} for cond in CONDITIONS}

    def summary(self) -> dict[str, Any]:
        from workbench.results import plain_json

        out = {"vhd": self.vhd_map.tolist(), "top_heads": [dataclasses.asdict(h) for h in self.top_heads],
               "chair": self.chair, "alpha": self.alpha, "head_set": self.head_set, "chosen_by": self.chosen_by,
               "splits": self.splits, "n_scenes": self.n_scenes, "n_val": self.n_val,
               "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
               "validation": {"before": self.val_before, "sweep": [dataclasses.asdict(r) for r in self.sweep],
                              "choice": dataclasses.asdict(self.choice) if self.choice else {}}}
        if self.path is not None:
            out["run"] = str(self.path)
        return plain_json(out)
