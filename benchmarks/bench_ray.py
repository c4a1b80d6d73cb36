"""Sweeps on Ray: the ablation head sweep (mean ablation of every head, IOI prompts, the
batched suffix engine) in one process and on a local Ray cluster with 1 and 2 workers; the
per-unit overhead of the Ray layer; the per-token-layer cost of a forward, and from it a
projection of a full head-by-position sweep of a 7B model over 8 GPUs (a projection, not a
measurement).

    python benchmarks/bench_ray.py                      # smollm2-135m, 4 prompts, all 270 heads
    python benchmarks/bench_ray.py --json
    python benchmarks/bench_ray.py --per-token-only --device cuda   # the per-token cost on a GPU

Every Ray run is checked against the one-process run (torch.equal of the metric)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.models import load_model  # noqa: E402
from workbench.parallel import MapStats, map_units, run_head_patches_parallel  # noqa: E402
from workbench.patching import head_masks_all_positions, logit_diff, run_head_patches  # noqa: E402


@dataclass
class Noop:
    def __call__(self):
        return lambda u: u


def per_token_layer_seconds(model, batch: int = 32, pos: int = 20, reps: int = 3) -> tuple[float, float]:
    """Seconds per token per decoder layer of a plain batched forward, and the FLOPs of one
    token-layer (2 x the layer's parameters)."""
    ids = torch.randint(100, 1000, (batch, pos), device=model.device)
    with torch.no_grad():
        model.hf(input_ids=ids, use_cache=False)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            model.hf(input_ids=ids, use_cache=False)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t) / reps
    layer = model.adapter.layers(model.hf)[0]
    flops = 2 * sum(p.numel() for p in layer.parameters())
    return sec / (batch * pos * model.shape.n_layers), flops


def projection(sec_per_flop: float, gpus: int = 8, n_prompts: int = 100, pos: int = 20,
               gpu_flops: float = 0.4 * 989e12) -> dict:
    """A full head x position sweep of a Llama-2-7B-shaped model (32 layers x 32 heads, 202M
    parameters a layer) with the suffix engine: configuration (l, h, p) recomputes layers l..L-1
    at positions p..pos-1, so a prompt costs H * L(L+1)/2 * pos(pos+1)/2 token-layers."""
    L, H, layer_params = 32, 32, 202e6
    token_layers = n_prompts * H * L * (L + 1) / 2 * pos * (pos + 1) / 2
    flops = token_layers * 2 * layer_params
    return {"model": "7B (Llama-2-7B shape: 32 layers x 32 heads, 202M params/layer)", "n_prompts": n_prompts,
            "positions": pos, "configurations": L * H * pos, "token_layers": token_layers, "flops": flops,
            "hours_on_this_cpu_one_worker": flops * sec_per_flop / 3600,
            "assumed_gpu_flops": gpu_flops, "gpus": gpus,
            "minutes_on_gpus_assumed_throughput": flops / (gpu_flops * gpus) / 60}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=4, help="IOI prompts")
    ap.add_argument("--per-chunk", type=int, default=8, help="head configurations per forward (engine chunk)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--per-token-only", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = load_model(args.model, device=args.device)
    sec_tl, flops_tl = per_token_layer_seconds(model)
    out: dict = {"model": args.model, "device": args.device, "cpus": os.cpu_count(),
                 "per_token_layer_seconds": sec_tl, "per_token_layer_flops": flops_tl,
                 "achieved_flops_per_second": flops_tl / sec_tl}
    if not args.per_token_only:
        out.update(sweeps(model, args))
    out["projection_7b_8gpus"] = projection(sec_tl / flops_tl)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>28}: {v}")


def sweeps(model, args) -> dict:
    from workbench.analyses.ablation.analysis import build_prompts, mean_head_outputs, AblationConfig
    import ray

    s = model.shape
    ps = build_prompts(model, AblationConfig(n_prompts=args.n))
    tokens = ps.tokens(model)
    correct, wrong = ps.answer_ids(model)
    source = mean_head_outputs(model, ps.corrupt)

    def metric(last_logits, idx):
        return logit_diff(last_logits, correct[idx], wrong[idx])

    masks = head_masks_all_positions(s.n_layers, s.n_heads, tokens.input_ids.shape[1])
    max_batch = args.n * args.per_chunk
    res: dict = {"n_prompts": args.n, "configurations": masks.shape[0], "positions": tokens.input_ids.shape[1],
                 "chunks": -(-masks.shape[0] // args.per_chunk)}
    torch.set_num_threads(1)  # the same one thread as each Ray worker
    t = time.perf_counter()
    one = run_head_patches(model, tokens, source, masks, metric, max_batch=max_batch)
    res["one_process_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    res["ray_init_seconds"] = time.perf_counter() - t
    runs = {}
    for label, w in (("2_workers_cold", 2), ("2_workers", 2), ("1_worker", 1)):
        stats = MapStats()
        t = time.perf_counter()
        got = run_head_patches_parallel(model, tokens, source, masks, metric, max_batch=max_batch, workers=w,
                                        ray_address="auto", stats=stats)
        wall = time.perf_counter() - t
        runs[label] = {"seconds": wall, "units": stats.units, "startup_seconds": stats.startup_seconds,
                       "identical_to_one_process": bool(torch.equal(got.metric, one.metric)),
                       "configs_per_second": masks.shape[0] / wall}
    res["ray"] = runs
    res["one_process_configs_per_second"] = masks.shape[0] / res["one_process_seconds"]
    for w in (1, 2):
        map_units(Noop(), list(range(8)), workers=w, ray_address="auto")  # warm
        t = time.perf_counter()
        m = map_units(Noop(), list(range(200)), workers=w, ray_address="auto")
        res[f"per_unit_overhead_seconds_{w}_workers"] = (time.perf_counter() - t) / len(m.values)
    ray.shutdown()
    return res


if __name__ == "__main__":
    main()
