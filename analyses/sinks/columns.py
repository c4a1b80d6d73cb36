"""The per-head quantities the attention-sinks analysis contributes to the head atlas."""
from __future__ import annotations

import torch

from workbench.names import parse_head
from workbench.spec import HeadColumn

from .result import SinksResult


def _calibrated(result: SinksResult) -> torch.Tensor:
    """1 for the heads ACT's calibration search chose, 0 elsewhere."""
    grid = torch.zeros_like(result.sink_strength, dtype=torch.float32)
    for name in result.calibrated_heads:
        layer, head = parse_head(name)
        grid[layer, head] = 1.0
    return grid


HEAD_COLUMNS = (
    HeadColumn("sink_strength", lambda r: r.sink_strength.float(), unit="attention share",
               description="mean over prompts of the strongest column-mean attention on a non-first token"),
    HeadColumn("sink_share", lambda r: r.sink_share.float(), unit="share of prompts",
               description="share of prompts where the head has a sink beyond the first token"),
    HeadColumn("sink_calibrated", _calibrated, unit="flag", threshold=0.5,
               description="1 when ACT's calibration search chose the head"),
)
