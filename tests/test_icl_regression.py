"""In-context regression (He et al. 2025): closed forms, pattern scores on hand-written
weights, a hand-built debiased-GD attention, a small trained run, bad input, and the
paper's claims on the default setting (slow)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.analyses.icl import patterns as pat
from workbench.analyses.icl import predictors as pred
from workbench.analyses.icl.model import build
from workbench.analyses.icl.analysis import ICLConfig, ICLResult, run, validate
from workbench.analyses.icl.task import Prompts, covariance_matrix, embed, sample_prompts
from workbench.errors import InputError
from workbench.results import load_result

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(d=3, n=20, heads=4, steps=300, eval_prompts=500, checkpoint_every=50, n_seeds=2)


@pytest.fixture(scope="module")
def icl_cache(tmp_path_factory):
    """A private model cache for this module, so every test session retrains from scratch once."""
    old = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("icl-cache"))
    yield os.environ["WORKBENCH_CACHE"]
    if old is None:
        os.environ.pop("WORKBENCH_CACHE", None)
    else:
        os.environ["WORKBENCH_CACHE"] = old


@pytest.fixture(scope="module")
def small_result(icl_cache) -> ICLResult:
    return run(None, ICLConfig(**SMALL), progress=False)


def _tiny_prompts() -> Prompts:
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # [1 3 2]
    y = torch.tensor([[1.0, 2.0, 3.0]])
    xq = torch.tensor([[1.0, -1.0]])
    return Prompts(x=x, y=y, xq=xq, yq=torch.tensor([0.5]), beta=torch.zeros(1, 2))


# ---------------------------------------------------------------- closed forms
def test_gd_and_debiased_gd_by_hand():
    p = _tiny_prompts()
    # (1/n) sum x_i y_i = ((1,0)*1 + (0,2)*2 + (1,1)*3)/3 = (4, 7)/3 ; . xq = -1
    assert pred.gd_direction(p).item() == pytest.approx(-1.0)
    # xbar = (2/3, 1); centred: (1/3,-1), (-2/3,1), (1/3,0); sum c_i y_i = (1/3-4/3+1, -1+2+0) = (0, 1); /3 . xq = -1/3
    assert pred.debiased_gd_direction(p).item() == pytest.approx(-1 / 3)
    g = torch.tensor([1.0, 2.0, -1.0])
    assert pred.fit_step(g, 2 * g) == pytest.approx(2.0)


def test_ridge_by_hand():
    p = _tiny_prompts()
    lam = 0.5
    # X^T X = [[2,1],[1,5]] + 0.5 I = [[2.5,1],[1,5.5]]; X^T y = (4, 7)
    det = 2.5 * 5.5 - 1.0
    beta = torch.tensor([(5.5 * 4 - 1 * 7) / det, (-1 * 4 + 2.5 * 7) / det])
    assert pred.ridge_predict(p, lam).item() == pytest.approx(float(beta[0] - beta[1]), rel=1e-5)
    assert pred.bayes_lambda(5, 0.1) == pytest.approx(0.5)


def test_ridge_is_bayes_optimal_against_other_penalties():
    gen = torch.Generator().manual_seed(0)
    p = sample_prompts(4000, 10, 5, 0.1, generator=gen)
    best = pred.mse(pred.ridge_predict(p, pred.bayes_lambda(5, 0.1)), p.yq)
    for lam in (0.01, 5.0):
        assert best < pred.mse(pred.ridge_predict(p, lam), p.yq)


def test_prompts_follow_the_model():
    gen = torch.Generator().manual_seed(1)
    p = sample_prompts(3, 7, 4, noise_var=0.0, generator=gen)
    assert torch.allclose(p.y, torch.einsum("bnd,bd->bn", p.x, p.beta), atol=1e-6)
    z, zq = embed(p)
    assert z.shape == (3, 7, 5) and zq.shape == (3, 5) and torch.all(zq[:, -1] == 0)
    cov = covariance_matrix(3, "ar1", 0.5)
    assert torch.allclose(cov, torch.tensor([[1, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 1]]))


# ---------------------------------------------------------------- pattern scores on hand-written weights
def test_scores_of_pure_patterns():
    d = 4
    kq = torch.zeros(2, d + 1, d + 1)
    kq[0, :d, :d] = 0.7 * torch.eye(d)
    kq[1, :d, :d] = -0.3 * torch.eye(d)
    assert pat.kq_offdiag_share(kq).abs().max() < 1e-7
    assert pat.kq_diag_cv(kq).abs().max() < 1e-6
    assert pat.kq_y_share(kq).abs().max() < 1e-7
    assert torch.allclose(pat.omega(kq), torch.tensor([0.7, -0.3]) / math.sqrt(d + 1))
    ov = torch.zeros(2, d + 1)
    ov[:, -1] = torch.tensor([1.5, -1.5])
    assert pat.ov_offlast_share(ov).abs().max() < 1e-7
    assert torch.equal(pat.mu(ov), torch.tensor([1.5, -1.5]))
    assert pat.zero_sum_ratio(pat.mu(ov)).item() == 0.0


def test_scores_of_known_mixtures():
    kq = torch.zeros(3, 3)  # d = 2
    kq[:2, :2] = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    kq[0, 2] = 2.0  # query x1 against key y: touches y
    kq[2, 0] = 5.0  # query y slot: always multiplied by 0, ignored
    assert pat.kq_offdiag_share(kq).item() == pytest.approx(2 / 12)
    assert pat.kq_diag_cv(kq).item() == pytest.approx(1 / 2)  # diag (1, 3): std 1, mean 2
    assert pat.kq_y_share(kq).item() == pytest.approx(4 / 16)
    ov = torch.tensor([3.0, 0.0, 4.0])
    assert pat.ov_offlast_share(ov).item() == pytest.approx(9 / 25)
    assert pat.zero_sum_ratio(torch.tensor([1.0, 1.0])).item() == 1.0
    assert pat.zero_sum_ratio(torch.tensor([2.0, -1.0])).item() == pytest.approx(1 / 3)
    assert pat.scaled_distance(2.5 * torch.eye(3), torch.eye(3)) == pytest.approx(0.0, abs=1e-12)
    assert pat.scaled_distance(torch.diag(torch.tensor([1.0, -1.0])), torch.eye(2)) == pytest.approx(1.0)


# ---------------------------------------------------------------- the model
def _set_pattern(model, omegas, mus):
    """Write exact patterns: KQ_h = w_h I on the x-block, OV_h = mu_h e_y."""
    D = model.d + 1
    with torch.no_grad():
        model.W_Q.zero_(), model.W_K.zero_(), model.W_V.zero_(), model.W_O.zero_()
        for h, (w, m) in enumerate(zip(omegas, mus)):
            model.W_Q[h, :model.d, :model.d] = w * torch.eye(model.d)
            model.W_K[h, :model.d, :model.d] = torch.eye(model.d)
            model.W_V[h, -1, -1] = 1.0
            model.W_O[h, -1] = m


def test_forward_matches_a_per_head_loop():
    torch.manual_seed(0)
    model = build(3, 2, seed=3)
    p = sample_prompts(5, 6, 3)
    z, zq = embed(p)
    out = model(z, zq)
    kq, ov = model.kq(), model.ov()
    for b in range(5):
        total = 0.0
        for h in range(2):
            logits = torch.stack([zq[b] @ kq[h] @ z[b, i] for i in range(6)]) / math.sqrt(4)
            total += (torch.softmax(logits, 0)[:, None] * (z[b] @ ov[h])[:, None]).sum()
        assert out[b].item() == pytest.approx(float(total), rel=1e-4, abs=1e-5)


def test_hand_built_opposite_heads_implement_debiased_gd():
    """Two heads (omega, mu) and (-omega, -mu): the mean-of-y term cancels and, to first order in
    omega, the output is 2 mu omega' times the debiased GD direction (omega' = omega / sqrt(d+1))."""
    d, w, m = 4, 0.02, 3.0
    model = build(d, 2)
    _set_pattern(model, [w, -w], [m, -m])
    p = sample_prompts(2000, 30, d, generator=torch.Generator().manual_seed(0))
    z, zq = embed(p)
    with torch.no_grad():
        out = model(z, zq)
    target = 2 * m * (w / math.sqrt(d + 1)) * pred.debiased_gd_direction(p)
    rel = ((out - target) ** 2).mean() / (target**2).mean()
    assert rel < 1e-3
    # a single head carries the mean of y as well: far from debiased GD
    single = build(d, 1)
    _set_pattern(single, [w], [m])
    with torch.no_grad():
        out1 = single(z, zq)
    assert torch.allclose(out1, m * p.y.mean(1) + target / 2, atol=0.05)
    gamma = pat.effective_preconditioner(model.kq(), model.ov())
    assert pat.scaled_distance(gamma, torch.eye(d)) < 1e-6


def test_linear_attention_uses_the_training_normaliser():
    model = build(2, 1, attention="linear", n_train=10)
    _set_pattern(model, [1.0], [1.0])
    p = _tiny_prompts()
    z, zq = embed(p)
    with torch.no_grad():
        out = model(z, zq)
    # sum_i (x_q . x_i) y_i / sqrt(3) / 10 = (1*1 - 2*2 + 0*3) / sqrt(3) / 10
    assert out.item() == pytest.approx(-3 / math.sqrt(3) / 10, rel=1e-5)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("field,value", [("d", 0), ("n", -1), ("heads", 0), ("steps", 0)])
def test_bad_sizes_are_one_line_errors(field, value):
    with pytest.raises(InputError, match=field):
        validate(ICLConfig(**{field: value}))


def test_context_beyond_supported_length_is_an_error():
    with pytest.raises(InputError, match="exceeds the supported maximum 640"):
        validate(ICLConfig(n=40, eval_lengths=(40, 1000)))
    with pytest.raises(InputError, match="at least 1"):
        validate(ICLConfig(eval_lengths=(0, 40)))
    ok = validate(ICLConfig(n=40, eval_lengths=(10, 640)))
    assert ok.eval_lengths == (10, 40, 640)


def test_cli_bad_input_prints_one_line(tmp_path):
    exe = Path(sys.executable).with_name("workbench")
    for args in (["--lengths", "40,100000"],):  # sizes and lengths are checked by the same validate()
        proc = subprocess.run([str(exe), "icl", *args, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


# ---------------------------------------------------------------- a small trained run
def test_small_run_summary_and_trends(small_result):
    s = small_result.summary()
    assert list(s) == ["heads", "kq_offdiag_share", "kq_diag_cv", "ov_offlast_share", "mu", "zero_sum_ratio", "mse",
                       "seed_table"]
    assert set(s["seed_table"]) == {"H=2", "H=4"} and s["seed_table"]["H=4"]["seeds"] == [0, 1]
    assert set(s["mse"]) == {"model", "single_head", "gd_debiased", "ridge"}
    assert s["heads"] == 4 and len(s["mu"]) == 4 and len(s["kq_offdiag_share"]) == 4
    m = small_result
    loss = small_result.loss
    assert loss[-50:].mean() < 0.5 * loss[:10].mean()
    # even 300 steps split the heads into opposite signs and beat one head clearly
    assert m.zero_sum_ratio < 0.2
    assert m.mse["model"] < 0.8 * m.mse["single_head"]
    assert m.mse["ridge"] < m.mse["gd_debiased"]
    assert small_result.kq.shape == (7, 4, 4, 4)
    curve = small_result.curves["kq_offdiag_weighted"]
    assert curve[-1] < curve[0]


def test_round_trip_and_cache(small_result, tmp_path):
    path = small_result.save(tmp_path / "icl-run")
    back = load_result(path)
    assert isinstance(back, ICLResult)
    (data, tensors), (back_data, back_tensors) = small_result.document(), back.document()
    assert back_data["data"] == data["data"]
    for k, v in tensors.items():
        assert torch.equal(back_tensors[k], v), k
    assert back.config == small_result.config
    again = run(None, ICLConfig(**SMALL), progress=False)  # every model now comes from the cache
    assert again.cached is True
    assert again.mse == small_result.mse
    # the run names the trained models it measured by checksum; the cached ones are the same builds
    arts = small_result.meta["artifacts"]
    assert [a["key"] for a in arts][0] == f"icl/{small_result.meta['train_spec_key']}"
    assert all(len(a["sha256"]) == 64 for a in arts) and len(arts) == 3  # main, single head, linear
    assert again.meta["artifacts"] == arts and back.meta["artifacts"] == arts


def test_figures_and_report(small_result):
    from workbench.analyses.icl import figures as figs
    from workbench.report import render

    assert len(figs.kq_heatmaps(small_result, 0).data) == 4
    assert len(figs.ov_heatmap(small_result).data) == 1
    assert len(figs.mse_by_length(small_result).data) == 6
    assert len(figs.pattern_curves(small_result).data) == 6 * 4 + 1
    assert len(figs.loss_curves(small_result).data) == 3
    assert "ICL regression" in render("icl", small_result.report_sections())


def test_app_page_without_runs():
    from conftest import analysis_page_app

    at = analysis_page_app("icl").run()
    assert not at.exception
    assert any("No saved 'icl' runs" in i.value for i in at.info)
    assert len(at.button) == 1  # the train button


def test_app_page(small_result):
    from conftest import analysis_page_app

    small_result.save()  # into this test's WORKBENCH_RUNS
    at = analysis_page_app("icl").run()
    assert not at.exception
    assert len(at.select_slider) == 1
    assert len(at.get("plotly_chart")) == 6  # KQ, OV, pattern curves, error by length, losses, seed table
    at.select_slider[0].set_value(0).run()
    assert not at.exception


# ---------------------------------------------------------------- the claims (default setting)
@pytest.mark.slow
def test_default_run_shows_the_patterns_and_claims(icl_cache):
    r = run(None, ICLConfig(seed=0, n_seeds=0), progress=False)  # the seed table is the command's, not this test's
    assert r.zero_sum_ratio < 0.05
    assert r.kq_offdiag_weighted < 0.1
    assert r.kq_diag_cv_weighted < 0.25
    assert r.ov_offlast_total < 0.15
    assert r.mse["model"] < 0.75 * r.mse["single_head"]  # multi-head beats single-head
    assert r.dgd_pred_gap < 0.02  # predictions within 2% (relative squared error) of debiased GD
    assert abs(r.dgd_mse_gap_rel) < 0.05
    # length generalisation: softmax keeps improving past the training length, linear attention breaks
    by_len, lengths = r.mse_by_length_table, r.lengths
    i_n, i_4n = lengths.index(r.n), lengths.index(4 * r.n)
    assert by_len["model"][i_4n] < by_len["model"][i_n]
    assert by_len["linear"][i_4n] > 2 * by_len["linear"][i_n]


@pytest.mark.slow
def test_anisotropic_covariates_give_a_preconditioner(icl_cache):
    r = run(None, ICLConfig(seed=0, covariance="ar1", rho=0.5, baselines=False, n_seeds=0), progress=False)
    assert r.precond_dist_inv_cov < 0.5 * r.precond_dist_identity
    assert r.mse["model"] < 0.8 * r.mse["gd_debiased"]  # plain debiased GD ignores Sigma
    assert r.dgd_precond_pred_gap < 0.05


# ---------------------------------------------------------------- the notebook
def test_notebook_executes_small(icl_cache, small_result, monkeypatch):
    from notebook_runner import execute_notebook, plotly_outputs

    outputs = execute_notebook("icl_regression.ipynb", monkeypatch, timeout=300)
    assert plotly_outputs(outputs) >= 5
