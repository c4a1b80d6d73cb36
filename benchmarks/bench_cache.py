"""Name-filtered caching against caching everything, for 64 IOI prompts on the embedded
model: wall time and peak memory of the cached activations, in one run.

    python benchmarks/bench_cache.py [--n 64] [--model smollm2-135m] [--json]
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from workbench.cache import run_with_cache
from workbench.datasets import ioi_prompts
from workbench.models import load_model


def measure(model, tokens, names):
    """Seconds, and the bytes the returned cache holds."""
    gc.collect()
    t0 = time.perf_counter()
    _, cache = run_with_cache(model, tokens, names, return_logits=False)
    seconds = time.perf_counter() - t0
    held = sum(cache[n].numel() * cache[n].element_size() for n in cache)
    del cache
    gc.collect()
    return seconds, held


def child(model_name: str, n: int, mode: str) -> dict:
    """One measurement in a fresh process, so its peak RSS is its own."""
    import resource

    model = load_model(model_name)
    tokens = ioi_prompts(n, model.tokenizer, seed=0).tokens(model)
    names = ["blocks.0.attn.hook_pattern"] if mode == "filtered" else model.hook_names
    measure(model, tokens, names[:1])  # warm-up
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds, held = measure(model, tokens, names)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"names": len(names), "seconds": seconds, "cached_bytes": held, "peak_rss_mb": peak,
            "peak_rss_over_model_mb": peak - base_rss, "positions": tokens.input_ids.shape[1]}


def main() -> None:
    import subprocess
    import sys

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["filtered", "everything"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.n, args.child)))
        return
    res = {}
    for mode in ("filtered", "everything"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--n", str(args.n), "--model", args.model],
                             capture_output=True, text=True, check=True).stdout
        res[mode] = json.loads(out.strip().splitlines()[-1])
    rows = {
        "model": args.model, "n_prompts": args.n, "positions": res["filtered"]["positions"],
        "filtered": res["filtered"], "everything": res["everything"],
        "memory_ratio": res["everything"]["cached_bytes"] / res["filtered"]["cached_bytes"],
        "peak_rss_ratio_over_model": res["everything"]["peak_rss_over_model_mb"] / max(res["filtered"]["peak_rss_over_model_mb"], 1.0),
        "time_ratio": res["everything"]["seconds"] / res["filtered"]["seconds"],
    }
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.model}, {args.n} IOI prompts x {rows['positions']} positions")
    print(f"{'cache':<12}{'names':>8}{'seconds':>10}{'held MB':>12}{'peak RSS MB':>14}{'peak over model':>17}")
    for k in ("filtered", "everything"):
        r = rows[k]
        print(f"{k:<12}{r['names']:>8}{r['seconds']:>10.2f}{r['cached_bytes'] / 2**20:>12.1f}"
              f"{r['peak_rss_mb']:>14.0f}{r['peak_rss_over_model_mb']:>17.0f}")
    print(f"caching everything holds {rows['memory_ratio']:.0f}x the memory of one layer's pattern "
          f"and takes {rows['time_ratio']:.2f}x the time")


if __name__ == "__main__":
    main()
