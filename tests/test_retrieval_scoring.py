"""Known answers for Wu et al.'s retrieval score: a hand-built copying model whose planted
head copies the needle scores exactly 1.0 and every other head near 0; ROUGE, head
scores over counted tests, KV-compression bookkeeping."""
from __future__ import annotations

import pytest
import torch

from workbench.analyses.retrieval.analysis import (RetrievalScorer, kv_compression_patches, kv_protected_groups, kv_share_kept,
                                      rouge1_recall, score_heads)
from workbench.generation import decode, prefill
from workbench.heads import head_set_mask, mask_patches, random_heads, top_heads

PLANTED = (1, 2)  # layer 1, query head 2 (KV head 1 in tiny-llama's grouped-query attention)
NEEDLE = list(range(1000, 1008))  # token ids of the needle's answer


@pytest.fixture(scope="module")
def copy_model():
    """tiny-llama rewired by hand: the needle tokens have orthonormal embeddings, every
    attention output and MLP is zero except head L1H2, whose value/output copy the
    attended token's embedding (x10) into the residual stream; logits read it back."""
    from workbench.models import load_model

    model = load_model("tiny-llama")
    hf = model.hf
    d, dh = model.shape.d_model, model.shape.d_head
    torch.manual_seed(0)
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        emb.normal_(0, 0.01)
        for i, t in enumerate(NEEDLE):
            emb[t].zero_()
            emb[t, i] = 1.0
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        attn = hf.model.layers[PLANTED[0]].self_attn
        kv = PLANTED[1] // (model.shape.n_heads // model.shape.n_kv_heads)
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[kv * dh:(kv + 1) * dh, :dh] = torch.eye(dh)
        attn.o_proj.weight[:dh, PLANTED[1] * dh:(PLANTED[1] + 1) * dh] = 10 * torch.eye(dh)
    return model


def _planted_pattern(start: int):
    """A patch that makes L1H2's newest query attend to needle token ``step`` at decode step ``step``."""
    calls = {"step": 0}

    def fn(p: torch.Tensor) -> torch.Tensor:
        p = p.clone()
        p[:, PLANTED[1], -1, :] = 0
        p[:, PLANTED[1], -1, start + calls["step"]] = 1
        calls["step"] += 1
        return p

    return fn


def test_planted_copy_head_scores_one_and_others_near_zero(copy_model):
    model = copy_model
    torch.manual_seed(1)
    hay = torch.randint(2000, 3000, (40,)).tolist()
    prompt = hay[:20] + NEEDLE + hay[20:] + [3001, 3002]
    start = 20
    state = prefill(model, [prompt])
    scorer = RetrievalScorer(state.input_ids, torch.tensor([[start, start + len(NEEDLE)]]), 2, model.shape.n_heads,
                             len(NEEDLE))
    gen = decode(model, state, len(NEEDLE), patches={"blocks.1.attn.hook_pattern": _planted_pattern(start)},
                 read=scorer.names(), on_step=scorer)
    assert gen.new_tokens[0].tolist() == NEEDLE  # the planted head really copies the needle
    scores = scorer.scores[0]
    assert scores[PLANTED] == pytest.approx(1.0)
    others = scores.clone()
    others[PLANTED] = 0
    assert float(others.max()) <= 0.25 and float(others.mean()) < 0.05


def test_scorer_counts_exactly_one_over_needle_length():
    """Synthetic patterns: the head whose argmax is on the matching needle token gets 1/len per step."""
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    scorer = RetrievalScorer(prompt, torch.tensor([[2, 5]]), n_layers=1, n_heads=2, max_steps=3)
    for step, tok in enumerate([7, 8, 11]):
        p = torch.zeros(1, 2, 6 + step)
        p[0, 0, 2 + step] = 1.0  # head 0 looks at the needle token of this step
        p[0, 1, 0] = 1.0         # head 1 looks at the first token
        scorer(step, {"blocks.0.attn.hook_pattern": p}, torch.tensor([tok]), torch.tensor([True]))
    # steps 0 and 1 copy 7 and 8 (hits); step 2 generates 11, not the 9 attended to
    assert scorer.scores[0, 0, 0] == pytest.approx(2 / 3)
    assert scorer.scores[0, 0, 1] == 0


