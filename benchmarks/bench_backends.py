"""Every backend against a pristine Hugging Face model (its own attention, no workbench hooks):
the largest logit difference over real tokens of a few prompts, per backend.

    python benchmarks/bench_backends.py [--model smollm2-135m] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The capital of France is",
           "One, two, three, four,", "def add(a, b):\n    return"]
BACKENDS = ("hf", "transformer_lens", "nnsight")


def main() -> None:
    from transformers import AutoModelForCausalLM

    from workbench.cache import run_with_cache
    from workbench.models import load_model
    from workbench.environment import cache_dir

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = load_model(args.model, backend="hf")
    converted = cache_dir("models", args.model)  # the embedded GGUF's float32 conversion
    pristine = AutoModelForCausalLM.from_pretrained(converted if converted.exists() else args.model,
                                                    dtype=torch.float32).eval()
    ids, mask = model.to_tokens(PROMPTS)
    with torch.no_grad():
        ref = pristine(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    rows = {"model": args.model, "n_prompts": len(PROMPTS), "n_tokens": int(real.sum()), "max_abs_logit_diff": {}}
    for backend in BACKENDS:
        logits, _ = run_with_cache(model.with_backend(backend), PROMPTS, [])
        rows["max_abs_logit_diff"][backend] = float((logits[real] - ref[real]).abs().max())
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for b, d in rows["max_abs_logit_diff"].items():
            print(f"{b:<18} max |logit diff| vs pristine HF: {d:.2e}")


if __name__ == "__main__":
    main()
