"""Known answers for the ICL seed table and the GD baselines' step sizes: the closed-form step
(``predictors.optimal_step``) against hand values and against least squares on a large
Monte-Carlo sample (isotropic and ar1 covariates, plain and preconditioned, GD and debiased
GD); the zero-sum criterion on hand-written head weights; the seed table of a small run (its
rows, the Wilson share, the main model as one of its seeds) and training in worker processes
giving exactly the weights of training inline."""
from __future__ import annotations

import os

import pytest
import torch

from workbench.analyses.icl import patterns as pat
from workbench.analyses.icl import predictors as pred
from workbench.analyses.icl.analysis import ZERO_SUM_THRESHOLD, ICLConfig, run
from workbench.analyses.icl.task import covariance_matrix, sample_prompts
from workbench.analyses.icl.training import TrainSpec, cache_path, train
from workbench.stats import wilson


def test_closed_form_step_by_hand():
    d, n, s2 = 5, 40, 0.1
    # isotropic: eta_GD = n / (n + 1 + d + s2 d), eta_debiased = n / (n + d + s2 d)
    assert pred.optimal_step(n, torch.eye(d), s2) == pytest.approx(40 / 46.5, rel=1e-12)
    assert pred.optimal_step(n, torch.eye(d), s2, debiased=True) == pytest.approx(40 / 45.5, rel=1e-12)
    # noiseless, one dimension, one pair: E[x^2 x_q^2 beta^2] -> eta = 1 / (n + 2) = 1/3 for GD
    assert pred.optimal_step(1, torch.eye(1), 0.0) == pytest.approx(1 / 3)
    # a preconditioner that is a multiple of the identity only rescales the step
    assert pred.optimal_step(n, torch.eye(d), s2, precond=2 * torch.eye(d)) == pytest.approx(40 / 46.5 / 2)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("aniso", [False, True])
def test_closed_form_step_matches_least_squares_on_many_prompts(debiased, aniso):
    d, n, s2 = 4, 10, 0.1
    cov = covariance_matrix(d, "ar1", 0.6) if aniso else torch.eye(d)
    precond = torch.linalg.inv(cov) if aniso else None
    p = sample_prompts(200_000, n, d, s2, cov if aniso else None, generator=torch.Generator().manual_seed(5))
    direction = (pred.debiased_gd_direction if debiased else pred.gd_direction)(p, precond)
    fitted = pred.fit_step(direction, p.yq)
    closed = pred.optimal_step(n, cov, s2, debiased=debiased, precond=precond)
    assert closed == pytest.approx(fitted, rel=0.01)
    # and it is the minimiser: 10% off either way costs error on the same prompts
    best = pred.mse(closed * direction, p.yq)
    assert best < pred.mse(1.1 * closed * direction, p.yq) and best < pred.mse(0.9 * closed * direction, p.yq)


def test_zero_sum_criterion_on_hand_written_heads():
    ov = torch.zeros(4, 3, 6)  # [case head d+1]
    ov[0, :, -1] = torch.tensor([1.0, -1.0, 0.0])    # exact opposite pair: ratio 0, reached
    ov[1, :, -1] = torch.tensor([0.5, 0.4, 0.1])     # same sign (the saddle): ratio 1
    ov[2, :, -1] = torch.tensor([1.0, -0.85, 0.0])   # 0.15 / 1.85 = 0.081 < 0.1: reached
    ov[3, :, -1] = torch.tensor([1.0, -0.8, 0.0])    # 0.2 / 1.8 = 0.111: not reached
    ratios = pat.zero_sum_ratio(pat.mu(ov))
    assert ratios.tolist() == pytest.approx([0.0, 1.0, 0.15 / 1.85, 0.2 / 1.8])
    assert (ratios < ZERO_SUM_THRESHOLD).tolist() == [True, False, True, False]


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    old = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("icl-seeds-cache"))
    yield
    if old is None:
        os.environ.pop("WORKBENCH_CACHE", None)
    else:
        os.environ["WORKBENCH_CACHE"] = old


@pytest.mark.slow
def test_seed_table_of_a_small_run(private_cache):
    cfg = ICLConfig(d=3, n=12, heads=2, steps=150, eval_prompts=300, checkpoint_every=50, n_seeds=3,
                    seed_heads=(2, 3), baselines=False, workers=2)
    r = run(None, cfg, progress=False)
    rows = r.seed_table
    assert [(row.heads, row.seed) for row in rows] == [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]
    for h in (2, 3):
        sel = [row for row in rows if row.heads == h]
        assert all(row.reached == (row.zero_sum_ratio < ZERO_SUM_THRESHOLD) for row in sel)
        iv = r.reached_share(h)
        ref = wilson(sum(row.reached for row in sel), 3)
        assert (iv.value, iv.low, iv.high, iv.n, iv.split) == pytest.approx((ref.value, ref.low, ref.high, 3, "seeds"))
    main = next(row for row in rows if row.heads == 2 and row.seed == 0)
    assert main.zero_sum_ratio == pytest.approx(r.zero_sum_ratio)  # the main model is the table's H=2 seed 0
    assert main.mse == pytest.approx(r.mse["model"])
    assert r.steps_closed_form["gd_debiased"] == pytest.approx(pred.optimal_step(12, torch.eye(3), 0.1, debiased=True))
    # a model trained in a worker process is exactly the model trained here
    spec = TrainSpec(d=3, n=12, heads=3, steps=150, checkpoint_every=50, seed=2)
    assert cache_path(spec).is_file()
    pooled = train(spec, progress=False)
    inline = train(spec, progress=False, use_cache=False)
    for k, v in inline.model.state_dict().items():
        assert torch.equal(pooled.model.state_dict()[k], v), k
