"""The ablation as one named choice: each kind carries the value its docstring says, on the
planted model where the answer is known (tests/planted_model.py)."""
from __future__ import annotations

import pytest
import torch

from workbench.cache import as_tokens, forward
from workbench.errors import InputError
from workbench.patching import graph as G
from workbench.patching.ablation import CHOICES, Ablation, ablation_values, derangement, parse_ablation
from planted_model import planted_model, planted_prompts


@pytest.fixture(scope="module")
def planted():
    m = planted_model()
    clean, corrupt, c, w = planted_prompts(6)
    return m, as_tokens(m, clean), as_tokens(m, corrupt), G.LogitDiff(c, w)


def test_names_and_the_old_alias():
    assert [a.value for a in Ablation] == ["counterfactual", "mean", "zero", "resample"]
    assert parse_ablation("corrupt") is Ablation.COUNTERFACTUAL
    assert parse_ablation("MEAN") is Ablation.MEAN
    assert "corrupt" in CHOICES
    with pytest.raises(InputError, match="unknown ablation 'median'"):
        parse_ablation("median")


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 7):
        d = derangement(n, seed=n)
        assert sorted(d.tolist()) == list(range(n))
        assert not (d == torch.arange(n)).any()
    with pytest.raises(InputError):
        derangement(1)


def _empty_circuit(m, clean, corrupt, metric, how):
    g = G.Graph.for_model(m)
    _, acts = G.sender_outputs(m, corrupt)
    ablate = ablation_values(acts, how, len(clean), seed=1)
    return G.run_edge_masks(m, g, clean, ablate, torch.zeros_like(g.valid), metric)


def test_each_ablation_of_every_edge_gives_its_known_answer(planted):
    m, clean, corrupt, metric = planted
    lk, _ = forward(m, corrupt, [])
    corrupt_metric = metric(lk[:, -1])
    # counterfactual: every edge carries the paired corrupt run, so the model IS the corrupt run
    assert torch.allclose(_empty_circuit(m, clean, corrupt, metric, "counterfactual"), corrupt_metric, atol=1e-4)
    assert torch.allclose(_empty_circuit(m, clean, corrupt, metric, "corrupt"), corrupt_metric, atol=1e-4)
    # zero: nothing reaches the logits, every logit is zero
    assert torch.allclose(_empty_circuit(m, clean, corrupt, metric, Ablation.ZERO), torch.zeros(6), atol=1e-5)
    # resample: prompt i sees prompt d[i]'s corrupt run, i.e. that prompt's corrupt logits
    d = derangement(6, seed=1)
    lk_all = lk[:, -1][d]
    expected = metric(lk_all)
    assert torch.allclose(_empty_circuit(m, clean, corrupt, metric, "resample"), expected, atol=1e-4)
    # mean: the corrupt names average out; the metric is the same for every prompt's answer pair up to the mean
    mean = _empty_circuit(m, clean, corrupt, metric, "mean")
    assert not torch.allclose(mean, corrupt_metric, atol=1e-2)


def test_circuit_config_takes_the_alias_and_defaults_to_counterfactual():
    from workbench.analyses.circuits.analysis import CircuitConfig

    assert CircuitConfig().ablation == "counterfactual"
    assert CircuitConfig(ablation="corrupt").ablation == "counterfactual"
    with pytest.raises(InputError, match="unknown ablation"):
        CircuitConfig(ablation="median").validate()
