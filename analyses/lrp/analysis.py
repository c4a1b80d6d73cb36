"""LRP saliency: which prompt tokens and which heads carried an answer (AttnLRP on the language
model, against gradient x input and attention rollout), and where a CNN looked (LRP on
EfficientNet-Lite0 and the salient-relevance map of Li et al.), each method scored by the same
deletion test: area over the perturbation curve (AOPC, Samek et al. 2017), higher = the ranking
found what the model needs.

Two configs, one ``run``:

* ``LrpConfig`` (prompts): explain ``logit(target) - logit(contrast)`` (or one logit) at the last
  position; with no prompts, ``n_prompts`` prompts of each task (IOI: IO minus S; successor:
  the next month/day/letter/number minus the item asked about), with per-task bootstrap
  intervals over prompts for every AOPC and the paired differences AttnLRP minus each other
  method.  -> ``LrpResult``
* ``LrpImageConfig`` (photographs or image files): explain the top-1 class logit.  -> ``LrpImageResult``
* ``LrpOptions``: the options of ``workbench lrp`` (and the page's form), both modes in one;
  ``run`` turns it into one of the two configs (``--image`` given: images, else prompts).

The engines live in ``attnlrp.py`` (language model), ``cnn.py`` (CNN, SR map) and
``imports.py`` (how zennit and lxt are imported here); all three are imported only when a
run needs them, so importing this module never loads lxt or zennit.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
import typing
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor
from tqdm.auto import tqdm

from workbench.errors import InputError
from workbench.results import Result, provenance
from workbench.spec import option
from workbench.stats import Interval, bootstrap, bootstrap_diff, wilson
from workbench.checks import checked_run

from .cnn import COMPOSITES
from .tasks import TASKS, successor_questions, task_prompts

METHODS = ("attnlrp", "gradient_x_input", "rollout")
IMAGE_METHODS = ("lrp", "sr", "gradient")
CONSERVATION_TOLERANCE = 1e-3  # relative: |sum(token R) + softmax-absorbed R - target| / |target|
# The defaults of a prompt run, chosen for the size of the test, not by looking at its result:
# 32 prompts per task (the floor) on two tasks, 10 deletions (AOPC's usual K), one random
# order per prompt (the bootstrap over prompts carries the random order's spread). About 40
# forward passes a prompt; 64 prompts take a few minutes on two CPU cores.
DEFAULT_TASKS = TASKS
DEFAULT_N = 32
DEFAULT_MAX_DELETE = 10
DEFAULT_N_RANDOM = 1
SPLIT = "test"  # nothing is fitted or chosen on the prompts: the methods' settings are fixed beforehand


# ============================================================================ prompts
@dataclass
class LrpConfig:
    """Explain prompts. ``prompts`` empty -> ``n_prompts`` prompts of each task in ``tasks``
    (``ioi``: IO minus S; ``successor``: next item minus the item asked about; ``tasks.py``).
    ``target`` / ``contrast``: single tokens (leading space matters); no target -> the model's
    top prediction; no contrast -> the target logit alone."""

    prompts: tuple[str, ...] = ()
    target: str | None = None
    contrast: str | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n_prompts: int = DEFAULT_N
    seed: int = 0
    max_delete: int = DEFAULT_MAX_DELETE
    n_random: int = DEFAULT_N_RANDOM
    renamed: ClassVar[dict[str, str]] = {"n": "n_prompts"}


def _rename_v1(arrays: dict[str, torch.Tensor], prefixes: dict[str, str]) -> dict[str, torch.Tensor]:
    """Format 1's flat ``{prefix}{key}`` tensors as ``{field}/{key}`` entries of dict fields."""
    out = {}
    for name, tensor in arrays.items():
        for prefix, field_name in prefixes.items():
            if name.startswith(prefix):
                name = f"{field_name}/{name[len(prefix):]}"
                break
        out[name] = tensor
    return out


