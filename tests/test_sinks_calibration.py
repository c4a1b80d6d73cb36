"""Known answers for ACT's sinks and calibration: planted sinks are found exactly (and the
statistic equals ACT's own formula), calibration moves exactly (1 - beta) of the sink
mass to the other positions in proportion, and nothing else changes."""
from __future__ import annotations

import pytest
import torch

from workbench.analyses.sinks.analysis import (calibrate_pattern, column_means, find_sinks, token_class, validate,
                                      SinksConfig)
from workbench.errors import InputError

P = 20
SINKS = (5, 9)  # planted non-first sinks (position 0 is a sink too, as usual)


def planted_pattern(batch: int = 1, heads: int = 2, seed: int = 0) -> torch.Tensor:
    """Causal attention [batch head q k]: head 0 puts most of each row on positions 0, 5 and 9
    (when visible), head 1 has no sink but the first token."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(batch, heads, P, P, generator=g) * 0.05
    raw[:, :, :, 0] += 1.0
    for s in SINKS:
        raw[:, 0, :, s] += 1.0
    raw = raw.masked_fill(torch.ones(P, P).triu(1).bool(), 0.0)
    return raw / raw.sum(-1, keepdim=True)


def act_reference_column_mean(head: torch.Tensor) -> torch.Tensor:
    """ACT's statistic, written as in its code: column sums over the rows divided by arange(P, 0, -1)."""
    return head.sum(0) / torch.arange(head.shape[0], 0, -1)


def test_planted_sinks_are_found_exactly():
    pat = planted_pattern()
    valid = torch.ones(1, P, dtype=torch.bool)
    torch.testing.assert_close(column_means(pat, valid)[0, 0], act_reference_column_mean(pat[0, 0]))
    sinks = find_sinks(pat, valid, threshold=0.1)
    assert sinks[0, 0].nonzero().flatten().tolist() == list(SINKS)
    assert not sinks[0, 1].any()
    with_first = find_sinks(pat, valid, threshold=0.1, include_first=True)
    assert with_first[0, 0].nonzero().flatten().tolist() == [0, *SINKS]


def test_padding_does_not_move_sinks():
    """The same prompt left-padded by 3: sinks shift by 3, pads are never sinks."""
    pat = planted_pattern()
    padded = torch.zeros(1, 2, P + 3, P + 3)
    padded[:, :, 3:, 3:] = pat
    padded[:, :, :3, :3] = 1 / 3  # whatever pad rows hold
    valid = torch.zeros(1, P + 3, dtype=torch.bool)
    valid[0, 3:] = True
    sinks = find_sinks(padded, valid, threshold=0.1)
    assert sinks[0, 0].nonzero().flatten().tolist() == [s + 3 for s in SINKS]


@pytest.mark.parametrize("beta", [0.4, 0.0, 1.0])
def test_calibration_moves_exactly_the_stated_mass(beta):
    pat = planted_pattern(batch=2)
    valid = torch.ones(2, P, dtype=torch.bool)
    heads = torch.tensor([True, False])
    out = calibrate_pattern(pat, valid, heads, beta=beta, threshold=0.1)
    torch.testing.assert_close(out[:, 1], pat[:, 1])  # uncalibrated head untouched
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 2, P))  # rows still sum to one
    a, b = pat[:, 0], out[:, 0]
    sink = torch.zeros(P, dtype=torch.bool)
    sink[list(SINKS)] = True
    before_sink = a[..., sink].sum(-1)
    after_sink = b[..., sink].sum(-1)
    torch.testing.assert_close(after_sink, beta * before_sink)  # sinks keep beta of their mass
    gained = b[..., ~sink].sum(-1) - a[..., ~sink].sum(-1)
    torch.testing.assert_close(gained, (1 - beta) * before_sink)  # exactly the freed mass moves
    # ... in proportion to the original attention on the other positions
    rows = before_sink[0] > 0
    ratio = b[0][rows][:, ~sink] / a[0][rows][:, ~sink].clamp(min=1e-12)
    visible = a[0][rows][:, ~sink] > 0
    for r in range(ratio.shape[0]):
        vals = ratio[r][visible[r]]
        torch.testing.assert_close(vals, vals[0].expand_as(vals))
    torch.testing.assert_close(b[:, 0, :], a[:, 0, :])  # the first row sees only itself


