"""The caching layer: one naming scheme on every backend, equal to Hugging Face's logits."""
from __future__ import annotations

import pytest
import torch

from workbench.cache import run_with_cache, run_with_patches
from workbench.errors import HookNameError, InputError

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "Hi"]
NAMES = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
         "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid",
         "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]


def _hf_logits(model, prompts):
    ids, mask = model.to_tokens(prompts)
    with torch.no_grad():
        return model.hf(input_ids=ids, attention_mask=mask).logits


# TransformerLens's NeoX bridge has no post-rotary q/k hooks: that pair has its own test below
CASES = [(which, backend) for which in ("tiny_llama", "tiny_gpt2", "tiny_neox")
         for backend in ("hf", "transformer_lens", "nnsight") if (which, backend) != ("tiny_neox", "transformer_lens")]


@pytest.mark.parametrize(("which", "backend"), CASES)
def test_backends_agree_on_names_and_values(request, which, backend):
    model = request.getfixturevalue(which)
    ref_logits, ref = run_with_cache(model, PROMPTS, NAMES)
    m = model.with_backend(backend)
    logits, cache = run_with_cache(m, PROMPTS, NAMES)
    assert set(cache) == set(NAMES)
    assert (logits - ref_logits).abs().max() < 1e-5
    for name in NAMES:
        assert cache[name].shape == ref[name].shape, name
        assert (cache[name] - ref[name]).abs().max() < 1e-5, name


def test_neox_on_transformer_lens_agrees_where_the_bridge_has_the_hook(tiny_neox):
    """GPT-NeoX through the TransformerLens bridge: every canonical name it has matches the hf
    backend (``hook_resid_mid`` is the parallel MLP's input stream on both); the post-rotary
    q and k, which the bridge does not expose, are refused in one line."""
    names = [n for n in NAMES if not n.endswith(("attn.hook_q", "attn.hook_k"))]
    ref_logits, ref = run_with_cache(tiny_neox, PROMPTS, names)
    m = tiny_neox.with_backend("transformer_lens")
    logits, cache = run_with_cache(m, PROMPTS, names)
    assert (logits - ref_logits).abs().max() < 1e-5
    for name in names:
        assert cache[name].shape == ref[name].shape, name
        assert (cache[name] - ref[name]).abs().max() < 1e-5, name
    _, both = run_with_cache(tiny_neox, PROMPTS, ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid"])
    assert torch.equal(both["blocks.1.hook_resid_mid"], both["blocks.1.hook_resid_pre"])
    with pytest.raises(HookNameError, match="'hf' or 'nnsight'") as err:
        run_with_cache(m, PROMPTS, ["blocks.0.attn.hook_q"])
    assert "\n" not in str(err.value)


def test_shapes_follow_the_naming_scheme(tiny_llama):
    s = tiny_llama.shape
    _, cache = run_with_cache(tiny_llama, PROMPTS, NAMES)
    b, p = cache["hook_embed"].shape[:2]
    assert cache["blocks.0.attn.hook_pattern"].shape == (b, s.n_heads, p, p)
    assert cache["blocks.1.attn.hook_z"].shape == (b, p, s.n_heads, s.d_head)
    assert cache["blocks.0.attn.hook_k"].shape == (b, p, s.n_kv_heads, s.d_head)
    # attention rows are distributions over visible keys
    pat = cache["blocks.0.attn.hook_pattern"][0]
    assert torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-5)
    assert pat.triu(1).abs().max() == 0


def test_only_requested_names_are_cached(tiny_llama):
    _, cache = run_with_cache(tiny_llama, PROMPTS, ["blocks.0.attn.hook_pattern"])
    assert list(cache) == ["blocks.0.attn.hook_pattern"]


