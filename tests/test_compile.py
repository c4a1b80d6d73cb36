"""--compile: the patching engine's suffix forward under torch.compile gives the eager engine's
effects, and one compiled graph serves every layer (the layer's modules are arguments, the batch
and position sizes dynamic), so a model's depth does not multiply the compile time.

Slow (inductor compiles C++ on first use: about a minute on an idle core), so marked ``slow``."""
from __future__ import annotations

import pytest
import torch

from workbench.cache import run_with_cache
from workbench.models import compile_wanted, load_model
from workbench.patching.engine import head_masks_all_positions, head_masks_per_position, run_head_patches
from workbench.patching.metrics import logit_diff


def test_the_environment_variable_reaches_load_model(monkeypatch):
    monkeypatch.setenv("WORKBENCH_COMPILE", "1")
    assert compile_wanted(None) is True
    assert compile_wanted(False) is False
    monkeypatch.setenv("WORKBENCH_COMPILE", "0")
    assert compile_wanted(None) is False
    assert load_model("tiny-llama").compile is False
    assert load_model("tiny-llama", compile=True).with_backend("hf").compile is True


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_sweep_equals_eager(dtype):
    from torch._dynamo.utils import counters

    from workbench.datasets.ioi import ioi_prompts

    torch._dynamo.reset()
    counters.clear()
    out = {}
    for compiled in (False, True):
        model = load_model("tiny-llama", dtype=dtype, compile=compiled)
        ps = ioi_prompts(4, model.tokenizer, seed=0)
        tokens, (correct, wrong) = ps.tokens(model), ps.answer_ids(model)
        L, H, T = model.shape.n_layers, model.shape.n_heads, tokens.input_ids.shape[1]
        _, cache = run_with_cache(model, ps.corrupt_tokens(model), [f"blocks.{l}.attn.hook_z" for l in range(L)])
        source = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(L)}
        masks = torch.cat([head_masks_all_positions(L, H, T), head_masks_per_position(L, H, T)[::5]])
        out[compiled] = run_head_patches(model, tokens, source, masks, lambda lg, i: logit_diff(lg, correct[i], wrong[i]),
                                         max_batch=16).metric
    # float32: the same arithmetic up to fusion's reordering; bfloat16: fused ops round once, eager per op
    tol = 1e-4 if dtype == "float32" else 5e-3
    assert float((out[True] - out[False]).abs().max()) <= tol
    # two steps (q/k/v, then the MLP), each a few graphs (Dynamo breaks them where the adapter's
    # Python code does) for all layers and chunk sizes, plus PyTorch's specialisations (a
    # one-position suffix): 11 measured in float32; 30 layers recompiled per layer would be
    # far more and hit Dynamo's recompile limit
    assert counters["stats"]["unique_graphs"] <= 12


def test_the_cli_flag_reaches_the_model(monkeypatch):
    """`--compile` is a common option of every analysis command; without it the environment
    variable still decides."""
    from typer.testing import CliRunner

    from workbench.cli import app, register_analyses
    from workbench.cli.analysis import Common, load_common

    monkeypatch.delenv("WORKBENCH_COMPILE", raising=False)
    assert load_common(Common(model="tiny-llama", compile=True)).compile is True
    assert load_common(Common(model="tiny-llama")).compile is False
    monkeypatch.setenv("WORKBENCH_COMPILE", "1")
    assert load_common(Common(model="tiny-llama")).compile is True
    register_analyses()
    help_text = CliRunner().invoke(app, ["ablation", "--help"], env={"COLUMNS": "200"}).output
    assert "--compile" in help_text
