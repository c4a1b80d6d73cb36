"""ACDC-style greedy pruning (Conmy et al. 2023): the exact but slow reference.

Start from the full graph; visit receivers from the logits backwards and, for each,
its incoming edges from the latest sender to the earliest; remove an edge for good
when the circuit's distance from the full model grows by less than ``tau``. Distance:
|mean metric(full) - mean metric(circuit)| with removed edges carrying the ablation
value. One forward per edge tried, so ``candidates`` can restrict the edges tried (the
rest start removed), e.g. the top edges of EAP-IG on a large model.
"""
from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..cache import Tokens
from ..errors import InputError
from .graph import Graph, run_edge_masks

MAX_EDGES_TRIED = 5000


def acdc(model: Any, graph: Graph, tokens: Tokens, ablate: dict[str, torch.Tensor], metric: Any, tau: float = 0.05,
         candidates: torch.Tensor | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept edges [S R] bool, score [S R]: the distance increase seen when each edge was tried)."""
    keep = graph.valid.clone() if candidates is None else (candidates & graph.valid)
    n_try = int(keep.sum())
    if n_try > MAX_EDGES_TRIED:
        raise InputError(f"ACDC would try {n_try} edges (one forward each); restrict it with candidates "
                         f"(e.g. --acdc-candidates 300) to at most {MAX_EDGES_TRIED}")
    full = float(run_edge_masks(model, graph, tokens, ablate, graph.valid, metric).mean())
    current = float(run_edge_masks(model, graph, tokens, ablate, keep, metric).mean())
    dist = abs(full - current)
    scores = torch.zeros(graph.valid.shape)
    order_r = sorted(range(len(graph.receivers)), key=lambda j: -graph.rank(graph.receivers[j]))
    bar = tqdm(total=n_try, desc="acdc", disable=not progress, leave=False)
    for j in order_r:
        senders = [i for i in keep[:, j].nonzero().flatten().tolist()]
        senders.sort(key=lambda i: -graph.rank(graph.senders[i]))
        for i in senders:
            trial = keep.clone()
            trial[i, j] = False
            value = float(run_edge_masks(model, graph, tokens, ablate, trial, metric).mean())
            new = abs(full - value)
            scores[i, j] = new - dist
            if new - dist < tau:
                keep, dist = trial, new
            bar.update(1)
    bar.close()
    return keep, scores
