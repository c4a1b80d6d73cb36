"""In-context linear regression prompts, as in He, Pan, Chen, Yang (2025) and the
authors' code (Y-Agent/ICL_linear): x_i ~ N(0, Sigma), beta ~ N(0, I_d / d) drawn per
prompt, y_i = beta . x_i + eps_i with eps_i ~ N(0, noise_var); the query is (x_q, 0)
and its target y_q = beta . x_q + eps_q. Each prompt holds n context pairs.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

import torch

from workbench.errors import InputError

Covariance = Literal["isotropic", "ar1"]
"""The covariance of the covariates x.
isotropic: the identity;
ar1: Sigma_ij = rho^|i-j| (anisotropic, where debiased GD needs a preconditioner)."""
COVARIANCES: tuple[str, ...] = typing.get_args(Covariance)


@dataclass
class Prompts:
    """A batch of regression prompts.

    x: [batch n d] context covariates; y: [batch n] context responses;
    xq: [batch d] query covariate; yq: [batch] query target; beta: [batch d].
    """

    x: torch.Tensor
    y: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor
    beta: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def covariance_matrix(d: int, kind: str = "isotropic", rho: float = 0.5) -> torch.Tensor:
    """The covariate covariance [d d]: the identity, or ``ar1``: Sigma_ij = rho^|i-j|
    (the anisotropic case of the authors' code)."""
    if kind not in COVARIANCES:
        raise InputError(f"unknown covariance '{kind}'; choose one of {', '.join(COVARIANCES)}")
    if kind == "isotropic":
        return torch.eye(d)  # cpu: the in-context regression study runs on the CPU (its own small model)
    if not -1.0 < rho < 1.0:
        raise InputError(f"rho={rho} makes the ar1 covariance singular; choose -1 < rho < 1")
    # cpu: the in-context regression study runs on the CPU (its own small model)
    idx = torch.arange(d, dtype=torch.float64)
    return (rho ** (idx[:, None] - idx[None, :]).abs()).float()


# cpu: the in-context regression study runs on the CPU (its own small model)
def sample_prompts(n_prompts: int, n: int, d: int, noise_var: float = 0.1, covariance: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> Prompts:
    """Draw ``n_prompts`` fresh prompts with ``n`` context pairs each (deterministic for a seeded generator)."""
    if n_prompts < 1 or n < 1 or d < 1:
        raise InputError(f"prompts need n_prompts, n and d of at least 1 (got {n_prompts}, {n}, {d})")
    x = torch.randn(n_prompts, n, d, generator=generator)
    xq = torch.randn(n_prompts, d, generator=generator)
    if covariance is not None:
        chol = torch.linalg.cholesky(covariance.double()).float()
        x = x @ chol.T
        xq = xq @ chol.T
    beta = torch.randn(n_prompts, d, generator=generator) / math.sqrt(d)
    sd = math.sqrt(noise_var)
    y = torch.einsum("bnd,bd->bn", x, beta) + sd * torch.randn(n_prompts, n, generator=generator)
    yq = (xq * beta).sum(-1) + sd * torch.randn(n_prompts, generator=generator)
    return Prompts(x=x, y=y, xq=xq, yq=yq, beta=beta)


def embed(prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens: context z_i = (x_i, y_i) -> [batch n d+1]; query z_q = (x_q, 0) -> [batch d+1]."""
    z = torch.cat([prompts.x, prompts.y[..., None]], dim=-1)
    zq = torch.cat([prompts.xq, torch.zeros_like(prompts.xq[:, :1])], dim=-1)
    return z, zq