@dataclass(kw_only=True)
class LrpResult(Result):
    """Token relevance (AttnLRP, gradient x input, rollout) of every prompt, head relevance,
    and the deletion test, with per-task statistics."""

    analysis = "lrp"
    v1_names = {"prompt_tokens": "tokens", "token_conservation_error": "token_conservation_error_mean",
                "softmax_absorbed_fraction": "softmax_absorbed_fraction_mean", "target_values": "target_value",
                "conservation_error_per_prompt": "conservation_error",
                "token_conservation_error_per_prompt": "token_conservation_error"}

    config: LrpConfig
    task: str  # the tasks explained, joined by '+' (``ioi+successor``), or ``prompts`` (given prompts)
    tasks: list[str]
    prompt_tasks: list[str]  # the task of each prompt
    n_prompts: int
    prompts: list[str]
    prompt_tokens: list[list[str]]
    targets: list[str]  # the explained token of each prompt
    contrasts: list[str | None]  # the contrast token of each prompt (None: the target logit alone)
    target_value_mean: float
    # the accounting identity: largest |sum(token R) + softmax-absorbed R - value| / |value| over the prompts
    conservation_error: float
    conservation_tolerance: float
    token_conservation_error: float = math.nan  # by the tokens alone: mean over prompts of |sum(token R) - value| / |value|
    softmax_absorbed_fraction: float  # mean share of the explained value absorbed by the softmax rule (signed)
    aopc: dict[str, float]  # area over the deletion curve per method (and ``random``), mean over every prompt
    max_delete: int
    n_random: int
    top_heads: list[dict[str, Any]]  # layer, head, relevance
    split: str = SPLIT
    aopc_by_task: dict[str, dict[str, float]] = field(default_factory=dict)
    accuracy_by_task: dict[str, float] = field(default_factory=dict)  # share of prompts with a positive value
    io_share: dict[str, float] | None = None  # IOI only: the IO name's share of relevance, per method
    io_top1_rate: dict[str, float] | None = None  # IOI only: how often the IO name is the most relevant token
    lengths: Int[Tensor, " prompt"]
    target_values: Float[Tensor, " prompt"]  # the explained value, logit(target) - logit(contrast)
    token_ids: Int[Tensor, "prompt pos"]  # -1 past a prompt's length
    relevance_maps: dict[str, Float[Tensor, "prompt pos"]]  # per method
    head_relevance_by_method: dict[str, Float[Tensor, "prompt layer head"]]  # attnlrp, gradient_x_input
    # per method, the explained value after deleting the most relevant tokens first (NaN past a prompt's length)
    deletion_curves: dict[str, Float[Tensor, "prompt step"]]
    token_conservation_error_per_prompt: Float[Tensor, " prompt"]
    conservation_error_per_prompt: Float[Tensor, " prompt"]
    softmax_absorbed_share: Float[Tensor, " prompt"]

    deletion_step: ClassVar[int] = 1  # tokens deleted per step of the deletion curves

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        return metrics, _rename_v1(arrays, {"head_relevance_": "head_relevance_by_method",
                                            "relevance_": "relevance_maps", "deletion_": "deletion_curves"})

    def tokens(self, i: int = 0) -> list[str]:
        return list(self.prompt_tokens[i])

    def relevance(self, method: str = "attnlrp", i: int = 0) -> torch.Tensor:
        """[pos] token relevance of prompt ``i``."""
        return self.relevance_maps[method][i, :int(self.lengths[i])]

    @property
    def head_relevance(self) -> torch.Tensor:
        """[layer head] AttnLRP head relevance, mean over prompts."""
        return self.head_relevance_by_method["attnlrp"].mean(0)

    def prompt_aopc(self, method: str) -> torch.Tensor:
        """[prompt] AOPC of one method (or ``random``) on each prompt."""
        return torch.tensor([curve_aopc(c) for c in self.deletion_curves[method]])  # cpu: a result array

    def task_interval(self, task: str, figure: str) -> Interval | None:
        """A stored interval of ``task``: figure ``AOPC attnlrp``, ``AOPC attnlrp - random``,
        ``token-only conservation error``, ``softmax-absorbed share``, ``accuracy``."""
        return self.intervals.get(f"{task}: {figure}")

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {
            "tokens": self.tokens(0),
            "relevance": [round(float(v), 6) for v in self.relevance("attnlrp", 0)],
            "head_relevance": [[round(float(v), 6) for v in row] for row in self.head_relevance],
            **{k: data[k] for k in ("conservation_error", "token_conservation_error")},
            "softmax_absorbed_share": data["softmax_absorbed_fraction"],
            "aopc": data["aopc"], "aopc_by_task": data["aopc_by_task"],
            "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
        }
        if self.path is not None:
            out["run"] = str(self.path)
        return out


