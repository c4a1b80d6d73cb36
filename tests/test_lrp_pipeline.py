"""The LRP saliency analysis end to end: results round-trip, the --json keys the issue lists, bad
input as one-line errors (empty prompt, target not a token, a file that is not an image), the
app page, the notebook, and the real-model IOI check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.analyses.lrp.analysis import CONSERVATION_TOLERANCE, LrpConfig, LrpImageConfig, LrpImageResult, LrpResult, run
from workbench.errors import InputError
from workbench.results import load_result

ROOT = Path(__file__).resolve().parents[1]
PROMPT_KEYS = {"tokens", "relevance", "head_relevance", "conservation_error", "token_conservation_error",
               "softmax_absorbed_share", "aopc", "aopc_by_task", "intervals"}
IMAGE_KEYS = {"top_classes", "aopc"}


@pytest.fixture(scope="module")
def prompt_result(tiny_llama):
    return run(tiny_llama, LrpConfig(n_prompts=2, max_delete=3, n_random=1, tasks=("ioi",)), progress=False)


@pytest.fixture(scope="module")
def image_result():
    return run(None, LrpImageConfig(images=("coffee",), image_size=96, n_steps=2), progress=False)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, **kw)


# ---------------------------------------------------------------------------- prompts
def test_prompt_result_summary_and_round_trip(prompt_result, tmp_path):
    r = prompt_result
    assert set(r.summary()) == PROMPT_KEYS
    s = r.summary()
    assert len(s["tokens"]) == len(s["relevance"]) == int(r.lengths[0])
    assert np.array(s["head_relevance"]).shape == (2, 4)  # tiny-llama: 2 layers x 4 heads
    assert s["conservation_error"] < CONSERVATION_TOLERANCE
    assert set(s["aopc"]) == {"attnlrp", "gradient_x_input", "rollout", "random"}
    assert r.io_share is not None and r.io_top1_rate is not None
    assert set(s["aopc_by_task"]) == {"ioi"} and "ioi: AOPC attnlrp - random" in s["intervals"]
    back = load_result(r.save(tmp_path / "run"))
    assert isinstance(back, LrpResult)
    assert back.summary() == {**s, "run": str(tmp_path / "run")}
    assert torch.equal(back.relevance_maps["attnlrp"], r.relevance_maps["attnlrp"])
    assert back.report_sections()[0].figures


def test_explicit_prompt_target_and_contrast(tiny_llama):
    r = run(tiny_llama, LrpConfig(prompts=("Alice met Bob and gave a book to",), target=" Bob", contrast=" Alice",
                                  max_delete=2, n_random=0), progress=False)
    assert r.targets == [" Bob"] and r.contrasts == [" Alice"]
    ids = tiny_llama.to_tokens("Alice met Bob and gave a book to")[0]
    with torch.no_grad():
        lg = tiny_llama.hf(input_ids=ids).logits[0, -1]
    expected = float(lg[tiny_llama.token_id(" Bob")] - lg[tiny_llama.token_id(" Alice")])
    assert float(r.target_values[0]) == pytest.approx(expected, abs=1e-4)
    top = run(tiny_llama, LrpConfig(prompts=("one two three",), max_delete=1, n_random=0), progress=False)
    assert top.contrasts == [None] and top.conservation_error < CONSERVATION_TOLERANCE


def test_bad_prompt_inputs(tiny_llama):
    with pytest.raises(InputError, match="empty"):
        run(tiny_llama, LrpConfig(prompts=("   ",)), progress=False)
    with pytest.raises(InputError, match="tokens"):
        run(tiny_llama, LrpConfig(prompts=("hello there",), target=" Zqxjvbnmwplk"), progress=False)
    with pytest.raises(InputError, match="at least one"):
        run(tiny_llama, LrpConfig(prompts=("hello there",), max_delete=0), progress=False)


def test_cli_prompt_json_and_errors(tmp_path):
    proc = _cli("lrp", "--model", "tiny-llama", "--prompt", "When Mary and John went to the store, John gave a drink to",
                "--target", " Mary", "--contrast", " John", "--max-delete", "2", "--json", "--out", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == PROMPT_KEYS | {"run"}
    assert doc["tokens"][1] == " Mary" and doc["conservation_error"] < CONSERVATION_TOLERANCE
    empty = _cli("lrp", "--model", "tiny-llama", "--prompt", "", "--json")
    assert empty.returncode == 2 and "prompt is empty" in empty.stderr and "Traceback" not in empty.stderr
    bad = _cli("lrp", "--model", "tiny-llama", "--prompt", "hi there", "--target", " Zqxjvbnmwplk", "--json")
    assert bad.returncode == 2 and "not one" in bad.stderr and "Traceback" not in bad.stderr
    assert not list(tmp_path.glob("*/.*tmp*"))


# ---------------------------------------------------------------------------- images
def test_image_result_summary_and_round_trip(image_result, tmp_path):
    r = image_result
    s = r.summary()
    assert set(s) == IMAGE_KEYS
    assert s["top_classes"]["coffee"][0]["name"] in {"espresso", "cup", "coffee mug", "coffeepot"}
    assert set(s["aopc"]) == {"lrp", "sr", "gradient", "random"}
    assert r.saliency_maps["lrp"].shape == (1, 96, 96) and r.image_crops.dtype == torch.uint8
    assert float(r.saliency_maps["sr"].max()) == pytest.approx(1.0)
    back = load_result(r.save(tmp_path / "img"))
    assert isinstance(back, LrpImageResult) and back.summary() == {**s, "run": str(tmp_path / "img")}
    assert back.report_sections()[0].figures


def test_bad_image_inputs(tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_text("not really a jpeg")
    with pytest.raises(InputError, match="not a readable image"):
        run(None, LrpImageConfig(images=(str(fake),)), progress=False)
    with pytest.raises(InputError, match="no image"):
        run(None, LrpImageConfig(images=()), progress=False)
    with pytest.raises(InputError, match="composite"):
        run(None, LrpImageConfig(composite="nope"), progress=False)
    proc = _cli("lrp", "--image", str(fake), "--json")
    assert proc.returncode == 2 and "not a readable image" in proc.stderr and "Traceback" not in proc.stderr
    two = np.zeros((40, 40, 2), dtype=np.uint8)
    np.save(tmp_path / "two.npy", two)
    proc = _cli("lrp", "--image", str(tmp_path / "two.npy"), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_cli_image_json(tmp_path):
    proc = _cli("lrp", "--image", "chelsea", "--size", "64", "--steps", "1", "--json", "--out", str(tmp_path / "i"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == IMAGE_KEYS | {"run"} and "chelsea" in doc["top_classes"]


# ---------------------------------------------------------------------------- app and notebook
def test_app_page_with_saved_runs(prompt_result, image_result):
    from conftest import analysis_page_app

    prompt_result.save()
    image_result.save()
    at = analysis_page_app("lrp", timeout=180).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 4
    assert any("conservation" in m.label for m in at.metric)
    at.radio(key="mode").set_value("image").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 2


@pytest.mark.slow
def test_notebook_executes_small(monkeypatch):
    from notebook_runner import execute_notebook

    outputs = execute_notebook("lrp_saliency.ipynb", monkeypatch, timeout=600)
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 5


# ---------------------------------------------------------------------------- the real model
@pytest.mark.real_model
def test_ioi_on_smollm2_conserves_and_finds_the_io_name(smollm2):
    r = run(smollm2, LrpConfig(n_prompts=2, max_delete=3, n_random=1), progress=False)
    assert r.conservation_error < CONSERVATION_TOLERANCE
    assert r.tasks == ["ioi", "successor"]
    assert all(v > 0 for v in r.target_values.tolist())  # the model prefers IO over S, the next item over the item
    assert r.io_share["attnlrp"] > 0.05  # the IO name carries a clear positive share for AttnLRP
    assert set(r.aopc) == {"attnlrp", "gradient_x_input", "rollout", "random"}


def test_sections_join_the_head_ablation_report(prompt_result, image_result):
    """``workbench ablate`` adds the latest run of every other analysis on the model through
    ``report_sections``; the LRP sections render into the same self-contained HTML."""
    from workbench.report import render, sections_for

    html = render("Head-ablation report", sections_for([prompt_result, image_result]))
    assert "LRP saliency: tokens and heads (AttnLRP)" in html
    assert "conservation error" in html and "EfficientNet-Lite0" in html
