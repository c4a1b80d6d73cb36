"""Circuit discovery on IOI or Colored Objects: EAP, EAP-IG, ACDC-style pruning or path
patching over the graph of heads and MLPs, with the circuit's faithfulness (metric with
everything outside it mean-ablated from the corrupt distribution, over the full model's
metric) and, optionally, the Spearman correlation of the method's head scores with exact
activation patching of each head.

This module orchestrates the phases: the prompts of each split, attribution on the discovery
prompts, the method's own circuit, the faithfulness curve on the validation prompts, the
size choice, EAP-IG's convergence and the chosen circuit on the test prompts. The Config and
its checks live in ``config``, the measuring in ``measuring``, the Result in ``result`` and
the figures and headlines in ``figures``; their public names are importable from here too."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import torch

from workbench.checks import checked_run
from workbench.patching.graph import Graph
from workbench.patching.mib import mib_edge_count
from workbench.results import provenance
from workbench.stats import Interval, wilson

from .config import (ABLATIONS, ACDC_CANDIDATES, ACDC_TAUS, BATCH_SIZE, CURVE_METHODS, METHODS, PROMPT_SET_BYTES,  # noqa: F401
                     SIZES, SLACK, TASKS, TEST_OFFSET, VAL_OFFSET, CircuitConfig, check_circuit_size,
                     check_prompt_memory, check_task_and_method, parse_methods, parse_sizes, parse_taus,
                     prompt_set_bytes)
from .measuring import (CHANCE, ROWS_PER_PASS, Prepared, acdc_circuits, behaviour_defined,  # noqa: F401
                        build_task, choose_size, circuit_of, correct_per_prompt, discover, discovery_config,
                        edge_metrics, faithfulness, faithfulness_curve, faithfulness_interval, last_logits_batched,
                        normalised, positions, prepare, run_bytes, say, spearman, step_counts, task_scores,
                        topk_jaccard)
from .records import Convergence, FaithfulnessCurve, KindAccuracy, ThresholdCurve
from .result import CircuitResult, top_edge_list

if TYPE_CHECKING:
    from workbench.models import Model


def check_model(config: CircuitConfig, model: Model) -> None:
    """The spec's check before a run: the circuit fits the model's graph."""
    check_circuit_size(model, config.n_edges, config.threshold)


def estimate_bytes(config: CircuitConfig, model: Model) -> int:
    """The spec's memory estimate before a run (see ``run_bytes``)."""
    return run_bytes(model, config.task, config.n_prompts, config.method, config.n_edges, config.rows(),
                     config.seed, curve=True, compare_patching=config.compare_patching, n_val=config.n_val,
                     n_test=config.n_test, format=config.format,
                     acdc_curve="acdc" in parse_methods(config.curve_methods))


# ----------------------------------------------------------------------------- the phases
def prompt_format(config: CircuitConfig) -> str:
    """The Colored Objects format the run uses ('' for IOI)."""
    if config.task in ("colored-objects", "colored_objects") and not config.format:
        from workbench.datasets.colored_objects import DEFAULT_FORMAT

        return DEFAULT_FORMAT
    return config.format


def prepare_splits(model: Model, config: CircuitConfig, fmt: str) -> dict[str, Prepared]:
    """The discovery, validation and test prompts, each drawn with its own seed."""
    splits = (("discovery", config.n_prompts, config.seed), ("validation", config.n_val, config.seed + VAL_OFFSET),
              ("test", config.n_test, config.seed + TEST_OFFSET))
    return {split: prepare(model, build_task(config.task, model.tokenizer, n, seed, fmt)) for split, n, seed in splits}


