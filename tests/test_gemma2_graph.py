"""The edge graph on a whole Gemma-2 (``tiny-gemma2``, weights shaken so that the caps, the
window and the norms matter). Its post-attention norm divides the sum of the heads by its
rms, so a head's write is z_h / rms(layer's total in this forward) @ W_O[h] (1 + w). Known
answers: that split sums to hook_attn_out; the edge-masked forward with every edge kept is the
model, with none kept (counterfactual) the corrupt run; single dropped edges equal two-pass
hook references; EAP and EAP-IG scores equal central finite differences of the same forward.
Tolerance 1e-5 (float32) for equalities, 2 % for finite differences."""
from __future__ import annotations

import pytest
import torch

from workbench.cache import as_tokens, forward
from workbench.patching import graph as G
from workbench.patching.eap import edge_attribution
from workbench.patching.head_qkv import attn_softcap, head_writes, write_weights

CLEAN = ["When Mary and John went to the store, John gave a drink to", "The cat sat on the mat and then"]
CORRUPT = ["When Alice and Bob went to the shop, Tom gave a drink to", "A dog sat on the rug and then"]
EDGES = [("L0H1", "L1H2"), ("input", "L0H3"), ("L0H2", "M0"), ("M0", "logits"), ("L1H0", "logits"),
         ("L0H0", "M1"), ("input", "L1H1"), ("L1H3", "L2H0"), ("M1", "L2H2")]


@pytest.fixture(scope="module")
def task():
    from test_gemma2_model import shaken_gemma2

    model = shaken_gemma2()
    clean, corrupt = as_tokens(model, CLEAN), as_tokens(model, CORRUPT)
    assert clean.input_ids.shape == corrupt.input_ids.shape
    metric = G.LogitDiff(torch.tensor([100, 101]), torch.tensor([200, 201]))
    return model, clean, corrupt, metric


def last_metric(model, tokens, metric, patches=None):
    logits, _ = forward(model, tokens, [], patches)
    return metric(logits[torch.arange(len(tokens)), tokens.last_positions])


def test_head_writes_sum_to_the_attention_output(task):
    model, clean, _, _ = task
    names = [f"blocks.{l}.{n}" for l in range(3) for n in ("attn.hook_z", "hook_attn_out")]
    _, st = forward(model, clean, names)
    for l in range(3):
        z = st[f"blocks.{l}.attn.hook_z"]
        writes = torch.einsum("bphd,hdm->bphm", head_writes(model, l, z), write_weights(model, l))
        assert (writes.sum(2) - st[f"blocks.{l}.hook_attn_out"]).abs().max() <= 1e-5
        assert (writes.sum(2) - torch.einsum("bphd,hdm->bpm", z, model.adapter.out_weights(
            model.adapter.attn(model.adapter.layers(model.hf)[l]), model.shape)[0])).abs().max() > 1e-2
    assert attn_softcap(model, 0) == 2.0


def test_all_edges_is_the_model_and_no_edges_is_the_corrupt_run(task):
    model, clean, corrupt, metric = task
    g = G.Graph.for_model(model)
    _, acts = G.sender_outputs(model, corrupt)
    vals = G.run_edge_masks(model, g, clean, acts, torch.stack([g.valid, torch.zeros_like(g.valid)]), metric)
    want_clean, want_corrupt = last_metric(model, clean, metric), last_metric(model, corrupt, metric)
    assert (vals[0] - want_clean).abs().max() <= 1e-5
    assert (vals[1] - want_corrupt).abs().max() <= 1e-5
    assert (want_clean - want_corrupt).abs().min() > 1e-2


