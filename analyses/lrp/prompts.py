"""The prompt mode: AttnLRP, gradient x input and attention rollout on every prompt, the
deletion test of each method, and the per-task statistics with their intervals."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.errors import InputError
from workbench.results import provenance
from workbench.stats import bootstrap, bootstrap_diff, wilson

from .config import CONSERVATION_TOLERANCE, METHODS, SPLIT, LrpConfig
from .records import HeadRelevance
from .result import LrpResult, curve_aopc
from .tasks import TASKS, task_prompts

if TYPE_CHECKING:
    from workbench.models import Model


def _prompt_targets(model: Model, config: LrpConfig) -> tuple[list[str], list[int], list[int | None], list[str], dict]:
    """(prompts, target ids, contrast ids or None, the task of each prompt, extra info such as IO ids)."""
    tok = model.tokenizer
    if config.prompts:
        prompts = [str(p) for p in config.prompts]
        for i, p in enumerate(prompts):
            if not p.strip():
                raise InputError(f"prompt {i} is empty; give some text to explain")
        targets = [model.token_id(config.target)] * len(prompts) if config.target else []
        if not targets:  # explain the model's own top prediction
            from workbench.cache import as_tokens, forward

            for p in prompts:
                with torch.no_grad():
                    logits, _ = forward(model, as_tokens(model, p))
                targets.append(int(logits[0, -1].argmax()))
        contrast: list[int | None] = [model.token_id(config.contrast)] * len(prompts) if config.contrast else [None] * len(prompts)
        return prompts, targets, contrast, ["prompts"] * len(prompts), {"io_ids": None}
    if not config.tasks:
        raise InputError("no task and no prompt given; pass --task ioi (or successor) or --prompt text")
    prompts, targets, labels = [], [], []
    contrasts: list[int | None] = []
    io_ids: list[int | None] = []
    for task in config.tasks:
        tp = task_prompts(task, config.n_prompts, tok, seed=config.seed)
        t_ids = [model.token_id(t) for t in tp.targets]
        c_ids = [model.token_id(c) for c in tp.contrasts]
        prompts += tp.prompts
        targets += t_ids
        contrasts += c_ids
        labels += [task] * len(tp.prompts)
        io_ids += t_ids if task == "ioi" else [None] * len(tp.prompts)
    return prompts, targets, contrasts, labels, {"io_ids": io_ids if "ioi" in config.tasks else None}


def _target_fn(target: int, contrast: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if contrast is None:
        return lambda logits: logits[target]
    return lambda logits: logits[target] - logits[contrast]

# ---------------------------------------------------------------------------- one prompt
@dataclass
class Explained:
    """One prompt explained: each method's token relevance, the head relevance, AttnLRP's
    accounting, and the deletion curves (padded to ``max_delete`` + 1 steps)."""

    ids: Tensor  # [pos] on the CPU
    tokens: list[str]
    relevance: dict[str, Tensor]  # per method [pos]
    head_lrp: Tensor  # [layer head]
    head_gxi: Tensor  # [layer head]
    value: float  # the explained value
    conservation_error: float
    token_conservation_error: float
    absorbed: float  # the value absorbed by the softmax rule
    curves: dict[str, Tensor]  # per method (and ``random``, the mean over the random orders) [step]


def check_prompt_config(model: Model | None, config: LrpConfig) -> None:
    if model is None:
        raise InputError("the prompt mode of lrp needs a language model; pass one (e.g. smollm2-135m)")
    if config.max_delete < 1:
        raise InputError(f"max_delete={config.max_delete}: delete at least one token")
    if config.n_random < 0:
        raise InputError(f"n_random={config.n_random}: give zero or more random deletion orders")
    for task in config.tasks:
        if task not in TASKS:
            raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def explain_prompt(model: Model, ids: Tensor, target: Callable[[Tensor], Tensor], config: LrpConfig,
                   rng: random.Random) -> Explained:
    """The three methods on one prompt's tokens ``ids``, then every method's deletion curve and
    the mean curve of ``n_random`` random deletion orders (drawn from ``rng``)."""
    from workbench.analyses.lrp import attnlrp as A

    lrp = A.attnlrp(model, ids, target)
    gxi = A.gradient_x_input(model, ids, target)
    roll = A.attention_rollout(model, ids)
    relevance = dict(zip(METHODS, (lrp.relevance, gxi.relevance, roll)))
    steps = min(config.max_delete, len(ids) - 1)
    orders = {m: A.deletion_orders(r) for m, r in relevance.items()}
    for j in range(config.n_random):
        perm = list(range(len(ids) - 1))
        rng.shuffle(perm)
        orders[f"random{j}"] = perm
    got = A.deletion_curves(model, ids, orders, target, steps)
    curves = {m: _pad_curve(got[m], config.max_delete) for m in METHODS}
    if config.n_random > 0:
        rand = torch.stack([got[f"random{j}"] for j in range(config.n_random)]).mean(0)
        curves["random"] = _pad_curve(rand, config.max_delete)
    return Explained(ids=ids.cpu(), tokens=[model.tokenizer.decode([int(t)]) for t in ids], relevance=relevance,
                     head_lrp=lrp.head_relevance, head_gxi=gxi.head_relevance, value=lrp.target_value,
                     conservation_error=lrp.conservation_error, token_conservation_error=lrp.token_conservation_error,
                     absorbed=lrp.softmax_absorbed, curves=curves)


# ---------------------------------------------------------------------------- every prompt
# cpu: result arrays
def padded(rows: list[Tensor], width: int, fill: float, dtype: torch.dtype) -> Tensor:
    """[row pos] the rows, each from position 0, ``fill`` past its length."""
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# cpu: result arrays
def top_heads_of(head_lrp: Tensor, n_heads: int) -> list[HeadRelevance]:
    """The ten heads of largest mean |AttnLRP relevance| (signed mean), best first."""
    mean_heads = head_lrp.mean(0)
    order = torch.argsort(mean_heads.flatten().abs(), descending=True)[:10]
    return [HeadRelevance(layer=int(k // n_heads), head=int(k % n_heads), relevance=float(mean_heads.flatten()[k]))
            for k in order]


# cpu: result arrays
def run_prompts(model: Model, config: LrpConfig, progress: bool = True) -> LrpResult:
    """AttnLRP, gradient x input and rollout on every prompt, then the deletion test, with
    per-task bootstrap intervals over prompts."""
    check_prompt_config(model, config)
    prompts, targets, contrasts, labels, info = _prompt_targets(model, config)
    rng = random.Random(config.seed)
    done: list[Explained] = []
    for i in tqdm(range(len(prompts)), desc="explaining prompts", disable=not progress, leave=False):
        ids = model.to_tokens(prompts[i])[0][0]
        if len(ids) < 2:
            raise InputError(f"prompt {i} is a single token; the deletion test needs at least two tokens")
        done.append(explain_prompt(model, ids, _target_fn(targets[i], contrasts[i]), config, rng))
    id_lists = [e.ids for e in done]
    values, cons = [e.value for e in done], [e.conservation_error for e in done]
    token_cons = [e.token_conservation_error for e in done]
    per_method = {m: [e.relevance[m] for e in done] for m in METHODS}
    width = max(len(t) for t in id_lists)
    maps = {m: padded(rs, width, 0.0, torch.float32) for m, rs in per_method.items()}  # 0 past a prompt's length
    deletion = {m: torch.stack([e.curves[m] for e in done]) for m in done[0].curves}
    shares = [e.absorbed / v if abs(v) > 1e-6 else float("nan") for e, v in zip(done, values)]
    per_prompt_aopc = {m: np.array([curve_aopc(c) for c in deletion[m]]) for m in deletion}
    head_lrp = torch.stack([e.head_lrp for e in done])
    task_names = list(dict.fromkeys(labels))
    result = LrpResult(
        config=config, task="+".join(task_names), tasks=task_names, prompt_tasks=labels, n_prompts=len(prompts),
        prompts=prompts, prompt_tokens=[e.tokens for e in done], targets=[model.tokenizer.decode([t]) for t in targets],
        contrasts=[model.tokenizer.decode([c]) if c is not None else None for c in contrasts],
        target_value_mean=float(np.mean(values)), conservation_error=float(max(cons)),
        conservation_tolerance=CONSERVATION_TOLERANCE, token_conservation_error=float(np.mean(token_cons)),
        softmax_absorbed_fraction=_nanmean(shares), aopc={m: _nanmean(list(v)) for m, v in per_prompt_aopc.items()},
        max_delete=config.max_delete, n_random=config.n_random, top_heads=top_heads_of(head_lrp, model.shape.n_heads),
        lengths=torch.tensor([len(t) for t in id_lists]), target_values=torch.tensor(values),
        token_ids=padded(id_lists, width, -1, torch.long), relevance_maps=maps,
        head_relevance_by_method={"attnlrp": head_lrp, "gradient_x_input": torch.stack([e.head_gxi for e in done])},
        deletion_curves=deletion, token_conservation_error_per_prompt=torch.tensor(token_cons),
        conservation_error_per_prompt=torch.tensor(cons), softmax_absorbed_share=torch.tensor(shares))
    _task_statistics(result, labels, per_prompt_aopc, values, token_cons, shares)
    if info.get("io_ids"):
        keep = [i for i, io in enumerate(info["io_ids"]) if io is not None]
        io = _io_metrics({m: [r[i] for i in keep] for m, r in per_method.items()},
                         [id_lists[i] for i in keep], [info["io_ids"][i] for i in keep])
        result.io_share, result.io_top1_rate = io["io_share"], io["io_top1_rate"]
    result.meta = provenance(model=model.name, seed=config.seed) | {"backend": model.backend}
    return result


# ---------------------------------------------------------------------------- statistics
def _task_statistics(result: LrpResult, labels: list[str], per_prompt_aopc: dict[str, np.ndarray],
                     values: list[float], token_cons: list[float], shares: list[float]) -> None:
    """Per task: mean AOPC per method with a bootstrap interval over prompts, AttnLRP minus each
    other method (paired bootstrap over the same prompts), the token-only conservation error and
    the softmax-absorbed share (bootstrap), and the share of prompts the model gets right (Wilson)."""
    by_task: dict[str, dict[str, float]] = {}
    accuracy: dict[str, float] = {}
    labels_arr = np.array(labels)
    for task in dict.fromkeys(labels):
        rows = np.nonzero(labels_arr == task)[0]
        by_task[task] = {}
        for m, v in per_prompt_aopc.items():
            iv = bootstrap(v[rows], split=SPLIT)
            by_task[task][m] = iv.value
            result.set_interval(f"{task}: AOPC {m}", iv)
        for m in per_prompt_aopc:
            if m != "attnlrp":
                result.set_interval(f"{task}: AOPC attnlrp - {m}",
                                    bootstrap_diff(per_prompt_aopc["attnlrp"][rows].tolist(),
                                                   per_prompt_aopc[m][rows].tolist(), split=SPLIT))
        result.set_interval(f"{task}: token-only conservation error",
                            bootstrap(np.array(token_cons)[rows], split=SPLIT))
        sh = np.array(shares)[rows]
        sh = sh[np.isfinite(sh)]
        if len(sh):
            result.set_interval(f"{task}: softmax-absorbed share", bootstrap(sh, split=SPLIT))
        right = int(sum(values[i] > 0 for i in rows))
        iv = wilson(right, len(rows), split=SPLIT)
        accuracy[task] = iv.value
        result.set_interval(f"{task}: accuracy", iv)
    result.aopc_by_task = by_task
    result.accuracy_by_task = accuracy


def _pad_curve(curve: torch.Tensor, length: int) -> torch.Tensor:
    out = torch.full((length + 1,), float("nan"))  # cpu: a result curve
    out[: len(curve)] = curve
    return out


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else float("nan")


def _io_metrics(per_method: dict[str, list[torch.Tensor]], ids: list[torch.Tensor], io_ids: list[int]) -> dict:
    """The IO name token's share of relevance, ``R[io] / sum |R|`` (first mention of the IO
    name), and how often it is the most relevant token, per method."""
    share, top1 = {}, {}
    for m, rs in per_method.items():
        shares, tops = [], []
        for r, t, io in zip(rs, ids, io_ids):
            pos = (t == io).nonzero().flatten()
            if len(pos) == 0:
                continue
            p = int(pos[0])
            shares.append(float(r[p] / r.abs().sum().clamp_min(1e-12)))
            tops.append(float(int(torch.argmax(r[:-1])) == p))
        share[m] = float(np.mean(shares)) if shares else float("nan")
        top1[m] = float(np.mean(tops)) if tops else float("nan")
    return {"io_share": share, "io_top1_rate": top1}

