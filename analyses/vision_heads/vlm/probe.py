"""Does the model see? A forced-choice probe that does not depend on greedy decoding: for each
scene, score how the caption could start, " a cat" / " an astronaut" / ... for every object in
the vocabulary, and count how many of the scene's true objects rank among the top
``len(truth)``. Chance is ``len(truth) / n_objects``. The analysis no longer scores the starts
(it cost more forwards than the whole VHR experiment); the recall of a ranking and its chance
are kept for older runs' ``object_rank_recall`` fields."""
from __future__ import annotations

from typing import Sequence

import torch

from workbench.analyses.vision_heads.vlm.objects import OBJECT_NAMES


def ranking_recall(scores: torch.Tensor, truths: Sequence[Sequence[str]]) -> float:
    """Share of true objects among each scene's top-``len(truth)`` scored objects."""
    hits = total = 0
    for row, truth in zip(scores, truths):
        top = {OBJECT_NAMES[int(i)] for i in row.topk(len(truth)).indices}
        hits += sum(o in top for o in truth)
        total += len(truth)
    return hits / max(total, 1)


def chance_recall(truths: Sequence[Sequence[str]]) -> float:
    """The expected ranking recall of a random order."""
    total = sum(len(t) for t in truths)
    return sum(len(t) * len(t) / len(OBJECT_NAMES) for t in truths) / max(total, 1)
