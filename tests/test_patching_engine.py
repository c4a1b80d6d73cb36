"""The batched head-patching engine: suffix-only recomputation against full recomputation
and against the naive one-forward-per-patch loop, on random masks over odd shapes,
grouped-query attention (tiny-llama: 4 query heads, 2 KV heads) and right padding.

Tolerances (metric = a logit difference, |values| ~ 1): float32, suffix vs full
recomputation and vs the naive loop <= 1e-4 (the same arithmetic in other batch shapes);
bfloat16 <= 0.1 (one bf16 rounding per layer, in other batch shapes); identity patches
(source = clean z) reproduce the clean metric to float32 rounding.
"""
from __future__ import annotations

import os

import pytest
import torch

from workbench.cache import as_tokens, run_with_cache, run_with_patches
from workbench.errors import InputError
from workbench.patching import suffix
from workbench.patching.engine import (head_masks_all_positions, head_masks_per_position, masks_from_heads,
                                       run_head_patches)

CLEAN = ["When Mary and John went to the store, John gave a drink to", "Hello there",
         "The cat sat on the mat and then it jumped"]
CORRUPT = ["When Alice and Bob went to the shop, Tom gave a drink to", "Hi here",
           "A dog sat on the rug and then it slept"]


@pytest.fixture(scope="module")
def tiny_qwen2():
    """A random 2-layer Qwen2 (q/k/v biases), built from its transformers config."""
    from workbench.models import load_model

    return load_model("tiny-qwen2")


def metric(logits, idx):
    return logits[..., 100] - logits[..., 200]


def setup(model, dtype=None):
    tokens, corrupt = as_tokens(model, CLEAN), as_tokens(model, CORRUPT)
    assert tokens.input_ids.shape == corrupt.input_ids.shape
    L = model.shape.n_layers
    _, cache = run_with_cache(model, corrupt, [f"blocks.{l}.attn.hook_z" for l in range(L)])
    source = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(L)}
    return tokens, source


def random_masks(model, n_pos, n, seed, density=0.08):
    s = model.shape
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, s.n_layers, s.n_heads, n_pos, generator=g) < density
    masks[0] = False  # an empty configuration: the clean metric
    masks[1] = False
    masks[1, s.n_layers - 1, s.n_heads - 1, n_pos - 1] = True  # past the end of the padded prompts
    masks[2] = False
    masks[2, 0, 0, 0] = True
    return masks


def naive_loop(model, tokens, source, masks):
    """One forward per configuration through the caching layer (the TransformerLens-tutorial loop)."""
    rows = torch.arange(len(tokens))
    out = []
    for cfg in masks:
        patches = {}
        for l in cfg.any(dim=(1, 2)).nonzero().flatten().tolist():
            m = cfg[l].T
            patches[f"blocks.{l}.attn.hook_z"] = lambda z, m=m, src=source[l]: torch.where(m[None, :, :, None], src.to(z.dtype), z)
        logits = run_with_patches(model, tokens, patches)
        out.append(metric(logits[rows, tokens.last_positions], rows))
    return torch.stack(out)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox", "tiny_qwen2"])
def test_suffix_equals_full_and_naive(name, request):
    model = request.getfixturevalue(name)
    tokens, source = setup(model)
    n_pos = tokens.input_ids.shape[1]
    masks = torch.cat([random_masks(model, n_pos, 10, seed=1),
                       head_masks_per_position(model.shape.n_layers, model.shape.n_heads, n_pos)[::11]])
    fast = run_head_patches(model, tokens, source, masks, metric, max_batch=20)
    full = run_head_patches(model, tokens, source, masks, metric, max_batch=20, method="full")
    naive = naive_loop(model, tokens, source, masks)
    assert fast.metric.shape == (masks.shape[0], 3)
    assert (fast.metric - full.metric).abs().max() <= 1e-4
    assert (fast.metric - naive).abs().max() <= 1e-4
    assert (fast.clean_metric - full.clean_metric).abs().max() <= 1e-5
    assert torch.equal(fast.metric[0], fast.clean_metric)
    # a patch after a padded prompt's last token cannot change it
    short = tokens.last_positions < n_pos - 1
    torch.testing.assert_close(fast.metric[1, short], fast.clean_metric[short])
    assert fast.metric.std() > 1e-3  # the patches do something


