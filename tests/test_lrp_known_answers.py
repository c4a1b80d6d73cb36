"""LRP known answers: hand-computed relevances on tiny networks (epsilon rule, the residual Norm
rule, AttnLRP's gated-MLP rules), exact conservation of AttnLRP once the softmax's own share is
counted, the deletion test against a direct forward, and the SR map on a planted blob."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.analyses.lrp import attnlrp as A
from workbench.analyses.lrp import cnn as C
from workbench.analyses.lrp.imports import import_lxt, import_zennit


# ---------------------------------------------------------------------------- zennit, by hand
class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.act(self.fc1(x)))


def _epsilon_by_hand(w1, b1, w2, b2, x, cls, eps):
    """LRP-epsilon written out: R_out = e_cls; R_j = sum_k a_j w_jk / (z_k + eps sign z_k) R_k."""
    z1 = x @ w1.T + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ w2.T + b2
    r2 = np.zeros_like(z2)
    r2[cls] = 1.0
    s2 = r2 / (z2 + eps * np.where(z2 >= 0, 1, -1))
    r1 = a1 * (w2.T @ s2)
    s1 = r1 / (z1 + eps * np.where(z1 >= 0, 1, -1))
    return x * (w1.T @ s1), z2


def test_zennit_epsilon_equals_hand_computed_lrp():
    import_zennit()
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox

    torch.manual_seed(0)
    net = TwoLayer().double()
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, 1.5]]))
        net.fc1.bias.copy_(torch.tensor([0.1, -0.2]))
        net.fc.weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 3.0]]))
        net.fc.bias.copy_(torch.tensor([0.3, 0.0]))
    x = torch.tensor([[1.0, 0.5, 2.0]], dtype=torch.float64)
    comp = EpsilonGammaBox(low=torch.tensor(-5.0), high=torch.tensor(5.0), epsilon=0.01)  # Linear -> Epsilon
    with Gradient(model=net, composite=comp) as attr:
        _, relevance = attr(x, torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    expected, _ = _epsilon_by_hand(net.fc1.weight.detach().numpy(), net.fc1.bias.detach().numpy(),
                                   net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy(), x[0].numpy(), 1, 0.01)
    assert np.allclose(relevance[0].numpy(), expected, atol=1e-10)


def test_residual_sum_splits_relevance_in_proportion():
    """a + b with relevance R: Norm rule gives R * a / (a + b) and R * b / (a + b)."""
    zennit = import_zennit()
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox

    def comp():  # Linear -> Epsilon, Sum -> Norm
        return EpsilonGammaBox(low=torch.tensor(-9.0), high=torch.tensor(9.0), epsilon=1e-12, stabilizer=1e-12)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Linear(2, 2, bias=False)
            self.add = zennit.layer.Sum(dim=-1)

        def forward(self, x):
            return self.add(torch.stack([self.scale(x), x], dim=-1))

    net = Res().double()
    with torch.no_grad():
        net.scale.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[2.0, 4.0]], dtype=torch.float64)
    with Gradient(model=net, composite=comp()) as attr:
        _, rel = attr(x, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    # output 0 = 3*2 + 2 = 8: the branch gets 6/8, the skip 2/8; both come from x0 only
    assert torch.allclose(rel, torch.tensor([[1.0, 0.0]], dtype=torch.float64), atol=1e-9)
    with Gradient(model=net, composite=comp()) as attr:
        _, rel = attr(x, torch.tensor([[0.0, 2.0]], dtype=torch.float64))
    assert torch.allclose(rel, torch.tensor([[0.0, 2.0]], dtype=torch.float64), atol=1e-9)


def test_batchnorm_folding_is_exact():
    from workbench.vision import load_efficientnet_lite0

    net = load_efficientnet_lite0()
    canonical = C.CanonicalEfficientNet(net)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.allclose(net(x), canonical(x), atol=1e-3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in canonical.modules())


# ---------------------------------------------------------------------------- AttnLRP, by hand
def test_attnlrp_gated_mlp_rules_by_hand():
    """LlamaMLP under lxt's rules: linear down-projection, uniform split of the product, identity
    on SiLU, then gradient x input through gate and up projections, written out by hand."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=3, intermediate_size=2, hidden_act="silu", num_attention_heads=1, num_key_value_heads=1)
    mlp = LlamaMLP(cfg).double()
    A._apply_rules(mlp)
    x = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64, requires_grad=True)
    y = mlp(x)[0]
    y.backward()
    got = (x * x.grad).detach()

    G, U, D = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()
    xd = x.detach()
    g, u = G @ xd, U @ xd
    a = torch.nn.functional.silu(g)
    h = a * u
    r_h = D[0] * h                      # relevance of each product, output 0
    r_a = r_u = r_h / 2                 # uniform rule on a * u
    r_g = r_a                           # identity rule on SiLU
    expected = (G * xd / g[:, None] * r_g[:, None]).sum(0) + (U * xd / u[:, None] * r_u[:, None]).sum(0)
    assert torch.allclose(got, expected, atol=1e-9)
    assert torch.allclose(got.sum(), y.detach(), atol=1e-9)  # conservative: no bias, uniform split


