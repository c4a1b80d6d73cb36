"""EAP-IG against exact edge patching, sampled honestly: Spearman and top-k agreement with
their intervals, and the speed ratio with the fixed costs kept out.

    python benchmarks/bench_discovery.py                       # tiny-llama, every head edge exactly
    python benchmarks/bench_discovery.py --model smollm2-135m --n 4 --steps 4 --random-edges 500 --top 200 --json

Edges: the head -> head and head -> logits edges of the graph (the batched, suffix-only
engine ``workbench.patching.edges.run_edge_patches`` patches exactly these; the input and
MLP edges are left out and counted). Exact patching of an edge: the clean run with only that
edge's destination reading the corrupt sender's output (the sender's corrupt z through its
W_O), every other path clean; the effect is the mean over prompts of metric(patched) -
metric(clean), which EAP-IG estimates to first order. ``--random-edges`` are drawn uniformly
from those edges; ``--top`` are the edges of largest |EAP-IG| (so agreement where it matters is
measured too). Spearman: ``workbench.stats.spearman`` (Fisher-z interval); top-k agreement:
the share of EAP-IG's top k among the exact top k over the random sample, with a bootstrap
interval over edges.

Timing: EAP-IG is timed whole (its forwards and backwards are the method). Exact patching is
timed twice: its fixed costs (the clean run cached by the engine, the corrupt z) and the
patched configurations alone, at the engine's normal batch (``--max-batch``, 512 rows). The
ratio for all edges uses the per-edge cost of the measured configurations times the number
of head edges plus the fixed costs, and is labelled an extrapolation unless every edge ran.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def head_edges(graph, n_layers: int, n_heads: int) -> list[tuple[int, int, tuple, object]]:
    """(graph sender index, graph receiver index, source (l, h), destination (l, h) or 'logits')
    for every head -> later head and head -> logits edge."""
    out = []
    logits = len(graph.receivers) - 1
    for l in range(n_layers):
        for h in range(n_heads):
            s = graph.head_slice(l).start + h
            for l2 in range(l + 1, n_layers):
                for h2 in range(n_heads):
                    out.append((s, graph.head_slice(l2).start + h2 - 1, (l, h), (l2, h2)))
            out.append((s, logits, (l, h), "logits"))
    return out


def topk_agreement(est: np.ndarray, exact: np.ndarray, k: int) -> float:
    k = min(k, len(est))
    a = set(np.argsort(-np.abs(est))[:k].tolist())
    b = set(np.argsort(-np.abs(exact))[:k].tolist())
    return len(a & b) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=4, help="prompts (the same for both methods)")
    ap.add_argument("--steps", type=int, default=4, help="EAP-IG integration steps")
    ap.add_argument("--random-edges", type=int, default=0, help="0: every head edge exactly; k: k drawn at random")
    ap.add_argument("--top", type=int, default=200, help="also the top edges by |EAP-IG|")
    ap.add_argument("--k", type=int, default=50, help="top-k agreement over the random sample")
    ap.add_argument("--max-batch", type=int, default=512, help="the engine's rows per pass (its default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from workbench.analyses.circuits.analysis import build_task, prepare
    from workbench.models import load_model
    from workbench.patching.eap import edge_attribution
    from workbench.patching.edges import edge_masks, run_edge_patches
    from workbench.patching.graph import Graph, sender_outputs
    from workbench.patching.suffix import clean_run
    from workbench.stats import bootstrap, spearman

    model = load_model(args.model)
    torch.manual_seed(args.seed)
    prep = prepare(model, build_task(args.task, model.tokenizer, args.n, args.seed))
    graph = Graph.for_model(model)
    L, H = model.shape.n_layers, model.shape.n_heads
    universe = head_edges(graph, L, H)
    total_graph = graph.n_edges

    t0 = time.perf_counter()
    ig = edge_attribution(model, prep.clean, prep.corrupt, prep.metric, "eap-ig", steps=args.steps, batch_size=args.n)
    t_ig = time.perf_counter() - t0
    ig_u = torch.tensor([float(ig[s, r]) for s, r, _, _ in universe])

    rng = np.random.default_rng(args.seed)
    every = not args.random_edges or args.random_edges >= len(universe)
    rand_idx = np.arange(len(universe)) if every else rng.choice(len(universe), args.random_edges, replace=False)
    top_idx = np.argsort(-ig_u.abs().numpy())[: args.top]
    run_idx = np.unique(np.concatenate([rand_idx, top_idx]))

    correct, wrong = prep.metric.correct, prep.metric.wrong

    def metric(logits, idx):
        return logits[..., idx, correct[idx]] - logits[..., idx, wrong[idx]]

    t0 = time.perf_counter()
    clean = clean_run(model, prep.clean)
    _, acts = sender_outputs(model, prep.corrupt)
    source_z = {l: acts[f"z{l}"] for l in range(L)}
    t_fixed = time.perf_counter() - t0
    masks = edge_masks(model, [[(universe[i][2], universe[i][3])] for i in run_idx.tolist()])
    t0 = time.perf_counter()
    sweep = run_edge_patches(model, prep.clean, source_z, masks, metric, max_batch=args.max_batch, clean=clean)
    t_configs = time.perf_counter() - t0
    exact_run = (sweep.metric - sweep.clean_metric[None]).mean(1).double().numpy()
    exact = dict(zip(run_idx.tolist(), exact_run.tolist()))

    est_r = ig_u.numpy()[rand_idx]
    ex_r = np.array([exact[i] for i in rand_idx.tolist()])
    est_t = ig_u.numpy()[top_idx]
    ex_t = np.array([exact[i] for i in top_idx.tolist()])
    rho_r = spearman(est_r, ex_r, split="random edges")
    rho_t = spearman(est_t, ex_t, split=f"top {len(top_idx)} by |EAP-IG|")
    k = min(args.k, len(rand_idx))
    agree = bootstrap(np.stack([est_r, ex_r], 1), lambda x: topk_agreement(x[:, 0], x[:, 1], k), n_boot=500,
                      split="random edges")
    per_edge = t_configs / len(run_idx)
    t_exact_all = t_fixed + per_edge * len(universe)
    row = {
        "model": args.model, "task": args.task, "n_prompts": args.n, "eap_ig_steps": args.steps,
        "edges_in_graph": total_graph, "head_edges": len(universe),
        "edges_left_out": "input and MLP edges (the suffix engine patches head edges)",
        "random_edges": len(rand_idx), "top_edges": len(top_idx), "edges_patched_exactly": len(run_idx),
        "spearman_random": rho_r.to_dict(), "spearman_top": rho_t.to_dict(),
        f"top{k}_agreement_random": agree.to_dict(),
        "sign_agreement_top": float(np.mean(np.sign(est_t) == np.sign(ex_t))),
        "eap_ig_seconds": round(t_ig, 2), "exact_fixed_seconds": round(t_fixed, 2),
        "exact_configs_seconds": round(t_configs, 2), "exact_seconds_per_edge": per_edge,
        "exact_all_head_edges_seconds": round(t_exact_all, 1), "exact_all_extrapolated": not every,
        "ratio_exact_all_head_edges_over_eap_ig": round(t_exact_all / t_ig, 2),
        "max_batch": args.max_batch, "forward_passes": sweep.n_forwards,
        "timing": ("exact time for all head edges = fixed costs + measured per-edge cost x head edges"
                   + (" (EXTRAPOLATED from the edges patched)" if not every else " (every edge run)")),
    }
    if args.json:
        print(json.dumps(row, indent=2))
        return
    w = max(len(k_) for k_ in row)
    for k_, v in row.items():
        print(f"{k_:<{w}}  {v}")


if __name__ == "__main__":
    main()
