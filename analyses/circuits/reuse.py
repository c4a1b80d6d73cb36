"""Circuit component reuse (Merullo et al. 2023): discover the IOI circuit and the Colored
Objects circuit on the same model, measure how many in-circuit heads they share, label the
heads by IOI class, and repeat the intervention: make a few mid-layer IOI heads attend on
Colored Objects the way S-inhibition heads attend in IOI (from the final token to the
distractors, here the two wrong colours), and compare accuracy before and after with the
same intervention on random mid-layer heads."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from workbench.cache import Tokens, forward
from workbench.datasets.colored_objects import token_index
from workbench.errors import InputError
from workbench.results import Result, provenance, register_result
from workbench.spec import option

from .analysis import (ABLATIONS, METHODS, CircuitConfig, as_float, build_task, check_circuit_size,
                       check_prompt_memory, check_task_and_method, discover, faithfulness, positions, prepare,
                       prompt_set_bytes, run_bytes, task_scores)

BATCH_SIZE = 6  # prompts per forward pass when --batch-size is not given: min(BATCH_SIZE, n_prompts)
TASK_KEYS = ("ioi", "colored_objects")


@dataclass
class ReuseConfig:
    n_prompts: int = option(6, flag="--n", help="prompts per task for discovery (bounded by the memory they need, "
                            "checked before the run)", min=1)
    seed: int = 0
    method: str = option("eap-ig", help=f"discovery method: {' | '.join(METHODS)}")
    n_edges: int = option(150, help="circuit size: top edges by |score|", min=1)
    ig_steps: int = option(3, flag="--steps", help="EAP-IG integration steps", min=1, max=1000)
    ablation: str = option("mean", help="what edges outside a circuit carry", choices=ABLATIONS)
    batch_size: int | None = option(None, help=f"prompts per forward pass (default: min({BATCH_SIZE}, --n))", min=1)
    n_intervene: int = option(4, help="mid-layer heads to adjust", min=1)
    n_random: int = option(3, help="random-head draws for the control", min=0)
    intervention_prompts: int = option(16, help="Colored Objects prompts for the intervention", min=1)

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = max(1, min(BATCH_SIZE, self.n_prompts))

    def validate(self) -> None:
        check_task_and_method("ioi", self.method)
        check_prompt_memory("reuse", "colored-objects", self.n_prompts)
        check_prompt_memory("reuse", "colored-objects", self.intervention_prompts, "--intervention-prompts")


@dataclass
class TaskCircuit:
    """One task's circuit in a reuse study."""

    n_heads: int
    n_edges: int
    faithfulness: float
    circuit_metric: float
    logit_diff: float
    corrupt_logit_diff: float
    accuracy: float
    heads: list[str]

    @classmethod
    def from_metrics(cls, m: dict[str, Any]) -> "TaskCircuit":
        return cls(n_heads=int(m["n_heads"]), n_edges=int(m["n_edges"]), faithfulness=as_float(m["faithfulness"]),
                   circuit_metric=as_float(m["circuit_metric"]), logit_diff=as_float(m["logit_diff"]),
                   corrupt_logit_diff=as_float(m["corrupt_logit_diff"]), accuracy=as_float(m["accuracy"]),
                   heads=list(m["heads"]))


@dataclass
class HeadOverlap:
    """Heads shared by the two circuits."""

    share_of_smaller: float
    jaccard: float
    shared: list[str]


@dataclass
class Intervention:
    """Colored Objects accuracy before and after adjusting ``heads``, and with random heads adjusted."""

    heads: list[str]
    before: float
    after: float
    random_control: float | None
    random_draws: list[float]
    n_prompts: int
    layers: list[int]


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


def wrong_color_positions(model: Any, ps) -> list[list[int]]:
    """Token positions of the two non-answer colours in each query."""
    out = []
    for text, sp in zip(ps.prompts, ps.meta["spans"]):
        out.append([token_index(model.tokenizer, text, c) for i, c in enumerate(sp["colors"]) if i != sp["answer"]])
    return out


