"""Small typed records that Results of several analyses hold (a field's element type),
saved and loaded by ``workbench.result_fields`` like any dataclass."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadEffect:
    """One head and a number measured on it (an ablation effect, a score), ``(layer, head)`` zero-based."""

    layer: int
    head: int
    effect: float
