"""Intervals and tests for the figures analyses report, so that every headline carries its
sample size and its uncertainty, computed one way everywhere.

``Interval`` is what a Result stores (``Result.set_interval``) and what the report, the app
and ``benchmarks/headlines.py`` print: an estimate, a range, the sample size, the method
and the split the samples came from.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate with its ``level`` interval over ``n`` samples of ``split``."""

    value: float
    low: float
    high: float
    n: int
    method: str
    level: float = LEVEL
    split: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Interval":
        return cls(**{k: d[k] for k in ("value", "low", "high", "n", "method") if k in d},
                   level=d.get("level", LEVEL), split=d.get("split", ""))

    def text(self, fmt: str = ".2f") -> str:
        """``0.62 [0.51, 0.73] (n=64)``: how the README and reports print it."""
        return f"{self.value:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}] (n={self.n})"


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(0 if seed is None else seed)


def bootstrap(samples: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean, *,
              n_boot: int = N_BOOT, level: float = LEVEL, seed: int | None = 0, split: str = "") -> Interval:
    """Percentile bootstrap of ``stat`` over independent samples (rows of a 2-D array for
    a paired statistic): resample with replacement ``n_boot`` times."""
    x = np.asarray(samples, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("bootstrap needs at least one sample")
    value = float(stat(x))
    if n == 1:
        return Interval(value, value, value, 1, "bootstrap", level, split)
    idx = _rng(seed).integers(0, n, size=(n_boot, n))
    stats = np.array([stat(x[i]) for i in idx], dtype=float)
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(stats, [alpha, 1 - alpha])
    return Interval(value, float(lo), float(hi), n, "bootstrap", level, split)


def bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, paired: bool = True,
                   n_boot: int = N_BOOT, level: float = LEVEL, seed: int | None = 0, split: str = "") -> Interval:
    """Interval for mean(a) - mean(b); ``paired`` resamples the same items for both (the
    usual case: one method against another on the same prompts)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if len(xa) != len(xb):
            raise ValueError("paired samples must have the same length")
        iv = bootstrap(xa - xb, n_boot=n_boot, level=level, seed=seed, split=split)
        return Interval(iv.value, iv.low, iv.high, iv.n, "paired bootstrap", level, split)
    rng = _rng(seed)
    ia = rng.integers(0, len(xa), size=(n_boot, len(xa)))
    ib = rng.integers(0, len(xb), size=(n_boot, len(xb)))
    stats = xa[ia].mean(1) - xb[ib].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(xa.mean() - xb.mean()), float(lo), float(hi), min(len(xa), len(xb)), "bootstrap", level,
                    split)


def wilson(successes: int, n: int, *, level: float = LEVEL, split: str = "") -> Interval:
    """Wilson score interval for a proportion (exact enough at small n, never outside [0, 1])."""
    if n <= 0:
        raise ValueError("a proportion needs n > 0")
    z = _z(level)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, "wilson", level, split)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, level: float = LEVEL,
             split: str = "") -> Interval:
    """Spearman's rho with the Fisher-z interval (Bonett-Wright standard error)."""
    from scipy.stats import spearmanr

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xs)
    rho = float(spearmanr(xs, ys).statistic) if n > 1 else float("nan")
    if n < 4 or not math.isfinite(rho):
        return Interval(rho, float("nan"), float("nan"), n, "fisher-z", level, split)
    r = max(min(rho, 0.999999), -0.999999)
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    z, zc = math.atanh(r), _z(level)
    # atanh is infinite at |rho| = 1 (identical rankings): the interval is taken at the clipped r
    # and stretched to hold rho itself, so it never sits beside its own estimate
    low, high = min(math.tanh(z - zc * se), rho), max(math.tanh(z + zc * se), rho)
    return Interval(rho, low, high, n, "fisher-z", level, split)


def permutation_p(observed: float, null: Sequence[float] | np.ndarray, *, greater: bool = True) -> float:
    """One-sided permutation p-value with the +1 correction (never exactly zero)."""
    draws = np.asarray(null, dtype=float)
    hits = (draws >= observed).sum() if greater else (draws <= observed).sum()
    return float((hits + 1) / (len(draws) + 1))


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - level) / 2))


def split_half_top(per_item: Sequence[Sequence[float]] | np.ndarray, names: Sequence[str], n_top: int = 3, *,
                   largest: bool = True, seed: int | None = 0) -> list[tuple[str, Interval]]:
    """Choose on one half, measure on the other: rank units (columns of ``per_item``, one
    row per item) by their mean over the even-numbered items and give the top ``n_top``
    their mean over the odd-numbered items, with bootstrap intervals (split "held-out half").
    The top of a ranking measured on the data that ranked it is biased upward; this is not."""
    x = np.asarray(per_item, dtype=float)
    if x.shape[0] < 2:
        return []
    ranking = x[0::2].mean(axis=0)
    order = np.argsort(-ranking if largest else ranking, kind="stable")[:n_top]
    return [(names[i], bootstrap(x[1::2, i], seed=seed, split="held-out half")) for i in order]
