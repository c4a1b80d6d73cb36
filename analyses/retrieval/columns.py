"""The per-head quantity the retrieval analysis contributes to the head atlas."""
from __future__ import annotations

from workbench.spec import HeadColumn

HEAD_COLUMNS = (
    HeadColumn("retrieval_score", lambda r: r.scores.float(), unit="share of answer tokens", threshold=0.1,
               description="Wu et al.: share of the needle answer's tokens the head copies by its attention argmax"),
)
