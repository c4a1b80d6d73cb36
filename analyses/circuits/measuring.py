"""Measuring a circuit: the task's prompts ready for patching, the full model's scores,
edge-masked forwards, faithfulness and its curve over circuit sizes, the size choice, and
discovery through the core method table (``workbench.patching.methods``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from workbench.cache import Tokens
from workbench.datasets.base import PromptSet
from workbench.errors import InputError
from workbench.patching.graph import (Graph, LogitDiff, ablation_values, prune_dangling, run_edge_masks,
                                      sender_outputs, top_edges)
from workbench.patching.methods import DiscoveryConfig, PairedTask
from workbench.stats import Interval, bootstrap, bootstrap_diff

from .records import CircuitPoint, FaithfulnessCurve, MethodCurve, ThresholdCurve
from .config import (SLACK, TASKS, TEST_OFFSET, VAL_OFFSET, CircuitConfig, check_circuit_size, check_task_and_method,
                     prompt_set_bytes)

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
                       thresholded: dict[str, list[tuple[float, torch.Tensor]]] | None = None) -> FaithfulnessCurve:
    """Normalised faithfulness of the top-k circuits of each method's scores, for each k in
    ``sizes``, on ``prep``'s prompts (a ``FaithfulnessCurve``: each method's row holds the edges
    kept after pruning and the faithfulness at each size; ``extra``: by name).
    ``extra`` are other circuits ([S R] bool) measured in the same batch. ``thresholded``:
    methods whose circuits come one per threshold (ACDC: ``[(tau, circuit [S R] bool), ...]``);
    each is a ``ThresholdCurve`` row of ``methods``, with a ``tau`` list instead of ``sizes``."""
    if isinstance(scores, torch.Tensor):
        scores = {"scores": scores}
    sizes = sorted({min(k, graph.n_edges) for k in sizes})
    masks: list[torch.Tensor] = [graph.valid, torch.zeros_like(graph.valid)]
    keys: list[tuple[Any, Any]] = []
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
    effect = bootstrap_diff(vals[0].double().cpu().numpy().tolist(), vals[1].double().cpu().numpy().tolist(), split="validation")
    rows: dict[str, dict[str, list[Any]]] = {}
    extras: dict[str, CircuitPoint] = {}
    for (name, k), m, v in zip(keys, masks[2:], mean[2:]):
        if name == "extra":
            extras[k] = CircuitPoint(n_edges=int(m.sum()), faithfulness=normalised(v, full, empty))
            continue
        if isinstance(name, tuple):  # a thresholded method (ACDC): one circuit per tau
            row = rows.setdefault(name[1], {"tau": [], "n_edges": [], "faithfulness": []})
            row["tau"].append(k)
        else:
            row = rows.setdefault(name, {"n_edges": [], "faithfulness": []})
        row["n_edges"].append(int(m.sum()))
        row["faithfulness"].append(normalised(v, full, empty))
    methods: dict[str, MethodCurve | ThresholdCurve] = {
        name: (ThresholdCurve(tau=row["tau"], n_edges=row["n_edges"], faithfulness=row["faithfulness"]) if "tau" in row
               else MethodCurve(n_edges=row["n_edges"], faithfulness=row["faithfulness"])) for name, row in rows.items()}
    return FaithfulnessCurve(sizes=sizes, full=full, all_ablated=empty, methods=methods, extra=extras, effect=effect,
                             defined=bool(effect.low > 0))


def behaviour_defined(curve: FaithfulnessCurve) -> bool:
    """Whether the full model beats the all-ablated model on the curve's prompts (the paired
    bootstrap interval of full - all ablated is above 0): without that the normalised
    faithfulness divides by noise and no size can be said to reach a target."""
    return bool(curve.defined)


def choose_size(sizes: list[int], faith: list[float], target: float) -> tuple[int, bool]:
    """(the smallest size whose faithfulness reaches ``target``, True), else (the most faithful size, False)."""
    for k, f in zip(sizes, faith):
        if f == f and f >= target:
            return k, True
    best = max(range(len(sizes)), key=lambda i: faith[i] if faith[i] == faith[i] else float("-inf"))
    return sizes[best], False


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

    assert config.batch_size is not None  # (the Config sets it in __post_init__)
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
        found = m.discover(model, cast(PairedTask, prep), discovery_config(config, progress, ranked))
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
    found = method("acdc").discover(model, cast(PairedTask, prep), cfg)
    for i, (tau, keep, _) in enumerate(found.runs or []):
        if len(taus) > 1:
            say(progress, f"ACDC tau={tau:g} ({i + 1}/{len(taus)}): {int(keep.sum())} edges kept")
    return [(keep, scores) for _, keep, scores in found.runs or []]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().cpu().numpy(), b.flatten().cpu().numpy()).statistic)


def say(progress: bool, message: str) -> None:
    """A stage of a long run, on stderr (with the tqdm bars) when ``progress``."""
    if progress:
        import sys

        from tqdm.auto import tqdm

        tqdm.write(f"[circuit] {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- memory
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


