"""Circuit and reuse runs saved before their Results were typed (a ``metrics`` bag and flat
``arrays``) load through the migration (``from_v1``) with identical arrays, the same
``--json`` summary and the same tables, tiles, atlas columns and headline figures.

tests/data/format1/circuit and circuit_reuse were written at commit 0e744a3 by the small
configs of tests/test_circuits_pipeline.py on tiny-llama (circuit: n=2, steps=2, batch 2,
val 3, test 3, sizes 5,20,50; reuse: SMALL_REUSE); circuit_expected/ holds what that code
showed for them (its summary without the run path, and every table of its sections). That
code wrote the bag under ``format_version`` 2 (the version moved before these classes were
typed); ``load_result`` migrates such a bag like a format-1 run, and the test reads the folder
as saved."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_format1_runs import _views  # the views the old code recorded, computed the same way
from workbench.results import load_result
from workbench.spec import get_spec

DATA = Path(__file__).parent / "data" / "format1"
FOLDERS = {"circuit": "circuit", "reuse": "circuit_reuse"}
OLD_NAMES = {"circuit": lambda k: k.replace("scores/", "scores_"), "reuse": lambda k: k.replace("class_scores/", "class_")}


def _as_format1(analysis: str, tmp_path: Path) -> Path:
    folder = tmp_path / FOLDERS[analysis]
    shutil.copytree(DATA / FOLDERS[analysis], folder)
    return folder


@pytest.mark.parametrize("analysis", list(FOLDERS))
def test_format1_circuit_run_loads_with_identical_arrays(analysis, tmp_path):
    folder = _as_format1(analysis, tmp_path)
    result = load_result(folder)
    assert type(result) is get_spec(analysis).result
    saved = load_file(str(folder / "arrays.safetensors"))
    _, tensors = result.document()
    now = {OLD_NAMES[analysis](k): v for k, v in tensors.items()}
    assert set(now) == set(saved)
    for name, old in saved.items():  # the circuits were uint8 in format 1, bool now: the same edges
        assert torch.equal(old.bool() if old.dtype == torch.uint8 else old, now[name].cpu()), name


@pytest.mark.parametrize("analysis", list(FOLDERS))
def test_format1_circuit_run_shows_the_same_numbers(analysis, tmp_path):
    result = load_result(_as_format1(analysis, tmp_path))
    summary = result.summary()
    summary.pop("run", None)
    expected = json.loads((DATA / "circuit_expected" / "summaries.json").read_text())[analysis]
    assert json.loads(json.dumps(summary)) == expected
    views = json.loads((DATA / "circuit_expected" / "views.json").read_text())[analysis]
    now = json.loads(json.dumps(_views(result, get_spec(analysis))))
    assert {k: now[k] for k in views} == views


@pytest.mark.parametrize("analysis", list(FOLDERS))
def test_format1_circuit_run_saves_as_format2_and_round_trips(analysis, tmp_path):
    result = load_result(_as_format1(analysis, tmp_path))
    path = result.save(tmp_path / "run")
    assert json.loads((path / "result.json").read_text())["format_version"] == 2
    back = load_result(path)
    a, b = result.document(), back.document()
    assert a[0]["data"] == b[0]["data"] and a[0]["config"] == b[0]["config"]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
