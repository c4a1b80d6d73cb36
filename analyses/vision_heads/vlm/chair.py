"""CHAIR-style hallucination rates for generated captions (Rohrbach et al. 2018), on the
scene vocabulary of ``objects.py``:

* CHAIR_i (per object): mentioned objects not in the image / all mentioned objects;
* CHAIR_s (per caption): captions with at least one such object / all captions;
* recall: objects in the image that the caption mentions / objects in the image.

Words are matched after lower-casing and splitting on non-letters; every synonym maps to
its object (``objects.SYNONYMS``), so "kitten" counts as "cat"."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from workbench.analyses.vision_heads.vlm.objects import SYNONYMS

_WORD = re.compile(r"[a-z]+")


def mentioned_objects(caption: str) -> list[str]:
    """Objects a caption names, in order, each once."""
    found: list[str] = []
    for word in _WORD.findall(caption.lower()):
        obj = SYNONYMS.get(word)
        if obj is not None and obj not in found:
            found.append(obj)
    return found


@dataclass
class ChairScores:
    chair_i: float
    chair_s: float
    recall: float
    n_captions: int
    n_mentioned: int
    n_hallucinated: int
    mean_words: float


def chair(captions: Sequence[str], truths: Sequence[Sequence[str]]) -> ChairScores:
    """CHAIR_i, CHAIR_s and recall of ``captions`` against the objects truly in each image."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground-truth object lists")
    mentioned = hallucinated = bad_captions = hits = n_true = 0
    words = 0
    for cap, truth in zip(captions, truths):
        said = mentioned_objects(cap)
        wrong = [o for o in said if o not in truth]
        mentioned += len(said)
        hallucinated += len(wrong)
        bad_captions += bool(wrong)
        hits += sum(o in said for o in truth)
        n_true += len(truth)
        words += len(_WORD.findall(cap.lower()))
    n = max(len(captions), 1)
    return ChairScores(
        chair_i=hallucinated / mentioned if mentioned else 0.0,
        chair_s=bad_captions / n,
        recall=hits / n_true if n_true else 0.0,
        n_captions=len(captions),
        n_mentioned=mentioned,
        n_hallucinated=hallucinated,
        mean_words=words / n,
    )


def per_caption(captions: Sequence[str], truths: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Per caption: objects ``mentioned``, of them ``hallucinated`` (not in the image), true
    objects named (``hits``) and objects in the image (``n_true``): the samples that CHAIR's
    intervals resample (CHAIR_i = sum hallucinated / sum mentioned, recall = sum hits / sum n_true,
    CHAIR_s = mean of hallucinated > 0)."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground-truth object lists")
    out: dict[str, list[int]] = {"mentioned": [], "hallucinated": [], "hits": [], "n_true": []}
    for cap, truth in zip(captions, truths):
        said = mentioned_objects(cap)
        out["mentioned"].append(len(said))
        out["hallucinated"].append(sum(o not in truth for o in said))
        out["hits"].append(sum(o in said for o in truth))
        out["n_true"].append(len(truth))
    return out
