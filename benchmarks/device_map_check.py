"""Device check for --device-map: load a model folder with the first half of its decoder
layers on cuda:0 and the rest on cpu (accelerate: the cpu half is offloaded and executed on
cuda:0, its weights streamed in per forward), run caching, one patch, generation and the
ablation sweep on both that split and the whole model on cuda:0, and print one JSON line
comparing them.

    python benchmarks/device_map_check.py [MODEL]        # default: the embedded smollm2-135m
    python benchmarks/device_map_check.py /path/to/folder --device cuda:0

Runs in well under a minute on a GPU machine (two loads of a 135M model, a few forwards).
On a CPU-only machine it splits layers over cpu and disk instead (the same offload path)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.cache import run_with_cache, run_with_patches  # noqa: E402
from workbench.generation import greedy_generate  # noqa: E402
from workbench.models import load_model  # noqa: E402

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "Then, Anna and Bob had a long argument. Afterwards Bob said to"]


def half_map(model, first: str, rest: str) -> dict[str, str]:
    """The first half of the decoder layers (and the modules before them: embeddings, rotary)
    on ``first``; the other half and the modules after them (final norm, head) on ``rest``."""
    ad = model.adapter
    by_id = {id(m): n for n, m in model.hf.named_modules()}
    layers = [by_id[id(b)] for b in ad.layers(model.hf)]
    container = layers[0].rsplit(".", 1)[0]
    base = by_id[id(ad.base(model.hf))]
    out: dict[str, str] = {}
    seen_layers = False
    for n, _ in ad.base(model.hf).named_children():
        full = f"{base}.{n}" if base else n
        if full == container:
            seen_layers = True
            for i, name in enumerate(layers):
                out[name] = first if i < len(layers) // 2 else rest
        elif not n.startswith("wb_"):
            out[full] = rest if seen_layers else first
    for n, _ in model.hf.named_children():
        if n != base and not n.startswith("wb_"):
            out[n] = rest
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    start = time.perf_counter()
    whole = load_model(args.model, device=args.device)
    rest = "cpu" if args.device.startswith("cuda") else "disk"
    dmap = half_map(whole, args.device, rest)
    split = load_model(args.model, device_map=dmap)
    names = [f"blocks.{l}.attn.hook_z" for l in (0, whole.shape.n_layers - 1)] + [
        f"blocks.{whole.shape.n_layers - 1}.hook_resid_post"]
    l0, c0 = run_with_cache(whole, PROMPTS, names)
    l1, c1 = run_with_cache(split, PROMPTS, names)
    last = whole.shape.n_layers - 1
    patch = {f"blocks.{last}.attn.hook_z": lambda z: z * 0}
    p0, p1 = run_with_patches(whole, PROMPTS, patch), run_with_patches(split, PROMPTS, patch)
    g0 = greedy_generate(whole, PROMPTS, max_new_tokens=8)
    g1 = greedy_generate(split, PROMPTS, max_new_tokens=8)
    from workbench.analyses.ablation.analysis import AblationConfig, run

    cfg = AblationConfig(n_prompts=8, batch_size=64)
    a0, a1 = run(whole, cfg, progress=False), run(split, cfg, progress=False)
    print(json.dumps({
        "model": args.model, "device": args.device, "split_devices": sorted(set(dmap.values())),
        "n_layers": whole.shape.n_layers, "layers_on_first": whole.shape.n_layers // 2,
        "offloaded_params_on_meta": sum(p.device.type == "meta" for p in split.hf.parameters()),
        "logits_max_abs_diff": float((l0.float() - l1.float()).abs().max()),
        "cache_max_abs_diff": max(float((c0[n].float() - c1[n].float()).abs().max()) for n in names),
        "patched_logits_max_abs_diff": float((p0.float() - p1.float()).abs().max()),
        "generation_equal": bool(torch.equal(g0.new_tokens.cpu(), g1.new_tokens.cpu())),
        "ablation_effect_max_abs_diff": float((a0.effect.float() - a1.effect.float()).abs().max()),
        "ablation_top_head_equal": (a0.top_heads[0].layer, a0.top_heads[0].head) == (a1.top_heads[0].layer, a1.top_heads[0].head),
        "seconds": round(time.perf_counter() - start, 1),
    }))


if __name__ == "__main__":
    main()
