"""Long-context prefill: the workbench's ``workbench.generation.prefill`` against a plain Hugging
Face forward with PyTorch's scaled-dot-product attention, on the same tokens, in one run.

Both build the key-value cache of all but the last token and unembed one position; the plain
forward runs a pristine copy of the model (``attn_implementation="sdpa"``, no workbench hook
points). Rounds alternate the two so a change in a shared machine's load falls on both; the
best round of each is reported, with their ratio.

    python benchmarks/bench_prefill.py --tokens 4096
    python benchmarks/bench_prefill.py --tokens 4096 --dtype bfloat16 --rounds 2 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.generation import prefill  # noqa: E402
from workbench.models import MODELS, load_model  # noqa: E402


def token_ids(model, n: int, seed: int = 0) -> list[int]:
    """``n`` token ids of ordinary text-like tokens (a fixed random draw below the special ids)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, 20000, (n,), generator=g).tolist()  # cpu: a Python list of ids


def plain_forward(hf, ids: torch.Tensor) -> float:
    """Seconds of one pristine forward that keeps the cache and unembeds the last position."""
    from transformers import DynamicCache

    start = time.perf_counter()
    with torch.no_grad():
        hf(input_ids=ids, use_cache=True, cache=DynamicCache(config=hf.config), logits_to_keep=1)
    return time.perf_counter() - start


def workbench_prefill(model, ids: list[int]) -> float:
    start = time.perf_counter()
    prefill(model, [ids])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=4096, help="prompt length (the prefill runs all but the last)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    model = load_model(args.model, device=args.device, dtype=dtype)
    hf, _ = MODELS[args.model].loader(dtype)
    hf.set_attn_implementation("sdpa")
    hf = hf.to(args.device).eval()
    ids = token_ids(model, args.tokens)
    plain_ids = torch.tensor([ids[:-1]], device=args.device)
    times: dict[str, list[float]] = {"workbench_prefill": [], "plain_sdpa_forward": []}
    for r in range(args.rounds):
        order = ["workbench_prefill", "plain_sdpa_forward"][:: 1 if r % 2 == 0 else -1]
        for name in order:
            dt = workbench_prefill(model, ids) if name == "workbench_prefill" else plain_forward(hf, plain_ids)
            times[name].append(dt)
            print(f"round {r + 1}: {name} {dt:.2f} s", file=sys.stderr, flush=True)
    best = {k: min(v) for k, v in times.items()}
    report = {"model": args.model, "tokens": args.tokens, "dtype": args.dtype, "device": args.device,
              "threads": torch.get_num_threads(), "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
              "best_s": {k: round(v, 2) for k, v in best.items()},
              "ratio_workbench_vs_plain": round(best["workbench_prefill"] / best["plain_sdpa_forward"], 3)}
    print(json.dumps(report, indent=2) if args.json else
          f"{args.model} {args.dtype}, {args.tokens} tokens: workbench prefill {best['workbench_prefill']:.2f} s, "
          f"plain SDPA forward {best['plain_sdpa_forward']:.2f} s, ratio {report['ratio_workbench_vs_plain']}")


if __name__ == "__main__":
    main()
