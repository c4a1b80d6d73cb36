"""The sinks analysis end to end on tiny settings: the multiple-choice tasks and their
splits, the layer-suffix runner against a full forward, the result round trip with its
intervals, --json keys, the app page, and (marked) the embedded model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench.analyses.sinks.analysis import SinksConfig, calibration_patches, interval_name, run
from workbench.analyses.sinks.runner import LayerRunner
from workbench.datasets.multiple_choice import (CATEGORIES, NEGATIVE, POSITIVE, TASKS, all_questions, capacity,
                                                check_sizes, mc_splits, option_token_ids, task_splits)
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


@pytest.mark.parametrize("task", TASKS)
def test_task_splits_share_no_group_and_answers_are_right(task, tiny_llama):
    most_calib, most_held, most = capacity(task)
    n_calib, n_held = min(40, most_calib), min(200, most - min(40, most_calib))
    calib, held = task_splits(task, n_calib, n_held, seed=1)
    assert (len(calib), len(held)) == (n_calib, n_held)
    assert not {q.group for q in calib} & {q.group for q in held}  # no word / adjective / question in both
    assert [q.prompt for q in task_splits(task, n_calib, n_held, seed=1)[1]] == [q.prompt for q in held]
    for q in calib + held:
        assert q.task == task and len(set(q.options)) == len(q.options)
        ids = option_token_ids(tiny_llama.tokenizer, q)
        assert len(set(ids)) == len(q.options)
        right = q.options[q.label]
        if task == "category":
            assert q.group in CATEGORIES[right] and q.prompt.endswith(f"\n{q.group} ->")
        if task == "sentiment":
            assert (q.group in POSITIVE) == (right == "positive") and (q.group in NEGATIVE) == (right == "negative")
            assert q.prompt.endswith(f" {q.group}.\nSentiment:")
    if task == "sentiment":  # both polarities on both sides of the split
        assert {q.label for q in calib} == {q.label for q in held} == {0, 1}


def test_category_words_are_unique_and_sizes_are_clear_errors():
    words = [w for ws in CATEGORIES.values() for w in ws]
    assert len(words) == len(set(words))
    with pytest.raises(InputError, match="--n-heldout 800 or less"):
        check_sizes("sentiment", 64, 801)
    with pytest.raises(InputError, match="sequence task holds .80 calibration, 81 in all.; choose --n-calib 61"):
        check_sizes("sequence", 64, 20)
    with pytest.raises(InputError, match="unknown task"):
        check_sizes("trivia", 1, 1)
    with pytest.raises(InputError, match="--n-heldout"):
        SinksConfig(tasks=("sequence",)).validate()  # the default 200 held-out questions do not fit


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


def test_layer_runner_equals_the_full_forward(tiny_llama):
    """Recomputing only the layers from the first calibrated one gives the full forward's logits."""
    tok = tiny_llama.tokenizer
    qs = task_splits("sentiment", 2, 2)[0] + task_splits("category", 2, 2)[0]  # different lengths: left padding
    ids, mask = left_pad([tok.encode(q.prompt, add_special_tokens=False) for q in qs], tok.pad_token_id)
    assert not bool(mask.all())
    L, H = tiny_llama.shape.n_layers, tiny_llama.shape.n_heads
    runner = LayerRunner(tiny_llama, ids, mask, keep=[1])
    torch.testing.assert_close(runner.base_logits, last_token_logits(tiny_llama, ids, mask)[0])
    for sets in ({1: torch.ones(H, dtype=torch.bool)}, {L - 1: torch.ones(H, dtype=torch.bool)},
                 {0: torch.ones(H, dtype=torch.bool)}):  # from the kept layer, from below it, and a full forward
        patches = calibration_patches(sets, mask.bool(), 0.0, 0.05, 2)
        full = last_token_logits(tiny_llama, ids, mask, patches)[0]
        assert (full - runner.base_logits).abs().max() > 1e-4  # the calibration does something
        torch.testing.assert_close(runner.logits(patches), full, atol=1e-5, rtol=1e-5)


