"""No hook, no cost: the workbench's attention runs PyTorch's fused scaled-dot-product path
unless something reads or writes that layer's scores or pattern, and gives the same numbers
as the eager path (today's behaviour) on every backend, for caching, patching and generation."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import workbench.hooks as hooks
from workbench.cache import run_with_cache, run_with_patches
from workbench.generation import greedy_generate

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "Hi there"]
NAMES = ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.attn.hook_q", "blocks.1.hook_attn_out",
         "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
CASES = [(which, backend) for which in ("tiny_llama", "tiny_gpt2", "tiny_neox")
         for backend in ("hf", "transformer_lens", "nnsight")]


@contextmanager
def eager_everywhere(model):
    """Today's behaviour: a do-nothing hook on every layer's pattern makes every layer eager."""
    points = [model.hook_points[f"blocks.{l}.attn.hook_pattern"] for l in range(model.shape.n_layers)]
    handles = [p.register_forward_hook(lambda m, i, o: None) for p in points]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.fixture
def paths(monkeypatch):
    """Which attention path each layer call took, in order."""
    taken: list[str] = []
    eager, sdpa = hooks._eager, hooks._sdpa
    monkeypatch.setattr(hooks, "_eager", lambda *a, **k: (taken.append("eager"), eager(*a, **k))[1])
    monkeypatch.setattr(hooks, "_sdpa", lambda *a, **k: (taken.append("sdpa"), sdpa(*a, **k))[1])
    return taken


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) < tol


@pytest.mark.parametrize(("which", "backend"), CASES)
def test_caching_equals_the_eager_path(request, which, backend):
    model = request.getfixturevalue(which)
    names = [n for n in NAMES if not (backend == "transformer_lens" and which == "tiny_neox" and n.endswith("hook_q"))]
    with eager_everywhere(model):
        ref_logits, ref = run_with_cache(model, PROMPTS, names)
    logits, cache = run_with_cache(model.with_backend(backend), PROMPTS, names)
    assert _close(logits, ref_logits)
    for name in names:
        assert _close(cache[name], ref[name]), name


@pytest.mark.parametrize(("which", "backend"), CASES)
def test_patching_equals_the_eager_path(request, which, backend):
    model = request.getfixturevalue(which)
    zero_head = lambda z: torch.cat([z[:, :, :1] * 0, z[:, :, 1:]], dim=2)  # noqa: E731
    patches = {"blocks.0.attn.hook_z": zero_head}
    with eager_everywhere(model):
        ref = run_with_patches(model, PROMPTS, patches)
    assert _close(run_with_patches(model.with_backend(backend), PROMPTS, patches), ref)


@pytest.mark.parametrize("backend", ["hf", "nnsight"])
def test_only_the_layer_whose_pattern_is_read_runs_eager(tiny_llama, backend, paths):
    model = tiny_llama.with_backend(backend)
    run_with_cache(model, PROMPTS, ["blocks.0.attn.hook_z"])  # nnsight measures its execution order once
    paths.clear()
    run_with_cache(model, PROMPTS, ["blocks.1.hook_resid_post"])
    assert paths == ["sdpa", "sdpa"]
    paths.clear()
    _, cache = run_with_cache(model, PROMPTS, ["blocks.1.attn.hook_pattern"])
    assert paths == ["sdpa", "eager"]
    paths.clear()
    run_with_patches(model, PROMPTS, {"blocks.0.attn.hook_attn_scores": lambda s: s})
    assert paths == ["eager", "sdpa"]
    rows = cache["blocks.1.attn.hook_pattern"].sum(-1)
    assert _close(rows, torch.ones_like(rows))


def test_a_pattern_patch_still_acts(tiny_llama):
    """Writing the pattern (uniform attention) changes the output: the eager path ran with it."""
    uniform = lambda p: torch.tril(torch.ones_like(p)) / torch.tril(torch.ones_like(p)).sum(-1, keepdim=True)  # noqa: E731
    clean = run_with_patches(tiny_llama, PROMPTS, {})
    patched = run_with_patches(tiny_llama, PROMPTS, {"blocks.1.attn.hook_pattern": uniform})
    assert float((patched - clean).abs().max()) > 1e-4


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_generation_equals_the_eager_path(request, which, paths):
    """Left-padded prefill (a padding mask) and one-query decode steps (no mask)."""
    model = request.getfixturevalue(which)
    prompts = ["The cat sat on the", "One two three four five six"]
    with eager_everywhere(model):
        ref = greedy_generate(model, prompts, max_new_tokens=4)
    paths.clear()
    got = greedy_generate(model, prompts, max_new_tokens=4)
    assert set(paths) == {"sdpa"}
    assert torch.equal(got.new_tokens, ref.new_tokens)


def test_output_attentions_still_returns_patterns(tiny_llama):
    ids, mask = tiny_llama.to_tokens(PROMPTS)
    with torch.no_grad():
        out = tiny_llama.hf(input_ids=ids, attention_mask=mask, output_attentions=True)
    _, cache = run_with_cache(tiny_llama, PROMPTS, ["blocks.0.attn.hook_pattern"])
    assert out.attentions is not None and _close(out.attentions[0], cache["blocks.0.attn.hook_pattern"])


def test_unpadded_causal_batch_skips_the_mask(tiny_llama, monkeypatch):
    """No padding: the mask function hands the fused kernel no mask (its causal fast path),
    and the result equals the eager path, which builds the causal mask itself."""
    seen = []
    sdpa = hooks._sdpa
    monkeypatch.setattr(hooks, "_sdpa", lambda q, k, v, m, *a: (seen.append(m), sdpa(q, k, v, m, *a))[1])
    ids = torch.tensor([[1, 5, 9, 11, 3], [2, 4, 6, 8, 10]])
    logits, _ = run_with_cache(tiny_llama, ids, [])
    assert seen and all(m is None for m in seen)
    with eager_everywhere(tiny_llama):
        ref, _ = run_with_cache(tiny_llama, ids, [])
    assert _close(logits, ref)
