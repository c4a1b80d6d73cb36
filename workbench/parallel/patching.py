"""The batched engine's head-patching sweep spread over Ray workers.

The units are the engine's own chunks (``workbench.patching.suffix.plan_chunks`` for the
suffix method, runs of ``max_batch // N`` configurations for the full one), grouped a few
chunks to a unit; each worker loads the model once, makes the clean run once, and runs its
units through ``workbench.patching.run_head_patches`` on exactly the configurations of those
chunks, so every forward pass is the one the one-process sweep makes and the numbers are the
same. The metric per configuration is written back in configuration order."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..cache import Tokens
from ..errors import InputError
from ..patching import HeadPatchSweep, run_head_patches
from ..patching.engine import check_sweep
from ..patching.suffix import plan_chunks
from .pool import MapStats, map_units


def worker_model_args(model: Any) -> dict[str, Any]:
    """How a worker loads the same model (``load_model`` keywords), or one line saying it cannot."""
    args = getattr(model, "load_args", None)
    if not args:
        raise InputError(f"model '{getattr(model, 'name', model)}' was not loaded by name (load_model), so Ray workers "
                         "cannot load it; load it with workbench.models.load_model or run without --ray")
    return dict(args)


_MODELS: dict[str, Any] = {}


def cached_model(load_args: dict[str, Any]) -> Any:
    """``load_model(**load_args)``, once per worker process (its actor serves later sweeps too)."""
    import json

    from ..models import load_model

    key = json.dumps(load_args, sort_keys=True, default=str)
    if key not in _MODELS:
        _MODELS.clear()  # one model a worker
        _MODELS[key] = load_model(**load_args)
    return _MODELS[key]


@dataclass
class PatchWork:
    """The worker's side: load the model once, make the clean run once, then run chunks."""

    load_args: dict[str, Any]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    source_z: dict[int, torch.Tensor]
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    max_batch: int
    method: str
    kernel: str | None

    def __call__(self) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor, int]]:
        from ..patching.suffix import clean_run

        model = cached_model(self.load_args)
        dev = model.device
        tokens = Tokens(self.input_ids.to(dev), self.attention_mask.to(dev))
        source = {l: v.to(dev) for l, v in self.source_z.items()}
        clean = clean_run(model, tokens) if self.method == "suffix" else None

        def run(unit: tuple[list[int], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
            _, masks = unit
            sweep = run_head_patches(model, tokens, source, masks, self.metric, max_batch=self.max_batch,
                                     method=self.method, kernel=self.kernel, clean=clean)
            return sweep.metric.cpu(), sweep.clean_metric.cpu(), sweep.n_forwards

        return run


def plan_units(masks: torch.Tensor, n_prompts: int, max_batch: int, method: str, n_units: int) -> list[list[int]]:
    """Configuration indices per unit: whole engine chunks, consecutive, about ``n_units`` units."""
    per_chunk = max(1, max_batch // n_prompts)
    if method == "suffix":
        chunks = [cfg for cfg, _, _ in plan_chunks(masks, per_chunk)]
    else:
        chunks = [list(range(s, min(s + per_chunk, masks.shape[0]))) for s in range(0, masks.shape[0], per_chunk)]
    step = max(1, math.ceil(len(chunks) / max(1, n_units)))
    return [sum(chunks[i:i + step], []) for i in range(0, len(chunks), step)]


@dataclass
class PatchPlan:
    """A head-patching sweep cut into units for ``map_units``, and how their results go back
    together: ``work`` is the workers' factory, ``units`` what each unit gets (its
    configuration indices ``groups[u]`` and their masks)."""

    groups: list[list[int]]
    units: list[tuple[list[int], torch.Tensor]]
    work: PatchWork
    num_gpus: float  # per worker
    n_configs: int

    def gather(self, values: list[tuple[torch.Tensor, torch.Tensor, int]]) -> HeadPatchSweep:
        """The sweep from the units' results, in unit order (deterministic): each unit's metric
        written back at its configurations, its clean run counted once."""
        clean = values[0][1]
        out = clean[None].repeat(self.n_configs, 1)
        n_forwards = 1
        for idx, (metric_u, _, nf) in zip(self.groups, values):  # unit order: deterministic
            out[torch.tensor(idx, device=out.device)] = metric_u.to(out.dtype)
            n_forwards += nf - 1
        return HeadPatchSweep(metric=out, clean_metric=clean, n_forwards=n_forwards)


def plan_patch_sweep(model: Any, tokens: Tokens, source_z: dict[int, torch.Tensor], masks: torch.Tensor,
                     metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], max_batch: int, method: str,
                     kernel: str | None, workers: int, ray_address: str, units_per_worker: int = 4) -> PatchPlan:
    """The units of ``run_head_patches_parallel``'s sweep (about ``workers * units_per_worker``
    of them, whole engine chunks) and the work that runs them; the sweep's arguments are
    checked here, before any worker starts."""
    n, _ = check_sweep(model, tokens, masks, max_batch, method)
    load_args = worker_model_args(model)
    groups = plan_units(masks, n, max_batch, method, workers * units_per_worker)
    units = [(idx, masks[idx]) for idx in groups]
    work = PatchWork(load_args, tokens.input_ids.cpu(), tokens.attention_mask.cpu(),
                     {l: v.detach().cpu() for l, v in source_z.items()}, metric, max_batch, method, kernel)
    gpus = 0.0
    if torch.device(model.device).type == "cuda":
        gpus = 1.0 / workers if ray_address in ("auto", "local") else 1.0
    return PatchPlan(groups, units, work, gpus, masks.shape[0])


def run_head_patches_parallel(
    model: Any,
    tokens: Tokens,
    source_z: dict[int, torch.Tensor],
    masks: torch.Tensor,
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_batch: int = 512,
    progress: bool = False,
    desc: str = "patching",
    method: str = "suffix",
    kernel: str | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    units_per_worker: int = 4,
    stats: MapStats | None = None,
) -> HeadPatchSweep:
    """``workbench.patching.run_head_patches`` with its chunks spread over ``workers`` Ray
    workers (``ray_address`` "auto" or a cluster address; None runs the engine here, unchanged).
    Same arguments and the same ``HeadPatchSweep``, equal to the one-process sweep's.
    ``metric`` must be picklable (a closure over tensors is). ``stats``, when given, is
    filled with what happened (units, reruns, dead workers, seconds)."""
    if not ray_address:
        return run_head_patches(model, tokens, source_z, masks, metric, max_batch=max_batch, progress=progress,
                                desc=desc, method=method, kernel=kernel)
    plan = plan_patch_sweep(model, tokens, source_z, masks, metric, max_batch, method, kernel, workers, ray_address,
                            units_per_worker)
    mapped = map_units(plan.work, plan.units, workers=workers, ray_address=ray_address, progress=progress, desc=desc,
                       num_gpus=plan.num_gpus)
    if stats is not None:
        stats.__dict__.update(mapped.stats.__dict__)
    if not mapped.values:  # nothing patched: every configuration keeps the clean metric
        return run_head_patches(model, tokens, source_z, masks, metric, max_batch=max_batch, method=method, kernel=kernel)
    return plan.gather(mapped.values)
