"""The circuit-discovery methods as one table (like auto-circuit's ``PruneAlgo``): a key, a
name and one ``discover(model, task, config) -> EdgeScores`` each. Analyses look a method
up here and orchestrate; they do not re-implement discovery.

    eap            edge attribution patching (Syed et al. 2023): scores only
    eap-ig         EAP with integrated gradients (Hanna et al. 2024): scores only
    acdc           greedy exact pruning (Conmy et al. 2023) over EAP-IG's top edges: scores and a circuit
    path-patching  Wang et al.'s two rounds of path patching: scores and a circuit
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from ..cache import Tokens
from ..errors import InputError
from .ablation import Ablation, ablation_values
from .graph import Graph, LogitDiff, prune_dangling, sender_outputs, top_edges


class PairedTask(Protocol):
    """What discovery reads: token-aligned clean and corrupt prompts and the metric."""

    clean: Tokens
    corrupt: Tokens
    metric: LogitDiff  # EAP and EAP-IG take it in slices of prompts (``LogitDiff.sub``)


@dataclass
class DiscoveryConfig:
    """The knobs of every method (each reads its own)."""

    ig_steps: int = 8  # EAP-IG integration steps
    batch_size: int = 8  # prompts per backward (EAP, EAP-IG)
    ablation: str = Ablation.COUNTERFACTUAL.value  # what a removed edge carries (ACDC)
    acdc_taus: tuple[float, ...] = (0.05,)  # one exact ACDC run per threshold; the first is the circuit
    acdc_candidates: int = 64  # EAP-IG's top edges that ACDC tries
    path_top: int = 6  # path patching: heads kept in each round
    ranked: torch.Tensor | None = None  # EAP-IG scores already computed (ACDC's candidates)
    progress: bool = False


@dataclass
class EdgeScores:
    """A method's answer: a score per edge [S R] and, for methods that choose one, a circuit
    [S R] bool (already pruned of edges that do not reach the logits). ``runs``: ACDC's
    (tau, circuit, scores) per threshold."""

    method: str
    graph: Graph
    scores: torch.Tensor
    circuit: torch.Tensor | None = None
    runs: list[tuple[float, torch.Tensor, torch.Tensor]] | None = None


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    discover: Callable[[Any, PairedTask, DiscoveryConfig], EdgeScores]
    own_circuit: bool  # whether the method chooses a circuit (else: top-k of its scores)


def _attribution(key: str) -> Callable[[Any, PairedTask, DiscoveryConfig], EdgeScores]:
    def discover(model: Any, task: PairedTask, config: DiscoveryConfig) -> EdgeScores:
        from .eap import edge_attribution

        scores = edge_attribution(model, task.clean, task.corrupt, task.metric, key, steps=config.ig_steps,
                                  batch_size=config.batch_size, progress=config.progress)
        return EdgeScores(key, Graph.for_model(model), scores)

    return discover


def _acdc(model: Any, task: PairedTask, config: DiscoveryConfig) -> EdgeScores:
    """ACDC at each of ``config.acdc_taus``, each an exact, separate run over EAP-IG's top
    ``acdc_candidates`` edges; the first threshold's circuit and scores are the answer."""
    from .acdc import acdc_sweep

    graph = Graph.for_model(model)
    ranked = config.ranked
    if ranked is None:
        ranked = _attribution("eap-ig")(model, task, config).scores
    cands = top_edges(graph, ranked, min(config.acdc_candidates, graph.n_edges))
    _, acts = sender_outputs(model, task.corrupt)
    ablate = ablation_values(acts, config.ablation, len(task.clean))
    runs = acdc_sweep(model, graph, task.clean, ablate, task.metric, list(config.acdc_taus), candidates=cands,
                      progress=config.progress)
    out = [(float(t), prune_dangling(graph, keep), scores) for t, (keep, scores) in zip(config.acdc_taus, runs)]
    return EdgeScores("acdc", graph, out[0][2], out[0][1], out)


def _path_patching(model: Any, task: PairedTask, config: DiscoveryConfig) -> EdgeScores:
    from .path import path_patching_circuit

    graph = Graph.for_model(model)
    scores, circuit = path_patching_circuit(model, graph, task.clean, task.corrupt, task.metric, config.path_top,
                                            config.progress)
    return EdgeScores("path-patching", graph, scores, circuit)


METHODS: dict[str, Method] = {m.key: m for m in (
    Method("eap", "Edge attribution patching", _attribution("eap"), own_circuit=False),
    Method("eap-ig", "EAP with integrated gradients", _attribution("eap-ig"), own_circuit=False),
    Method("acdc", "ACDC (greedy exact pruning)", _acdc, own_circuit=True),
    Method("path-patching", "Path patching (Wang et al.)", _path_patching, own_circuit=True),
)}
"""The discovery methods by key."""


def method(key: str) -> Method:
    """The method of ``key``; one line naming the known keys otherwise."""
    if key not in METHODS:
        raise InputError(f"unknown method '{key}'; choose one of {', '.join(METHODS)}")
    return METHODS[key]


def discover(model: Any, task: PairedTask, key: str, config: DiscoveryConfig | None = None) -> EdgeScores:
    """Edge scores (and the method's own circuit where it chooses one) by method ``key``."""
    return method(key).discover(model, task, config or DiscoveryConfig())
