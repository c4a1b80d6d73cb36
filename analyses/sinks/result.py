"""The sinks analysis's result: the heads and tokens with sinks beyond the first token,
the massive activations at them, and ACT's calibration chosen and measured per task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float, UInt8
from torch import Tensor

from workbench.results import Result
from workbench.stats import Interval

from .config import SinksConfig
from .records import FirstTokenMassiveDim, GridPoint, MassiveDim, SearchStep, SinkHead, TaskCalibration

_INTERVAL_NAMES = {"base": "held-out accuracy, base", "act": "held-out accuracy, ACT",
                   "difference": "held-out accuracy, ACT - base (paired)",
                   "difference by group": "held-out accuracy, ACT - base (paired, resampling groups)",
                   "logprob difference": "held-out log p(right option), ACT - base (paired)",
                   "calibration base": "calibration accuracy, base", "calibration act": "calibration accuracy, ACT"}

HELDOUT_FIELDS = ("heldout_before", "heldout_after", "heldout_logp_before", "heldout_logp_after")


def interval_name(task: str, what: str) -> str:
    """The name a task's interval is stored under (``Result.intervals``)."""
    return f"{task}: {_INTERVAL_NAMES[what]}"


@dataclass(kw_only=True)
class SinksResult(Result):
    """Sinks beyond the first token on every task's calibration prompts, the massive
    activations at their tokens, and ACT's calibration chosen and measured per task."""

    analysis = "sinks"

    config: SinksConfig
    sinks: list[SinkHead]  # heads with non-first sinks, strongest first
    calibration: list[TaskCalibration]  # one per task
    search: list[SearchStep]  # single-head calibration gains on each task's calibration split
    grid: list[GridPoint] = field(default_factory=list)  # calibration accuracy of the chosen heads
    search_parameters: dict[str, Any] = field(default_factory=dict)
    n_sink_prompts: int = 0  # prompts the sinks were found on (every task's calibration split)
    n_sinks_beyond_first: int  # counted over head x prompt x position
    n_heads_with_sinks: int
    sink_tokens: dict[str, int]  # the commonest tokens at non-first sinks (head x prompt occurrences)
    sink_token_classes: dict[str, int]
    massive_activations: list[MassiveDim]  # per task: the largest mean |h| dimensions at sink tokens
    first_token_massive_activations: list[FirstTokenMassiveDim] = field(default_factory=list)
    example_tokens: list[str]
    example_prompt: str = ""
    sink_share: Float[Tensor, "layer head"]  # share of prompts where the head has a non-first sink
    sink_strength: Float[Tensor, "layer head"]  # mean over prompts of the strongest non-first column mean
    example_column_means: Float[Tensor, "layer head pos"]  # on the example prompt
    example_sinks: UInt8[Tensor, "layer head pos"]  # 1 at the example prompt's non-first sinks
    heldout_before: dict[str, UInt8[Tensor, " question"]] = field(default_factory=dict)  # per task: 1 = right
    heldout_after: dict[str, UInt8[Tensor, " question"]] = field(default_factory=dict)
    heldout_logp_before: dict[str, Float[Tensor, " question"]] = field(default_factory=dict)  # log p(right option)
    heldout_logp_after: dict[str, Float[Tensor, " question"]] = field(default_factory=dict)

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Format 1 kept the held-out tensors as ``{task}_heldout_before`` (and after, logp_before,
        logp_after): they become entries of the per-task dict fields."""
        renamed = {}
        for name, tensor in arrays.items():
            for what in ("heldout_logp_before", "heldout_logp_after", "heldout_before", "heldout_after"):
                if name.endswith("_" + what):
                    name = f"{what}/{name[:-len(what) - 1]}"
                    break
            renamed[name] = tensor
        return metrics, renamed

    @property
    def task_names(self) -> list[str]:
        return [row.task for row in self.calibration]

    @property
    def calibrated_heads(self) -> list[str]:
        """Heads chosen by the search on any task, in the order first chosen."""
        return list(dict.fromkeys(h for row in self.calibration for h in row.heads))

    def interval(self, task: str, what: str) -> Interval:
        """The stored interval of ``what`` (``base``, ``act``, ``difference``, ``difference by group``,
        ``logprob difference``, ``calibration base``, ``calibration act``) on ``task``."""
        return self.intervals[interval_name(task, what)]

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {"sinks": data["sinks"][:20], "calibration": data["calibration"]}
        if self.path is not None:
            out["run"] = str(self.path)
        return out
