"""Head ablation: mean-ablate each attention head in turn and measure the change in the
task's logit difference (correct minus wrong answer). The first real job of the
workbench and the spine of its HTML report.

Mean ablation replaces a head's output z (``blocks.{l}.attn.hook_z``) at every
position with its mean over the corrupted reference distribution (IOI's ABC set: the
same templates with three fresh names), averaged over prompts and real (non-pad)
tokens, so the ablated head carries no information about the names.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.stats import bootstrap, split_half_top, wilson
from workbench.cache import Tokens, run_with_cache, run_with_patches
from workbench.datasets import PromptSet, ioi_prompts
from workbench.errors import InputError
from workbench.parallel import MapStats, current, run_head_patches_parallel, supports_ray
from workbench.patching import HeadPatchSweep, head_masks_all_positions, logit_diff
from workbench.names import act_name, head_name
from workbench.records import HeadEffect
from workbench.results import Result, provenance
from workbench.spec import option
from workbench.checks import checked_run

if TYPE_CHECKING:
    from workbench.models import Model

Task = Literal["ioi"]
"""The task whose logit difference is measured.
ioi: indirect object identification (IO - S), corrupted by the ABC set."""
TASKS: tuple[str, ...] = typing.get_args(Task)

Ablation = Literal["mean", "zero"]
"""What replaces an ablated head's output z.
mean: the head's mean over the corrupt (ABC) prompts and real tokens;
zero: z = 0."""
ABLATIONS: tuple[str, ...] = typing.get_args(Ablation)


@dataclass
class AblationConfig:
    task: Task = option("ioi", help="the task whose logit difference is measured", choices=TASKS)
    n_prompts: int = option(64, flag="--n", help="number of prompts", min=1, max=100_000)
    seed: int = 0
    ablation: Ablation = option("mean", help="mean: each head's mean over the corrupt (ABC) prompts; zero: z = 0",
                                choices=ABLATIONS)
    batch_size: int = option(512, help="patched runs per forward pass", min=1)
    top_k: int = option(10, help="heads listed in the summary", min=1)
    include: tuple[str, ...] = option((), help="saved runs whose sections join the report "
                                      "(default: the latest run of every other analysis on this model)",
                                      refers="run")
    renamed: ClassVar[dict[str, str]] = {"n": "n_prompts", "max_batch": "batch_size"}

    def validate(self) -> None:
        if self.batch_size < self.n_prompts:  # one configuration runs every prompt in one batch
            raise InputError(f"--batch-size {self.batch_size} cannot hold one head's run over --n {self.n_prompts} "
                             f"prompts; use --batch-size {self.n_prompts} or more, or a smaller --n")


def estimate_bytes(config: AblationConfig, model: Model) -> int:
    """The spec's memory estimate before a run: the mean over the corrupt prompts is one forward
    over all ``--n`` of them, whose logits (prompts x positions x vocab) dominate; the patch
    sweep keeps the last position's logits of ``--batch-size`` rows.

    Calibration (tiny-llama, CPU, float32, ru_maxrss over the RSS after the model loaded):
    --n 256 / 512: 1.03 / 2.06 GB, 4.0 MB a prompt at 20 positions; this estimate: 0.98 / 1.9 GB.
    --n 8: 30 MB; this estimate: 31 MB."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()  # cpu: only its element size is read
    n = config.n_prompts
    pos = int(build_prompts(model, dataclasses.replace(config, n_prompts=min(n, 64))).tokens(model).input_ids.shape[1])
    mean_forward = n * pos * size * (s.d_vocab + 4 * s.n_heads * s.d_model)
    rows = min(config.batch_size, n * s.n_layers * s.n_heads)
    sweep = rows * size * (s.d_vocab + 24 * pos * s.d_model)
    return int(max(mean_forward, sweep) + PROMPT_BYTES * n)


PROMPT_BYTES = 400  # an IOI prompt's strings (clean, corrupt, answers), measured with tracemalloc


def build_prompts(model: Model, config: AblationConfig) -> PromptSet:
    if config.task not in TASKS:
        raise InputError(f"unknown task '{config.task}'; choose one of {', '.join(TASKS)}")
    return ioi_prompts(config.n_prompts, model.tokenizer, seed=config.seed)


