"""Models split over devices with accelerate's device map.

This machine has one CPU and no GPU, and torch has no second CPU device, so the best split
accelerate allows here is: layer 0 (and the embeddings, norm, head) on ``cpu``, layer 1
offloaded to ``disk`` — its parameters sit on the ``meta`` device and accelerate's hooks load
them (and move its inputs) to the execution device at each forward. What the tests prove:
the workbench's hook points inside a dispatched, offloaded layer fire and can be written,
and caching, patching, generation and the ablation sweep give exactly the single-device
numbers. What they cannot prove here: tensors actually crossing between two devices (the
GPU device check, ``benchmarks/device_map_check.py``, does that with cuda:0 + cpu)."""
from __future__ import annotations

import pytest
import torch

from workbench.cache import run_with_cache, run_with_patches
from workbench.errors import InputError
from workbench.models import load_model, parse_device_map

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.norm": "cpu", "lm_head": "cpu"}
PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "Then, Anna and Bob had a long argument. Afterwards Bob said to"]
NAMES = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return load_model("tiny-llama", device_map=SPLIT, offload_dir=tmp_path_factory.mktemp("offload"))


def test_split_is_really_offloaded(split):
    devices = {n: p.device.type for n, p in split.hf.named_parameters()}
    assert all(d == "meta" for n, d in devices.items() if n.startswith("model.layers.1."))
    assert all(d == "cpu" for n, d in devices.items() if n.startswith("model.layers.0."))
    assert split.device == torch.device("cpu") and split.device_map == SPLIT


def test_cache_and_patches_match_one_device(split, tiny_llama):
    l0, c0 = run_with_cache(tiny_llama, PROMPTS, NAMES)
    l1, c1 = run_with_cache(split, PROMPTS, NAMES)
    assert torch.equal(l0, l1)
    for n in NAMES:
        assert torch.equal(c0[n], c1[n]), n
    # a patch inside the offloaded layer (head 2's z zeroed) and one from a cached value
    patches = {"blocks.1.attn.hook_z": lambda z: torch.cat([z[:, :, :2], z[:, :, 2:3] * 0, z[:, :, 3:]], dim=2),
               "blocks.0.hook_resid_pre": c0["blocks.0.hook_resid_pre"] * 0.5}
    p0, p1 = run_with_patches(tiny_llama, PROMPTS, patches), run_with_patches(split, PROMPTS, patches)
    assert torch.equal(p0, p1) and not torch.equal(p0, l0)


def test_generation_matches_one_device(split, tiny_llama):
    from workbench.generation import greedy_generate

    g0 = greedy_generate(tiny_llama, PROMPTS, max_new_tokens=6)
    g1 = greedy_generate(split, PROMPTS, max_new_tokens=6)
    assert torch.equal(g0.new_tokens, g1.new_tokens)
    patch = {"blocks.1.attn.hook_z": lambda z: z * 0}
    assert torch.equal(greedy_generate(tiny_llama, PROMPTS, 4, patches=patch).new_tokens,
                       greedy_generate(split, PROMPTS, 4, patches=patch).new_tokens)


def test_ablation_on_the_split_model(split, tiny_llama):
    """The ablation sweep runs as full hooked forwards on a split model (the suffix engine
    reads weights outside the forward, which an offloaded layer does not have): the same
    effects as the one-device (suffix) sweep to float error."""
    from workbench.analyses.ablation.analysis import AblationConfig, run

    config = AblationConfig(n_prompts=4, batch_size=16)
    on_split = run(split, config, progress=False)
    one = run(tiny_llama, config, progress=False)
    assert on_split.meta["parallel"]["sweep"] == "full"
    torch.testing.assert_close(on_split.effect, one.effect, atol=1e-5, rtol=1e-4)


def test_auto_map_on_cpu():
    m = load_model("tiny-llama", device_map="auto")
    assert set(m.device_map.values()) <= {"cpu", 0, "cuda:0"} and m.device.type in ("cpu", "cuda")
    logits, _ = run_with_cache(m, PROMPTS[:1], [])
    assert torch.isfinite(logits).all()


def test_map_parsing_and_errors():
    assert parse_device_map("model.layers.0=cpu, lm_head=disk") == {"model.layers.0": "cpu", "lm_head": "disk"}
    assert parse_device_map('{"model": "cpu", "lm_head": "cpu"}') == {"model": "cpu", "lm_head": "cpu"}
    assert parse_device_map("auto") == "auto"
    with pytest.raises(InputError, match="not valid JSON"):
        parse_device_map("{model: cpu")
    with pytest.raises(InputError, match="unknown --device-map"):
        parse_device_map("everywhere")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            parse_device_map("model=cuda:0")
    with pytest.raises(InputError, match="not a module of this model"):
        load_model("tiny-llama", device_map={"model.layers.7": "cpu", "lm_head": "cpu"})


def test_cli_bad_device_map_is_one_line(monkeypatch, capsys):
    import sys

    from workbench.cli import main

    monkeypatch.setattr(sys, "argv", ["workbench", "ablation", "--model", "tiny-llama", "--device-map", "everywhere"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown --device-map 'everywhere'" in err and "Traceback" not in err