def test_calibration_matches_act_reference_procedure():
    """Same numbers as ACT's atten_process_cal on one head without padding (its first sink is token 0)."""
    pat = planted_pattern()
    head = pat[0, 0].clone()
    beta, thr = 0.4, 0.1
    idx = torch.nonzero(torch.where(head.sum(0) / torch.arange(P, 0, -1) > thr, 1, 0))[1:]
    ref = head.clone()
    copied = head.clone()
    available = ref[:, idx].sum(dim=1) * (1 - beta)
    ref[:, idx] *= beta
    copied[1:, idx] *= 0
    ratios = copied / copied.sum(dim=1, keepdim=True)
    ref = ref + available * ratios
    ref[0, 0] = 1
    ref[0, 1:] = 0
    out = calibrate_pattern(pat, torch.ones(1, P, dtype=torch.bool), torch.tensor([True, False]), beta, thr)
    torch.testing.assert_close(out[0, 0], ref)


def test_min_queries_drops_late_trivial_sinks():
    pat = planted_pattern()
    pat[0, 1, -1] = 0
    pat[0, 1, -1, -1] = 1.0  # the last token attends to itself: column mean 1 over one query
    valid = torch.ones(1, P, dtype=torch.bool)
    assert find_sinks(pat, valid, 0.1)[0, 1, -1]
    assert not find_sinks(pat, valid, 0.1, min_queries=5)[0, 1, -1]


def test_token_classes():
    assert token_class("\n") == "newline" and token_class(".") == "punctuation"
    assert token_class(" the") == "word" and token_class(" 42") == "number"


@pytest.mark.parametrize("field,value", [("threshold", 1.5), ("threshold", -0.1), ("beta", 2.0)])
def test_thresholds_outside_unit_interval_are_clear_errors(field, value):
    with pytest.raises(InputError, match="outside 0..1"):
        validate(SinksConfig(**{field: value}))


# ---------------------------------------------------------------------------- the search, on planted scores
def _planted_scorer(calls: list):
    """A stand-in for the analysis's scorer with planted accuracies: on the calibration split
    head A (L3H0) helps, B (L2H1) hurts, C (L5H2) ties in accuracy but raises log p, the set
    {A, C} helps most at beta 0.2; on the held-out split beta 0.6 would look best, so a
    search that peeked at it would choose differently."""
    from workbench.analyses.sinks import search

    A, B, C = (3, 0), (2, 1), (5, 2)
    calib = {(): (5, -1.0), (A,): (7, -1.0), (B,): (4, -1.0), (C,): (5, -0.9)}
    calib_set = {0.4: (8, -0.8), 0.2: (9, -0.7), 0.6: (6, -0.8)}
    held = {(): (10, -1.0), 0.2: (12, -0.9), 0.4: (11, -0.9), 0.6: (20, -0.1)}

    class Scorer:
        def __init__(self, model, questions, batch_size, keep):
            self.split = "calib" if questions[0].group.startswith("c") else "held"
            self.n = len(questions)
            self.keep = keep

        def score(self, heads=None, beta=1.0, threshold=1.0, min_queries=1):
            key = tuple(sorted(heads or []))
            calls.append((self.split, key, beta, threshold))
            assert threshold == 0.1 or not heads
            if self.split == "calib":
                k, lp = calib_set[beta] if set(key) == {A, C} else calib[tuple(heads or [])]
            else:
                assert not key or set(key) == {A, C}  # the held-out split sees the base and the chosen set only
                k, lp = held[beta] if key else held[()]
            correct = torch.zeros(self.n, dtype=torch.bool)
            correct[:k] = True
            return correct, torch.full((self.n,), lp)

    return search, Scorer, (A, B, C)


