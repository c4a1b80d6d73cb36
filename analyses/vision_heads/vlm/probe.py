"""Does the model see? A forced-choice probe that does not depend on greedy decoding: for each
scene, score how the caption could start, " a cat" / " an astronaut" / ... for every object in
the vocabulary (log-probability of the two tokens after the prompt), and count how many of the
scene's true objects rank among the top ``len(truth)``. Chance is ``len(truth) / n_objects``."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from workbench.cache import forward_embeds
from workbench.analyses.vision_heads.vlm.model import left_pad
from workbench.analyses.vision_heads.vlm.objects import OBJECT_NAMES


def _start(obj: str) -> str:
    return (" an " if obj[0] in "aeiou" else " a ") + obj


def first_object_scores(vlm: Any, prompt: str, features: torch.Tensor | None, n: int) -> torch.Tensor:
    """Log-probability that the caption starts with each object, ``[n n_objects]``."""
    starts = [_start(o) for o in OBJECT_NAMES]
    # cpu: per-object scores, filled by column copies (a slice copy crosses devices)
    scores = torch.zeros(n, len(starts))
    for j, start in enumerate(starts):
        rows = vlm.rows(prompt, features, suffixes=[start] * n) if features is not None else \
            vlm.rows(prompt, None, suffixes=[start]) * n
        embeds, mask, pos = left_pad(rows)
        with torch.no_grad():
            logits, _, _ = forward_embeds(vlm.lm, embeds, mask, position_ids=pos)
        ids = vlm.text_ids(start)
        logp = logits[:, -len(ids) - 1:-1].float().log_softmax(-1)
        scores[:, j] = logp.gather(-1, ids[None, :, None].expand(n, -1, 1)).squeeze(-1).sum(-1)
    return scores


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