def test_head_scores_average_only_counted_tests():
    per_test = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 1.0]]])
    counted = torch.tensor([True, True, False])
    assert score_heads(per_test, counted).tolist() == [[0.75, 0.25]]
    assert score_heads(per_test, torch.zeros(3, dtype=torch.bool)).tolist() == [[0.0, 0.0]]


def test_rouge1_recall_as_the_reference_scores_it():
    ref = "eat a sandwich and sit in Dolores Park on a sunny day"
    assert rouge1_recall(ref, "The best thing is to eat a sandwich and sit in Dolores Park on a sunny day.") == 1.0
    assert rouge1_recall(ref, "nothing relevant") == 0.0
    assert 0.4 < rouge1_recall(ref, "eat a sandwich in the park") < 0.6


def test_top_and_random_heads():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.0]])
    assert top_heads(scores, 2) == [(0, 1), (1, 0)]
    assert top_heads(scores, 4, min_score=0.1) == [(0, 1), (1, 0)]
    import random

    draw = random_heads(2, 2, 2, random.Random(0), exclude={(0, 1), (1, 0)})
    assert sorted(draw) == [(0, 0), (1, 1)]
    assert head_set_mask([(1, 1)], 2, 2).tolist() == [[False, False], [False, True]]


def test_mask_patches_touch_only_their_rows_and_heads():
    configs = torch.zeros(2, 1, 3, dtype=torch.bool)
    configs[1, 0, 2] = True
    fn = mask_patches(configs, "zero")["blocks.0.attn.hook_z"]
    z = torch.ones(4, 5, 3, 2)  # rows = 2 prompts x 2 configs (interleaved)
    out = fn(z)
    assert out[0::2].eq(1).all() and out[1::2, :, :2].eq(1).all() and out[1::2, :, 2].eq(0).all()


def test_kv_compression_hides_all_but_sinks_and_window():
    full = kv_protected_groups([(0, 0)], n_layers=1, n_heads=4, n_kv_heads=2)
    assert full.tolist() == [[True, False]]
    cfgs = full[None]
    fn = kv_compression_patches(cfgs, 1, 4, torch.tensor([2]), sink=2, window=3)["blocks.0.attn.hook_attn_scores"]
    scores = torch.zeros(1, 4, 1, 12)
    out = fn(scores)
    kept = out[0, :, 0] > torch.finfo(out.dtype).min / 2
    assert kept[:2].all()  # heads 0-1 share the protected KV head: full cache
    assert kept[2].nonzero().flatten().tolist() == [2, 3, 9, 10, 11]  # 2 sinks after 2 pads + window of 3
    # share kept: half the KV heads full, the other keeps 5 of 10 tokens
    assert kv_share_kept(full, torch.tensor([10]), 2, 3) == pytest.approx((10 + 5) / 20)


@pytest.mark.parametrize("mode", ["zero", "query"])
def test_masking_the_planted_head_breaks_retrieval_but_another_head_does_not(copy_model, mode):
    """The causal test on the hand-built model: one prefill, three decoding configurations."""
    model = copy_model
    torch.manual_seed(2)
    prompt = torch.randint(2000, 3000, (15,)).tolist() + NEEDLE + [3001, 3002]
    state = prefill(model, [prompt])
    configs = torch.zeros(3, 2, model.shape.n_heads, dtype=torch.bool)
    configs[1][PLANTED] = True          # the retrieval head
    configs[2][0, 1] = True             # some other head
    planted = _planted_pattern(15)
    masks = mask_patches(configs, mode)
    patches = dict(masks)
    name = "blocks.1.attn.hook_pattern"
    if mode == "query":  # hook_q runs before the pattern: the planted pattern must spare the masked row
        def pattern(p, inner=planted):
            out = inner(p)
            out[1::3, PLANTED[1]] = p[1::3, PLANTED[1]]
            return out
        patches[name] = pattern
    else:
        patches[name] = planted
    gen = decode(model, state, len(NEEDLE), patches=patches, repeat=3)
    assert gen.new_tokens[0].tolist() == NEEDLE       # nothing masked: copies the needle
    assert gen.new_tokens[2].tolist() == NEEDLE       # another head masked: still copies
    assert gen.new_tokens[1].tolist() != NEEDLE       # retrieval head masked: fails
