"""The in-context regression analysis's result: the trained model's patterns over training,
the predictors' errors on fresh test prompts, and the seed table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from workbench.results import Result

from .config import ZERO_SUM_THRESHOLD, ICLConfig
from .records import SeedRow


@dataclass(kw_only=True)
class ICLResult(Result):
    """A multi-head attention model trained on in-context linear regression: its KQ and OV
    patterns over training, the predictors it is compared with, and the seed table."""

    analysis = "icl"
    v1_names = {"length_grid": "lengths", "mse_by_length_table": "mse_by_length"}  # format-1 names of the two
    SUMMARY_KEYS = ("heads", "kq_offdiag_share", "kq_diag_cv", "ov_offlast_share", "mu", "zero_sum_ratio")

    config: ICLConfig
    # the trained model's size
    heads: int
    d: int
    n: int  # training context length
    steps: int
    # the final patterns, per head
    kq_offdiag_share: list[float]
    kq_diag_cv: list[float]
    kq_y_share: list[float]
    ov_offlast_share: list[float]
    mu: list[float]  # the last OV entry of each head
    omega: list[float]
    zero_sum_ratio: float  # |sum_h mu_h| / sum_h |mu_h| at the end of training
    kq_offdiag_weighted: float
    kq_diag_cv_weighted: float
    ov_offlast_total: float
    # the predictors on fresh test prompts
    mse: dict[str, float]  # at the training length, per predictor
    mse_by_length_table: dict[str, list[float]]  # per predictor, at each of ``lengths``
    lengths: list[int]
    predictors: list[str]
    eta_gd: float  # closed-form GD step sizes at the training length (nothing fitted)
    eta_gd_debiased: float
    step_sizes: str
    eta_implied: float
    dgd_pred_gap: float | None  # relative squared gap of the model's predictions to debiased GD's
    dgd_mse_gap_rel: float
    dgd_precond_pred_gap: float | None
    final_train_loss: float
    precond_dist_identity: float
    precond_dist_inv_cov: float
    train_seconds: float
    cached: bool
    seed_table: list[SeedRow] = field(default_factory=list)  # one row per seed, head count by head count
    zero_sum_threshold: float = ZERO_SUM_THRESHOLD
    zero_sum_criterion: str = ""
    test_prompts: int = 0
    eta_gd_debiased_precond: float | None = None  # with anisotropic covariates only
    # tensors
    checkpoint_steps: Int[Tensor, " checkpoint"]  # the Adam steps of the checkpoints (0 = initialisation)
    kq: Float[Tensor, "checkpoint head d1 d1"]  # KQ = W_Q^T W_K per head (d1 = d + 1)
    ov: Float[Tensor, "checkpoint head d1"]  # OV per head (the last entry is mu_h)
    loss: Float[Tensor, " step"]  # training loss of the multi-head model
    length_grid: Int[Tensor, " length"]
    mse_by_length: Float[Tensor, "predictor length"]
    preconditioner: Float[Tensor, "d d"]
    covariance: Float[Tensor, "d d"]
    curves: dict[str, Float[Tensor, "checkpoint *head"]]  # noqa: F821 (a jaxtyping shape, not an expression): pattern scores over checkpoints
    baseline_losses: dict[str, Float[Tensor, " step"]] = field(default_factory=dict)  # single_head, linear

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Format 1 named the curves ``curve.{score}`` and the baselines' losses ``{model}.loss``."""
        renamed = {}
        for name, tensor in arrays.items():
            if name.startswith("curve."):
                name = "curves/" + name[len("curve."):]
            elif name.endswith(".loss"):
                name = "baseline_losses/" + name[:-len(".loss")]
            renamed[name] = tensor
        return metrics, renamed

    @property
    def losses(self) -> dict[str, Tensor]:
        """Training loss per trained model: ``model``, and ``single_head`` / ``linear`` with baselines."""
        return {"model": self.loss, **self.baseline_losses}

    def curve(self, score: str) -> Tensor:
        """A pattern score over checkpoints: ``[checkpoint head]`` or ``[checkpoint]`` (e.g. ``zero_sum_ratio``)."""
        return self.curves[score]

    @property
    def steps_closed_form(self) -> dict[str, float]:
        """The closed-form GD step sizes by predictor (``gd``, ``gd_debiased``, ``gd_debiased_precond``)."""
        out = {"gd": self.eta_gd, "gd_debiased": self.eta_gd_debiased}
        if self.eta_gd_debiased_precond is not None:
            out["gd_debiased_precond"] = self.eta_gd_debiased_precond
        return out

    def reached_share(self, heads: int) -> Any:
        """The share of seeds with ``heads`` heads that reach the opposite-sign pattern (Wilson interval)."""
        return self.intervals.get(f"H={heads}: share of seeds reaching the zero-sum pattern")

    def summary(self) -> dict[str, Any]:
        m = super().summary()
        out: dict[str, Any] = {k: m[k] for k in self.SUMMARY_KEYS}
        out["mse"] = {k: m["mse"].get(k) for k in ("model", "single_head", "gd_debiased", "ridge")}
        if self.seed_table:
            rows = self.seed_table
            out["seed_table"] = {f"H={h}": {"seeds": [r.seed for r in rows if r.heads == h],
                                            "zero_sum_ratio": [round(r.zero_sum_ratio, 4) for r in rows if r.heads == h],
                                            "reached": sum(r.reached for r in rows if r.heads == h)}
                                 for h in dict.fromkeys(r.heads for r in rows)}
        if self.path is not None:
            out["run"] = str(self.path)
        return out
