"""The rows of the in-context regression result's seed table, as typed records (saved as JSON
objects with these keys, in this order: the same JSON the rows were saved as when they were dicts)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedRow:
    """One seed's trained model (``heads`` heads): its zero-sum ratio, whether it reached the
    opposite-sign pattern, its OV weights on y and its test error at the training length."""

    heads: int
    seed: int
    zero_sum_ratio: float  # |sum_h mu_h| / sum_h |mu_h| at the end of training
    reached: bool  # zero_sum_ratio under the criterion's threshold
    mu: list[float]  # the last OV entry of each head
    mse: float  # test MSE at the training length
    mse_gd_debiased: float  # closed-form debiased GD's test MSE on the same prompts
    train_seconds: float  # 0.0 when the model came from the cache
