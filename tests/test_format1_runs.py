"""Runs saved by the code before typed Results (format 1: numbers in a ``metrics`` bag,
tensors in ``arrays``) load through the migration with identical arrays, the same
``--json`` summary and the same tables, tiles, atlas columns and headline figures.

The folders under tests/data/format1 were written by ``workbench ablate|sinks|induction
--model tiny-llama`` and a small ``icl`` run (d=3, n=20, 100 steps) at commit 01893d3; summaries.json and views.json hold what that code
showed for them (its summary without the run path, and every table of its sections)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.result_fields import plain_json
from workbench.results import load_result
from workbench.spec import get_spec

DATA = Path(__file__).parent / "data" / "format1"
ANALYSES = ("ablation", "sinks", "induction", "icl")


def _views(result, spec) -> dict:
    """What the old code's views.json recorded, computed by today's code."""
    sections = spec.sections(result)
    return {"headline": plain_json(spec.headline(result)) if spec.headline else None,
            "tables": [[plain_json(rows) for rows in s.tables] for s in sections],
            "titles": [s.title for s in sections], "texts": [s.text for s in sections],
            "columns": {c.name: plain_json(c.values(result)) for c in spec.head_columns},
            "headlines": [plain_json(h.figures(result)) for h in spec.headlines]}


OLD_DICT_NAMES = {"sinks": "{key}_{field}", "icl": {"curves": "curve.{key}", "baseline_losses": "{key}.loss"}}


def _old_name(cls, name: str) -> str:
    """The format-1 array name of a format-2 tensor: ``v1_names``, and a dict field's entry
    ``field/key`` as each analysis spelled it in format 1."""
    if "/" in name:
        field, key = name.split("/", 1)
        pattern = OLD_DICT_NAMES[cls.analysis]
        pattern = pattern if isinstance(pattern, str) else pattern[field]
        return pattern.format(field=field, key=key)
    return cls.v1_names.get(name, name)


@pytest.mark.parametrize("analysis", ANALYSES)
def test_format1_run_loads_with_identical_arrays(analysis):
    folder = DATA / analysis
    assert json.loads((folder / "result.json").read_text())["format_version"] == 1
    result = load_result(folder)
    assert type(result) is get_spec(analysis).result
    saved = load_file(str(folder / "arrays.safetensors"))
    _, tensors = result.document()
    old_names = {_old_name(type(result), k): v for k, v in tensors.items()}
    assert set(old_names) == set(saved)
    for name, old in saved.items():
        assert old.dtype == old_names[name].dtype and torch.equal(old, old_names[name].cpu()), name


@pytest.mark.parametrize("analysis", ANALYSES)
def test_format1_run_shows_the_same_numbers(analysis):
    result = load_result(DATA / analysis)
    summary = result.summary()
    summary.pop("run", None), summary.pop("report", None)
    expected = json.loads((DATA / "summaries.json").read_text())[analysis]
    assert json.loads(json.dumps(summary)) == expected
    views = json.loads((DATA / "views.json").read_text())[analysis]
    now = json.loads(json.dumps(_views(result, get_spec(analysis))))
    assert {k: now[k] for k in views} == views


@pytest.mark.parametrize("analysis", ANALYSES)
def test_format1_run_saves_as_format2_and_round_trips(analysis, tmp_path):
    result = load_result(DATA / analysis)
    path = result.save(tmp_path / "run")
    assert json.loads((path / "result.json").read_text())["format_version"] == 2
    back = load_result(path)
    a, b = result.document(), back.document()
    assert a[0]["data"] == b[0]["data"] and a[0]["config"] == b[0]["config"]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
