"""The head-ablation job: batched ablation equals one forward per head, deterministic,
and the report is complete."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from workbench.analyses.ablation.analysis import AblationConfig, mean_head_outputs, run
from workbench.cache import run_with_patches
from workbench.datasets import PromptSet, ioi_prompts
from workbench.errors import InputError
from workbench.patching import logit_diff
from workbench.results import load_result


def test_batched_ablation_equals_one_forward_per_head(tiny_llama):
    cfg = AblationConfig(n_prompts=6, seed=3, batch_size=40)
    result = run(tiny_llama, cfg, progress=False)
    ps = ioi_prompts(6, tiny_llama.tokenizer, seed=3)
    correct, wrong = ps.answer_ids(tiny_llama)
    means = mean_head_outputs(tiny_llama, ps.corrupt)
    ids, mask = tiny_llama.to_tokens(ps.prompts)
    last = mask.sum(1) - 1
    clean = run_with_patches(tiny_llama, (ids, mask), {})[torch.arange(6), last]
    base = logit_diff(clean, correct, wrong)
    for layer, head in [(0, 0), (1, 3)]:
        def ablate(z, head=head, layer=layer):
            z = z.clone()
            z[:, :, head] = means[layer][head]
            return z
        logits = run_with_patches(tiny_llama, (ids, mask), {f"blocks.{layer}.attn.hook_z": ablate})[torch.arange(6), last]
        expected = (logit_diff(logits, correct, wrong) - base).mean()
        assert abs(result.effect[layer, head].item() - expected.item()) < 1e-4


def test_same_seed_same_numbers(tiny_llama, tmp_path):
    a = run(tiny_llama, AblationConfig(n_prompts=4, seed=1), progress=False)
    b = run(tiny_llama, AblationConfig(n_prompts=4, seed=1), progress=False)
    assert torch.equal(a.effect, b.effect) and a.top_heads == b.top_heads
    back = load_result(a.save(tmp_path / "run"))
    assert torch.equal(back.effect, a.effect) and back.config == a.config


def test_answers_must_be_single_tokens(tiny_llama):
    ps = PromptSet(["Alice met Bartholomew and gave a book to"], [" Bartholomew"], [" Alice"])
    with pytest.raises(InputError, match="not one"):
        ps.answer_ids(tiny_llama)


def test_unknown_task_and_empty_n(tiny_llama):
    with pytest.raises(InputError, match="unknown task"):
        run(tiny_llama, AblationConfig(task="nope"), progress=False)
    with pytest.raises(InputError, match="--n must be at least 1"):  # the command line's line, from run() too
        run(tiny_llama, AblationConfig(n_prompts=0), progress=False)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=600, **kw)


def test_cli_ablate_json_and_report(tmp_path):
    out = tmp_path / "run"
    proc = _cli("ablate", "--model", "tiny-llama", "--n", "4", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"clean_logit_diff", "accuracy", "top_heads", "report"} <= set(doc)
    assert set(doc["top_heads"][0]) == {"layer", "head", "effect"}
    html = (out / "report.html").read_text()
    assert "Head ablation" in html and "plotly" in html.lower() and "<script src=" not in html  # offline


def test_cli_errors_are_one_line(tmp_path):
    proc = _cli("ablate", "--model", "no-such-model", "--n", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in proc.stderr
    blocker = tmp_path / "f"
    blocker.write_text("x")
    proc = _cli("ablate", "--model", "tiny-llama", "--n", "2", "--out", str(blocker / "run"))
    assert proc.returncode == 2 and "cannot write run folder" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.real_model
def test_embedded_model_does_ioi_and_ablation_is_deterministic(smollm2):
    cfg = AblationConfig(n_prompts=4, seed=0)
    a = run(smollm2, cfg, progress=False)
    b = run(smollm2, cfg, progress=False)
    print("clean logit diff", a.clean_logit_diff, "accuracy", a.accuracy, "top", a.top_heads[:3])
    assert torch.equal(a.effect, b.effect)
    assert a.clean_logit_diff > 1.0 and a.accuracy >= 0.75
    assert a.effect.shape == (30, 9)