def attribute(model: Model, config: CircuitConfig, disc: Prepared, curve_methods: list[str],
              progress: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Attribution on the discovery prompts: ({method: edge scores}, EAP-IG's per-step scores)."""
    from workbench.patching.eap import edge_attribution, edge_attribution_steps

    scores: dict[str, torch.Tensor] = {}
    per_step = None
    use_acdc = "acdc" in curve_methods or config.method == "acdc"  # ACDC tries the top EAP-IG edges
    wanted = (set(curve_methods) - {"acdc"}) | ({config.method} & {"eap", "eap-ig"}) | ({"eap-ig"} if use_acdc else set())
    if "eap-ig" in wanted:
        say(progress, f"EAP-IG, {config.ig_steps} steps on {len(disc.clean)} discovery prompts")
        per_step = edge_attribution_steps(model, disc.clean, disc.corrupt, disc.metric, config.ig_steps,
                                          config.rows(), progress)
        scores["eap-ig"] = per_step.mean(0)
    if "eap" in wanted:
        say(progress, "EAP")
        scores["eap"] = edge_attribution(model, disc.clean, disc.corrupt, disc.metric, "eap",
                                         batch_size=config.rows(), progress=progress)
    return scores, per_step


@dataclass
class OwnCircuit:
    """The method's own circuit when it is not a top-k one (ACDC, path patching), and ACDC's curve."""

    edges: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    acdc_curve: list[tuple[float, torch.Tensor]] | None = None
    n_try: int = 0  # the top EAP-IG edges each ACDC run tried


def own_circuit(model: Model, config: CircuitConfig, graph: Graph, disc: Prepared, scores: dict[str, torch.Tensor],
                curve_methods: list[str], progress: bool) -> OwnCircuit:
    """One exact ACDC run per threshold (and at --acdc-tau for --method acdc); path patching's circuit."""
    own = OwnCircuit()
    if "acdc" in curve_methods:
        taus = parse_taus(config.acdc_taus)
        run_taus = taus + ([float(config.acdc_tau)] if config.method == "acdc" and config.acdc_tau not in taus else [])
        own.n_try = min(config.acdc_candidates, graph.n_edges)
        say(progress, f"ACDC at tau {', '.join(f'{t:g}' for t in run_taus)} on {len(disc.clean)} discovery prompts, "
                      f"each run trying the top {own.n_try} EAP-IG edges (one forward each)")
        runs = dict(zip(run_taus, acdc_circuits(model, graph, disc, scores["eap-ig"], run_taus, config.acdc_candidates,
                                                config.ablation, progress)))
        own.acdc_curve = [(t, runs[t][0]) for t in taus]
        if config.method == "acdc":
            own.edges, own.scores = runs[float(config.acdc_tau)]
    if config.method in ("acdc", "path-patching") and own.edges is None:
        say(progress, f"{config.method} on the discovery prompts")
        _, own.scores, own.edges = discover(model, config, disc, progress, ranked=scores.get("eap-ig"))
    return own


def validation_curve(model: Model, config: CircuitConfig, graph: Graph, val: Prepared, scores: dict[str, torch.Tensor],
                     sizes: list[int], curve_methods: list[str], own: OwnCircuit, progress: bool) -> FaithfulnessCurve:
    """The faithfulness curve on the validation prompts: every top-k method at every size, ACDC's
    thresholds and the method's own circuit."""
    top_k = [m for m in curve_methods if m != "acdc"]
    acdc_curve = own.acdc_curve
    say(progress, f"faithfulness curve on {len(val.clean)} validation prompts ({len(sizes)} sizes x {len(top_k)} "
                  f"methods" + (f", {len(acdc_curve)} ACDC circuits" if acdc_curve else "") + f", {config.ablation} ablation)")
    curve = faithfulness_curve(model, graph, val, {m: scores[m] for m in top_k}, sizes, config.ablation,
                               extra={config.method: own.edges} if own.edges is not None else None, progress=progress,
                               thresholded={"acdc": acdc_curve} if acdc_curve else None)
    if acdc_curve:
        acdc_row = curve.methods["acdc"]
        assert isinstance(acdc_row, ThresholdCurve)
        curve.methods["acdc"] = dataclasses.replace(acdc_row, candidates=own.n_try)
    for m, row in curve.methods.items():
        labels = ([f"tau {t:g}, {n}" for t, n in zip(row.tau, row.n_edges)] if isinstance(row, ThresholdCurve)
                  else row.n_edges)
        say(progress, f"{config.task} {m} validation faithfulness (edges: value): " + ", ".join(
            f"{n}: {f:.3f}" for n, f in zip(labels, row.faithfulness)))
    return curve


@dataclass
class Chosen:
    """The circuit measured on the test prompts, and how its size was chosen."""

    edges: torch.Tensor
    edge_scores: torch.Tensor
    chosen_k: int | None
    chosen_by: str
    target_met: bool | None
    val_faith: float | None


def choose_circuit(model: Model, config: CircuitConfig, graph: Graph, preps: dict[str, Prepared],
                   scores: dict[str, torch.Tensor], sizes: list[int], curve: FaithfulnessCurve, own: OwnCircuit,
                   progress: bool) -> Chosen:
    """The method's own circuit, the size --n-edges gives, or the smallest size on the curve
    reaching --target on the validation prompts."""
    if own.edges is not None:
        assert own.scores is not None
        val_faith = curve.extra[config.method].faithfulness
        return Chosen(own.edges, own.scores, int(own.edges.sum()), config.method,
                      val_faith == val_faith and val_faith >= config.target, val_faith)
    edge_scores = scores[config.method]
    if config.n_edges is not None or config.threshold is not None:
        _, _, edges = discover(model, config, preps["discovery"], progress, ranked=edge_scores)
        return Chosen(edges, edge_scores, config.n_edges, "--n-edges", None, None)
    if config.method not in curve.methods:  # (its own curve, when not among --curve-methods)
        extra = faithfulness_curve(model, graph, preps["validation"], {config.method: edge_scores}, sizes, config.ablation)
        curve.methods.update(extra.methods)
    row = curve.methods[config.method]
    if behaviour_defined(curve):
        chosen_k, target_met = choose_size(curve.sizes, row.faithfulness, config.target)
        chosen_by = "target"
    else:  # the normalisation divides by noise: no size is claimed to reach the target
        chosen_k, target_met, chosen_by = curve.sizes[-1], False, "undefined"
        say(progress, f"{config.task}: the full model does not beat the all-ablated model on the validation "
                      f"prompts ({curve.full:.3f} vs {curve.all_ablated:.3f}); faithfulness is undefined")
    val_faith = row.faithfulness[curve.sizes.index(chosen_k)]
    return Chosen(circuit_of(graph, edge_scores, chosen_k), edge_scores, chosen_k, chosen_by, target_met, val_faith)


def ig_convergence(model: Model, config: CircuitConfig, graph: Graph, val: Prepared, per_step: torch.Tensor | None,
                   curve: FaithfulnessCurve, chosen_k: int | None, progress: bool) -> Convergence | None:
    """EAP-IG against its own highest step count: rank agreement, top-k Jaccard and the top-k
    circuit's validation faithfulness at every power of two of steps (None without EAP-IG)."""
    from workbench.patching.eap import ig_subsample

    if per_step is None:
        return None
    counts = step_counts(config.ig_steps)
    k = chosen_k or 200
    subs = {s_: ig_subsample(per_step, s_) for s_ in counts}
    full_ig = subs[config.ig_steps]
    flat = graph.valid
    convergence = Convergence(steps=counts, k=int(k),
                              spearman_vs_max=[spearman(subs[c][flat], full_ig[flat]) for c in counts],
                              topk_jaccard_vs_max=[topk_jaccard(subs[c], full_ig, graph, k) for c in counts])
    lower = [c for c in counts if c != config.ig_steps]
    if lower:
        say(progress, f"convergence: the top-{k} EAP-IG circuit with {lower} steps on the validation prompts")
        conv = faithfulness_curve(model, graph, val, {f"steps{c}": subs[c] for c in lower}, [k], config.ablation)
        f_by = {int(name[5:]): row.faithfulness[0] for name, row in conv.methods.items()}
        if "eap-ig" in curve.methods and k in curve.sizes:
            f_by[config.ig_steps] = curve.methods["eap-ig"].faithfulness[curve.sizes.index(k)]
        else:
            f_by[config.ig_steps] = faithfulness_curve(model, graph, val, {"m": full_ig}, [k],
                                                       config.ablation).methods["m"].faithfulness[0]
        convergence = dataclasses.replace(convergence, faithfulness=[f_by[c] for c in counts])
    return convergence


Measured = tuple[dict[str, Any], dict[str, Any], dict[str, Interval]]  # (JSON fields, tensor fields, intervals)


def measure_on_test(model: Model, config: CircuitConfig, graph: Graph, preps: dict[str, Prepared],
                    scores: dict[str, torch.Tensor], sizes: list[int], chosen: Chosen, base: dict[str, Any],
                    progress: bool) -> Measured:
    """The chosen circuit on the test prompts (``base``: the full model's scores there) and the
    comparable measures (MIB, the ablation beside, the node reference, stability): the Result's fields."""
    from workbench.patching.eap import head_grid, node_scores

    from .measures import comparable_measures

    test, edges = preps["test"], chosen.edges
    say(progress, f"the chosen circuit ({int(edges.sum())} edges) on {len(test.clean)} test prompts")
    vals = edge_metrics(model, graph, test, torch.stack([graph.valid, torch.zeros_like(graph.valid), edges]),
                        config.ablation)
    iv = faithfulness_interval(vals, "test", config.seed)
    say(progress, f"{config.task}: {int(edges.sum())} edges, test faithfulness {iv.text('.3f')} "
                  f"(validation {chosen.val_faith})")
    heads = [n for n in graph.nodes_of(edges) if n.startswith("L")]
    head_scores = head_grid(graph, node_scores(graph, chosen.edge_scores))
    extra, extra_arrays, extra_iv = comparable_measures(model, config, graph, preps, scores, sizes, int(edges.sum()),
                                                        len(heads), lambda text: say(progress, text), faithfulness_curve)
    tensors = {"edge_scores": chosen.edge_scores, "circuit": edges.bool(), "head_scores": head_scores,
               "scores": {m: sc for m, sc in scores.items() if sc is not chosen.edge_scores}, **extra_arrays}
    base = dict(base)
    hits = base.pop("hits")
    acc_iv = {k: wilson(int(sum(v)), len(v), split="test") for k, v in hits.items()}
    fields = {
        **base, "accuracies": {k: KindAccuracy.of(iv_, CHANCE[k]) for k, iv_ in acc_iv.items()},
        "n_edges_total": graph.n_edges, "n_edges": int(edges.sum()), "n_heads": len(heads), "heads": heads,
        "faithfulness": iv.value, "faithfulness_validation": chosen.val_faith, "target": config.target,
        "target_met": chosen.target_met, "chosen_by": chosen.chosen_by, "chosen_k": chosen.chosen_k,
        "circuit_metric": float(vals[2].mean()), "full_metric": float(vals[0].mean()),
        "ablated_metric": float(vals[1].mean()), "ablation": config.ablation,
        "spearman_vs_patching": spearman(head_scores, extra_arrays["head_patching"]) if "head_patching" in extra_arrays else None,
        "top_edges": top_edge_list(graph, chosen.edge_scores, edges), "n_edges_total_mib": mib_edge_count(graph), **extra,
    }
    intervals = {"faithfulness": iv, **{f"accuracy ({k.replace('_', ' ')})": v for k, v in acc_iv.items()}, **extra_iv}
    return fields, tensors, intervals


def measure_circuit(model: Model, config: CircuitConfig, progress: bool = True) -> Measured:
    """Discover on the discovery prompts, draw the faithfulness curve on the validation prompts,
    choose the size there, and measure the chosen circuit on the test prompts: (the Result's
    JSON fields, its tensor fields, its intervals)."""
    check_task_and_method(config.task, config.method)
    sizes = parse_sizes(config.sizes)
    curve_methods = parse_methods(config.curve_methods)
    fmt = prompt_format(config)
    preps = prepare_splits(model, config, fmt)
    graph = Graph.for_model(model)
    say(progress, f"{config.task}: scores on the test prompts")
    base = task_scores(model, preps["test"], config.rows())
    scores, per_step = attribute(model, config, preps["discovery"], curve_methods, progress)
    own = own_circuit(model, config, graph, preps["discovery"], scores, curve_methods, progress)
    curve = validation_curve(model, config, graph, preps["validation"], scores, sizes, curve_methods, own, progress)
    chosen = choose_circuit(model, config, graph, preps, scores, sizes, curve, own, progress)
    convergence = ig_convergence(model, config, graph, preps["validation"], per_step, curve, chosen.chosen_k, progress)
    fields, tensors, intervals = measure_on_test(model, config, graph, preps, scores, sizes, chosen, base, progress)
    fields = {"task": config.task, "method": config.method, "format": fmt or None,
              "n_prompts": len(preps["discovery"].clean), "n_val": len(preps["validation"].clean),
              "n_test": len(preps["test"].clean), **fields, "faithfulness_curve": curve, "convergence": convergence}
    return fields, tensors, intervals


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: CircuitConfig | None = None, progress: bool = True) -> CircuitResult:
    """Discover the circuit of ``config.task`` with ``config.method``, draw its faithfulness
    curve on held-out prompts, choose its size and measure it on the test prompts."""
    config = config or CircuitConfig()
    start = time.perf_counter()
    fields, tensors, intervals = measure_circuit(model, config, progress)
    result = CircuitResult(config=config, meta=provenance(model=model.name, seed=config.seed),
                           seconds=time.perf_counter() - start, **fields, **tensors)
    for name, iv in intervals.items():
        result.set_interval(name, iv)
    return result
