"""In-context linear regression with one-layer multi-head softmax attention (He, Pan,
Chen, Yang 2025, "In-Context Linear Regression Demystified"): train the model from random
initialisation, read its KQ and OV patterns (diagonal + homogeneous KQ, last-entry-only +
zero-sum OV) over training, and compare its predictions with single-head and linear
attention, one-step GD, debiased GD and the Bayes-optimal ridge estimate, at the training
context length and beyond.

The setup follows the authors' code (Y-Agent/ICL_linear): x ~ N(0, I_d), beta ~ N(0, I_d/d),
noise variance 0.1, n = 8d context pairs, full-size Q, K, V per head, nn.Linear
initialisation, Adam. The one change: learning rate 3e-3 for a few thousand steps (the
authors: 1e-3 for 500k steps on a GPU), so the patterns appear in minutes on a laptop CPU.

``run(None, config)`` trains its own models (cached by ``icl_training``); ``model`` is unused.

The seed table: the same training for ``n_seeds`` seeds at each head count of ``seed_heads``
(default H = 2 and H = 4, five seeds each), and the share of seeds that reach the opposite-sign
(zero-sum) pattern, with a Wilson interval. The criterion, fixed before looking: at the end of
training ``|sum_h mu_h| / sum_h |mu_h| < ZERO_SUM_THRESHOLD`` (0.1; mu_h is head h's OV weight on y).
The same-sign saddle has ratio 1, the paper's pattern ratio 0; the trained runs sit near one end
or the other. With H = 2, seeds can stay at the same-sign saddle for the whole 3000 steps (the
authors train 500k steps at lr 1e-3); the table counts how many.

Step sizes of the GD baselines: derived in closed form for the task distribution at the
training length (``predictors.optimal_step``), not fitted on any prompts. Every error is
measured on fresh test prompts from their own generator (seed + 10007), never used in training
(training draws from seed + 1) or in choosing anything; intervals are bootstrap intervals over
those prompts (split ``test``), and the share of seeds is over seeds (split ``seeds``).

Layout: the settings in ``config.py``, the Result in ``result.py``, the training processes in
``pool.py``; the run's phases (training, predictors, seed table, intervals) are functions here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from workbench.artifacts import provenance_entry
from workbench.results import provenance
from workbench.stats import bootstrap, bootstrap_diff, wilson

from workbench.analyses.icl import patterns as pat
from workbench.analyses.icl import predictors as pred
from workbench.analyses.icl.model import AttentionRegressor
from workbench.analyses.icl.task import Prompts, covariance_matrix, embed, sample_prompts
from workbench.analyses.icl.training import TrainRecord, TrainSpec, train
from workbench.checks import checked_run

# the settings, the result and the training pool live in their own modules; their names stay importable from here
from .config import (MAX_CONTEXT_FACTOR, PREDICTORS, TEST_SPLIT, ZERO_SUM_THRESHOLD, ICLConfig, estimate_bytes,
                     seed_specs, train_spec, validate)
from .pool import train_all
from .records import SeedRow
from .result import ICLResult

if TYPE_CHECKING:
    from workbench.models import Model

__all__ = ["MAX_CONTEXT_FACTOR", "PREDICTORS", "TEST_SPLIT", "ZERO_SUM_THRESHOLD", "ICLConfig", "ICLResult",
           "estimate_bytes", "run", "validate"]


@torch.no_grad()
def _predict(model: AttentionRegressor, p: Prompts) -> torch.Tensor:
    z, zq = embed(p)
    return model(z, zq)


# ---------------------------------------------------------------------------- training
@dataclass
class Trained:
    """The run's trained models (from the cache where they are there) and the seconds spent."""

    main: TrainRecord
    single: TrainRecord | None  # single-head softmax attention (with baselines)
    linear: TrainRecord | None  # linear attention (with baselines)
    seconds: dict[TrainSpec, float]  # per training spec, 0 for those found in the cache
    train_seconds: float


