"""Known-answer tests of patching and circuit discovery on a hand-built model whose circuit
is known by construction (tests/planted_model.py): L0H0 copies the name, L1H0 amplifies it."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from workbench.cache import as_tokens, forward
from workbench.errors import InputError
from workbench.patching import graph as G
from workbench.patching.acdc import acdc
from workbench.patching.activation import patch_heads, patch_mlps, patch_residual
from workbench.patching.eap import edge_attribution, head_grid, node_scores
from workbench.patching.path import path_patch
from planted_model import planted_model, planted_prompts


@pytest.fixture(scope="module")
def planted():
    m = planted_model()
    clean, corrupt, c, w = planted_prompts(6)
    return m, as_tokens(m, clean), as_tokens(m, corrupt), G.LogitDiff(c, w)


def _rms(x, eps=1e-6):
    return x * (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt()


def test_planted_model_solves_its_task(planted):
    m, clean, corrupt, metric = planted
    lc, _ = forward(m, clean, [])
    lk, _ = forward(m, corrupt, [])
    assert (metric(lc[:, -1]) > 5).all()
    assert torch.allclose(metric(lk[:, -1]), -metric(lc[:, -1]), atol=1e-4)


def test_head_patching_finds_the_planted_head_first(planted):
    m, clean, corrupt, metric = planted
    grid = patch_heads(m, clean, corrupt, metric)
    norm = grid.normalized
    order = norm.flatten().argsort(descending=True)
    assert int(order[0]) == 0  # L0H0
    assert norm[0, 0] > 0.95
    assert int(order[1]) == 1 * 4 + 0  # then the amplifier L1H0
    others = norm.flatten()[order[2:]]
    assert others.abs().max() < 0.05


def test_residual_and_mlp_patching(planted):
    m, clean, corrupt, metric = planted
    res = patch_residual(m, clean, corrupt, metric)
    assert res.patched.shape == (2, 8)
    # the name's position carries the whole effect into layer 0
    name_pos = (clean.input_ids != corrupt.input_ids).float().argmax(1)
    one = (name_pos == name_pos[0]).all()
    if one:
        assert res.normalized[0, int(name_pos[0])] > 0.99
    mlp = patch_mlps(m, clean, corrupt, metric)
    assert mlp.effect.abs().max() < 1e-5  # the MLPs write nothing


def test_eap_agrees_with_exact_edge_patching(planted):
    m, clean, corrupt, metric = planted
    g = G.Graph.for_model(m)
    scores = edge_attribution(m, clean, corrupt, metric, "eap")
    _, acts = G.sender_outputs(m, corrupt)
    idx = g.valid.nonzero()
    masks = g.valid[None].repeat(len(idx), 1, 1)
    for i, (a, b) in enumerate(idx.tolist()):
        masks[i, a, b] = False
    full = float(metric(forward(m, clean, [])[0][:, -1]).mean())
    exact = G.run_edge_masks(m, g, clean, acts, masks, metric).mean(1) - full
    eap = scores[idx[:, 0], idx[:, 1]]
    rho = spearmanr(eap.numpy(), exact.numpy()).statistic
    big = exact.abs() > 0.1
    assert big.sum() >= 4
    assert (torch.sign(eap[big]) == torch.sign(exact[big])).all()
    top_exact = set(exact.abs().topk(4).indices.tolist())
    top_eap = set(eap.abs().topk(4).indices.tolist())
    assert top_exact == top_eap
    rho_big = spearmanr(eap[big].numpy(), exact[big].numpy()).statistic
    print(f"EAP vs exact edge patching on the planted model: Spearman over all {len(idx)} edges {rho:.3f}, "
          f"over the {int(big.sum())} edges with |effect| > 0.1: {rho_big:.3f}")
    assert rho > 0.5 and rho_big > 0.7
    ig = edge_attribution(m, clean, corrupt, metric, "eap-ig", steps=5)
    assert set(ig[idx[:, 0], idx[:, 1]].abs().topk(4).indices.tolist()) == top_exact
    node = head_grid(g, node_scores(g, scores))
    assert int(node.abs().flatten().argmax()) == 0


def test_path_patching_equals_hand_computed_value(planted):
    m, clean, corrupt, metric = planted
    hf = m.hf
    names = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
             "blocks.1.hook_resid_post"]
    _, cc = forward(m, clean, names)
    _, ck = forward(m, corrupt, names)
    wo0 = hf.model.layers[0].self_attn.o_proj.weight.view(48, 4, 8)[:, 0]  # [d_model d_head]
    wo1 = hf.model.layers[1].self_attn.o_proj.weight.view(48, 4, 8)[:, 0]
    wv1 = hf.model.layers[1].self_attn.v_proj.weight.view(2, 8, 48)[0]
    d_sender = (ck["blocks.0.attn.hook_z"][:, :, 0] - cc["blocks.0.attn.hook_z"][:, :, 0]) @ wo0.T
    final = cc["blocks.1.hook_resid_post"]
    # to the logits: only the sender changes (other heads frozen, MLPs write nothing)
    logits = hf.lm_head(_rms(final + d_sender))
    hand_logits = float(metric(logits[:, -1]).mean())
    got = path_patch(m, clean, corrupt, metric, "logits", senders=[(0, 0)])
    assert got.patched[0].item() == pytest.approx(hand_logits, abs=1e-4)
    # to L1H0's values: v' from the patched residual, the clean pattern, the new output
    x = cc["blocks.1.hook_resid_pre"] + d_sender
    v = _rms(x) @ wv1.T  # [n pos d_head]
    z = torch.einsum("nqk,nkd->nqd", cc["blocks.1.attn.hook_pattern"][:, 0], v)
    new_final = final - cc["blocks.1.attn.hook_z"][:, :, 0] @ wo1.T + z @ wo1.T
    hand_v = float(metric(hf.lm_head(_rms(new_final))[:, -1]).mean())
    got_v = path_patch(m, clean, corrupt, metric, [(1, 0)], "v", senders=[(0, 0)])
    assert got_v.patched[0].item() == pytest.approx(hand_v, abs=1e-4)
    # the amplifier's query and key carry nothing of the name
    got_q = path_patch(m, clean, corrupt, metric, [(1, 0)], "qk", senders=[(0, 0)])
    assert got_q.effect[0].abs().item() < 1e-4
    grid = path_patch(m, clean, corrupt, metric, "logits")
    # direct paths to the logits: the amplifier L1H0 first, the copier L0H0 second, nothing else
    assert grid.patched.shape == (2, 4)
    assert grid.effect.flatten().argsort()[:2].tolist() == [4, 0]
    assert grid.effect.flatten()[[1, 2, 3, 5, 6, 7]].abs().max() < 1e-4


def test_receiver_grads_match_finite_differences():
    from workbench.models import load_model

    for name in ("tiny-llama", "tiny-gpt2", "tiny-neox"):  # NeoX: partial rotary, LayerNorm, parallel residual
        m = load_model(name)
        ids = torch.randint(100, 5000, (3, 7), generator=torch.Generator().manual_seed(0))
        tc = as_tokens(m, ids)
        met = G.LogitDiff(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
        grads, _ = G.receiver_grads(m, tc, met)
        H = m.shape.n_heads
        qkv = G.QKV(m)
        l = 1
        _, st = forward(m, tc, [f"blocks.{l}.hook_resid_pre"])
        x = st[f"blocks.{l}.hook_resid_pre"]
        for h in (0, H - 1):
            d = torch.randn(x.shape, generator=torch.Generator().manual_seed(h)) * 1e-3
            vals = []
            for sign in (1, -1):
                state = {}

                def on_scores(sc, sign=sign, state=state):
                    xh = x[:, :, None].repeat(1, 1, H, 1)
                    xh[:, :, h] += sign * d
                    q, k, v = qkv(l, xh)
                    new, z = G.per_head_attention(q, k, v, G.masked_positions(sc), G.attn_scale(m, l), sc)
                    state["z"] = z
                    return new

                lg, _ = forward(m, tc, [], {f"blocks.{l}.attn.hook_attn_scores": on_scores,
                                            f"blocks.{l}.attn.hook_z": lambda z, state=state: state.pop("z")})
                vals.append(met(lg[torch.arange(3), tc.last_positions]).mean())
            numeric = float((vals[0] - vals[1]) / 2)
            analytic = float((grads[l * (H + 1) + h] * d).sum())
            assert analytic == pytest.approx(numeric, rel=0.02, abs=1e-7), (name, h)
        qkv.close()


def test_edge_masks_interpolate_between_clean_and_corrupt(planted):
    m, clean, corrupt, metric = planted
    g = G.Graph.for_model(m)
    _, acts = G.sender_outputs(m, corrupt)
    both = torch.stack([g.valid, torch.zeros_like(g.valid)])
    vals = G.run_edge_masks(m, g, clean, acts, both, metric)
    lc, _ = forward(m, clean, [])
    lk, _ = forward(m, corrupt, [])
    assert torch.allclose(vals[0], metric(lc[:, -1]), atol=1e-4)
    assert torch.allclose(vals[1], metric(lk[:, -1]), atol=1e-4)


def test_acdc_keeps_the_planted_path(planted):
    m, clean, corrupt, metric = planted
    g = G.Graph.for_model(m)
    _, acts = G.sender_outputs(m, corrupt)
    keep, _ = acdc(m, g, clean, acts, metric, tau=0.5)
    kept = set(g.edge_names(G.prune_dangling(g, keep)))
    assert ("input", "L0H0") in kept
    assert ("L0H0", "logits") in kept or ("L0H0", "L1H0") in kept
    assert all(s in ("input", "L0H0", "L1H0", "M0", "L0H1", "L0H2", "L0H3") for s, _ in kept)
    full = G.run_edge_masks(m, g, clean, acts, g.valid, metric).mean()
    circ = G.run_edge_masks(m, g, clean, acts, keep, metric).mean()
    assert float(circ / full) > 0.8


def test_too_many_edges_and_misaligned_pairs_are_one_line_errors(planted):
    m, clean, corrupt, metric = planted
    g = G.Graph.for_model(m)
    with pytest.raises(InputError, match="has only"):
        G.top_edges(g, torch.zeros(g.valid.shape), g.n_edges + 1)
    short = as_tokens(m, corrupt.input_ids[:, :-1])
    with pytest.raises(InputError, match="token"):
        edge_attribution(m, clean, short, metric, "eap")
    with pytest.raises(InputError, match="token length"):
        patch_heads(m, clean, short, metric)
