"""Batched greedy decoding with a KV cache: same tokens as Hugging Face's generate, the
hook points fire at every step (patterns readable, z patchable), one prefill serves
many configurations."""
from __future__ import annotations

import pytest
import torch

from workbench.cache import run_with_cache, run_with_patches
from workbench.errors import InputError
from workbench.generation import decode, greedy_generate, last_token_logits, left_pad, prefill
from workbench.heads import mask_patches

PROMPTS = ["The capital of France is a city", "When Mary and John went to the store, John gave a drink to"]


def test_left_pad_lines_up_last_tokens():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(InputError):
        left_pad([], 0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_batched_greedy_matches_hf_generate(fixture, request):
    model = request.getfixturevalue(fixture)
    gen = greedy_generate(model, PROMPTS, max_new_tokens=6)
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([model.tokenizer.encode(p, add_special_tokens=False)])
        ref = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                pad_token_id=model.tokenizer.pad_token_id)
        assert gen.new_tokens[i].tolist() == ref[0, ids.shape[1]:].tolist()


def test_patterns_read_during_decoding_match_a_full_forward(tiny_llama):
    model = tiny_llama
    ids = model.tokenizer.encode(PROMPTS[1], add_special_tokens=False)
    seen = []
    gen = greedy_generate(model, [ids], max_new_tokens=3, read=["blocks.1.attn.hook_pattern"],
                          on_step=lambda step, read, tok, act: seen.append(read["blocks.1.attn.hook_pattern"]))
    assert len(seen) == 3
    full = torch.tensor([ids + gen.new_tokens[0].tolist()])
    _, cache = run_with_cache(model, full, ["blocks.1.attn.hook_pattern"])
    pat = cache["blocks.1.attn.hook_pattern"][0]  # [head q k]
    for step, p in enumerate(seen):
        q = len(ids) - 1 + step
        assert p.shape == (1, model.shape.n_heads, q + 1)
        torch.testing.assert_close(p[0], pat[:, q, : q + 1], atol=1e-5, rtol=1e-4)


def test_z_patch_fires_at_every_cached_step(tiny_llama):
    """Zeroing every head of layer 0 through hook_z during cached decoding gives the same
    next-token logits as an uncached forward with the same patch."""
    model = tiny_llama
    ids = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    zero = {"blocks.0.attn.hook_z": lambda z: torch.zeros_like(z)}
    gen = greedy_generate(model, [ids], max_new_tokens=3, patches=zero, prefill_patches=zero)
    seq = ids + gen.new_tokens[0, :2].tolist()
    logits = run_with_patches(model, torch.tensor([seq]), zero)
    assert int(logits[0, -1].argmax()) == int(gen.new_tokens[0, 2])


def test_one_prefill_serves_many_configurations(tiny_llama):
    model = tiny_llama
    state = prefill(model, PROMPTS)
    configs = torch.zeros(2, model.shape.n_layers, model.shape.n_heads, dtype=torch.bool)
    configs[1, 0, :] = True  # configuration 1 masks all of layer 0
    both = decode(model, state, 4, patches=mask_patches(configs, "zero"), repeat=2)
    alone = decode(model, state, 4, patches=mask_patches(configs[1:], "zero"))
    plain = decode(model, state, 4)
    assert both.new_tokens[0::2].tolist() == plain.new_tokens.tolist()
    assert both.new_tokens[1::2].tolist() == alone.new_tokens.tolist()


def test_query_masking_is_uniform_attention(tiny_llama):
    """Wu et al.'s masking (query zeroed) makes the head attend uniformly to visible keys."""
    model = tiny_llama
    state = prefill(model, PROMPTS)
    configs = torch.zeros(1, model.shape.n_layers, model.shape.n_heads, dtype=torch.bool)
    configs[0, 1, 2] = True
    seen = []
    decode(model, state, 1, patches=mask_patches(configs, "query"), read=["blocks.1.attn.hook_pattern"],
           on_step=lambda s, r, t, a: seen.append(r["blocks.1.attn.hook_pattern"]))
    p = seen[0]  # [rows head key]
    for row in range(2):
        visible = state.attention_mask[row].bool()
        torch.testing.assert_close(p[row, 2, visible], torch.full((int(visible.sum()),), 1 / int(visible.sum())))


def test_last_token_logits_left_padded_match_unpadded(tiny_llama):
    model = tiny_llama
    lists = [model.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    ids, mask = left_pad(lists, model.tokenizer.pad_token_id)
    logits, _ = last_token_logits(model, ids, mask)
    for i, l in enumerate(lists):
        ref = run_with_patches(model, torch.tensor([l]), {})
        torch.testing.assert_close(logits[i], ref[0, -1], atol=1e-4, rtol=1e-4)


def test_stop_ids_end_rows(tiny_llama):
    model = tiny_llama
    plain = greedy_generate(model, PROMPTS[:1], max_new_tokens=5)
    first = int(plain.new_tokens[0, 0])
    stopped = greedy_generate(model, PROMPTS[:1], max_new_tokens=5, stop_ids=[first])
    assert int(stopped.n_tokens[0]) == 1 and stopped.new_tokens.shape[1] == 1
