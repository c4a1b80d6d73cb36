"""What a circuit run measures beside its single numbers, as typed records: the faithfulness
curve (one row per method, ACDC's one per threshold), EAP-IG's convergence in steps, the exact
node reference, the stability of the discovery and the full model's accuracy of each kind.
MIB's scores are the core's record (``workbench.patching.faithfulness.FaithfulnessCurve``).

Each record's fields are the keys of the JSON object the circuit run saved when these were
dicts, in the same order, so a run saves the same JSON and earlier runs load as they are."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from workbench.patching.faithfulness import FaithfulnessCurve as MibScores
from workbench.stats import Interval

__all__ = ["MethodCurve", "ThresholdCurve", "CircuitPoint", "FaithfulnessCurve", "Convergence", "MibScores",
           "NodeReference", "Stability", "KindAccuracy", "curve_row"]


@dataclass(frozen=True)
class MethodCurve:
    """A top-k method on the curve: edges kept (after pruning) and validation faithfulness at each size."""

    n_edges: list[int]
    faithfulness: list[float]


@dataclass(frozen=True)
class ThresholdCurve:
    """A method whose circuits come one per threshold (ACDC): its thresholds, edges kept and
    faithfulness; ``candidates``: the top EAP-IG edges each run tried."""

    tau: list[float]
    n_edges: list[int]
    faithfulness: list[float]
    candidates: int | None = None


def curve_row(raw: Any) -> MethodCurve | ThresholdCurve:
    """A row of the curve's ``methods`` from its JSON object (a ``tau`` list: one per threshold)."""
    if isinstance(raw, (MethodCurve, ThresholdCurve)):
        return raw
    if "tau" in raw:
        return ThresholdCurve(tau=[float(t) for t in raw["tau"]], n_edges=list(raw["n_edges"]),
                              faithfulness=[_float(f) for f in raw["faithfulness"]], candidates=raw.get("candidates"))
    return MethodCurve(n_edges=list(raw["n_edges"]), faithfulness=[_float(f) for f in raw["faithfulness"]])


def _float(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True)
class CircuitPoint:
    """A circuit measured in the curve's batch beside its sizes (the method's own circuit)."""

    n_edges: int
    faithfulness: float


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Normalised faithfulness against circuit size on one split: the full and all-ablated
    models' mean metric, each method's row, other circuits measured beside (``extra``, by
    name), the paired bootstrap of full - all ablated and whether it is above 0 (``defined``)."""

    sizes: list[int]
    full: float
    all_ablated: float
    # a row per method: MethodCurve, or ThresholdCurve for ACDC. The union is read back as its
    # JSON object (the field decoder does not choose between records), so __post_init__ makes
    # each row its record.
    methods: dict[str, MethodCurve | ThresholdCurve] = field(default_factory=dict)
    extra: dict[str, CircuitPoint] = field(default_factory=dict)  # open-ended: the names of circuits measured beside
    effect: Interval | None = None  # (runs from before the bootstrap have none)
    defined: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", {m: curve_row(r) for m, r in self.methods.items()})


@dataclass(frozen=True)
class Convergence:
    """EAP-IG with 1, 2, 4, ... steps against its highest step count: Spearman over every edge,
    top-``k`` Jaccard and the validation faithfulness of the top-``k`` circuit (None with one
    step count only)."""

    steps: list[int]
    k: int
    spearman_vs_max: list[float]
    topk_jaccard_vs_max: list[float]
    faithfulness: list[float] | None = None


@dataclass(frozen=True)
class NodeReference:
    """The exact node reference (every head patched from the corrupt run) against each method's
    node scores: validation faithfulness of the top-k heads by each ranking (``heads``: the k),
    and each method's agreement with the exact ranking."""

    heads: list[int]
    ablation: str
    faithfulness: dict[str, list[float]]  # by ranking: "exact" and each method
    # by method: {"spearman", "top{k}_overlap"}; a dict because the overlap's key names its k
    agreement: dict[str, dict[str, float]]
    top_heads_exact: list[str]


@dataclass(frozen=True)
class Stability:
    """Mean pairwise Jaccard of the top edges and heads over bootstrap resamples of the discovery prompts."""

    method: str
    n_boot: int
    k_edges: int
    k_heads: int
    edge_jaccard: float
    head_jaccard: float

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class KindAccuracy:
    """The full model's accuracy of one kind on the test prompts: its Wilson interval and the chance level."""

    value: float
    low: float
    high: float
    n: int
    method: str
    level: float
    split: str
    chance: float

    @classmethod
    def of(cls, iv: Interval, chance: float) -> KindAccuracy:
        return cls(**dataclasses.asdict(iv), chance=chance)

    def interval(self) -> Interval:
        return Interval(value=self.value, low=self.low, high=self.high, n=self.n, method=self.method,
                        level=self.level, split=self.split)
