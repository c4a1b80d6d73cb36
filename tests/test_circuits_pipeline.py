"""Circuits end to end on a tiny model: results round-trip, the CLI (--json keys and
one-line errors), the app page and the notebook."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from workbench.analyses.circuits.reuse import ReuseConfig, overlap
from workbench.analyses.circuits.reuse import run as run_reuse
from workbench.analyses.circuits.analysis import CircuitConfig
from workbench.analyses.circuits.analysis import run as run_circuit
from workbench.results import load_result

SMALL_REUSE = ReuseConfig(n_prompts=2, ig_steps=2, n_random=1, intervention_prompts=4, batch_size=2, n_val=3, n_test=3,
                          sizes="5,20,50", n_permutations=200)


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
    assert 0 <= s["overlap"]["null_mean"] <= 1 and 0 < s["overlap"]["p_value"] <= 1
    for task in ("ioi", "colored_objects"):  # the curve on validation prompts, the chosen circuit on test prompts
        curve = s[task]["faithfulness_curve"]
        assert curve["sizes"] == [5, 20, 50] and len(curve["methods"]["eap-ig"]["faithfulness"]) == 3
        assert reuse_result.intervals[f"{task}: faithfulness"].split == "test"
    assert reuse_result.intervals["intervention: accuracy before"].n == 4
    from workbench.analyses.circuits.figures import reuse_headline_figures

    rows = reuse_headline_figures(reuse_result)
    assert any("chance 0.33" in r["text"] for r in rows) and all(r["split"] or r["n"] for r in rows[:3])
    path = reuse_result.save(tmp_path / "reuse")
    back = load_result(path)
    (data, tensors), (back_data, back_tensors) = reuse_result.document(), back.document()
    assert back_data["data"] == json.loads(json.dumps(data["data"]))
    for k, v in tensors.items():
        assert torch.equal(back_tensors[k], v.detach().cpu())
    from workbench.report import render, sections_for

    html = render("head-ablation report", sections_for([back]))
    assert "Circuit reuse: IOI and Colored Objects" in html and "share of smaller" in html


@pytest.mark.parametrize("method", ["eap", "acdc", "path-patching"])
def test_circuit_methods_run_and_round_trip(tiny_llama, method, tmp_path):
    cfg = CircuitConfig(task="ioi", method=method, n_prompts=2, n_edges=20, ig_steps=1, batch_size=2, n_val=2,
                        n_test=2, sizes="5,20", acdc_candidates=15, path_top=2, compare_patching=(method == "eap"))
    r = run_circuit(tiny_llama, cfg, progress=False)
    m = r.document()[0]["data"]  # the Result's fields as saved
    assert m["n_edges"] <= m["n_edges_total"] and m["n_heads"] == len(m["heads"])
    if method == "eap":
        assert -1 <= m["spearman_vs_patching"] <= 1
    back = load_result(r.save(tmp_path / method))
    assert back.summary()["faithfulness"] == pytest.approx(m["faithfulness"], nan_ok=True)


def test_default_circuit_is_the_smallest_reaching_the_target(tiny_llama):
    """Without --n-edges the circuit is the smallest size on the validation curve that reaches
    --target, and the result says so; an unreachable target is stated as not met."""
    cfg = CircuitConfig(task="ioi", method="eap", n_prompts=2, batch_size=2, n_val=3, n_test=3, sizes="3,10,30,54",
                        curve_methods="eap", target=0.5)
    from workbench.analyses.circuits.analysis import behaviour_defined

    r = run_circuit(tiny_llama, cfg, progress=False)
    curve = r.faithfulness_curve
    faith = curve.methods["eap"].faithfulness
    reached = [k for k, f in zip(curve.sizes, faith) if f >= 0.5]
    if not behaviour_defined(curve):  # a random model: full - all ablated within noise
        assert r.target_met is False and r.chosen_k == curve.sizes[-1]
        assert "undefined" in r.target_text() and "NOT met" in r.target_text()
    elif reached:
        assert r.chosen_k == reached[0] and r.target_met and "smallest" in r.target_text()
    else:
        assert r.target_met is False and "NOT met" in r.target_text()
    from workbench.analyses.circuits.figures import circuit_headline_figures

    assert any("faithfulness" in f["text"] and f["split"] == "test" for f in circuit_headline_figures(r))


def test_hub_model_offline_is_one_line_naming_the_cache(monkeypatch, capsys):
    """`workbench reuse --model gpt2-medium` keeps Merullo's hub route; where the model is not in
    the Hugging Face cache and the hub cannot be reached, one line names the cache searched."""
    from workbench.analyses.circuits import hub

    monkeypatch.setattr(hub, "in_hub_cache", lambda hub_id: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    code, out = _cli(monkeypatch, capsys, "reuse", "--model", "gpt2-medium", "--json")
    assert code == 2
    lines = [l for l in out.err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and hub.hub_cache_dir() in lines[0] and "openai-community/gpt2-medium" in lines[0]
    assert "Traceback" not in out.err
    assert hub.hub_id_of("gpt2-medium") == "openai-community/gpt2-medium" and hub.hub_id_of("smollm2-135m") is None


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
                     "--method", "eap", "--n", "2", "--n-edges", "15", "--val", "2", "--test", "2", "--sizes", "5,15",
                     "--json")
    assert code in (0, None)
    s = json.loads(out.out)
    assert s["task"] == "colored-objects" and s["method"] == "eap" and "faithfulness" in s and "run" in s


def test_cli_reuse_json(monkeypatch, capsys):
    code, out = _cli(monkeypatch, capsys, "reuse", "--model", "tiny-llama", "--n", "2", "--steps", "1",
                     "--n-edges", "20", "--intervention-prompts", "2", "--val", "2", "--test", "2", "--n-random", "1",
                     "--json")
    assert code in (0, None)
    s = json.loads(out.out)
    assert {"ioi", "colored_objects", "overlap", "intervention", "run"} <= set(s)
    assert {"n_heads", "faithfulness"} <= set(s["ioi"]) and {"before", "after", "random_control"} <= set(s["intervention"])


@pytest.mark.parametrize("args,needle", [
    (["circuit", "--model", "tiny-llama", "--n-edges", "100000", "--n", "2"], "has only"),
    (["circuit", "--model", "tiny-llama", "--task", "greater-than"], "unknown task"),
    (["circuit", "--model", "tiny-llama", "--method", "magic"], "unknown method"),
    (["circuit", "--model", "tiny-llama", "--sizes", "ten"], "comma-separated"),
    (["circuit", "--model", "tiny-llama", "--format", "haiku"], "unknown Colored Objects format"),
    (["reuse", "--model", "tiny-llama", "--method", "acdc"], "choose eap or eap-ig"),
])
def test_cli_bad_input_is_one_line(monkeypatch, capsys, args, needle):
    code, out = _cli(monkeypatch, capsys, *args)
    assert code == 2
    lines = [l for l in out.err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.err


def test_misaligned_prompts_and_multi_token_answers(tiny_llama):
    from workbench.analyses.circuits.analysis import prepare
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

    folder = reuse_result.save()
    at = analysis_page_app("reuse").run()
    assert not at.exception
    created = load_result(folder).meta["created"]  # the page names the opened run: analysis, model, date
    assert at.title[0].value == f"Circuits · tiny-llama · {created[:10]} {created[11:16]} UTC"
    assert len(at.metric) >= 5
    assert any("intervention" in s.value for s in at.subheader)


def test_notebook_executes_small(monkeypatch):
    from notebook_runner import execute_notebook

    outputs = execute_notebook("ioi_circuit_reuse.ipynb", monkeypatch, timeout=600)
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 6
