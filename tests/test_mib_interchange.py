"""MIB interchange: the workbench graph written in MIB's circuit-file JSON and read back."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.cache import as_tokens
from workbench.errors import InputError
from workbench.patching import graph as G
from workbench.patching.eap import edge_attribution
from workbench.patching.faithfulness import prune, top_n
from workbench.patching.mib import mib_edge_count, mib_name, read_mib, to_mib, write_mib
from planted_model import planted_model, planted_prompts


def test_gpt2_small_has_mibs_32491_edges_with_mibs_names():
    g = G.Graph.build(12, 12)
    assert mib_edge_count(g) == 32491  # MIB's EDGE_COUNTS["gpt2"]
    edges = to_mib(g, torch.zeros(g.valid.shape))["edges"]
    assert len(edges) == 32491
    for name in ("input->a0.h0<q>", "a0.h0->m0", "m0->a1.h11<v>", "a11.h11->logits", "m11->logits", "input->logits"):
        assert name in edges
    assert "a0.h0->a0.h1<q>" not in edges and "m0->m0" not in edges
    assert mib_name("L10H3") == "a10.h3" and mib_name("M4") == "m4"


def test_planted_round_trip_keeps_scores_and_circuit(tmp_path):
    m = planted_model()
    clean, corrupt, c, w = planted_prompts(6)
    clean, corrupt = as_tokens(m, clean), as_tokens(m, corrupt)
    g = G.Graph.for_model(m)
    scores = edge_attribution(m, clean, corrupt, G.LogitDiff(c, w), "eap-ig", steps=4)
    circuit = prune(g, top_n(g, scores, 6, absolute=True))
    assert circuit.any()
    path = write_mib(tmp_path / "planted.json", g, scores, circuit, d_model=m.shape.d_model)
    data = json.loads(path.read_text())
    assert data["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 48}
    # the planted head's input edge, split over q, k and v, each a third of the workbench score
    i, j = g.sender_index("input"), g.receiver_index("L0H0")
    assert data["edges"]["input->a0.h0<v>"]["score"] == pytest.approx(float(scores[i, j]) / 3, rel=1e-6)
    assert data["nodes"]["a0.h0"]["in_graph"] and not data["nodes"]["a1.h3"]["in_graph"]
    g2, back, kept = read_mib(path, g)
    assert torch.allclose(back, scores, rtol=1e-5, atol=1e-7)
    assert torch.equal(kept, circuit)
    assert torch.equal(top_n(g, back, 6, True), top_n(g, scores, 6, True))


def test_bad_files_are_one_line(tmp_path):
    g = G.Graph.build(2, 4)
    with pytest.raises(InputError, match="no MIB circuit file"):
        read_mib(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not JSON"):
        read_mib(tmp_path / "bad.json")
    (tmp_path / "x.json").write_text(json.dumps({"cfg": {"n_layers": 2, "n_heads": 4}}))
    with pytest.raises(InputError, match="lacks nodes, edges"):
        read_mib(tmp_path / "x.json")
    data = to_mib(g, torch.zeros(g.valid.shape))
    data["edges"]["a1.h0->a0.h0<q>"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(InputError, match="a1.h0->a0.h0<q>"):
        from workbench.patching.mib import from_mib
        from_mib(data)
    with pytest.raises(InputError, match="12 layers"):
        from workbench.patching.mib import from_mib
        from_mib(to_mib(G.Graph.build(12, 12), torch.zeros(157, 157)), g)
