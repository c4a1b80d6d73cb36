"""Deterministic builds: the same seed gives the same weights (the same sha256) across two
builds on this machine; the build's settings are restored afterwards; a build that differs
from the published checksum is named in one line with both checksums."""
from __future__ import annotations

import json

import pytest
import torch

from workbench import artifacts


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_weights_sha256_known_answer():
    import hashlib

    t = torch.tensor([1.0, 2.0])
    want = hashlib.sha256(b"w|torch.float32|(2,)|" + t.numpy().tobytes()).hexdigest()
    assert artifacts.weights_sha256({"w": t}) == want
    assert artifacts.weights_sha256({"w": t}) != artifacts.weights_sha256({"w": t.double()})
    assert artifacts.weights_sha256({"w": t}) != artifacts.weights_sha256({"v": t})


def test_deterministic_build_restores_the_callers_settings():
    threads = torch.get_num_threads()
    before = torch.are_deterministic_algorithms_enabled()
    with artifacts.deterministic_build(3, threads=1):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
        first = torch.rand(3)
    with artifacts.deterministic_build(3, threads=1):
        assert torch.equal(torch.rand(3), first)  # seeded alike
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == before


def test_deterministic_build_restores_after_an_error():
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with artifacts.deterministic_build(0, threads=1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_difference_is_one_line_with_both_checksums(tmp_path, capsys):
    doc = tmp_path / "artifacts.json"
    doc.write_text(json.dumps({"artifacts": {"vlm/x": {"sha256": "a" * 64, "machine": "2-core CPU"}}}))
    assert artifacts.compare("vlm/x", "a" * 64, doc) == "published"
    assert artifacts.compare("vlm/y", "b" * 64, doc) == "unpublished"
    assert artifacts.difference_line("vlm/x", "a" * 64, doc) is None
    assert artifacts.check_published("vlm/x", "b" * 64, doc) == "differs"
    artifacts.check_published("vlm/x", "b" * 64, doc)  # said once per process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a" * 16 in err[0] and "b" * 16 in err[0] and "vlm/x" in err[0]
    entry = artifacts.provenance_entry("vlm/x", "b" * 64, doc)
    assert entry == {"key": "vlm/x", "sha256": "b" * 64, "build": "differs", "published_sha256": "a" * 64}


def _build_twice(lm, config):
    from workbench.analyses.vision_heads.vlm.train import build_vlm

    shas = []
    for _ in range(2):
        _, record = build_vlm(lm, config, progress=False, rebuild=True)
        shas.append(record["sha256"])
    return shas, record


def test_projector_build_is_deterministic_tiny(tiny_llama, private_cache):
    from workbench.analyses.vision_heads.vlm.train import ProjectorConfig, build_vlm

    config = ProjectorConfig(lm="tiny-llama", image_size=64, n_train=8, steps=3, batch_size=4)
    shas, record = _build_twice(tiny_llama, config)
    assert shas[0] == shas[1] and len(shas[0]) == 64
    assert record["threads"] == artifacts.BUILD_THREADS and record["deterministic"] is True
    weights = private_cache / "vlm" / config.key() / "projector.safetensors"
    assert artifacts.read_checksum(weights) == shas[0]
    _, cached = build_vlm(tiny_llama, config, progress=False)  # from the cache: the same checksum, recomputed
    assert cached["sha256"] == shas[0] and cached["artifact"] == config.artifact_key()
    other, _ = _build_twice(tiny_llama, ProjectorConfig(lm="tiny-llama", image_size=64, n_train=8, steps=3,
                                                        batch_size=4, seed=1))
    assert other[0] != shas[0]  # the checksum does see the seed


def test_tampered_cache_is_rebuilt(tiny_llama, private_cache):
    from safetensors.torch import load_file, save_file

    from workbench.analyses.vision_heads.vlm.train import ProjectorConfig, build_vlm

    config = ProjectorConfig(lm="tiny-llama", image_size=64, n_train=8, steps=2, batch_size=4)
    _, first = build_vlm(tiny_llama, config, progress=False)
    weights = private_cache / "vlm" / config.key() / "projector.safetensors"
    state = load_file(str(weights))
    state["bias"] = state["bias"] + 1
    save_file(state, str(weights))
    _, again = build_vlm(tiny_llama, config, progress=False)
    assert "train_seconds" in again and again["sha256"] == first["sha256"]  # rebuilt, to the same weights


@pytest.mark.real_model
def test_projector_build_is_deterministic_smollm2(smollm2, private_cache):
    """The real language model at a small build size (the full build takes about 11 minutes)."""
    from workbench.analyses.vision_heads.vlm.train import ProjectorConfig

    shas, _ = _build_twice(smollm2, ProjectorConfig(n_train=16, steps=4, batch_size=4))
    assert shas[0] == shas[1]


def test_icl_training_is_deterministic(private_cache):
    from workbench.analyses.icl.training import TrainSpec, cache_path, train

    spec = TrainSpec(d=2, n=4, heads=2, steps=20, batch=8, checkpoint_every=10)
    a, b = train(spec, progress=False, use_cache=False), train(spec, progress=False, use_cache=False)
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    saved = train(spec, progress=False)
    assert artifacts.read_checksum(cache_path(spec)) == saved.sha256 == a.sha256
    loaded = train(spec, progress=False)
    assert loaded.cached and loaded.sha256 == a.sha256
    assert train(TrainSpec(d=2, n=4, heads=2, steps=20, batch=8, checkpoint_every=10, seed=1), progress=False,
                 use_cache=False).sha256 != a.sha256
