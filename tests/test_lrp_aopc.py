"""Known answers for the LRP deletion test and its statistics: on a planted additive "model"
(the explained value is a sum of per-token weights) the exactly right attribution reaches the
closed-form AOPC, which no other order beats, and the reversed one the closed-form minimum; the
successor task's prompts are right by construction; on tiny-llama the stored intervals are the
workbench.stats intervals of the per-prompt numbers, and the token-only conservation error is
the size of the softmax-absorbed share (the identity's other side)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from workbench.analyses.lrp import attnlrp as A
from workbench.analyses.lrp.analysis import LrpConfig, LrpOptions, curve_aopc, run
from workbench.analyses.lrp.tasks import sequences, successor_prompts, successor_questions
from workbench.errors import InputError
from workbench.stats import bootstrap, bootstrap_diff, wilson

WEIGHTS = torch.tensor([0.0, 3.0, -1.0, 0.5, 2.0, -2.5, 1.0, 0.25])  # weight of token id v


def additive_scorer(tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A planted model: the 'logit' of class 0 at the last position is the sum of the weights
    of the tokens still in the prompt (deleting a token removes exactly its weight)."""
    w = WEIGHTS[tok] * mask
    return torch.stack([w.sum(1), torch.zeros(len(tok))], dim=1)


def _closed_form_aopc(removed_weights: list[float], k_max: int) -> float:
    """AOPC = mean over k = 0..K of (f(x) - f(x minus the first k)) = mean of prefix sums."""
    prefix = [sum(removed_weights[:k]) for k in range(k_max + 1)]
    return float(np.mean(prefix))


def test_aopc_of_exact_and_reversed_attribution_on_a_planted_model():
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7])  # the last position (token 7) is never deleted
    relevance = WEIGHTS[ids].clone()           # exactly right: relevance = each token's contribution
    K = 6
    right = A.deletion_orders(relevance)
    reverse = A.deletion_orders(-relevance)
    curves = A.deletion_curves(None, ids, {"right": right, "reversed": reverse}, lambda lg: lg[0], K,
                               scorer=additive_scorer)
    f0 = float(WEIGHTS[ids].sum())
    assert float(curves["right"][0]) == pytest.approx(f0)
    w_sorted = sorted(WEIGHTS[ids[:-1]].tolist(), reverse=True)  # [3, 2, 1, 0.5, -1, -2.5]
    assert A.aopc(curves["right"]) == pytest.approx(_closed_form_aopc(w_sorted, K))
    assert A.aopc(curves["reversed"]) == pytest.approx(_closed_form_aopc(w_sorted[::-1], K))
    # by hand: prefix sums 0, 3, 5, 6, 6.5, 5.5, 3 -> mean 29/7; reversed 0, -2.5, -3.5, -3, -2, 0, 3 -> -8/7
    assert A.aopc(curves["right"]) == pytest.approx(29 / 7)
    assert A.aopc(curves["reversed"]) == pytest.approx(-8 / 7)
    # no order of the six deletable positions does better than the right one, or worse than the reverse
    every = {str(p): list(p) for p in itertools.permutations(range(6))}
    all_curves = A.deletion_curves(None, ids, every, lambda lg: lg[0], K, scorer=additive_scorer, batch=256)
    scores = [A.aopc(c) for c in all_curves.values()]
    assert max(scores) == pytest.approx(29 / 7) and min(scores) == pytest.approx(-8 / 7)
    assert np.mean(scores) == pytest.approx(_closed_form_aopc([float(np.mean(w_sorted))] * 6, K))  # random order: mean


def test_curve_aopc_skips_padding():
    curve = torch.tensor([5.0, 4.0, 2.0, float("nan"), float("nan")])
    assert curve_aopc(curve) == pytest.approx((0 + 1 + 3) / 3)
    assert A.aopc(curve) == pytest.approx((0 + 1 + 3) / 3)


