"""The vision-head analysis end to end on a tiny setting: the tiny random Llama as language
model behind the real EfficientNet-Lite0, a projector built in a fixture with one training
step, two held-out scenes. Checks the result's shape and --json keys, the round trip, the
figures, the report, the CLI, the app page and the notebook."""
from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from workbench.analyses.vision_heads.analysis import VHDConfig, VHDResult, caption_one, run
from workbench.results import load_result

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_scenes=3, n_val=2, alphas=(1.5, 2.0), head_sets=("vhr", "top2"), random_draws=2, max_new_tokens=3,
             projector_steps=1, projector_n_train=4, image_size=64, batch_size=2, top_k=3)
CLI_SMALL = ["--model", "tiny-llama", "--n-scenes", "1", "--n-val", "1", "--alphas", "2", "--head-sets", "vhr",
             "--random-draws", "1", "--max-new-tokens", "2", "--projector-steps", "1", "--projector-n-train", "4",
             "--image-size", "64"]
SUMMARY_KEYS = {"vhd", "top_heads", "chair", "alpha", "head_set", "chosen_by", "splits", "n_scenes", "n_val", "intervals",
                "validation"}


@pytest.fixture(scope="module")
def small_result(tiny_llama) -> VHDResult:
    return run(tiny_llama, VHDConfig(**SMALL), progress=False)


def test_result_holds_the_issue_keys(small_result, tiny_llama):
    s = tiny_llama.shape
    summary = small_result.summary()
    assert set(summary) == SUMMARY_KEYS
    assert torch.tensor(summary["vhd"]).shape == (s.n_layers, s.n_heads)
    assert set(summary["chair"]) == {"before", "after", "random_control", "all_heads"}
    for scores in summary["chair"].values():
        assert 0.0 <= scores["chair_i"] <= 1.0 and 0.0 <= scores["chair_s"] <= 1.0
    # chosen on the validation scenes (analyses/vision_heads/choice.py, tested on known counts in
    # tests/test_vhd_choice.py): the chosen row is the one the choice record names
    sweep = summary["validation"]["sweep"]
    ch = summary["validation"]["choice"]
    assert len(sweep) == 4 and summary["chosen_by"] == "val" and len(ch["shares"]) == 4
    best = sweep[ch["index"]]
    assert (summary["head_set"], summary["alpha"]) == (best["head_set"], best["alpha"])
    assert 0 < ch["stability"] <= 1 and abs(sum(ch["shares"]) - 1) < 1e-9
    assert small_result.meta["artifacts"][0]["key"].startswith("vlm/tiny-llama")
    assert summary["splits"]["chair"] == "test" and summary["splits"]["sweep"] == "val"
    assert summary["n_scenes"] == 3 and summary["n_val"] == 2
    assert summary["top_heads"][0]["name"].startswith("L")
    ivs = small_result.intervals
    for cond in ("before", "after", "random_control", "all_heads"):
        for metric in ("chair_i", "chair_s", "recall", "mentioned"):
            iv = ivs[f"{metric} {cond}"]
            assert iv.split == "test" and iv.n == 3 and iv.low <= iv.value <= iv.high
    assert ivs["recall before"].value == summary["chair"]["before"]["recall"]
    r = small_result
    assert r.caption_loss > 0 and r.caption_loss_no_image > 0
    assert len(r.captions_before) == 3 and r.metrics == {} and r.arrays == {}  # typed: the fields are the data
    assert r.vhd_map.min() >= 0 and r.projector.sha256 == r.meta["artifacts"][0]["sha256"]
    steps = r.vhd_steps
    assert steps.shape[0] == 3 and steps.shape[2:] == (s.n_layers, s.n_heads)


def test_round_trip(small_result, tmp_path):
    path = small_result.save(tmp_path / "run")
    loaded = load_result(path)
    assert isinstance(loaded, VHDResult)
    assert loaded.summary() | {"run": None} == small_result.summary() | {"run": None}
    assert loaded.config == small_result.config
    for k in ("vhd_map", "vhd_map_val", "vhd_steps", "valid", "tvhd", "images", "selected_rate"):
        assert torch.equal(getattr(loaded, k), getattr(small_result, k)), k
    assert loaded.sweep == small_result.sweep and loaded.choice == small_result.choice
    assert loaded.projector == small_result.projector and loaded.top_heads == small_result.top_heads


