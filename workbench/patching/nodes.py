"""Node circuits, the exact node-level reference, and the stability of a discovery.

* ``exact_head_effects``: patch every head exactly from the corrupt run, one configuration
  per head on the batched engine: the reference that EAP and EAP-IG approximate at the node
  level (a head's EAP node score is the sum of its outgoing edges' scores);
* ``node_circuit``: the edges among kept heads (with the input, the logits and, by default,
  every MLP), so a handful of heads is measured on the same edge-masked forward as an edge
  circuit, and node rankings can be compared at equal size;
* ``compare_heads``: Spearman rank agreement and top-k overlap of two head rankings;
* ``stability``: bootstrap the discovery prompts, rediscover, and report the mean pairwise
  Jaccard of the top-k edges and of the top heads (Méloux et al. ask for at least 0.8).
"""
from __future__ import annotations

from itertools import combinations
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..cache import Tokens
from ..errors import InputError
from .graph import Graph, LogitDiff, top_edges


def exact_head_effects(model: Any, clean: Tokens, corrupt: Tokens, metric: Callable) -> torch.Tensor:
    """Mean metric change [layer head] when each head's output is taken from the corrupt run."""
    from .activation import patch_heads

    return patch_heads(model, clean, corrupt, metric).effect


def head_names(graph: Graph, grid: torch.Tensor, k: int) -> list[str]:
    """The ``k`` heads of largest |value| in a [layer head] grid, as ``L{l}H{h}``."""
    if not 1 <= k <= grid.numel():
        raise InputError(f"asked for {k} heads; the model has {grid.numel()}")
    idx = grid.abs().flatten().topk(k).indices.tolist()
    return [graph.senders[graph.head_slice(i // graph.n_heads).start + i % graph.n_heads] for i in idx]


def node_circuit(graph: Graph, heads: Sequence[str], mlps: bool = True) -> torch.Tensor:
    """[S R] bool: every edge between kept nodes: the input, the logits, ``heads`` and (with
    ``mlps``) every MLP."""
    unknown = [h for h in heads if h not in graph.senders]
    if unknown:
        raise InputError(f"unknown heads {unknown}; heads are named L{{layer}}H{{head}}")
    keep = {"input", "logits", *heads} | ({f"M{l}" for l in range(graph.n_layers)} if mlps else set())
    s_in = torch.tensor([s in keep for s in graph.senders])  # cpu: node masks over the CPU graph
    r_in = torch.tensor([r in keep for r in graph.receivers])  # cpu: node masks over the CPU graph
    return s_in[:, None] & r_in[None, :] & graph.valid


def compare_heads(a: torch.Tensor, b: torch.Tensor, k: int) -> dict[str, float]:
    """Spearman correlation of two [layer head] grids and the overlap of their top-``k`` |heads|."""
    from scipy.stats import spearmanr

    ta = set(a.abs().flatten().topk(k).indices.tolist())
    tb = set(b.abs().flatten().topk(k).indices.tolist())
    rho = float(spearmanr(a.flatten().cpu().numpy(), b.flatten().cpu().numpy()).statistic)
    return {"spearman": rho, f"top{k}_overlap": len(ta & tb) / k}


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two boolean masks (1 when both are empty)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def mean_pairwise_jaccard(masks: Sequence[torch.Tensor]) -> float:
    """The mean Jaccard index over every pair of masks."""
    pairs = list(combinations(range(len(masks)), 2))
    if not pairs:
        raise InputError("stability needs at least two resamples")
    return float(np.mean([jaccard(masks[i], masks[j]) for i, j in pairs]))


def resample(tokens: Tokens, rows: torch.Tensor) -> Tokens:
    """The prompts at ``rows`` (with repeats), padding kept."""
    return Tokens(tokens.input_ids[rows], tokens.attention_mask[rows])


def stability(model: Any, clean: Tokens, corrupt: Tokens, metric: LogitDiff,
              discover: Callable[[Tokens, Tokens, LogitDiff], torch.Tensor], k_edges: int, k_heads: int,
              n_boot: int = 5, seed: int = 0) -> dict[str, Any]:
    """Rediscover on ``n_boot`` bootstrap resamples of the discovery prompts (``discover(clean,
    corrupt, metric) -> scores [S R]``): mean pairwise Jaccard of the top-``k_edges`` edges and
    of the top-``k_heads`` heads (by node score: the sum of a head's outgoing edge scores)."""
    graph = Graph.for_model(model)
    g = torch.Generator().manual_seed(seed)
    n = len(clean)
    edges, heads = [], []
    for _ in range(n_boot):
        rows = torch.randint(n, (n,), generator=g)  # cpu: prompt indices
        scores = discover(resample(clean, rows), resample(corrupt, rows),
                          LogitDiff(metric.correct[rows.to(metric.correct.device)],
                                    metric.wrong[rows.to(metric.wrong.device)]))
        edges.append(top_edges(graph, scores, min(k_edges, graph.n_edges)))
        per_head = torch.stack([scores.sum(1)[graph.head_slice(l)] for l in range(graph.n_layers)])
        mask = torch.zeros(per_head.numel(), dtype=torch.bool)  # cpu: a selection over the CPU graph
        mask[per_head.abs().flatten().topk(k_heads).indices] = True
        heads.append(mask)
    return {"n_boot": n_boot, "k_edges": k_edges, "k_heads": k_heads, "edge_jaccard": mean_pairwise_jaccard(edges),
            "head_jaccard": mean_pairwise_jaccard(heads)}
