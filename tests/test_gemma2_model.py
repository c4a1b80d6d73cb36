"""A whole Gemma-2 through the workbench, on ``tiny-gemma2`` (3 layers, 4 query heads over 2
key-value heads; layers 0 and 2 slide over 3 keys, scores capped at 2.0, logits at 5.0) with its
weights shaken so that the caps and the window change the answer. Known answers: a pristine
Hugging Face ``Gemma2ForCausalLM`` with the same weights and transformers' own eager attention
(its logits, its ``output_attentions``, the input of its ``o_proj`` and the outputs of its
post-norms), patched by a plain forward pre-hook on ``o_proj``. Tolerance 1e-5 (float32)."""
from __future__ import annotations

import copy

import pytest
import torch

from workbench.cache import as_tokens, run_with_cache, run_with_patches
from workbench.patching.engine import head_masks_per_position, run_head_patches

CLEAN = ["When Mary and John went to the store, John gave a drink to", "Hello there",
         "The cat sat on the mat and then it jumped"]
CORRUPT = ["When Alice and Bob went to the shop, Tom gave a drink to", "Hi here",
           "A dog sat on the rug and then it slept"]


def shaken_gemma2(signed_post_norm: bool = False):
    """tiny-gemma2 with random norm weights and larger q/k weights (scores well past the cap);
    ``signed_post_norm``: the post-attention norm's ``1 + w`` drawn from N(0, 1), so of both signs."""
    from workbench.models import load_model

    model = load_model("tiny-gemma2")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            if signed_post_norm and "post_attention_layernorm" in name:
                p.copy_(torch.randn(p.shape, generator=g) - 1.0)
            elif "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif "q_proj" in name or "k_proj" in name:
                p.mul_(12.0)
            elif "embed" in name:
                p.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def gemma():
    return shaken_gemma2()


def pristine(model, **changes):
    """A plain Hugging Face Gemma-2 with the workbench model's weights, transformers' eager attention."""
    from transformers import Gemma2ForCausalLM

    cfg = copy.deepcopy(model.hf.config)
    for k, v in changes.items():
        setattr(cfg, k, v)
    ref = Gemma2ForCausalLM(cfg).eval()
    ref.set_attn_implementation("eager")
    ref.load_state_dict(model.hf.state_dict())
    return ref


def hf_logits(ref, tokens, **kwargs):
    with torch.no_grad():
        return ref(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, **kwargs)


def test_whole_model_logits_equal_hugging_face_with_and_without_padding(gemma):
    ref = pristine(gemma)
    for prompts in (CLEAN[:1], CLEAN):  # one prompt (no padding), three of different lengths (right padding)
        tokens = as_tokens(gemma, prompts)
        keep = tokens.attention_mask.bool()
        logits = run_with_patches(gemma, tokens, {})
        want = hf_logits(ref, tokens).logits
        assert (logits - want)[keep].abs().max() <= 1e-5
        assert tokens.input_ids.shape[1] > 3 and want.abs().max() > 1.0
    assert not tokens.attention_mask.all()  # the second pass had padding
    # the cap, the window and the final cap each change this model's answer
    for change in ({"attn_logit_softcapping": None}, {"sliding_window": 64}, {"final_logit_softcapping": None}):
        other = hf_logits(pristine(gemma, **change), tokens).logits
        assert (other - want)[keep].abs().max() > 1e-2, change


def test_hook_points_carry_what_hugging_face_computes(gemma):
    ref = pristine(gemma)
    tokens = as_tokens(gemma, CLEAN)
    keep = tokens.attention_mask.bool()
    names = [f"blocks.{l}.{n}" for l in range(3) for n in (
        "attn.hook_q", "attn.hook_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_resid_pre",
        "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")]
    _, cache = run_with_cache(gemma, tokens, names)
    seen = {}
    handles = []
    for l, layer in enumerate(ref.model.layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(("z", l), a[0])))
        for part in ("post_attention_layernorm", "post_feedforward_layernorm"):
            handles.append(getattr(layer, part).register_forward_hook(
                lambda m, i, o, key=(part, l): seen.__setitem__(key, o)))
    out = hf_logits(ref, tokens, output_attentions=True)
    for h in handles:
        h.remove()
    scale = gemma.hf.config.query_pre_attn_scalar ** -0.5
    for l in range(3):
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]
        assert (pattern - out.attentions[l]).abs().max() <= 1e-5
        z = cache[f"blocks.{l}.attn.hook_z"]
        assert (z.flatten(-2) - seen[("z", l)])[keep].abs().max() <= 1e-5
        # the scores: capped q.k, masked (causal, padding and layer 0's window of 3 keys)
        q, k = cache[f"blocks.{l}.attn.hook_q"], cache[f"blocks.{l}.attn.hook_k"].repeat_interleave(2, dim=2)
        capped = 2.0 * torch.tanh(torch.einsum("bqhd,bkhd->bhqk", q, k) * scale / 2.0)
        scores = cache[f"blocks.{l}.attn.hook_attn_scores"]
        t = scores.shape[-1]
        i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
        seen_keys = (j <= i) & ((j > i - 3) if l != 1 else True) & keep[:, None, None, :]
        assert (scores - capped)[seen_keys.expand_as(scores)].abs().max() <= 1e-5
        assert (scores[~seen_keys.expand_as(scores)] < -1e30).all() and capped.abs().max() > 1.9
        assert (cache[f"blocks.{l}.hook_attn_out"] - seen[("post_attention_layernorm", l)]).abs().max() <= 1e-5
        assert (cache[f"blocks.{l}.hook_mlp_out"] - seen[("post_feedforward_layernorm", l)]).abs().max() <= 1e-5
        mid = cache[f"blocks.{l}.hook_resid_pre"] + cache[f"blocks.{l}.hook_attn_out"]
        assert (mid - cache[f"blocks.{l}.hook_resid_mid"]).abs().max() <= 1e-5
        post = mid + cache[f"blocks.{l}.hook_mlp_out"]
        assert (post - cache[f"blocks.{l}.hook_resid_post"]).abs().max() <= 1e-5


