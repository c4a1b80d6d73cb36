"""A model is checked before it is used (issue 29, deliverable 2). Each case breaks a saved
tiny-llama folder one way and expects one ``InputError`` line with the fix; before these
checks, missing tensors were filled with random values and NaN weights gave NaN figures
(both exit 0), and the broken files were tracebacks. The converted-model cache is verified
against the checksums recorded at conversion and rebuilt when broken."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench.errors import EnvironmentProblem, InputError, ModelNotAvailable
from workbench.models import load_model


# ----- helpers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, tiny_llama) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama-folder")
    tiny_llama.hf.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    return folder


def copy_of(good: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    return folder


def rewrite_weights(folder: Path, change) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file(change(dict(weights)), folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder: Path, **values) -> None:
    doc = json.loads((folder / "config.json").read_text())
    doc.update(values)
    for k in [k for k, v in values.items() if v is None]:
        doc.pop(k)
    (folder / "config.json").write_text(json.dumps(doc))


def refused(folder: Path, *words: str, dtype: str = "float32") -> str:
    with pytest.raises(InputError) as err:
        load_model(str(folder), dtype=dtype)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for w in words:
        assert w in msg, msg
    return msg


def _drop_two(w: dict) -> dict:
    for name in ("model.layers.0.input_layernorm.weight", "model.layers.1.mlp.up_proj.weight"):
        w.pop(name)
    return w


def _all_nan(w: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) for k, v in w.items()}


def _one_inf(w: dict) -> dict:
    t = w["model.layers.1.self_attn.o_proj.weight"].clone()
    t.view(-1)[7] = float("inf")
    return {**w, "model.layers.1.self_attn.o_proj.weight": t}


# ----- the weights -------------------------------------------------------------------
@pytest.mark.parametrize("change,words", [
    (_drop_two, ["lack 2 tensor(s)", "model.layers.0.input_layernorm.weight", "random values", "save_pretrained"]),
    (lambda w: {**w, "model.layers.0.extra.weight": torch.zeros(3)},
     ["1 tensor(s) this model has no place for", "model.layers.0.extra.weight", "config"]),
    (_all_nan, ["NaN or infinite", "another checkpoint"]),
    (_one_inf, ["NaN or infinite", "model.layers.1.self_attn.o_proj.weight: 1 of"]),
], ids=["two-missing", "unexpected", "all-nan", "one-inf"])
def test_broken_weights_are_refused(good_folder, tmp_path, change, words):
    folder = copy_of(good_folder, tmp_path)
    rewrite_weights(folder, change)
    refused(folder, *words)


def test_float16_overflow_names_the_dtype(good_folder, tmp_path):
    """A float32 checkpoint with values past float16's range loads as inf in float16: the fix is the dtype."""
    folder = copy_of(good_folder, tmp_path)
    rewrite_weights(folder, lambda w: {**w, "model.norm.weight": torch.full_like(w["model.norm.weight"], 1e6)})
    refused(folder, "NaN or infinite", "--dtype bfloat16", dtype="float16")
    load_model(str(folder), dtype="float32")  # the same file is fine in float32


