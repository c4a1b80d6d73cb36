"""The per-head quantities the induction analysis contributes to the head atlas."""
from __future__ import annotations

from workbench.spec import HeadColumn

HEAD_COLUMNS = (
    HeadColumn("induction_score", lambda r: r.induction_score.float(), unit="attention share", threshold=0.4,
               description="mean attention from a repeated token to the token after its first occurrence"),
    HeadColumn("prev_token_score", lambda r: r.prev_token_score.float(), unit="attention share", threshold=0.4,
               description="mean attention from each token to the token before it"),
)