def test_identity_patch_is_clean(tiny_llama):
    """Known answer: patching in the clean run's own z changes nothing."""
    tokens = as_tokens(tiny_llama, CLEAN)
    L = tiny_llama.shape.n_layers
    _, cache = run_with_cache(tiny_llama, tokens, [f"blocks.{l}.attn.hook_z" for l in range(L)])
    source = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(L)}
    masks = random_masks(tiny_llama, tokens.input_ids.shape[1], 12, seed=4, density=0.3)
    out = run_head_patches(tiny_llama, tokens, source, masks, metric)
    assert (out.metric - out.clean_metric[None]).abs().max() <= 1e-5


def test_mean_and_zero_sources_broadcast(tiny_gpt2):
    tokens, source = setup(tiny_gpt2)
    n_pos = tokens.input_ids.shape[1]
    masks = head_masks_all_positions(tiny_gpt2.shape.n_layers, tiny_gpt2.shape.n_heads, n_pos)
    for src in ({l: z.mean(0) for l, z in source.items()}, {l: torch.zeros(()) for l in source}):
        fast = run_head_patches(tiny_gpt2, tokens, src, masks, metric)
        full = run_head_patches(tiny_gpt2, tokens, src, masks, metric, method="full")
        assert (fast.metric - full.metric).abs().max() <= 1e-4


def test_chunking_does_not_change_answers(tiny_llama):
    tokens, source = setup(tiny_llama)
    masks = random_masks(tiny_llama, tokens.input_ids.shape[1], 8, seed=2, density=0.15)
    one = run_head_patches(tiny_llama, tokens, source, masks, metric, max_batch=3)
    big = run_head_patches(tiny_llama, tokens, source, masks, metric, max_batch=10_000)
    assert one.n_forwards > big.n_forwards
    assert (one.metric - big.metric).abs().max() <= 1e-5


