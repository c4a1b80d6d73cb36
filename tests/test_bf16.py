"""bfloat16 sweeps against float32: the same heads on top, effects within a stated tolerance.

Where float32 is kept in a bfloat16 run (the rest runs in bfloat16):
- the suffix engine's residual stream (``SuffixRunner.resid_dtype``): its sums over the layers;
- the attention softmax (eager path) and the fused attention's accumulators (PyTorch's own);
- the final norm's output and the unembedding (``suffix.unembed_float32``), and logit differences
  (``metrics.logit_diff``): a difference of two logits of size 10-20 loses its digits in 16 bits.

Tolerances (effect = mean over prompts of patched minus clean logit difference):
- the hand-built planted model: every effect within 0.5% of the largest (measured 0.05%), the
  planted heads ranked the same;
- random tiny models of each family: within 0.002 logit-difference units (measured <= 0.0008;
  their effects are below 0.03), the top head the same;
- the embedded model (``real_model``; 16 IOI prompts): within 0.06 units (measured 0.040 with
  the largest effect 0.95 on every third layer), the top 5 heads the same.
"""
from __future__ import annotations

import pytest
import torch

from workbench.cache import Tokens, run_with_cache
from workbench.patching.engine import head_masks_all_positions, head_masks_per_position, run_head_patches
from workbench.patching.metrics import logit_diff
from planted_model import planted_model, planted_prompts


def effects(model, tokens: Tokens, corrupt: Tokens, correct, wrong, masks) -> torch.Tensor:
    """Mean effect per configuration [P] of a head sweep (corrupt z patched in)."""
    L = model.shape.n_layers
    _, cache = run_with_cache(model, corrupt, [f"blocks.{l}.attn.hook_z" for l in range(L)])
    source = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(L)}
    sweep = run_head_patches(model, tokens, source, masks, lambda lg, i: logit_diff(lg, correct[i], wrong[i]))
    assert sweep.metric.dtype == torch.float32
    return (sweep.metric - sweep.clean_metric).mean(1)


def _ranked(e: torch.Tensor, k: int) -> list[int]:
    return e.abs().argsort(descending=True)[:k].tolist()


@pytest.mark.parametrize("build", [head_masks_all_positions, head_masks_per_position])
def test_planted_model_in_bfloat16(build):
    clean, corrupt, correct, wrong = planted_prompts(16, seed=0)
    tokens, ctok = Tokens(clean, torch.ones_like(clean)), Tokens(corrupt, torch.ones_like(corrupt))
    m32, m16 = planted_model(), planted_model()
    m16.hf.to(torch.bfloat16)
    masks = build(m32.shape.n_layers, m32.shape.n_heads, clean.shape[1])
    e32 = effects(m32, tokens, ctok, correct, wrong, masks)
    e16 = effects(m16, tokens, ctok, correct, wrong, masks)
    assert float((e16 - e32).abs().max()) <= 0.005 * float(e32.abs().max())
    assert _ranked(e16, 4) == _ranked(e32, 4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-neox"])
def test_tiny_models_in_bfloat16(name):
    from workbench.datasets.ioi import ioi_prompts
    from workbench.models import load_model

    out = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(name, dtype=dtype)
        ps = ioi_prompts(8, model.tokenizer, seed=0)
        correct, wrong = ps.answer_ids(model)
        masks = head_masks_all_positions(model.shape.n_layers, model.shape.n_heads, ps.tokens(model).input_ids.shape[1])
        out[dtype] = effects(model, ps.tokens(model), ps.corrupt_tokens(model), correct, wrong, masks)
    assert torch.isfinite(out["bfloat16"]).all()
    assert float((out["bfloat16"] - out["float32"]).abs().max()) <= 0.002
    assert _ranked(out["bfloat16"], 1) == _ranked(out["float32"], 1)


@pytest.mark.real_model
def test_embedded_model_in_bfloat16():
    from workbench.datasets.ioi import TEMPLATES, ioi_prompts
    from workbench.models import load_model

    out = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model("smollm2-135m", dtype=dtype)
        s = model.shape
        ps = ioi_prompts(16, model.tokenizer, seed=0, templates=[TEMPLATES[0]])
        tokens = ps.tokens(model)
        correct, wrong = ps.answer_ids(model)
        masks = head_masks_all_positions(s.n_layers, s.n_heads, tokens.input_ids.shape[1])
        layers = [l for l in range(s.n_layers) if l % 3 == 1]
        masks = masks[[l * s.n_heads + h for l in layers for h in range(s.n_heads)]]
        out[dtype] = effects(model, tokens, ps.corrupt_tokens(model), correct, wrong, masks)
    assert float((out["bfloat16"] - out["float32"]).abs().max()) <= 0.06
    assert _ranked(out["bfloat16"], 5) == _ranked(out["float32"], 5)
