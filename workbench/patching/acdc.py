"""ACDC-style greedy pruning (Conmy et al. 2023): the exact but slow reference.

Start from the full graph; visit receivers from the logits backwards and, for each,
its incoming edges from the latest sender to the earliest; remove an edge for good
when the circuit's distance from the full model grows by less than ``tau``. Distance:
|mean metric(full) - mean metric(circuit)| with removed edges carrying the ablation
value. One forward per edge tried, so ``candidates`` can restrict the edges tried (the
rest start removed), e.g. the top edges of EAP-IG on a large model.

``acdc_sweep`` runs ACDC at several thresholds (a faithfulness curve): each run is the
same exact, separate run as ``acdc(..., tau=t)``. The only thing shared between runs is
the value of a forward whose edge mask an earlier run has already evaluated (the full
model, the starting circuit, and every trial before the runs' first differing decision):
the same edge mask on the same prompts gives the same forward, so the kept edges and
scores are identical to separate runs (``tests/test_acdc_curve.py`` checks it).
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..cache import Tokens
from ..errors import InputError
from .graph import Graph, run_edge_masks

MAX_EDGES_TRIED = 5000


def check_candidates(n_try: int) -> None:
    """Refuse, with the fix, an ACDC run that would try more than ``MAX_EDGES_TRIED`` edges."""
    if n_try > MAX_EDGES_TRIED:
        raise InputError(f"ACDC would try {n_try} edges (one forward each); restrict it with candidates "
                         f"(e.g. --acdc-candidates 64) to at most {MAX_EDGES_TRIED}")


def acdc(model: Any, graph: Graph, tokens: Tokens, ablate: dict[str, torch.Tensor], metric: Any, tau: float = 0.05,
         candidates: torch.Tensor | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept edges [S R] bool, score [S R]: the distance increase seen when each edge was tried)."""
    return acdc_sweep(model, graph, tokens, ablate, metric, [tau], candidates, progress)[0]


def acdc_sweep(model: Any, graph: Graph, tokens: Tokens, ablate: dict[str, torch.Tensor], metric: Any,
               taus: list[float], candidates: torch.Tensor | None = None, progress: bool = False,
               on_run: Callable[[int, float, torch.Tensor], None] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[acdc(model, graph, tokens, ablate, metric, tau=t, candidates=candidates) for t in taus]``,
    each run exact and separate; a forward of an edge mask seen before is not repeated (see the
    module docstring). ``on_run(i, tau, kept)`` is called after each run (progress)."""
    start = graph.valid.clone() if candidates is None else (candidates & graph.valid)
    check_candidates(int(start.sum()))
    seen: dict[bytes, float] = {}

    def evaluate(mask: torch.Tensor) -> float:
        key = hashlib.blake2b(mask.contiguous().cpu().numpy().tobytes(), digest_size=20).digest()
        if key not in seen:
            seen[key] = float(run_edge_masks(model, graph, tokens, ablate, mask, metric).mean())
        return seen[key]

    out = []
    for i, tau in enumerate(taus):
        desc = "acdc" if len(taus) == 1 else f"acdc tau={float(tau):g} ({i + 1}/{len(taus)})"
        keep, scores = _greedy(graph, start.clone(), float(tau), evaluate, progress, desc)
        out.append((keep, scores))
        if on_run is not None:
            on_run(i, float(tau), keep)
    return out


def _greedy(graph: Graph, keep: torch.Tensor, tau: float, evaluate: Callable[[torch.Tensor], float], progress: bool,
            desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ACDC loop from ``keep`` (the edges tried), each forward through ``evaluate``."""
    n_try = int(keep.sum())
    full = evaluate(graph.valid)
    dist = abs(full - evaluate(keep))
    scores = torch.zeros(graph.valid.shape)  # cpu: edge scores live on the CPU, like the graph
    order_r = sorted(range(len(graph.receivers)), key=lambda j: -graph.rank(graph.receivers[j]))
    bar = tqdm(total=n_try, desc=desc, disable=not progress, leave=False)
    for j in order_r:
        senders = keep[:, j].nonzero().flatten().tolist()
        senders.sort(key=lambda i: -graph.rank(graph.senders[i]))
        for i in senders:
            trial = keep.clone()
            trial[i, j] = False
            new = abs(full - evaluate(trial))
            scores[i, j] = new - dist
            if new - dist < tau:
                keep, dist = trial, new
            bar.update(1)
    bar.close()
    return keep, scores