def o_proj_patches(ref, cfg_masks, source):
    """Forward pre-hooks on the pristine model's o_proj replacing the masked heads' z [b pos H*D]."""
    handles = []
    for l, layer in enumerate(ref.model.layers):
        m = cfg_masks[l].T  # [pos head]
        if not m.any():
            continue

        def pre(mod, args, m=m, src=source[l]):
            z = args[0].unflatten(-1, (4, 16))
            return (torch.where(m[None, :, :, None], src, z).flatten(-2),)

        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
    return handles


def naive_pristine_loop(ref, tokens, source, masks):
    rows = torch.arange(len(tokens))
    out = []
    for cfg in masks:
        handles = o_proj_patches(ref, cfg, source)
        try:
            logits = hf_logits(ref, tokens).logits
        finally:
            for h in handles:
                h.remove()
        last = logits[rows, tokens.last_positions]
        out.append(last[:, 100] - last[:, 200])
    return torch.stack(out)


def test_head_patching_equals_a_pre_hook_on_o_proj(gemma):
    ref = pristine(gemma)
    tokens, corrupt = as_tokens(gemma, CLEAN), as_tokens(gemma, CORRUPT)
    assert tokens.input_ids.shape == corrupt.input_ids.shape
    _, cache = run_with_cache(gemma, corrupt, [f"blocks.{l}.attn.hook_z" for l in range(3)])
    source = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(3)}
    n_pos = tokens.input_ids.shape[1]
    # one head at every position, through the caching layer
    one = torch.zeros(1, 3, 4, n_pos, dtype=torch.bool)
    one[0, 1, 2] = True
    logits = run_with_patches(gemma, tokens, {"blocks.1.attn.hook_z": lambda z: torch.where(
        one[0, 1].T[None, :, :, None], source[1], z)})
    rows = torch.arange(3)
    want = naive_pristine_loop(ref, tokens, source, one)[0]
    got = logits[rows, tokens.last_positions]
    assert (got[:, 100] - got[:, 200] - want).abs().max() <= 1e-5
    # the batched engine (suffix and full) against the naive loop
    g = torch.Generator().manual_seed(1)
    masks = torch.cat([torch.rand(10, 3, 4, n_pos, generator=g) < 0.1,
                       head_masks_per_position(3, 4, n_pos)[::7]])
    masks[0] = False

    def metric(last, idx):
        return last[..., 100] - last[..., 200]

    fast = run_head_patches(gemma, tokens, source, masks, metric, max_batch=20)
    full = run_head_patches(gemma, tokens, source, masks, metric, max_batch=20, method="full")
    naive = naive_pristine_loop(ref, tokens, source, masks)
    assert (fast.metric - naive).abs().max() <= 1e-5
    assert (full.metric - naive).abs().max() <= 1e-5
    assert torch.equal(fast.metric[0], fast.clean_metric)
    assert fast.metric.std() > 1e-2  # the patches do something

def test_three_backends_cache_the_same_values(gemma):
    """The TransformerLens bridge and nnsight read the same places (the bridge's post-rotary
    q and k, its hook_attn_out after the post-attention norm) as the plain hooks."""
    tokens = as_tokens(gemma, CLEAN[:2])
    names = [f"blocks.{l}.{n}" for l in range(3) for n in ("attn.hook_q", "attn.hook_k", "attn.hook_attn_scores",
                                                          "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
                                                          "hook_mlp_out", "hook_resid_post")]
    logits, cache = run_with_cache(gemma, tokens, names)
    for backend in ("transformer_lens", "nnsight"):
        other = gemma.with_backend(backend)
        logits2, cache2 = run_with_cache(other, tokens, names)
        assert (logits2 - logits).abs().max() <= 1e-5, backend
        for name in names:
            assert (cache2[name] - cache[name]).abs().max() <= 1e-5, (backend, name)


def test_a_skipped_mask_gets_the_window():
    """Where transformers passes no mask (a plain causal one would do), a sliding layer's keys
    are cut to the window: query i of the last 2 (of 6 keys) sees keys i-2..i."""
    from workbench.hooks import _causal_allowed

    allowed = _causal_allowed(2, 6, torch.device("cpu"), window=3)[0, 0]
    assert allowed.tolist() == [[False, False, True, True, True, False], [False, False, False, True, True, True]]
    assert _causal_allowed(3, 3, torch.device("cpu"))[0, 0].tolist() == [[True, False, False], [True, True, False],
                                                                          [True, True, True]]
