"""VHR's validation choice on hand-made per-scene counts (hallucinated, mentioned, hits,
n_true): silence cannot buy CHAIR, ties go to the smaller alpha, and the bootstrap
stability is 1 for a clear winner and near one half for a coin flip."""
from __future__ import annotations

import numpy as np

from workbench.analyses.vision_heads import choice


def scenes(n: int, hallucinated: int, mentioned: int, hits: int, n_true: int = 2) -> np.ndarray:
    return np.tile(np.array([hallucinated, mentioned, hits, n_true], dtype=float), (n, 1))


def test_point_known_answer():
    c = np.array([[1, 2, 1, 2], [0, 2, 2, 2]], dtype=float)
    assert choice.point(c) == {"recall": 0.75, "chair_i": 0.25, "mentioned": 2.0}


def test_silence_cannot_buy_chair():
    before = scenes(128, 1, 3, 2)  # recall 1, CHAIR_i 1/3, 3 mentions per caption
    silent = scenes(128, 0, 0, 0)  # CHAIR_i 0 by saying nothing: recall 0, kept out
    terse = scenes(128, 0, 1, 1)  # CHAIR_i 0, recall 0.5: kept out by recall
    honest = scenes(128, 0, 2, 2)  # CHAIR_i 0, recall 1, but 2 mentions against 3: kept out by mentions
    out = choice.choose(before, [silent, terse, honest], [3.0, 2.0, 1.5], n_resamples=50)
    assert out["admissible"] is False and out["index"] == 2  # nothing admissible: the largest recall
    keeps = scenes(128, 0, 3, 2)  # recall 1, CHAIR_i 0, as many mentions as before
    out = choice.choose(before, [silent, terse, keeps], [3.0, 2.0, 1.5], n_resamples=50)
    assert out["admissible"] is True and out["index"] == 2 and out["stability"] == 1.0


def test_ties_go_to_the_smaller_alpha():
    before = scenes(128, 1, 3, 2)
    same = scenes(128, 0, 3, 2)
    out = choice.choose(before, [same, same], [3.0, 1.5], n_resamples=20)
    assert out["index"] == 1


def test_floor_is_the_lower_end_of_no_interventions_interval():
    rng = np.random.default_rng(0)
    hits = rng.integers(0, 3, 200).astype(float)
    before = np.stack([np.zeros(200), hits + 1, hits, np.full(200, 2.0)], 1)
    fl = choice.floors(before)
    from workbench.stats import bootstrap

    iv = bootstrap(hits + 1)
    assert abs((choice.point(before)["mentioned"] - fl.mentioned_margin) - iv.low) < 1e-12
    assert fl.recall_margin > 0


def test_stability_of_a_coin_flip_and_of_a_clear_winner():
    rng = np.random.default_rng(1)
    n = 256
    before = np.stack([np.ones(n), np.full(n, 3.0), np.full(n, 2.0), np.full(n, 2.0)], 1)
    # two settings with the same expected score, differing scene by scene: the choice is a coin flip
    h_a, h_b = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    a = np.stack([h_a, np.full(n, 3.0), np.full(n, 2.0), np.full(n, 2.0)], 1)
    b = np.stack([h_b, np.full(n, 3.0), np.full(n, 2.0), np.full(n, 2.0)], 1)
    out = choice.choose(before, [a, b], [1.5, 2.0], n_resamples=400)
    assert 0.2 < out["stability"] < 0.8 and abs(sum(out["shares"]) - 1) < 1e-12
    clear = np.stack([np.zeros(n), np.full(n, 3.0), np.full(n, 2.0), np.full(n, 2.0)], 1)
    out = choice.choose(before, [a, clear], [1.5, 2.0], n_resamples=400)
    assert out["index"] == 1 and out["stability"] == 1.0
