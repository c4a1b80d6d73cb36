"""Circuit component reuse (Merullo et al. 2023): discover the IOI circuit and the Colored
Objects circuit on the same model, measure how many in-circuit heads they share, label the
heads by IOI class, and repeat the intervention: make a few mid-layer IOI heads attend on
Colored Objects the way S-inhibition heads attend in IOI (from the final token to the
distractors, here the two wrong colours), and compare accuracy before and after with the
same intervention on random mid-layer heads."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.cache import Tokens, forward
from workbench.datasets.colored_objects import token_index
from workbench.errors import InputError
from workbench.results import Result, provenance
from workbench.spec import option
from workbench.stats import Interval, bootstrap, bootstrap_diff, permutation_p, wilson
from workbench.checks import checked_run

from .analysis import (ABLATIONS, SIZES, CircuitConfig, build_task, check_circuit_size, check_prompt_memory,
                       measure_circuit, parse_sizes, positions, prepare, prompt_set_bytes, run_bytes,
                       say)
from .formats import TEST_SEED

BATCH_SIZE = 8  # prompts per forward pass when --batch-size is not given: min(BATCH_SIZE, n_prompts)
TASK_KEYS = ("ioi", "colored_objects")


@dataclass
class ReuseConfig:
    n_prompts: int = option(8, flag="--n", help="discovery prompts per task (bounded by the memory they need, "
                            "checked before the run)", min=1)
    seed: int = 0
    method: str = option("eap-ig", help="discovery method: eap | eap-ig")
    n_edges: int | None = option(None, help="circuit size (top edges by |score|); default: per task, the smallest "
                                 "size on the curve whose validation faithfulness reaches --target", min=1)
    ig_steps: int = option(8, flag="--steps", help="EAP-IG integration steps", min=1, max=1000)
    ablation: str = option("mean", help="what edges outside a circuit carry", choices=ABLATIONS)
    batch_size: int | None = option(None, help=f"prompts per forward pass (default: min({BATCH_SIZE}, --n))", min=1)
    target: float = option(0.8, help="faithfulness each circuit must reach on its validation prompts", min=0.0, max=1.0)
    sizes: str = option(SIZES, help="circuit sizes (edges) of the faithfulness curves, comma-separated")
    n_val: int = option(16, flag="--val", help="validation prompts per task (curve and size choice)", min=2)
    n_test: int = option(16, flag="--test", help="test prompts per task (each circuit's faithfulness)", min=2)
    format: str = option("", help="Colored Objects prompt format (default: the one chosen on the development split)")
    n_intervene: int = option(4, help="mid-layer heads to adjust", min=1)
    n_random: int = option(5, help="random-head draws for the control", min=0)
    intervention_prompts: int = option(64, help="Colored Objects test-split prompts for the intervention", min=1)
    n_permutations: int = option(10000, help="random circuit pairs of the same head counts for the overlap baseline",
                                 min=1)

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = max(1, min(BATCH_SIZE, self.n_prompts))

    def validate(self) -> None:
        if self.method not in ("eap", "eap-ig"):
            raise InputError(f"unknown method '{self.method}' for reuse; choose eap or eap-ig "
                             "(ACDC and path patching are on the circuit command)")
        parse_sizes(self.sizes)
        if self.format:
            from workbench.datasets.colored_objects import format_of

            format_of(self.format)
        check_prompt_memory("reuse", "colored-objects", self.n_prompts)
        check_prompt_memory("reuse", "colored-objects", self.intervention_prompts, "--intervention-prompts")


@dataclass(kw_only=True)
class TaskCircuit:
    """One task's circuit in a reuse study (the circuit analysis's figures of it)."""

    n_heads: int
    n_edges: int
    faithfulness: float
    faithfulness_validation: float | None = None
    target: float | None = None
    target_met: bool | None = None
    chosen_k: int | None = None
    chosen_by: str | None = None
    circuit_metric: float
    full_metric: float | None = None
    ablated_metric: float | None = None
    logit_diff: float
    corrupt_logit_diff: float
    accuracy: float
    accuracy_kind: str | None = None
    accuracies: dict[str, dict[str, Any]] | None = None
    heads: list[str]
    faithfulness_curve: dict[str, Any] | None = None
    convergence: dict[str, Any] | None = None
    n_prompts: int | None = None
    n_val: int | None = None
    n_test: int | None = None


@dataclass(kw_only=True)
class HeadOverlap:
    """Heads shared by the two circuits, against random circuits of the same head counts."""

    share_of_smaller: float
    jaccard: float
    shared: list[str]
    null_mean: float | None = None  # share of the smaller expected of two random head sets of the same sizes
    null_q95: float | None = None
    p_value: float | None = None  # one-sided permutation p-value of the observed share
    n_permutations: int | None = None
    caveat: str = ""


@dataclass(kw_only=True)
class Intervention:
    """Colored Objects accuracy before and after adjusting ``heads``, and with random heads adjusted."""

    heads: list[str]
    before: float
    after: float
    random_control: float | None
    random_draws: list[float] = field(default_factory=list)
    random_heads: list[list[str]] | None = None
    n_prompts: int
    layers: list[int]
    chance: float = 1 / 3
    accuracy: str = "argmax among the three colours in the prompt"
    split: str = "test"


def circuit_heads(graph, edges) -> list[str]:
    return [n for n in graph.nodes_of(edges) if n.startswith("L")]


def overlap(a: list[str], b: list[str]) -> dict[str, Any]:
    """Shared heads as a share of the smaller circuit, and the Jaccard index."""
    sa, sb = set(a), set(b)
    shared = sorted(sa & sb, key=lambda n: (int(n[1:].split("H")[0]), int(n.split("H")[1])))
    smaller = min(len(sa), len(sb))
    union = len(sa | sb)
    return {"share_of_smaller": len(shared) / smaller if smaller else 0.0,
            "jaccard": len(shared) / union if union else 0.0, "shared": shared}


def overlap_null(n_a: int, n_b: int, n_heads: int, draws: int = 10000, seed: int = 0) -> np.ndarray:
    """Share of the smaller of two random head sets of sizes ``n_a`` and ``n_b`` drawn from
    ``n_heads`` heads, ``draws`` times: the permutation baseline of the observed overlap."""
    rng = np.random.default_rng(seed)
    smaller = min(n_a, n_b)
    if smaller == 0:
        return np.zeros(draws)
    out = np.empty(draws)
    for i in range(draws):
        a = rng.choice(n_heads, n_a, replace=False)
        b = rng.choice(n_heads, n_b, replace=False)
        out[i] = len(np.intersect1d(a, b, assume_unique=True)) / smaller
    return out


def wrong_color_positions(model: Any, ps) -> list[list[int]]:
    """Token positions of the two non-answer colours in each query."""
    out = []
    for text, sp in zip(ps.prompts, ps.meta["spans"]):
        out.append([token_index(model.tokenizer, text, c) for i, c in enumerate(sp["colors"]) if i != sp["answer"]])
    return out


def intervened_logits(model: Any, tokens: Tokens, heads: list[tuple[int, int]], targets: list[list[int]],
                      batch_size: int = 16) -> torch.Tensor:
    """Last-token logits [N vocab] with each head in ``heads`` attending from the final token
    only to ``targets`` (split evenly), as S-inhibition heads attend to the distractor in IOI."""
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    target = torch.zeros(len(tokens), tokens.input_ids.shape[1], device=tokens.input_ids.device)
    for b, pos in enumerate(targets):
        target[b, pos] = 1.0 / len(pos)
    outs = []
    for start in range(0, len(tokens), batch_size):
        stop = min(len(tokens), start + batch_size)
        tk = tokens.slice(start, stop)
        end = tk.last_positions

        def setter(hs, start=start, end=end):
            def fn(p):
                p = p.clone()
                for b in range(p.shape[0]):
                    p[b, hs, end[b]] = target[start + b].to(p.dtype)
                return p
            return fn

        with torch.no_grad():
            logits, _ = forward(model, tk, [], {f"blocks.{l}.attn.hook_pattern": setter(hs) for l, hs in by_layer.items()})
        outs.append(logits[torch.arange(stop - start, device=logits.device), end])
    return torch.cat(outs)


def intervene_hits(model: Any, tokens: Tokens, heads: list[tuple[int, int]], targets: list[list[int]],
                   correct: torch.Tensor, candidates: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """[N] bool: the correct answer is the argmax among ``candidates`` [N k] after the intervention."""
    last = intervened_logits(model, tokens, heads, targets, batch_size)
    pick = candidates.gather(1, last.gather(1, candidates).argmax(1, keepdim=True))[:, 0]
    return (pick == correct).cpu()


def intervene_accuracy(model: Any, tokens: Tokens, heads: list[tuple[int, int]], targets: list[list[int]],
                       correct: torch.Tensor, candidates: torch.Tensor) -> float:
    """Accuracy among ``candidates`` after the intervention (see ``intervened_logits``)."""
    return float(intervene_hits(model, tokens, heads, targets, correct, candidates).float().mean())


def mid_layers(n_layers: int) -> tuple[int, int]:
    """[lo, hi): the middle third of the layers, where Merullo et al. intervene."""
    lo = n_layers // 3
    return lo, max(lo + 1, (2 * n_layers) // 3)


def choose_heads(s_inhibition: torch.Tensor, in_circuit: list[str], n: int) -> list[tuple[int, int]]:
    """The ``n`` mid-layer heads to adjust: those in the IOI circuit first, each group by
    S-inhibition score (attention from the final token to S2), highest first."""
    L, H = s_inhibition.shape
    lo, hi = mid_layers(L)
    mid = [(l, h) for l in range(lo, hi) for h in range(H)]
    ranked = sorted((lh for lh in mid if f"L{lh[0]}H{lh[1]}" in in_circuit), key=lambda lh: -float(s_inhibition[lh]))
    rest = sorted((lh for lh in mid if lh not in ranked), key=lambda lh: -float(s_inhibition[lh]))
    return (ranked + rest)[:n]


@dataclass(kw_only=True)
class ReuseResult(Result):
    """The IOI and Colored Objects circuits, their head overlap, the head classes and the intervention."""

    analysis = "reuse"

    config: ReuseConfig
    format: str | None  # the Colored Objects prompt format the study ran on
    ioi: TaskCircuit
    colored_objects: TaskCircuit
    overlap: HeadOverlap
    class_table: list[dict[str, Any]]  # per head class, its heads in each circuit: {"class", "ioi", "colored_objects", "all"}
    intervention: Intervention
    seconds: float = float("nan")
    ioi_edge_scores: Float[Tensor, "sender receiver"]
    ioi_circuit: Bool[Tensor, "sender receiver"]
    ioi_head_scores: Float[Tensor, "layer head"]  # EAP-IG node score of each head
    colored_objects_edge_scores: Float[Tensor, "sender receiver"]
    colored_objects_circuit: Bool[Tensor, "sender receiver"]
    colored_objects_head_scores: Float[Tensor, "layer head"]
    class_scores: dict[str, Float[Tensor, "layer head"]] = field(default_factory=dict)  # per head class

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Format 1 kept the circuits as uint8 and the class scores as ``class_{name}``."""
        out = {}
        for name, tensor in arrays.items():
            if name.endswith("_circuit"):
                tensor = tensor.bool()
            elif name.startswith("class_"):
                name = "class_scores/" + name[len("class_"):]
            out[name] = tensor
        return metrics, out

    def circuit(self, task: str) -> TaskCircuit:
        """The circuit of ``task`` ('ioi' or 'colored_objects')."""
        return self.ioi if _task_key(task) == "ioi" else self.colored_objects

    def head_scores(self, task: str) -> Tensor:
        """[layer head] EAP-IG node score of each head on ``task``."""
        return getattr(self, f"{_task_key(task)}_head_scores")

    def edge_scores(self, task: str) -> Tensor:
        """[sender receiver] score of every edge on ``task``."""
        return getattr(self, f"{_task_key(task)}_edge_scores")

    def circuit_edges(self, task: str) -> Tensor:
        """[sender receiver] bool: the edges of ``task``'s circuit."""
        return getattr(self, f"{_task_key(task)}_circuit")

    def summary(self) -> dict[str, Any]:
        from workbench.result_fields import encode_data, plain_json

        data, _ = encode_data(self)
        out = {k: data[k] for k in ("ioi", "colored_objects", "overlap", "intervention", "class_table")}
        if self.path is not None:
            out["run"] = str(self.path)
        return plain_json(out)


