"""The graph of heads and MLPs itself: its senders and receivers, which edges exist, and
circuits chosen over it (``workbench.patching.graph`` tells the whole story and re-exports
everything here).

Senders: the input embedding, every attention head ``L{l}H{h}`` and every MLP ``M{l}``.
Receivers: every head, every MLP and the logits. An edge exists when the sender comes
before the receiver (``Graph.rank``); with a parallel residual heads of layer l feed only
the later layers, not MLP l.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..cache import Tokens
from ..errors import InputError
from ..names import parse_head

MetricFn = Callable[[torch.Tensor], torch.Tensor]
"""last-token logits [..., N vocab] -> metric per prompt [..., N] (N the prompts, in order)."""


def last_logits(logits: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """Each prompt's logits at its last position: [b pos vocab] -> [b vocab]."""
    return logits[torch.arange(logits.shape[0], device=logits.device), tokens.last_positions]


@dataclass
class LogitDiff:
    """The metric logit(correct) - logit(wrong) per prompt; ``sub`` selects a slice of prompts."""

    correct: torch.Tensor  # [N]
    wrong: torch.Tensor  # [N]

    def __call__(self, last_logits: torch.Tensor) -> torch.Tensor:
        from .metrics import logit_diff

        return logit_diff(last_logits, self.correct, self.wrong)

    def sub(self, start: int, stop: int) -> "LogitDiff":
        return LogitDiff(self.correct[start:stop], self.wrong[start:stop])


@dataclass(frozen=True)
class Graph:
    """Sender and receiver names, their layers, and which edges exist ([S R] bool)."""

    n_layers: int
    n_heads: int
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    valid: torch.Tensor  # [S R] bool
    parallel: bool = False  # heads and MLP of one layer read the same residual (no head -> own-layer MLP edge)

    @classmethod
    def build(cls, n_layers: int, n_heads: int, parallel: bool = False) -> "Graph":
        senders = ["input"]
        receivers = []
        for l in range(n_layers):
            senders += [f"L{l}H{h}" for h in range(n_heads)] + [f"M{l}"]
            receivers += [f"L{l}H{h}" for h in range(n_heads)] + [f"M{l}"]
        receivers.append("logits")
        # cpu: the graph's structure lives on the CPU; whoever uses it on a device moves it
        s_rank = torch.tensor([_rank(s, n_layers, parallel) for s in senders])
        # cpu: the graph's structure lives on the CPU; whoever uses it on a device moves it
        r_rank = torch.tensor([_rank(r, n_layers, parallel) for r in receivers])
        valid = s_rank[:, None] < r_rank[None, :]
        return cls(n_layers, n_heads, tuple(senders), tuple(receivers), valid, parallel)

    @classmethod
    def for_model(cls, model: Any) -> "Graph":
        return cls.build(model.shape.n_layers, model.shape.n_heads, parallel=model.adapter.parallel)

    def rank(self, name: str) -> int:
        """Topological rank of a node (a sender never feeds a receiver of equal or lower rank)."""
        return _rank(name, self.n_layers, self.parallel)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def sender_index(self, name: str) -> int:
        return self.senders.index(name)

    def receiver_index(self, name: str) -> int:
        return self.receivers.index(name)

    def edge_names(self, mask: torch.Tensor) -> list[tuple[str, str]]:
        """The (sender, receiver) names where ``mask`` [S R] is True."""
        return [(self.senders[i], self.receivers[j]) for i, j in mask.nonzero().tolist()]

    def head_slice(self, layer: int) -> slice:
        """Sender indices of layer ``layer``'s heads (the receiver indices are these minus one)."""
        start = 1 + layer * (self.n_heads + 1)
        return slice(start, start + self.n_heads)

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def nodes_of(self, edges: torch.Tensor) -> list[str]:
        """Heads and MLPs touched by the edges in ``edges`` [S R] bool, in graph order."""
        used = set()
        for i, j in edges.nonzero().tolist():
            used.add(self.senders[i])
            used.add(self.receivers[j])
        return [n for n in self.senders if n in used and n != "input"]


def _rank(name: str, n_layers: int, parallel: bool = False) -> int:
    """Topological rank: input 0, heads of layer l 2l+1, MLP l 2l+2 (2l+1 with a parallel
    residual: it reads the same residual as the heads), logits last."""
    if name == "input":
        return 0
    if name == "logits":
        return 2 * n_layers + 1
    if name.startswith("M"):
        return 2 * int(name[1:]) + (1 if parallel else 2)
    return 2 * parse_head(name)[0] + 1


def prune_dangling(graph: Graph, edges: torch.Tensor) -> torch.Tensor:
    """Keep only edges whose receiver reaches the logits through kept edges ([S R] bool)."""
    edges = edges.clone() & graph.valid
    alive = {"logits"}
    # senders in reverse topological order; a node is alive if it has a kept edge to an alive receiver
    order = sorted(range(len(graph.senders)), key=lambda i: -graph.rank(graph.senders[i]))
    r_index = {r: j for j, r in enumerate(graph.receivers)}
    for i in order:
        name = graph.senders[i]
        outs = edges[i].nonzero().flatten().tolist()
        if any(graph.receivers[j] in alive for j in outs):
            alive.add(name)
    for name, j in r_index.items():
        if name not in alive:
            edges[:, j] = False
    return edges


def top_edges(graph: Graph, scores: torch.Tensor, n_edges: int | None = None, threshold: float | None = None) -> torch.Tensor:
    """The circuit: the ``n_edges`` edges of largest |score|, or those with |score| > threshold ([S R] bool)."""
    total = graph.n_edges
    absval = scores.abs().masked_fill(~graph.valid, -1.0)
    if n_edges is not None:
        if n_edges > total:
            raise InputError(f"asked for a circuit of {n_edges} edges but this model's graph has only {total}; "
                             f"choose n_edges <= {total}")
        if n_edges < 1:
            raise InputError(f"n_edges={n_edges}: a circuit needs at least one edge")
        idx = absval.flatten().topk(n_edges).indices
        mask = torch.zeros(absval.numel(), dtype=torch.bool)  # cpu: a selection over the CPU graph
        mask[idx] = True
        return mask.view_as(absval) & graph.valid
    if threshold is None:
        raise InputError("give either n_edges or threshold to pick a circuit")
    return (absval > threshold) & graph.valid
