"""QK attribution: the identity (the (query, key) pair contributions sum to the model's own
pre-softmax score) on tiny random Llama-style (grouped-query, rotary, RMSNorm), GPT-2
(LayerNorm, learned positions, biases) and GPT-NeoX (partial rotary, parallel residual)
models through the adapters; a closed form on a one-layer GPT-2 whose LayerNorm is the
identity on its inputs; then the command, results store, page and report from the spec."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from workbench.analyses.qk.analysis import QKConfig, QKResult, check_model, run
from workbench.analyses.qk.attribution import decompose, pair_scores, qk_parts
from workbench.cache import as_tokens
from workbench.errors import InputError
from workbench.results import load_result
from workbench.spec import get_spec

PROMPTS = ["The cat sat on the mat and the dog barked", "Hello world"]


def _identity_errors(model) -> tuple[float, float, int]:
    """Largest |sum of pairs - model score| over every head, layer, prompt and query; the
    largest |score|; and how many scores were checked."""
    tokens = as_tokens(model, PROMPTS)
    worst, scale, n = 0.0, 0.0, 0
    for layer in range(model.shape.n_layers):
        dec = decompose(model, tokens, layer)
        assert dec.residual_error < 1e-5
        for head in range(model.shape.n_heads):
            q, k, sc = qk_parts(model, dec, head)
            for row in range(len(PROMPTS)):
                for i in range(int(dec.lengths[row])):
                    got = pair_scores(q, k, sc, row, i).sum((0, 1))
                    want = dec.scores[row, head, i, : i + 1]
                    worst = max(worst, float((got - want).abs().max()))
                    scale = max(scale, float(want.abs().max()))
                    n += i + 1
    return worst, scale, n


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_pair_contributions_sum_to_the_score(name, request):
    model = request.getfixturevalue(name)
    worst, scale, n = _identity_errors(model)
    assert n > 100 and scale > 0.01
    assert worst < 1e-5 * max(1.0, scale)


def test_identity_breaks_when_a_component_is_dropped(tiny_gpt2):
    """The check can fail: without the MLP of layer 0 the sum misses the score."""
    tokens = as_tokens(tiny_gpt2, PROMPTS)
    dec = decompose(tiny_gpt2, tokens, 1)
    i = dec.names.index("MLP0")
    q, k, sc = qk_parts(tiny_gpt2, dec, 0)
    keep = [j for j in range(len(dec.names)) if j != i]
    got = pair_scores(q[keep], k[keep], sc, 0, 5).sum((0, 1))
    assert float((got - dec.scores[0, 0, 5, :6]).abs().max()) > 1e-3


def _identity_ln_gpt2():
    """A one-layer GPT-2 whose LayerNorm is the identity on every input it meets: each token
    embedding lives in dims 0..31 and each position embedding in dims 32..63, both with zero
    mean and squared norm 32, so every sum has mean 0 and variance 1 (eps 0, weight 1, bias 0)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.hooks import install_hook_points
    from workbench.models import Model, shape_of

    cfg = GPT2Config(vocab_size=16, n_embd=64, n_layer=1, n_head=4, n_positions=16, layer_norm_epsilon=0.0)
    hf = GPT2LMHeadModel(cfg).eval()
    gen = torch.Generator().manual_seed(1)

    def block(n: int, lo: int) -> torch.Tensor:
        x = torch.zeros(n, 64)
        v = torch.randn(n, 32, generator=gen)
        v = v - v.mean(1, keepdim=True)
        x[:, lo:lo + 32] = v / v.norm(dim=1, keepdim=True) * 32 ** 0.5
        return x

    with torch.no_grad():
        hf.transformer.wte.weight.copy_(block(16, 0))
        hf.transformer.wpe.weight.copy_(block(16, 32))
        hf.transformer.h[0].attn.c_attn.bias.copy_(torch.randn(3 * 64, generator=gen))
    for p in hf.parameters():
        p.requires_grad_(False)
    arch, points = install_hook_points(hf)

    class Tok:
        pad_token_id = 0

    return Model(name="identity-ln-gpt2", hf=hf, tokenizer=Tok(), shape=shape_of(hf), arch=arch, hook_points=points)