def test_linear_gradient_x_input_is_exact():
    """For a linear map gradient x input is w * x and sums to the output (the closed form)."""
    w = torch.tensor([2.0, -1.0, 0.5])
    x = torch.tensor([1.0, 3.0, -2.0], requires_grad=True)
    y = (w * x).sum()
    y.backward()
    assert torch.equal(x * x.grad, w * x.detach())
    assert float((x.detach() * x.grad).sum()) == pytest.approx(float(y.detach()))


def test_attnlrp_conserves_on_tiny_llama_and_leaves_shared_model_alone(tiny_llama):
    m = tiny_llama
    ids = m.to_tokens("When Mary and John went to the store, John gave a drink to")[0][0]
    io, s = m.token_id(" Mary"), m.token_id(" John")
    with torch.no_grad():
        before = m.hf(input_ids=ids[None]).logits
    g_before = A.gradient_x_input(m, ids, lambda lg: lg[io] - lg[s])
    e = A.attnlrp(m, ids, lambda lg: lg[io] - lg[s])
    assert e.relevance.shape == (len(ids),)
    assert e.head_relevance.shape == (m.shape.n_layers, m.shape.n_heads)
    assert e.conservation_error < 1e-3
    with torch.no_grad():
        ref = m.hf(input_ids=ids[None]).logits[0, -1]
    assert e.target_value == pytest.approx(float(ref[io] - ref[s]), abs=1e-4)  # the copy computes the same function
    with torch.no_grad():
        assert torch.equal(before, m.hf(input_ids=ids[None]).logits)
    g_after = A.gradient_x_input(m, ids, lambda lg: lg[io] - lg[s])
    assert torch.allclose(g_before.relevance, g_after.relevance)  # gradients of the shared model unchanged
    assert A.attnlrp_model(m) is not m.hf


def test_head_relevance_adds_up_to_the_attention_output(tiny_llama):
    """W_O has no bias, so the heads of a layer sum to the relevance at hook_attn_out: check it
    on the plain-gradient path, where both are reachable through the caching layer."""
    from workbench.cache import Tokens, forward

    m = tiny_llama
    ids = m.to_tokens("Alice met Bob at the station and gave")[0]
    names = ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"]
    leaf = {"hook_embed": lambda act: act.detach().requires_grad_(True)}
    logits, store = forward(m, Tokens(ids, torch.ones_like(ids)), names, leaf, grad=True)
    val = logits[0, -1, 5]
    gz, go = torch.autograd.grad(val, [store[names[0]], store[names[1]]])
    assert torch.allclose((store[names[0]] * gz).sum(), (store[names[1]] * go).sum(), atol=1e-5)


def test_rollout_is_a_distribution(tiny_llama):
    ids = tiny_llama.to_tokens("one two three four five")[0][0]
    r = A.attention_rollout(tiny_llama, ids)
    assert r.shape == (len(ids),) and (r >= 0).all() and float(r.sum()) == pytest.approx(1.0, abs=1e-5)