def intervene_accuracy(model: Any, tokens: Tokens, heads: list[tuple[int, int]], targets: list[list[int]],
                       correct: torch.Tensor, candidates: torch.Tensor) -> float:
    """Colour accuracy with each head in ``heads`` attending from the final token only to ``targets``
    (split evenly), as S-inhibition heads attend to the distractor in IOI."""
    from workbench.patching.metrics import accuracy

    end = tokens.last_positions
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    target = torch.zeros(len(tokens), tokens.input_ids.shape[1])
    for b, pos in enumerate(targets):
        target[b, pos] = 1.0 / len(pos)

    def setter(hs):
        def fn(p):
            p = p.clone()
            for b in range(p.shape[0]):
                p[b, hs, end[b]] = target[b].to(p.dtype)
            return p
        return fn

    with torch.no_grad():
        logits, _ = forward(model, tokens, [], {f"blocks.{l}.attn.hook_pattern": setter(hs) for l, hs in by_layer.items()})
    last = logits[torch.arange(len(tokens)), end]
    return float(accuracy(last, correct, candidates))


@register_result
@dataclass
class ReuseResult(Result):
    analysis = "reuse"
    config_cls = ReuseConfig

    def circuit(self, task: str) -> TaskCircuit:
        """The circuit of ``task`` ('ioi' or 'colored_objects')."""
        if task not in TASK_KEYS:
            raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASK_KEYS)}")
        return TaskCircuit.from_metrics(self.metrics[task])

    @property
    def ioi(self) -> TaskCircuit:
        return self.circuit("ioi")

    @property
    def colored_objects(self) -> TaskCircuit:
        return self.circuit("colored_objects")

    @property
    def overlap(self) -> HeadOverlap:
        ov = self.metrics["overlap"]
        return HeadOverlap(float(ov["share_of_smaller"]), float(ov["jaccard"]), list(ov["shared"]))

    @property
    def intervention(self) -> Intervention:
        iv = self.metrics["intervention"]
        rc = iv.get("random_control")
        return Intervention(heads=list(iv["heads"]), before=float(iv["before"]), after=float(iv["after"]),
                            random_control=None if rc is None else float(rc),
                            random_draws=[float(x) for x in iv.get("random_draws", [])],
                            n_prompts=int(iv["n_prompts"]), layers=list(iv["layers"]))

    @property
    def class_table(self) -> list[dict[str, Any]]:
        """Per head class, its heads in each circuit: ``{"class", "ioi", "colored_objects"}``."""
        return list(self.metrics["class_table"])

    def head_scores(self, task: str) -> torch.Tensor:
        """[layer head] EAP-IG node score of each head on ``task``."""
        return self.arrays[f"{task}_head_scores"]

    def edge_scores(self, task: str) -> torch.Tensor:
        """[sender receiver] score of every edge on ``task``."""
        return self.arrays[f"{task}_edge_scores"]

    def circuit_edges(self, task: str) -> torch.Tensor:
        """[sender receiver] bool: the edges of ``task``'s circuit."""
        return self.arrays[f"{task}_circuit"].bool()

    @property
    def class_scores(self) -> dict[str, torch.Tensor]:
        """Per head class, its score [layer head]."""
        return {k.removeprefix("class_"): v for k, v in self.arrays.items() if k.startswith("class_")}

    def summary(self) -> dict[str, Any]:
        out = {k: self.metrics.get(k) for k in ("ioi", "colored_objects", "overlap", "intervention", "class_table")}
        if self.path is not None:
            out["run"] = str(self.path)
        return out

    def report_sections(self) -> list:
        from .figures import reuse_sections

        return reuse_sections(self)


def check_model(config: ReuseConfig, model: Any) -> None:
    """The spec's check before a run: both circuits fit the model's graph."""
    check_circuit_size(model, config.n_edges)


