"""The circuit command's comparable measures, beside its own curve: MIB's CPR and CMD on the
test prompts, the curve under a second ablation, the exact node-level reference and the
stability of the discovery. Orchestration only: every measure is a core function
(``workbench.patching.faithfulness``, ``.nodes``, ``.methods``)."""
from __future__ import annotations

from typing import Any

import torch

from workbench.errors import InputError
from workbench.patching.graph import Graph

from .records import MibScores, NodeReference, Stability


STABLE_HEADS = 10
"""Heads whose set stability compares: the top 10 by node score, or the circuit's heads when it has
fewer. A large circuit holds nearly every head (IOI on SmolLM2: 269 of 270 at 19,998 edges), and
the set of all heads is stable whatever the discovery does."""


def parse_names(text: str, known: tuple[str, ...], option: str) -> list[str]:
    """'eap,eap-ig' -> ['eap', 'eap-ig'] ('' -> []); a one-line error for an unknown name."""
    out = [m.strip() for m in str(text).split(",") if m.strip()]
    for m in out:
        if m not in known:
            raise InputError(f"{option}: unknown method '{m}'; choose among {', '.join(known)}")
    return out


def parse_counts(text: str, option: str) -> list[int]:
    """'3,6,12' -> [3, 6, 12]; a one-line error for anything else."""
    try:
        out = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise InputError(f"{option} {text!r} is not a comma-separated list of head counts; e.g. {option} 3,6,12") from None
    if out and out[0] < 1:
        raise InputError(f"{option} {text!r}: give head counts of at least 1")
    return out


def mib_scores(model: Any, graph: Graph, test: Any, scores: dict[str, torch.Tensor], methods: list[str],
               ablation: str, seed: int, progress: bool) -> dict[str, MibScores]:
    """MIB's faithfulness curve, CPR and CMD of each method's scores on the test prompts."""
    from workbench.patching.faithfulness import mib_curve

    return {m: mib_curve(model, graph, test.clean, test.corrupt, test.metric, scores[m], ablation, seed=seed,
                         split="test", progress=progress) for m in methods if m in scores}


def mib_node_scores(model: Any, graph: Graph, test: Any, exact: torch.Tensor, scores: dict[str, torch.Tensor],
                    ablation: str, seed: int) -> dict[str, MibScores]:
    """MIB's node-level curve, CPR and CMD on the test prompts for the exact node reference
    (``exact``: each head patched, [layer head]) and each method's node scores."""
    from workbench.patching.eap import head_grid, node_scores
    from workbench.patching.faithfulness import mib_node_curve

    grids = {"exact": exact, **{m: head_grid(graph, node_scores(graph, s)) for m, s in scores.items()}}
    return {m: mib_node_curve(model, graph, test.clean, test.corrupt, test.metric, g, ablation, seed=seed, split="test")
            for m, g in grids.items()}


def node_reference(model: Any, graph: Graph, disc: Any, val: Any, scores: dict[str, torch.Tensor],
                   head_counts: list[int], ablation: str) -> tuple[NodeReference, torch.Tensor]:
    """The exact node reference (every head patched from the corrupt run) against each method's
    node scores: rank agreement, and validation faithfulness of the top-k heads by each (every
    MLP kept) at equal k. Returns (the table, the exact effects [layer head])."""
    from workbench.patching.eap import head_grid, node_scores
    from workbench.patching.faithfulness import edge_values, normalised_curve
    from workbench.patching.nodes import compare_heads, exact_head_effects, head_names, node_circuit

    exact = exact_head_effects(model, disc.clean, disc.corrupt, disc.metric)
    grids = {"exact": exact, **{m: head_grid(graph, node_scores(graph, s)) for m, s in scores.items()}}
    counts = [k for k in head_counts if k <= exact.numel()]
    masks, keys = [graph.valid, torch.zeros_like(graph.valid)], []
    for name, grid in grids.items():
        for k in counts:
            masks.append(node_circuit(graph, head_names(graph, grid, k)))
            keys.append((name, k))
    vals = edge_values(model, graph, val.clean, val.corrupt, val.metric, torch.stack(masks), ablation)
    faith = normalised_curve(vals.double().cpu().numpy())
    by_ranking: dict[str, list[float]] = {}
    for (name, _k), f in zip(keys, faith):
        by_ranking.setdefault(name, []).append(float(f))
    agreement = {m: compare_heads(exact, grids[m], min(10, exact.numel())) for m in scores}
    return NodeReference(heads=counts, ablation=ablation, faithfulness=by_ranking, agreement=agreement,
                         top_heads_exact=head_names(graph, exact, min(10, exact.numel()))), exact


