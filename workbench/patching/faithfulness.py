"""The faithfulness curve and MIB's scores of it (Mueller et al. 2025, circuit track).

MIB measures a method's edge scores, not one circuit: at each fraction p of the graph's
edges (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 %) it keeps the top ``int(p * n_edges)``
edges, prunes the graph (a node needs an incoming and an outgoing edge; the input and
the logits always stay), runs the model with every other edge ablated, and normalises
the metric as (circuit - empty) / (full - empty), each a mean over prompts. Then

* **CPR** (higher is better): the area under that curve, edges chosen by *signed* score (MIB's
  sign: an edge that carries the behaviour scores high; the workbench's EAP scores are negated);
* **CMD** (lower is better): the area between the curve and 1 (|1 - f|), edges chosen by
  *absolute* score;

both by the trapezoid rule over the raw fractions (x from 0.001 to 1, no rescaling), as
MIB's ``evaluate_area_under_curve`` does (its default ``log_scale=False``).

At the node level (MIB's ``level='node'``, ``mib_node_curve``) the fractions are of the scored
nodes, here the heads: the top ``int(p * n_heads)`` heads by node score are kept with every
unscored node (MIB keeps a node without a score: the input, the logits and every MLP here),
every edge between kept nodes is in, and the graph is pruned as above. That is how an exact
node reference (each head patched exactly) gets a CPR and CMD beside the edge methods. A perfect circuit at every size gives CPR 0.999
and CMD 0. Here the areas carry bootstrap intervals over prompts: each resample
recomputes the whole normalised curve, then its areas.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..cache import Tokens
from ..errors import InputError
from ..stats import Interval, bootstrap
from .ablation import Ablation, ablation_values, parse_ablation
from .graph import Graph, MetricFn, run_edge_masks, sender_outputs
from .nodes import node_circuit

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""The edge fractions at which MIB measures faithfulness."""


def top_n(graph: Graph, scores: torch.Tensor, n: int, absolute: bool) -> torch.Tensor:
    """The ``n`` valid edges of largest score (``absolute``: of largest |score|) [S R] bool."""
    if not 0 <= n <= graph.n_edges:
        raise InputError(f"asked for {n} edges but the graph has {graph.n_edges}; choose 0..{graph.n_edges}")
    s = scores.detach().float().cpu()
    s = (s.abs() if absolute else s).masked_fill(~graph.valid, float("-inf"))
    keep = torch.zeros(s.numel(), dtype=torch.bool)  # cpu: a selection over the CPU graph
    keep[s.flatten().argsort(descending=True)[:n]] = True
    return keep.view_as(s) & graph.valid


def prune(graph: Graph, edges: torch.Tensor) -> torch.Tensor:
    """MIB's pruning: repeatedly drop nodes without an incoming or an outgoing kept edge (the
    input needs no incoming edge; the logits are always in), and the edges they touch."""
    edges = edges.clone() & graph.valid
    r_of = torch.tensor([graph.receivers.index(s) if s in graph.receivers else -1 for s in graph.senders],
                        device=edges.device)
    while True:
        has_out = edges.any(dim=1)
        has_in = torch.ones_like(has_out)
        inner = r_of >= 0
        has_in[inner] = edges.any(dim=0)[r_of[inner]]
        alive = has_out & has_in
        r_alive = torch.ones(len(graph.receivers), dtype=torch.bool)  # cpu: over the CPU graph
        r_alive[r_of[inner]] = alive[inner]
        new = edges & alive[:, None] & r_alive[None, :]
        if torch.equal(new, edges):
            return new
        edges = new


def sizes_at(graph: Graph, fractions: Sequence[float] = MIB_FRACTIONS) -> list[int]:
    """Edges kept at each fraction, as MIB counts them: ``int(p * n_edges)``."""
    return [int(p * graph.n_edges) for p in fractions]