def dropped_edge_reference(model, clean, corrupt, metric, edge):
    """The metric with one edge dropped, by plain hooks: the receiver's input gets the sender's
    corrupt write in place of its clean one; a receiving head reads it in a first pass (its z
    is kept) and only its z is swapped into a second, clean pass. A head's write is computed
    here from the Hugging Face modules: (1 + w) * (z_h @ W_O[h]) / rms(o_proj(z))."""
    sender, receiver = edge
    L, D = model.shape.n_layers, model.shape.d_head
    layers = model.hf.model.layers

    def write(tokens, name):
        if name == "input":
            return forward(model, tokens, ["blocks.0.hook_resid_pre"])[1]["blocks.0.hook_resid_pre"]
        if name.startswith("M"):
            return forward(model, tokens, [f"blocks.{name[1:]}.hook_mlp_out"])[1][f"blocks.{name[1:]}.hook_mlp_out"]
        l, h = int(name[1]), int(name[3])
        z = forward(model, tokens, [f"blocks.{l}.attn.hook_z"])[1][f"blocks.{l}.attn.hook_z"]
        o_proj, norm = layers[l].self_attn.o_proj, layers[l].post_attention_layernorm
        total = o_proj(z.flatten(-2))
        r_h = z[:, :, h] @ o_proj.weight[:, h * D:(h + 1) * D].T
        return (1 + norm.weight) * r_h / (total.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()

    swap = write(corrupt, sender) - write(clean, sender)
    if receiver == "logits":
        return last_metric(model, clean, metric, {f"blocks.{L - 1}.hook_resid_post": lambda x: x + swap})
    if receiver.startswith("M"):
        return last_metric(model, clean, metric, {f"blocks.{receiver[1:]}.hook_resid_mid": lambda x: x + swap})
    l, h = int(receiver[1]), int(receiver[3])
    _, st = forward(model, clean, [f"blocks.{l}.attn.hook_z"], {f"blocks.{l}.hook_resid_pre": lambda x: x + swap})
    patched = st[f"blocks.{l}.attn.hook_z"]

    def one_head(z):
        z = z.clone()
        z[:, :, h] = patched[:, :, h]
        return z

    return last_metric(model, clean, metric, {f"blocks.{l}.attn.hook_z": one_head})


def test_single_dropped_edges_equal_hook_references(task):
    model, clean, corrupt, metric = task
    g = G.Graph.for_model(model)
    _, acts_corrupt = G.sender_outputs(model, corrupt)
    keeps = []
    for s, r in EDGES:
        keep = g.valid.clone()
        keep[g.sender_index(s), g.receiver_index(r)] = False
        keeps.append(keep)
    vals = G.run_edge_masks(model, g, clean, acts_corrupt, torch.stack(keeps), metric)
    full = last_metric(model, clean, metric)
    for i, e in enumerate(EDGES):
        want = dropped_edge_reference(model, clean, corrupt, metric, e)
        assert (vals[i] - want).abs().max() <= 1e-5, e
        assert (vals[i] - full).abs().max() > 1e-5, e  # each edge matters here


def test_eap_scores_are_the_derivative_of_the_edge_masked_forward(task):
    """EAP's score of u -> v is d/de of the metric when v reads u's write moved by e times its
    corrupt-minus-clean change: the edge-masked forward with ablation values clean + e (corrupt
    - clean) and only that edge dropped, central differences at e = +-1e-2."""
    model, clean, corrupt, metric = task
    g = G.Graph.for_model(model)
    scores = edge_attribution(model, clean, corrupt, metric, "eap")
    _, a = G.sender_outputs(model, clean)
    _, b = G.sender_outputs(model, corrupt)
    eps = 1e-2
    for s, r in EDGES:
        keep = g.valid.clone()
        keep[g.sender_index(s), g.receiver_index(r)] = False
        vals = [G.run_edge_masks(model, g, clean, {k: a[k] + e * (b[k] - a[k]) for k in a}, keep, metric).mean()
                for e in (eps, -eps)]
        numeric = float(vals[0] - vals[1]) / (2 * eps)
        assert float(scores[g.sender_index(s), g.receiver_index(r)]) == pytest.approx(numeric, rel=0.02, abs=1e-4), (s, r)
    assert scores[g.valid].abs().max() > 1e-2 and not scores[~g.valid].any()


def receiver_fd(model, tokens, metric, embed, receiver, d):
    """Central difference of the mean metric when receiver's own input moves by +-d [b pos M],
    the token embeddings replaced by ``embed`` (EAP-IG's interpolation point)."""
    L, H = model.shape.n_layers, model.shape.n_heads
    qkv = G.QKV(model)
    vals = []
    try:
        for sign in (1, -1):
            patches = {"hook_embed": lambda x: embed}
            if receiver == "logits":
                patches[f"blocks.{L - 1}.hook_resid_post"] = lambda x, sign=sign: x + sign * d
            elif receiver.startswith("M"):
                patches[f"blocks.{receiver[1:]}.hook_resid_mid"] = lambda x, sign=sign: x + sign * d
            else:
                l, h = int(receiver[1]), int(receiver[3])
                state = {}
                _, st = forward(model, tokens, [f"blocks.{l}.hook_resid_pre"], {"hook_embed": lambda x: embed})
                x0 = st[f"blocks.{l}.hook_resid_pre"]

                def on_scores(sc, sign=sign, state=state, l=l, h=h, x0=x0):
                    xh = x0[:, :, None].repeat(1, 1, H, 1)
                    xh[:, :, h] += sign * d
                    q, k, v = qkv(l, xh)
                    new, z = G.per_head_attention(q, k, v, G.masked_positions(sc), G.attn_scale(model, l), sc,
                                                  attn_softcap(model, l))
                    state["z"] = z
                    return new

                patches[f"blocks.{l}.attn.hook_attn_scores"] = on_scores
                patches[f"blocks.{l}.attn.hook_z"] = lambda z, state=state: state.pop("z")
            vals.append(last_metric(model, tokens, metric, patches).mean())
    finally:
        qkv.close()
    return float(vals[0] - vals[1]) / 2


def test_eap_ig_scores_equal_finite_differences(task):
    """EAP-IG with 2 steps: each edge's score is the mean over alpha in (0, 1/2) of delta_u .
    grad_v at the embeddings corrupt + alpha (clean - corrupt), each such product a central
    difference along delta_u (scaled by 1e-2) at the receiver's own input."""
    model, clean, corrupt, metric = task
    g = G.Graph.for_model(model)
    scores = edge_attribution(model, clean, corrupt, metric, "eap-ig", steps=2)
    _, a = G.sender_outputs(model, clean)
    _, b = G.sender_outputs(model, corrupt)
    deltas = torch.cat(G.sender_deltas(model, g, a, b), dim=2)  # [b pos sender d_model], in sender order
    eps = 1e-2
    for s, r in EDGES:
        i = g.sender_index(s)
        delta = deltas[:, :, i]
        numeric = 0.0
        for alpha in (0.0, 0.5):
            embed = b["embed"] + alpha * (a["embed"] - b["embed"])
            numeric += receiver_fd(model, clean, metric, embed, r, eps * delta) / eps / 2
        assert float(scores[i, g.receiver_index(r)]) == pytest.approx(numeric, rel=0.02, abs=1e-4), (s, r)
    assert torch.isfinite(scores).all() and scores[g.valid].abs().max() > 1e-2