def test_batches_and_spill_equal_one_pass(tiny_llama, tmp_path):
    prompts = [f"Prompt number {i} is {'long ' * (i % 4)}here" for i in range(7)]
    names = ["blocks.1.attn.hook_z", "blocks.0.attn.hook_pattern"]
    full_logits, full = run_with_cache(tiny_llama, prompts, names)
    logits, batched = run_with_cache(tiny_llama, prompts, names, batch_size=3, progress=True)
    _, spilled = run_with_cache(tiny_llama, prompts, names, batch_size=2, spill_dir=tmp_path / "spill")
    assert len(list((tmp_path / "spill").glob("*.safetensors"))) == 4
    for name in names:
        assert torch.allclose(batched[name], full[name], atol=1e-5)
        assert torch.allclose(spilled[name], full[name], atol=1e-5)
    assert torch.allclose(logits, full_logits, atol=1e-4)


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_patches_act_the_same_on_every_backend(tiny_llama, backend):
    m = tiny_llama.with_backend(backend)
    zero_head = lambda z: torch.cat([z[:, :, :1] * 0, z[:, :, 1:]], dim=2)  # noqa: E731
    patched = run_with_patches(m, PROMPTS, {"blocks.0.attn.hook_z": zero_head})
    ref = run_with_patches(tiny_llama, PROMPTS, {"blocks.0.attn.hook_z": zero_head})
    clean = run_with_patches(tiny_llama, PROMPTS, {})
    assert (patched - ref).abs().max() < 1e-5
    assert (patched - clean).abs().max() > 1e-4  # the patch did something


def test_tensor_patch_replaces_and_is_cached(tiny_llama):
    _, cache = run_with_cache(tiny_llama, PROMPTS, ["blocks.0.hook_attn_out"])
    value = torch.zeros_like(cache["blocks.0.hook_attn_out"])
    logits, after = run_with_patches(tiny_llama, PROMPTS, {"blocks.0.hook_attn_out": value}, names=["blocks.0.hook_attn_out"])
    assert after["blocks.0.hook_attn_out"].abs().max() == 0


def test_unknown_hook_name_lists_nearest(tiny_llama):
    with pytest.raises(HookNameError) as err:
        run_with_cache(tiny_llama, PROMPTS, ["blocks.0.attn.hook_patern"])
    msg = str(err.value)
    assert "blocks.0.attn.hook_pattern" in msg and "\n" not in msg


def test_empty_prompt_list_is_clear(tiny_llama):
    with pytest.raises(InputError, match="empty"):
        run_with_cache(tiny_llama, [], ["blocks.0.attn.hook_z"])
    with pytest.raises(InputError, match="empty"):
        run_with_cache(tiny_llama, ["  "], ["blocks.0.attn.hook_z"])


def test_wrong_patch_shape_is_clear(tiny_llama):
    with pytest.raises(InputError, match="does not fit"):
        run_with_patches(tiny_llama, PROMPTS, {"blocks.0.hook_attn_out": torch.zeros(3, 5)})


@pytest.mark.real_model
@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_backends_reproduce_hf_logits_on_embedded_model(smollm2, backend):
    """A pristine Hugging Face model (its own attention, no workbench hooks) is the reference."""
    from transformers import AutoModelForCausalLM

    from workbench.environment import cache_dir

    pristine = AutoModelForCausalLM.from_pretrained(cache_dir("models", "smollm2-135m"), dtype=torch.float32).eval()
    prompts = ["When Mary and John went to the store, John gave a drink to", "The capital of France is"]
    ids, mask = smollm2.to_tokens(prompts)
    with torch.no_grad():
        ref = pristine(input_ids=ids, attention_mask=mask).logits
    logits, _ = run_with_cache(smollm2.with_backend(backend), prompts, [])
    real = mask.bool()
    diff = (logits[real] - ref[real]).abs().max().item()
    print(f"{backend}: max |logit diff| vs HF = {diff:.2e}")
    assert diff < 1e-4


def test_cleanup_removes_the_spill_folder_the_cache_made_and_only_that(tiny_llama, tmp_path):
    """``spill_dir=True`` makes a temporary folder that ``cleanup`` deletes; a folder the user
    named is theirs and stays, shards and all."""
    prompts = ["When Mary and John went to the store, John gave a drink to"] * 4
    names = ["blocks.0.attn.hook_z"]
    _, own = run_with_cache(tiny_llama, prompts, names, batch_size=2, spill_dir=True)
    assert own.folder is not None and own.folder.is_dir() and any(own.folder.glob("*.safetensors"))
    own.cleanup()
    assert not own.folder.exists()
    _, theirs = run_with_cache(tiny_llama, prompts, names, batch_size=2, spill_dir=tmp_path / "mine")
    theirs.cleanup()
    assert len(list((tmp_path / "mine").glob("*.safetensors"))) == 2
