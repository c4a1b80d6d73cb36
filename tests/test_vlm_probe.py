"""The forced-choice object-ranking probe on hand-made scores."""
from __future__ import annotations

import pytest
import torch

from workbench.analyses.vision_heads.vlm.objects import OBJECT_NAMES
from workbench.analyses.vision_heads.vlm.probe import chance_recall, ranking_recall


def test_ranking_recall_known_answers():
    scores = torch.zeros(2, len(OBJECT_NAMES))
    scores[0, OBJECT_NAMES.index("cat")] = 5.0
    scores[0, OBJECT_NAMES.index("rocket")] = 4.0
    scores[1, OBJECT_NAMES.index("horse")] = 3.0
    truths = [("cat", "cup"), ("horse",)]
    # scene 0: top-2 = cat, rocket -> 1 of 2; scene 1: top-1 = horse -> 1 of 1
    assert ranking_recall(scores, truths) == pytest.approx(2 / 3)
    assert chance_recall(truths) == pytest.approx((2 * 2 / 8 + 1 * 1 / 8) / 3)