@pytest.mark.parametrize("damage,words", [
    (lambda b: b[: len(b) // 2], ["is truncated", "bytes but its header lists"]),
    (lambda b: os.urandom(4096), ["is not a safetensors file"]),
    (lambda b: b"", ["is empty (0 bytes)"]),
    (lambda b: b"\x05\x00", ["too short"]),
    (lambda b: (20).to_bytes(8, "little") + b"{not json at all}!!!" + b"\0" * 64, ["header is not JSON"]),
], ids=["truncated", "garbage", "empty", "two-bytes", "bad-header"])
def test_damaged_safetensors_are_refused_before_loading(good_folder, tmp_path, damage, words):
    folder = copy_of(good_folder, tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    refused(folder, str(path), *words, "copy the weights again")


@pytest.mark.parametrize("values,words", [
    ({"num_attention_heads": 3, "num_key_value_heads": 3, "head_dim": None}, ["hidden size 64", "3 attention heads"]),
    ({"num_key_value_heads": 3}, ["4 attention heads cannot share 3 key/value heads"]),
    ({"num_attention_heads": 0}, ["num_attention_heads is 0"]),
    ({"intermediate_size": 256}, ["disagree with config.json", "down_proj.weight is [64, 128] in the weights but [64, 256]"]),
    ({"num_hidden_layers": 3}, ["lack", "model.layers.2."]),
], ids=["heads-not-dividing", "kv-not-dividing", "zero-heads", "mlp-shape", "extra-layer"])
def test_configs_that_disagree_with_the_weights_are_refused(good_folder, tmp_path, values, words):
    folder = copy_of(good_folder, tmp_path)
    edit_config(folder, **values)
    refused(folder, *words)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(good_folder, tmp_path):
    """It used to be an IndexError deep in the embedding, on the first prompt with a high id."""
    folder = copy_of(good_folder, tmp_path)
    rewrite_weights(folder, lambda w: {**w, "model.embed_tokens.weight": w["model.embed_tokens.weight"][:1000].clone()})
    edit_config(folder, vocab_size=1000)
    refused(folder, "49152 tokens", "1000 rows", "resize_token_embeddings")


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-neox"])
def test_healthy_folders_of_every_family_still_load(tmp_path, name):
    """No false alarm: tied embeddings, GPT-2's attention buffers, NeoX's rotary buffers."""
    m = load_model(name)
    m.hf.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    assert load_model(str(tmp_path)).shape == m.shape


def test_missing_tensors_exit_2_through_the_cli_and_save_nothing(good_folder, tmp_path):
    """The data-loss case: two missing tensors were random, the run was saved, exit 0."""
    folder = copy_of(good_folder, tmp_path)
    rewrite_weights(folder, _drop_two)
    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "workbench", "induction", "--model", str(folder), "--n", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "LOAD REPORT" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the weights of")
    assert not (tmp_path / "runs").exists()


# ----- the converted-model cache ------------------------------------------------------
@pytest.fixture
def converted(good_folder, tmp_path) -> Path:
    """A converted copy as the conversion leaves it: files, then their checksums."""
    from workbench.model_cache import record_checksums

    folder = copy_of(good_folder, tmp_path)
    record_checksums(folder)
    return folder


class Converter:
    """A stand-in for the 30 s GGUF conversion: writes the good folder's files and checksums."""

    def __init__(self, source: Path, error: BaseException | None = None) -> None:
        self.source, self.error, self.calls = source, error, 0

    def __call__(self, target: Path) -> None:
        from workbench.model_cache import record_checksums

        self.calls += 1
        if self.error is not None:
            raise self.error
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.source, target)
        record_checksums(target)


def test_an_intact_cache_is_used_without_hashing(converted, good_folder, monkeypatch):
    import workbench.model_cache as mc

    monkeypatch.setattr(mc, "sha256", lambda path: pytest.fail("hashed an unchanged file"))
    convert = Converter(good_folder)
    assert mc.ensure_converted(converted, convert) == converted and convert.calls == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_broken_cache_is_converted_again(converted, good_folder, damage, capsys):
    from workbench.model_cache import damage as damage_of
    from workbench.model_cache import ensure_converted

    path = converted / "model.safetensors"
    if damage == "truncate":
        os.truncate(path, path.stat().st_size // 3)
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))  # same size, new time: the checksum tells
    else:
        (converted / "tokenizer_config.json").unlink()
    assert damage_of(converted) is not None
    convert = Converter(good_folder)
    ensure_converted(converted, convert)
    assert convert.calls == 1 and damage_of(converted) is None
    assert "is broken" in capsys.readouterr().err


def test_a_cache_that_cannot_be_rebuilt_names_the_folder_to_delete(converted, good_folder):
    from workbench.model_cache import ensure_converted

    os.truncate(converted / "model.safetensors", 100)
    with pytest.raises(ModelNotAvailable) as err:
        ensure_converted(converted, Converter(good_folder, error=ModelNotAvailable("reading the GGUF needs 'gguf'")))
    assert f"rm -rf {converted}" in str(err.value) and "is broken" in str(err.value)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    # how safetensors reports it (measured on a full 64 kB tmpfs)
    RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
], ids=["oserror", "safetensors"])
def test_a_full_disk_during_conversion_names_the_cache_variable(tmp_path, good_folder, monkeypatch, error):
    from workbench.model_cache import ensure_converted

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "cache" / "models" / "smollm2-135m"
    empty.mkdir(parents=True)
    with pytest.raises(EnvironmentProblem) as err:
        ensure_converted(empty, Converter(good_folder, error=error))
    msg = str(err.value)
    assert "the disk is full" in msg and "WORKBENCH_CACHE" in msg and str(empty) in msg


def test_a_conversion_cut_short_without_an_error_is_caught(good_folder, tmp_path):
    """A writer that does not report the full disk leaves a short file whose checksum was
    recorded: the header against the size still tells, right after converting."""
    from workbench.model_cache import ensure_converted, record_checksums

    def short(target: Path) -> None:
        Converter(good_folder)(target)
        os.truncate(target / "model.safetensors", 5000)
        record_checksums(target)

    folder = tmp_path / "cache"
    folder.mkdir()
    with pytest.raises(ModelNotAvailable) as err:
        ensure_converted(folder, short)
    assert "is truncated" in str(err.value) and "disk full" in str(err.value) and f"rm -rf {folder}" in str(err.value)


def test_a_cache_from_before_checksums_is_adopted(good_folder, tmp_path):
    from workbench.model_cache import CHECKSUMS, ensure_converted

    legacy = copy_of(good_folder, tmp_path)
    convert = Converter(good_folder)
    ensure_converted(legacy, convert)
    assert convert.calls == 0 and (legacy / CHECKSUMS).is_file()


def test_load_model_rebuilds_a_truncated_embedded_cache(good_folder, tmp_path, monkeypatch):
    """Through ``load_model``: a truncated weights file in the cache was a SafetensorError
    traceback on every later run; now it is converted again and the model loads."""
    import workbench.model_sources as model_sources

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    convert = Converter(good_folder)
    monkeypatch.setattr(model_sources, "_convert_gguf", lambda gguf, target: convert(target))
    load_model("smollm2-135m")  # first use: converted
    cached = tmp_path / "cache" / "models" / "smollm2-135m" / "model.safetensors"
    os.truncate(cached, cached.stat().st_size // 2)
    m = load_model("smollm2-135m")
    assert convert.calls == 2 and m.shape.n_layers == 2
