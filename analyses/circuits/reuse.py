"""Circuit component reuse (Merullo et al. 2023): discover the IOI circuit and the Colored
Objects circuit on the same model, measure how many in-circuit heads they share, label the
heads by IOI class, and repeat the intervention: make a few mid-layer IOI heads attend on
Colored Objects the way S-inhibition heads attend in IOI (from the final token to the
distractors, here the two wrong colours), and compare accuracy before and after with the
same intervention on random mid-layer heads."""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, TYPE_CHECKING

import numpy as np
import torch

from workbench.backends import PatchFn
from workbench.cache import Tokens, forward
from workbench.datasets.base import PromptSet
from workbench.datasets.colored_objects import token_index
from workbench.results import provenance
from workbench.stats import Interval, bootstrap, bootstrap_diff, permutation_p, wilson
from workbench.checks import checked_run

from .analysis import (CircuitConfig, build_task, check_circuit_size, measure_circuit, positions, prepare,
                       prompt_set_bytes, run_bytes, say)
from .formats import TEST_SEED
from .reuse_result import (BATCH_SIZE, TASK_KEYS, HeadOverlap, Intervention, ReuseConfig,  # noqa: F401
                           ReuseResult, TaskCircuit)
from workbench.names import parse_head

if TYPE_CHECKING:
    from workbench.models import Model


def overlap(a: list[str], b: list[str]) -> dict[str, Any]:
    """Shared heads as a share of the smaller circuit, and the Jaccard index."""
    sa, sb = set(a), set(b)
    shared = sorted(sa & sb, key=parse_head)
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


def wrong_color_positions(model: Model, ps: PromptSet) -> list[list[int]]:
    """Token positions of the two non-answer colours in each query."""
    out = []
    for text, sp in zip(ps.prompts, ps.meta["spans"]):
        out.append([token_index(model.tokenizer, text, c) for i, c in enumerate(sp["colors"]) if i != sp["answer"]])
    return out