def test_search_chooses_on_the_calibration_split_and_reports_the_held_out_one(monkeypatch):
    from collections import Counter

    from workbench.datasets.multiple_choice import MCQuestion
    from workbench.stats import wilson

    calls: list = []
    search, Scorer, (A, B, C) = _planted_scorer(calls)
    monkeypatch.setattr(search, "Scorer", Scorer)
    calib = [MCQuestion("p", 0, ["positive", "negative"], "positive", "sentiment", f"c{i}") for i in range(10)]
    held = [MCQuestion("p", 0, ["positive", "negative"], "positive", "sentiment", f"h{i}") for i in range(20)]
    strength = torch.zeros(8, 4)
    found = {"strength": strength, "head_tokens": {}}
    for (l, h), v in {(1, 0): 0.9, A: 0.5, B: 0.4, C: 0.3, (6, 0): 0.1}.items():
        strength[l, h] = v
        found["head_tokens"][(l, h)] = Counter({".": 1})
    cfg = SinksConfig(tasks=("sentiment",), max_search=3, min_layer=2, max_heads=4, beta=0.4, threshold=0.1,
                      betas=(0.2, 0.4, 0.6), thresholds=(0.1,), n_calib=10, n_heldout=20)
    row, steps, grid, extra = search.search_task(None, "sentiment", calib, held, found, cfg, progress=False)

    assert row.candidates == ["L3H0", "L2H1", "L5H2"]  # strongest first; L1H0 is below min_layer, L6H0 past the cap
    assert row.heads == ["L3H0", "L5H2"] and row.beta == 0.2 and row.threshold == 0.1
    assert [s.name for s in steps if s.chosen] == ["L3H0", "L5H2"]
    assert {(g.beta, g.accuracy) for g in grid} == {(0.4, 0.8), (0.2, 0.9), (0.6, 0.6)}
    assert row.calib_before == 0.5 and row.calib_after == pytest.approx(0.9)
    assert row.before == 0.5 and row.after == pytest.approx(0.6) and row.changed == 2
    iv = extra["intervals"]
    assert iv["base"] == wilson(10, 20, split="test") and iv["act"] == wilson(12, 20, split="test")
    assert iv["difference"].value == pytest.approx(0.1) and iv["difference"].split == "test"
    assert iv["difference"].low >= 0.0 and iv["difference"].high <= 0.25  # two of twenty answers changed, both up
    assert iv["logprob difference"].value == pytest.approx(0.1)
    held_calls = [c for c in calls if c[0] == "held"]
    assert held_calls == [("held", (), 1.0, 1.0), ("held", (A, C), 0.2, 0.1)]  # measured once, after the choice


def test_search_with_no_helpful_head_leaves_the_model_alone(monkeypatch):
    from collections import Counter

    from workbench.datasets.multiple_choice import MCQuestion

    calls: list = []
    search, Scorer, (A, B, C) = _planted_scorer(calls)
    monkeypatch.setattr(search, "Scorer", Scorer)
    calib = [MCQuestion("p", 0, ["a", "b"], "a", "sentiment", f"c{i}") for i in range(10)]
    held = [MCQuestion("p", 0, ["a", "b"], "a", "sentiment", f"h{i}") for i in range(20)]
    found = {"strength": torch.zeros(8, 4), "head_tokens": {B: Counter({".": 1})}}
    found["strength"][B] = 0.5
    cfg = SinksConfig(tasks=("sentiment",), max_search=3, thresholds=(0.1,), n_calib=10, n_heldout=20)
    row, steps, grid, extra = search.search_task(None, "sentiment", calib, held, found, cfg, progress=False)
    assert row.heads == [] and grid == [] and row.after == row.before == 0.5
    assert extra["intervals"]["difference"].value == 0.0
    assert [c for c in calls if c[0] == "held"] == [("held", (), 1.0, 1.0)]


def test_group_bootstrap_moves_a_group_as_one():
    """Two adjectives of ten questions: all ten answers of one improve, none of the other. Over
    questions the gain looks sure; resampling the two groups gives 0, 0.5 or 1 (a quarter of the
    draws each end), so the 95% interval is exactly [0, 1]."""
    from workbench.analyses.sinks.search import group_difference
    from workbench.stats import bootstrap_diff

    before = torch.zeros(20, dtype=torch.bool)
    after = torch.zeros(20, dtype=torch.bool)
    after[:10] = True
    groups = ["good"] * 10 + ["bad"] * 10
    iv = group_difference(after, before, groups, seed=0)
    assert (iv.value, iv.low, iv.high, iv.n) == (0.5, 0.0, 1.0, 20)
    assert iv.method == "paired bootstrap over 2 groups" and iv.split == "test"
    per_question = bootstrap_diff(after.float().numpy(), before.float().numpy())
    assert per_question.low > 0.2  # what ignoring the groups would claim
    singletons = group_difference(after, before, [str(i) for i in range(20)], seed=0)
    assert (singletons.low, singletons.high) == (per_question.low, per_question.high)  # one question per group: the same
