"""Adapters for MIB's model families, each on a tiny random model built from its
transformers config (no hub): Qwen2 (the Llama layout with q/k/v biases) and Gemma-2 (four
norms, soft-capping, alternating sliding window). One layer through the adapter equals the
Hugging Face layer (transformers' own eager attention); for Qwen2 the whole workbench path
(caching, head and edge patching in tests/test_patching_engine.py and test_patching_edges.py,
EAP-IG here) runs too, for Gemma-2 in tests/test_gemma2_model.py (whole model, caching, head
patching) and tests/test_gemma2_graph.py (edge graph, EAP, EAP-IG). Tolerance 1e-5 (float32)."""
from __future__ import annotations

import sys

import pytest
import torch

from workbench.adapters import ADAPTERS, adapter_for, causal_mask
from workbench.cache import as_tokens, forward
from workbench.errors import InputError
from workbench.models import shape_of
from workbench.patching import graph as G


def _pristine(family: str):
    torch.manual_seed(1)
    hf = ADAPTERS[family].tiny(vocab_size=97, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32).eval()
    hf.set_attn_implementation("eager")
    for p in hf.parameters():  # random biases and norm weights, so every term is exercised
        p.data.add_(0.05 * torch.randn_like(p))
    return hf


def _sliding(mask: torch.Tensor, window: int) -> torch.Tensor:
    """The sliding-window mask transformers builds for a sliding layer, from the causal one."""
    t = mask.shape[-1]
    pos = torch.arange(t)
    return mask.masked_fill(pos[None, :] <= pos[:, None] - window, torch.finfo(mask.dtype).min)


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_one_layer_through_the_adapter_equals_the_hf_layer(family):
    hf = _pristine(family)
    a = ADAPTERS[family]
    shape = shape_of(hf)
    x = torch.randn(2, 9, shape.d_model, generator=torch.Generator().manual_seed(0))
    mask = causal_mask(9, x.dtype).repeat(2, 1, 1, 1)
    mask[1, ..., 6:] = torch.finfo(x.dtype).min  # a right-padded second row
    rotary = a.rotary_cos_sin(hf, x, torch.arange(9)[None])
    with torch.no_grad():
        for i, layer in enumerate(a.layers(hf)):
            window = getattr(a.attn(layer), "sliding_window", None)
            ref_mask = mask if window is None else _sliding(mask, window)
            ref = layer(x, attention_mask=ref_mask, position_embeddings=rotary)
            ref = ref[0] if isinstance(ref, tuple) else ref
            mine = a.run_layer(layer, x, mask, shape, rotary)
            assert (mine - ref).abs().max() < 1e-5, (family, i)
    if family == "gemma2":  # the known differences are real in this model: they change the answer
        layer = a.layers(hf)[0]
        assert a.attn(layer).sliding_window == 3 and a.attn(a.layers(hf)[1]).sliding_window is None
        with torch.no_grad():
            plain = layer(x, attention_mask=mask, position_embeddings=rotary)
        plain = plain[0] if isinstance(plain, tuple) else plain
        assert (plain - a.run_layer(layer, x, mask, shape, rotary)).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_adapter_layers_give_the_logits(family):
    hf = _pristine(family)
    a = ADAPTERS[family]
    shape = shape_of(hf)
    ids = torch.randint(1, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = hf(input_ids=ids, output_hidden_states=True)
        x = out.hidden_states[0]  # Gemma-2: already scaled by sqrt(d_model)
        rotary = a.rotary_cos_sin(hf, x, torch.arange(8)[None])
        for layer in a.layers(hf):
            x = a.run_layer(layer, x, None, shape, rotary)
        logits = a.final_logits(hf, x) if family == "gemma2" else a.unembed(hf)(a.final_norm(hf)(x))
    assert (logits - out.logits).abs().max() < 1e-4


def test_qwen2_has_biases_and_gemma2_norm_gradient_is_autograd():
    hf = _pristine("qwen2")
    w = ADAPTERS["qwen2"].qkv_weights(ADAPTERS["qwen2"].attn(ADAPTERS["qwen2"].layers(hf)[0]), shape_of(hf))
    assert w.b_q is not None and w.b_k.shape == (2, 8) and w.b_v.abs().sum() > 0
    g2 = _pristine("gemma2")
    a = ADAPTERS["gemma2"]
    norm = a.attn_norm(a.layers(g2)[0])
    x = torch.randn(3, 5, 32, requires_grad=True)
    g = torch.randn(3, 5, 32)
    (norm(x) * g).sum().backward()
    assert (a.norm_input_grad(norm, x.detach(), g) - x.grad).abs().max() < 1e-5


def test_adapter_for_picks_qwen2_and_gemma2():
    assert adapter_for(_pristine("qwen2")).name == "qwen2"
    assert adapter_for(_pristine("gemma2")).name == "gemma2"
    with pytest.raises(InputError, match="unsupported model architecture") as e:
        adapter_for(torch.nn.Linear(2, 2))
    assert "\n" not in str(e.value)


def test_eap_ig_runs_on_tiny_qwen2():
    from workbench.models import load_model
    from workbench.patching.eap import edge_attribution

    model = load_model("tiny-qwen2")
    assert model.arch == "qwen2"
    clean = as_tokens(model, ["When Mary and John went to the store, John gave a drink to", "The cat sat on the"])
    corrupt = as_tokens(model, ["When Alice and Bob went to the shop, Tom gave a drink to", "A dog sat on the"])
    metric = G.LogitDiff(torch.tensor([100, 100]), torch.tensor([200, 200]))
    scores = edge_attribution(model, clean, corrupt, metric, "eap-ig", steps=3)
    graph = G.Graph.for_model(model)
    assert scores.shape == graph.valid.shape and torch.isfinite(scores).all()
    assert scores[graph.valid].abs().sum() > 0 and not scores[~graph.valid].any()
    # EAP-IG's completeness, roughly: edges into the logits sum close to the metric's change
    logits_c, _ = forward(model, clean, [])
    logits_k, _ = forward(model, corrupt, [])
    rows = torch.arange(2)
    change = float((metric(logits_k[rows, corrupt.last_positions]) - metric(logits_c[rows, clean.last_positions])).mean())
    assert float(scores[:, -1].sum()) == pytest.approx(change, rel=0.5, abs=0.05)


@pytest.mark.parametrize("name,hub_id", [("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B"), ("gemma-2-2b", "google/gemma-2-2b"),
                                         ("llama-3.1-8b", "meta-llama/Llama-3.1-8B")])
def test_mib_hub_names_offline_are_one_line(monkeypatch, capsys, name, hub_id):
    """MIB's models by their registry names: with no hub, one error line naming the hub id."""
    from workbench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["workbench", "circuit", "--model", name, "--json"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and hub_id in lines[0] and "Traceback" not in err
