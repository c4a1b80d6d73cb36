"""``workbench icl``: train one-layer multi-head softmax attention on in-context linear
regression, read its KQ/OV patterns and compare predictors (He et al. 2025)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import JSON_OPT, OUT_OPT, finish, number_list, status


def register(app: typer.Typer) -> None:
    @app.command()
    def icl(
        heads: int = typer.Option(4, "--heads", help="attention heads H"),
        d: int = typer.Option(5, "--d", help="covariate dimension"),
        n: int = typer.Option(40, "--n", help="context pairs per training prompt"),
        steps: int = typer.Option(3000, "--steps", help="Adam steps"),
        seed: int = typer.Option(0, "--seed", help="seed of initialisation and data"),
        lr: float = typer.Option(3e-3, "--lr", help="Adam learning rate"),
        covariance: str = typer.Option("isotropic", "--covariance", help="isotropic | ar1 (Sigma_ij = rho^|i-j|)"),
        rho: float = typer.Option(0.5, "--rho", help="ar1 correlation"),
        lengths: Optional[str] = typer.Option(None, "--lengths", help="comma-separated context lengths to evaluate (default n/4,n/2,n,2n,4n)"),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="also train single-head and linear attention"),
        out: Optional[Path] = OUT_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Train multi-head softmax attention on in-context regression; KQ/OV patterns and predictor errors."""
        from analyses.icl_regression import ICLConfig, run, validate

        eval_lengths: tuple = ()
        if lengths:
            eval_lengths = number_list(lengths, "--lengths", int)
        config = ICLConfig(d=d, n=n, heads=heads, steps=steps, seed=seed, lr=lr, covariance=covariance, rho=rho,
                           eval_lengths=eval_lengths, baselines=baselines)
        validate(config)  # bad sizes fail here, in one line, before any training
        status(f"icl: d={d} n={n} H={heads} steps={steps} seed={seed} (cached models are reused)")
        result = run(None, config, progress=True)
        finish(result, out, as_json)
