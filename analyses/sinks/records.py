"""The rows of the sinks result's tables, as typed records (saved as JSON objects with
these keys, in this order: the same JSON the rows were saved as when they were dicts)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class SinkHead:
    """A head with sinks beyond the first token: how often and how strongly, and on which tokens."""

    name: str
    layer: int
    head: int
    share_of_prompts: float  # share of prompts where the head has a non-first sink
    strength: float  # mean over prompts of its strongest non-first column mean
    tokens: dict[str, int]  # its commonest sink tokens (prompt occurrences)


@dataclass(frozen=True)
class TaskCalibration:
    """ACT on one task: what the calibration split chose and what the held-out split measured."""

    task: str
    chance: float
    n_calib: int
    n_heldout: int
    candidates: list[str]  # heads tried, strongest non-first sinks first
    heads: list[str]  # heads kept
    beta: float
    threshold: float
    calib_before: float
    calib_after: float
    before: float  # held-out accuracy, base
    after: float  # held-out accuracy, ACT
    difference: float
    logprob_before: float
    logprob_after: float
    base_above_chance: bool
    changed: int  # held-out answers ACT changed


@dataclass(frozen=True)
class SearchStep:
    """One candidate head calibrated alone on a task's calibration split."""

    task: str
    name: str
    accuracy_gain: float
    logprob_gain: float
    chosen: bool


@dataclass(frozen=True)
class GridPoint:
    """Calibration accuracy of a task's chosen heads at one (beta, threshold)."""

    task: str
    beta: float
    threshold: float
    accuracy: float
    logprob: float


@dataclass(frozen=True)
class MassiveDim:
    """A hidden dimension with a large mean |h| at the sink tokens, in their peak layer."""

    task: str
    layer: int
    dim: int
    mean_abs_at_sinks: float
    mean_abs_at_other_tokens: float
    mean_abs_at_first_token: float
    ratio_to_median: float
    massive: bool  # outsized against the median AND against ordinary tokens


@dataclass(frozen=True)
class FirstTokenMassiveDim:
    """A hidden dimension that is massive at the first token, in the sink tokens' peak layer."""

    task: str
    layer: int
    dim: int
    mean_abs_at_first_token: float
    mean_abs_at_sinks: float
    ratio_to_median: float


def table(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Records as a report table: one dict per record, its fields in order."""
    return [dataclasses.asdict(r) for r in records]