def test_figures_and_report(small_result):
    from workbench.analyses.vision_heads import figures as vision
    from workbench.report import render

    figs = [vision.vhd_map_figure(small_result), vision.top_heads_figure(small_result), vision.tvhd_figure(small_result, 1),
            vision.sweep_figure(small_result), vision.projector_figure(small_result), vision.scene_figure(small_result, 0),
            vision.loss_curve_figure(small_result), vision.conditions_figure(small_result)]
    assert all(isinstance(f, go.Figure) for f in figs)
    html = render("vhd", small_result.report_sections())
    assert "Vision-aware head divergence" in html and "CHAIR" in html


def test_sweep_table_and_report_say_how_the_setting_was_chosen(small_result):
    from workbench.analyses.vision_heads.figures import choice_text, sweep_table

    rows = sweep_table(small_result)
    assert rows[0]["head set"] == "none" and len(rows) == 5
    assert abs(sum(r["chosen in resamples"] for r in rows[1:]) - 1) < 1e-9
    chosen = rows[1 + small_result.choice.index]
    assert chosen["chosen in resamples"] == small_result.choice.stability
    assert chosen["admissible"] == small_result.choice.admissible
    text = choice_text(small_result)
    assert f"{small_result.choice.stability:.0%} of 1000 bootstrap resamples" in text and "silence" in text


def test_headline_figures(small_result):
    from workbench.analyses.vision_heads import SPEC
    from workbench.analyses.vision_heads.figures import headline_figures

    rows = headline_figures(small_result)
    assert any(r["text"].startswith("recall, before VHR") for r in rows)
    assert all(r["split"] == "test" for r in rows if r["interval"]) and len(SPEC.headlines) == 1
    stable = [r for r in rows if "validation resamples choosing it" in r["text"]]
    assert len(stable) == 1 and stable[0]["split"] == "val" and stable[0]["n"] == 2
    assert stable[0]["value"] == small_result.choice.stability
    sha = small_result.meta["artifacts"][0]["sha256"]
    assert any(r["text"].startswith(f"projector weights sha256 {sha[:16]}") for r in rows)
    diff = [r for r in rows if r["text"].startswith("CHAIR_i, VHR minus random heads")]
    assert len(diff) == 1 and "interval" in diff[0]["text"]
    assert SPEC.headlines[0].args[0] == "vhd"


def test_projector_is_cached_and_reloaded(tiny_llama):
    from workbench.analyses.vision_heads.analysis import projector_config
    from workbench.analyses.vision_heads.vlm.train import build_vlm

    cfg = projector_config(VHDConfig(**SMALL), tiny_llama.name)
    vlm, record = build_vlm(tiny_llama, cfg, progress=False)
    assert Path(record["cached"]).is_file() and "loss_curve" in record
    again, _ = build_vlm(tiny_llama, cfg, progress=False)
    assert torch.equal(again.projector.weight, vlm.projector.weight)


def test_caption_one_user_image(tiny_llama):
    from workbench.vision.images import shipped_image

    out = caption_one(tiny_llama, shipped_image("chelsea"), VHDConfig(**SMALL))
    assert isinstance(out["caption_before"], str) and len(out["tvhd"]) == len(out["tokens"])


def test_cli_json(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app, register_analyses

    register_analyses()

    res = CliRunner().invoke(app, ["vhd", *CLI_SMALL, "--json", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    start = res.stdout.index("{")
    doc = json.loads(res.stdout[start:])
    assert set(doc) == SUMMARY_KEYS | {"run"}
    assert set(doc["chair"]) == {"before", "after", "random_control", "all_heads"} and doc["chosen_by"] == "given"


def test_app_page(small_result, tmp_path, monkeypatch):
    from conftest import analysis_page_app

    small_result.save()  # into the per-test WORKBENCH_RUNS
    at = analysis_page_app("vhd").run()
    assert not at.exception, at.exception
    assert any("Vision-aware heads" in t.value for t in at.title)
    assert len(at.table) >= 1 and len(at.slider) >= 1
    assert any("before" in m.value for m in at.markdown)


@pytest.mark.slow
def test_notebook_runs(monkeypatch):
    from notebook_runner import execute_notebook

    outputs = execute_notebook("vision_heads.ipynb", monkeypatch, timeout=600)
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 4


def test_headline_row_names_the_built_model_split_and_n(small_result):
    from workbench.analyses.vision_heads.figures import headline_figures

    rows = headline_figures(small_result)
    first = rows[0]
    assert first["text"].startswith("built model (EfficientNet-Lite0, 2x2 visual tokens")
    assert "trained 1 steps on 4 scenes" in first["text"] and "docs/vision-heads.md" in first["text"]
    assert first["value"] == first["n"] == SMALL["n_scenes"] and first["split"] == "test"
    splits = {("sha256" in r["text"], "resamples" in r["text"]): r["split"] for r in rows}
    assert splits == {(False, False): "test", (True, False): "train", (False, True): "val"}
