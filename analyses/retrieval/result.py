"""The retrieval analysis's result: the masking curves, the KV check, the two splits, and
the RetrievalResult that holds them with every head's scores."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from workbench.results import Result

from .config import RetrievalConfig


@dataclass(frozen=True)
class MaskingCurves:
    """Held-out needle accuracy over the number of masked heads (k = 0 is the unmasked
    model), top-k retrieval heads against k random heads (mean over draws), with the
    intervals' bounds, the number of held-out tests and the split the figures come from."""

    k: list[int]
    top_accuracy: list[float]
    random_accuracy: list[float]
    top_heads: list[str]
    mode: str = "query"
    top_low: list[float] = field(default_factory=list)
    top_high: list[float] = field(default_factory=list)
    random_low: list[float] = field(default_factory=list)
    random_high: list[float] = field(default_factory=list)
    n_tests: int = 0
    n_random: int = 0
    split: str = ""


@dataclass(frozen=True, kw_only=True)
class KVCheck:
    """The RazorAttention-style check: cache kept and needle accuracy for the top retrieval
    heads protected, the same budget on random heads (mean over draws), and the full cache."""

    protected_heads: list[str]
    random_protected_heads: list[list[str]] = field(default_factory=list)
    full_kv_heads: int
    n_kv_heads: int
    cache_kept: float
    accuracy: float
    random_protected_cache_kept: float
    random_protected_accuracy: float
    full_cache_accuracy: float
    sink: int
    window: int
    n_tests: int = 0
    n_random: int = 0
    split: str = ""


@dataclass(frozen=True)
class SplitInfo:
    """One split of needle tests: how many, on which needles and haystack, and what it gives."""

    name: str
    n_tests: int
    n_needles: int
    haystack: str
    context_lengths: list[int]
    prompt_tokens: list[int]
    accuracy: float
    used_for: str


@dataclass(frozen=True)
class RetrievalHead:
    """A head whose retrieval score on the ranking split is over the threshold."""

    name: str
    layer: int
    head: int
    score: float  # rounded to 6 decimals


@dataclass(frozen=True)
class Replication:
    """How the ranking split's scores replicate on the held-out split: Spearman over heads (None
    where undefined: constant scores) and the overlap of the top ``top_n`` heads."""

    spearman: float | None
    spearman_low: float | None
    spearman_high: float | None
    top_n: int
    top_overlap: int
    heldout_top_heads: list[str]  # the held-out split's top ``top_n`` heads, best first
    n_heldout_counted: int  # held-out tests whose answer recalled the needle


@dataclass(kw_only=True)
class RetrievalResult(Result):
    """Every head's retrieval score on the ranking split, and on the held-out split the
    masking curves, the KV-compression check, the needle grid and the scores' replication."""

    analysis = "retrieval"

    config: RetrievalConfig
    scores: Float[Tensor, "layer head"]  # retrieval scores on the ranking split (the heads are chosen by these)
    retrieval_heads: list[RetrievalHead]  # over the threshold on the ranking split, best first
    masking: MaskingCurves
    share_over_threshold: float  # share of all heads whose retrieval score (ranking split) is over the threshold
    n_retrieval_heads: int
    n_tests: int  # ranking tests (the scores average over the counted ones)
    n_counted: int  # ranking tests whose answer recalled the needle
    needle_accuracy: float  # unmasked, on the ranking split
    heldout_accuracy: float  # unmasked, on the held-out split (k = 0 of the masking curve)
    mean_recall: float
    kv_compression: KVCheck
    context_lengths: list[int]
    depths: list[float]
    answers: list[str]  # the unmasked model's decoded answer per held-out test (per ranking test in older runs)
    ranking_answers: list[str] = field(default_factory=list)
    haystack: str = ""
    splits: dict[str, SplitInfo] = field(default_factory=dict)  # ranking and held-out (empty before the splits)
    figure_splits: dict[str, str] = field(default_factory=dict)  # which split each reported figure comes from
    # how the ranking scores replicate on the held-out split: Spearman over heads, overlap of the top heads
    replication: Replication | None = None  # None in runs saved before the splits
    heldout_scores: Float[Tensor, "layer head"]  # the scores measured again on the held-out split
    per_test_scores: Float[Tensor, "test layer head"]
    recall: Float[Tensor, " test"]
    heldout_recall: Float[Tensor, " heldout_test"]
    needle_grid: Float[Tensor, "length depth"]  # unmasked held-out accuracy (averaged over needles)
    masking_top: Float[Tensor, " k"]
    masking_random: Float[Tensor, " k"]
    masking_random_draws: Tensor
    mask_success: UInt8[Tensor, "heldout_test config"]
    kv_success: UInt8[Tensor, "heldout_test kv_config"]

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Runs saved before the splits had no held-out scores or accuracy."""
        metrics.setdefault("heldout_accuracy", metrics.get("needle_accuracy"))
        if not metrics.get("replication"):  # none before the splits
            metrics.pop("replication", None)
        if "scores" in arrays:
            arrays.setdefault("heldout_scores", torch.zeros_like(arrays["scores"]))
        return metrics, arrays

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {"scores": [[round(float(v), 6) for v in row] for row in self.scores],
               "retrieval_heads": data["retrieval_heads"], "masking": data["masking"]}
        out |= {k: data[k] for k in ("kv_compression", "splits", "figure_splits", "replication") if data.get(k)}
        if self.path is not None:
            out["run"] = str(self.path)
        return out
