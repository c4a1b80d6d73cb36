"""The vision-heads run's three phases: 1. does the model see (caption losses and recall on the
test scenes against image-free baselines); 2. validation (the VHD map, then every head set and
alpha against the validation objective, and the choice); 3. test (the captions before VHR, with
the chosen VHR, with random heads and with every head scaled)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import choice
from .conditions import Conditions, chair_scores, head_policy, vhd_mean
from .config import VHDConfig, candidate_alphas, candidate_sets
from .result import Choice, SweepRow
from .vlm.chair import chair
from .vlm.generate import Generation, HeadPolicy, generate_chunked
from .vlm.heads import token_vhd
from .vlm.model import VisionLanguageModel
from .vlm.scenes import Scene
from .vlm.train import caption_losses

LOSS_SCENES = 16  # test scenes the caption losses are measured on
CRITERION = choice.CRITERION


# ---------------------------------------------------------------------------- 1. does it see?
def sight(vlm: VisionLanguageModel, config: VHDConfig, scenes: Sequence[Scene], feats: torch.Tensor,
          progress: bool) -> dict[str, Any]:
    """Caption loss on the first test scenes with their image, another scene's image and none;
    the recall of greedy captions of another scene's image."""
    out: dict[str, Any] = {}
    # cpu: indexes a Python list of scenes
    perm = torch.roll(torch.arange(len(scenes)), 1)  # each scene gets its neighbour's image
    m = min(len(scenes), LOSS_SCENES)  # the caption losses on the first test scenes (one forward each)
    with torch.no_grad():
        caps = [s.caption for s in scenes[:m]]
        out["caption_loss"] = float(caption_losses(vlm, config.prompt, feats[:m], caps).mean())
        out["caption_loss_shuffled_image"] = float(caption_losses(vlm, config.prompt, feats[perm][:m], caps).mean())
        out["caption_loss_no_image"] = float(caption_losses(vlm, config.prompt, None, caps).mean())
        out["caption_loss_n"] = m
    shuffled = generate_chunked(vlm, config.prompt, feats[perm], paired=False, max_new_tokens=config.max_new_tokens,
                                chunk=config.batch_size, progress=progress)
    out["recall_shuffled_image"] = chair(shuffled.captions, [s.objects for s in scenes]).recall
    out["captions_shuffled_image"] = shuffled.captions
    return out


# ---------------------------------------------------------------------------- 2. validation
def objective(scores: dict[str, float]) -> float:
    """What the validation scenes maximise: recall of present objects minus CHAIR_i (fewer
    hallucinations without naming fewer true objects)."""
    return float(scores["recall"]) - float(scores["chair_i"])


def choose(sweep: list[SweepRow], before: np.ndarray, settings: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """The validation choice among the ``sweep`` rows (``choice.CRITERION``) from per-scene counts
    (``before`` and one per row, ``choice.counts``), with its bootstrap stability."""
    out = choice.choose(before, settings, [r.alpha for r in sweep], seed=seed)
    return {**out, "settings": [f"{r.head_set} alpha {r.alpha:g}" for r in sweep]}


@dataclass
class Validation:
    """The validation phase: its VHD map (what ``top<k>`` uses), the scores without VHR, the
    sweep and the choice (None when one setting was given), and the setting reported as "after"."""

    vhd_map: torch.Tensor  # [layer head]
    before: dict[str, float]
    sweep: list[SweepRow]
    choice: Choice | None
    head_set: str
    alpha: float
    chosen_by: str  # "val" or "given"


def validate(conditions: Conditions, config: VHDConfig, feats: Any, truths: Sequence[Sequence[str]],
             progress: bool) -> Validation:
    """The VHD map of the validation captions, then every (head set, alpha) against the
    validation objective; the choice among them, or the one setting given."""
    base = conditions.measured(feats)
    vhd_map = vhd_mean(base)
    before = chair_scores(base.captions, truths)
    candidates = [(h, float(a)) for h in candidate_sets(config) for a in candidate_alphas(config)]
    if len(candidates) == 1:
        head_set, alpha = candidates[0]
        return Validation(vhd_map, before, [], None, head_set, alpha, "given")
    sweep, setting_counts = [], []
    for h, a in tqdm(candidates, desc="validation sweep", disable=not progress):
        g = conditions.scaled(head_policy(h, a, config, vhd_map), feats)
        sc = chair_scores(g.captions, truths)
        sweep.append(SweepRow(h, a, sc, objective(sc)))
        setting_counts.append(choice.counts(g.captions, truths))
    chosen = choose(sweep, choice.counts(base.captions, truths), setting_counts, seed=config.seed)
    best = sweep[chosen["index"]]
    return Validation(vhd_map, before, sweep, Choice(**chosen), best.head_set, best.alpha, "val")


# ---------------------------------------------------------------------------- 3. test
@dataclass
class CaptionsOnTest:
    """The test phase's captions: before (with VHD at every step), the chosen VHR, each random-heads
    draw and every head scaled; the VHD map and T-VHD of the captions before."""

    base: Generation
    vhr: Generation
    randoms: list[Generation]
    every: Generation
    vhd_map: torch.Tensor  # [layer head]
    tvhd: torch.Tensor  # [scene step]

    @property
    def heads_scaled(self) -> float:
        """Heads the chosen VHR scaled per generated step (0 when nothing was generated)."""
        vhr = self.vhr
        return float(vhr.selected[vhr.valid].float().sum((-1, -2)).mean()) if vhr.valid.any() else 0.0

    def runs(self) -> dict[str, list[list[str]]]:
        """Each condition's caption lists (one per random-heads draw), for the intervals."""
        return {"before": [self.base.captions], "after": [self.vhr.captions],
                "random_control": [r.captions for r in self.randoms], "all_heads": [self.every.captions]}


def caption_test(conditions: Conditions, config: VHDConfig, feats: Any, val: Validation,
                 progress: bool) -> CaptionsOnTest:
    """Caption the test scenes before (with VHD), with the chosen VHR, with random heads
    (``random_draws`` draws) and with every head scaled alike."""
    base = conditions.measured(feats)
    vhd_map = vhd_mean(base)
    tvhd = token_vhd(base.vhd, config.top_k) * base.valid
    vhr = conditions.scaled(head_policy(val.head_set, val.alpha, config, val.vhd_map), feats)
    randoms = []
    for d in tqdm(range(config.random_draws), desc="random heads", disable=not progress):
        rp = head_policy(val.head_set, val.alpha, config, val.vhd_map, seed=config.seed + 1 + d, random_heads=True)
        randoms.append(conditions.scaled(rp, feats))
    every = conditions(feats, HeadPolicy("all", val.alpha, config.distance), paired=False)
    return CaptionsOnTest(base, vhr, randoms, every, vhd_map, tvhd)
