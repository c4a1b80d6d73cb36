"""Architecture adapters (``workbench.adapters``): known answers per family.

- one decoder layer run from the adapter's parts equals the Hugging Face layer of a pristine
  model (transformers' own eager attention, no workbench hook points), and all layers chained
  with the final norm and unembedding give the model's logits;
- the weight layouts (separate, fused Conv1D, fused per-head) and the partial rotary rebuild
  the q, k, v and the attention output the hook points see;
- the closed-form norm gradient equals autograd (RMSNorm and LayerNorm);
- GPT-NeoX's parallel residual: no edge from a layer's heads to its own MLP, the receiver
  gradients equal finite differences, edge masks interpolate between clean and corrupt.

Tolerance 1e-5 (float32, same arithmetic in another order) unless noted.
"""
from __future__ import annotations

import pytest
import torch

from workbench.adapters import ADAPTERS, adapter_for, causal_mask
from workbench.cache import as_tokens, forward
from workbench.errors import InputError
from workbench.models import ModelShape, shape_of
from workbench.patching import graph as G

FAMILIES = ["llama", "gpt2", "neox"]
FIXTURE = {"llama": "tiny_llama", "gpt2": "tiny_gpt2", "neox": "tiny_neox"}


def _pristine(family: str):
    """A small random model of ``family`` with transformers' own eager attention."""
    torch.manual_seed(1)
    hf = ADAPTERS[family].tiny(vocab_size=97, n_layers=3, n_heads=4, n_kv_heads=2 if family == "llama" else 4,
                               d_model=32).eval()
    hf.set_attn_implementation("eager")
    for p in hf.parameters():  # random biases and norm weights, so every term is exercised
        p.data.add_(0.05 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("family", FAMILIES)
def test_one_layer_through_the_adapter_equals_the_hf_layer(family):
    hf = _pristine(family)
    a = adapter_for(hf)
    assert a.name == family
    shape = shape_of(hf)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, shape.d_model, generator=g)
    mask = causal_mask(9, x.dtype)
    mask = torch.cat([mask, mask.clone()])
    mask[1, ..., 6:] = torch.finfo(x.dtype).min  # a right-padded second row
    rotary = a.rotary_cos_sin(hf, x, torch.arange(9)[None])
    assert (rotary is None) == (family == "gpt2")
    with torch.no_grad():
        for layer in a.layers(hf):
            kwargs = {"attention_mask": mask}
            if rotary is not None:
                kwargs["position_embeddings"] = rotary
            ref = layer(x, **kwargs)
            ref = ref[0] if isinstance(ref, tuple) else ref
            mine = a.run_layer(layer, x, mask, shape, rotary)
            called = a.call_layer(layer, x, mask, rotary)
            assert (mine - ref).abs().max() < 1e-5
            assert torch.equal(called, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_layers_norm_and_unembedding_give_the_logits(family):
    hf = _pristine(family)
    a = adapter_for(hf)
    shape = shape_of(hf)
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = hf(input_ids=ids, output_hidden_states=True)
        x = out.hidden_states[0]  # the embeddings (GPT-2: with the learned positions)
        rotary = a.rotary_cos_sin(hf, x, torch.arange(8)[None])
        for layer in a.layers(hf):
            x = a.run_layer(layer, x, None, shape, rotary)
        logits = a.unembed(hf)(a.final_norm(hf)(x))
    assert (logits - out.logits).abs().max() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_layouts_rebuild_what_the_hook_points_see(family, request):
    """Per-head weights (+ bias, + rotary on the first rotary dims) from the residual give the
    hook points' q, k, v; z @ W_O + b_O gives the attention output."""
    model = request.getfixturevalue(FIXTURE[family])
    a, s = model.adapter, model.shape
    l = 1
    names = [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_q", f"blocks.{l}.attn.hook_k",
             f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_attn_out"]
    tokens = as_tokens(model, ["When Mary and John went to the store, John gave a drink to", "Hello"])
    _, st = forward(model, tokens, names)
    layer = a.layers(model.hf)[l]
    attn = a.attn(layer)
    w = a.qkv_weights(attn, s)
    assert w.w_q.shape == (s.n_heads, s.d_head, s.d_model) and w.w_k.shape == (s.n_kv_heads, s.d_head, s.d_model)
    with torch.no_grad():
        h = a.attn_norm(layer)(st[f"blocks.{l}.hook_resid_pre"])
        q, k, v = (torch.einsum("bpm,hdm->bphd", h, wt) + (0 if bt is None else bt)
                   for wt, bt in ((w.w_q, w.b_q), (w.w_k, w.b_k), (w.w_v, w.b_v)))
        fused = a.qkv(attn, h, s)
        t = tokens.input_ids.shape[1]
        rotary = a.rotary_cos_sin(model.hf, h, torch.arange(t)[None])
        if rotary is not None:
            cos, sin = (r[:, :, None] for r in rotary)
            q, k = a.apply_rotary(q, cos, sin), a.apply_rotary(k, cos, sin)
            fused = (a.apply_rotary(fused[0], cos, sin), a.apply_rotary(fused[1], cos, sin), fused[2])
        w_o, b_o = a.out_weights(attn, s)
        z = st[f"blocks.{l}.attn.hook_z"]
        attn_out = z.reshape(*z.shape[:2], -1) @ w_o.reshape(-1, s.d_model) + (0 if b_o is None else b_o)
    for mine, fast, name in ((q, fused[0], "hook_q"), (k, fused[1], "hook_k"), (v, fused[2], "hook_v")):
        ref = st[f"blocks.{l}.attn.{name}"]
        assert (mine - ref).abs().max() < 1e-5, name
        assert (fast - ref).abs().max() < 1e-5, name
    assert (attn_out - st[f"blocks.{l}.hook_attn_out"]).abs().max() < 1e-5


def test_partial_rotary_leaves_the_other_dims_alone(tiny_neox):
    a = tiny_neox.adapter
    x = torch.randn(1, 5, 16)
    cos, sin = a.rotary_cos_sin(tiny_neox.hf, x, torch.arange(5)[None])
    assert cos.shape[-1] == 4  # Pythia's quarter of a 16-dim head
    y = a.apply_rotary(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:]) and not torch.allclose(y[..., 1:, :4], x[..., 1:, :4])
    g = torch.randn_like(x)
    # the rotation's transpose: <rotary(x), g> == <x, rotary_grad(g)>
    assert torch.allclose((y * g).sum(), (x * a.rotary_grad(g, cos, sin)).sum(), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_norm_gradient_is_autograd(family):
    hf = _pristine(family)
    a = adapter_for(hf)
    norm = a.attn_norm(a.layers(hf)[0])
    x = torch.randn(2, 3, 32, requires_grad=True)
    g = torch.randn(2, 3, 32)
    (norm(x) * g).sum().backward()
    with torch.no_grad():
        mine = a.norm_input_grad(norm, x.detach(), g)
    assert (mine - x.grad).abs().max() < 1e-5
    assert a.centred_norm == (family != "llama")


def test_adapter_for_reads_model_type_and_refuses_others(tiny_llama, tiny_gpt2, tiny_neox):
    assert [adapter_for(m).name for m in (tiny_llama, tiny_gpt2, tiny_neox)] == ["llama", "gpt2", "neox"]
    assert [m.arch for m in (tiny_llama, tiny_gpt2, tiny_neox)] == ["llama", "gpt2", "neox"]
    assert adapter_for(tiny_neox.hf) is tiny_neox.adapter and tiny_neox.adapter.parallel
    assert not tiny_llama.adapter.parallel and not tiny_gpt2.adapter.parallel
    from transformers import GPTJConfig, GPTJForCausalLM, GPTNeoXConfig

    gptj = GPTJForCausalLM(GPTJConfig(vocab_size=50, n_embd=16, n_layer=1, n_head=2, rotary_dim=4, n_positions=32))
    with pytest.raises(InputError, match="unsupported model architecture 'gptj'") as err:
        adapter_for(gptj)
    assert "\n" not in str(err.value)
    sequential = ADAPTERS["neox"].for_config(GPTNeoXConfig(use_parallel_residual=False))
    assert not sequential.parallel and sequential.tl_name("blocks.0.hook_resid_mid") == "blocks.0.hook_resid_mid"


def test_transformer_lens_names_per_family(tiny_llama, tiny_gpt2, tiny_neox):
    assert tiny_llama.adapter.tl_name("blocks.3.attn.hook_q") == "blocks.3.attn.hook_rot_q"
    assert tiny_gpt2.adapter.tl_name("blocks.3.attn.hook_q") == "blocks.3.attn.hook_q"
    assert tiny_neox.adapter.tl_name("blocks.3.attn.hook_k") is None
    assert tiny_neox.adapter.tl_name("blocks.3.hook_resid_mid") == "blocks.3.ln2.hook_in"
    assert tiny_neox.adapter.tl_name("hook_embed") == "hook_embed"


# ------------------------------------------------------------------ GPT-NeoX's parallel residual in the graph
def test_parallel_graph_has_no_head_to_own_mlp_edge(tiny_neox, tiny_llama):
    g, seq = G.Graph.for_model(tiny_neox), G.Graph.for_model(tiny_llama)
    H = tiny_neox.shape.n_heads
    for l in range(tiny_neox.shape.n_layers):
        heads, mlp = g.head_slice(l), g.receiver_index(f"M{l}")
        assert not g.valid[heads, mlp].any() and seq.valid[seq.head_slice(l), seq.receiver_index(f"M{l}")].all()
        assert g.valid[g.sender_index("input"), mlp]
        if l > 0:
            assert g.valid[G.Graph.build(2, H, parallel=True).head_slice(l - 1), mlp].all()
    assert g.n_edges == seq.n_edges - tiny_neox.shape.n_layers * H


def test_neox_resid_mid_is_the_mlp_input_stream(tiny_neox):
    names = [f"blocks.1.{n}" for n in ("hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out",
                                       "hook_resid_post")]
    _, st = forward(tiny_neox, as_tokens(tiny_neox, ["Hello there friend"]), names)
    assert torch.equal(st["blocks.1.hook_resid_mid"], st["blocks.1.hook_resid_pre"])
    total = st["blocks.1.hook_resid_pre"] + st["blocks.1.hook_attn_out"] + st["blocks.1.hook_mlp_out"]
    assert (total - st["blocks.1.hook_resid_post"]).abs().max() < 1e-5


def test_neox_mlp_receiver_grad_matches_finite_differences(tiny_neox):
    """The MLP's input is the layer's input with the parallel residual (the heads' receiver
    gradients of every family, NeoX included, are checked in test_circuits_known)."""
    m = tiny_neox
    ids = torch.randint(100, 5000, (3, 7), generator=torch.Generator().manual_seed(0))
    tc = as_tokens(m, ids)
    met = G.LogitDiff(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    grads, _ = G.receiver_grads(m, tc, met)
    H = m.shape.n_heads
    l = 1
    _, st = forward(m, tc, [f"blocks.{l}.hook_resid_pre"])
    x = st[f"blocks.{l}.hook_resid_pre"]
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * 1e-3
    vals = []
    for sign in (1, -1):
        lg, _ = forward(m, tc, [], {f"blocks.{l}.hook_resid_mid": lambda a, sign=sign: a + sign * d})
        vals.append(met(lg[torch.arange(3), tc.last_positions]).mean())
    numeric = float((vals[0] - vals[1]) / 2)
    assert float((grads[l * (H + 1) + H] * d).sum()) == pytest.approx(numeric, rel=0.02, abs=1e-7)


def test_neox_edge_masks_interpolate_and_cut_one_edge(tiny_neox):
    m = tiny_neox
    clean = as_tokens(m, ["When Mary and John went to the store, John gave a drink to", "The cat sat on the mat"])
    corrupt = as_tokens(m, ["When Alice and Bob went to the shop, Tom gave a drink to", "A dog sat on the rug"])
    assert clean.input_ids.shape == corrupt.input_ids.shape
    met = G.LogitDiff(torch.tensor([100, 101]), torch.tensor([200, 201]))
    g = G.Graph.for_model(m)
    _, acts = G.sender_outputs(m, corrupt)
    cut = g.valid.clone()
    cut[g.sender_index("M0"), g.receiver_index("M1")] = False
    vals = G.run_edge_masks(m, g, clean, acts, torch.stack([g.valid, torch.zeros_like(g.valid), cut]), met)
    lc, _ = forward(m, clean, [])
    lk, _ = forward(m, corrupt, [])
    rows = torch.arange(2)
    assert torch.allclose(vals[0], met(lc[rows, clean.last_positions]), atol=1e-4)
    assert torch.allclose(vals[1], met(lk[rows, corrupt.last_positions]), atol=1e-4)
    # the one cut edge by hand: MLP 1's input (the layer's input) with M0's clean output swapped for the corrupt one
    _, cs = forward(m, clean, ["blocks.0.hook_mlp_out"])
    swap = acts["mlp0"] - cs["blocks.0.hook_mlp_out"]
    lh, _ = forward(m, clean, [], {"blocks.1.hook_resid_mid": lambda a: a + swap})
    assert torch.allclose(vals[2], met(lh[rows, clean.last_positions]), atol=1e-5)
    assert (vals[2] - vals[0]).abs().max() > 1e-6


def test_shape_dataclass_unchanged_for_neox(tiny_neox):
    assert tiny_neox.shape == ModelShape(n_layers=2, n_heads=4, n_kv_heads=4, d_head=16, d_model=64, n_ctx=512,
                                         d_vocab=tiny_neox.shape.d_vocab)
