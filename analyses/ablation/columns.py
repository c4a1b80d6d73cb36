"""The per-head quantities head ablation contributes to the head atlas (one column per task)."""
from __future__ import annotations

from typing import Any

from workbench.spec import HeadColumn


def _effect(result: Any) -> dict[str, Any]:
    return {result.config.task if result.config is not None else "task": result.effect.float()}


HEAD_COLUMNS = (
    HeadColumn("ablation_effect", _effect, unit="logit diff", direction=-1,
               description="change in the task's logit difference (IO - S) when the head is mean-ablated; "
                           "more negative = the head matters more"),
)
