"""Known answers for QK attribution and composition scores on a hand-built two-layer Llama:
L0H0 is a previous-token head (its query and key read a constant direction through the fast
rotary pairs, set so the score peaks one position back) whose OV circuit copies the token
identity (dims T) into a "previous token" subspace (dims S); L1H0 is an induction head whose
query reads the current token (T) and whose key reads S, both through the slowest rotary
pairs. Every other head has small random weights; MLPs write nothing.

Known answers: on repeated random sequences, L1H0 attends to the induction target; QK
attribution puts L0H0 first among the key-side sources of that score; the (L0H0 -> L1H0)
K-composition score is the largest in the model. With L0H0's output removed (W_O = 0), both
checks fail."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.analyses.qk.analysis import QKConfig, run
from workbench.analyses.qk.composition import composition_scores
from workbench.hooks import install_hook_points
from workbench.models import Model, shape_of

D, HEADS, DH, VOCAB = 48, 4, 16, 8
CONST, S0 = 8, 16  # residual dims: the constant direction, the start of the previous-token subspace
SLOW = [4, 5, 6, 7, 12, 13, 14, 15]  # head dims in the slowest rotary pairs (theta 1e6): one per token
THETA = 1e6
PREV, IND = (0, 0), (1, 0)


class _Tok:
    eos_token_id = None
    bos_token_id = None
    pad_token_id = 0
    all_special_ids: list[int] = []

    def decode(self, ids):
        return " ".join(f"t{int(i)}" for i in ids)


def planted_model(planted: bool = True, seed: int = 0) -> Model:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=8, num_hidden_layers=2,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=DH, rope_theta=THETA,
                      max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-6)
    hf = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=gen) if "proj" in name and "mlp" not in name else 0 * p)
        for layer in hf.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        hf.model.norm.weight.fill_(1.0)
        emb = hf.model.embed_tokens.weight
        emb[:, :VOCAB] = torch.eye(VOCAB)
        emb[:, CONST] = 1.0
        inv_freq = THETA ** (-torch.arange(0, DH, 2).double() / DH)
        a0, a1 = (hf.model.layers[l].self_attn for l in (0, 1))
        for attn in (a0, a1):  # the planted heads' rows start clean
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.weight[:DH] = 0
            attn.o_proj.weight[:, :DH] = 0
        for k in (0, 1):  # previous-token: q = k rotated back one position, in the fast pairs
            w = float(inv_freq[k])
            a0.k_proj.weight[k, CONST] = 3.0
            a0.q_proj.weight[k, CONST] = 3.0 * math.cos(w)
            a0.q_proj.weight[k + DH // 2, CONST] = -3.0 * math.sin(w)
        for t in range(VOCAB):
            a0.v_proj.weight[t, t] = 1.0
            if planted:
                a0.o_proj.weight[S0 + t, t] = 1.0
            a1.q_proj.weight[SLOW[t], t] = 3.0
            a1.k_proj.weight[SLOW[t], S0 + t] = 3.0
    for p in hf.parameters():
        p.requires_grad_(False)
    arch, points = install_hook_points(hf)
    return Model(name="planted-induction", hf=hf, tokenizer=_Tok(), shape=shape_of(hf), arch=arch, hook_points=points)


def repeated(n: int = 8, seq_len: int = 6, seed: int = 0) -> torch.Tensor:
    """[n 1+2*seq_len] BOS (the last token id) + seq + seq, ``seq`` distinct among the other ids."""
    gen = torch.Generator().manual_seed(seed)
    seq = torch.stack([torch.randperm(VOCAB - 1, generator=gen)[:seq_len] for _ in range(n)])
    return torch.cat([torch.full((n, 1), VOCAB - 1), seq, seq], dim=1)


def attribution(model: Model):
    tokens = repeated()
    cfg = QKConfig(head="L1H0", task="induction", n_prompts=8, seq_len=6, top_k=5)
    return run(model, cfg, progress=False, tokens=tokens)


def k_side_first(result) -> str:
    return result.key_side[0].component


def strongest_k_writer(model: Model) -> tuple[int, int]:
    scores, _ = composition_scores(model)
    k = scores["K"].nan_to_num(float("-inf"))
    la, ha, lb, hb = (int(x) for x in torch.unravel_index(k.flatten().argmax(), k.shape))
    return (la, ha), (lb, hb)


@pytest.fixture(scope="module")
def planted():
    return planted_model(True)


def test_the_planted_heads_do_their_jobs(planted):
    result = attribution(planted)
    assert result.attended_is_target_share == pytest.approx(1.0)


def test_qk_attribution_puts_the_previous_token_head_first_on_the_key_side(planted):
    result = attribution(planted)
    assert k_side_first(result) == "L0H0"
    assert result.key_side[0].mean > 5 * abs(result.key_side[1].mean)


def test_the_planted_pair_has_the_largest_k_composition(planted):
    assert strongest_k_writer(planted) == (PREV, IND)


def test_both_checks_fail_without_the_planted_head():
    removed = planted_model(False)
    assert k_side_first(attribution(removed)) != "L0H0"
    assert strongest_k_writer(removed) != (PREV, IND)
