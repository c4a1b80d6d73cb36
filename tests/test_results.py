"""The results store: round trips, atomic writes, clear errors on broken run folders."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from workbench.errors import ResultError
from workbench.results import Result, list_runs, load_result, provenance, register_result


@dataclass
class ToyConfig:
    n: int = 3
    name: str = "toy"
    sizes: tuple = (1, 2)


@register_result
@dataclass
class ToyResult(Result):
    analysis = "toy"
    config_cls = ToyConfig


def _toy():
    return ToyResult(config=ToyConfig(n=5), metrics={"score": 0.25, "heads": [[1, 2]], "nan": float("nan")},
                     arrays={"grid": torch.arange(6.0).view(2, 3), "ids": torch.tensor([1, 2, 3])},
                     meta=provenance(model="tiny-llama", seed=7))


def test_round_trip_gives_the_same_object(tmp_path):
    r = _toy()
    path = r.save(tmp_path / "run")
    back = load_result(path)
    assert isinstance(back, ToyResult)
    assert back.config == ToyConfig(n=5)
    assert back.metrics["score"] == 0.25 and back.metrics["nan"] is None
    assert torch.equal(back.arrays["grid"], r.arrays["grid"]) and torch.equal(back.arrays["ids"], r.arrays["ids"])
    assert back.meta["seed"] == 7 and back.meta["model"] == "tiny-llama"
    assert {"torch", "transformers", "python"} <= set(back.meta["versions"])
    assert "created" in back.meta and "git_commit" in back.meta


def test_no_pickle_on_disk(tmp_path):
    path = _toy().save(tmp_path / "run")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "result.json"]
    json.loads((path / "result.json").read_text())


def test_default_folder_and_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    path = _toy().save()
    assert path.parent == tmp_path / "runs" and path.name.startswith("toy-tiny-llama-")
    runs = list_runs()
    assert runs[0]["path"] == str(path) and runs[0]["analysis"] == "toy"


def test_missing_file_is_clear(tmp_path):
    path = _toy().save(tmp_path / "run")
    (path / "arrays.safetensors").unlink()
    with pytest.raises(ResultError, match="lacks arrays.safetensors"):
        load_result(path)
    (path / "result.json").unlink()
    with pytest.raises(ResultError, match="no result.json"):
        load_result(path)
    with pytest.raises(ResultError, match="does not exist"):
        load_result(tmp_path / "nowhere")


@pytest.mark.parametrize("victim,garbage", [("result.json", "{not json"), ("arrays.safetensors", "garbage bytes")])
def test_corrupt_file_is_clear(tmp_path, victim, garbage):
    path = _toy().save(tmp_path / "run")
    (path / victim).write_text(garbage)
    with pytest.raises(ResultError) as err:
        load_result(path)
    assert "corrupt" in str(err.value) and victim in str(err.value) and "\n" not in str(err.value)


def test_unwritable_folder_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(ResultError, match="cannot write run folder"):
        _toy().save(blocker / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_failed_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    r = _toy()
    r.arrays["bad"] = object()  # cannot be saved as a tensor
    with pytest.raises(Exception):
        r.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_replace(tmp_path):
    path = _toy().save(tmp_path / "run")
    r2 = _toy()
    r2.metrics["score"] = 0.5
    r2.save(path)
    assert load_result(path).metrics["score"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
