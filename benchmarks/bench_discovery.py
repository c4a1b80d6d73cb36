"""Edge attribution (EAP-IG) over every edge against exact per-edge patching, on the same
prompt set: wall time of each, the ratio, and how well the two agree (Spearman over edges).

    python benchmarks/bench_discovery.py                       # tiny-llama, every edge exactly
    python benchmarks/bench_discovery.py --model smollm2-135m --n 4 --sample-edges 24
        # exact patching on a random sample of edges, its time extrapolated to all edges

Exact patching of an edge: the clean run with only that edge carrying the corrupt
sender's output (``run_edge_masks``, several edge configurations per batch).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sample-edges", type=int, default=0, help="0: patch every edge exactly; k: a random sample of k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from analyses.circuits.analysis import build_task, prepare
    from workbench.models import load_model
    from workbench.patching.eap import edge_attribution
    from workbench.patching.graph import Graph, run_edge_masks, sender_outputs

    model = load_model(args.model)
    prep = prepare(model, build_task(args.task, model.tokenizer, args.n, args.seed))
    graph = Graph.for_model(model)
    idx = graph.valid.nonzero()
    total = len(idx)

    t0 = time.perf_counter()
    scores = edge_attribution(model, prep.clean, prep.corrupt, prep.metric, "eap-ig", steps=args.steps, batch_size=args.n)
    t_ig = time.perf_counter() - t0

    t0 = time.perf_counter()
    eap = edge_attribution(model, prep.clean, prep.corrupt, prep.metric, "eap", batch_size=args.n)
    t_eap = time.perf_counter() - t0

    sample = idx
    if args.sample_edges and args.sample_edges < total:
        g = torch.Generator().manual_seed(args.seed)
        sample = idx[torch.randperm(total, generator=g)[: args.sample_edges]]
    t0 = time.perf_counter()
    clean_last, _ = sender_outputs(model, prep.clean)
    _, corrupt_acts = sender_outputs(model, prep.corrupt)
    full = float(prep.metric(clean_last).mean())
    masks = graph.valid[None].repeat(len(sample), 1, 1)
    for i, (a, b) in enumerate(sample.tolist()):
        masks[i, a, b] = False
    exact = run_edge_masks(model, graph, prep.clean, corrupt_acts, masks, prep.metric,
                           max_batch=max(len(prep.clean), 64)).mean(1) - full
    t_exact_sample = time.perf_counter() - t0
    t_exact = t_exact_sample * total / len(sample)

    ig_s = scores[sample[:, 0], sample[:, 1]]
    eap_s = eap[sample[:, 0], sample[:, 1]]
    row = {
        "model": args.model, "task": args.task, "n_prompts": args.n, "edges": total, "edges_patched_exactly": len(sample),
        "eap_ig_steps": args.steps, "eap_ig_seconds": round(t_ig, 3), "eap_seconds": round(t_eap, 3),
        "exact_seconds": round(t_exact, 3), "exact_extrapolated": len(sample) < total,
        "ratio_exact_over_eap_ig": round(t_exact / t_ig, 2), "ratio_exact_over_eap": round(t_exact / t_eap, 2),
        "spearman_eap_ig_vs_exact": round(float(spearmanr(ig_s.numpy(), exact.numpy()).statistic), 4),
        "spearman_eap_vs_exact": round(float(spearmanr(eap_s.numpy(), exact.numpy()).statistic), 4),
    }
    if args.json:
        print(json.dumps(row, indent=2))
        return
    w = max(len(k) for k in row)
    print(f"{'quantity':<{w}}  value")
    for k, v in row.items():
        print(f"{k:<{w}}  {v}")


if __name__ == "__main__":
    main()
