"""The per-head quantities circuit discovery (``circuit``) and the circuit-reuse study
(``reuse``) contribute to the head atlas: node score and membership per task, and the
head-class scores of Merullo et al."""
from __future__ import annotations

from typing import Any

import torch

from workbench.spec import HeadColumn

from .head_classes import CLASSES, THRESHOLDS
from workbench.names import parse_head


def membership(heads: list[str], like: torch.Tensor) -> torch.Tensor:
    """[layer head] 1.0 for the heads named ``L{l}H{h}`` in ``heads``."""
    grid = torch.zeros(like.shape, dtype=torch.float32)  # cpu: a [layer head] result column
    for name in heads:
        layer, head = parse_head(name)
        grid[layer, head] = 1.0
    return grid


CIRCUIT_COLUMNS = (
    HeadColumn("circuit_score", lambda r: {r.task: r.head_scores.float().abs()}, unit="|node score|",
               description="magnitude of the head's node score (sum of its outgoing edge scores) in the discovered "
                           "circuit's method"),
    HeadColumn("circuit_member", lambda r: {r.task: membership(r.heads, r.head_scores)}, unit="flag", threshold=0.5,
               description="1 when the head is in the discovered circuit"),
)


def _class(name: str):
    def values(result: Any) -> torch.Tensor | None:
        scores = result.class_scores
        return scores[name].float() if name in scores else None

    return values


REUSE_COLUMNS = tuple(
    HeadColumn(f"head_class_{name}", _class(name), unit="class score", threshold=THRESHOLDS[name],
               description=f"Merullo et al.'s {name.replace('_', ' ')} score (reuse study)")
    for name in CLASSES
) + (
    HeadColumn("reuse_member", lambda r: {t: membership(r.circuit(t).heads, r.head_scores(t))
                                          for t in ("ioi", "colored_objects")}, unit="flag", threshold=0.5,
               description="1 when the head is in the task's EAP-IG circuit (reuse study)"),
)
