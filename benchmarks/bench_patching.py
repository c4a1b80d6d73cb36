"""Batched activation patching against two naive loops, on IOI prompts, in every dtype asked for.

Two sweeps, the same patches timed for every method:
- ``head``: one configuration per (layer, head), patched at every position;
- ``head_pos``: one configuration per (layer, head, position).
Methods, all in the same dtype (each dtype of ``--dtype`` is reported):
- ``naive_hf``: the naive loop on plain Hugging Face hooks: a pristine model (its own
  scaled-dot-product attention, no workbench hook points), one forward per configuration with
  a forward pre-hook on each patched layer's output projection, unembedding the last positions;
- ``naive_tl``: the naive loop through the TransformerLens bridge (``run_with_hooks`` via the
  caching layer's transformer_lens backend), one forward per configuration;
- ``batched``: the suffix-only engine with the PyTorch reference op (its one clean run with
  cache is included in its time, once per sweep); ``kernel``: the same with the Triton kernel
  (CUDA only);
- ``floor``: the sweep's suffix work alone as plain Hugging Face decoder-layer forwards.
Achieved GFLOP/s (TFLOP/s on a GPU) of each method is the arithmetic it performs (the FLOP model
in ``flops_per_token_layer``) over its time, beside the machine's matmul peak in that dtype, which
the script measures itself with one large GEMM. The kernels that ran (attention, patch mix,
matmul) are read from the PyTorch profiler. ``--naive-max`` times the naive loops on an evenly
spaced sample of a large sweep and scales the time to the whole sweep (said in the report).

    python benchmarks/bench_patching.py --n-prompts 16 --layer-step 3 --dtype float32,bfloat16
    python benchmarks/bench_patching.py --json          # {"peak": ..., "dtypes": {dtype: {sweep: {...}}}, "vs_float32": ...}
    python benchmarks/bench_patching.py --dtype float32,bfloat16 --compile   # adds "bfloat16+compile"

``--compile`` adds, for every dtype but float32, the engine with its suffix forward under
``torch.compile`` (``load_model(compile=True)``): only the engine is timed for it (the naive loops
and the floor do not change); the compile itself is a warm-up over a sample of each sweep, timed
apart (``compile_s``), since it is paid once per process and shape family.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.cache import run_with_cache, run_with_patches  # noqa: E402
from workbench.datasets.ioi import TEMPLATES, ioi_prompts  # noqa: E402
from workbench.models import MODELS, load_model  # noqa: E402
from workbench.patching.engine import (  # noqa: E402
    head_masks_all_positions, head_masks_per_position, run_head_patches)
from workbench.patching.metrics import logit_diff  # noqa: E402
from workbench.patching.suffix import clean_run, plan_chunks, suffix_work  # noqa: E402

METHODS = ("naive_hf", "naive_tl", "batched", "kernel", "floor")


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


# ---------------------------------------------------------------------------- peak and FLOP model
def matmul_peak(dtype: torch.dtype, device: str, n: int = 4096) -> float:
    """The machine's matmul rate in ``dtype``, GFLOP/s: one large square GEMM, best of three."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def flops_per_token_layer(model, n_keys: float) -> float:
    """Multiply-adds x 2 of one token through one decoder layer: every weight matrix once, plus
    the attention's scores and weighted sum over ``n_keys`` keys per query."""
    layer = model.adapter.layers(model.hf)[0]
    weights = sum(p.numel() for p in layer.parameters() if p.dim() == 2)
    s = model.shape
    return 2 * weights + 4 * s.n_heads * s.d_head * n_keys


def unembed_flops(model) -> float:
    return 2 * model.shape.d_vocab * model.shape.d_model


def method_gflop(model, method: str, masks: torch.Tensor, n: int, t: int) -> float:
    """GFLOP a method performs on ``masks``: the naive loops run full forwards (the bridge
    unembeds every position, the plain loop the last); the engine and the floor the suffix work
    (the engine also its clean run, counted in its time)."""
    L, p = model.shape.n_layers, masks.shape[0]
    per_tl = flops_per_token_layer(model, (t + 1) / 2)
    full_body = n * t * L * per_tl
    if method in ("naive_hf", "naive_tl"):
        rows = n * t if method == "naive_tl" else n
        return p * (full_body + rows * unembed_flops(model)) / 1e9
    suffix = suffix_work(masks, L, t) * full_body + p * n * unembed_flops(model)
    clean = full_body + n * unembed_flops(model) if method in ("batched", "kernel") else 0.0
    return (suffix + clean) / 1e9


