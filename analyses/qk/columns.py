"""The per-head quantities QK attribution contributes to the head atlas: each head's
strongest K- and Q-composition score from an earlier head (the source's name is on the
atlas card, read from the same run)."""
from __future__ import annotations

import torch

from workbench.spec import HeadColumn


def strongest(scores: torch.Tensor) -> torch.Tensor:
    """[layer head] the largest score into each head from [layer head layer head] (layer 0: NaN)."""
    scores = scores.float()
    n_layers, n_heads = scores.shape[:2]
    flat = scores.permute(2, 3, 0, 1).reshape(n_layers, n_heads, -1)
    best = flat.nan_to_num(float("-inf")).max(-1).values
    return torch.where(torch.isfinite(best), best, torch.full_like(best, float("nan")))


HEAD_COLUMNS = (
    HeadColumn("k_composition", lambda r: strongest(r.composition["K"]), unit="score − random baseline",
               description="strongest K-composition from an earlier head (Elhage et al. 2021, from the weights): "
                           "how much an earlier head's output lies where this head's keys read"),
    HeadColumn("q_composition", lambda r: strongest(r.composition["Q"]), unit="score − random baseline",
               description="strongest Q-composition from an earlier head (from the weights)"),
)
