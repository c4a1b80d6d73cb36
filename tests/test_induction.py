"""The induction analysis, the acceptance demo of "a new analysis is one folder plus one
registry line": known answers on planted heads (an exact induction head, an exact
previous-token head, a uniform head with a closed-form score), then the command, page,
results store and report it gets from its spec alone."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from fractions import Fraction

import pytest
import torch

from workbench.analyses.induction.analysis import (InductionConfig, InductionResult, check_model, repeated_tokens, run,
                                         uniform_baseline)
from workbench.errors import InputError
from workbench.results import load_result
from workbench.spec import check_config, get_spec


def _induction_pattern(pattern: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[query key]: second-copy queries attend only to q - (seq_len - 1), the rest to themselves."""
    n = pattern.shape[-1]
    start = n - seq_len  # first query of the second copy
    out = torch.eye(n, dtype=pattern.dtype)
    for q in range(start, n):
        out[q] = 0
        out[q, q - (seq_len - 1)] = 1
    return out


def _prev_token_pattern(pattern: torch.Tensor) -> torch.Tensor:
    n = pattern.shape[-1]
    out = torch.zeros(n, n, dtype=pattern.dtype)
    out[0, 0] = 1
    out[torch.arange(1, n), torch.arange(0, n - 1)] = 1
    return out


def _uniform_pattern(pattern: torch.Tensor) -> torch.Tensor:
    n = pattern.shape[-1]
    low = torch.tril(torch.ones(n, n, dtype=torch.float64))
    return (low / low.sum(dim=1, keepdim=True)).to(pattern.dtype)


@contextmanager
def planted(model, plants: dict[tuple[int, int], object]):
    """Overwrite heads' attention patterns with forward hooks on the workbench hook points
    ``blocks.{l}.attn.hook_pattern`` (removed afterwards: the model is shared)."""
    handles = []
    try:
        for layer in {l for l, _ in plants}:
            def hook(module, inputs, pattern, layer=layer):
                pattern = pattern.clone()
                for (l, h), make in plants.items():
                    if l == layer:
                        pattern[:, h] = make(pattern).to(pattern.device)
                return pattern
            handles.append(model.hook_points[f"blocks.{layer}.attn.hook_pattern"].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("bos", [True, False])
def test_planted_heads_score_exactly(tiny_llama, bos):
    seq_len = 7
    cfg = InductionConfig(n_prompts=6, seq_len=seq_len, batch_size=4, prepend_bos=bos, seed=2)
    plants = {(1, 0): lambda p: _induction_pattern(p, seq_len), (0, 1): _prev_token_pattern, (1, 2): _uniform_pattern}
    with planted(tiny_llama, plants):
        result = run(tiny_llama, cfg, progress=False)
    ind, prev = result.induction_score, result.prev_token_score
    assert ind.shape == prev.shape == (2, 4)
    # the planted induction head scores exactly 1 and is ranked first; it never looks one back
    assert abs(ind[1, 0].item() - 1.0) < 1e-6
    assert (result.top_heads[0].layer, result.top_heads[0].head) == (1, 0)
    assert abs(prev[1, 0].item()) < 1e-6
    # the planted previous-token head: prev-token score exactly 1
    assert abs(prev[0, 1].item() - 1.0) < 1e-6
    assert prev.flatten().argmax().item() == 1
    # a uniform head: the mean of 1/(q+1) over the second-copy queries, exactly
    start = int(bos) + seq_len
    exact = sum(Fraction(1, q + 1) for q in range(start, start + seq_len)) / seq_len
    assert abs(ind[1, 2].item() - float(exact)) < 1e-6
    assert abs(result.uniform_baseline - float(exact)) < 1e-12 and abs(uniform_baseline(seq_len, bos) - float(exact)) < 1e-12
    # only the planted head passes the threshold (the random heads are near uniform)
    assert result.induction_heads == ["L1H0"] and result.n_induction_heads == 1
    assert result.bos is bos and result.n_prompts == 6 and result.seq_len == seq_len
    # ranked on the even sequences, scored on the odd ones: the planted head is #1 with the exact
    # held-out score 1 and a zero-width interval over the 3 held-out sequences
    first = next(iter(result.intervals.items()))
    assert first[0].endswith("(L1H0)") and first[1].split == "held-out half" and first[1].n == 3
    assert abs(first[1].value - 1) < 1e-6 and abs(first[1].low - 1) < 1e-6 and abs(first[1].high - 1) < 1e-6
    # the hooks are gone: the same run without them has no induction head
    assert run(tiny_llama, cfg, progress=False).n_induction_heads == 0


def test_batching_does_not_change_scores(tiny_llama):
    a = run(tiny_llama, InductionConfig(n_prompts=5, seq_len=6, batch_size=2, seed=1), progress=False)
    b = run(tiny_llama, InductionConfig(n_prompts=5, seq_len=6, batch_size=5, seed=1), progress=False)
    assert torch.allclose(a.induction_score, b.induction_score, atol=1e-6)
    assert torch.allclose(a.prev_token_score, b.prev_token_score, atol=1e-6)


def test_repeated_tokens_layout(tiny_llama):
    cfg = InductionConfig(n_prompts=4, seq_len=9, seed=3)
    tokens = repeated_tokens(tiny_llama, cfg)
    bos = tiny_llama.tokenizer.bos_token_id
    assert tokens.shape == (4, 1 + 18) and (tokens[:, 0] == bos).all()
    first, second = tokens[:, 1:10], tokens[:, 10:]
    assert torch.equal(first, second)
    assert all(len(set(row.tolist())) == 9 for row in first)  # one earlier occurrence per second-copy token
    assert not set(first.flatten().tolist()) & set(tiny_llama.tokenizer.all_special_ids)
    assert torch.equal(tokens, repeated_tokens(tiny_llama, cfg))
    assert not torch.equal(tokens, repeated_tokens(tiny_llama, InductionConfig(n_prompts=4, seq_len=9, seed=4)))
    assert repeated_tokens(tiny_llama, InductionConfig(n_prompts=2, seq_len=5, prepend_bos=False)).shape == (2, 10)


def test_bad_settings_are_one_line_errors(tiny_llama):
    with pytest.raises(InputError, match="--seq-len"):
        check_config(InductionConfig(seq_len=1))
    with pytest.raises(InputError, match="--n"):
        check_config(InductionConfig(n_prompts=0))
    with pytest.raises(InputError, match="--threshold"):
        check_config(InductionConfig(threshold=1.5))
    with pytest.raises(InputError, match="--seq-len 300 makes 601 positions"):
        check_model(InductionConfig(seq_len=300), tiny_llama)
    with pytest.raises(InputError, match="--seq-len"):
        run(tiny_llama, InductionConfig(seq_len=300), progress=False)


def test_result_round_trip_and_spec(tiny_llama, tmp_path):
    result = run(tiny_llama, InductionConfig(n_prompts=3, seq_len=5), progress=False)
    back = load_result(result.save(tmp_path / "run"))
    assert isinstance(back, InductionResult) and back.config == result.config
    assert torch.equal(back.induction_score, result.induction_score) and back.top_heads == result.top_heads
    spec = get_spec("induction")
    assert spec.result is InductionResult and spec.config is InductionConfig
    assert [s.title for s in spec.sections(back)] == ["Induction heads", "Previous-token heads", "Intervals"]
    assert [label for label, _ in spec.headline(back)][0] == "top induction head"


def _cli(*args, **kw):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=600,
                          env=env, **kw)