def estimate_bytes(config: ReuseConfig, model: Any) -> int:
    """The spec's memory estimate before a run: the larger of the two circuits (``run_bytes``,
    no faithfulness curve) and the intervention's one forward over its Colored Objects prompts."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()
    circuits = max(run_bytes(model, task, config.n_prompts, config.method, config.n_edges, config.batch_size,
                             config.seed, curve=False) for task in ("ioi", "colored-objects"))
    n = config.intervention_prompts
    pos = positions(model, "colored-objects", n, config.seed + 1)
    intervention = n * pos * size * (s.d_vocab + 4 * s.n_heads * s.d_model) + prompt_set_bytes("colored-objects", n)
    return int(max(circuits, intervention))


def run(model: Any, config: ReuseConfig | None = None, progress: bool = True) -> ReuseResult:
    from .head_classes import CLASSES, head_classes
    from workbench.patching.eap import head_grid, node_scores

    config = config or ReuseConfig()
    check_task_and_method("ioi", config.method)
    if config.n_intervene < 1:
        raise InputError(f"n_intervene={config.n_intervene}: intervene on at least one head")
    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    arrays: dict[str, torch.Tensor] = {}
    circuits = {}
    for key, task in (("ioi", "ioi"), ("colored_objects", "colored-objects")):
        cfg = CircuitConfig(task=task, method=config.method, n_prompts=config.n_prompts, seed=config.seed,
                            n_edges=config.n_edges, ig_steps=config.ig_steps, ablation=config.ablation,
                            batch_size=config.batch_size)
        prep = prepare(model, build_task(task, model.tokenizer, config.n_prompts, config.seed))
        base = task_scores(model, prep)
        graph, scores, edges = discover(model, cfg, prep, progress)
        circ, faith = faithfulness(model, graph, prep, edges, config.ablation, config.batch_size)
        heads = circuit_heads(graph, edges)
        circuits[key] = heads
        metrics[key] = {"n_heads": len(heads), "n_edges": int(edges.sum()), "faithfulness": faith,
                        "circuit_metric": circ, **base, "heads": heads}
        arrays[f"{key}_edge_scores"] = scores
        arrays[f"{key}_circuit"] = edges.to(torch.uint8)
        arrays[f"{key}_head_scores"] = head_grid(graph, node_scores(graph, scores))
        if key == "ioi":
            ioi_set = prep.prompts
    metrics["overlap"] = overlap(circuits["ioi"], circuits["colored_objects"])

    classes = head_classes(model, ioi_set, n_random=4, seed=config.seed)
    labels = classes.labels()
    for cls in CLASSES:
        arrays[f"class_{cls}"] = classes.scores[cls]
    table = []
    for cls in CLASSES:
        names = [f"L{l}H{h}" for l, h in labels[cls]]
        table.append({"class": cls, "ioi": [n for n in names if n in circuits["ioi"]],
                      "colored_objects": [n for n in names if n in circuits["colored_objects"]]})
    metrics["class_table"] = table

    # intervention: mid-layer IOI-circuit heads ranked by S-inhibition score
    L, H = model.shape.n_layers, model.shape.n_heads
    lo, hi = L // 3, max(L // 3 + 1, (2 * L) // 3)
    s_inh = classes.scores["s_inhibition"]
    mid = [(l, h) for l in range(lo, hi) for h in range(H)]
    in_circuit = [lh for lh in mid if f"L{lh[0]}H{lh[1]}" in circuits["ioi"]]
    ranked = sorted(in_circuit, key=lambda lh: -float(s_inh[lh]))
    rest = sorted((lh for lh in mid if lh not in ranked), key=lambda lh: -float(s_inh[lh]))
    chosen = (ranked + rest)[: config.n_intervene]
    co = build_task("colored-objects", model.tokenizer, config.intervention_prompts, config.seed + 1)
    co_prep = prepare(model, co)
    targets = wrong_color_positions(model, co)
    before = intervene_accuracy(model, co_prep.clean, [], targets, co_prep.metric.correct, co_prep.candidates)
    after = intervene_accuracy(model, co_prep.clean, chosen, targets, co_prep.metric.correct, co_prep.candidates)
    rng = random.Random(config.seed)
    pool = [lh for lh in mid if lh not in chosen]
    draws = []
    for _ in range(config.n_random):
        heads = rng.sample(pool, min(config.n_intervene, len(pool)))
        draws.append(intervene_accuracy(model, co_prep.clean, heads, targets, co_prep.metric.correct, co_prep.candidates))
    metrics["intervention"] = {"heads": [f"L{l}H{h}" for l, h in chosen], "before": before, "after": after,
                               "random_control": sum(draws) / len(draws) if draws else None, "random_draws": draws,
                               "n_prompts": len(co), "layers": [lo, hi - 1]}
    metrics["seconds"] = time.perf_counter() - start
    return ReuseResult(config=config, metrics=metrics, arrays=arrays, meta=provenance(model=model.name, seed=config.seed))