def test_deletion_curve_matches_direct_forward(tiny_llama):
    m = tiny_llama
    ids = m.to_tokens("Then, Anna and Paul went to the garden. Paul gave a ring to")[0][0]
    tgt = m.token_id(" Anna")
    order = [3, 1, 7]
    curves = A.deletion_curves(m, ids, {"x": order}, lambda lg: lg[tgt], 3)["x"]
    for k in range(4):
        keep = [i for i in range(len(ids)) if i not in order[:k]]
        with torch.no_grad():
            direct = m.hf(input_ids=ids[keep][None]).logits[0, -1, tgt]
        assert float(curves[k]) == pytest.approx(float(direct), abs=1e-4)
    assert A.aopc(torch.tensor([5.0, 4.0, 3.0])) == pytest.approx(1.0)
    assert A.deletion_orders(torch.tensor([0.1, 3.0, -1.0, 2.0, 9.0])) == [1, 3, 0, 2]  # last never deleted


# ---------------------------------------------------------------------------- CNN pieces
def test_sr_map_highlights_the_area_around_a_planted_blob():
    rel = np.zeros((224, 224), dtype=np.float32)
    rel[100:120, 60:80] = 1.0  # the relevant object
    rel[5, 200] = 0.3          # an isolated pixel
    sr = C.salient_relevance(rel)
    assert sr.shape == (224, 224) and 0 <= sr.min() and sr.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(sr), sr.shape)
    assert 85 <= peak[0] <= 135 and 45 <= peak[1] <= 95
    assert sr[110, 85] > 0.2          # context just outside the blob (LRP is 0 there)
    assert sr[110, 85] > sr[5, 200]    # more than the isolated pixel far away
    assert sr[200, 200] < 0.05        # far background


def test_region_deletion_known_answer():
    """f(x) = sum of the top-left 16x16 block; deleting the most salient region first zeroes it."""
    def f(x):
        return x[:, :, :16, :16].sum((1, 2, 3))[:, None].repeat(1, 2)

    x = torch.ones(1, 3, 64, 64)
    sal = torch.zeros(64, 64)
    sal[:16, :16] = 1.0
    curve = C.region_deletion_curve(f, x, sal, 0, region=16, step=1, n_steps=3)
    assert curve.tolist() == [768.0, 0.0, 0.0, 0.0]
    worst = C.region_deletion_curve(f, x, -sal, 0, region=16, step=1, n_steps=3)
    assert worst.tolist() == [768.0, 768.0, 768.0, 768.0]


def test_lxt_import_leaves_no_stub_package():
    import sys

    rules, patches = import_lxt()
    assert hasattr(rules, "divide_gradient") and hasattr(patches, "gated_mlp_forward")
    assert "lxt.efficient" not in sys.modules or not getattr(sys.modules["lxt.efficient"], "__workbench_stub__", False)
    import_zennit()
    assert "torchvision" not in sys.modules or not getattr(sys.modules["torchvision"], "__workbench_stub__", False)


def test_attnlrp_reaches_qwen2_and_computes_the_same_function():
    """Qwen2 (Llama-style with q/k/v biases) takes the same rules: the private copy computes the
    model's own logit difference, and the relevance of the inputs plus what the biases absorb is
    the target (biases are sources in LRP, so input relevance alone need not add up)."""
    from workbench.models import load_model

    m = load_model("tiny-qwen2")
    ids = m.to_tokens("When Mary and John went to the store, John gave a drink to")[0][0]
    a, b = int(ids[1]), int(ids[3])
    e = A.attnlrp(m, ids, lambda lg: lg[a] - lg[b])
    with torch.no_grad():
        ref = m.hf(input_ids=ids[None]).logits[0, -1]
    assert e.target_value == pytest.approx(float(ref[a] - ref[b]), abs=1e-4)
    assert e.relevance.shape == (len(ids),) and torch.isfinite(e.relevance).all()
