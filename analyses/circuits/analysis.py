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
from workbench.patching.ablation import CHOICES as ABLATIONS, parse_ablation
from workbench.patching.methods import METHODS as METHOD_TABLE, DiscoveryConfig
from workbench.patching.mib import mib_edge_count
from workbench.results import Result, provenance, register_result
from workbench.spec import option
from workbench.stats import Interval, bootstrap, bootstrap_diff, wilson
from workbench.checks import checked_run

TASKS = ("ioi", "colored-objects")
METHODS = tuple(METHOD_TABLE)  # the core method table's keys (workbench.patching.methods)
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


def positions(model: Any, task: str, n: int, seed: int = 0, format: str = "") -> int:
    """Token positions of the padded prompts, from a sample of up to 64 of them."""
    return int(build_task(task, model.tokenizer, min(n, 64), seed, format).tokens(model).input_ids.shape[1])


def run_bytes(model: Any, task: str, n: int, method: str, n_edges: int | None, batch_size: int, seed: int = 0,
              curve: bool = True, compare_patching: bool = False, n_val: int = 16, n_test: int = 32,
              format: str = "", acdc_curve: bool = False) -> int:
    """Estimated peak memory of discovering one circuit on ``n`` prompts and measuring it on
    ``n_val`` validation and ``n_test`` test prompts.

    What dominates is the batched edge-masked forward (``run_edge_masks``): each pass holds
    ``max(ROWS_PER_PASS, n_val, n_test)`` rows (configurations x prompts; ACDC: 64), and each row
    and position holds the logits (vocab) and every sender's output as the receivers read it
    (senders x d_model), plus per-head inputs (a few heads x d_model). EAP's receiver
    gradients (``batch_size`` rows), the corrupt run's sender outputs that the ablation reads
    (every prompt of a split at once) and path patching (8 senders per batch, logits only) are
    the other candidates for the peak. Earlier calibration of the edge-masked rows (CPU,
    float32, peak RSS over the RSS after the model loaded): 1.02 MB a row-position on
    smollm2-135m against 0.97 MB counted, 22.3 MB a prompt on tiny-llama against 20.4 MB; ``SLACK``
    is that overhead."""
    s = model.shape
    graph = Graph.for_model(model)
    pos = max(positions(model, task, k, seed + off, format) for k, off in ((n, 0), (n_val, VAL_OFFSET), (n_test, TEST_OFFSET)))
    size = torch.empty((), dtype=model.dtype).element_size()  # cpu: only its element size is read
    per_head = 4 * s.n_heads * s.d_model
    edge_row = size * pos * (s.d_vocab + len(graph.senders) * s.d_model + per_head)
    plain_row = size * pos * (s.d_vocab + per_head)
    grad_row = size * pos * (2 * s.d_vocab + 3 * len(graph.receivers) * s.d_model)
    acts_row = size * pos * (s.n_layers * (s.n_heads * s.d_head + s.d_model) + 2 * s.d_model)
    rows = max(ROWS_PER_PASS, n_val, n_test) if curve else max(ROWS_PER_PASS, n_test)
    peak = max(rows * edge_row, batch_size * grad_row, max(n_val, n_test) * acts_row)
    if method == "acdc" or acdc_curve:  # (one configuration of the n discovery prompts per forward)
        peak = max(peak, max(64, n) * edge_row + n * acts_row)
    elif method == "path-patching":
        peak = max(peak, 8 * n * plain_row, 2 * n * edge_row)
    if compare_patching:
        peak = max(peak, min(max(512, n), n * s.n_layers * s.n_heads) * plain_row)
    prompts = prompt_set_bytes(task, n) + prompt_set_bytes(task, n_val) + prompt_set_bytes(task, n_test)
    return int(SLACK * (peak + prompts + 4 * (n + n_val + n_test) * pos * 8))


ACDC_CANDIDATES = 64  # edges ACDC tries, one forward each: ~3.5 s a trial on one thread (smollm2-135m, 8 IOI prompts)
SIZES = "50,100,200,500,1000,2000,5000,10000,20000"  # circuit sizes of the faithfulness curve (edges kept; log scale)
VAL_OFFSET = 500  # validation split (the curve, the size choice): prompts drawn with seed + VAL_OFFSET
TEST_OFFSET = 700  # test split (the chosen circuit's faithfulness): seed + TEST_OFFSET


def parse_sizes(text: str, option: str = "--sizes") -> list[int]:
    """'50,100,200' -> [50, 100, 200]; a one-line error for anything else."""
    try:
        sizes = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise InputError(f"{option} {text!r} is not a comma-separated list of edge counts; e.g. {option} {SIZES}") from None
    if not sizes or sizes[0] < 1:
        raise InputError(f"{option} {text!r}: give edge counts of at least 1; e.g. {option} {SIZES}")
    return sizes


CURVE_METHODS = ("eap", "eap-ig", "acdc")
ACDC_TAUS = "0.001,0.01,0.1"  # ACDC thresholds of the curve (log-spaced x10, logit-difference units)