def train_models(config: ICLConfig, progress: bool) -> Trained:
    """Train (or load cached) the main model, the seed table's and the baselines."""
    t0 = time.perf_counter()
    main_spec = train_spec(config, config.heads)
    specs = [main_spec, *seed_specs(config)]
    if config.baselines:
        specs += [train_spec(config, 1), train_spec(config, config.heads, "linear")]
    seconds = train_all(specs, config.workers, progress)
    main = train(main_spec, progress=progress)
    single = train(train_spec(config, 1), progress=progress) if config.baselines else None
    linear = train(train_spec(config, config.heads, "linear"), progress=progress) if config.baselines else None
    return Trained(main=main, single=single, linear=linear, seconds=seconds, train_seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------- predictors
@dataclass
class Evaluation:
    """The predictors on fresh test prompts: errors at every length, and at the training length
    the squared errors per prompt, the prompts themselves and the model's gaps to debiased GD."""

    names: list[str]
    lengths: list[int]
    table: torch.Tensor  # [predictor length] MSE
    eta_gd: float
    eta_dgd: float
    eta_pdgd: float | None
    sq_at_n: dict[str, torch.Tensor] = field(default_factory=dict)  # per predictor [prompt]
    p_n: Prompts | None = None
    gap: float | None = None
    pgap: float | None = None
    n: int = 0  # the training length

    @property
    def mse(self) -> dict[str, float]:
        """MSE at the training length, per predictor."""
        at_n = self.lengths.index(self.n)
        return {name: float(self.table[i, at_n]) for i, name in enumerate(self.names)}


def _predictions(p: Prompts, trained: Trained, ev: Evaluation, inv_cov: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    """Every predictor's predictions on the prompts ``p``."""
    preds = {"model": _predict(trained.main.model, p)}
    if trained.single is not None and trained.linear is not None:
        preds["single_head"] = _predict(trained.single.model, p)
        preds["linear"] = _predict(trained.linear.model, p)
    preds["gd"] = ev.eta_gd * pred.gd_direction(p)
    preds["gd_debiased"] = ev.eta_dgd * pred.debiased_gd_direction(p)
    if ev.eta_pdgd is not None:
        preds["gd_debiased_precond"] = ev.eta_pdgd * pred.debiased_gd_direction(p, inv_cov)
    preds["ridge"] = pred.ridge_predict(p, lam)
    return preds


def _relative_gap(preds: dict[str, torch.Tensor], other: str) -> float:
    """Relative squared gap of the model's predictions to ``other``'s."""
    diff = preds["model"] - preds[other]
    return float((diff**2).mean() / (preds[other] ** 2).mean())


def evaluate(config: ICLConfig, trained: Trained, cov: torch.Tensor, inv_cov: torch.Tensor) -> Evaluation:
    """Every predictor on fresh test prompts (their own generator) at every evaluated length.
    GD step sizes in closed form at the training length: nothing is fitted on prompts."""
    aniso = config.covariance != "isotropic"
    names = [n for n in PREDICTORS if config.baselines or n not in ("single_head", "linear")]
    if aniso:  # debiased GD preconditioned by Sigma^-1, what the paper says anisotropic training finds
        names.insert(names.index("gd_debiased") + 1, "gd_debiased_precond")
    lengths = list(config.eval_lengths)
    ev = Evaluation(
        names=names, lengths=lengths, n=config.n,
        table=torch.zeros(len(names), len(lengths)),  # cpu: the in-context regression study runs on the CPU
        eta_gd=pred.optimal_step(config.n, cov, config.noise_var),
        eta_dgd=pred.optimal_step(config.n, cov, config.noise_var, debiased=True),
        eta_pdgd=pred.optimal_step(config.n, cov, config.noise_var, debiased=True, precond=inv_cov) if aniso else None)
    gen = torch.Generator().manual_seed(config.seed + 10_007)
    cov_arg = None if config.covariance == "isotropic" else cov
    lam = pred.bayes_lambda(config.d, config.noise_var)
    for j, L in enumerate(lengths):
        p = sample_prompts(config.eval_prompts, L, config.d, config.noise_var, cov_arg, generator=gen)
        preds = _predictions(p, trained, ev, inv_cov, lam)
        for i, name in enumerate(names):
            ev.table[i, j] = pred.mse(preds[name], p.yq)
        if L == config.n:
            ev.p_n = p
            ev.sq_at_n = {name: (preds[name] - p.yq) ** 2 for name in names}
            ev.gap = _relative_gap(preds, "gd_debiased")
            if aniso:
                ev.pgap = _relative_gap(preds, "gd_debiased_precond")
    return ev


# ---------------------------------------------------------------------------- the seed table
def seed_table(config: ICLConfig, seconds: dict[TrainSpec, float], p_n: Prompts, mse_gd_debiased: float) -> list[SeedRow]:
    """Each seed's trained model (from the cache): its zero-sum ratio, whether it reached the
    opposite-sign pattern, its OV weights on y and its test error at the training length."""
    rows = []
    for spec in seed_specs(config):
        rec = train(spec, progress=False)  # from the cache
        mu_s = pat.mu(rec.ov[-1])
        ratio = float(pat.zero_sum_ratio(mu_s))
        err = (_predict(rec.model, p_n) - p_n.yq) ** 2
        rows.append(SeedRow(heads=spec.heads, seed=spec.seed, zero_sum_ratio=ratio,
                            reached=bool(ratio < ZERO_SUM_THRESHOLD), mu=[float(v) for v in mu_s],
                            mse=float(err.mean()), mse_gd_debiased=mse_gd_debiased,
                            train_seconds=round(seconds.get(spec, 0.0), 1)))
    return rows


# ---------------------------------------------------------------------------- intervals
def set_intervals(result: ICLResult, config: ICLConfig, sq_at_n: dict[str, torch.Tensor],
                  seed_rows: list[SeedRow]) -> None:
    """Intervals over test prompts (errors) and over seeds (the share reaching the pattern)."""
    for name, sq in sq_at_n.items():
        result.set_interval(f"MSE {name} at n", bootstrap(sq.cpu().numpy(), split=TEST_SPLIT))
    for other in ("single_head", "gd_debiased"):
        if other in sq_at_n:
            result.set_interval(f"MSE model - {other} at n",
                                bootstrap_diff(sq_at_n["model"].tolist(), sq_at_n[other].tolist(), split=TEST_SPLIT))
    for h in config.seed_heads:
        rows = [r for r in seed_rows if r.heads == h]
        if rows:
            result.set_interval(f"H={h}: share of seeds reaching the zero-sum pattern",
                                wilson(sum(r.reached for r in rows), len(rows), split="seeds"))
            result.set_interval(f"H={h}: test MSE over seeds", bootstrap([r.mse for r in rows], split="seeds"))


# ---------------------------------------------------------------------------- run
CURVES = ("kq_offdiag_share", "kq_diag_cv", "kq_y_share", "ov_offlast_share", "mu", "omega", "zero_sum_ratio",
          "kq_offdiag_weighted", "ov_offlast_total")


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model | None = None, config: ICLConfig | None = None, progress: bool = True) -> ICLResult:
    """Train (or load cached) models for ``config``, read their patterns, compare predictors,
    and the seed table: the share of seeds per head count that reach the zero-sum pattern."""
    config = validate(config or ICLConfig())
    trained = train_models(config, progress)
    main = trained.main
    # ---- patterns over training
    curves = pat.all_scores(main.kq, main.ov)  # each [S head] or [S]
    final = {k: v[-1] for k, v in curves.items()}
    cov = covariance_matrix(config.d, config.covariance, config.rho)
    gamma = pat.effective_preconditioner(main.kq[-1], main.ov[-1])
    inv_cov = torch.linalg.inv(cov.double()).float()
    # ---- predictors on fresh test prompts, then the seed table
    ev = evaluate(config, trained, cov, inv_cov)
    mse = ev.mse
    assert ev.p_n is not None  # validate puts the training length among the evaluated ones
    seed_rows = seed_table(config, trained.seconds, ev.p_n, mse["gd_debiased"])
    mus = final["mu"]
    result = ICLResult(
        config=config, heads=config.heads, d=config.d, n=config.n, steps=config.steps,
        kq_offdiag_share=final["kq_offdiag_share"].tolist(), kq_diag_cv=final["kq_diag_cv"].tolist(),
        kq_y_share=final["kq_y_share"].tolist(), ov_offlast_share=final["ov_offlast_share"].tolist(),
        mu=mus.tolist(), omega=final["omega"].tolist(), zero_sum_ratio=float(final["zero_sum_ratio"]),
        kq_offdiag_weighted=float(final["kq_offdiag_weighted"]), kq_diag_cv_weighted=float(final["kq_diag_cv_weighted"]),
        ov_offlast_total=float(final["ov_offlast_total"]),
        mse=mse, mse_by_length_table={name: ev.table[i].tolist() for i, name in enumerate(ev.names)},
        lengths=ev.lengths, predictors=ev.names, eta_gd=ev.eta_gd, eta_gd_debiased=ev.eta_dgd,
        step_sizes="closed form (predictors.optimal_step), at the training length n; nothing fitted",
        eta_implied=float((mus * final["omega"]).sum()), dgd_pred_gap=ev.gap,
        dgd_mse_gap_rel=(mse["model"] - mse["gd_debiased"]) / mse["gd_debiased"], dgd_precond_pred_gap=ev.pgap,
        final_train_loss=float(main.loss[-max(1, config.steps // 10):].mean()),
        # cpu: the in-context regression study runs on the CPU (its own small model)
        precond_dist_identity=float(pat.scaled_distance(gamma, torch.eye(config.d))),
        precond_dist_inv_cov=float(pat.scaled_distance(gamma, inv_cov)), train_seconds=trained.train_seconds,
        cached=all(v == 0.0 for v in trained.seconds.values()) and bool(main.cached), seed_table=seed_rows,
        zero_sum_criterion=f"|sum_h mu_h| / sum_h |mu_h| < {ZERO_SUM_THRESHOLD} at the end of training",
        test_prompts=config.eval_prompts, eta_gd_debiased_precond=ev.eta_pdgd,
        checkpoint_steps=main.checkpoint_steps, kq=main.kq, ov=main.ov, loss=main.loss,
        length_grid=torch.tensor(ev.lengths), mse_by_length=ev.table,  # cpu: a result array
        preconditioner=gamma, covariance=cov, curves={k: curves[k] for k in CURVES},
        baseline_losses=({"single_head": trained.single.loss, "linear": trained.linear.loss}
                         if trained.single is not None and trained.linear is not None else {}))
    meta = provenance(model=f"icl-attn-H{config.heads}-d{config.d}-n{config.n}", seed=config.seed)
    meta["train_spec_key"] = train_spec(config, config.heads).key()
    meta["artifacts"] = [provenance_entry(r.artifact_key(), r.sha256)  # the trained models this run measured
                         for r in (main, trained.single, trained.linear) if r is not None and r.sha256]
    result.meta = meta
    set_intervals(result, config, ev.sq_at_n, seed_rows)
    return result
