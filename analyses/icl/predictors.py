"""Closed-form in-context predictors that the trained attention is compared with.

- one-step GD from beta=0: y_hat = eta * x_q^T (1/n) sum_i x_i y_i;
- debiased GD (He et al.): y_hat = eta * x_q^T (1/n) sum_i (x_i - xbar) y_i, what two heads
  with opposite (omega, mu) implement to first order: the mean-of-y term a single softmax
  head cannot avoid cancels;
- ridge (Bayes-optimal posterior mean for beta ~ N(0, I/d), noise variance s2):
  beta_hat = (X^T X + s2 d I)^-1 X^T y, for any covariate covariance.
The GD step sizes are derived in closed form (``optimal_step``): the step that minimises the
expected squared error over the task distribution at the training context length n, from Gaussian
moment identities; nothing is fitted on prompts. ``fit_step`` (least squares on prompts) is kept
for the tests, which check the closed form against it on a large Monte-Carlo sample.
"""
from __future__ import annotations

import torch

from workbench.analyses.icl.task import Prompts


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


def optimal_step(n: int, covariance: torch.Tensor, noise_var: float, debiased: bool = False,
                 precond: torch.Tensor | None = None) -> float:
    """The step size eta minimising E[(eta g - y_q)^2] for g the (debiased) GD direction with
    preconditioner P (default I), over x ~ N(0, Sigma), beta ~ N(0, I/d), noise variance s2 and
    n context pairs. With B = P^T Sigma P and c = n + 1 (GD) or n (debiased GD):

        eta = n tr(Sigma P^T Sigma) / (c tr(Sigma B Sigma) + tr(B Sigma) tr(Sigma) + s2 d tr(B Sigma)).

    Derivation: E[g y_q] = E[h^T P^T Sigma beta] and E[g^2] = E[h^T B h] with h = (1/n) sum_i
    x_i y_i, whose moments follow from E[x x^T A x x^T] = 2 Sigma A Sigma + tr(A Sigma) Sigma; for
    the debiased direction h = (1/n)(S beta + sum_i (x_i - xbar) eps_i) with the scatter matrix
    S ~ Wishart(Sigma, n - 1), E[S A S] = m(m+1) Sigma A Sigma + m tr(A Sigma) Sigma. Isotropic:
    eta_GD = n / (n + 1 + d + s2 d), eta_debiased = n / (n + d + s2 d)."""
    cov = covariance.double()
    d = cov.shape[0]
    # cpu: the in-context regression study runs on the CPU (its own small model)
    P = torch.eye(d, dtype=torch.float64) if precond is None else precond.double()
    B = P.T @ cov @ P
    c = n if debiased else n + 1
    num = n * torch.trace(cov @ P.T @ cov)
    den = c * torch.trace(cov @ B @ cov) + torch.trace(B @ cov) * torch.trace(cov) + noise_var * d * torch.trace(B @ cov)
    return float(num / den)


def ridge_predict(p: Prompts, lam: float) -> torch.Tensor:
    """x_q^T (X^T X + lam I)^-1 X^T y: [batch]."""
    d = p.x.shape[-1]
    gram = p.x.transpose(1, 2) @ p.x + lam * torch.eye(d, dtype=p.x.dtype, device=p.x.device)
    rhs = p.x.transpose(1, 2) @ p.y[..., None]
    beta_hat = torch.linalg.solve(gram.double(), rhs.double()).squeeze(-1).to(p.x.dtype)
    return (beta_hat * p.xq).sum(-1)


def bayes_lambda(d: int, noise_var: float) -> float:
    """Ridge penalty of the posterior mean under beta ~ N(0, I/d): noise_var * d."""
    return noise_var * d


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred - target) ** 2).mean())
