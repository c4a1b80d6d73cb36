"""The results store: round trips, atomic writes, clear errors on broken run folders."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from workbench.errors import ResultError
from workbench.results import Result, list_runs, load_result, provenance


@dataclass
class ToyConfig:
    n: int = 3
    name: str = "toy"
    sizes: tuple = (1, 2)


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


# ----- runs validated on load (issue 12) ------------------------------------------
def _doc(path):
    return json.loads((path / "result.json").read_text())


def _write_doc(path, doc):
    (path / "result.json").write_text(json.dumps(doc))


def test_checksum_recorded_at_save(tmp_path):
    import hashlib

    path = _toy().save(tmp_path / "run")
    doc = _doc(path)
    data = (path / "arrays.safetensors").read_bytes()
    assert doc["arrays_sha256"] == hashlib.sha256(data).hexdigest() and doc["arrays_bytes"] == len(data)


def test_flipped_array_bytes_are_one_line_error(tmp_path):
    path = _toy().save(tmp_path / "run")
    arr = path / "arrays.safetensors"
    data = bytearray(arr.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data, past the header: safetensors alone would load it
    arr.write_bytes(bytes(data))
    with pytest.raises(ResultError) as err:
        load_result(path)
    msg = str(err.value)
    assert "arrays.safetensors" in msg and "sha256" in msg and "\n" not in msg
    (broken,) = list_runs(tmp_path)
    assert broken["analysis"] == "broken" and "sha256" in broken["reason"]


def test_runs_saved_without_checksums_still_load(tmp_path):
    path = _toy().save(tmp_path / "run")
    doc = _doc(path)
    del doc["arrays_sha256"], doc["arrays_bytes"]
    _write_doc(path, doc)
    back = load_result(path)
    assert torch.equal(back.arrays["grid"], torch.arange(6.0).view(2, 3))
    assert list_runs(tmp_path)[0]["analysis"] == "toy"


@pytest.mark.parametrize("key,value,words", [
    ("metrics", [1, 2], "metrics is a list"),
    ("config", "abc", "config is a string"),
    ("meta", 5, "meta is a number"),
    ("arrays", "grid", "arrays is not a list"),
    ("arrays", [1, 2], "arrays is not a list"),
    ("analysis", 3, "analysis is a number"),
    ("format_version", 99, "format_version 99"),
    ("format_version", "1", "format_version is a string"),
    ("arrays_sha256", "0" * 10, "arrays_sha256"),
])
def test_wrong_types_in_result_json_are_refused(tmp_path, key, value, words):
    path = _toy().save(tmp_path / "run")
    doc = _doc(path)
    doc[key] = value
    _write_doc(path, doc)
    with pytest.raises(ResultError) as err:
        load_result(path)
    assert words in str(err.value) and "\n" not in str(err.value)
    (row,) = list_runs(tmp_path)
    assert row["analysis"] == "broken" and words in row["reason"]


@pytest.mark.parametrize("text,words", [
    ("[1, 2, 3]", "holds a list"),
    ('{"format_version": 1, "analysis": "toy", "metrics": {"x": NaN}, "arrays": []}', "corrupt"),
    ("[" * 100000 + "]" * 100000, "corrupt"),
])
def test_odd_json_documents_are_refused(tmp_path, text, words):
    path = _toy().save(tmp_path / "run")
    (path / "result.json").write_text(text)
    with pytest.raises(ResultError, match=words):
        load_result(path)
    assert list_runs(tmp_path)[0]["analysis"] == "broken"


def test_meta_of_the_wrong_type_cannot_break_the_listing(tmp_path):
    good = _toy().save(tmp_path / "good")
    bad = _toy().save(tmp_path / "bad")
    doc = _doc(bad)
    doc["meta"]["created"] = 12345  # would break sorting the runs by time
    _write_doc(bad, doc)
    rows = {r["path"]: r for r in list_runs(tmp_path)}
    assert rows[str(good)]["analysis"] == "toy" and rows[str(good)]["reason"] is None
    assert rows[str(bad)]["analysis"] == "broken" and "meta.created" in rows[str(bad)]["reason"]


def test_config_fields_of_the_wrong_type_are_refused(tmp_path):
    path = _toy().save(tmp_path / "run")
    doc = _doc(path)
    doc["config"]["n"] = "five"
    _write_doc(path, doc)
    with pytest.raises(ResultError, match="field 'n' is a string"):
        load_result(path)
    assert list_runs(tmp_path)[0]["analysis"] == "broken"


@dataclass(kw_only=True)
class TypedResult(Result):
    analysis = "typed-toy"
    score: float
    heads: list[dict]


@pytest.fixture(autouse=True)
def _toy_specs(monkeypatch):
    """The toys are known the one way an analysis is: through a spec."""
    from workbench import spec as spec_module, spec_registry

    toys = {cls.analysis: spec_module.AnalysisSpec(key=cls.analysis, title=cls.analysis, help="a toy", config=ToyConfig,
                                                   result=cls, run=lambda target, config, progress=True: None,
                                                   needs_model=False)
            for cls in (ToyResult, TypedResult)}
    monkeypatch.setattr(spec_registry, "_SPECS", {**spec_registry.specs(), **toys})


@pytest.mark.parametrize("metrics,words", [
    ({"heads": [{"layer": 0}]}, "'score' cannot be read"),
    ({"score": "high", "heads": []}, "'score' cannot be read"),
    ({"score": 1.0, "heads": "x"}, "'heads' is not list[dict]"),
    ({"score": 1.0, "heads": [[0, 1]]}, "'heads' is not list[dict]"),
])
def test_typed_properties_are_checked_on_load(tmp_path, metrics, words):
    path = TypedResult(score=0.5, heads=[{"layer": 0}]).save(tmp_path / "run")
    assert load_result(path).score == 0.5
    doc = _doc(path)
    doc["data"] = metrics
    _write_doc(path, doc)
    with pytest.raises(ResultError) as err:
        load_result(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_out_whose_parent_is_a_file_is_refused_before_work(tmp_path, monkeypatch):
    from workbench.results import check_run_target

    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultError, match="is a file, not a folder"):
        check_run_target(tmp_path / "file" / "deeper" / "run")
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "file"))
    with pytest.raises(ResultError, match="runs folder"):
        check_run_target(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
