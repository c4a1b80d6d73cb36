"""Closed-form in-context predictors that the trained attention is compared with.

- one-step GD from beta=0: y_hat = eta * x_q^T (1/n) sum_i x_i y_i;
- debiased GD (He et al.): y_hat = eta * x_q^T (1/n) sum_i (x_i - xbar) y_i, what two heads
  with opposite (omega, mu) implement to first order: the mean-of-y term a single softmax
  head cannot avoid cancels;
- ridge (Bayes-optimal posterior mean for beta ~ N(0, I/d), noise variance s2):
  beta_hat = (X^T X + s2 d I)^-1 X^T y, for any covariate covariance.
The GD step sizes are fitted by least squares on fresh prompts (``fit_step``).
"""
from __future__ import annotations

import torch

from analyses.icl.task import Prompts


def gd_direction(p: Prompts, precond: torch.Tensor | None = None) -> torch.Tensor:
    """x_q^T P (1/n) sum_i x_i y_i: [batch] (P = I unless ``precond`` [d d])."""
    g = (p.y[..., None] * p.x).mean(1)
    if precond is not None:
        g = g @ precond.T
    return (g * p.xq).sum(-1)


def debiased_gd_direction(p: Prompts, precond: torch.Tensor | None = None) -> torch.Tensor:
    """x_q^T P (1/n) sum_i (x_i - xbar) y_i: [batch]."""
    xc = p.x - p.x.mean(1, keepdim=True)
    g = (p.y[..., None] * xc).mean(1)
    if precond is not None:
        g = g @ precond.T
    return (g * p.xq).sum(-1)


def fit_step(direction: torch.Tensor, target: torch.Tensor) -> float:
    """The least-squares step size eta = <g, y> / <g, g> for predictions eta * g."""
    return float((direction * target).sum() / (direction * direction).sum().clamp_min(1e-30))


def ridge_predict(p: Prompts, lam: float) -> torch.Tensor:
    """x_q^T (X^T X + lam I)^-1 X^T y: [batch]."""
    d = p.x.shape[-1]
    gram = p.x.transpose(1, 2) @ p.x + lam * torch.eye(d, dtype=p.x.dtype)
    rhs = p.x.transpose(1, 2) @ p.y[..., None]
    beta_hat = torch.linalg.solve(gram.double(), rhs.double()).squeeze(-1).to(p.x.dtype)
    return (beta_hat * p.xq).sum(-1)


def bayes_lambda(d: int, noise_var: float) -> float:
    """Ridge penalty of the posterior mean under beta ~ N(0, I/d): noise_var * d."""
    return noise_var * d


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred - target) ** 2).mean())
