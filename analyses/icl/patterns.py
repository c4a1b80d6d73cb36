"""Pattern scores of trained KQ and OV weights (He et al.'s read-out), each a number:

KQ (per head, x-block = KQ[:d, :d]):
- ``kq_offdiag_share``: off-diagonal energy / total energy of the x-block (0 for omega I);
- ``kq_diag_cv``: std / |mean| of the x-block diagonal (0 when homogeneous);
- ``kq_y_share``: energy of the entries that touch y (query-x rows, key-y column) / energy of the
  query-x rows (the query's y slot is 0, so KQ's last row never acts);
- ``omega``: mean of the x-block diagonal / sqrt(d+1), the softmax's inverse temperature
  on x_i . x_q.
OV (per head, vector of length d+1):
- ``ov_offlast_share``: energy outside the last (y) entry / total energy;
- ``mu``: the last entry; ``zero_sum_ratio`` = |sum mu| / sum |mu| (0 when zero-sum).
A head's scores are meaningful only if it writes something; ``weighted`` aggregates weight
each head by |mu_h|.
"""
from __future__ import annotations

import math

import torch


def _x_block(kq: torch.Tensor) -> torch.Tensor:
    d = kq.shape[-1] - 1
    return kq[..., :d, :d]


def kq_offdiag_share(kq: torch.Tensor) -> torch.Tensor:
    """[... d+1 d+1] -> [...]: off-diagonal share of the x-block's squared entries."""
    x = _x_block(kq)
    total = (x**2).sum((-1, -2))
    diag = (torch.diagonal(x, dim1=-2, dim2=-1) ** 2).sum(-1)
    return (total - diag) / total.clamp_min(1e-30)


def kq_diag_cv(kq: torch.Tensor) -> torch.Tensor:
    """[... d+1 d+1] -> [...]: coefficient of variation of the x-block diagonal (population std)."""
    diag = torch.diagonal(_x_block(kq), dim1=-2, dim2=-1)
    return diag.std(-1, unbiased=False) / diag.mean(-1).abs().clamp_min(1e-30)


def kq_y_share(kq: torch.Tensor) -> torch.Tensor:
    """[... d+1 d+1] -> [...]: share of the effective KQ energy in the entries that touch y.

    The query token's y slot is always 0, so the last row of KQ never reaches the logits (it
    keeps its initial value); the effective entries are the rows of x_q, KQ[:d, :]. Of these,
    the last column KQ[:d, d] (query x against key y) touches y."""
    d = kq.shape[-1] - 1
    rows = kq[..., :d, :]
    total = (rows**2).sum((-1, -2))
    return (rows[..., d] ** 2).sum(-1) / total.clamp_min(1e-30)


def omega(kq: torch.Tensor) -> torch.Tensor:
    """[... d+1 d+1] -> [...]: mean x-block diagonal / sqrt(d+1)."""
    D = kq.shape[-1]
    return torch.diagonal(_x_block(kq), dim1=-2, dim2=-1).mean(-1) / math.sqrt(D)


def ov_offlast_share(ov: torch.Tensor) -> torch.Tensor:
    """[... d+1] -> [...]: share of the OV vector's energy outside its last (y) entry."""
    total = (ov**2).sum(-1)
    return (total - ov[..., -1] ** 2) / total.clamp_min(1e-30)


def mu(ov: torch.Tensor) -> torch.Tensor:
    """[... d+1] -> [...]: the weight each head puts on y in the prediction."""
    return ov[..., -1]


def zero_sum_ratio(mus: torch.Tensor) -> torch.Tensor:
    """[... head] -> [...]: |sum_h mu_h| / sum_h |mu_h| (0: zero-sum; 1: all heads of one sign)."""
    return mus.sum(-1).abs() / mus.abs().sum(-1).clamp_min(1e-30)


def weighted(values: torch.Tensor, mus: torch.Tensor) -> torch.Tensor:
    """[... head] per-head scores averaged with weights |mu_h| -> [...]."""
    w = mus.abs()
    return (values * w).sum(-1) / w.sum(-1).clamp_min(1e-30)


def ov_offlast_total(ov: torch.Tensor) -> torch.Tensor:
    """[... head d+1] -> [...]: OV energy outside the y entry, summed over heads, / total OV energy."""
    total = (ov**2).sum((-1, -2))
    return (total - (ov[..., -1] ** 2).sum(-1)) / total.clamp_min(1e-30)


def effective_preconditioner(kq: torch.Tensor, ov: torch.Tensor) -> torch.Tensor:
    """Gamma = sum_h mu_h KQ_h[:d,:d] / sqrt(d+1): [d d]. To first order in the logits the
    model predicts x_q^T Gamma (1/n) sum_i (x_i - xbar) y_i, preconditioned debiased GD."""
    D = kq.shape[-1]
    return torch.einsum("h,hij->ij", mu(ov), _x_block(kq)) / math.sqrt(D)


def scaled_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """min_c ||a - c b||_F / ||a||_F: how far ``a`` is from any multiple of ``b`` (0 = a multiple)."""
    a, b = a.double(), b.double()
    c = (a * b).sum() / (b * b).sum().clamp_min(1e-30)
    return float((a - c * b).norm() / a.norm().clamp_min(1e-30))


def all_scores(kq: torch.Tensor, ov: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every score for KQ [... head d+1 d+1] and OV [... head d+1] (e.g. a stack of checkpoints)."""
    mus = mu(ov)
    off, cv, offlast = kq_offdiag_share(kq), kq_diag_cv(kq), ov_offlast_share(ov)
    return {
        "kq_offdiag_share": off,
        "kq_diag_cv": cv,
        "kq_y_share": kq_y_share(kq),
        "omega": omega(kq),
        "ov_offlast_share": offlast,
        "mu": mus,
        "zero_sum_ratio": zero_sum_ratio(mus),
        "kq_offdiag_weighted": weighted(off, mus),
        "kq_diag_cv_weighted": weighted(cv, mus),
        "ov_offlast_total": ov_offlast_total(ov),
    }
