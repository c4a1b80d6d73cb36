"""Batched activation patching against the naive loop, on IOI prompts.

Two sweeps, the same patches timed for every method:
- ``head``: one configuration per (layer, head), patched at every position;
- ``head_pos``: one configuration per (layer, head, position).
Methods: (a) the naive TransformerLens loop (``run_with_hooks`` through the caching
layer's transformer_lens backend), one forward per patch; (b) the batched suffix-only
engine with the PyTorch reference op; (c) the same engine with the Triton kernel (CUDA only).
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
from workbench.patching.suffix import suffix_work  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def subset(masks: torch.Tensor, layers: list[int], heads: list[int]) -> torch.Tensor:
    """Keep the configurations that patch only the chosen layers and heads."""
    keep = [i for i in range(masks.shape[0])
            if masks[i].any(dim=2).nonzero()[:, 0].unique().tolist()[0] in layers
            and masks[i].any(dim=2).nonzero()[:, 1].unique().tolist()[0] in heads]
    return masks[keep]


def naive_loop(tl_model, tokens, source_z, masks, metric, device) -> tuple[float, torch.Tensor]:
    """One TransformerLens forward per configuration, patching z with a hook."""
    n = tokens.input_ids.shape[0]
    idx = torch.arange(n)
    rows = torch.arange(n, device=device)
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
            out.append(metric(logits[rows, tokens.last_positions][None], idx)[0])
    _sync(device)
    return time.perf_counter() - start, torch.stack(out)


def plain_forward_rate(model, tokens, batch_configs: int, repeats: int, device: str) -> float:
    """Seconds per (configuration x full forward) of plain batched forwards at the engine's batch size."""
    n = tokens.input_ids.shape[0]
    big_ids = tokens.input_ids.repeat(batch_configs, 1)
    big_mask = tokens.attention_mask.repeat(batch_configs, 1)
    last = tokens.last_positions.repeat(batch_configs)
    rows = torch.arange(big_ids.shape[0], device=device)
    unembed = model.hf.get_output_embeddings()
    with torch.no_grad():
        model.hf.base_model(input_ids=big_ids[:n], attention_mask=big_mask[:n], use_cache=False)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            hidden = model.hf.base_model(input_ids=big_ids, attention_mask=big_mask, use_cache=False).last_hidden_state
            unembed(hidden[rows, last])
        _sync(device)
    return (time.perf_counter() - start) / (repeats * batch_configs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--layer-step", type=int, default=1, help="time every k-th layer (all heads, all positions)")
    ap.add_argument("--pos-layer-step", type=int, default=3, help="layers for the head-by-position sweep: every k-th")
    ap.add_argument("--heads", type=int, default=0, help="first k heads only (0: all)")
    ap.add_argument("--max-batch", type=int, default=512, help="sequences per batched forward")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sweeps", default="head,head_pos")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
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
    correct, wrong = ps.answer_ids(model)
    metric = lambda lg, idx: logit_diff(lg, correct[idx], wrong[idx])  # noqa: E731
    n, t = tokens.input_ids.shape
    _, cache = run_with_cache(model, corrupt, [f"blocks.{l}.attn.hook_z" for l in range(s.n_layers)])
    source_z = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(s.n_layers)}
    heads = list(range(args.heads or s.n_heads))
    sweeps = {
        "head": subset(head_masks_all_positions(s.n_layers, s.n_heads, t), list(range(0, s.n_layers, args.layer_step)), heads),
        "head_pos": subset(head_masks_per_position(s.n_layers, s.n_heads, t), list(range(0, s.n_layers, args.pos_layer_step)), heads),
    }
    on_cuda = args.device.startswith("cuda")
    rate = plain_forward_rate(model, tokens, max(1, args.max_batch // n), 3, args.device)
    log(f"{args.model} on {args.device}: {n} prompts x {t} tokens; plain batched forward {rate * 1e3:.1f} ms per configuration")
    report = {"model": args.model, "n_prompts": n, "n_tokens": t, "max_batch": args.max_batch,
              "plain_forward_s_per_config": rate, "sweeps": {}}
    for name in args.sweeps.split(","):
        masks = sweeps[name]
        p = masks.shape[0]
        log(f"[{name}] {p} patches: naive TransformerLens loop ...")
        naive_s, naive_metric = naive_loop(tl_model, tokens, source_z, masks, metric, args.device)
        log(f"[{name}] batched engine (reference op) ...")
        _sync(args.device)
        start = time.perf_counter()
        ref = run_head_patches(model, tokens, source_z, masks, metric, max_batch=args.max_batch, kernel="reference")
        _sync(args.device)
        batched_s = time.perf_counter() - start
        kernel_s, kernel_diff = None, None
        if on_cuda:
            log(f"[{name}] batched engine (Triton kernel) ...")
            start = time.perf_counter()
            ker = run_head_patches(model, tokens, source_z, masks, metric, max_batch=args.max_batch, kernel="triton")
            _sync(args.device)
            kernel_s = time.perf_counter() - start
            kernel_diff = float((ker.metric - ref.metric).abs().max())
        work = suffix_work(masks, s.n_layers, t)  # in full forwards per configuration, summed
        floor_s = work * rate
        best = min(x for x in (batched_s, kernel_s) if x is not None)
        report["sweeps"][name] = {
            "n_patches": p,
            "naive_s": round(naive_s, 3),
            "batched_s": round(batched_s, 3),
            "kernel_s": None if kernel_s is None else round(kernel_s, 3),
            "speedup_vs_naive": round(naive_s / best, 2),
            "vs_floor": round(best / floor_s, 3),
            "floor_s": round(floor_s, 3),
            "suffix_work_share": round(work / p, 4),
            "patches_per_s": {"naive": round(p / naive_s, 2), "batched": round(p / batched_s, 2),
                              "kernel": None if kernel_s is None else round(p / kernel_s, 2)},
            "max_abs_diff_vs_naive": float((ref.metric - naive_metric.to(ref.metric.device)).abs().max()),
            "max_abs_diff_kernel_vs_reference": kernel_diff,
            "device": torch.cuda.get_device_name() if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
        }
        log(f"[{name}] done: {report['sweeps'][name]}")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    cols = ["n_patches", "naive_s", "batched_s", "kernel_s", "floor_s", "speedup_vs_naive", "vs_floor", "max_abs_diff_vs_naive", "device"]
    print(f"{args.model}, {n} IOI prompts x {t} tokens, max_batch {args.max_batch}")
    print("sweep     " + " ".join(f"{c:>22}" for c in cols))
    for name, row in report["sweeps"].items():
        print(f"{name:<9} " + " ".join(f"{str(row[c]):>22}" for c in cols))


if __name__ == "__main__":
    main()
