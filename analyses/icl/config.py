"""The in-context regression analysis's settings, their checks, its memory estimate, and the
training specs a run asks for (the main model, the baselines, the seed table)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from workbench.errors import InputError
from workbench.spec import option

from workbench.analyses.icl.task import COVARIANCES, Covariance
from workbench.analyses.icl.training import TrainSpec

PREDICTORS = ("model", "single_head", "linear", "gd", "gd_debiased", "ridge")
MAX_CONTEXT_FACTOR = 16  # default cap on evaluated context length: 16 x the training length
ZERO_SUM_THRESHOLD = 0.1  # a seed reaches the opposite-sign pattern when |sum mu| / sum |mu| < this
TEST_SPLIT = "test"


@dataclass
class ICLConfig:
    d: int = option(5, help="covariate dimension", min=1)
    n: int = option(40, help="context pairs per training prompt", min=1)
    heads: int = option(4, help="attention heads H", min=1)
    steps: int = option(3000, help="Adam steps", min=1)
    lr: float = option(3e-3, help="Adam learning rate")
    batch_size: int = option(256, help="training prompts per Adam step", aliases=("--batch",), min=1)
    noise_var: float = option(0.1, help="noise variance of y", min=0)
    covariance: Covariance = option("isotropic", help="covariance of x: isotropic, or ar1 (Sigma_ij = rho^|i-j|)",
                             choices=COVARIANCES)
    rho: float = option(0.5, help="ar1 correlation")
    seed: int = 0  # initialisation and data; set by the common --seed option
    checkpoint_every: int = option(100, help="Adam steps between KQ/OV checkpoints", min=1)
    baselines: bool = option(True, help="also train single-head and linear attention with the same budget")
    eval_prompts: int = option(4000, help="fresh prompts per evaluated context length", min=1)
    eval_lengths: tuple[int, ...] = option((), flag="--lengths",
                                           help="context lengths to evaluate (default n/4,n/2,n,2n,4n)")
    max_context: int = option(0, help="longest context evaluated (0: 16 n; a memory cap, the model has no positions)",
                              min=0)
    n_seeds: int = option(5, help="seeds of the seed table per head count (seed .. seed+n_seeds-1; 0: no table)",
                          min=0, max=1000)
    seed_heads: tuple[int, ...] = option((2, 4), help="head counts of the seed table")
    workers: int = option(2, help="processes training the seed table side by side (one thread each)", min=1, max=64)
    renamed: ClassVar[dict[str, str]] = {"batch": "batch_size"}

    def validate(self) -> "ICLConfig":
        """One-line errors for settings that cannot run; fills the length defaults."""
        for name in ("d", "n", "heads", "steps", "batch_size", "eval_prompts", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                flag = {"heads": "--heads", "d": "--d", "n": "--n", "steps": "--steps"}.get(name, "--" + name.replace("_", "-"))
                raise InputError(f"{name} must be a positive integer (got {value!r}); pass {flag} 1 or more")
        if not self.lr > 0:
            raise InputError(f"lr must be positive (got {self.lr}); try --lr 3e-3")
        if self.noise_var < 0:
            raise InputError(f"noise_var must be >= 0 (got {self.noise_var})")
        if self.covariance not in COVARIANCES:
            raise InputError(f"unknown covariance '{self.covariance}'; choose one of {', '.join(COVARIANCES)}")
        if self.covariance == "ar1" and not -1 < self.rho < 1:
            raise InputError(f"rho={self.rho} makes the ar1 covariance singular; choose -1 < --rho < 1")
        max_context = self.max_context or MAX_CONTEXT_FACTOR * self.n
        lengths = tuple(int(v) for v in self.eval_lengths) or tuple(
            sorted({max(1, self.n // 4), max(1, self.n // 2), self.n, 2 * self.n, 4 * self.n}))
        bad = [v for v in lengths if v < 1]
        if bad:
            raise InputError(f"context lengths must be at least 1 (got {bad})")
        too_long = [v for v in lengths if v > max_context]
        if too_long:
            raise InputError(
                f"context length {max(too_long)} exceeds the supported maximum {max_context} "
                f"({MAX_CONTEXT_FACTOR} x the training length {self.n} unless --max-context is set); "
                "ask for shorter --lengths or raise --max-context")
        if self.n not in lengths:
            lengths = tuple(sorted(set(lengths) | {self.n}))
        bad_heads = [h for h in self.seed_heads if not isinstance(h, int) or h < 1]
        if bad_heads:
            raise InputError(f"--seed-heads must be positive head counts (got {bad_heads}); e.g. --seed-heads 2,4")
        self.eval_lengths, self.max_context = lengths, max_context
        return self


def estimate_bytes(config: ICLConfig, model: Any = None) -> int:
    """The spec's memory estimate before a run: the largest batch of prompts the run holds at
    once, times its context length, times the float32 entries each context token costs (its
    (x, y) token, every head's key and value and their products: about 3 H + 3 per entry).
    Evaluation draws ``eval_prompts`` prompts at each length up to the longest; training draws
    ``batch_size`` prompts of ``n`` pairs and keeps them for the backward pass (twice).

    Calibration (CPU, ru_maxrss over the RSS before the run; d=5, H=4, 30 steps, 4000 evaluation
    prompts): --n 40 / 160 (longest evaluated context 160 / 640): 0.39 / 1.08 GB, 15 bytes per
    4-byte entry (eval_prompts x length x (d+1)) between the two, over about 0.15 GB fixed."""
    lengths = tuple(int(v) for v in config.eval_lengths) or (4 * config.n,)
    longest = max(max(lengths), config.n)
    per_entry = 4 * (config.d + 1) * (3 * config.heads + 3)
    return int(150 * 2**20 + per_entry * max(config.eval_prompts * longest, 2 * config.batch_size * config.n))


def validate(config: ICLConfig) -> ICLConfig:
    """``config.validate()``: one-line errors for settings that cannot run; fills the length defaults."""
    return config.validate()


def train_spec(config: ICLConfig, heads: int, attention: str = "softmax") -> TrainSpec:
    return TrainSpec(d=config.d, n=config.n, heads=heads, attention=attention, steps=config.steps, lr=config.lr,
                     batch=config.batch_size, noise_var=config.noise_var, covariance=config.covariance, rho=config.rho,
                     seed=config.seed, checkpoint_every=config.checkpoint_every)


def seed_specs(config: ICLConfig) -> list[TrainSpec]:
    """The seed table's trainings: ``n_seeds`` seeds at each head count of ``seed_heads``."""
    return [replace(train_spec(config, h), seed=config.seed + k) for h in config.seed_heads for k in range(config.n_seeds)]