TINY = dict(n_calib=6, n_heldout=6, max_search=2, min_layer=0, min_queries=2, betas=(0.4, 0.2), thresholds=(0.1,))


@pytest.fixture(scope="module")
def tiny_result():
    from workbench.models import load_model

    return run(load_model("tiny-llama"), SinksConfig(**TINY), progress=False)


def test_sinks_result_round_trips_with_its_intervals(tiny_result, tmp_path):
    r = tiny_result
    s = r.summary()
    assert set(s) == {"sinks", "calibration"}
    assert [row["task"] for row in s["calibration"]] == ["category", "sentiment"]
    for row in s["calibration"]:
        assert {"before", "after", "heads", "beta", "threshold", "n_calib", "n_heldout", "chance"} <= set(row)
        assert row["n_heldout"] == 6 and row["chance"] == (0.5 if row["task"] == "sentiment" else 0.25)
        base, act = r.interval(row["task"], "base"), r.interval(row["task"], "act")
        assert base.n == 6 and base.split == "test" and base.value == pytest.approx(row["before"])
        assert act.value == pytest.approx(row["after"])
        assert r.interval(row["task"], "difference").value == pytest.approx(row["after"] - row["before"])
        assert r.interval(row["task"], "calibration base").split == "calibration"
        assert r.interval(row["task"], "difference by group").value == pytest.approx(row["after"] - row["before"])
        if not row["heads"]:  # nothing chosen: ACT is the base model
            assert row["after"] == row["before"] and row["changed"] == 0
    for entry in s["sinks"]:
        assert entry["name"] == f"L{entry['layer']}H{entry['head']}"
    assert r.n_heads_with_sinks == len(r.sinks)
    assert r.search_parameters["max_search"] == 2 and r.search_parameters["betas"] == [0.4, 0.2]
    back = load_result(r.save(tmp_path / "run"))
    assert back.document()[0]["data"] == json.loads(json.dumps(r.document()[0]["data"]))
    torch.testing.assert_close(back.sink_strength, r.sink_strength)
    assert back.config.beta == 0.4 and back.config.tasks == ("category", "sentiment")
    assert interval_name("category", "base") in back.intervals
    from workbench.report import render
    from workbench.spec import get_spec

    sections = get_spec("sinks").sections(back)
    html = render("sinks report", sections)
    assert "ACT attention calibration" in html and html.count("plotly-graph-div") >= 5
    assert "held-out accuracy, ACT - base (paired)" in html  # the intervals table
    rows = get_spec("sinks").headlines[0].figures(back)
    assert any(f["interval"] and f["split"] == "test" and f["n"] == 6 for f in rows)


def test_sinks_page_shows_saved_run(tiny_result):
    from conftest import analysis_page_app

    tiny_result.save()
    at = analysis_page_app("sinks").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 5
    assert [m.label for m in at.metric][:2] == ["sinks beyond the first token", "heads with such sinks"]


@pytest.mark.real_model
def test_smollm2_has_sinks_and_is_above_chance_on_both_tasks(smollm2):
    r = run(smollm2, SinksConfig(n_calib=6, n_heldout=20, max_search=1, betas=(0.4,), thresholds=(0.1,)),
            progress=False)
    assert r.n_sinks_beyond_first > 0 and r.n_heads_with_sinks > 0
    classes = r.sink_token_classes
    assert classes.get("punctuation", 0) + classes.get("newline", 0) > 0  # sinks sit on punctuation and newlines
    for row in r.calibration:  # the tasks are chosen so that the model is clearly above chance
        assert r.interval(row.task, "base").low > row.chance, row


@pytest.mark.slow
def test_sinks_notebook_executes_small(monkeypatch):
    from notebook_runner import execute_notebook

    outputs = execute_notebook("attention_sinks.ipynb", monkeypatch, timeout=600, cwd=ROOT / "notebooks")
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 4
