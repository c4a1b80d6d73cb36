"""The discovery method table (workbench.patching.methods): every method through one
``discover(model, task, config) -> EdgeScores`` finds the planted path of the planted model."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from workbench.cache import Tokens, as_tokens
from workbench.errors import InputError
from workbench.patching import graph as G
from workbench.patching.methods import METHODS, DiscoveryConfig, discover, method
from planted_model import planted_model, planted_prompts


@dataclass
class Task:
    clean: Tokens
    corrupt: Tokens
    metric: G.LogitDiff


@pytest.fixture(scope="module")
def planted():
    m = planted_model()
    clean, corrupt, c, w = planted_prompts(6)
    return m, Task(as_tokens(m, clean), as_tokens(m, corrupt), G.LogitDiff(c, w))


def test_table_keys_and_unknown_method():
    assert list(METHODS) == ["eap", "eap-ig", "acdc", "path-patching"]
    assert all(m.key == k and m.name for k, m in METHODS.items())
    with pytest.raises(InputError, match="unknown method 'sae'; choose one of eap, eap-ig, acdc, path-patching"):
        method("sae")


@pytest.mark.parametrize("key", ["eap", "eap-ig"])
def test_attribution_ranks_the_planted_path_first(planted, key):
    m, task = planted
    found = discover(m, task, key, DiscoveryConfig(ig_steps=4))
    g = found.graph
    assert found.circuit is None and found.scores.shape == g.valid.shape
    top = set(g.edge_names(G.top_edges(g, found.scores, 4)))
    assert top == {("input", "L0H0"), ("L0H0", "L1H0"), ("L1H0", "logits"), ("L0H0", "logits")}


def test_acdc_and_path_patching_choose_circuits_with_the_planted_head(planted):
    m, task = planted
    acdc = discover(m, task, "acdc", DiscoveryConfig(acdc_taus=(0.5, 1e9), acdc_candidates=20, ig_steps=2))
    assert [t for t, _, _ in acdc.runs] == [0.5, 1e9]
    kept = set(acdc.graph.edge_names(acdc.circuit))
    assert ("input", "L0H0") in kept and torch.equal(acdc.circuit, acdc.runs[0][1])
    assert not acdc.runs[1][1].any()  # an infinite threshold removes every edge
    path = discover(m, task, "path-patching", DiscoveryConfig(path_top=2))
    heads = [n for n in path.graph.nodes_of(path.circuit) if n.startswith("L")]
    assert "L0H0" in heads and "L1H0" in heads