def test_closed_form_one_layer_no_norm():
    """Every pair equals its hand-computed bilinear term: (W_Q x_a + [b_Q]) . (W_K y_b + [b_K]) / sqrt(d_head)."""
    model = _identity_ln_gpt2()
    ids = torch.tensor([[3, 7, 1, 12, 5]])
    dec = decompose(model, as_tokens(model, ids), 0)
    assert dec.names == ["embed", "pos_embed", "bias"]
    hf = model.hf.transformer
    w = hf.h[0].attn.c_attn.weight.double()  # [M 3M]
    b = hf.h[0].attn.c_attn.bias.double()
    head, i, dh = 2, 4, 16
    cols = slice(head * dh, (head + 1) * dh)
    w_q, w_k = w[:, :64][:, cols], w[:, 64:128][:, cols]
    b_q, b_k = b[:64][cols], b[64:128][cols]
    emb, pos = hf.wte.weight.double()[ids[0]], hf.wpe.weight.double()[:5]
    q_side = {"embed": emb[i] @ w_q, "pos_embed": pos[i] @ w_q, "bias": b_q}
    k_side = {"embed": emb @ w_k, "pos_embed": pos @ w_k, "bias": b_k.expand(5, dh)}
    q, k, sc = qk_parts(model, dec, head)
    got = pair_scores(q, k, sc, 0, i)  # [C C key]
    for a, qa in q_side.items():
        for c, kc in k_side.items():
            want = kc @ qa / dh ** 0.5
            assert torch.allclose(got[dec.names.index(a), dec.names.index(c)], want, atol=1e-5), (a, c)
    assert torch.allclose(got.sum((0, 1)), dec.scores[0, head, i], atol=1e-4)


def test_bad_head_is_one_line(tiny_llama):
    for bad, msg in [("L9H0", "layer 9 is out of range"), ("L0H7", "head 7 is out of range"), ("head3", "not a head name")]:
        with pytest.raises(InputError, match=msg):
            check_model(QKConfig(head=bad), tiny_llama)


def test_run_round_trip_and_spec(tiny_llama, tmp_path):
    result = run(tiny_llama, QKConfig(head="L1H2", n_prompts=4, seq_len=5, top_k=4), progress=False)
    assert result.identity_error < 1e-4
    assert result.n_queries == 4 * 5
    assert len(result.key_side) == 4 and result.pairs.shape[1:] == (7, 7)
    # every head's measured sources (reading vectors) agree with this head's pair matrices
    mine = {s.component: s.value for s in result.head_sources["L1H2"].key}
    assert mine and all(abs(mine[r.component] - r.mean) < 1e-4 for r in result.key_side if r.component in mine)
    assert len(result.head_sources) == 8
    back = load_result(result.save(tmp_path / "run"))
    assert isinstance(back, QKResult) and back.key_side == result.key_side
    spec = get_spec("qk")
    assert [s.title for s in spec.sections(back)][:3] == [
        "QK attribution: the attended key", "Why here and not there: attended minus runner-up",
        "Composition from the weights"]
    k = spec.head_columns[0].values(back)
    assert k.shape == (2, 4) and torch.isnan(k[0]).all() and torch.isfinite(k[1]).all()


def test_prompt_and_query(tiny_llama):
    result = run(tiny_llama, QKConfig(head="L1H0", prompt="When Mary and John went out", query=3), progress=False)
    assert result.n_queries == 1 and result.attended_is_target_share is None
    with pytest.raises(InputError, match="--query 99"):
        run(tiny_llama, QKConfig(head="L1H0", prompt="Hi there", query=99), progress=False)


def _cli(*args):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def test_cli_runs_and_refuses_a_bad_head(tmp_path):
    proc = _cli("qk", "--model", "tiny-gpt2", "--head", "L1H3", "--n", "2", "--seq-len", "4", "--json",
                "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["head"] == "L1H3" and doc["key_side"] and doc["identity_error"] < 1e-4
    bad = _cli("qk", "--model", "tiny-gpt2", "--head", "L5H0")
    assert bad.returncode == 2 and "layer 5 is out of range" in bad.stderr


def test_mechanism_check_known_answer(tiny_llama):
    """Synthetic per-prompt data: L1H0 is the induction head, L0H1 the previous-token head, and
    L1H0's top key-side source is L0H1 on every prompt while other heads' is the embedding: the
    induction share is 1 and the random share 0; with the source swapped to L0H2 it drops to 0."""
    from workbench.analyses.qk.attribution import component_names
    from workbench.analyses.qk.mechanism import k_source_check

    def data(source: str):
        per = []
        for layer in range(2):
            c = len(component_names(tiny_llama, layer))
            key = torch.zeros(8, 4, c)
            key[:, :, 0] = 1.0  # the embedding leads everywhere ...
            if layer == 1:
                key[:, 0, component_names(tiny_llama, 1).index(source)] = 5.0  # ... but L1H0 reads `source`
            target, previous = torch.zeros(8, 4), torch.zeros(8, 4)
            if layer == 1:
                target[:, 0] = 0.9
            else:
                previous[:, 1] = 0.9
            per.append({"key": key, "query": key.clone(), "target": target, "previous": previous})
        return per

    check = k_source_check(tiny_llama, data("L0H1"), n_induction=1, n_previous=1, n_random=2)
    assert check["induction_heads"] == ["L1H0"] and check["previous_token_heads"] == ["L0H1"]
    assert check["induction"]["value"] == 1.0 and check["random"]["value"] == 0.0
    assert "L1H0" not in check["random_heads"]
    assert k_source_check(tiny_llama, data("L0H2"), n_induction=1, n_previous=1, n_random=2)["induction"]["value"] == 0.0
