"""VHR's validation choice (head set and alpha), and how stable it is.

Why this shape: a setting that makes the captions say less scores a lower CHAIR_i without
seeing better, so a setting is admissible only when its validation recall and its objects
mentioned per caption are not below the lower end of no intervention's 95% bootstrap interval
(on the same validation scenes). Among admissible settings the largest recall minus CHAIR_i
wins (ties: the smaller alpha); when none is admissible, the largest recall (silence never
wins). The choice's stability is how often resampled validation scenes (bootstrap, the
admissibility margins kept) pick the same setting: a choice that flips under resampling was
made on too little data.

Counts are per scene ``[n 4]``: hallucinated, mentioned, hits, n_true (``chair.per_caption``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from workbench.analyses.vision_heads.vlm.chair import per_caption
from workbench.stats import bootstrap

CRITERION = ("largest validation recall minus CHAIR_i among the settings whose recall and objects mentioned per "
             "caption are not below the lower end of no intervention's 95% validation interval (silence cannot buy "
             "CHAIR); when none is, the largest recall; ties: the smaller alpha")
N_RESAMPLES = 1000
MIN_VAL = 128  # validation scenes below which the row says the choice rests on too few


def counts(captions: Sequence[str], truths: Sequence[Sequence[str]]) -> np.ndarray:
    """Per scene ``[n 4]``: hallucinated, mentioned, hits, n_true."""
    p = per_caption(captions, truths)
    return np.stack([p["hallucinated"], p["mentioned"], p["hits"], p["n_true"]], 1).astype(float)


def point(c: np.ndarray) -> dict[str, float]:
    """Recall, CHAIR_i and mentions per caption of per-scene counts ``[n 4]`` (ratios of sums)."""
    h, m, hits, t = c.sum(0)
    return {"recall": hits / t if t else 0.0, "chair_i": h / m if m else 0.0, "mentioned": m / len(c)}


@dataclass(frozen=True)
class Floors:
    """No intervention's lower interval ends, as margins below its point value (kept under resampling)."""

    recall_margin: float
    mentioned_margin: float

    def of(self, before: dict[str, float]) -> tuple[float, float]:
        return before["recall"] - self.recall_margin, before["mentioned"] - self.mentioned_margin


def floors(before: np.ndarray, seed: int = 0) -> Floors:
    """The margins from no intervention's 95% bootstrap intervals of recall and mentions per caption."""
    ratio = lambda a: float(a[:, 0].sum() / a[:, 1].sum()) if a[:, 1].sum() else 0.0  # noqa: E731
    rec = bootstrap(before[:, [2, 3]], ratio, seed=seed)
    men = bootstrap(before[:, 1], seed=seed)
    return Floors(rec.value - rec.low, men.value - men.low)


def pick(before: dict[str, float], settings: list[dict[str, float]], alphas: Sequence[float], fl: Floors) -> tuple[int, bool]:
    """The index of the chosen setting and whether it was admissible (``CRITERION``)."""
    rec_floor, men_floor = fl.of(before)
    ok = [i for i, s in enumerate(settings) if s["recall"] >= rec_floor - 1e-12 and s["mentioned"] >= men_floor - 1e-12]
    if ok:
        return max(ok, key=lambda i: (settings[i]["recall"] - settings[i]["chair_i"], -alphas[i], -i)), True
    return max(range(len(settings)), key=lambda i: (settings[i]["recall"], -alphas[i], -i)), False


def choose(before: np.ndarray, settings: list[np.ndarray], alphas: Sequence[float], seed: int = 0,
           n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """The choice on the validation counts and its bootstrap stability.

    ``before`` ``[n 4]``, ``settings`` one ``[n 4]`` per setting (same scenes). Returns ``index``,
    ``admissible``, ``stability`` (share of resamples picking ``index``), ``shares`` (per setting),
    the floors used and ``n_resamples``."""
    fl = floors(before, seed)
    b = point(before)
    index, admissible = pick(b, [point(s) for s in settings], alphas, fl)
    rng = np.random.default_rng(seed)
    n = len(before)
    picks = np.zeros(len(settings))
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        picks[pick(point(before[idx]), [point(s[idx]) for s in settings], alphas, fl)[0]] += 1
    shares = picks / n_resamples
    rec_floor, men_floor = fl.of(b)
    return {"index": index, "admissible": admissible, "stability": float(shares[index]),
            "shares": [float(x) for x in shares], "n_resamples": n_resamples,
            "recall_floor": float(rec_floor), "mentioned_floor": float(men_floor)}