def discovery_stability(model: Any, disc: Any, method: str, config: Any, k_edges: int, k_heads: int,
                        n_boot: int) -> Stability:
    """Mean pairwise Jaccard of the top edges and heads over bootstrap resamples of the
    discovery prompts (the method rerun on each)."""
    from workbench.patching.eap import edge_attribution
    from workbench.patching.nodes import stability

    if method not in ("eap", "eap-ig"):
        raise InputError(f"stability is measured for eap and eap-ig, not {method}")

    def rediscover(clean, corrupt, metric):
        return edge_attribution(model, clean, corrupt, metric, method, steps=config.ig_steps,
                                batch_size=config.batch_size)

    return Stability(method=method, **stability(model, disc.clean, disc.corrupt, disc.metric, rediscover, k_edges,
                                                k_heads, n_boot, config.seed))


def comparable_measures(model: Any, config: Any, graph: Graph, preps: dict[str, Any], scores: dict[str, torch.Tensor],
                        sizes: list[int], chosen_k: int, n_heads: int, say: Any,
                        faithfulness_curve: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Everything this module measures, as the command's Config asks: (metrics, arrays, intervals).
    ``faithfulness_curve``: the command's own curve function (passed in, so this module does not
    import the analysis that imports it)."""
    val, test, disc = preps["validation"], preps["test"], preps["discovery"]
    metrics: dict[str, Any] = {}
    arrays: dict[str, torch.Tensor] = {}
    intervals: dict[str, Any] = {}
    methods = [m for m in parse_names(config.mib_methods, ("eap", "eap-ig"), "--mib-methods") if m in scores]
    if methods:
        say(f"MIB's CPR and CMD ({', '.join(methods)}) on {len(test.clean)} test prompts, {config.ablation} ablation")
        curves = mib_scores(model, graph, test, scores, methods, config.ablation, config.seed, False)
        metrics["mib"] = curves
        for m, c in curves.items():
            intervals[f"MIB CPR ({m})"], intervals[f"MIB CMD ({m})"] = c.cpr, c.cmd
            say(f"{m}: MIB CPR {c.cpr.text('.3f')}, CMD {c.cmd.text('.3f')}; faithfulness at MIB's fractions "
                f"(absolute scores): " + ", ".join(f"{p * 100:g}%: {f:.2f}" for p, f in
                                                   zip(c.fractions, c.faithfulness_absolute)))
    beside = config.beside_ablation
    if beside and beside != config.ablation:
        say(f"the faithfulness curve under {beside} ablation, beside")
        metrics["faithfulness_curve_beside"] = faithfulness_curve(model, graph, val, dict(scores), sizes, beside)
        metrics["beside_ablation"] = beside
    if config.compare_patching:
        say("the exact node reference: every head patched from the corrupt run")
        metrics["node_reference"], arrays["head_patching"] = node_reference(
            model, graph, disc, val, scores, parse_counts(config.node_heads, "--node-heads"), config.ablation)
        say(f"MIB's node-level CPR and CMD (exact, {', '.join(scores)}) on {len(test.clean)} test prompts")
        metrics["mib_nodes"] = mib_node_scores(model, graph, test, arrays["head_patching"], scores, config.ablation,
                                               config.seed)
        for m, c in metrics["mib_nodes"].items():
            intervals[f"MIB node CPR ({m})"], intervals[f"MIB node CMD ({m})"] = c.cpr, c.cmd
            say(f"{m} (heads): MIB CPR {c.cpr.text('.3f')}, CMD {c.cmd.text('.3f')}")
    if config.stability_boots > 1 and config.method in scores:
        say(f"stability: {config.method} on {config.stability_boots} bootstrap resamples of the discovery prompts")
        metrics["stability"] = discovery_stability(model, disc, config.method, config, chosen_k,
                                                   min(STABLE_HEADS, max(1, n_heads)), config.stability_boots)
    return metrics, arrays, intervals
