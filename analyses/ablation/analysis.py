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
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from workbench.cache import run_with_cache
from workbench.datasets import PromptSet, ioi_prompts
from workbench.errors import InputError
from workbench.patching import head_masks_all_positions, logit_diff, run_head_patches
from workbench.results import Result, provenance, register_result
from workbench.spec import option

TASKS = ("ioi",)


@dataclass
class AblationConfig:
    task: str = option("ioi", help="the task whose logit difference is measured", choices=TASKS)
    n_prompts: int = option(64, flag="--n", help="number of prompts", min=1, max=100_000)
    seed: int = 0
    ablation: str = option("mean", help="mean: each head's mean over the corrupt (ABC) prompts; zero: z = 0",
                           choices=("mean", "zero"))
    batch_size: int = option(512, help="patched runs per forward pass", min=1)
    top_k: int = option(10, help="heads listed in the summary", min=1)
    include: tuple[str, ...] = option((), help="saved runs whose sections join the report "
                                      "(default: the latest run of every other analysis on this model)")
    renamed: ClassVar[dict[str, str]] = {"n": "n_prompts", "max_batch": "batch_size"}

    def validate(self) -> None:
        if self.batch_size < self.n_prompts:  # one configuration runs every prompt in one batch
            raise InputError(f"--batch-size {self.batch_size} cannot hold one head's run over --n {self.n_prompts} "
                             f"prompts; use --batch-size {self.n_prompts} or more, or a smaller --n")


def estimate_bytes(config: AblationConfig, model: Any) -> int:
    """The spec's memory estimate before a run: the mean over the corrupt prompts is one forward
    over all ``--n`` of them, whose logits (prompts x positions x vocab) dominate; the patch
    sweep keeps the last position's logits of ``--batch-size`` rows.

    Calibration (tiny-llama, CPU, float32, ru_maxrss over the RSS after the model loaded):
    --n 256 / 512: 1.03 / 2.06 GB, 4.0 MB a prompt at 20 positions; this estimate: 0.98 / 1.9 GB.
    --n 8: 30 MB; this estimate: 31 MB."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()
    n = config.n_prompts
    pos = int(build_prompts(model, dataclasses.replace(config, n_prompts=min(n, 64))).tokens(model).input_ids.shape[1])
    mean_forward = n * pos * size * (s.d_vocab + 4 * s.n_heads * s.d_model)
    rows = min(config.batch_size, n * s.n_layers * s.n_heads)
    sweep = rows * size * (s.d_vocab + 24 * pos * s.d_model)
    return int(max(mean_forward, sweep) + PROMPT_BYTES * n)


PROMPT_BYTES = 400  # an IOI prompt's strings (clean, corrupt, answers), measured with tracemalloc


def build_prompts(model: Any, config: AblationConfig) -> PromptSet:
    if config.task not in TASKS:
        raise InputError(f"unknown task '{config.task}'; choose one of {', '.join(TASKS)}")
    return ioi_prompts(config.n_prompts, model.tokenizer, seed=config.seed)


def mean_head_outputs(model: Any, prompts: list[str]) -> dict[int, torch.Tensor]:
    """Per layer, the mean z over prompts and real tokens: [head d_head]."""
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.shape.n_layers)]
    tokens = model.to_tokens(prompts)
    _, cache = run_with_cache(model, tokens, names, return_logits=False)
    mask = tokens[1].bool()
    return {l: cache[names[l]][mask].mean(dim=0) for l in range(model.shape.n_layers)}


@register_result
@dataclass
class AblationResult(Result):
    analysis = "ablation"
    config_cls = AblationConfig

    @property
    def effect(self) -> torch.Tensor:
        """[layer head] mean change in logit difference when the head is ablated."""
        return self.arrays["effect"]

    @property
    def clean_logit_diff(self) -> float:
        """Mean logit difference (IO - S) of the unablated model."""
        return float(self.metrics["clean_logit_diff"])

    @property
    def accuracy(self) -> float:
        """Share of prompts where the correct name beats the wrong one."""
        return float(self.metrics["accuracy"])

    @property
    def n_prompts(self) -> int:
        return int(self.metrics["n_prompts"])

    @property
    def top_heads(self) -> list[dict[str, Any]]:
        """The heads with the largest |effect|: ``{"layer", "head", "effect"}`` each."""
        return list(self.metrics["top_heads"])

    def summary(self) -> dict[str, Any]:
        out = {k: self.metrics[k] for k in ("clean_logit_diff", "accuracy", "top_heads")}
        out["report"] = str(self.path / "report.html") if self.path else None
        return out

    def report_sections(self) -> list:
        from .figures import ablation_sections

        return ablation_sections(self)


def run(model: Any, config: AblationConfig | None = None, progress: bool = True) -> AblationResult:
    """Ablate every head (one configuration per head, batched) and rank them by effect."""
    config = config or AblationConfig()
    if config.ablation not in ("mean", "zero"):
        raise InputError(f"unknown ablation '{config.ablation}'; choose mean or zero")
    ps = build_prompts(model, config)
    correct, wrong = ps.answer_ids(model)
    tokens = ps.tokens(model)
    s = model.shape
    if config.ablation == "mean":
        source = mean_head_outputs(model, ps.corrupt)
    else:
        source = {l: torch.zeros(s.n_heads, s.d_head, dtype=model.dtype, device=model.device) for l in range(s.n_layers)}

    def metric(last_logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return logit_diff(last_logits, correct[idx], wrong[idx])

    masks = head_masks_all_positions(s.n_layers, s.n_heads, tokens.input_ids.shape[1])
    sweep = run_head_patches(model, tokens, source, masks, metric, max_batch=config.batch_size,
                             progress=progress, desc="ablating heads")
    clean = sweep.clean_metric
    effect = (sweep.metric - clean[None]).mean(dim=1).view(s.n_layers, s.n_heads)
    # accuracy: the correct name beats the wrong one
    accuracy = float((clean > 0).float().mean())
    order = torch.argsort(effect.abs().flatten(), descending=True)[: config.top_k]
    top = [{"layer": int(i // s.n_heads), "head": int(i % s.n_heads), "effect": float(effect.flatten()[i])} for i in order]
    metrics = {
        "clean_logit_diff": float(clean.mean()),
        "clean_logit_diff_std": float(clean.std()) if len(clean) > 1 else 0.0,
        "accuracy": accuracy,
        "n_prompts": len(ps),
        "n_forwards": sweep.n_forwards,
        "top_heads": top,
        "example_prompt": ps.prompts[0],
    }
    arrays = {"effect": effect, "clean_logit_diff": clean, "ablated_logit_diff": sweep.metric.view(s.n_layers, s.n_heads, -1)}
    return AblationResult(config=config, metrics=metrics, arrays=arrays,
                          meta=provenance(model=model.name, seed=config.seed) | {"backend": model.backend})