def test_bfloat16_suffix_matches_full():
    from workbench.models import load_model

    model = load_model("tiny-llama", dtype="bfloat16")
    tokens, source = setup(model)
    masks = random_masks(model, tokens.input_ids.shape[1], 10, seed=3)
    fast = run_head_patches(model, tokens, source, masks, metric)
    full = run_head_patches(model, tokens, source, masks, metric, method="full")
    assert fast.metric.dtype == torch.float32  # logit differences are taken in float32 (metrics.logit_diff)
    assert (fast.metric - full.metric).abs().max() <= 0.1


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_suffix_with_triton_kernel_under_interpreter(name, request, monkeypatch):
    """Kernel (interpreter) vs reference vs naive loop, inside the engine (each architecture's
    W_O view: transposed Linear for Llama and NeoX, Conv1D for GPT-2)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import workbench.kernels.patching.patch_mix  # noqa: F401  (decorated now, under the interpreter)

    model = request.getfixturevalue(name)
    tokens, source = setup(model)
    masks = random_masks(model, tokens.input_ids.shape[1], 4, seed=5, density=0.1)
    ker = run_head_patches(model, tokens, source, masks, metric, kernel="triton")
    ref = run_head_patches(model, tokens, source, masks, metric, kernel="reference")
    naive = naive_loop(model, tokens, source, masks)
    assert (ker.metric - ref.metric).abs().max() <= 1e-4
    assert (ker.metric - naive).abs().max() <= 1e-4


def test_plan_and_work_share():
    masks = head_masks_per_position(4, 2, 5)
    has, first_layer, first_pos = suffix.first_patched(masks)
    assert has.all() and first_layer[0] == 0 and first_pos[4] == 4
    # head-by-position: mean of (L - l)/L x (T - p)/T = (L+1)/2L x (T+1)/2T
    assert abs(suffix.suffix_work(masks, 4, 5) / masks.shape[0] - (5 / 8) * (6 / 10)) < 1e-6
    chunks = suffix.plan_chunks(masks, per_chunk=3)
    assert sum(len(c[0]) for c in chunks) == masks.shape[0]
    assert all(c[1] == sorted(c[1]) and len(c[0]) <= 3 for c in chunks)


# ------------------------------------------------------------------ bad input
def test_bad_masks_shape(tiny_llama):
    tokens, source = setup(tiny_llama)
    wrong = torch.zeros(3, tiny_llama.shape.n_layers, tiny_llama.shape.n_heads + 1, tokens.input_ids.shape[1], dtype=torch.bool)
    with pytest.raises(InputError, match="patch masks have shape"):
        run_head_patches(tiny_llama, tokens, source, wrong, metric)
    with pytest.raises(InputError, match="must be boolean"):
        run_head_patches(tiny_llama, tokens, source, wrong[:, :, :-1].float(), metric)


def test_head_index_out_of_range(tiny_llama):
    with pytest.raises(InputError, match=r"head 7 \(L1H7\) is out of range; the model has heads 0..3"):
        masks_from_heads(tiny_llama, 5, [[(0, 1)], [(1, 7)]])
    with pytest.raises(InputError, match="layer 9 is out of range"):
        masks_from_heads(tiny_llama, 5, [[(9, 0)]])
    with pytest.raises(InputError, match="position 5 is out of range"):
        masks_from_heads(tiny_llama, 5, [[(0, 0, 5)]])
    m = masks_from_heads(tiny_llama, 5, [[(0, 1)], [(1, 2, 3), (0, 0, 0)]])
    assert m[0, 0, 1].all() and m[1].sum() == 2 and m[1, 1, 2, 3] and m[1, 0, 0, 0]


def test_memory_budget_too_small(tiny_llama):
    tokens, source = setup(tiny_llama)
    masks = head_masks_all_positions(tiny_llama.shape.n_layers, tiny_llama.shape.n_heads, tokens.input_ids.shape[1])
    with pytest.raises(InputError, match="max_batch=2 cannot hold one configuration of 3 prompts; raise it to at least 3"):
        run_head_patches(tiny_llama, tokens, source, masks, metric, max_batch=2)


def test_missing_or_misshapen_source(tiny_llama):
    tokens, source = setup(tiny_llama)
    masks = head_masks_all_positions(tiny_llama.shape.n_layers, tiny_llama.shape.n_heads, tokens.input_ids.shape[1])
    with pytest.raises(InputError, match=r"patch layers \[1\] but source_z has no entry"):
        run_head_patches(tiny_llama, tokens, {0: source[0]}, masks, metric)
    with pytest.raises(InputError, match="does not broadcast"):
        run_head_patches(tiny_llama, tokens, {l: z[:, :, :1, :3] for l, z in source.items()}, masks, metric)
    with pytest.raises(InputError, match="unknown patching method"):
        run_head_patches(tiny_llama, tokens, source, masks, metric, method="fast")


# ------------------------------------------------------------------ the embedded model
@pytest.mark.real_model
def test_smollm2_suffix_equals_full_and_transformer_lens_loop(smollm2):
    """GQA (9 query heads, 3 KV heads), IOI prompts of different lengths (padding)."""
    from workbench.datasets.ioi import ioi_prompts
    from workbench.patching.metrics import logit_diff

    ps = ioi_prompts(3, smollm2.tokenizer, seed=1)
    tokens, corrupt = ps.tokens(smollm2), ps.corrupt_tokens(smollm2)
    correct, wrong = ps.answer_ids(smollm2)
    ld = lambda lg, idx: logit_diff(lg, correct[idx], wrong[idx])  # noqa: E731
    L, H = smollm2.shape.n_layers, smollm2.shape.n_heads
    _, cache = run_with_cache(smollm2, corrupt, [f"blocks.{l}.attn.hook_z" for l in range(L)])
    source = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(L)}
    n_pos = tokens.input_ids.shape[1]
    masks = masks_from_heads(smollm2, n_pos, [[(0, 4)], [(14, 2, n_pos - 3)], [(29, 8)], [(10, 1), (20, 5, 6)]])
    fast = run_head_patches(smollm2, tokens, source, masks, ld)
    full = run_head_patches(smollm2, tokens, source, masks, ld, method="full")
    assert (fast.metric - full.metric).abs().max() <= 1e-3
    rows = torch.arange(len(tokens))
    tl_model = smollm2.with_backend("transformer_lens")
    for i in (1, 3):
        patches = {}
        for l in masks[i].any(dim=(1, 2)).nonzero().flatten().tolist():
            m = masks[i, l].T
            patches[f"blocks.{l}.attn.hook_z"] = lambda z, m=m, src=source[l]: torch.where(m[None, :, :, None], src, z)
        logits = run_with_patches(tl_model, tokens, patches)
        naive = ld(logits[rows, tokens.last_positions], rows)
        assert (fast.metric[i] - naive).abs().max() <= 1e-3
