"""Composition scores from the weights: the factored computation equals the [M M] products
(Elhage et al.'s ||A B|| / (||A|| ||B||)) on grouped-query Llama and LayerNorm GPT-2 models,
random models score the random baseline (about 0 after the correction), and only earlier
writers count."""
from __future__ import annotations

import pytest
import torch

from workbench.analyses.qk.composition import MODES, composition_scores, head_factors, random_baseline, raw_scores


def _dense(f, mode: str, la: int, ha: int, lb: int, hb: int) -> float:
    ov = f.w_v[la, ha] @ f.w_o[la, ha]  # [M M]
    qk = f.w_q[lb, hb] @ f.w_k[lb, hb].T
    b = {"Q": qk, "K": qk.T, "V": f.w_v[lb, hb] @ f.w_o[lb, hb]}[mode]
    return float((ov @ b).norm() / (ov.norm() * b.norm()))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_factored_scores_equal_dense_products(name, request):
    model = request.getfixturevalue(name)
    f = head_factors(model)
    for mode in MODES:
        got = raw_scores(f, mode)
        for ha in range(4):
            for hb in range(4):
                assert got[0, ha, 1, hb].item() == pytest.approx(_dense(f, mode, 0, ha, 1, hb), rel=1e-4)
        assert torch.isnan(got[1, :, 0]).all() and torch.isnan(got[0, :, 0]).all()  # no later or same-layer writer


def test_gqa_heads_share_their_group_key_weights(tiny_llama):
    f = head_factors(tiny_llama)  # 4 query heads, 2 key-value heads: heads 0, 1 read keys through group 0
    assert torch.equal(f.w_k[1, 0], f.w_k[1, 1]) and torch.equal(f.w_k[1, 2], f.w_k[1, 3])
    assert not torch.equal(f.w_k[1, 1], f.w_k[1, 2]) and not torch.equal(f.w_q[1, 0], f.w_q[1, 1])


def test_layernorm_fold_centres_the_reading_weights(tiny_gpt2):
    f = head_factors(tiny_gpt2)
    assert f.w_q.sum(-2).abs().max() < 1e-9  # every reading column is orthogonal to the all-ones direction


def test_random_models_score_the_baseline(tiny_llama):
    scores, base = composition_scores(tiny_llama)
    assert 0.05 < base < 0.3
    assert base == pytest.approx(random_baseline(64, 16, device="cpu"), rel=1e-9)
    for mode in MODES:
        vals = scores[mode][0, :, 1].flatten()
        assert abs(float(vals.mean())) < 0.03  # random weights: the corrected score sits at 0


def test_baseline_shrinks_with_width():
    assert random_baseline(576, 64, device="cpu") < random_baseline(64, 16, device="cpu")