def mean_head_outputs(model: Model, prompts: list[str]) -> dict[int, torch.Tensor]:
    """Per layer, the mean z over prompts and real tokens: [head d_head]."""
    names = [act_name("z", l) for l in range(model.shape.n_layers)]
    tokens = model.to_tokens(prompts)
    _, cache = run_with_cache(model, tokens, names, return_logits=False)
    mask = tokens[1].bool().to(cache[names[0]].device)  # the cache may sit elsewhere than the model
    return {l: cache[names[l]][mask].mean(dim=0).to(model.device) for l in range(model.shape.n_layers)}


@dataclass(kw_only=True)
class AblationResult(Result):
    """Every head's effect on the task's logit difference when ablated."""

    analysis = "ablation"
    v1_names = {"clean_logit_diff_per_prompt": "clean_logit_diff"}  # format 1 kept the array under the mean's name

    config: AblationConfig
    effect: Float[Tensor, "layer head"]  # mean change in logit difference when the head is ablated
    clean_logit_diff_per_prompt: Float[Tensor, " prompt"]  # IO - S logit difference of the unablated model
    ablated_logit_diff: Float[Tensor, "layer head prompt"]
    clean_logit_diff: float  # mean over the prompts
    clean_logit_diff_std: float
    accuracy: float  # share of prompts where the correct name beats the wrong one
    n_prompts: int
    n_forwards: int
    top_heads: list[HeadEffect]  # the heads with the largest |effect|
    example_prompt: str

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in super().summary().items() if k in ("clean_logit_diff", "accuracy", "top_heads")}
        out["report"] = str(self.path / "report.html") if self.path else None
        return out


