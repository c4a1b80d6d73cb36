"""Why is an edge circuit's faithfulness curve not monotone? Candidate causes, each measured on
the validation prompts of a saved ``workbench circuit`` run, from that run's own edge scores.

Variants of the top-k circuit at each size (all pruned of edges that do not reach the logits):

- ``|score|``: the command's own circuit (top k by absolute score);
- ``signed``: top k by signed score in MIB's sign (edges that carry the behaviour first), so
  edges that work against the behaviour are never chosen;
- ``+ M0``: the top k plus every edge into and out of the first MLP (M0 as part of the
  embedding: Hanna et al. and MIB note it acts as an extended embedding in GPT-2);
- ``+ MLP paths``: the top k plus every edge among the input, the MLPs and the logits (the
  MLP backbone kept whole), so only head edges are chosen;
- ``heads only``: the top k among edges that touch a head, plus the MLP backbone (equal size
  in head edges).

Each point carries a paired bootstrap interval over prompts (``stats.bootstrap``), so a dip
can be told from noise, and ``--n-val`` re-draws the curve on the first n prompts only, to
show what a 16-prompt validation set would have seen.

    python benchmarks/circuit_curve_probe.py --run RUN_FOLDER [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.stats import bootstrap  # noqa: E402


def touches(graph, node: str) -> torch.Tensor:
    """[S R] bool: every valid edge out of or into ``node``."""
    out = torch.zeros_like(graph.valid)
    if node in graph.senders:
        out[graph.sender_index(node)] = True
    if node in graph.receivers:
        out[:, graph.receiver_index(node)] = True
    return out & graph.valid


def variants(graph, scores: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Each candidate circuit of size k (before the forced edges are added)."""
    from workbench.patching.edge_graph import prune_dangling, top_edges
    from workbench.patching.faithfulness import top_n
    from workbench.patching.nodes import node_circuit

    top = top_edges(graph, scores, k)
    spine = node_circuit(graph, [])  # every edge among the input, the MLPs and the logits
    head_edges = scores.masked_fill(spine, 0.0)
    return {"|score|": prune_dangling(graph, top),
            # MIB's sign (the workbench's negated): edges that carry the behaviour first
            "signed": prune_dangling(graph, top_n(graph, -scores, k, absolute=False)),
            "+ M0": prune_dangling(graph, top | touches(graph, "M0")),
            "+ MLP paths": prune_dangling(graph, top | spine),
            "heads only": prune_dangling(graph, top_edges(graph, head_edges, k) | spine)}


def curve_points(vals: np.ndarray, n: int, seed: int = 0) -> list[dict]:
    """Rows [full, empty, circuits...] x prompts (first ``n`` prompts) -> each circuit's
    normalised faithfulness with a bootstrap interval over prompts."""
    from workbench.patching.faithfulness import normalised_curve

    x = vals[:, :n]

    def faith(i: int):
        return lambda r: float(normalised_curve(r.T[[0, 1, i]])[0])
    out = []
    for i in range(2, x.shape[0]):
        iv = bootstrap(x.T, faith(i), seed=seed, split="validation")
        out.append({"value": round(iv.value, 3), "low": round(iv.low, 3), "high": round(iv.high, 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a workbench circuit run folder")
    ap.add_argument("--method", default="eap-ig")
    ap.add_argument("--sizes", default="", help="edges (default: the run's curve sizes)")
    ap.add_argument("--n-val", default="16", help="also report the curve on the first n validation prompts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from workbench.analyses.circuits.analysis import prepare_splits, prompt_format
    from workbench.analyses.circuits.measuring import edge_metrics
    from workbench.models import load_model
    from workbench.patching.graph import Graph
    from workbench.results import load_result

    res = load_result(args.run)
    cfg = res.config
    scores = res.edge_scores if res.method == args.method else res.scores[args.method]
    model = load_model(res.meta.get("model", "smollm2-135m"))
    graph = Graph.for_model(model)
    val = prepare_splits(model, cfg, prompt_format(cfg))["validation"]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(res.faithfulness_curve.sizes)
    masks, keys = [graph.valid, torch.zeros_like(graph.valid)], []
    for k in sizes:
        for name, m in variants(graph, scores.float().cpu(), k).items():
            masks.append(m)
            keys.append((name, k, int(m.sum())))
    print(f"{len(masks)} circuits on {len(val.clean)} validation prompts ({cfg.ablation} ablation) ...", file=sys.stderr)
    vals = edge_metrics(model, graph, val, torch.stack(masks), cfg.ablation, progress=True).double().cpu().numpy()
    report = {"run": str(args.run), "method": args.method, "ablation": cfg.ablation, "n_val": vals.shape[1],
              "full": float(vals[0].mean()), "empty": float(vals[1].mean()), "curves": {}}
    for n in sorted({vals.shape[1]} | {int(x) for x in args.n_val.split(",") if x}):
        pts = curve_points(vals, min(n, vals.shape[1]))
        table = report["curves"].setdefault(str(min(n, vals.shape[1])), {})
        for (name, k, kept), p in zip(keys, pts):
            table.setdefault(name, []).append({"k": k, "edges kept": kept, **p})
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for n, table in report["curves"].items():
        print(f"\nvalidation prompts: {n}")
        for name, pts in table.items():
            print(f"{name:<12} " + "  ".join(f"{p['k']}({p['edges kept']}): {p['value']:.2f} [{p['low']:.2f}, "
                                             f"{p['high']:.2f}]" for p in pts))


if __name__ == "__main__":
    main()
