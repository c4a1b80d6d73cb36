"""The conditions a vision-heads run captions scenes under, and what it measures on the
captions: the head policy of a head set at an alpha (or its random control), captions of a
feature set under a policy (the prompt caches built once per feature set), CHAIR and recall,
the VHD map and the T-VHD at object words."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .config import VHDConfig, parse_head_set
from .vlm.chair import chair
from .vlm.generate import Captioner, Generation, HeadPolicy
from .vlm.objects import SYNONYMS


def head_policy(head_set: str, alpha: float, config: VHDConfig, vhd_map: torch.Tensor, seed: int | None = None,
                random_heads: bool = False) -> HeadPolicy:
    """The policy of a head set at ``alpha``: ``vhr`` (its random control draws as many heads
    per layer and step) or ``top<k>`` (the k heads of largest ``vhd_map``; its control k random heads)."""
    k = parse_head_set(head_set)
    seed = config.seed if seed is None else seed
    if k == 0:
        return HeadPolicy("random" if random_heads else "vhr", alpha, config.distance, seed)
    flat = vhd_map.flatten()
    if random_heads:
        # cpu: a head order from a CPU generator; the mask is moved where it patches
        order = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:k]
    else:
        order = torch.argsort(flat, descending=True)[:k]
    # cpu: a head order from a CPU generator; the mask is moved where it patches
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return HeadPolicy("fixed", alpha, config.distance, seed, heads=mask.view(vhd_map.shape))


class Conditions:
    """Captions of the run's feature sets (test, validation) under head policies: one
    ``Captioner`` per feature set, so its paired batches and prompt caches are built once."""

    def __init__(self, vlm: Any, config: VHDConfig, progress: bool) -> None:
        self.vlm, self.config, self.progress = vlm, config, progress
        self.captioners: dict[int, Captioner] = {}

    def __call__(self, features: Any, policy: HeadPolicy | None = None, paired: bool = True) -> Generation:
        key = id(features)
        if key not in self.captioners:
            self.captioners[key] = Captioner(self.vlm, self.config.prompt, features, chunk=self.config.batch_size,
                                             max_new_tokens=self.config.max_new_tokens, progress=self.progress)
        return self.captioners[key](policy, paired=paired)

    def measured(self, features: Any) -> Generation:
        """The unmodified captions, with VHD at every step."""
        return self(features, HeadPolicy("none", distance=self.config.distance))

    def scaled(self, policy: HeadPolicy, features: Any) -> Generation:
        """Captions under a head policy (the image-free branch only where the policy reads VHD)."""
        return self(features, policy, paired=policy.mode != "fixed")


def chair_scores(captions: list[str], truths: Sequence[Sequence[str]]) -> dict[str, float]:
    """CHAIR_i, CHAIR_s, recall, mean words, objects mentioned and mentioned per caption."""
    s = chair(captions, truths)
    return {"chair_i": s.chair_i, "chair_s": s.chair_s, "recall": s.recall, "mean_words": s.mean_words,
            "n_mentioned": s.n_mentioned, "mentioned_per_caption": s.n_mentioned / max(s.n_captions, 1)}


def vhd_mean(g: Generation) -> torch.Tensor:
    """The VHD map ``[layer head]``: the mean VHD per head over every generated step of ``g``."""
    valid = g.valid.float()[..., None, None]
    return (g.vhd * valid).sum((0, 1)) / valid.sum().clamp(min=1)


def object_token_tvhd(tokens: list[list[str]], tvhd: torch.Tensor, truths: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Mean T-VHD at object-word tokens, split by whether the object is in the image."""
    real: list[float] = []
    halluc: list[float] = []
    for i, toks in enumerate(tokens):
        for t, piece in enumerate(toks):
            obj = SYNONYMS.get(piece.strip().lower().strip(".,"))
            if obj is None or t >= tvhd.shape[1]:
                continue
            (real if obj in truths[i] else halluc).append(float(tvhd[i, t]))
    return {"tvhd_real_objects": float(np.mean(real)) if real else None, "n_real": len(real),
            "tvhd_hallucinated_objects": float(np.mean(halluc)) if halluc else None, "n_hallucinated": len(halluc)}
