"""The retrieval-head analysis end to end on tiny settings: needle prompts, bad inputs,
the result round trip, --json keys, the app page, the causal test on a hand-built model,
and (marked) the embedded model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.analyses.retrieval.analysis import RetrievalConfig, run, validate
from workbench.datasets.needles import DEFAULT_NEEDLES, build_needle_tests, read_haystack
from workbench.errors import InputError
from workbench.results import load_result

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(context_lengths=(120,), depths=(50,), n_needles=1, n_eval_needles=2, mask_ks=(1,), n_random=1, kv_protect=2,
            max_new_tokens=3, kv_window=8)


# ---------------------------------------------------------------------------- needles
def test_needle_span_and_sentence_boundary(tiny_llama):
    tok = tiny_llama.tokenizer
    ns = build_needle_tests(tok, [300, 500], [0, 50, 100], DEFAULT_NEEDLES[:2], chat=True)
    assert len(ns) == 2 * 2 * 3
    for t in ns.tests:
        assert len(t.ids) <= t.context_length
        assert tok.decode(t.ids[t.answer_start:t.answer_end]).strip() == t.needle.answer.strip()
        lead_start = t.answer_start - len(tok.encode(t.needle.lead, add_special_tokens=False))
        before = tok.decode(t.ids[lead_start - 1:lead_start])
        if t.depth > 0:
            assert before.rstrip().endswith((".", "!", "?")), before  # inserted at a sentence boundary
    shallow = [t.answer_start for t in ns.tests if t.context_length == 500 and t.needle is DEFAULT_NEEDLES[0]]
    assert shallow == sorted(shallow)  # deeper needles sit later


def test_needle_longer_than_context_is_a_clear_error(tiny_llama):
    with pytest.raises(InputError, match="more than the context length 30"):
        build_needle_tests(tiny_llama.tokenizer, [30], [50])
    with pytest.raises(InputError, match="exceeds the model's context"):
        build_needle_tests(tiny_llama.tokenizer, [600], [50], n_ctx=512)


def test_bad_haystack_files(tmp_path, tiny_llama):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x89PNG\x00\x01\x02" * 50)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 20)
    for path, msg in [(empty, "is empty"), (binary, "not text"), (latin, "not UTF-8"), (tmp_path / "nope.txt", "does not exist")]:
        with pytest.raises(InputError, match=msg):
            read_haystack(path)
    good = tmp_path / "story.txt"
    good.write_text("The cat sat on the mat. The dog barked at the moon. " * 30)
    ns = build_needle_tests(tiny_llama.tokenizer, [200], [50], DEFAULT_NEEDLES[:1], haystack_file=good)
    assert ns.source == str(good) and len(ns) == 1


@pytest.mark.parametrize("field,value", [("threshold", 1.2), ("threshold", -0.5), ("rouge_threshold", 2.0)])
def test_threshold_outside_unit_interval(field, value):
    with pytest.raises(InputError, match="outside 0..1"):
        validate(RetrievalConfig(**{field: value}))


def test_cli_rejects_bad_threshold_in_one_line():
    out = subprocess.run([sys.executable, "-m", "workbench", "retrieval", "--threshold", "1.5"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: threshold=1.5 is outside 0..1") and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "workbench", "sinks", "--beta", "-1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "beta=-1.0 is outside 0..1" in out.stderr and "Traceback" not in out.stderr


def test_cli_rejects_empty_haystack(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = subprocess.run([sys.executable, "-m", "workbench", "retrieval", "--haystack", str(empty)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "is empty" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------------------- run
@pytest.fixture(scope="module")
def tiny_result():
    from workbench.models import load_model

    return run(load_model("tiny-llama"), RetrievalConfig(**TINY), progress=False)


def test_result_round_trips_with_the_issue_keys(tiny_result, tmp_path):
    r = tiny_result
    assert r.scores.shape == (2, 4)
    s = r.summary()
    assert set(s) >= {"scores", "retrieval_heads", "masking", "kv_compression", "splits", "figure_splits"}
    assert set(s["masking"]) >= {"k", "top_accuracy", "random_accuracy", "top_low", "top_high", "n_tests", "split"}
    assert s["splits"]["ranking"]["n_tests"] == 1 and s["splits"]["heldout"]["n_tests"] == 2
    assert s["masking"]["k"] == [0, 1] and len(s["masking"]["top_accuracy"]) == 2
    assert len(s["scores"]) == 2 and len(s["scores"][0]) == 4
    kv = r.kv_compression
    assert 0 < kv.cache_kept <= 1
    back = load_result(r.save(tmp_path / "run"))
    assert back.document()[0]["data"] == json.loads(json.dumps(r.document()[0]["data"]))
    torch.testing.assert_close(back.scores, r.scores)
    assert back.summary()["run"] == str(tmp_path / "run")
    assert back.config.context_lengths == (120,)
    assert [sec.title for sec in back.report_sections()][0] == "Retrieval heads: scores (ranking split)"
    assert back.intervals == r.intervals and back.intervals["top-1 retrieval heads masked"].split == "heldout"
    from workbench.report import render

    html = render("head-ablation report", back.report_sections())  # the sections the ablation report includes
    assert "Retrieval heads: KV-cache compression" in html and html.count("plotly-graph-div") >= 5


def test_retrieval_page_shows_saved_run(tiny_result):
    from conftest import analysis_page_app

    tiny_result.save()
    at = analysis_page_app("retrieval").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 5
    assert [m.label for m in at.metric][:3] == ["retrieval heads", "share over threshold", "held-out needle accuracy"]


# ---------------------------------------------------------------------------- embedded model
@pytest.mark.real_model
def test_smollm2_has_retrieval_heads(smollm2):
    r = run(smollm2, RetrievalConfig(context_lengths=(250,), depths=(50,), n_needles=1, n_eval_needles=1, mask_ks=(3,),
                                     n_random=1, kv_protect=10, max_new_tokens=20), progress=False)
    assert r.n_counted == 1  # the needle is recalled
    assert r.n_retrieval_heads >= 3
    assert float(r.scores.max()) > 0.3
    assert r.share_over_threshold < 0.2  # sparse, as Wu et al. find


def _execute_notebook(name: str, monkeypatch) -> list:
    from notebook_runner import execute_notebook

    outputs = execute_notebook(name, monkeypatch, timeout=600, cwd=ROOT / "notebooks")
    return outputs


@pytest.mark.slow
def test_retrieval_notebook_executes_small(monkeypatch):
    outputs = _execute_notebook("retrieval_heads.ipynb", monkeypatch)
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 4
