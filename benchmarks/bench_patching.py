"""Batched activation patching against the naive loop, on IOI prompts.

Two sweeps, the same patches timed for every method:
- ``head``: one configuration per (layer, head), patched at every position;
- ``head_pos``: one configuration per (layer, head, position).
Methods: (a) the naive TransformerLens loop (``run_with_hooks`` through the caching
layer's transformer_lens backend), one forward per patch; (b) the batched suffix-only
engine with the PyTorch reference op (its one clean run with cache, timed once per sweep,
is included in its time); (c) the same engine with the Triton kernel (CUDA only).
The arithmetic floor of a sweep is its suffix work alone (layers from the first patched
layer x positions from the first patched position, per configuration), timed as plain
batched forwards of the Hugging Face model (no hooks, same batch size) and scaled to the
sweep's token-layer count.

    python benchmarks/bench_patching.py                     # table
    python benchmarks/bench_patching.py --json              # {"sweeps": {"head": {...}, "head_pos": {...}}}
    python benchmarks/bench_patching.py --n-prompts 8 --layer-step 3 --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.cache import as_tokens, run_with_cache, run_with_patches  # noqa: E402
from workbench.datasets.ioi import TEMPLATES, ioi_prompts  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.patching.engine import (  # noqa: E402
    head_masks_all_positions, head_masks_per_position, run_head_patches)
from workbench.patching.metrics import logit_diff  # noqa: E402
from workbench.patching.suffix import clean_run, plan_chunks, suffix_work  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def subset(masks: torch.Tensor, layers: list[int], heads: list[int]) -> torch.Tensor:
    """Keep the configurations that patch only the chosen layers and heads."""
    keep = [i for i in range(masks.shape[0])
            if masks[i].any(dim=2).nonzero()[:, 0].unique().tolist()[0] in layers
            and masks[i].any(dim=2).nonzero()[:, 1].unique().tolist()[0] in heads]
    return masks[keep]


def mid_layers(n_layers: int, step: int) -> list[int]:
    """Every ``step``-th layer, from the middle of each block of ``step`` layers, so the subset's
    mean suffix depth matches the whole model's (a subset from layer 0 would overstate the work)."""
    return list(range(step // 2, n_layers, step))


def naive_loop(tl_model, tokens, source_z, masks, metric, device) -> tuple[float, torch.Tensor]:
    """One TransformerLens forward per configuration, patching z with a hook."""
    n = tokens.input_ids.shape[0]
    idx = torch.arange(n)
    rows = torch.arange(n, device=device)
    last = tokens.last_positions.to(device)
    out = []
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for cfg in masks:
            patches = {}
            for l in cfg.any(dim=(1, 2)).nonzero().flatten().tolist():
                m = cfg[l].T.to(device)  # [pos head]
                src = source_z[l]

                def fn(z, m=m, src=src):
                    return torch.where(m[None, :, :, None], src.to(z.dtype), z)

                patches[f"blocks.{l}.attn.hook_z"] = fn
            logits = run_with_patches(tl_model, tokens, patches)
            out.append(metric(logits[rows, last][None], idx)[0])
    _sync(device)
    return time.perf_counter() - start, torch.stack(out)


def plain_suffix_forwards(model, tokens, clean, masks, max_batch, device) -> float:
    """The arithmetic floor, timed: for the same chunks and the same token counts as the
    engine (layers from each configuration's first patched layer, positions from its first
    patched position), plain Hugging Face decoder-layer forwards on the clean residual
    stream, without prefix keys, patching or hooks; then the final norm and unembedding of
    the last positions. Seconds."""
    n = tokens.input_ids.shape[0]
    adapter = model.adapter
    layers = adapter.layers(model.hf)
    norm, unembed = adapter.final_norm(model.hf), adapter.unembed(model.hf)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for cfg, first_layers, p0 in plan_chunks(masks, max(1, max_batch // n)):
            t = tokens.input_ids.shape[1] - p0
            x, active = None, 0
            for l in range(first_layers[0], model.shape.n_layers):
                joining = sum(1 for f in first_layers[active:] if f == l)
                if joining:
                    xc = clean.resid_pre[l][:, p0:]
                    xj = xc.expand(joining, *xc.shape).reshape(joining * n, t, -1)
                    x = xj if x is None else torch.cat([x, xj])
                    active += joining
                mask = clean.mask_add[:, :, p0:, p0:].repeat(active, 1, 1, 1)
                rotary = None if clean.rotary is None else tuple(r[:, p0:] for r in clean.rotary)
                x = adapter.call_layer(layers[l], x, mask, rotary)
            last = (tokens.last_positions - p0).clamp(min=0).repeat(active)
            unembed(norm(x[torch.arange(x.shape[0]), last]))
    _sync(device)
    return time.perf_counter() - start


def time_engine(model, tokens, source_z, masks, metric, max_batch, kernel, device, clean):
    _sync(device)
    start = time.perf_counter()
    out = run_head_patches(model, tokens, source_z, masks, metric, max_batch=max_batch, kernel=kernel, clean=clean)
    _sync(device)
    return time.perf_counter() - start, out.metric


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--layer-step", type=int, default=1, help="time every k-th layer (all heads, all positions)")
    ap.add_argument("--pos-layer-step", type=int, default=3, help="layers for the head-by-position sweep: every k-th")
    ap.add_argument("--heads", type=int, default=0, help="head sweep: first k heads only (0: all)")
    ap.add_argument("--pos-heads", type=int, default=0, help="head-by-position sweep: first k heads only (0: all)")
    ap.add_argument("--max-batch", type=int, default=512, help="sequences per batched forward")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sweeps", default="head,head_pos")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--rounds", type=int, default=3, help="interleave the methods over this many slices of each sweep")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    model = load_model(args.model, device=args.device)
    tl_model = model.with_backend("transformer_lens")
    s = model.shape
    ps = ioi_prompts(args.n_prompts, model.tokenizer, seed=0, templates=[TEMPLATES[0]])
    tokens, corrupt = ps.tokens(model), ps.corrupt_tokens(model)
    correct, wrong = (ids.to(args.device) for ids in ps.answer_ids(model))
    metric = lambda lg, idx: logit_diff(lg, correct[idx], wrong[idx])  # noqa: E731
    n, t = tokens.input_ids.shape
    _, cache = run_with_cache(model, corrupt, [f"blocks.{l}.attn.hook_z" for l in range(s.n_layers)])
    source_z = {l: cache[f"blocks.{l}.attn.hook_z"].to(args.device) for l in range(s.n_layers)}  # the naive loop reads it on the model's device
    heads = list(range(args.heads or s.n_heads))
    sweeps = {
        "head": subset(head_masks_all_positions(s.n_layers, s.n_heads, t), mid_layers(s.n_layers, args.layer_step), heads),
        "head_pos": subset(head_masks_per_position(s.n_layers, s.n_heads, t), mid_layers(s.n_layers, args.pos_layer_step),
                           list(range(args.pos_heads or s.n_heads))),
    }
    on_cuda = args.device.startswith("cuda")
    _sync(args.device)
    start = time.perf_counter()
    clean = clean_run(model, tokens)  # the engine's one clean forward with its cache, timed once per sweep
    _sync(args.device)
    clean_s = time.perf_counter() - start
    log(f"{args.model} on {args.device}: {n} prompts x {t} tokens; "
        + ", ".join(f"{k}: {v.shape[0]} patches" for k, v in sweeps.items()))
    report = {"model": args.model, "n_prompts": n, "n_tokens": t, "max_batch": args.max_batch,
              "rounds": args.rounds, "clean_run_s": round(clean_s, 3), "sweeps": {}}
    for name in args.sweeps.split(","):
        masks = sweeps[name]
        p = masks.shape[0]
        times = {"naive": 0.0, "batched": clean_s, "kernel": clean_s, "floor": 0.0}
        got = {k: torch.zeros(p, n) for k in ("naive", "batched", "kernel")}
        methods = ["naive", "batched", "floor"] + (["kernel"] if on_cuda else [])
        # Rounds interleave the methods on slices of the sweep, so that a change in the load
        # of a shared machine falls on every method alike.
        for r in range(args.rounds):
            part = torch.arange(r, p, args.rounds)
            if len(part) == 0:
                continue
            sub = masks[part]
            for method in methods[r % len(methods):] + methods[: r % len(methods)]:
                log(f"[{name}] round {r + 1}/{args.rounds}: {method} on {len(part)} patches ...")
                if method == "naive":
                    dt, val = naive_loop(tl_model, tokens, source_z, sub, metric, args.device)
                elif method == "floor":
                    dt, val = plain_suffix_forwards(model, tokens, clean, sub, args.max_batch, args.device), None
                else:
                    dt, val = time_engine(model, tokens, source_z, sub, metric, args.max_batch,
                                          "reference" if method == "batched" else "triton", args.device, clean)
                times[method] += dt
                if val is not None:
                    got[method][part] = val.detach().float().cpu()
        kernel_s = times["kernel"] if on_cuda else None
        best = min(x for x in (times["batched"], kernel_s) if x is not None)
        report["sweeps"][name] = {
            "n_patches": p,
            "naive_s": round(times["naive"], 3),
            "batched_s": round(times["batched"], 3),
            "kernel_s": None if kernel_s is None else round(kernel_s, 3),
            "speedup_vs_naive": round(times["naive"] / best, 2),
            "vs_floor": round(best / times["floor"], 3),
            "vs_floor_without_clean_run": round((best - clean_s) / times["floor"], 3),
            "floor_s": round(times["floor"], 3),
            "naive_vs_floor": round(times["naive"] / times["floor"], 2),
            "suffix_work_share": round(suffix_work(masks, s.n_layers, t) / p, 4),
            "patches_per_s": {"naive": round(p / times["naive"], 3), "batched": round(p / times["batched"], 3),
                              "kernel": None if kernel_s is None else round(p / kernel_s, 3)},
            "max_abs_diff_vs_naive": float((got["batched"] - got["naive"]).abs().max()),
            "max_abs_diff_kernel_vs_reference": float((got["kernel"] - got["batched"]).abs().max()) if on_cuda else None,
            "device": torch.cuda.get_device_name() if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
        }
        log(f"[{name}] {json.dumps(report['sweeps'][name])}")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    cols = ["n_patches", "naive_s", "batched_s", "kernel_s", "floor_s", "speedup_vs_naive", "vs_floor",
            "vs_floor_without_clean_run", "max_abs_diff_vs_naive", "device"]
    print(f"{args.model}, {n} IOI prompts x {t} tokens, max_batch {args.max_batch}")
    print("sweep     " + " ".join(f"{c:>22}" for c in cols))
    for name, row in report["sweeps"].items():
        print(f"{name:<9} " + " ".join(f"{str(row[c]):>22}" for c in cols))


if __name__ == "__main__":
    main()
