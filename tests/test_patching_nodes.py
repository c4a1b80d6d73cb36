"""Node circuits, the exact node reference and stability, on the planted model (L0H0 copies
the name, L1H0 amplifies it; every other head writes junk or nothing)."""
from __future__ import annotations

import pytest
import torch

from workbench.cache import as_tokens
from workbench.errors import InputError
from workbench.patching import graph as G
from workbench.patching.eap import edge_attribution, head_grid, node_scores
from workbench.patching.faithfulness import edge_values, normalised_curve
from workbench.patching.nodes import (compare_heads, exact_head_effects, head_names, jaccard, mean_pairwise_jaccard,
                                      node_circuit, stability)
from planted_model import planted_model, planted_prompts


@pytest.fixture(scope="module")
def planted():
    m = planted_model()
    clean, corrupt, c, w = planted_prompts(8, seed=5)
    return m, G.Graph.for_model(m), as_tokens(m, clean), as_tokens(m, corrupt), G.LogitDiff(c, w)


def test_exact_reference_and_eap_agree_on_the_planted_heads(planted):
    m, g, clean, corrupt, metric = planted
    exact = exact_head_effects(m, clean, corrupt, metric)
    assert head_names(g, exact, 2) == ["L0H0", "L1H0"]
    eap = head_grid(g, node_scores(g, edge_attribution(m, clean, corrupt, metric, "eap-ig", steps=4)))
    cmp = compare_heads(exact, eap, 2)
    assert cmp["top2_overlap"] == 1.0 and cmp["spearman"] > 0.3
    with pytest.raises(InputError, match="asked for 9 heads"):
        head_names(g, exact, 9)


def test_node_circuit_of_the_planted_heads_is_faithful_and_others_are_not(planted):
    m, g, clean, corrupt, metric = planted
    true = node_circuit(g, ["L0H0", "L1H0"])
    assert ("input", "L0H0") in g.edge_names(true) and ("M0", "L1H0") in g.edge_names(true)
    assert not true[g.sender_index("L0H1")].any()
    wrong = node_circuit(g, ["L0H1", "L0H2"])
    only_copier = node_circuit(g, ["L0H0"], mlps=False)
    vals = edge_values(m, g, clean, corrupt, metric, torch.stack([g.valid, torch.zeros_like(g.valid), true, wrong,
                                                                 only_copier]))
    f_true, f_wrong, f_copier = normalised_curve(vals.double().numpy())
    assert f_true == pytest.approx(1.0, abs=1e-4)
    assert abs(f_wrong) < 1e-4
    assert 0.2 < f_copier < 0.8  # the copier's direct path without the amplifier: part of the effect
    with pytest.raises(InputError, match="unknown heads"):
        node_circuit(g, ["L9H9"])


def test_jaccard_and_stability(planted):
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert jaccard(a, b) == pytest.approx(1 / 3) and jaccard(a, a) == 1.0
    assert mean_pairwise_jaccard([a, a, b]) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    m, g, clean, corrupt, metric = planted

    def eap(c, k, mt):
        return edge_attribution(m, c, k, mt, "eap")

    st = stability(m, clean, corrupt, metric, eap, k_edges=4, k_heads=2, n_boot=3)
    assert st["edge_jaccard"] == 1.0 and st["head_jaccard"] == 1.0  # the planted path wins every resample

    def noise(c, k, mt):
        return torch.randn(g.valid.shape)

    torch.manual_seed(0)
    assert stability(m, clean, corrupt, metric, noise, k_edges=4, k_heads=2, n_boot=4)["edge_jaccard"] < 0.5
