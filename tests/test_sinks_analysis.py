"""The sinks analysis end to end on tiny settings: the multiple-choice task and its
splits, the result round trip, --json keys, the app page, and (marked) the embedded model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from analyses.sinks.analysis import SinksConfig, calibration_patches, run
from workbench.datasets.multiple_choice import all_questions, mc_splits, option_token_ids
from workbench.errors import InputError
from workbench.generation import last_token_logits, left_pad
from workbench.results import load_result

ROOT = Path(__file__).resolve().parents[1]


def test_multiple_choice_splits_are_disjoint_and_deterministic(tiny_llama):
    calib, held = mc_splits(10, 20, seed=3)
    assert len(calib) == 10 and len(held) == 20
    assert not {q.prompt for q in calib} & {q.prompt for q in held}
    again, _ = mc_splits(10, 20, seed=3)
    assert [q.prompt for q in again] == [q.prompt for q in calib]
    for q in calib + held:
        assert len(q.options) == 4 and len(set(q.options)) == 4
        assert len(option_token_ids(tiny_llama.tokenizer, q)) == 4
    for q in calib + held:
        assert q.prompt.startswith("The month that comes right after May is June.") and q.prompt.endswith(" is")
    with pytest.raises(InputError):
        mc_splits(len(all_questions()), 1)


def test_month_answers_are_right():
    for kind, question, answer, seq in all_questions():
        assert answer not in seq  # the pool holds distractors only
        if question == "The month that comes right after March is":
            assert answer == "April"
        assert question != "The day of the week that comes right before Monday is"  # Monday is first in day_name
        assert question != "The month that comes right after May is"  # a worked example is never asked


def test_calibration_patch_changes_logits_only_on_chosen_heads(tiny_llama):
    calib, _ = mc_splits(3, 1)
    ids, mask = left_pad([tiny_llama.tokenizer.encode(q.prompt, add_special_tokens=False) for q in calib],
                         tiny_llama.tokenizer.pad_token_id)
    base, _ = last_token_logits(tiny_llama, ids, mask)
    none = calibration_patches({1: torch.zeros(4, dtype=torch.bool)}, mask.bool(), 0.4, 0.1)
    assert none == {}
    beta1 = calibration_patches({1: torch.ones(4, dtype=torch.bool)}, mask.bool(), 1.0, 0.1)  # beta 1: no change
    same, _ = last_token_logits(tiny_llama, ids, mask, beta1)
    torch.testing.assert_close(same, base)


@pytest.fixture(scope="module")
def tiny_result():
    from workbench.models import load_model

    return run(load_model("tiny-llama"), SinksConfig(n_calib=6, n_heldout=6, max_search=2, min_layer=0, min_queries=2),
               progress=False)


def test_sinks_result_round_trips_with_the_issue_keys(tiny_result, tmp_path):
    r = tiny_result
    s = r.summary()
    assert set(s) == {"sinks", "calibration"}
    assert set(s["calibration"]) == {"before", "after", "heads"}
    assert 0 <= s["calibration"]["before"] <= 1
    for entry in s["sinks"]:
        assert entry["name"] == f"L{entry['layer']}H{entry['head']}"
    assert r.metrics["n_heads_with_sinks"] == len(s["sinks"])
    back = load_result(r.save(tmp_path / "run"))
    assert back.metrics == json.loads(json.dumps(r.metrics))
    torch.testing.assert_close(back.arrays["sink_strength"], r.arrays["sink_strength"])
    assert back.config.beta == 0.4
    assert len(back.report_sections()) == 3
    from workbench.report import render

    html = render("head-ablation report", back.report_sections())
    assert "ACT attention calibration" in html and html.count("plotly-graph-div") >= 4


def test_sinks_page_shows_saved_run(tiny_result):
    from conftest import analysis_page_app

    tiny_result.save()
    at = analysis_page_app("sinks").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 4
    assert [m.label for m in at.metric][:2] == ["sinks beyond the first token", "heads with such sinks"]


@pytest.mark.real_model
def test_smollm2_has_sinks_beyond_the_first_token(smollm2):
    r = run(smollm2, SinksConfig(n_calib=8, n_heldout=8, max_search=2), progress=False)
    m = r.metrics
    assert m["n_sinks_beyond_first"] > 0 and m["n_heads_with_sinks"] > 0
    classes = m["sink_token_classes"]
    assert classes.get("punctuation", 0) + classes.get("newline", 0) > 0  # sinks sit on punctuation and newlines


@pytest.mark.slow
def test_sinks_notebook_executes_small(monkeypatch):
    from notebook_runner import execute_notebook

    outputs = execute_notebook("attention_sinks.ipynb", monkeypatch, timeout=600, cwd=ROOT / "notebooks")
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 4