def parse_methods(text: str) -> list[str]:
    """'eap,eap-ig,acdc' -> ['eap', 'eap-ig', 'acdc']: EAP and EAP-IG give a curve over --sizes
    (their top-k edges), ACDC one over --acdc-taus (one run per threshold)."""
    out = [m.strip() for m in str(text).split(",") if m.strip()]
    for m in out:
        if m not in CURVE_METHODS:
            raise InputError(f"--curve-methods: unknown method '{m}'; curves come from {', '.join(CURVE_METHODS)} "
                             "(path patching gives one circuit)")
    return out


def parse_taus(text: str, option: str = "--acdc-taus") -> list[float]:
    """'0.01,0.1,1' -> [0.01, 0.1, 1.0] (sorted, distinct); a one-line error for anything else."""
    try:
        taus = sorted({float(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise InputError(f"{option} {text!r} is not a comma-separated list of thresholds; e.g. {option} {ACDC_TAUS}") from None
    if not taus or taus[0] < 0 or any(t != t or t == float("inf") for t in taus):
        raise InputError(f"{option} {text!r}: give finite thresholds of at least 0; e.g. {option} {ACDC_TAUS}")
    return taus


@dataclass
class CircuitConfig:
    task: str = option("ioi", help=f"the task: {' | '.join(TASKS)}")
    method: str = option("eap-ig", help=f"discovery method: {' | '.join(METHODS)}")
    n_prompts: int = option(8, flag="--n", help="discovery prompts (bounded by the memory they need, checked before "
                            "the run)", min=1)
    seed: int = 0
    n_edges: int | None = option(None, help="circuit size (top edges by |score|); default: the smallest size on the "
                                 "curve whose validation faithfulness reaches --target", min=1)
    threshold: float | None = option(None, cli=False, help="keep edges with |score| above this instead of the top n_edges")
    ig_steps: int = option(8, flag="--steps", help="EAP-IG integration steps (the convergence is shown for every "
                           "power of two up to this; 8 agree with 16 at Spearman 0.996 on IOI)", min=1, max=1000)
    ablation: str = option("counterfactual", help="what edges outside the circuit carry: counterfactual (the paired "
                           "corrupt run; 'corrupt' is its old name), mean (over the corrupt prompts), zero, or "
                           "resample (another prompt's corrupt run)", choices=ABLATIONS)
    batch_size: int | None = option(None, help=f"prompts per forward pass (default: min({BATCH_SIZE}, --n))", min=1)
    target: float = option(0.8, help="faithfulness the default circuit must reach on the validation prompts "
                           "((circuit - all ablated) / (full - all ablated))", min=0.0, max=1.0)
    sizes: str = option(SIZES, help="circuit sizes (edges) of the faithfulness curve, comma-separated")
    curve_methods: str = option("eap,eap-ig", help="methods whose faithfulness curves are measured: eap, eap-ig (top-k "
                                "edges at --sizes), acdc (one ACDC run per --acdc-taus; slow, not in the default: see "
                                "docs/circuits.md)")
    n_val: int = option(16, flag="--val", help="validation prompts: the faithfulness curve and the size choice", min=2)
    n_test: int = option(16, flag="--test", help="test prompts: the chosen circuit's faithfulness and the accuracy",
                         min=2)
    format: str = option("", help="Colored Objects prompt format (default: the one chosen on the development split)")
    acdc_tau: float = option(0.05, help="ACDC: drop an edge when the metric moves less than this", min=0)
    acdc_candidates: int = option(ACDC_CANDIDATES, help="edges ACDC tries (top EAP-IG edges; one forward each)", min=1)
    acdc_taus: str = option(ACDC_TAUS, help="ACDC thresholds of the curve (with --curve-methods ...,acdc), "
                            "comma-separated: one exact ACDC run each")
    path_top: int = option(6, help="path patching: heads kept in each of the two rounds", min=1)
    compare_patching: bool = option(False, help="also patch every head exactly (the node reference): rank agreement "
                                    "with each method's head scores and faithfulness of the top --node-heads heads by each")
    node_heads: str = option("3,6,12,24", help="head counts at which node circuits (top heads, every MLP kept) are "
                             "compared with --compare-patching")
    mib_methods: str = option("eap-ig", help="methods whose MIB CPR and CMD are measured on the test prompts "
                              "(comma-separated among eap, eap-ig; '' for none)")
    beside_ablation: str = option("mean", help="a second ablation whose validation curve is drawn beside ('' for "
                                  "none)", choices=("",) + ABLATIONS)
    stability_boots: int = option(0, help="bootstrap resamples of the discovery prompts to rediscover on (mean "
                                  "pairwise Jaccard of the top edges and heads); 0: not measured", min=0, max=100)

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = max(1, min(BATCH_SIZE, self.n_prompts))
        if self.ablation in ABLATIONS:  # the old name 'corrupt' is stored as 'counterfactual'
            self.ablation = parse_ablation(self.ablation).value
        if self.beside_ablation in ABLATIONS:
            self.beside_ablation = parse_ablation(self.beside_ablation).value

    def validate(self) -> None:
        check_task_and_method(self.task, self.method)
        parse_ablation(self.ablation)
        if self.beside_ablation:
            parse_ablation(self.beside_ablation)
        from .measures import parse_counts, parse_names

        parse_names(self.mib_methods, ("eap", "eap-ig"), "--mib-methods")
        parse_counts(self.node_heads, "--node-heads")
        parse_sizes(self.sizes)
        parse_taus(self.acdc_taus)
        if self.method == "acdc" or "acdc" in parse_methods(self.curve_methods):
            from workbench.patching.acdc import check_candidates

            check_candidates(self.acdc_candidates)
        if self.format:
            from workbench.datasets.colored_objects import format_of

            format_of(self.format)
        for opt, n in (("--n", self.n_prompts), ("--val", self.n_val), ("--test", self.n_test)):
            check_prompt_memory("circuit", self.task, n, opt)


def build_task(task: str, tokenizer: Any, n: int, seed: int, format: str = "") -> PromptSet:
    """The prompt set of a task (clean, corrupt, answers); Colored Objects in ``format``
    (default: ``DEFAULT_FORMAT``, chosen on the development split)."""
    if task == "ioi":
        from workbench.datasets.ioi import ioi_prompts

        return ioi_prompts(n, tokenizer, seed=seed)
    if task in ("colored-objects", "colored_objects"):
        from workbench.datasets.colored_objects import DEFAULT_FORMAT, colored_object_prompts

        return colored_object_prompts(n, tokenizer, seed=seed, format=format or DEFAULT_FORMAT)
    raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


@dataclass
class Prepared:
    """A task ready for patching: tokens, the metric, and the answer candidates."""

    prompts: PromptSet
    clean: Tokens
    corrupt: Tokens
    metric: LogitDiff
    candidates: torch.Tensor | None
    query_candidates: torch.Tensor | None = None  # [N 3] the colours in each Colored Objects query


def prepare(model: Any, ps: PromptSet) -> Prepared:
    """Validate answers (one token each) and the clean/corrupt pairing (same token lengths)."""
    correct, wrong = ps.answer_ids(model)
    clean, corrupt = ps.tokens(model), ps.corrupt_tokens(model)
    cands = query = None
    if ps.meta.get("candidates"):
        ids = [model.token_id(c) for c in ps.meta["candidates"]]
        cands = torch.tensor(ids, device=model.device)[None].expand(len(ps), -1)
    if ps.meta.get("query_colors"):
        query = torch.tensor([[model.token_id(c) for c in row] for row in ps.meta["query_colors"]], device=model.device)
    return Prepared(ps, clean, corrupt, LogitDiff(correct, wrong), cands, query)


def correct_per_prompt(last: torch.Tensor, prep: Prepared) -> dict[str, torch.Tensor]:
    """[N] bool per prompt: right among the answer candidates the task defines. IOI: IO above S
    (chance 1/2); Colored Objects: argmax among the query's three colours (chance 1/3) and among
    all eight colours (chance 1/8)."""
    correct = prep.metric.correct
    out = {}
    if prep.query_candidates is not None:
        q = prep.query_candidates
        out["among_prompt"] = (q.gather(1, last.gather(1, q).argmax(1, keepdim=True))[:, 0] == correct).cpu()
    if prep.candidates is not None:
        c = prep.candidates
        out["among_all"] = (c.gather(1, last.gather(1, c).argmax(1, keepdim=True))[:, 0] == correct).cpu()
    if not out:
        out["io_over_s"] = (prep.metric(last) > 0).cpu()
    return out


CHANCE = {"among_prompt": 1 / 3, "among_all": 1 / 8, "io_over_s": 1 / 2}


def last_logits_batched(model: Any, tokens: Tokens, batch_size: int = 8) -> torch.Tensor:
    outs = []
    for i in range(0, len(tokens), batch_size):
        last, _ = sender_outputs(model, tokens.slice(i, min(len(tokens), i + batch_size)))
        outs.append(last)
    return torch.cat(outs)


def task_scores(model: Any, prep: Prepared, batch_size: int = 8) -> dict[str, Any]:
    """Mean logit difference (clean, corrupt) and accuracy on the clean prompts (``accuracy``:
    among the prompt's colours for Colored Objects, IO over S for IOI; ``accuracies``: each
    kind with its per-prompt hits)."""
    last_clean = last_logits_batched(model, prep.clean, batch_size)
    last_corrupt = last_logits_batched(model, prep.corrupt, batch_size)
    ld = prep.metric(last_clean)
    hits = correct_per_prompt(last_clean, prep)
    main = next(iter(hits))
    return {"logit_diff": float(ld.mean()), "corrupt_logit_diff": float(prep.metric(last_corrupt).mean()),
            "accuracy": float(hits[main].float().mean()), "accuracy_kind": main,
            "hits": {k: [bool(x) for x in v.tolist()] for k, v in hits.items()},
            "logit_diffs": [float(x) for x in ld.tolist()]}


ROWS_PER_PASS = 16  # prompts x configurations in one edge-masked forward (memory: see run_bytes)


def edge_metrics(model: Any, graph: Graph, prep: Prepared, masks: torch.Tensor, ablation: str = "counterfactual",
                 rows_per_pass: int = ROWS_PER_PASS, progress: bool = False) -> torch.Tensor:
    """Metric [C N] of each edge configuration ``masks`` [C S R] on ``prep``'s clean prompts, the
    edges outside a configuration carrying the corrupt prompts' mean (or the paired corrupt run)."""
    _, acts = sender_outputs(model, prep.corrupt)
    ablate = ablation_values(acts, ablation, len(prep.clean))
    return run_edge_masks(model, graph, prep.clean, ablate, masks, prep.metric,
                          max_batch=max(rows_per_pass, len(prep.clean)), progress=progress)


def normalised(circuit: float | torch.Tensor, full: float | torch.Tensor, empty: float | torch.Tensor) -> float:
    """(circuit - all ablated) / (full model - all ablated): 1 = the circuit carries the whole
    behaviour, 0 = no more than the fully ablated model; NaN when full == all ablated."""
    den = float(full) - float(empty)
    return (float(circuit) - float(empty)) / den if abs(den) > 1e-8 else float("nan")


def faithfulness_interval(values: torch.Tensor, split: str, seed: int = 0) -> Interval:
    """Normalised faithfulness of rows [full, all ablated, circuit] x prompts, with a bootstrap
    interval over prompts (the ratio of means recomputed on each resample)."""
    x = values.T.double().cpu().numpy()  # [N 3]

    def stat(r):
        return normalised(r[:, 2].mean(), r[:, 0].mean(), r[:, 1].mean())

    return bootstrap(x, stat, seed=seed, split=split)


def faithfulness(model: Any, graph: Graph, prep: Prepared, edges: torch.Tensor, ablation: str = "counterfactual",
                 batch_size: int = 8) -> tuple[float, float]:
    """(metric of the circuit, normalised faithfulness), edges outside ``edges`` ablated."""
    vals = edge_metrics(model, graph, prep, torch.stack([graph.valid, torch.zeros_like(graph.valid),
                                                         edges & graph.valid]), ablation).mean(1)
    return float(vals[2]), normalised(vals[2], vals[0], vals[1])


def circuit_of(graph: Graph, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The top-``k`` edges by |score|, pruned of edges that do not reach the logits ([S R] bool)."""
    return prune_dangling(graph, top_edges(graph, scores, min(k, graph.n_edges)))


def faithfulness_curve(model: Any, graph: Graph, prep: Prepared, scores: dict[str, torch.Tensor] | torch.Tensor,
                       sizes: list[int], ablation: str = "counterfactual", extra: dict[str, torch.Tensor] | None = None,
                       progress: bool = False,
                       thresholded: dict[str, list[tuple[float, torch.Tensor]]] | None = None) -> dict[str, Any]:
    """Normalised faithfulness of the top-k circuits of each method's scores, for each k in
    ``sizes``, on ``prep``'s prompts: ``{"sizes", "full", "all_ablated", "methods": {method:
    {"n_edges": [edges kept after pruning], "faithfulness": [...]}}, "extra": {name: value}}``.
    ``extra`` are other circuits ([S R] bool) measured in the same batch. ``thresholded``:
    methods whose circuits come one per threshold (ACDC: ``[(tau, circuit [S R] bool), ...]``);
    each is a row of ``methods`` with its own ``n_edges`` and a ``tau`` list instead of ``sizes``."""
    if isinstance(scores, torch.Tensor):
        scores = {"scores": scores}
    sizes = sorted({min(k, graph.n_edges) for k in sizes})
    masks, keys = [graph.valid, torch.zeros_like(graph.valid)], []
    for name, sc in scores.items():
        for k in sizes:
            masks.append(circuit_of(graph, sc, k))
            keys.append((name, k))
    for name, runs in (thresholded or {}).items():
        for tau, m in runs:
            masks.append(m & graph.valid)
            keys.append((("tau", name), float(tau)))
    for name, m in (extra or {}).items():
        masks.append(m & graph.valid)
        keys.append(("extra", name))
    vals = edge_metrics(model, graph, prep, torch.stack(masks), ablation, progress=progress).cpu()
    mean = vals.mean(1)
    full, empty = float(mean[0]), float(mean[1])
    effect = bootstrap_diff(vals[0].double().cpu().numpy(), vals[1].double().cpu().numpy(), split="validation")
    out: dict[str, Any] = {"sizes": sizes, "full": full, "all_ablated": empty, "methods": {}, "extra": {},
                           "effect": effect.to_dict(), "defined": bool(effect.low > 0)}
    for (name, k), m, v in zip(keys, masks[2:], mean[2:]):
        if name == "extra":
            out["extra"][k] = {"n_edges": int(m.sum()), "faithfulness": normalised(v, full, empty)}
            continue
        if isinstance(name, tuple):  # a thresholded method (ACDC): one circuit per tau
            row = out["methods"].setdefault(name[1], {"tau": [], "n_edges": [], "faithfulness": []})
            row["tau"].append(k)
        else:
            row = out["methods"].setdefault(name, {"n_edges": [], "faithfulness": []})
        row["n_edges"].append(int(m.sum()))
        row["faithfulness"].append(normalised(v, full, empty))
    return out


def behaviour_defined(curve: dict[str, Any]) -> bool:
    """Whether the full model beats the all-ablated model on the curve's prompts (the paired
    bootstrap interval of full - all ablated is above 0): without that the normalised
    faithfulness divides by noise and no size can be said to reach a target."""
    return bool(curve.get("defined", True))


def choose_size(sizes: list[int], faith: list[float], target: float) -> tuple[int, bool]:
    """(the smallest size whose faithfulness reaches ``target``, True), else (the most faithful size, False)."""
    for k, f in zip(sizes, faith):
        if f == f and f >= target:
            return k, True
    best = max(range(len(sizes)), key=lambda i: faith[i] if faith[i] == faith[i] else float("-inf"))
    return sizes[best], False


def curve_sizes(n_edges: int, total: int) -> list[int]:
    return sorted({min(total, k) for k in (n_edges // 2, n_edges, 2 * n_edges, 5 * n_edges, 20 * n_edges, total) if k >= 1})


def step_counts(steps: int) -> list[int]:
    """1, 2, 4, ... up to ``steps`` (the divisors of ``steps`` among the powers of two), and ``steps``."""
    out, s = [], 1
    while s < steps:
        if steps % s == 0:
            out.append(s)
        s *= 2
    return out + [steps]


def topk_jaccard(a: torch.Tensor, b: torch.Tensor, graph: Graph, k: int) -> float:
    ta, tb = top_edges(graph, a, min(k, graph.n_edges)), top_edges(graph, b, min(k, graph.n_edges))
    return float((ta & tb).sum()) / max(1, int((ta | tb).sum()))


def discovery_config(config: CircuitConfig, progress: bool = False, ranked: torch.Tensor | None = None,
                     taus: list[float] | None = None) -> "DiscoveryConfig":
    """The core method table's knobs from the command's Config."""
    from workbench.patching.methods import DiscoveryConfig

    return DiscoveryConfig(ig_steps=config.ig_steps, batch_size=config.batch_size, ablation=config.ablation,
                           acdc_taus=tuple(taus or [config.acdc_tau]), acdc_candidates=config.acdc_candidates,
                           path_top=config.path_top, ranked=ranked, progress=progress)


def discover(model: Any, config: CircuitConfig, prep: Prepared, progress: bool = True,
             ranked: torch.Tensor | None = None) -> tuple[Graph, torch.Tensor, torch.Tensor]:
    """(graph, edge scores [S R], circuit edges [S R] bool) by the configured method, through the
    core method table (``workbench.patching.methods``); EAP and EAP-IG keep the top
    ``config.n_edges`` edges (200 when it is None). ``ranked``: EAP-IG scores already computed
    (EAP-IG's own, or ACDC's candidates)."""
    from workbench.patching.methods import EdgeScores, method

    graph = Graph.for_model(model)
    check_task_and_method(config.task, config.method)
    check_circuit_size(model, config.n_edges, config.threshold)
    n_edges = config.n_edges if config.n_edges is not None else 200
    m = method(config.method)
    if config.method in ("eap", "eap-ig") and ranked is not None:
        found = EdgeScores(config.method, graph, ranked)
    else:
        found = m.discover(model, prep, discovery_config(config, progress, ranked))
    if found.circuit is not None:
        return graph, found.scores, found.circuit
    edges = top_edges(graph, found.scores, None if config.threshold is not None else min(n_edges, graph.n_edges),
                      config.threshold)
    return graph, found.scores, prune_dangling(graph, edges)


def acdc_circuits(model: Any, graph: Graph, prep: Prepared, ranked: torch.Tensor, taus: list[float],
                  n_candidates: int, ablation: str = "counterfactual",
                  progress: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ACDC on ``prep``'s prompts at each threshold in ``taus`` (the core method table's
    ``acdc``: each an exact, separate run over the top ``n_candidates`` edges of ``ranked``):
    ``[(circuit [S R] bool, pruned of edges that do not reach the logits; ACDC's score [S R]), ...]``."""
    from workbench.patching.methods import DiscoveryConfig, method

    cfg = DiscoveryConfig(ablation=ablation, acdc_taus=tuple(taus), acdc_candidates=n_candidates, ranked=ranked,
                          progress=progress)
    found = method("acdc").discover(model, prep, cfg)
    for i, (tau, keep, _) in enumerate(found.runs):
        if len(taus) > 1:
            say(progress, f"ACDC tau={tau:g} ({i + 1}/{len(taus)}): {int(keep.sum())} edges kept")
    return [(keep, scores) for _, keep, scores in found.runs]


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
        """Normalised faithfulness on the test prompts: (circuit - all ablated) / (full - all ablated)."""
        return as_float(self.metrics["faithfulness"])

    @property
    def faithfulness_interval(self) -> Interval | None:
        """The test-split faithfulness with its bootstrap interval over prompts."""
        return self.intervals.get("faithfulness")

    @property
    def target(self) -> float | None:
        return self.metrics.get("target")

    @property
    def target_met(self) -> bool | None:
        """Whether the chosen circuit reached the target on the validation prompts (None: size given)."""
        return self.metrics.get("target_met")

    @property
    def format(self) -> str | None:
        """The Colored Objects prompt format (None for IOI)."""
        return self.metrics.get("format")

    @property
    def accuracies(self) -> dict[str, dict[str, Any]]:
        """Test-split accuracy of the full model per kind (Wilson interval and chance level)."""
        return dict(self.metrics.get("accuracies") or {})

    @property
    def convergence(self) -> dict[str, Any] | None:
        """EAP-IG against its own highest step count: ``{"steps", "spearman_vs_max", "topk_jaccard_vs_max",
        "faithfulness"}`` (None without EAP-IG)."""
        return self.metrics.get("convergence")

    def target_text(self) -> str:
        """One plain sentence on the chosen size and the target."""
        m = self.metrics
        if m.get("chosen_by") == "undefined":
            c = self.faithfulness_curve or {}
            return (f"the full model does not beat the all-ablated model on the validation prompts (logit difference "
                    f"{c.get('full', float('nan')):.3f} vs {c.get('all_ablated', float('nan')):.3f}), so normalised "
                    f"faithfulness is undefined and the target is NOT met; the circuit returned is the largest on the "
                    f"curve ({m['chosen_k']} edges), not a faithful one")
        if m.get("chosen_by") == "target":
            if m.get("target_met"):
                return (f"the smallest {self.method} circuit on the curve reaching validation faithfulness "
                        f"{self.target:g}: {m['chosen_k']} edges (validation {m['faithfulness_validation']:.3f})")
            return (f"no {self.method} circuit on the curve reaches validation faithfulness {self.target:g}; the most "
                    f"faithful size is {m['chosen_k']} edges at {m['faithfulness_validation']:.3f}: the target is NOT met")
        if m.get("chosen_by") == "--n-edges":
            return f"circuit size {m['chosen_k']} given by --n-edges (no target applied)"
        met = "meets" if m.get("target_met") else "does NOT meet"
        return f"{self.method}'s own circuit ({self.n_edges} edges) {met} the target {self.target:g} on the validation prompts"

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
    def faithfulness_curve(self) -> dict[str, Any] | None:
        """Validation-split curve: ``{"sizes", "full", "all_ablated", "methods": {method: {"n_edges",
        "faithfulness"}}, "extra": {method: {"n_edges", "faithfulness"}}}``; an ACDC row
        (``--curve-methods ...,acdc``) has one entry per threshold and a ``"tau"`` list."""
        return self.metrics.get("faithfulness_curve")

    def curve_rows(self) -> list[dict[str, Any]]:
        """The faithfulness-against-edges table: one row per (method, size)."""
        c = self.faithfulness_curve or {}
        rows = []
        for m, row in (c.get("methods") or {}).items():
            if "tau" in row:  # ACDC: one circuit per threshold
                for t, n, f in zip(row["tau"], row["n_edges"], row["faithfulness"]):
                    rows.append({"method": m, "top k": None, "ACDC tau": t, "edges kept": n,
                                 "faithfulness (validation)": f})
                continue
            for k, n, f in zip(c["sizes"], row["n_edges"], row["faithfulness"]):
                rows.append({"method": m, "top k": k, "ACDC tau": None, "edges kept": n, "faithfulness (validation)": f})
        for m, row in (c.get("extra") or {}).items():
            rows.append({"method": f"{m} (returned circuit)", "top k": None, "ACDC tau": None, "edges kept": row["n_edges"],
                         "faithfulness (validation)": row["faithfulness"]})
        return rows

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
        keys = ["task", "method", "format", "n_prompts", "n_val", "n_test", "logit_diff", "accuracy", "accuracies",
                "n_edges", "n_heads", "faithfulness", "faithfulness_validation", "target", "target_met", "chosen_by",
                "circuit_metric", "full_metric", "ablated_metric", "spearman_vs_patching", "faithfulness_curve",
                "convergence", "heads", "top_edges", "ablation", "n_edges_total", "n_edges_total_mib", "mib",
                "faithfulness_curve_beside", "node_reference", "stability"]
        out = {k: self.metrics.get(k) for k in keys}
        out["faithfulness_interval"] = self.metrics.get("intervals", {}).get("faithfulness")
        out["target_text"] = self.target_text()
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
                     config.seed, curve=True, compare_patching=config.compare_patching, n_val=config.n_val,
                     n_test=config.n_test, format=config.format,
                     acdc_curve="acdc" in parse_methods(config.curve_methods))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().cpu().numpy(), b.flatten().cpu().numpy()).statistic)


