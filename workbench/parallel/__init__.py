"""Sweeps beyond one process: independent units of a sweep spread over Ray workers
(``map_units``), the batched head-patching sweep on Ray (``run_head_patches_parallel``, or its
phases: ``plan_patch_sweep``, ``map_units``, ``PatchPlan.gather``), and the run-wide setting
the CLI's ``--ray`` / ``--workers`` set (``use``, ``current``).
Ray is an optional extra: ``pip install "workbench[ray]"``."""
from .patching import PatchPlan, PatchWork, plan_patch_sweep, plan_units, run_head_patches_parallel, worker_model_args
from .pool import MapStats, Mapped, map_units
from .ray_workers import INSTALL_RAY, UnitWorker, ray_module
from .settings import Parallel, current, runs_on_ray, supports_ray, use

__all__ = ["map_units", "Mapped", "MapStats", "UnitWorker", "ray_module", "INSTALL_RAY",
           "run_head_patches_parallel", "plan_units", "plan_patch_sweep", "PatchPlan", "PatchWork",
           "worker_model_args", "Parallel", "current", "use", "supports_ray", "runs_on_ray"]
