"""Circuit discovery on IOI or Colored Objects: EAP, EAP-IG, ACDC-style pruning or path
patching over the graph of heads and MLPs, with the circuit's faithfulness (metric with
everything outside it mean-ablated from the corrupt distribution, over the full model's
metric) and, optionally, the Spearman correlation of the method's head scores with exact
activation patching of each head."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from workbench.cache import Tokens
from workbench.datasets.base import PromptSet
from workbench.errors import InputError
from workbench.patching.graph import (Graph, LogitDiff, ablation_values, prune_dangling, run_edge_masks,
                                      sender_outputs, top_edges)
from workbench.results import Result, provenance, register_result
from workbench.spec import option

TASKS = ("ioi", "colored-objects")
METHODS = ("eap", "eap-ig", "acdc", "path-patching")
ABLATIONS = ("mean", "corrupt")
BATCH_SIZE = 8  # prompts per forward pass when --batch-size is not given: min(BATCH_SIZE, n_prompts)


def check_task_and_method(task: str, method: str) -> None:
    """One-line errors for a task or method the analysis does not know ('colored_objects' is
    accepted as another spelling of 'colored-objects')."""
    if task not in TASKS and task != "colored_objects":
        raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")


def check_circuit_size(model: Any, n_edges: int | None, threshold: float | None = None) -> None:
    """Refuse, before any work, a circuit larger than the model's graph."""
    total = Graph.for_model(model).n_edges
    if n_edges is not None and threshold is None and n_edges > total:
        raise InputError(f"asked for a circuit of {n_edges} edges but this model's graph has only "
                         f"{total}; choose --n-edges <= {total}")


# ----------------------------------------------------------------------------- memory
# Python strings of one prompt (clean and corrupt prompt, answers), measured with tracemalloc
# over 20,000 prompts: IOI 394 bytes, Colored Objects 1,019 bytes. Any model, any tokenizer.
PROMPT_SET_BYTES = {"ioi": 400, "colored-objects": 1000, "colored_objects": 1000}


SLACK = 1.1  # the allocator's overhead over the tensors counted (see run_bytes)


def prompt_set_bytes(task: str, n: int) -> int:
    """What ``n`` prompts of ``task`` hold before any model is involved: a floor under every
    run's memory, checked before the model loads."""
    return n * PROMPT_SET_BYTES.get(task, 1000)


def check_prompt_memory(command: str, task: str, n: int, option: str = "--n") -> None:
    """Refuse, before the model loads, a prompt count whose prompt set alone is over the free memory."""
    from workbench.resources import check_memory

    check_memory(prompt_set_bytes(task, n), f"workbench {command} {option} {n} ({task} prompts alone, before any model)",
                 f"lower {option}")


def positions(model: Any, task: str, n: int, seed: int = 0) -> int:
    """Token positions of the padded prompts, from a sample of up to 64 of them."""
    return int(build_task(task, model.tokenizer, min(n, 64), seed).tokens(model).input_ids.shape[1])


