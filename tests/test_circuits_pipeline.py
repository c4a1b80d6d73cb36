"""Circuits end to end on a tiny model: results round-trip, the CLI (--json keys and
one-line errors), the app page and the notebook."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from analyses.circuits.reuse import ReuseConfig, overlap
from analyses.circuits.reuse import run as run_reuse
from analyses.circuits.analysis import CircuitConfig
from analyses.circuits.analysis import run as run_circuit
from workbench.results import load_result

SMALL_REUSE = ReuseConfig(n_prompts=2, ig_steps=1, n_edges=30, n_random=1, intervention_prompts=2, batch_size=2)


@pytest.fixture(scope="module")
def reuse_result(tiny_llama):
    return run_reuse(tiny_llama, SMALL_REUSE, progress=False)


def test_overlap_numbers():
    ov = overlap(["L0H0", "L1H1", "L2H2"], ["L1H1", "L2H2", "L3H3", "L4H4"])
    assert ov["share_of_smaller"] == pytest.approx(2 / 3) and ov["jaccard"] == pytest.approx(2 / 5)
    assert ov["shared"] == ["L1H1", "L2H2"]


def test_reuse_summary_keys_and_round_trip(reuse_result, tmp_path):
    s = reuse_result.summary()
    for task in ("ioi", "colored_objects"):
        assert {"n_heads", "faithfulness"} <= set(s[task])
    assert {"share_of_smaller", "jaccard"} <= set(s["overlap"])
    assert {"before", "after", "random_control"} <= set(s["intervention"])
    assert 0 <= s["intervention"]["before"] <= 1
    path = reuse_result.save(tmp_path / "reuse")
    back = load_result(path)
    assert back.metrics == json.loads(json.dumps(reuse_result.metrics))
    for k, v in reuse_result.arrays.items():
        assert torch.equal(back.arrays[k], v.detach().cpu())
    from workbench.report import render, sections_for

    html = render("head-ablation report", sections_for([back]))
    assert "Circuit reuse: IOI and Colored Objects" in html and "share of smaller" in html


@pytest.mark.parametrize("method", ["eap", "acdc", "path-patching"])
def test_circuit_methods_run_and_round_trip(tiny_llama, method, tmp_path):
    cfg = CircuitConfig(task="ioi", method=method, n_prompts=2, n_edges=20, ig_steps=1, batch_size=2,
                        acdc_candidates=15, path_top=2, compare_patching=(method == "eap"))
    r = run_circuit(tiny_llama, cfg, progress=False)
    m = r.metrics
    assert m["n_edges"] <= m["n_edges_total"] and m["n_heads"] == len(m["heads"])
    if method == "eap":
        assert -1 <= m["spearman_vs_patching"] <= 1
    back = load_result(r.save(tmp_path / method))
    assert back.summary()["faithfulness"] == pytest.approx(m["faithfulness"], nan_ok=True)


def _cli(monkeypatch, capsys, *args):
    from workbench.cli import main

    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def test_cli_circuit_json(monkeypatch, capsys):
    code, out = _cli(monkeypatch, capsys, "circuit", "--model", "tiny-llama", "--task", "colored-objects",
                     "--method", "eap", "--n", "2", "--n-edges", "15", "--json")
    assert code in (0, None)
    s = json.loads(out.out)
    assert s["task"] == "colored-objects" and s["method"] == "eap" and "faithfulness" in s and "run" in s


def test_cli_reuse_json(monkeypatch, capsys):
    code, out = _cli(monkeypatch, capsys, "reuse", "--model", "tiny-llama", "--n", "2", "--steps", "1",
                     "--n-edges", "20", "--intervention-prompts", "2", "--json")
    assert code in (0, None)
    s = json.loads(out.out)
    assert {"ioi", "colored_objects", "overlap", "intervention", "run"} <= set(s)
    assert {"n_heads", "faithfulness"} <= set(s["ioi"]) and {"before", "after", "random_control"} <= set(s["intervention"])


@pytest.mark.parametrize("args,needle", [
    (["circuit", "--model", "tiny-llama", "--n-edges", "100000", "--n", "2"], "has only"),
    (["circuit", "--model", "tiny-llama", "--task", "greater-than"], "unknown task"),
    (["circuit", "--model", "tiny-llama", "--method", "magic"], "unknown method"),
])
def test_cli_bad_input_is_one_line(monkeypatch, capsys, args, needle):
    code, out = _cli(monkeypatch, capsys, *args)
    assert code == 2
    lines = [l for l in out.err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.err


def test_misaligned_prompts_and_multi_token_answers(tiny_llama):
    from analyses.circuits.analysis import prepare
    from workbench.datasets.base import PromptSet
    from workbench.errors import InputError

    ps = PromptSet(["When Mary and John went out, John gave it to"], [" Mary"], [" John"],
                   corrupt=["When Mary and John went out to the big store, John gave it to"])
    with pytest.raises(InputError, match="differ in token length"):
        prepare(tiny_llama, ps)
    ps = PromptSet(["When Mary and John went out, John gave it to"], [" Maryanne-Louise"], [" John"],
                   corrupt=["When Anna and Bob went out, Tom gave it to"])
    with pytest.raises(InputError, match="not one"):
        prepare(tiny_llama, ps)


def test_app_page_shows_a_saved_reuse_run(reuse_result):
    from conftest import analysis_page_app

    reuse_result.save()
    at = analysis_page_app("reuse").run()
    assert not at.exception
    assert at.title[0].value == "Circuits"
    assert len(at.metric) >= 5
    assert any("intervention" in s.value for s in at.subheader)


def test_notebook_executes_small(monkeypatch):
    from notebook_runner import execute_notebook

    outputs = execute_notebook("ioi_circuit_reuse.ipynb", monkeypatch, timeout=600)
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 6