def traced_head_sweep(model: Model, tokens: Tokens, source: dict[int, torch.Tensor], masks: torch.Tensor,
                      metric: Any, max_batch: int, progress: bool) -> HeadPatchSweep:
    """The head sweep as plain traces through ``run_with_patches`` (one patched forward per chunk
    of configurations): the path for the nnsight backend's remote mode, where every forward is an
    nnsight trace sent to NDIF (or simulated here), so no weights are read outside a trace."""
    from tqdm.auto import tqdm

    n, n_pos = tokens.input_ids.shape
    idx = torch.arange(n)  # cpu: prompt indices: a CPU index may index a tensor on any device
    last = tokens.last_positions
    logits = run_with_patches(model, tokens, {})
    clean = metric(logits[torch.arange(n, device=logits.device), last].float()[None], idx)[0]
    per_chunk = max(1, max_batch // n)
    out, forwards = [], 1
    for start in tqdm(range(0, masks.shape[0], per_chunk), desc="ablating heads (traces)", disable=not progress, leave=False):
        chunk = masks[start:start + per_chunk]
        c = chunk.shape[0]
        big = Tokens(tokens.input_ids.repeat(c, 1), tokens.attention_mask.repeat(c, 1))
        patches = {}
        for l in chunk.any(dim=(0, 2, 3)).nonzero().flatten().tolist():
            m = chunk[:, l].permute(0, 2, 1)[:, None, :, :, None]  # [c 1 pos head 1]
            src = source[l]

            def patch(z: torch.Tensor, m: torch.Tensor = m, src: torch.Tensor = src, c: int = c) -> torch.Tensor:
                z5 = z.reshape(c, z.shape[0] // c, *z.shape[1:])
                return torch.where(m.to(z.device), src.to(device=z.device, dtype=z.dtype).expand_as(z5[0])[None], z5).reshape(z.shape)

            patches[act_name("z", l)] = patch
        logits = run_with_patches(model, big, patches)
        rows = torch.arange(c * n, device=logits.device)
        last_logits = logits[rows, last.repeat(c)].float().view(c, n, -1)
        out.append(metric(last_logits, idx))
        forwards += 1
    return HeadPatchSweep(metric=torch.cat(out).to(clean.dtype), clean_metric=clean, n_forwards=forwards)


@supports_ray
@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: AblationConfig | None = None, progress: bool = True) -> AblationResult:
    """Ablate every head (one configuration per head, batched) and rank them by effect.

    With ``--ray`` (``workbench.parallel.use``) the head sweep's chunks run on Ray workers,
    with the same numbers. A model split by ``--device-map`` runs the sweep as full hooked
    forwards (the suffix method reads weights outside the forward); the nnsight backend's
    ``--remote`` runs it as traces (``traced_head_sweep``)."""
    config = config or AblationConfig()
    if config.ablation not in ABLATIONS:
        raise InputError(f"unknown ablation '{config.ablation}'; choose mean or zero")
    ps = build_prompts(model, config)
    correct, wrong = ps.answer_ids(model)
    tokens = ps.tokens(model)
    s = model.shape
    if config.ablation == "mean":
        if ps.corrupt is None:  # every built-in task has its corruption; a hand-made set may not
            raise InputError(f"mean ablation averages over corrupt prompts, and {ps.name} has none; use --ablation zero")
        source = mean_head_outputs(model, ps.corrupt)
    else:
        source = {l: torch.zeros(s.n_heads, s.d_head, dtype=model.dtype, device=model.device) for l in range(s.n_layers)}

    def metric(last_logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return logit_diff(last_logits, correct[idx], wrong[idx])

    masks = head_masks_all_positions(s.n_layers, s.n_heads, tokens.input_ids.shape[1])
    par = current()
    stats = MapStats()
    if getattr(model, "remote", False):
        sweep = traced_head_sweep(model, tokens, source, masks, metric, config.batch_size, progress)
        how: dict[str, Any] = {"sweep": "nnsight traces", "remote": model.remote}
    else:
        method = "full" if getattr(model, "device_map", None) else "suffix"
        sweep = run_head_patches_parallel(model, tokens, source, masks, metric, max_batch=config.batch_size,
                                          progress=progress, desc="ablating heads", method=method,
                                          workers=par.workers, ray_address=par.ray, stats=stats)
        how = {"sweep": method}
        if par.ray:
            how |= {"ray": par.ray, "workers": par.workers, "units": stats.units, "reruns": stats.reruns,
                    "dead_workers": stats.dead_workers, "sweep_seconds": round(stats.seconds, 3)}
    clean = sweep.clean_metric
    effect = (sweep.metric - clean[None]).mean(dim=1).view(s.n_layers, s.n_heads)
    # accuracy: the correct name beats the wrong one
    accuracy = float((clean > 0).float().mean())
    order = torch.argsort(effect.abs().flatten(), descending=True)[: config.top_k]
    top = [HeadEffect(int(i // s.n_heads), int(i % s.n_heads), float(effect.flatten()[i])) for i in order]
    result = AblationResult(
        config=config, effect=effect, clean_logit_diff_per_prompt=clean,
        ablated_logit_diff=sweep.metric.view(s.n_layers, s.n_heads, -1),
        clean_logit_diff=float(clean.mean()), clean_logit_diff_std=float(clean.std()) if len(clean) > 1 else 0.0,
        accuracy=accuracy, n_prompts=len(ps), n_forwards=sweep.n_forwards, top_heads=top, example_prompt=ps.prompts[0],
        meta=provenance(model=model.name, seed=config.seed) | {"backend": model.backend, "parallel": how})
    set_intervals(result)
    return result


def set_intervals(result: AblationResult, n_top: int = 3) -> None:
    """The clean logit difference and accuracy over the prompts, and the costliest heads
    chosen on the even-numbered prompts with their cost measured on the odd ones."""
    clean = result.clean_logit_diff_per_prompt.double()
    ablated = result.ablated_logit_diff.double()  # [layer head prompt]
    n_layers, n_heads, n = ablated.shape
    result.set_interval("clean logit difference IO - S", bootstrap(clean.cpu().numpy(), split="all prompts"))
    result.set_interval("clean accuracy", wilson(int((clean > 0).sum()), n, split="all prompts"))
    per_prompt = (ablated - clean).reshape(n_layers * n_heads, n).T.cpu().numpy()  # [prompt head]
    names = [head_name(i // n_heads, i % n_heads) for i in range(n_layers * n_heads)]
    for rank, (name, iv) in enumerate(split_half_top(per_prompt, names, n_top, largest=False), start=1):
        result.set_interval(f"logit difference change when ablated, head ranked #{rank} on the ranking half ({name})", iv)