def areas(fractions: Sequence[float] | np.ndarray, faith: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(area under the curve, area between the curve and 1) by the trapezoid rule over the
    raw fractions: MIB's CPR (of a signed-score curve) and CMD (of an absolute-score curve)."""
    if len(fractions) != len(faith) or len(fractions) < 2:
        raise InputError("a faithfulness curve needs the same number (>= 2) of fractions and values")
    under = from_1 = 0.0
    for i in range(len(fractions) - 1):
        dx = fractions[i + 1] - fractions[i]
        under += dx * (faith[i] + faith[i + 1]) / 2
        from_1 += dx * (abs(1 - faith[i]) + abs(1 - faith[i + 1])) / 2
    return under, from_1


def normalised_curve(values: np.ndarray) -> np.ndarray:
    """Rows [full, empty, circuit...] x prompts -> (circuit - empty) / (full - empty) per
    circuit, each a mean over prompts (NaN where full == empty)."""
    m = values.mean(axis=1)
    den = m[0] - m[1]
    if abs(den) < 1e-12:
        return np.full(len(m) - 2, np.nan)
    return (m[2:] - m[1]) / den


@dataclass
class FaithfulnessCurve:
    """One method's faithfulness at MIB's fractions, signed and absolute, with CPR and CMD."""

    fractions: list[float]
    n_edges: list[int]  # edges asked for, int(p * total)
    kept_signed: list[int]  # edges left after pruning, signed-score circuits
    kept_absolute: list[int]  # edges left after pruning, absolute-score circuits
    faithfulness_signed: list[float]
    faithfulness_absolute: list[float]
    cpr: Interval
    cmd: Interval
    ablation: str
    n_prompts: int
    full: float  # mean metric of the full model
    empty: float  # mean metric with every edge ablated
    level: str = "edge"  # "node": n_edges holds the heads asked for; kept_* the edges left after pruning

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpr"], out["cmd"] = self.cpr.to_dict(), self.cmd.to_dict()
        return out


def edge_values(model: Any, graph: Graph, clean: Tokens, corrupt: Tokens, metric: MetricFn, masks: torch.Tensor,
                ablation: "str | Ablation" = Ablation.COUNTERFACTUAL, seed: int = 0, rows_per_pass: int = 16,
                progress: bool = False) -> torch.Tensor:
    """Metric [C N] of each edge configuration ``masks`` [C S R], edges outside it ablated."""
    _, acts = sender_outputs(model, corrupt)
    ablate = ablation_values(acts, ablation, len(clean), seed)
    return run_edge_masks(model, graph, clean, ablate, masks, metric, max_batch=max(rows_per_pass, len(clean)),
                          progress=progress)


def mib_curve(model: Any, graph: Graph, clean: Tokens, corrupt: Tokens, metric: MetricFn, scores: torch.Tensor,
              ablation: "str | Ablation" = Ablation.COUNTERFACTUAL, fractions: Sequence[float] = MIB_FRACTIONS,
              seed: int = 0, split: str = "", progress: bool = False) -> FaithfulnessCurve:
    """The faithfulness curve of edge ``scores`` [S R] at ``fractions`` on these prompts, with
    CPR (signed) and CMD (absolute) and their bootstrap intervals over prompts."""
    sizes = sizes_at(graph, fractions)
    # the workbench's scores are the metric's change when an edge is patched: negative for an edge
    # that carries the behaviour; MIB attributes with the loss (-metric), so its signed score is ours negated
    signed = [prune(graph, top_n(graph, -scores, k, absolute=False)) for k in sizes]
    absolute = [prune(graph, top_n(graph, scores, k, absolute=True)) for k in sizes]
    return _scored_curve(model, graph, (clean, corrupt, metric), signed, absolute, sizes, fractions, ablation, seed,
                         split, progress, "edge")


def top_heads_circuit(graph: Graph, head_scores: torch.Tensor, n: int, absolute: bool) -> torch.Tensor:
    """MIB's node-level top-n: the ``n`` heads of largest node score (``absolute``: |score|) with
    every unscored node (input, logits, MLPs), every edge between kept nodes, pruned [S R]."""
    s = head_scores.detach().float().cpu().flatten()
    order = (s.abs() if absolute else s).argsort(descending=True)[:n].tolist()
    heads = [f"L{i // graph.n_heads}H{i % graph.n_heads}" for i in order]
    return prune(graph, node_circuit(graph, heads))


def mib_node_curve(model: Any, graph: Graph, clean: Tokens, corrupt: Tokens, metric: MetricFn,
                   head_scores: torch.Tensor, ablation: "str | Ablation" = Ablation.COUNTERFACTUAL,
                   fractions: Sequence[float] = MIB_FRACTIONS, seed: int = 0, split: str = "",
                   progress: bool = False) -> FaithfulnessCurve:
    """MIB's curve at the node level: head scores [layer head] (the workbench's sign: the metric's
    change when the head is patched), the top ``int(p * n_heads)`` heads at each fraction; CPR
    from signed scores, CMD from absolute ones, with bootstrap intervals over prompts."""
    sizes = [int(p * head_scores.numel()) for p in fractions]
    signed = [top_heads_circuit(graph, -head_scores, k, absolute=False) for k in sizes]
    absolute = [top_heads_circuit(graph, head_scores, k, absolute=True) for k in sizes]
    return _scored_curve(model, graph, (clean, corrupt, metric), signed, absolute, sizes, fractions, ablation, seed,
                         split, progress, "node")


def _scored_curve(model: Any, graph: Graph, prompts: tuple[Tokens, Tokens, MetricFn], signed: list[torch.Tensor],
                  absolute: list[torch.Tensor], sizes: list[int], fractions: Sequence[float],
                  ablation: "str | Ablation", seed: int, split: str, progress: bool, level: str) -> FaithfulnessCurve:
    """Run the full, empty, signed and absolute circuits on the prompts; normalise; the areas."""
    how = parse_ablation(ablation)
    clean, corrupt, metric = prompts
    masks = torch.stack([graph.valid, torch.zeros_like(graph.valid)] + signed + absolute)
    vals = edge_values(model, graph, clean, corrupt, metric, masks, how, seed, progress=progress)
    x = vals.double().cpu().numpy()
    c = len(sizes)
    rows_signed = np.concatenate([x[:2], x[2:2 + c]])
    rows_abs = np.concatenate([x[:2], x[2 + c:]])

    def cpr(r: np.ndarray) -> float:  # r: prompts x rows
        return areas(fractions, normalised_curve(r.T))[0]

    def cmd(r: np.ndarray) -> float:
        return areas(fractions, normalised_curve(r.T))[1]

    return FaithfulnessCurve(
        fractions=list(fractions), n_edges=sizes, kept_signed=[int(m.sum()) for m in signed],
        kept_absolute=[int(m.sum()) for m in absolute],
        faithfulness_signed=[float(v) for v in normalised_curve(rows_signed)],
        faithfulness_absolute=[float(v) for v in normalised_curve(rows_abs)],
        cpr=bootstrap(rows_signed.T, cpr, seed=seed, split=split), cmd=bootstrap(rows_abs.T, cmd, seed=seed, split=split),
        ablation=how.value, n_prompts=len(clean), full=float(x[0].mean()), empty=float(x[1].mean()), level=level)


def smallest_reaching(sizes: Sequence[int], faith: Sequence[float], target: float) -> tuple[int, bool]:
    """(the smallest size whose faithfulness reaches ``target``, True), else (the most
    faithful size, False): the default circuit size, chosen on held-out prompts."""
    for k, f in zip(sizes, faith):
        if f == f and f >= target:
            return k, True
    best = max(range(len(sizes)), key=lambda i: faith[i] if faith[i] == faith[i] else float("-inf"))
    return sizes[best], False