def intervened_logits(model: Model, tokens: Tokens, heads: list[tuple[int, int]], targets: list[list[int]],
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

        def setter(hs: list[int], start: int = start, end: torch.Tensor = end) -> PatchFn:
            def fn(p: torch.Tensor) -> torch.Tensor:
                p = p.clone()
                for b in range(p.shape[0]):
                    p[b, hs, end[b]] = target[start + b].to(p.dtype)
                return p
            return fn

        with torch.no_grad():
            logits, _ = forward(model, tk, [], {f"blocks.{l}.attn.hook_pattern": setter(hs) for l, hs in by_layer.items()})
        outs.append(logits[torch.arange(stop - start, device=logits.device), end])
    return torch.cat(outs)


def intervene_hits(model: Model, tokens: Tokens, heads: list[tuple[int, int]], targets: list[list[int]],
                   correct: torch.Tensor, candidates: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """[N] bool: the correct answer is the argmax among ``candidates`` [N k] after the intervention."""
    last = intervened_logits(model, tokens, heads, targets, batch_size)
    pick = candidates.gather(1, last.gather(1, candidates).argmax(1, keepdim=True))[:, 0]
    return (pick == correct).cpu()


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


def check_model(config: ReuseConfig, model: Model) -> None:
    """The spec's check before a run: both circuits fit the model's graph."""
    check_circuit_size(model, config.n_edges)


def estimate_bytes(config: ReuseConfig, model: Model) -> int:
    """The spec's memory estimate before a run: the larger of the two circuits (``run_bytes``)
    and the intervention's forwards over its Colored Objects prompts (16 at a time)."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()  # cpu: only its element size is read
    circuits = max(run_bytes(model, task, config.n_prompts, config.method, config.n_edges, config.rows(),
                             config.seed, n_val=config.n_val, n_test=config.n_test,
                             format=config.format if task != "ioi" else "") for task in ("ioi", "colored-objects"))
    n = config.intervention_prompts
    pos = positions(model, "colored-objects", n, TEST_SEED, config.format)
    intervention = min(n, 16) * pos * size * (s.d_vocab + 4 * s.n_heads * s.d_model) + prompt_set_bytes("colored-objects", n)
    return int(max(circuits, intervention))


def task_circuit(model: Model, config: ReuseConfig, task: str, fmt: str,
                 progress: bool) -> tuple[TaskCircuit, dict[str, torch.Tensor], dict[str, Interval]]:
    """One task's circuit by the circuit analysis (its curve, size choice and test measures)."""
    cfg = CircuitConfig(task=task, method=config.method, n_prompts=config.n_prompts, seed=config.seed,
                        n_edges=config.n_edges, ig_steps=config.ig_steps, ablation=config.ablation,
                        batch_size=config.batch_size, target=config.target, sizes=config.sizes,
                        curve_methods=config.method, n_val=config.n_val, n_test=config.n_test,
                        format=fmt if task != "ioi" else "", mib_methods="", beside_ablation="",
                        compare_patching=False, stability_boots=0)
    m, arr, ivs = measure_circuit(model, cfg, progress)
    fields: dict[str, Any] = {f.name: m[f.name] for f in dataclasses.fields(TaskCircuit)}
    circuit = TaskCircuit(**fields)
    return circuit, {k: arr[k] for k in ("edge_scores", "circuit", "head_scores")}, ivs


def head_overlap(ioi: TaskCircuit, co: TaskCircuit, n_heads: int, config: ReuseConfig, progress: bool) -> HeadOverlap:
    """Heads shared by the two circuits, against random circuits of the same head counts."""
    ov = overlap(ioi.heads, co.heads)
    null = overlap_null(len(ioi.heads), len(co.heads), n_heads, config.n_permutations, config.seed)
    short = [k for k, c in (("ioi", ioi), ("colored_objects", co)) if not c.target_met]
    caveat = (f"the {' and '.join(short)} circuit{'s' if len(short) > 1 else ''} did not reach the target "
              "faithfulness on validation prompts: this overlap is between circuits that do not carry the "
              "behaviour") if short and config.n_edges is None else ""
    out = HeadOverlap(**ov, null_mean=float(null.mean()), null_q95=float(np.quantile(null, 0.95)),
                      p_value=permutation_p(ov["share_of_smaller"], null.tolist()), n_permutations=int(config.n_permutations),
                      caveat=caveat)
    say(progress, f"overlap {out.share_of_smaller:.3f} of the smaller circuit ({len(out.shared)} heads); random "
                  f"circuits {out.null_mean:.3f}, p = {out.p_value:.3g}")
    return out


def class_table(labels: dict[str, list[tuple[int, int]]], ioi: TaskCircuit, co: TaskCircuit) -> list[dict[str, Any]]:
    """Per head class, its heads in each circuit and in all."""
    from .head_classes import CLASSES

    table = []
    for cls in CLASSES:
        names = [f"L{l}H{h}" for l, h in labels[cls]]
        table.append({"class": cls, "ioi": [n for n in names if n in ioi.heads],
                      "colored_objects": [n for n in names if n in co.heads], "all": names})
    return table


def intervene(model: Model, config: ReuseConfig, s_inhibition: torch.Tensor, ioi_heads: list[str], fmt: str,
              progress: bool) -> tuple[Intervention, dict[str, Interval]]:
    """Mid-layer IOI-circuit heads ranked by S-inhibition score made to attend to the wrong colours
    on the Colored Objects test split, against random mid-layer heads."""
    L, H = model.shape.n_layers, model.shape.n_heads
    lo, hi = mid_layers(L)
    chosen = choose_heads(s_inhibition, ioi_heads, config.n_intervene)
    say(progress, f"intervention on {[f'L{l}H{h}' for l, h in chosen]} and {config.n_random} random draws, "
                  f"{config.intervention_prompts} test prompts")
    co = build_task("colored-objects", model.tokenizer, config.intervention_prompts, TEST_SEED, fmt)
    co_prep = prepare(model, co)
    targets = wrong_color_positions(model, co)
    correct, cands = co_prep.metric.correct, co_prep.query_candidates
    assert cands is not None  # (Colored Objects prompts name their three colours)

    def hits(heads: list[tuple[int, int]]) -> np.ndarray:
        return intervene_hits(model, co_prep.clean, heads, targets, correct, cands, config.rows()).float().cpu().numpy()

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
    intervals = {"intervention: accuracy before": wilson(int(before.sum()), n, split="test"),
                 "intervention: accuracy after": wilson(int(after.sum()), n, split="test"),
                 "intervention: after - before": bootstrap_diff(after, before, split="test", seed=config.seed)}
    if draws:
        rand = np.stack(draws).mean(0)  # per prompt, the share of random draws that got it right
        intervals["intervention: accuracy, random heads"] = bootstrap(rand, split="test", seed=config.seed)
        intervals["intervention: after - random heads"] = bootstrap_diff(after, rand, split="test", seed=config.seed)
    return Intervention(heads=[f"L{l}H{h}" for l, h in chosen], before=float(before.mean()), after=float(after.mean()),
                        random_control=float(np.mean([d.mean() for d in draws])) if draws else None,
                        random_draws=[float(d.mean()) for d in draws], random_heads=draw_heads, n_prompts=n,
                        layers=[lo, hi - 1]), intervals


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: ReuseConfig | None = None, progress: bool = True) -> ReuseResult:
    """Both circuits, their head overlap, the head classes and the intervention."""
    from workbench.datasets.colored_objects import DEFAULT_FORMAT

    from .head_classes import CLASSES, head_classes

    config = config or ReuseConfig()
    config.validate()
    start = time.perf_counter()
    fmt = config.format or DEFAULT_FORMAT
    ioi, ioi_tensors, ioi_ivs = task_circuit(model, config, "ioi", fmt, progress)
    co, co_tensors, co_ivs = task_circuit(model, config, "colored-objects", fmt, progress)
    intervals = {f"ioi: {k}": v for k, v in ioi_ivs.items()} | {f"colored_objects: {k}": v for k, v in co_ivs.items()}
    ov = head_overlap(ioi, co, model.shape.n_layers * model.shape.n_heads, config, progress)
    say(progress, "head classes on IOI prompts and repeated random tokens")
    classes = head_classes(model, build_task("ioi", model.tokenizer, max(config.n_prompts, 16), config.seed),
                           n_random=4, seed=config.seed)
    table = class_table(classes.labels(), ioi, co)
    iv, iv_intervals = intervene(model, config, classes.scores["s_inhibition"], ioi.heads, fmt, progress)
    result = ReuseResult(config=config, meta=provenance(model=model.name, seed=config.seed), format=fmt, ioi=ioi,
                         colored_objects=co, overlap=ov, class_table=table, intervention=iv,
                         seconds=time.perf_counter() - start, class_scores={c: classes.scores[c] for c in CLASSES},
                         ioi_edge_scores=ioi_tensors["edge_scores"], ioi_circuit=ioi_tensors["circuit"],
                         ioi_head_scores=ioi_tensors["head_scores"], colored_objects_edge_scores=co_tensors["edge_scores"],
                         colored_objects_circuit=co_tensors["circuit"], colored_objects_head_scores=co_tensors["head_scores"])
    for name, interval in (intervals | iv_intervals).items():
        result.set_interval(name, interval)
    return result
