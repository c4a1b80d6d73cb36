"""The circuit analysis's Result: every number, record and tensor a circuit run produces,
as typed fields (``workbench.result_fields`` saves and loads them by annotation)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.results import Result

from .config import CircuitConfig
from .records import Convergence, FaithfulnessCurve, KindAccuracy, MibScores, NodeReference, Stability, ThresholdCurve

OLD_SUMMARY = ("task", "method", "format", "n_prompts", "n_val", "n_test", "logit_diff", "accuracy", "accuracies",
               "n_edges", "n_heads", "faithfulness", "faithfulness_validation", "target", "target_met", "chosen_by",
               "circuit_metric", "full_metric", "ablated_metric", "spearman_vs_patching", "faithfulness_curve",
               "convergence", "heads", "top_edges", "ablation", "n_edges_total", "n_edges_total_mib", "mib",
               "faithfulness_curve_beside", "node_reference", "stability")  # the --json keys, as before typed fields


@dataclass(kw_only=True)
class CircuitResult(Result):
    """A circuit discovered on the discovery prompts, its faithfulness curve on the validation
    prompts and the chosen circuit measured on the test prompts."""

    analysis = "circuit"

    config: CircuitConfig
    task: str
    method: str
    format: str | None  # the Colored Objects prompt format (None for IOI)
    n_prompts: int  # discovery prompts
    n_val: int
    n_test: int
    logit_diff: float  # mean logit difference (correct - wrong) of the full model on the clean test prompts
    corrupt_logit_diff: float
    accuracy: float
    accuracy_kind: str
    logit_diffs: list[float]  # per test prompt
    accuracies: dict[str, KindAccuracy]  # per kind (its name): the Wilson interval and the chance level
    n_edges_total: int  # edges in the model's graph
    n_edges: int  # edges in the circuit
    n_heads: int
    heads: list[str]  # the in-circuit heads, L{layer}H{head}
    faithfulness: float  # (circuit - all ablated) / (full - all ablated) on the test prompts
    faithfulness_validation: float | None
    target: float
    target_met: bool | None  # None: the size was given
    chosen_by: str  # target | undefined | --n-edges | the method (its own circuit)
    chosen_k: int | None
    circuit_metric: float
    full_metric: float
    ablated_metric: float
    ablation: str = "mean"  # what edges outside the circuit carry (runs from before the option: mean)
    spearman_vs_patching: float | None  # head scores against exact head patching (with compare_patching)
    top_edges: list[tuple[str, str, float]]  # the strongest in-circuit edges: (sender, receiver, score)
    faithfulness_curve: FaithfulnessCurve  # on the validation prompts
    convergence: Convergence | None  # EAP-IG against its own highest step count (None without EAP-IG)
    n_edges_total_mib: int
    mib: dict[str, MibScores] | None = None  # by method
    mib_nodes: dict[str, MibScores] | None = None  # node level (heads), by ranking: "exact" and each method
    faithfulness_curve_beside: FaithfulnessCurve | None = None
    beside_ablation: str | None = None
    node_reference: NodeReference | None = None
    stability: Stability | None = None
    seconds: float = float("nan")
    edge_scores: Float[Tensor, "sender receiver"]  # the method's score of every edge
    circuit: Bool[Tensor, "sender receiver"]  # the circuit's edges
    head_scores: Float[Tensor, "layer head"]  # node score of each head
    head_patching: Float[Tensor, "layer head"] | None = None  # exact activation patching (with compare_patching)
    scores: dict[str, Float[Tensor, "sender receiver"]] = field(default_factory=dict)  # other methods' edge scores

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Format 1 kept the circuit as uint8 and the other methods' scores as ``scores_{method}``."""
        out = {}
        for name, tensor in arrays.items():
            if name == "circuit":
                tensor = tensor.bool()
            elif name.startswith("scores_"):
                name = "scores/" + name[len("scores_"):]
            out[name] = tensor
        return metrics, out

    def target_text(self) -> str:
        """One plain sentence on the chosen size and the target."""
        if self.chosen_by == "undefined":
            c = self.faithfulness_curve
            return (f"the full model does not beat the all-ablated model on the validation prompts (logit difference "
                    f"{c.full:.3f} vs {c.all_ablated:.3f}), so normalised "
                    f"faithfulness is undefined and the target is NOT met; the circuit returned is the largest on the "
                    f"curve ({self.chosen_k} edges), not a faithful one")
        if self.chosen_by == "target":
            if self.target_met:
                return (f"the smallest {self.method} circuit on the curve reaching validation faithfulness "
                        f"{self.target:g}: {self.chosen_k} edges (validation {self.faithfulness_validation:.3f})")
            return (f"no {self.method} circuit on the curve reaches validation faithfulness {self.target:g}; the most "
                    f"faithful size is {self.chosen_k} edges at {self.faithfulness_validation:.3f}: the target is NOT met")
        if self.chosen_by == "--n-edges":
            return f"circuit size {self.chosen_k} given by --n-edges (no target applied)"
        met = "meets" if self.target_met else "does NOT meet"
        return f"{self.method}'s own circuit ({self.n_edges} edges) {met} the target {self.target:g} on the validation prompts"

    def curve_rows(self) -> list[dict[str, Any]]:
        """The faithfulness-against-edges table: one row per (method, size)."""
        c = self.faithfulness_curve
        rows: list[dict[str, Any]] = []
        for m, row in c.methods.items():
            if isinstance(row, ThresholdCurve):  # ACDC: one circuit per threshold
                for t, n, f in zip(row.tau, row.n_edges, row.faithfulness):
                    rows.append({"method": m, "top k": None, "ACDC tau": t, "edges kept": n,
                                 "faithfulness (validation)": f})
                continue
            for k, n, f in zip(c.sizes, row.n_edges, row.faithfulness):
                rows.append({"method": m, "top k": k, "ACDC tau": None, "edges kept": n, "faithfulness (validation)": f})
        for m, point in c.extra.items():
            rows.append({"method": f"{m} (returned circuit)", "top k": None, "ACDC tau": None, "edges kept": point.n_edges,
                         "faithfulness (validation)": point.faithfulness})
        return rows

    def summary(self) -> dict[str, Any]:
        from workbench.result_fields import encode_data, plain_json

        data, _ = encode_data(self)
        out = {k: data.get(k) for k in OLD_SUMMARY}
        out["faithfulness_interval"] = data["intervals"].get("faithfulness")
        out["target_text"] = self.target_text()
        if self.path is not None:
            out["run"] = str(self.path)
        return plain_json(out)


def top_edge_list(graph: Any, edge_scores: torch.Tensor, edges: torch.Tensor, n: int = 20) -> list[tuple[str, str, float]]:
    """The ``n`` strongest in-circuit edges by |score|: (sender, receiver, score rounded to 5 places)."""
    flat = edge_scores.abs().masked_fill(~edges, -1).flatten()
    order = flat.argsort(descending=True)[: min(n, int(edges.sum()))].tolist()
    R = len(graph.receivers)
    return [(graph.senders[i // R], graph.receivers[i % R], round(float(edge_scores.flatten()[i]), 5)) for i in order]