def say(progress: bool, message: str) -> None:
    """A stage of a long run, on stderr (with the tqdm bars) when ``progress``."""
    if progress:
        import sys

        from tqdm.auto import tqdm

        tqdm.write(f"[circuit] {message}", file=sys.stderr)


def measure_circuit(model: Any, config: CircuitConfig, progress: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Interval]]:
    """Discover on the discovery prompts, draw the faithfulness curve on the validation prompts,
    choose the size there, and measure the chosen circuit on the test prompts: (metrics, arrays)."""
    from workbench.patching.eap import edge_attribution, edge_attribution_steps, head_grid, ig_subsample, node_scores

    check_task_and_method(config.task, config.method)
    sizes = parse_sizes(config.sizes)
    curve_methods = parse_methods(config.curve_methods)
    fmt = config.format
    if config.task in ("colored-objects", "colored_objects") and not fmt:
        from workbench.datasets.colored_objects import DEFAULT_FORMAT

        fmt = DEFAULT_FORMAT
    preps = {}
    for split, n, seed in (("discovery", config.n_prompts, config.seed), ("validation", config.n_val, config.seed + VAL_OFFSET),
                           ("test", config.n_test, config.seed + TEST_OFFSET)):
        preps[split] = prepare(model, build_task(config.task, model.tokenizer, n, seed, fmt))
    disc, val, test = preps["discovery"], preps["validation"], preps["test"]
    graph = Graph.for_model(model)
    say(progress, f"{config.task}: scores on the test prompts")
    base = task_scores(model, test, config.batch_size)

    # ---- attribution on the discovery prompts
    scores: dict[str, torch.Tensor] = {}
    per_step = None
    use_acdc = "acdc" in curve_methods or config.method == "acdc"  # ACDC tries the top EAP-IG edges
    wanted = (set(curve_methods) - {"acdc"}) | ({config.method} & {"eap", "eap-ig"}) | ({"eap-ig"} if use_acdc else set())
    if "eap-ig" in wanted:
        say(progress, f"EAP-IG, {config.ig_steps} steps on {len(disc.clean)} discovery prompts")
        per_step = edge_attribution_steps(model, disc.clean, disc.corrupt, disc.metric, config.ig_steps,
                                          config.batch_size, progress)
        scores["eap-ig"] = per_step.mean(0)
    if "eap" in wanted:
        say(progress, "EAP")
        scores["eap"] = edge_attribution(model, disc.clean, disc.corrupt, disc.metric, "eap",
                                         batch_size=config.batch_size, progress=progress)

    # ---- the method's own circuit when it is not a top-k one
    own = None
    acdc_curve = None
    if "acdc" in curve_methods:  # one exact ACDC run per threshold (and at --acdc-tau for --method acdc)
        taus = parse_taus(config.acdc_taus)
        run_taus = taus + ([float(config.acdc_tau)] if config.method == "acdc" and config.acdc_tau not in taus else [])
        n_try = min(config.acdc_candidates, graph.n_edges)
        say(progress, f"ACDC at tau {', '.join(f'{t:g}' for t in run_taus)} on {len(disc.clean)} discovery prompts, "
                      f"each run trying the top {n_try} EAP-IG edges (one forward each)")
        runs = dict(zip(run_taus, acdc_circuits(model, graph, disc, scores["eap-ig"], run_taus, config.acdc_candidates,
                                                config.ablation, progress)))
        acdc_curve = [(t, runs[t][0]) for t in taus]
        if config.method == "acdc":
            own, own_scores = runs[float(config.acdc_tau)]
    if config.method in ("acdc", "path-patching") and own is None:
        say(progress, f"{config.method} on the discovery prompts")
        _, own_scores, own = discover(model, config, disc, progress, ranked=scores.get("eap-ig"))
    # ---- the curve on the validation prompts
    top_k = [m for m in curve_methods if m != "acdc"]
    say(progress, f"faithfulness curve on {len(val.clean)} validation prompts ({len(sizes)} sizes x {len(top_k)} "
                  f"methods" + (f", {len(acdc_curve)} ACDC circuits" if acdc_curve else "") + f", {config.ablation} ablation)")
    curve = faithfulness_curve(model, graph, val, {m: scores[m] for m in top_k}, sizes, config.ablation,
                               extra={config.method: own} if own is not None else None, progress=progress,
                               thresholded={"acdc": acdc_curve} if acdc_curve else None)
    if acdc_curve:
        curve["methods"]["acdc"]["candidates"] = n_try  # the top EAP-IG edges each run tried
    for m, row in curve["methods"].items():
        labels = [f"tau {t:g}, {n}" for t, n in zip(row["tau"], row["n_edges"])] if "tau" in row else row["n_edges"]
        say(progress, f"{config.task} {m} validation faithfulness (edges: value): " + ", ".join(
            f"{n}: {f:.3f}" for n, f in zip(labels, row["faithfulness"])))
    # ---- the circuit
    if own is not None:
        edges, edge_scores = own, own_scores
        chosen_k, chosen_by = int(own.sum()), config.method
        val_faith = curve["extra"][config.method]["faithfulness"]
        target_met = val_faith == val_faith and val_faith >= config.target
    else:
        edge_scores = scores[config.method]
        if config.n_edges is not None or config.threshold is not None:
            _, _, edges = discover(model, config, disc, progress, ranked=edge_scores)
            chosen_k, chosen_by, target_met = config.n_edges, "--n-edges", None
            val_faith = None
        else:
            if config.method not in curve["methods"]:  # (its own curve, when not among --curve-methods)
                extra = faithfulness_curve(model, graph, val, {config.method: edge_scores}, sizes, config.ablation)
                curve["methods"].update(extra["methods"])
            row = curve["methods"][config.method]
            if behaviour_defined(curve):
                chosen_k, target_met = choose_size(curve["sizes"], row["faithfulness"], config.target)
                chosen_by = "target"
            else:  # the normalisation divides by noise: no size is claimed to reach the target
                chosen_k, target_met, chosen_by = curve["sizes"][-1], False, "undefined"
                say(progress, f"{config.task}: the full model does not beat the all-ablated model on the validation "
                              f"prompts ({curve['full']:.3f} vs {curve['all_ablated']:.3f}); faithfulness is undefined")
            val_faith = row["faithfulness"][curve["sizes"].index(chosen_k)]
            edges = circuit_of(graph, edge_scores, chosen_k)
    # ---- convergence of EAP-IG in the number of steps
    convergence = None
    if per_step is not None:
        counts = step_counts(config.ig_steps)
        k = chosen_k or 200
        subs = {s_: ig_subsample(per_step, s_) for s_ in counts}
        full_ig = subs[config.ig_steps]
        flat = graph.valid
        convergence = {"steps": counts, "k": int(k),
                       "spearman_vs_max": [spearman(subs[c][flat], full_ig[flat]) for c in counts],
                       "topk_jaccard_vs_max": [topk_jaccard(subs[c], full_ig, graph, k) for c in counts]}
        lower = [c for c in counts if c != config.ig_steps]
        if lower:
            say(progress, f"convergence: the top-{k} EAP-IG circuit with {lower} steps on the validation prompts")
            conv = faithfulness_curve(model, graph, val, {f"steps{c}": subs[c] for c in lower}, [k], config.ablation)
            f_by = {int(name[5:]): row["faithfulness"][0] for name, row in conv["methods"].items()}
            if "eap-ig" in curve["methods"] and k in curve["sizes"]:
                f_by[config.ig_steps] = curve["methods"]["eap-ig"]["faithfulness"][curve["sizes"].index(k)]
            else:
                f_by[config.ig_steps] = faithfulness_curve(model, graph, val, {"m": full_ig}, [k],
                                                           config.ablation)["methods"]["m"]["faithfulness"][0]
            convergence["faithfulness"] = [f_by[c] for c in counts]
    # ---- the chosen circuit on the test prompts
    say(progress, f"the chosen circuit ({int(edges.sum())} edges) on {len(test.clean)} test prompts")
    vals = edge_metrics(model, graph, test, torch.stack([graph.valid, torch.zeros_like(graph.valid), edges]),
                        config.ablation)
    iv = faithfulness_interval(vals, "test", config.seed)
    say(progress, f"{config.task}: {int(edges.sum())} edges, test faithfulness {iv.text('.3f')} (validation {val_faith})")
    heads = [n for n in graph.nodes_of(edges) if n.startswith("L")]
    head_scores = head_grid(graph, node_scores(graph, edge_scores))
    arrays = {"edge_scores": edge_scores, "circuit": edges.to(torch.uint8), "head_scores": head_scores}
    for m, sc in scores.items():
        if sc is not edge_scores:  # the method's own scores are edge_scores
            arrays[f"scores_{m}"] = sc
    from .measures import comparable_measures

    extra, extra_arrays, extra_iv = comparable_measures(model, config, graph, preps, scores, sizes, int(edges.sum()),
                                                        len(heads), lambda text: say(progress, text), faithfulness_curve)
    arrays.update(extra_arrays)
    rho = spearman(head_scores, extra_arrays["head_patching"]) if "head_patching" in extra_arrays else None
    flat = edge_scores.abs().masked_fill(~edges, -1).flatten()
    order = flat.argsort(descending=True)[: min(20, int(edges.sum()))].tolist()
    R = len(graph.receivers)
    top = [[graph.senders[i // R], graph.receivers[i % R], round(float(edge_scores.flatten()[i]), 5)] for i in order]
    hits = base.pop("hits")
    acc_iv = {k: wilson(int(sum(v)), len(v), split="test") for k, v in hits.items()}
    metrics = {
        "task": config.task, "method": config.method, "format": fmt or None, "n_prompts": len(disc.clean),
        "n_val": len(val.clean), "n_test": len(test.clean), **base,
        "accuracies": {k: {**iv_.to_dict(), "chance": CHANCE[k]} for k, iv_ in acc_iv.items()},
        "n_edges_total": graph.n_edges, "n_edges": int(edges.sum()), "n_heads": len(heads), "heads": heads,
        "faithfulness": iv.value, "faithfulness_validation": val_faith, "target": config.target,
        "target_met": target_met, "chosen_by": chosen_by, "chosen_k": chosen_k,
        "circuit_metric": float(vals[2].mean()), "full_metric": float(vals[0].mean()),
        "ablated_metric": float(vals[1].mean()), "ablation": config.ablation,
        "spearman_vs_patching": rho, "top_edges": top, "faithfulness_curve": curve, "convergence": convergence,
        "n_edges_total_mib": mib_edge_count(graph), **extra,
    }
    intervals = {"faithfulness": iv, **{f"accuracy ({k.replace('_', ' ')})": v for k, v in acc_iv.items()}, **extra_iv}
    return metrics, arrays, intervals


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Any, config: CircuitConfig | None = None, progress: bool = True) -> CircuitResult:
    """Discover the circuit of ``config.task`` with ``config.method``, draw its faithfulness
    curve on held-out prompts, choose its size and measure it on the test prompts."""
    config = config or CircuitConfig()
    start = time.perf_counter()
    metrics, arrays, intervals = measure_circuit(model, config, progress)
    metrics["seconds"] = time.perf_counter() - start
    result = CircuitResult(config=config, metrics=metrics, arrays=arrays, meta=provenance(model=model.name, seed=config.seed))
    for name, iv in intervals.items():
        result.set_interval(name, iv)
    return result