def curve_aopc(curve: torch.Tensor) -> float:
    """AOPC of one deletion curve (NaN entries past the prompt's length left out)."""
    c = curve[~torch.isnan(curve)]
    return float((c[0] - c).mean()) if len(c) else float("nan")


def _prompt_targets(model: Any, config: LrpConfig) -> tuple[list[str], list[int], list[int | None], list[str], dict]:
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
        contrast = [model.token_id(config.contrast)] * len(prompts) if config.contrast else [None] * len(prompts)
        return prompts, targets, contrast, ["prompts"] * len(prompts), {"io_ids": None}
    if not config.tasks:
        raise InputError("no task and no prompt given; pass --task ioi (or successor) or --prompt text")
    prompts, targets, contrasts, labels = [], [], [], []
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


# cpu: result arrays
def run_prompts(model: Any, config: LrpConfig, progress: bool = True) -> LrpResult:
    """AttnLRP, gradient x input and rollout on every prompt, then the deletion test, with
    per-task bootstrap intervals over prompts."""
    from workbench.analyses.lrp import attnlrp as A

    if model is None:
        raise InputError("the prompt mode of lrp needs a language model; pass one (e.g. smollm2-135m)")
    if config.max_delete < 1:
        raise InputError(f"max_delete={config.max_delete}: delete at least one token")
    if config.n_random < 0:
        raise InputError(f"n_random={config.n_random}: give zero or more random deletion orders")
    for task in config.tasks:
        if task not in TASKS:
            raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    prompts, targets, contrasts, labels, info = _prompt_targets(model, config)
    rng = random.Random(config.seed)
    s = model.shape
    per_method = {m: [] for m in METHODS}
    heads_lrp, heads_gxi, token_lists, id_lists = [], [], [], []
    values, cons, token_cons, absorbed = [], [], [], []
    curves = {m: [] for m in (*METHODS, "random")} if config.n_random > 0 else {m: [] for m in METHODS}
    for i in tqdm(range(len(prompts)), desc="explaining prompts", disable=not progress, leave=False):
        ids = model.to_tokens(prompts[i])[0][0]
        if len(ids) < 2:
            raise InputError(f"prompt {i} is a single token; the deletion test needs at least two tokens")
        target = _target_fn(targets[i], contrasts[i])
        lrp = A.attnlrp(model, ids, target)
        gxi = A.gradient_x_input(model, ids, target)
        roll = A.attention_rollout(model, ids)
        for m, r in zip(METHODS, (lrp.relevance, gxi.relevance, roll)):
            per_method[m].append(r)
        heads_lrp.append(lrp.head_relevance)
        heads_gxi.append(gxi.head_relevance)
        values.append(lrp.target_value)
        cons.append(lrp.conservation_error)
        token_cons.append(lrp.token_conservation_error)
        absorbed.append(lrp.softmax_absorbed)
        id_lists.append(ids.cpu())
        token_lists.append([model.tokenizer.decode([int(t)]) for t in ids])
        steps = min(config.max_delete, len(ids) - 1)
        orders = {m: A.deletion_orders(r) for m, r in zip(METHODS, (lrp.relevance, gxi.relevance, roll))}
        for j in range(config.n_random):
            perm = list(range(len(ids) - 1))
            rng.shuffle(perm)
            orders[f"random{j}"] = perm
        got = A.deletion_curves(model, ids, orders, target, steps)
        for m in METHODS:
            curves[m].append(_pad_curve(got[m], config.max_delete))
        if config.n_random > 0:
            rand = torch.stack([got[f"random{j}"] for j in range(config.n_random)]).mean(0)
            curves["random"].append(_pad_curve(rand, config.max_delete))

    n, width = len(prompts), max(len(t) for t in id_lists)
    token_ids = torch.full((n, width), -1, dtype=torch.long)
    for i, t in enumerate(id_lists):
        token_ids[i, : len(t)] = t
    maps = {}
    for m in METHODS:
        mat = torch.zeros(n, width)
        for i, r in enumerate(per_method[m]):
            mat[i, : len(r)] = r
        maps[m] = mat
    deletion = {m: torch.stack(cs) for m, cs in curves.items()}
    shares = [a / v if abs(v) > 1e-6 else float("nan") for a, v in zip(absorbed, values)]
    per_prompt_aopc = {m: np.array([curve_aopc(c) for c in deletion[m]]) for m in curves}
    head_lrp = torch.stack(heads_lrp)
    mean_heads = head_lrp.mean(0)
    order = torch.argsort(mean_heads.flatten().abs(), descending=True)[:10]
    top_heads = [{"layer": int(k // s.n_heads), "head": int(k % s.n_heads), "relevance": float(mean_heads.flatten()[k])}
                 for k in order]
    task_names = list(dict.fromkeys(labels))
    result = LrpResult(
        config=config, task="+".join(task_names), tasks=task_names, prompt_tasks=labels, n_prompts=n,
        prompts=prompts, prompt_tokens=token_lists, targets=[model.tokenizer.decode([t]) for t in targets],
        contrasts=[model.tokenizer.decode([c]) if c is not None else None for c in contrasts],
        target_value_mean=float(np.mean(values)), conservation_error=float(max(cons)),
        conservation_tolerance=CONSERVATION_TOLERANCE, token_conservation_error=float(np.mean(token_cons)),
        softmax_absorbed_fraction=_nanmean(shares), aopc={m: _nanmean(list(v)) for m, v in per_prompt_aopc.items()},
        max_delete=config.max_delete, n_random=config.n_random, top_heads=top_heads,
        lengths=torch.tensor([len(t) for t in id_lists]), target_values=torch.tensor(values), token_ids=token_ids,
        relevance_maps=maps, head_relevance_by_method={"attnlrp": head_lrp, "gradient_x_input": torch.stack(heads_gxi)},
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
                                    bootstrap_diff(per_prompt_aopc["attnlrp"][rows], per_prompt_aopc[m][rows], split=SPLIT))
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


# ============================================================================ images
@dataclass
class LrpImageConfig:
    """Explain photographs (shipped names like ``chelsea`` or image file paths) on
    EfficientNet-Lite0: LRP (zennit composite), the SR map and the gradient map, compared by
    deleting ``region`` x ``region`` pixel blocks, ``step`` blocks at a time, ``n_steps`` times."""

    images: tuple[str, ...] = ("chelsea",)
    class_index: int | None = None
    composite: str = "epsilon_gamma_box"
    region: int = 16
    step: int = 4
    n_steps: int = 16
    baseline: str = "blur"
    top_k: int = 5
    sr_grid: int = 56
    image_size: int = 224
    seed: int = 0


@dataclass(kw_only=True)
class LrpImageResult(Result):
    """LRP, salient relevance and gradient maps of images through EfficientNet-lite0, and the
    region-deletion test."""

    analysis = "lrp_image"
    v1_names = {"names": "images", "image_crops": "images"}

    config: LrpImageConfig
    names: list[str]
    top_classes: dict[str, list[dict[str, Any]]]  # per image, its top classes {index, name, prob}, most probable first
    top1: dict[str, str]
    explained_class: dict[str, int]
    aopc: dict[str, float]  # area over the region-deletion curve per method (and ``random``), mean over images
    aopc_per_image: dict[str, list[float]]  # per method (and ``random``), in ``names`` order
    relevance_fraction: list[float]
    rules: str  # the LRP rules of the composite used, in words
    removed_fraction_max: float
    image_crops: UInt8[Tensor, "image h w 3"]  # the centre crops that were explained
    saliency_maps: dict[str, Float[Tensor, "image row col"]]  # lrp (signed), sr, gradient
    deletion_curves: dict[str, Float[Tensor, "image step"]]  # explained logit after deleting the most salient regions

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        return metrics, _rename_v1(arrays, {"map_": "saliency_maps", "deletion_": "deletion_curves"})

    def image(self, i: int = 0) -> torch.Tensor:
        """[H W 3] uint8 the centre crop that was explained."""
        return self.image_crops[i]

    def saliency(self, method: str = "lrp", i: int = 0) -> torch.Tensor:
        """[H W] the ``lrp`` (signed), ``sr`` or ``gradient`` map of image ``i``."""
        return self.saliency_maps[method][i]

    @property
    def deletion_step(self) -> int:
        """Regions deleted per step of the deletion curves."""
        return int(self.config.step) if self.config is not None else 1

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {"top_classes": data["top_classes"], "aopc": data["aopc"]}
        if self.path is not None:
            out["run"] = str(self.path)
        return out


def blur_baseline(x: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    """A strongly blurred copy of the input ``[1 3 H W]`` (Gaussian, reflect padding): removed
    regions keep their colour but lose their shapes, so deletion does not add new edges."""
    radius = int(2 * sigma)
    g = torch.exp(-torch.arange(-radius, radius + 1, device=x.device).float() ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    y = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = torch.nn.functional.conv2d(y, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(y, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def run_images(config: LrpImageConfig, progress: bool = True) -> LrpImageResult:
    """Top classes, LRP / SR / gradient maps and their deletion curves for every image."""
    from workbench.vision import load_efficientnet_lite0, load_image, preprocess, top_classes

    from workbench.analyses.lrp import cnn as C

    if not config.images:
        raise InputError("no image given; pass an image file path or a shipped photo name such as chelsea")
    if config.composite not in C.COMPOSITES:
        raise InputError(f"unknown LRP composite '{config.composite}'; choose one of {', '.join(C.COMPOSITES)}")
    if config.baseline not in ("blur", "gray"):
        raise InputError(f"unknown deletion baseline '{config.baseline}'; choose blur or gray")
    if config.class_index is not None and not 0 <= config.class_index < 1000:
        raise InputError(f"class index {config.class_index} is outside ImageNet's 0..999")
    if config.image_size < 32 or config.image_size % config.region:
        raise InputError(f"region {config.region} does not divide the image size {config.image_size}; "
                         "choose a region such as 8, 16 or 32 and a size that is a multiple of it (at least 32)")
    net = load_efficientnet_lite0()
    canonical = C.CanonicalEfficientNet(net)
    torch.manual_seed(config.seed)
    names, crops, tops, maps, curves, rel_sums, logits_expl = [], [], {}, {m: [] for m in IMAGE_METHODS}, {}, [], []
    for m in (*IMAGE_METHODS, "random"):
        curves[m] = []
    for spec in tqdm(config.images, desc="explaining images", disable=not progress, leave=False):
        img, name = load_image(spec)
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        x, crop = preprocess(img, config.image_size)
        with torch.no_grad():
            logits = net(x)[0]
        cls = int(logits.argmax()) if config.class_index is None else config.class_index
        tops[name] = top_classes(logits, config.top_k)
        relevance, _ = C.lrp_relevance(canonical, x, cls, config.composite)
        lrp_map = relevance.sum(1)[0]
        sr_map = torch.from_numpy(C.salient_relevance(lrp_map.cpu().numpy(), grid=config.sr_grid))
        grad_map = C.gradient_map(net, x, cls)
        rand_map = torch.rand(lrp_map.shape)  # cpu: the saliency maps are on the CPU (the LRP image network runs there)
        baseline = blur_baseline(x) if config.baseline == "blur" else torch.zeros_like(x)
        for m, sal in zip((*IMAGE_METHODS, "random"), (lrp_map, sr_map, grad_map, rand_map)):
            curves[m].append(C.region_deletion_curve(net, x, sal, cls, config.region, config.step, config.n_steps, baseline))
        for m, sal in zip(IMAGE_METHODS, (lrp_map, sr_map, grad_map)):
            maps[m].append(sal.float())
        names.append(name)
        crops.append(torch.from_numpy((crop * 255).round().astype(np.uint8)))
        rel_sums.append(float(relevance.sum()))
        logits_expl.append(float(logits[cls]))
    deletion = {m: torch.stack(v) for m, v in curves.items()}
    per_image = {m: [float((c[0] - c).mean()) for c in deletion[m]] for m in curves}
    return LrpImageResult(
        config=config, names=names, top_classes=tops, top1={n: t[0]["name"] for n, t in tops.items()},
        explained_class={n: int(t[0]["index"]) if config.class_index is None else config.class_index
                         for n, t in tops.items()},
        aopc={m: float(np.mean(v)) for m, v in per_image.items()}, aopc_per_image=per_image,
        relevance_fraction=[r / l if abs(l) > 1e-6 else float("nan") for r, l in zip(rel_sums, logits_expl)],
        rules=C.RULES[config.composite],
        removed_fraction_max=min(1.0, config.step * config.n_steps * config.region ** 2 / config.image_size ** 2),
        image_crops=torch.stack(crops), saliency_maps={m: torch.stack(v) for m, v in maps.items()},
        deletion_curves=deletion, meta=provenance(model="efficientnet-lite0", seed=config.seed))


# ============================================================================ the command's options
ImageBaseline = Literal["blur", "gray"]
"""What replaces a deleted image region.
blur: a strongly blurred copy (colour kept, shapes lost, no new edges);
gray: zeros after normalisation (the mean colour)."""
IMAGE_BASELINES: tuple[str, ...] = typing.get_args(ImageBaseline)


@dataclass
class LrpOptions:
    """The options of ``workbench lrp``: a prompt run (``--prompt``, or IOI prompts when neither
    ``--prompt`` nor ``--image`` is given) or an image run (``--image``). ``run`` turns them into
    an ``LrpConfig`` or an ``LrpImageConfig``; a saved run keeps that config."""

    prompts: tuple[str, ...] = option((), flag="--prompt", aliases=("-p",),
                                      help="prompt to explain; none and no --image: IOI prompts")
    images: tuple[str, ...] = option((), flag="--image", aliases=("-i",),
                                     help="image file or shipped photo (chelsea, coffee, astronaut, ...; "
                                          "'all' = every shipped photo)")
    target: str | None = option(None, help="answer token to explain (leading space matters, e.g. ' Mary'); "
                                           "default: the top prediction")
    contrast: str | None = option(None, help="explain logit(target) - logit(contrast) instead of one logit")
    tasks: tuple[str, ...] = option((), flag="--task", choices=TASKS,
                                    help="prompt task(s) when no --prompt is given (repeat for several; default: ioi "
                                         "and successor): ioi (IO minus S), successor (next month/day/letter/number "
                                         "minus the last item listed)")
    n_prompts: int = option(DEFAULT_N, flag="--n", help="prompts per task when no --prompt is given",
                            min=1, max=100_000)
    max_delete: int = option(DEFAULT_MAX_DELETE, help="tokens deleted in the faithfulness test", min=1)
    n_random: int = option(DEFAULT_N_RANDOM, help="random deletion orders per prompt (the random baseline)", min=0)
    class_index: int = option(-1, flag="--class", help="ImageNet class to explain (-1: the top-1 class)",
                              min=-1, max=999)
    composite: str = option("epsilon_gamma_box", help="LRP rules for the CNN", choices=COMPOSITES)
    baseline: ImageBaseline = option("blur", help="what replaces deleted image regions", choices=IMAGE_BASELINES)
    image_size: int = option(224, flag="--size", help="image side in pixels fed to the CNN (224 = as trained)", min=32)
    n_steps: int = option(16, flag="--steps", help="deletion steps for images (4 regions of 16x16 each)", min=1)
    seed: int = 0

    def validate(self) -> None:
        if self.prompts and self.images:
            raise InputError("give either --prompt or --image, not both")
        from workbench.vision.images import image_source

        for image in self.images:  # a missing file, a folder or a pipe, before the CNN is built
            if image != "all":
                image_source(image)
        if any(not p.strip() for p in self.prompts):
            raise InputError("the prompt is empty; give some text to explain with --prompt")
        n_successor = len(successor_questions())
        if not self.prompts and not self.images and "successor" in (self.tasks or DEFAULT_TASKS) \
                and self.n_prompts > n_successor:
            raise InputError(f"--n {self.n_prompts}: the successor task has {n_successor} questions; "
                             f"use --n {n_successor} or less, or --task ioi alone")
        region = LrpImageConfig.region
        if self.images and self.image_size % region:
            raise InputError(f"--size {self.image_size} is not a multiple of the {region}-pixel deletion regions; "
                             f"use --size {max(32, self.image_size // region * region)}")

    @property
    def explains_images(self) -> bool:
        return bool(self.images)

    def analysis_config(self) -> LrpConfig | LrpImageConfig:
        """The config of the run these options ask for (``all`` expands to every shipped photo)."""
        self.validate()
        if self.images:
            from workbench.vision import PHOTOS

            images = tuple(p for spec in self.images for p in (PHOTOS if spec == "all" else (spec,)))
            return LrpImageConfig(images=images, class_index=None if self.class_index < 0 else self.class_index, composite=self.composite,
                                  baseline=self.baseline, image_size=self.image_size, n_steps=self.n_steps,
                                  seed=self.seed)
        return LrpConfig(prompts=self.prompts, target=self.target, contrast=self.contrast, tasks=self.tasks or DEFAULT_TASKS,
                         n_prompts=self.n_prompts, seed=self.seed, max_delete=self.max_delete, n_random=self.n_random)


def check_model(config: LrpOptions, model: Any) -> None:
    """The spec's check before a run: every ``--prompt`` fits the language model's context."""
    if model is None or not getattr(config, "prompts", ()):
        return
    from workbench.tokens import check_context

    for i, p in enumerate(config.prompts):
        n_tokens = len(model.tokenizer(p)["input_ids"])
        what = "--prompt" if len(config.prompts) == 1 else f"--prompt {i + 1} of {len(config.prompts)}"
        check_context(model, n_tokens, what)


# Peak memory of an image run, per pixel of the --size x --size input, measured (CPU, float32,
# ru_maxrss over the RSS before the run) on chelsea: --size 224 / 448 at 16 deletion steps:
# 0.67 / 1.68 GB, 6,700 bytes a pixel (LRP and the gradient map keep every layer's activations
# for the backward pass), over about 0.33 GB for the network and its libraries; 64 steps
# instead of 16 at 224: 0.60 GB (the deletion images, 12 bytes a pixel a step, are in the noise).
# This estimate: 0.65 / 1.6 GB.
IMAGE_BYTES_PER_PIXEL = 6_500
IMAGE_FIXED_BYTES = 330 * 2**20


def estimate_bytes(config: Any, model: Any) -> int:
    """The spec's memory estimate before a run: image runs scale with --size squared (and the
    deletion steps); prompt runs hold one prompt at a time (its length is checked by ``check_model``)."""
    if not getattr(config, "images", ()):
        return 0
    pixels = config.image_size ** 2
    images = config.analysis_config().images if hasattr(config, "analysis_config") else config.images
    n_images = len(images)
    per_pixel = IMAGE_BYTES_PER_PIXEL + 12 * (config.n_steps + 1) + 15 * n_images
    return int(IMAGE_FIXED_BYTES + pixels * per_pixel)


def wants_language_model(config: Any) -> bool:
    """Prompt runs explain a language model (``--model``); image runs build the CNN themselves."""
    return not (isinstance(config, LrpImageConfig) or getattr(config, "explains_images", False))


# ============================================================================ entry point
@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Any, config: LrpConfig | LrpImageConfig | LrpOptions | None = None, progress: bool = True) -> Result:
    """Prompt mode with an ``LrpConfig`` (needs ``model``), image mode with an ``LrpImageConfig``
    (``model`` is ignored: the CNN is built here); ``LrpOptions`` pick one of the two."""
    config = config or LrpConfig()
    if isinstance(config, LrpOptions):
        config = config.analysis_config()
    if isinstance(config, LrpImageConfig):
        return run_images(config, progress=progress)
    return run_prompts(model, config, progress=progress)