def run_bytes(model: Any, task: str, n: int, method: str, n_edges: int, batch_size: int, seed: int = 0,
              curve: bool = True, compare_patching: bool = False) -> int:
    """Estimated peak memory of discovering and measuring one circuit on ``n`` prompts.

    What dominates is the batched edge-masked forward (``run_edge_masks``): every configuration
    (the full model and each circuit size of the faithfulness curve) runs over all ``n`` prompts
    in one batch, and each row and position holds the logits (vocab) and every sender's output
    as the receivers read it (senders x d_model), plus per-head inputs (a few heads x d_model):
    ``configs x prompts x positions x (vocab + senders x d_model + 4 heads x d_model) x bytes``.
    EAP's receiver gradients (``batch_size`` rows) and path patching (8 senders per batch,
    logits only) are the other candidates for the peak.

    Calibration (CPU, float32, peak RSS from ``resource.getrusage`` over the RSS after the model
    loaded): tiny-llama (vocab 49152, 11 senders x 64, 20 positions, 5 configurations), eap-ig
    at --n 32 / 128 / 512: 0.71 / 2.86 / 11.3 GB, 22.3 MB a prompt; the tensors above: 20.4 MB a
    prompt, so ``SLACK`` (the allocator's overhead) makes it 22.4 MB. smollm2-135m (301 senders x
    576, 7 configurations), the faithfulness curve alone at --n 4 / 12: 1.10 / 2.30 GB, 1.02 MB a
    row-position; the tensors above: 0.97 MB, with ``SLACK`` 1.07 MB."""
    s = model.shape
    graph = Graph.for_model(model)
    pos = positions(model, task, n, seed)
    size = torch.empty((), dtype=model.dtype).element_size()
    per_head = 4 * s.n_heads * s.d_model
    edge_row = size * pos * (s.d_vocab + len(graph.senders) * s.d_model + per_head)
    plain_row = size * pos * (s.d_vocab + per_head)
    grad_row = size * pos * (2 * s.d_vocab + 3 * len(graph.receivers) * s.d_model)
    if method in ("eap", "eap-ig"):
        configs = 1 + len(curve_sizes(n_edges, graph.n_edges)) if curve else 2
        peak = max(max(configs, 2) * n * edge_row, batch_size * grad_row)
    elif method == "acdc":
        peak = max(max(2, 64 // n) * n * edge_row, batch_size * grad_row)
    else:
        peak = max(8 * n * plain_row, 2 * n * edge_row)
    if compare_patching:
        peak = max(peak, min(max(512, n), n * s.n_layers * s.n_heads) * plain_row)
    return int(SLACK * (peak + prompt_set_bytes(task, n) + 4 * n * pos * 8))


@dataclass
class CircuitConfig:
    task: str = option("ioi", help=f"the task: {' | '.join(TASKS)}")
    method: str = option("eap-ig", help=f"discovery method: {' | '.join(METHODS)}")
    n_prompts: int = option(8, flag="--n", help="prompts (bounded by the memory they need, checked before the run)",
                            min=1)
    seed: int = 0
    n_edges: int = option(200, help="circuit size: top edges by |score|", min=1)
    threshold: float | None = option(None, cli=False, help="keep edges with |score| above this instead of the top n_edges")
    ig_steps: int = option(3, flag="--steps", help="EAP-IG integration steps", min=1, max=1000)
    ablation: str = option("mean", help="what edges outside the circuit carry: the corrupt prompts' mean, "
                           "or the paired corrupt run", choices=ABLATIONS)
    batch_size: int | None = option(None, help=f"prompts per forward pass (default: min({BATCH_SIZE}, --n))", min=1)
    acdc_tau: float = option(0.05, help="ACDC: drop an edge when the metric moves less than this", min=0)
    acdc_candidates: int = option(300, help="edges ACDC tries (top EAP-IG edges)", min=1)
    path_top: int = option(6, help="path patching: heads kept in each of the two rounds", min=1)
    compare_patching: bool = option(False, help="also patch every head exactly; report Spearman")

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = max(1, min(BATCH_SIZE, self.n_prompts))

    def validate(self) -> None:
        check_task_and_method(self.task, self.method)
        check_prompt_memory("circuit", self.task, self.n_prompts)


def build_task(task: str, tokenizer: Any, n: int, seed: int) -> PromptSet:
    """The prompt set of a task (clean, corrupt, answers)."""
    if task == "ioi":
        from workbench.datasets.ioi import ioi_prompts

        return ioi_prompts(n, tokenizer, seed=seed)
    if task in ("colored-objects", "colored_objects"):
        from workbench.datasets.colored_objects import colored_object_prompts

        return colored_object_prompts(n, tokenizer, seed=seed)
    raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


@dataclass
class Prepared:
    """A task ready for patching: tokens, the metric, and the answer candidates."""

    prompts: PromptSet
    clean: Tokens
    corrupt: Tokens
    metric: LogitDiff
    candidates: torch.Tensor | None


def prepare(model: Any, ps: PromptSet) -> Prepared:
    """Validate answers (one token each) and the clean/corrupt pairing (same token lengths)."""
    correct, wrong = ps.answer_ids(model)
    clean, corrupt = ps.tokens(model), ps.corrupt_tokens(model)
    cands = None
    if ps.meta.get("candidates"):
        ids = [model.token_id(c) for c in ps.meta["candidates"]]
        cands = torch.tensor(ids, device=model.device)[None].expand(len(ps), -1)
    return Prepared(ps, clean, corrupt, LogitDiff(correct, wrong), cands)


def task_scores(model: Any, prep: Prepared) -> dict[str, float]:
    """Mean logit difference (clean, corrupt) and accuracy on the clean prompts."""
    from workbench.patching.metrics import accuracy

    last_clean, _ = sender_outputs(model, prep.clean)
    last_corrupt, _ = sender_outputs(model, prep.corrupt)
    ld = prep.metric(last_clean)
    if prep.candidates is not None:
        acc = float(accuracy(last_clean, prep.metric.correct, prep.candidates))
    else:
        acc = float((ld > 0).float().mean())
    return {"logit_diff": float(ld.mean()), "corrupt_logit_diff": float(prep.metric(last_corrupt).mean()), "accuracy": acc}


def faithfulness(model: Any, graph: Graph, prep: Prepared, edges: torch.Tensor, ablation: str = "mean",
                 batch_size: int = 8) -> tuple[float, float]:
    """(metric of the circuit, faithfulness = circuit / full model), edges outside ``edges`` ablated."""
    _, acts = sender_outputs(model, prep.corrupt)
    ablate = ablation_values(acts, ablation, len(prep.clean))
    both = torch.stack([graph.valid, edges & graph.valid])
    vals = run_edge_masks(model, graph, prep.clean, ablate, both, prep.metric, max_batch=2 * len(prep.clean)).mean(1)
    full, circ = float(vals[0]), float(vals[1])
    return circ, (circ / full if abs(full) > 1e-8 else float("nan"))


def faithfulness_curve(model: Any, graph: Graph, prep: Prepared, scores: torch.Tensor, sizes: list[int],
                       ablation: str = "mean") -> list[float]:
    """Faithfulness of the top-k-edge circuits (pruned of dangling edges) for each k in ``sizes``,
    all in one batched run."""
    _, acts = sender_outputs(model, prep.corrupt)
    ablate = ablation_values(acts, ablation, len(prep.clean))
    masks = [graph.valid] + [prune_dangling(graph, top_edges(graph, scores, k)) for k in sizes]
    vals = run_edge_masks(model, graph, prep.clean, ablate, torch.stack(masks), prep.metric,
                          max_batch=len(masks) * len(prep.clean)).mean(1)
    full = float(vals[0])
    return [float(v) / full if abs(full) > 1e-8 else float("nan") for v in vals[1:]]


def curve_sizes(n_edges: int, total: int) -> list[int]:
    return sorted({min(total, k) for k in (n_edges // 2, n_edges, 2 * n_edges, 5 * n_edges, 20 * n_edges, total) if k >= 1})


def discover(model: Any, config: CircuitConfig, prep: Prepared, progress: bool = True) -> tuple[Graph, torch.Tensor, torch.Tensor]:
    """(graph, edge scores [S R], circuit edges [S R] bool) by the configured method."""
    from workbench.patching.eap import edge_attribution

    graph = Graph.for_model(model)
    check_task_and_method(config.task, config.method)
    check_circuit_size(model, config.n_edges, config.threshold)
    if config.method in ("eap", "eap-ig"):
        scores = edge_attribution(model, prep.clean, prep.corrupt, prep.metric, config.method, steps=config.ig_steps,
                                  batch_size=config.batch_size, progress=progress)
        edges = top_edges(graph, scores, None if config.threshold is not None else config.n_edges, config.threshold)
        return graph, scores, prune_dangling(graph, edges)
    if config.method == "acdc":
        from workbench.patching.acdc import acdc

        ranked = edge_attribution(model, prep.clean, prep.corrupt, prep.metric, "eap-ig", steps=config.ig_steps,
                                  batch_size=config.batch_size, progress=progress)
        k = min(config.acdc_candidates, graph.n_edges)
        cands = top_edges(graph, ranked, k)
        _, acts = sender_outputs(model, prep.corrupt)
        ablate = ablation_values(acts, config.ablation, len(prep.clean))
        keep, scores = acdc(model, graph, prep.clean, ablate, prep.metric, tau=config.acdc_tau, candidates=cands,
                            progress=progress)
        return graph, scores, prune_dangling(graph, keep)
    return (graph, *_path_patching_circuit(model, graph, prep, config, progress))


def _path_patching_circuit(model: Any, graph: Graph, prep: Prepared, config: CircuitConfig, progress: bool):
    """Wang et al.'s two rounds: heads that matter to the logits directly, then heads that
    matter to those through their queries, keys and values. The circuit keeps the found
    heads with the input, every MLP and the logits (MLPs are not ablated in Wang et al.)."""
    from workbench.patching.path import path_patch

    L, H = graph.n_layers, graph.n_heads
    scores = torch.zeros(graph.valid.shape)
    direct = path_patch(model, prep.clean, prep.corrupt, prep.metric, "logits", max_batch=8 * len(prep.clean),
                        progress=progress).effect
    top = direct.abs().flatten().topk(min(config.path_top, L * H)).indices.tolist()
    movers = [(i // H, i % H) for i in top]
    for l, h in movers:
        scores[graph.head_slice(l).start + h, -1] = direct[l, h]
    found = set(movers)
    last = max(l for l, _ in movers)
    senders = [(l, h) for l in range(last) for h in range(H)]
    if senders:
        second = path_patch(model, prep.clean, prep.corrupt, prep.metric, movers, "qkv", senders=senders,
                            max_batch=8 * len(prep.clean), progress=progress).effect
        order = second.abs().argsort(descending=True)[:config.path_top].tolist()
        for i in order:
            l, h = senders[i]
            found.add((l, h))
            for rl, rh in movers:
                if rl > l:
                    scores[graph.head_slice(l).start + h, graph.head_slice(rl).start + rh - 1] = second[i]
    keep_nodes = {"input", "logits"} | {f"M{l}" for l in range(L)} | {f"L{l}H{h}" for l, h in found}
    s_in = torch.tensor([s in keep_nodes for s in graph.senders])
    r_in = torch.tensor([r in keep_nodes for r in graph.receivers])
    edges = s_in[:, None] & r_in[None, :] & graph.valid
    return scores, prune_dangling(graph, edges)


def as_float(value: Any) -> float:
    """A saved number; NaN where it was saved as null (a ratio over a zero metric)."""
    return float("nan") if value is None else float(value)


@register_result
@dataclass
class CircuitResult(Result):
    analysis = "circuit"
    config_cls = CircuitConfig

    @property
    def task(self) -> str:
        return str(self.metrics["task"])

    @property
    def method(self) -> str:
        return str(self.metrics["method"])

    @property
    def n_prompts(self) -> int:
        return int(self.metrics["n_prompts"])

    @property
    def logit_diff(self) -> float:
        """Mean logit difference (correct - wrong) of the full model on the clean prompts."""
        return as_float(self.metrics["logit_diff"])

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def n_edges(self) -> int:
        """Edges in the circuit."""
        return int(self.metrics["n_edges"])

    @property
    def n_edges_total(self) -> int:
        """Edges in the model's graph."""
        return int(self.metrics["n_edges_total"])

    @property
    def n_heads(self) -> int:
        return int(self.metrics["n_heads"])

    @property
    def heads(self) -> list[str]:
        """The in-circuit heads, ``L{layer}H{head}``."""
        return list(self.metrics["heads"])

    @property
    def faithfulness(self) -> float:
        """The circuit's metric over the full model's (NaN when the full model's is 0)."""
        return as_float(self.metrics["faithfulness"])

    @property
    def circuit_metric(self) -> float:
        return as_float(self.metrics["circuit_metric"])

    @property
    def spearman_vs_patching(self) -> float | None:
        """Spearman correlation of the head scores with exact head patching (None unless asked for)."""
        rho = self.metrics.get("spearman_vs_patching")
        return None if rho is None else float(rho)

    @property
    def top_edges(self) -> list[tuple[str, str, float]]:
        """The strongest in-circuit edges: (sender, receiver, score)."""
        return [(str(s), str(r), float(v)) for s, r, v in self.metrics.get("top_edges", [])]

    @property
    def faithfulness_curve(self) -> dict[str, list] | None:
        """``{"n_edges": [...], "faithfulness": [...]}`` for EAP and EAP-IG; None otherwise."""
        return self.metrics.get("faithfulness_curve")

    @property
    def edge_scores(self) -> torch.Tensor:
        """[sender receiver] score of every edge."""
        return self.arrays["edge_scores"]

    @property
    def circuit(self) -> torch.Tensor:
        """[sender receiver] bool: the circuit's edges."""
        return self.arrays["circuit"].bool()

    @property
    def head_scores(self) -> torch.Tensor:
        """[layer head] node score of each head."""
        return self.arrays["head_scores"]

    @property
    def head_patching(self) -> torch.Tensor | None:
        """[layer head] effect of exact activation patching (with ``compare_patching``)."""
        return self.arrays.get("head_patching")

    def summary(self) -> dict[str, Any]:
        keys = ["task", "method", "n_prompts", "logit_diff", "accuracy", "n_edges", "n_heads", "faithfulness",
                "circuit_metric", "spearman_vs_patching", "faithfulness_curve", "heads", "top_edges"]
        out = {k: self.metrics.get(k) for k in keys}
        if self.path is not None:
            out["run"] = str(self.path)
        return out

    def report_sections(self) -> list:
        from .figures import circuit_sections

        return circuit_sections(self)


def check_model(config: CircuitConfig, model: Any) -> None:
    """The spec's check before a run: the circuit fits the model's graph."""
    check_circuit_size(model, config.n_edges, config.threshold)


def estimate_bytes(config: CircuitConfig, model: Any) -> int:
    """The spec's memory estimate before a run (see ``run_bytes``)."""
    return run_bytes(model, config.task, config.n_prompts, config.method, config.n_edges, config.batch_size,
                     config.seed, curve=True, compare_patching=config.compare_patching)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def run(model: Any, config: CircuitConfig | None = None, progress: bool = True) -> CircuitResult:
    """Discover the circuit of ``config.task`` with ``config.method`` and measure it."""
    from workbench.patching.eap import head_grid, node_scores

    config = config or CircuitConfig()
    check_task_and_method(config.task, config.method)
    start = time.perf_counter()
    prep = prepare(model, build_task(config.task, model.tokenizer, config.n_prompts, config.seed))
    base = task_scores(model, prep)
    graph, scores, edges = discover(model, config, prep, progress)
    circ_metric, faith = faithfulness(model, graph, prep, edges, config.ablation, config.batch_size)
    heads = [n for n in graph.nodes_of(edges) if n.startswith("L")]
    head_scores = head_grid(graph, node_scores(graph, scores))
    curve = None
    if config.method in ("eap", "eap-ig"):
        sizes = curve_sizes(config.n_edges, graph.n_edges)
        curve = {"n_edges": sizes, "faithfulness": faithfulness_curve(model, graph, prep, scores, sizes, config.ablation)}
    arrays = {"edge_scores": scores, "circuit": edges.to(torch.uint8), "head_scores": head_scores}
    rho = None
    if config.compare_patching:
        from workbench.patching.activation import patch_heads

        grid = patch_heads(model, prep.clean, prep.corrupt, prep.metric, progress=progress)
        arrays["head_patching"] = grid.effect
        rho = spearman(head_scores, grid.effect)
    flat = scores.abs().masked_fill(~edges, -1).flatten()
    order = flat.argsort(descending=True)[: min(20, int(edges.sum()))].tolist()
    R = len(graph.receivers)
    top = [[graph.senders[i // R], graph.receivers[i % R], round(float(scores.flatten()[i]), 5)] for i in order]
    metrics = {
        "task": config.task, "method": config.method, "n_prompts": len(prep.clean), **base,
        "n_edges_total": graph.n_edges, "n_edges": int(edges.sum()), "n_heads": len(heads), "heads": heads,
        "faithfulness": faith, "circuit_metric": circ_metric, "spearman_vs_patching": rho, "top_edges": top,
        "faithfulness_curve": curve,
        "seconds": time.perf_counter() - start,
    }
    return CircuitResult(config=config, metrics=metrics, arrays=arrays,
                         meta=provenance(model=model.name, seed=config.seed))