def test_successor_prompts_are_right_by_construction():
    seqs = sequences()
    questions = successor_questions()
    assert len(questions) == 53 and len(set(questions)) == 53  # 9 months + 4 days + 23 letters + 17 numbers
    tp = successor_prompts(53, seed=3)
    assert sorted(tp.prompts) == sorted(successor_prompts(53, seed=4).prompts)  # all of them, in another order
    assert tp.prompts == successor_prompts(53, seed=3).prompts                     # deterministic by seed
    units = {"months of the year": "month", "days of the week": "day", "letters of the alphabet": "letter",
             "numbers": "number"}
    for prompt, target, contrast in zip(tp.prompts, tp.targets, tp.contrasts):
        head, listed = prompt.split(": ")
        seq = seqs[units[head[len("The "):-len(" in order")]]]
        items = listed.rstrip(",").split(", ")
        i = seq.index(items[0])
        assert items == seq[i:i + 3]                      # three consecutive items
        assert target == " " + seq[i + 3] and contrast == " " + items[-1]
    with pytest.raises(InputError, match="53 questions"):
        successor_prompts(54)
    with pytest.raises(InputError, match="successor task has 53"):
        LrpOptions(n_prompts=60).validate()
    LrpOptions(n_prompts=60, tasks=("ioi",)).validate()


@pytest.fixture(scope="module")
def tiny_result(tiny_llama):
    return run(tiny_llama, LrpConfig(n_prompts=3, max_delete=2, n_random=1), progress=False)


def test_stored_intervals_are_the_stats_of_the_per_prompt_numbers(tiny_result):
    r = tiny_result
    assert r.tasks == ["ioi", "successor"] and r.prompt_tasks == ["ioi"] * 3 + ["successor"] * 3
    rows = {"ioi": slice(0, 3), "successor": slice(3, 6)}
    for task, sl in rows.items():
        lrp = r.prompt_aopc("attnlrp")[sl].numpy()
        for m in ("random", "rollout", "gradient_x_input"):
            other = r.prompt_aopc(m)[sl].numpy()
            iv = r.task_interval(task, f"AOPC attnlrp - {m}")
            ref = bootstrap_diff(lrp, other, split="test")
            assert (iv.value, iv.low, iv.high, iv.n) == pytest.approx((ref.value, ref.low, ref.high, 3))
            assert iv.method == "paired bootstrap"
        assert r.task_interval(task, "AOPC attnlrp").value == pytest.approx(float(lrp.mean()))
        tok = r.token_conservation_error_per_prompt[sl].numpy()
        assert r.task_interval(task, "token-only conservation error").value == pytest.approx(bootstrap(tok).value)
        right = int((r.target_values[sl] > 0).sum())
        assert r.task_interval(task, "accuracy").value == pytest.approx(wilson(right, 3).value)
        assert r.task_interval(task, "accuracy").split == "test"


def test_token_only_error_is_the_absorbed_share(tiny_result):
    """sum(R_tokens) + absorbed = f (the identity), so |sum R_tokens - f| / |f| = |absorbed / f|."""
    r = tiny_result
    assert r.conservation_error < 1e-3
    tok = r.token_conservation_error_per_prompt
    share = r.softmax_absorbed_share
    assert torch.allclose(tok, share.abs(), atol=2e-3)
    assert not math.isclose(r.token_conservation_error, r.conservation_error, abs_tol=1e-3)  # two different numbers


def test_headline_figures_carry_intervals(tiny_result):
    from workbench.analyses.lrp.figures import headline_figures

    figs = headline_figures(tiny_result)
    texts = [f["text"] for f in figs]
    assert any("AOPC AttnLRP minus random" in t for t in texts) and any("token-only" in t for t in texts)
    assert any("absorbed at the softmax" in t for t in texts) and any("accounting identity" in t for t in texts)
    with_iv = [f for f in figs if f["interval"] is not None]
    assert all(f["n"] == 3 and f["split"] == "test" for f in with_iv)