def _task_key(task: str) -> str:
    if task not in TASK_KEYS:
        raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASK_KEYS)}")
    return task


def check_model(config: ReuseConfig, model: Any) -> None:
    """The spec's check before a run: both circuits fit the model's graph."""
    check_circuit_size(model, config.n_edges)


def estimate_bytes(config: ReuseConfig, model: Any) -> int:
    """The spec's memory estimate before a run: the larger of the two circuits (``run_bytes``)
    and the intervention's forwards over its Colored Objects prompts (16 at a time)."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()  # cpu: only its element size is read
    circuits = max(run_bytes(model, task, config.n_prompts, config.method, config.n_edges, config.batch_size,
                             config.seed, n_val=config.n_val, n_test=config.n_test,
                             format=config.format if task != "ioi" else "") for task in ("ioi", "colored-objects"))
    n = config.intervention_prompts
    pos = positions(model, "colored-objects", n, TEST_SEED, config.format)
    intervention = min(n, 16) * pos * size * (s.d_vocab + 4 * s.n_heads * s.d_model) + prompt_set_bytes("colored-objects", n)
    return int(max(circuits, intervention))


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Any, config: ReuseConfig | None = None, progress: bool = True) -> ReuseResult:
    from .head_classes import CLASSES, head_classes

    config = config or ReuseConfig()
    config.validate()
    start = time.perf_counter()
    data: dict[str, Any] = {}  # the Result's JSON fields, as plain values first
    tensors: dict[str, torch.Tensor] = {}
    intervals: dict[str, Interval] = {}
    circuits = {}
    fmt = config.format
    if not fmt:
        from workbench.datasets.colored_objects import DEFAULT_FORMAT

        fmt = DEFAULT_FORMAT
    data["format"] = fmt
    for key, task in (("ioi", "ioi"), ("colored_objects", "colored-objects")):
        cfg = CircuitConfig(task=task, method=config.method, n_prompts=config.n_prompts, seed=config.seed,
                            n_edges=config.n_edges, ig_steps=config.ig_steps, ablation=config.ablation,
                            batch_size=config.batch_size, target=config.target, sizes=config.sizes,
                            curve_methods=config.method, n_val=config.n_val, n_test=config.n_test,
                            format=fmt if task != "ioi" else "", mib_methods="", beside_ablation="")
        m, arr, ivs = measure_circuit(model, cfg, progress)
        circuits[key] = m["heads"]
        keep = ("n_heads", "n_edges", "faithfulness", "faithfulness_validation", "target", "target_met", "chosen_k", "chosen_by",
                "circuit_metric", "full_metric", "ablated_metric", "logit_diff", "corrupt_logit_diff", "accuracy",
                "accuracy_kind", "accuracies", "heads", "faithfulness_curve", "convergence", "n_prompts", "n_val", "n_test")
        data[key] = {k: m.get(k) for k in keep}
        tensors[f"{key}_edge_scores"] = arr["edge_scores"]
        tensors[f"{key}_circuit"] = arr["circuit"]
        tensors[f"{key}_head_scores"] = arr["head_scores"]
        for name, iv in ivs.items():
            intervals[f"{key}: {name}"] = iv

    # ---- head overlap against random circuits of the same head counts
    L, H = model.shape.n_layers, model.shape.n_heads
    ov = overlap(circuits["ioi"], circuits["colored_objects"])
    null = overlap_null(len(circuits["ioi"]), len(circuits["colored_objects"]), L * H, config.n_permutations, config.seed)
    ov["null_mean"] = float(null.mean())
    ov["null_q95"] = float(np.quantile(null, 0.95))
    ov["p_value"] = permutation_p(ov["share_of_smaller"], null)
    ov["n_permutations"] = int(config.n_permutations)
    short = [k for k in ("ioi", "colored_objects") if not data[k].get("target_met")]
    ov["caveat"] = (f"the {' and '.join(short)} circuit{'s' if len(short) > 1 else ''} did not reach the target "
                    "faithfulness on validation prompts: this overlap is between circuits that do not carry the "
                    "behaviour") if short and config.n_edges is None else ""
    data["overlap"] = ov
    say(progress, f"overlap {ov['share_of_smaller']:.3f} of the smaller circuit ({len(ov['shared'])} heads); random "
                  f"circuits {ov['null_mean']:.3f}, p = {ov['p_value']:.3g}")

    say(progress, "head classes on IOI prompts and repeated random tokens")
    ioi_set = build_task("ioi", model.tokenizer, max(config.n_prompts, 16), config.seed)
    classes = head_classes(model, ioi_set, n_random=4, seed=config.seed)
    labels = classes.labels()
    for cls in CLASSES:
        tensors[f"class_{cls}"] = classes.scores[cls]
    table = []
    for cls in CLASSES:
        names = [f"L{l}H{h}" for l, h in labels[cls]]
        table.append({"class": cls, "ioi": [n for n in names if n in circuits["ioi"]],
                      "colored_objects": [n for n in names if n in circuits["colored_objects"]],
                      "all": names})
    data["class_table"] = table

    # ---- intervention: mid-layer IOI-circuit heads ranked by S-inhibition score, on the test split
    lo, hi = mid_layers(L)
    chosen = choose_heads(classes.scores["s_inhibition"], circuits["ioi"], config.n_intervene)
    say(progress, f"intervention on {[f'L{l}H{h}' for l, h in chosen]} and {config.n_random} random draws, "
                  f"{config.intervention_prompts} test prompts")
    co = build_task("colored-objects", model.tokenizer, config.intervention_prompts, TEST_SEED, fmt)
    co_prep = prepare(model, co)
    targets = wrong_color_positions(model, co)
    correct, cands = co_prep.metric.correct, co_prep.query_candidates
    bs = config.batch_size

    def hits(heads):
        return intervene_hits(model, co_prep.clean, heads, targets, correct, cands, bs).float().cpu().numpy()

    before, after = hits([]), hits(chosen)
    say(progress, f"accuracy among the prompt's colours: before {before.mean():.3f}, after {after.mean():.3f} (n={len(before)})")
    rng = random.Random(config.seed)
    pool = [(l, h) for l in range(lo, hi) for h in range(H) if (l, h) not in chosen]
    draws, draw_heads = [], []
    for _ in range(config.n_random if len(pool) >= config.n_intervene else 0):
        heads = rng.sample(pool, config.n_intervene)
        draw_heads.append([f"L{l}H{h}" for l, h in heads])
        draws.append(hits(heads))
        say(progress, f"random heads {draw_heads[-1]}: {draws[-1].mean():.3f}")
    n = len(co)
    intervals["intervention: accuracy before"] = wilson(int(before.sum()), n, split="test")
    intervals["intervention: accuracy after"] = wilson(int(after.sum()), n, split="test")
    intervals["intervention: after - before"] = bootstrap_diff(after, before, split="test", seed=config.seed)
    if draws:
        rand = np.stack(draws).mean(0)  # per prompt, the share of random draws that got it right
        intervals["intervention: accuracy, random heads"] = bootstrap(rand, split="test", seed=config.seed)
        intervals["intervention: after - random heads"] = bootstrap_diff(after, rand, split="test", seed=config.seed)
    data["intervention"] = {"heads": [f"L{l}H{h}" for l, h in chosen], "before": float(before.mean()),
                               "after": float(after.mean()),
                               "random_control": float(np.mean([d.mean() for d in draws])) if draws else None,
                               "random_draws": [float(d.mean()) for d in draws], "random_heads": draw_heads,
                               "n_prompts": n, "layers": [lo, hi - 1], "chance": 1 / 3,
                               "accuracy": "argmax among the three colours in the prompt", "split": "test"}
    class_scores = {k.removeprefix("class_"): tensors.pop(k) for k in list(tensors) if k.startswith("class_")}
    result = ReuseResult(config=config, meta=provenance(model=model.name, seed=config.seed), format=data["format"],
                         ioi=TaskCircuit(**data["ioi"]), colored_objects=TaskCircuit(**data["colored_objects"]),
                         overlap=HeadOverlap(**data["overlap"]), class_table=data["class_table"],
                         intervention=Intervention(**data["intervention"]), seconds=time.perf_counter() - start,
                         class_scores=class_scores, **tensors)
    for name, iv in intervals.items():
        result.set_interval(name, iv)
    return result
