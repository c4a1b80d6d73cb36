"""Edge attribution patching (Syed et al. 2023) and EAP with integrated gradients
(Hanna et al. 2024) over the graph of heads and MLPs (``workbench.patching.graph``).

EAP scores an edge u -> v by the first-order change of the metric when u's output, as
v reads it, is replaced by its corrupt value: (a_u(corrupt) - a_u(clean)) . dm/d(input_v),
from one clean forward, one corrupt forward and one backward. EAP-IG averages the
gradient over ``steps`` points on the straight line from the corrupt to the clean input
embeddings (alpha = k/steps, k = 0..steps-1, as the EAP-IG reference code does).
Scores are summed over positions and averaged over prompts: [senders receivers].
"""
from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..cache import Tokens
from ..errors import InputError
from .graph import Graph, LogitDiff, QKV, receiver_grads, sender_deltas, sender_outputs, edge_scores_from

METHODS = ("eap", "eap-ig")


def edge_attribution(model: Any, clean: Tokens, corrupt: Tokens, metric: LogitDiff, method: str = "eap-ig",
                     steps: int = 5, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """Edge scores [S R] (0 where no edge exists) by EAP or EAP-IG, in metric units."""
    if method not in METHODS:
        raise InputError(f"unknown attribution method '{method}'; choose one of {', '.join(METHODS)}")
    if clean.input_ids.shape != corrupt.input_ids.shape:
        raise InputError(f"clean tokens {tuple(clean.input_ids.shape)} and corrupt tokens {tuple(corrupt.input_ids.shape)} "
                         "differ in shape; patching needs token-aligned pairs of equal length")
    if method == "eap-ig" and steps < 1:
        raise InputError(f"steps={steps}: EAP-IG needs at least one integration step")
    graph = Graph.for_model(model)
    n = len(clean)
    # cpu: edge scores accumulate in float64 on the CPU (each batch's scores are moved there)
    scores = torch.zeros(graph.valid.shape, dtype=torch.float64)
    qkv = QKV(model)
    chunks = list(range(0, n, batch_size))
    total = len(chunks) * (steps if method == "eap-ig" else 1)
    bar = tqdm(total=total, desc=method, disable=not progress, leave=False)
    try:
        for start in chunks:
            stop = min(n, start + batch_size)
            c, m, deltas, e_clean, e_corrupt = _chunk(model, graph, clean, corrupt, metric, start, stop)
            if method == "eap":
                grads, _ = receiver_grads(model, c, m, qkv=qkv)
                bar.update(1)
            else:
                summed: torch.Tensor | None = None
                for step in range(steps):
                    e = e_corrupt + (step / steps) * (e_clean - e_corrupt)
                    g, _ = receiver_grads(model, c, m, embed=e, qkv=qkv)
                    summed = g if summed is None else summed + g
                    bar.update(1)
                assert summed is not None  # steps >= 1, checked above
                grads = summed / steps
            scores += edge_scores_from(graph, deltas, grads).double().cpu() * (stop - start) / n  # [S R] is kept on the CPU
    finally:
        qkv.close()
        bar.close()
    return scores.float()


def _chunk(model: Any, graph: Any, clean: Tokens, corrupt: Tokens, metric: LogitDiff, start: int, stop: int):
    """One chunk's clean tokens, metric, sender deltas (corrupt - clean) and both embeddings."""
    c, k = clean.slice(start, stop), corrupt.slice(start, stop)
    _, acts_clean = sender_outputs(model, c)
    _, acts_corrupt = sender_outputs(model, k)
    deltas = sender_deltas(model, graph, acts_clean, acts_corrupt)
    return c, metric.sub(start, stop), deltas, acts_clean["embed"], acts_corrupt["embed"]


def edge_attribution_steps(model: Any, clean: Tokens, corrupt: Tokens, metric: LogitDiff, steps: int = 8,
                           batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """EAP-IG's score of every edge at each integration point separately: [steps S R], the
    gradient taken at alpha = k/steps (k = 0..steps-1). Their mean is ``edge_attribution(...,
    "eap-ig", steps)``; the mean over every ``steps // s``-th point is EAP-IG with ``s`` steps
    (``ig_subsample``), so one run shows how the scores converge in the number of steps."""
    if steps < 1:
        raise InputError(f"steps={steps}: EAP-IG needs at least one integration step")
    if clean.input_ids.shape != corrupt.input_ids.shape:
        raise InputError(f"clean tokens {tuple(clean.input_ids.shape)} and corrupt tokens {tuple(corrupt.input_ids.shape)} "
                         "differ in shape; patching needs token-aligned pairs of equal length")
    graph = Graph.for_model(model)
    n = len(clean)
    # cpu: edge scores accumulate in float64 on the CPU (each batch's scores are moved there)
    out = torch.zeros(steps, *graph.valid.shape, dtype=torch.float64)
    qkv = QKV(model)
    chunks = list(range(0, n, batch_size))
    bar = tqdm(total=len(chunks) * steps, desc="eap-ig steps", disable=not progress, leave=False)
    try:
        for start in chunks:
            stop = min(n, start + batch_size)
            c, m, deltas, e_clean, e_corrupt = _chunk(model, graph, clean, corrupt, metric, start, stop)
            for step in range(steps):
                e = e_corrupt + (step / steps) * (e_clean - e_corrupt)
                g, _ = receiver_grads(model, c, m, embed=e, qkv=qkv)
                out[step] += edge_scores_from(graph, deltas, g).double().cpu() * (stop - start) / n
                bar.update(1)
    finally:
        qkv.close()
        bar.close()
    return out.float()


def ig_subsample(per_step: torch.Tensor, steps: int) -> torch.Tensor:
    """EAP-IG scores with ``steps`` integration points from the per-point scores of
    ``edge_attribution_steps`` run with a multiple of ``steps`` points: [S R]."""
    total = per_step.shape[0]
    if steps < 1 or total % steps:
        raise InputError(f"EAP-IG with {steps} steps cannot be read from {total} points; use a divisor of {total}")
    return per_step[:: total // steps].mean(0)


def node_scores(graph: Graph, scores: torch.Tensor) -> torch.Tensor:
    """A sender's score as the sum of its outgoing edges' scores [S]: the first-order effect
    of patching its output everywhere (what activation patching of the node measures)."""
    return scores.sum(dim=1)


def head_grid(graph: Graph, per_sender: torch.Tensor) -> torch.Tensor:
    """Per-sender values -> [layer head] grid of the heads."""
    return torch.stack([per_sender[graph.head_slice(l)] for l in range(graph.n_layers)])
