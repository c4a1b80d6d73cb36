"""MIB's CPR and CMD on the planted model, whose circuit is known by construction
(tests/planted_model.py): L0H0 reads the name from the input and writes it to the
logits directly and through the amplifier L1H0."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.cache import as_tokens
from workbench.errors import InputError
from workbench.patching import graph as G
from workbench.patching.faithfulness import (MIB_FRACTIONS, areas, mib_curve, normalised_curve, prune, sizes_at,
                                             smallest_reaching, top_n)
from planted_model import planted_model, planted_prompts

PATH = [("input", "L0H0"), ("L0H0", "L1H0"), ("L0H0", "logits"), ("L1H0", "logits")]


@pytest.fixture(scope="module")
def planted():
    m = planted_model()
    clean, corrupt, c, w = planted_prompts(16, seed=3)
    return m, G.Graph.for_model(m), as_tokens(m, clean), as_tokens(m, corrupt), G.LogitDiff(c, w)


def _scores(g, edges):
    s = torch.zeros(g.valid.shape)
    for rank, (a, b) in enumerate(edges):
        s[g.sender_index(a), g.receiver_index(b)] = len(edges) - rank
    return s


def test_areas_are_mibs_trapezoids():
    # a perfect curve: area under = the x range (0.999), area from 1 = 0
    assert areas(MIB_FRACTIONS, [1.0] * 10) == pytest.approx((0.999, 0.0))
    # a straight line f = x: area under 1/2 (1 - 0.001^2), area from 1 the rest of the x range
    under, from_1 = areas(MIB_FRACTIONS, list(MIB_FRACTIONS))
    assert under == pytest.approx((1 - 0.001 ** 2) / 2)
    assert from_1 == pytest.approx(0.999 - under)
    # overshoot counts against CMD: |1 - f|
    assert areas([0, 1], [2.0, 2.0])[1] == pytest.approx(1.0)
    with pytest.raises(InputError):
        areas([0.1], [1.0])


def test_normalisation_and_size_choice():
    vals = np.array([[4.0, 6.0], [0.0, 0.0], [2.0, 4.0], [5.0, 5.0]])  # full, empty, two circuits
    assert normalised_curve(vals).tolist() == pytest.approx([0.6, 1.0])
    assert math.isnan(normalised_curve(np.array([[1.0], [1.0], [0.5]]))[0])
    assert smallest_reaching([10, 20, 50], [0.5, 0.85, 0.9], 0.8) == (20, True)
    assert smallest_reaching([10, 20, 50], [0.5, 0.7, 0.6], 0.8) == (20, False)


def test_mib_counts_and_pruning(planted):
    m, g, *_ = planted
    assert sizes_at(g) == [int(p * g.n_edges) for p in MIB_FRACTIONS]
    s = _scores(g, PATH + [("L0H2", "L1H3")])  # L1H3 writes to nothing kept: pruned
    kept = prune(g, top_n(g, s, 5, absolute=True))
    assert set(g.edge_names(kept)) == set(PATH)
    lone = _scores(g, [("L0H1", "L1H1"), ("L1H1", "logits")])
    assert not prune(g, top_n(g, lone, 2, True)).any()  # L0H1 has no incoming edge, so L1H1 has none either


def test_true_circuit_has_cmd_near_0_and_cpr_near_1_random_does_not(planted):
    m, g, clean, corrupt, metric = planted
    true = mib_curve(m, g, clean, corrupt, metric, -_scores(g, PATH), "counterfactual", split="test")
    assert true.faithfulness_absolute[-1] == pytest.approx(1.0, abs=1e-4)  # every edge: the full model
    first = next(i for i, k in enumerate(true.n_edges) if k >= len(PATH))
    assert min(true.faithfulness_absolute[first:]) > 0.99
    # closed form on this 2-layer graph: fewer than the path's 4 edges up to 5 % (f = 0), the whole
    # path from 10 % on (f = 1): CMD = (0.05 - 0.001) + (0.1 - 0.05) / 2, CPR = 0.999 - CMD
    assert true.faithfulness_absolute[:first] == pytest.approx([0.0] * first, abs=1e-4)
    assert true.cmd.value == pytest.approx(0.049 + 0.025, abs=1e-3)
    assert true.cpr.value == pytest.approx(0.999 - 0.074, abs=1e-3)
    assert true.cmd.high < 0.08
    rnd = mib_curve(m, g, clean, corrupt, metric, torch.rand(g.valid.shape, generator=torch.Generator().manual_seed(0)),
                    "counterfactual")
    assert rnd.cmd.value > 0.2 and rnd.cpr.value < 0.8
    assert rnd.cmd.low > true.cmd.high
    # the planted path cut (its first edge not scored): the metric says so
    cut = mib_curve(m, g, clean, corrupt, metric, -_scores(g, PATH[1:]), "counterfactual")
    assert cut.cmd.value > 0.2


def test_signed_scores_rank_negative_edges_last(planted):
    m, g, clean, corrupt, metric = planted
    # the workbench's sign: an edge carrying the behaviour scores negative (patching it lowers the metric);
    # the path scored positive (as if it hurt the behaviour): CPR (signed) misses it, CMD (absolute) finds it
    s = _scores(g, PATH)
    c = mib_curve(m, g, clean, corrupt, metric, s, "counterfactual")
    assert c.cmd.value == pytest.approx(0.074, abs=1e-3)
    assert c.cpr.value < 0.8


def test_node_level_curve_of_the_exact_reference_keeps_the_planted_heads(planted):
    """MIB's node level (fractions of the 8 heads, MLPs unscored so always kept): the exact
    reference ranks L0H0 and L1H0 first, so from 2 heads on the circuit is the full model's
    behaviour (f = 1) and with no head it is none (f = 0); a ranking that puts the planted
    heads last scores worse on both areas."""
    from workbench.patching.faithfulness import mib_node_curve
    from workbench.patching.nodes import exact_head_effects

    m, g, clean, corrupt, metric = planted
    exact = exact_head_effects(m, clean, corrupt, metric)
    assert set(exact.abs().flatten().topk(2).indices.tolist()) == {0, 4}  # L0H0 and L1H0
    c = mib_node_curve(m, g, clean, corrupt, metric, exact, "counterfactual", split="test")
    assert c.level == "node" and c.n_edges == [int(p * 8) for p in MIB_FRACTIONS]
    for k, f in zip(c.n_edges, c.faithfulness_absolute):
        if k == 0:
            assert f == pytest.approx(0.0, abs=1e-4)
        elif k >= 2:
            assert f == pytest.approx(1.0, abs=1e-4)
    assert c.faithfulness_signed == pytest.approx(c.faithfulness_absolute)  # every planted effect is negative
    last = torch.arange(8.0).view(2, 4) + 1.0  # |score| largest for L1H3, smallest for the planted heads
    last[0, 0], last[1, 0] = 0.0, 0.0
    worse = mib_node_curve(m, g, clean, corrupt, metric, -last, "counterfactual")
    assert worse.cmd.value > c.cmd.value + 0.05 and worse.cpr.value < c.cpr.value - 0.05
    assert worse.faithfulness_absolute[MIB_FRACTIONS.index(0.5)] == pytest.approx(0.0, abs=1e-4)  # 4 heads, none planted
