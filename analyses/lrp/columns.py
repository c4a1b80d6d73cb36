"""The per-head quantity AttnLRP contributes to the head atlas (prompt runs only; an image
run has no attention heads, so it contributes nothing)."""
from __future__ import annotations

from typing import Any

from workbench.spec import HeadColumn


def _relevance(result: Any) -> dict[str, Any] | None:
    if not hasattr(result, "head_relevance"):
        return None
    return {result.task: result.head_relevance.float()}


HEAD_COLUMNS = (
    HeadColumn("lrp_relevance", _relevance, unit="relevance (logit units)",
               description="AttnLRP relevance of the head's output for the explained logit (difference), "
                           "mean over prompts"),
)