# ---------------------------------------------------------------------------- the methods
def _z_patch(masks_cfg: torch.Tensor, source_z: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per patched layer of one configuration [L H T]: (mask [T H] on the source's device, source z)."""
    return {l: (masks_cfg[l].T.to(source_z[l].device), source_z[l])
            for l in masks_cfg.any(dim=(1, 2)).nonzero().flatten().tolist()}


def naive_tl(setup, masks: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One TransformerLens-bridge forward per configuration, patching z with a hook."""
    n = setup.tokens.input_ids.shape[0]
    idx, rows = torch.arange(n), torch.arange(n, device=setup.device)
    last, out = setup.tokens.last_positions.to(setup.device), []
    _sync(setup.device)
    start = time.perf_counter()
    with torch.no_grad():
        for cfg in masks:
            patches = {f"blocks.{l}.attn.hook_z": (lambda z, m=m, src=src: torch.where(m[None, :, :, None], src.to(z.dtype), z))
                       for l, (m, src) in _z_patch(cfg, setup.source_z).items()}
            logits = run_with_patches(setup.tl_model, setup.tokens, patches)
            out.append(setup.metric(logits[rows, last][None], idx)[0])
    _sync(setup.device)
    return time.perf_counter() - start, torch.stack(out)


def naive_hf(setup, masks: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One forward of a pristine Hugging Face model per configuration: a forward pre-hook on each
    patched layer's output projection replaces the heads' slices of its input, and only the last
    positions are unembedded."""
    hf, adapter, s = setup.pristine, setup.model.adapter, setup.model.shape
    projs = [adapter.out_proj(adapter.attn(layer)) for layer in adapter.layers(hf)]
    n = setup.tokens.input_ids.shape[0]
    idx, rows = torch.arange(n), torch.arange(n, device=setup.device)
    last, out = setup.tokens.last_positions.to(setup.device), []
    _sync(setup.device)
    start = time.perf_counter()
    with torch.no_grad():
        for cfg in masks:
            handles = []
            for l, (m, src) in _z_patch(cfg, setup.source_z).items():
                def pre(mod, args, m=m, src=src):
                    z = args[0].view(*args[0].shape[:2], s.n_heads, s.d_head)
                    return (torch.where(m[None, :, :, None], src.to(z.dtype), z).flatten(2), *args[1:])
                handles.append(projs[l].register_forward_pre_hook(pre))
            try:
                hidden = adapter.base(hf)(input_ids=setup.tokens.input_ids, attention_mask=setup.tokens.attention_mask,
                                          use_cache=False).last_hidden_state
                logits = adapter.unembed(hf)(hidden[rows, last])
            finally:
                for h in handles:
                    h.remove()
            out.append(setup.metric(logits[None], idx)[0])
    _sync(setup.device)
    return time.perf_counter() - start, torch.stack(out)


def floor(setup, masks: torch.Tensor) -> tuple[float, None]:
    """The arithmetic floor, timed: for the same chunks and token counts as the engine (layers
    from each configuration's first patched layer, positions from its first patched position),
    plain Hugging Face decoder-layer forwards on the clean residual stream, without prefix keys,
    patching or hooks; then the final norm and unembedding of the last positions."""
    model, tokens, clean = setup.model, setup.tokens, setup.clean
    n, adapter = tokens.input_ids.shape[0], model.adapter
    layers, norm, unembed = adapter.layers(model.hf), adapter.final_norm(model.hf), adapter.unembed(model.hf)
    _sync(setup.device)
    start = time.perf_counter()
    with torch.no_grad():
        for _cfg, first_layers, p0 in plan_chunks(masks, max(1, setup.max_batch // n)):
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
            unembed(norm(x[torch.arange(x.shape[0], device=x.device), last]))
    _sync(setup.device)
    return time.perf_counter() - start, None


def engine(setup, masks: torch.Tensor, kernel: str) -> tuple[float, torch.Tensor]:
    _sync(setup.device)
    start = time.perf_counter()
    out = run_head_patches(setup.model, setup.tokens, setup.source_z, masks, setup.metric,
                           max_batch=setup.max_batch, kernel=kernel, clean=setup.clean)
    _sync(setup.device)
    return time.perf_counter() - start, out.metric


def run_method(setup, method: str, masks: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    if method == "naive_hf":
        return naive_hf(setup, masks)
    if method == "naive_tl":
        return naive_tl(setup, masks)
    if method == "floor":
        return floor(setup, masks)
    return engine(setup, masks, "reference" if method == "batched" else "triton")


# ---------------------------------------------------------------------------- one dtype's set-up
def pristine_model(name: str, dtype: torch.dtype, device: str):
    """A fresh Hugging Face model of the registry entry: its own scaled-dot-product attention,
    no workbench hook points."""
    if name not in MODELS:
        raise SystemExit(f"--model {name}: the plain Hugging Face loop needs a registry model ({', '.join(MODELS)})")
    hf, _ = MODELS[name].loader(dtype)
    hf.set_attn_implementation("sdpa")
    return hf.to(device).eval()


class Setup:
    """One dtype's models (workbench, bridge, pristine), prompts, corrupt sources and clean run;
    with ``compile`` only the workbench model (its engine under torch.compile)."""

    def __init__(self, args, dtype: torch.dtype, compile: bool = False) -> None:
        self.device, self.max_batch, self.dtype, self.compile = args.device, args.max_batch, dtype, compile
        self.model = load_model(args.model, device=args.device, dtype=dtype, compile=compile)
        self.methods = ["batched"] if compile else \
            ["naive_hf", "naive_tl", "batched", "floor"] + (["kernel"] if args.device.startswith("cuda") else [])
        self.compile_s = 0.0
        if not compile:
            self.tl_model = self.model.with_backend("transformer_lens")
            self.pristine = pristine_model(args.model, dtype, args.device)
        ps = ioi_prompts(args.n_prompts, self.model.tokenizer, seed=0, templates=[TEMPLATES[0]])
        self.tokens, corrupt = ps.tokens(self.model), ps.corrupt_tokens(self.model)
        correct, wrong = ps.answer_ids(self.model)
        self.metric = lambda lg, idx: logit_diff(lg, correct[idx.to(correct.device)], wrong[idx.to(wrong.device)])
        L = self.model.shape.n_layers
        _, cache = run_with_cache(self.model, corrupt, [f"blocks.{l}.attn.hook_z" for l in range(L)], device=args.device)
        self.source_z = {l: cache[f"blocks.{l}.attn.hook_z"] for l in range(L)}
        clean_run(self.model, self.tokens)  # warm-up: oneDNN builds its bfloat16 kernels on first use
        _sync(self.device)
        start = time.perf_counter()
        self.clean = clean_run(self.model, self.tokens)  # the engine's one clean forward, timed once per sweep
        _sync(self.device)
        self.clean_s = time.perf_counter() - start
        self.clean_metric = run_head_patches(self.model, self.tokens, self.source_z, head_masks_all_positions(
            L, self.model.shape.n_heads, self.tokens.input_ids.shape[1])[:0], self.metric, clean=self.clean).clean_metric


def kernels_used(setup, masks: torch.Tensor) -> dict[str, object]:
    """The ops that ran in one engine chunk, from the profiler: attention, matmul, and the patch mix."""
    from torch.profiler import profile

    from workbench.kernels.patching import dispatch

    with profile() as prof:
        engine(setup, masks[:1], "auto")
    names = {e.key for e in prof.key_averages()}
    attention = sorted(n for n in names if "attention" in n or "flash" in n)
    matmul = sorted(n for n in names if n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul") or "mkldnn" in n
                    or "onednn" in n or "gemm" in n.lower())
    cpu = None if setup.device.startswith("cuda") else \
        f"{torch.backends.cpu.get_cpu_capability()}, oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}"
    return {"patch_mix": dispatch.choose(setup.device), "attention": attention, "matmul": matmul, "cpu": cpu}


def warm_up(setup, sweeps: list[torch.Tensor]) -> float:
    """Seconds to compile the engine's graphs: one engine run on a few configurations of each
    sweep (its first, middle and last: the largest and the one-position suffixes), so every
    shape family the sweep will meet is compiled before it is timed."""
    start = time.perf_counter()
    for masks in sweeps:
        p = masks.shape[0]
        engine(setup, masks[sorted({0, p // 2, p - 1})], "reference")
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- the sweeps
def build_sweeps(args, model, n_pos: int) -> dict[str, torch.Tensor]:
    s = model.shape
    heads = list(range(args.heads or s.n_heads))
    return {
        "head": subset(head_masks_all_positions(s.n_layers, s.n_heads, n_pos), mid_layers(s.n_layers, args.layer_step), heads),
        "head_pos": subset(head_masks_per_position(s.n_layers, s.n_heads, n_pos), mid_layers(s.n_layers, args.pos_layer_step),
                           list(range(args.pos_heads or s.n_heads))),
    }


def naive_sample(p: int, most: int) -> torch.Tensor:
    """Indices of the configurations the naive loops run: all, or ``most`` evenly spaced."""
    if not most or p <= most:
        return torch.arange(p)
    return torch.linspace(0, p - 1, most).round().long().unique()


def time_sweep(setups: dict[str, Setup], masks: torch.Tensor, methods: list[str], args, log) -> dict[str, dict]:
    """Every method of every dtype on ``masks``, in rounds that interleave methods and dtypes on
    slices of the sweep (a change in a shared machine's load falls on all alike). Per dtype:
    seconds per method (naive ones scaled from their sample) and the values each produced."""
    p = masks.shape[0]
    sample = naive_sample(p, args.naive_max)
    in_sample = torch.zeros(p, dtype=torch.bool)
    in_sample[sample] = True
    out = {d: {"s": dict.fromkeys(s.methods, 0.0), "val": {m: torch.full((p,) + (len(s.clean_metric),), float("nan"))
                                                           for m in s.methods if m != "floor"}} for d, s in setups.items()}
    for r in range(args.rounds):
        part = torch.arange(r, p, args.rounds)
        for d, setup in setups.items():
            ms = [m for m in methods if m in setup.methods]
            for method in ms[r % len(ms):] + ms[: r % len(ms)]:
                rows = part[in_sample[part]] if method.startswith("naive") else part
                if len(rows) == 0:
                    continue
                log(f"[{d}] round {r + 1}/{args.rounds}: {method} on {len(rows)} patches ...")
                dt, val = run_method(setup, method, masks[rows])
                out[d]["s"][method] += dt
                if val is not None:
                    out[d]["val"][method][rows] = val.detach().float().cpu()
    for d in setups:
        for m in setups[d].methods:
            if m.startswith("naive"):
                out[d]["s"][m] *= p / len(sample)
            elif m in ("batched", "kernel"):
                out[d]["s"][m] += setups[d].clean_s
    return out


# ---------------------------------------------------------------------------- the report
def effects(values: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean effect per configuration [P]: patched metric minus clean, averaged over prompts."""
    return (values - clean.float().cpu()[None]).mean(dim=1)


def top(effect: torch.Tensor, k: int = 10) -> list[int]:
    return effect.abs().argsort(descending=True)[:k].tolist()


def rank_stability(values: torch.Tensor, clean: torch.Tensor, k: int = 10, n_boot: int = 1000) -> float:
    """Share of bootstrap resamples of the prompts in which the top ``k`` (in order) is the one the
    whole sample gives: how far the prompts themselves pin the ranking down, whatever the dtype."""
    diffs = values - clean.float().cpu()[None]  # [P N]
    want = top(diffs.mean(1), k)
    g = torch.Generator().manual_seed(0)
    n = diffs.shape[1]
    hits = sum(top(diffs[:, torch.randint(n, (n,), generator=g)].mean(1), k) == want for _ in range(n_boot))
    return round(hits / n_boot, 3)


def sweep_row(setup, model, masks, timed: dict, peak: float, n_sample: int, methods: list[str]) -> dict:
    n, t = setup.tokens.input_ids.shape
    p = masks.shape[0]
    secs = timed["s"]
    methods = [m for m in methods if m in secs]
    best = min(secs[m] for m in ("batched", "kernel") if m in methods)
    row = {"n_patches": p, "naive_sampled": n_sample, "seconds": {m: round(v, 3) for m, v in secs.items()}}
    gflop = {m: method_gflop(model, m, masks, n, t) for m in methods}
    row["gflop_per_s"] = {m: round(gflop[m] / secs[m], 1) for m in methods}
    row["share_of_peak"] = {m: round(gflop[m] / secs[m] / peak, 3) for m in methods}
    val = timed["val"]
    if "naive_hf" in secs:
        row["speedup_vs_naive_hf"] = round(secs["naive_hf"] / best, 2)
        row["speedup_vs_naive_tl"] = round(secs["naive_tl"] / best, 2)
        row["vs_floor"] = round(best / secs["floor"], 3)
        sampled = ~val["naive_hf"][:, 0].isnan()
        for m in ("naive_hf", "naive_tl"):
            row[f"max_abs_diff_vs_{m}"] = float((val["batched"][sampled] - val[m][sampled]).abs().max())
    if setup.compile:
        row["compile_s"] = round(setup.compile_s, 1)
    eff = effects(val["batched"], setup.clean_metric)
    row["top10"] = top(eff)
    row["top12_effects"] = [round(float(eff[i]), 4) for i in top(eff, 12)]  # to tell a swap from a tie
    row["largest_effect"] = float(eff.abs().max())
    return row


def compare_dtypes(report: dict, timed_all: dict, setups: dict) -> dict:
    """Each dtype against float32: the top-10 configurations, the effects' largest deviation,
    and the engine's speed-up over the float32 engine in this run."""
    if "float32" not in setups:
        return {}
    out = {}
    for name, timed in timed_all.items():
        ref = effects(timed["float32"]["val"]["batched"], setups["float32"].clean_metric)
        for d in setups:
            if d == "float32":
                continue
            eff = effects(timed[d]["val"]["batched"], setups[d].clean_metric)
            same = [a == b for a, b in zip(top(eff, 12), top(ref, 12))]
            first_diff = same.index(False) if False in same else len(same)
            ref_sorted = ref.abs().sort(descending=True).values
            out[f"{name}/{d}"] = {
                "top10_identical": top(eff) == top(ref), "top10_same_set": set(top(eff)) == set(top(ref)),
                "identical_leading_ranks": first_diff,
                # float32's own gap below the first rank where the orders part: under the deviation, a tie here
                "float32_gap_at_first_difference": (round(float(ref_sorted[first_diff] - ref_sorted[first_diff + 1]), 4)
                                                    if first_diff + 1 < len(ref_sorted) else None),
                "float32_top10_bootstrap_identity": rank_stability(timed["float32"]["val"]["batched"],
                                                                   setups["float32"].clean_metric),
                "max_abs_effect_deviation": round(float((eff - ref).abs().max()), 4),
                "largest_effect_float32": round(float(ref.abs().max()), 4),
                "engine_speedup_vs_float32_engine": round(timed["float32"]["s"]["batched"] / timed[d]["s"]["batched"], 2),
                "speedup_vs_float32_naive_hf": round(timed["float32"]["s"]["naive_hf"] / timed[d]["s"]["batched"], 2),
                "speedup_vs_float32_naive_tl": round(timed["float32"]["s"]["naive_tl"] / timed[d]["s"]["batched"], 2),
            }
    return out


def print_table(report: dict) -> None:
    print(f"{report['model']}, {report['n_prompts']} IOI prompts x {report['n_tokens']} tokens, max_batch "
          f"{report['max_batch']}, device {report['device']}")
    for d, peak in report["peak_gflop_per_s"].items():
        print(f"matmul peak {d}: {peak:.0f} GFLOP/s; kernels: {json.dumps(report['kernels'][d])}")
    cols = ("seconds", "gflop_per_s", "share_of_peak")
    print(f"{'sweep':<9} {'dtype':<9} {'method':<9} " + " ".join(f"{c:>14}" for c in cols))
    for d, sweeps in report["dtypes"].items():
        for name, row in sweeps.items():
            for m in row["seconds"]:
                print(f"{name:<9} {d:<9} {m:<9} " + " ".join(f"{row[c][m]:>14}" for c in cols))
            if "speedup_vs_naive_hf" not in row:
                print(f"{name:<9} {d:<9} compile {row.get('compile_s')} s, apart from the sweep")
                continue
            print(f"{name:<9} {d:<9} speed-up vs naive_hf {row['speedup_vs_naive_hf']}x, vs naive_tl "
                  f"{row['speedup_vs_naive_tl']}x, engine/floor {row['vs_floor']}, naive sample {row['naive_sampled']}"
                  f"/{row['n_patches']}, max |diff| vs naive_hf {row['max_abs_diff_vs_naive_hf']:.2e}")
    for key, row in report["vs_float32"].items():
        print(f"{key} vs float32: {json.dumps(row)}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--layer-step", type=int, default=1, help="time every k-th layer (all heads, all positions)")
    ap.add_argument("--pos-layer-step", type=int, default=3, help="layers for the head-by-position sweep: every k-th")
    ap.add_argument("--heads", type=int, default=0, help="head sweep: first k heads only (0: all)")
    ap.add_argument("--pos-heads", type=int, default=0, help="head-by-position sweep: first k heads only (0: all)")
    ap.add_argument("--max-batch", type=int, default=512, help="sequences per batched forward")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16 (each reported)")
    ap.add_argument("--sweeps", default="head,head_pos")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--rounds", type=int, default=3, help="interleave the methods over this many slices of each sweep")
    ap.add_argument("--naive-max", type=int, default=0,
                    help="naive loops: at most this many configurations per sweep, evenly spaced, time scaled (0: all)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the engine under torch.compile for each dtype but float32 ('<dtype>+compile')")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    dtypes = [d.strip() for d in args.dtype.split(",")]
    setups = {d: Setup(args, getattr(torch, d)) for d in dtypes}
    if args.compile:
        setups.update({f"{d}+compile": Setup(args, getattr(torch, d), compile=True) for d in dtypes if d != "float32"})
    first = setups[dtypes[0]]
    n, t = first.tokens.input_ids.shape
    sweeps = build_sweeps(args, first.model, t)
    methods = ["naive_hf", "naive_tl", "batched", "floor"] + (["kernel"] if args.device.startswith("cuda") else [])
    for d, s in setups.items():
        if s.compile:
            log(f"[{d}] compiling on a sample of each sweep ...")
            s.compile_s = warm_up(s, [sweeps[name] for name in args.sweeps.split(",")])
            log(f"[{d}] compiled in {s.compile_s:.1f} s")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    peaks = {d: round(matmul_peak(getattr(torch, d), args.device), 1) for d in dtypes}
    report = {"model": args.model, "n_prompts": n, "n_tokens": t, "max_batch": args.max_batch, "rounds": args.rounds,
              "device": device, "load_average": list(os.getloadavg()),
              "peak_gflop_per_s": {d: peaks[d.split("+")[0]] for d in setups},
              "kernels": {d: kernels_used(s, sweeps["head"]) for d, s in setups.items()},
              "clean_run_s": {d: round(s.clean_s, 3) for d, s in setups.items()}, "dtypes": {d: {} for d in setups}}
    log(f"{args.model} on {device}: {n} prompts x {t} tokens; " + ", ".join(f"{k}: {v.shape[0]} patches" for k, v in sweeps.items())
        + f"; peak {report['peak_gflop_per_s']} GFLOP/s")
    timed_all = {}
    peak = report["peak_gflop_per_s"]
    for name in args.sweeps.split(","):
        timed_all[name] = time_sweep(setups, sweeps[name], methods, args, log)
        # a shared machine's load moves: the peak is the best of a GEMM before and after each sweep
        fresh = {d: matmul_peak(getattr(torch, d), args.device) for d in dtypes}
        peak.update({d: round(max(peak[d], fresh[d.split("+")[0]]), 1) for d in setups})
    report["load_average_end"] = list(os.getloadavg())
    for name, timed in timed_all.items():
        n_sample = len(naive_sample(sweeps[name].shape[0], args.naive_max))
        for d, setup in setups.items():
            row = sweep_row(setup, setup.model, sweeps[name], timed[d], peak[d], n_sample, methods)
            report["dtypes"][d][name] = row
            log(f"[{name} {d}] {json.dumps(row)}")
    report["vs_float32"] = compare_dtypes(report, timed_all, setups)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_table(report)


if __name__ == "__main__":
    main()