def test_cli_help_lists_options_from_the_config():
    proc = _cli("induction", "--help")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.strip().startswith("│ --")}
    assert "[default: 32]" in lines["--n"]
    assert "[default: 20]" in lines["--seq-len"] and "[default: 0.4]" in proc.stdout
    for flag in ("--threshold", "--top-k", "--batch-size", "--prepend-bos", "--model", "--seed", "--json", "--out"):
        assert flag in lines, flag


def test_cli_runs_and_saves_a_run_folder(tmp_path):
    out = tmp_path / "run"
    proc = _cli("induction", "--model", "tiny-llama", "--n", "4", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"top_heads", "n_induction_heads", "n_prompts", "seq_len", "run"} <= set(doc)
    assert doc["n_prompts"] == 4 and doc["seq_len"] == 20
    back = load_result(out)
    assert isinstance(back, InductionResult) and back.config.n_prompts == 4
    assert back.induction_score.shape == (2, 4) and [dataclasses.asdict(t) for t in back.top_heads] == doc["top_heads"]


@pytest.fixture
def saved_induction(tiny_llama):
    return run(tiny_llama, InductionConfig(n_prompts=3, seq_len=6), progress=False).save()


def test_page_shows_saved_run(saved_induction):
    from conftest import analysis_page_app

    at = analysis_page_app("induction").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 3
    assert [m.label for m in at.metric][:2] == ["top induction head", "heads ≥ 0.4"]
    assert "Induction heads" in [h.value for h in at.subheader]


def test_ablation_report_includes_induction_section(tiny_llama, saved_induction):
    from workbench.analyses.ablation.analysis import AblationConfig
    from workbench.analyses.ablation.analysis import run as run_ablation
    from workbench.report import run_report

    ablation = run_ablation(tiny_llama, AblationConfig(n_prompts=2), progress=False)
    ablation.save()
    html = run_report(ablation, "Head-ablation report")
    assert "Head ablation" in html and "<h2>Induction heads</h2>" in html and "<h2>Previous-token heads</h2>" in html


@pytest.mark.real_model
def test_embedded_model_has_induction_heads(smollm2):
    result = run(smollm2, InductionConfig(n_prompts=8, seq_len=20), progress=False)
    print("top", result.top_heads[:3], "n over threshold", result.n_induction_heads)
    assert result.induction_score.shape == (30, 9)
    assert result.max_induction_score > 0.4 and result.n_induction_heads >= 1
    assert result.top_heads[0].layer > 0  # an induction head needs a previous-token head before it
    assert float(result.prev_token_score.max()) > 0.4
