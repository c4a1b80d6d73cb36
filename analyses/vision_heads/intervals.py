"""Bootstrap intervals over the test scenes: CHAIR_i, CHAIR_s, recall and objects mentioned per
caption of one condition, and paired differences between two conditions' captions."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from workbench.stats import Interval, bootstrap

from .vlm.chair import per_caption

METRICS = ("chair_i", "chair_s", "recall", "mentioned")


def caption_intervals(runs: list[list[str]], truths: Sequence[Sequence[str]], split: str, seed: int = 0) -> dict[str, Interval]:
    """Bootstrap intervals over scenes for CHAIR_i, CHAIR_s, recall and objects mentioned per
    caption; ``runs`` holds one or more caption lists of the same scenes (the random-heads draws),
    pooled per scene (ratios of sums; CHAIR_s and mentions averaged over the draws)."""
    parts = [per_caption(c, truths) for c in runs]
    total = {k: np.sum([p[k] for p in parts], axis=0).astype(float) for k in parts[0]}
    k = len(parts)
    bad = np.mean([np.asarray(p["hallucinated"]) > 0 for p in parts], axis=0).astype(float)
    ratio = lambda a: float(a[:, 0].sum() / a[:, 1].sum()) if a[:, 1].sum() else 0.0  # noqa: E731
    return {
        "chair_i": bootstrap(np.stack([total["hallucinated"], total["mentioned"]], 1), ratio, seed=seed, split=split),
        "chair_s": bootstrap(bad, seed=seed, split=split),
        "recall": bootstrap(np.stack([total["hits"], total["n_true"]], 1), ratio, seed=seed, split=split),
        "mentioned": bootstrap(total["mentioned"] / k, seed=seed, split=split),
    }


def diff_interval(a: list[str], b: list[str], truths: Sequence[Sequence[str]], metric: str, split: str, seed: int = 0) -> Interval:
    """Paired bootstrap over scenes of ``metric`` (chair_i or recall) of captions ``a`` minus ``b``."""
    pa, pb = per_caption(a, truths), per_caption(b, truths)
    num, den = ("hallucinated", "mentioned") if metric == "chair_i" else ("hits", "n_true")
    rows = np.stack([pa[num], pa[den], pb[num], pb[den]], 1).astype(float)

    def stat(r: np.ndarray) -> float:
        ra = r[:, 0].sum() / r[:, 1].sum() if r[:, 1].sum() else 0.0
        rb = r[:, 2].sum() / r[:, 3].sum() if r[:, 3].sum() else 0.0
        return float(ra - rb)

    iv = bootstrap(rows, stat, seed=seed, split=split)
    return Interval(iv.value, iv.low, iv.high, iv.n, "paired bootstrap", iv.level, split)


def condition_intervals(runs: dict[str, list[list[str]]], truths: Sequence[Sequence[str]],
                   seed: int = 0) -> dict[str, Interval]:
    """The test split's intervals: per condition of ``runs`` (condition -> its caption lists)
    ``"<metric> <condition>"``, then VHR's paired differences from the controls,
    ``"<metric> after - <other>"`` (the VHR captions repeated once per caption list of the other)."""
    out: dict[str, Interval] = {}
    for cond, caps in runs.items():
        for metric, iv in caption_intervals(caps, truths, "test", seed=seed).items():
            out[f"{metric} {cond}"] = iv
    after = runs["after"][0]
    for other in ("before", "random_control", "all_heads"):
        draws = runs[other]
        for metric in ("chair_i", "recall"):
            out[f"{metric} after - {other}"] = diff_interval(after * len(draws), [c for cs in draws for c in cs],
                                                             list(truths) * len(draws), metric, "test", seed=seed)
    return out
