"""ACT's choices on one task's calibration split (candidate heads, the heads kept, then beta
and threshold for them), and one measurement on its held-out split with intervals."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypedDict

import torch
from tqdm.auto import tqdm

from workbench.datasets.multiple_choice import MCQuestion, n_options
from workbench.names import head_name
from workbench.stats import Interval, bootstrap, bootstrap_diff, wilson

from .config import SinksConfig
from .discovery import Discovery, Head
from .records import GridPoint, SearchStep, TaskCalibration
from .scoring import Scorer

if TYPE_CHECKING:
    from workbench.models import Model

Gain = tuple[Head, float, float]  # a head, its accuracy gain and its log p gain on the calibration split


class TaskExtras(TypedDict):
    """A task's intervals (by the short names of ``result.interval_name``) and held-out tensors."""

    intervals: dict[str, Interval]
    arrays: dict[str, torch.Tensor]


@dataclass
class Setting:
    """Heads calibrated at (beta, threshold), with [questions] correct and log p(right option)."""

    heads: list[Head]
    beta: float
    threshold: float
    correct: torch.Tensor
    logp: torch.Tensor


def group_difference(after: torch.Tensor, before: torch.Tensor, groups: list[str], seed: int) -> Interval:
    """Paired difference of accuracy with a bootstrap that resamples groups (a sentiment
    adjective's questions move together), not questions: rows (sum of differences, count)."""
    order = list(dict.fromkeys(groups))
    rows = torch.zeros(len(order), 2, dtype=torch.float64)  # cpu: a result array
    index = {g: i for i, g in enumerate(order)}
    for g, d in zip(groups, (after.double() - before.double()).tolist()):
        rows[index[g], 0] += d
        rows[index[g], 1] += 1
    iv = bootstrap(rows.cpu().numpy(), lambda x: float(x[:, 0].sum() / x[:, 1].sum()), seed=seed, split="test")
    return replace(iv, method=f"paired bootstrap over {len(order)} groups", n=len(groups))


def _better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, mean log p) a beats b: higher accuracy, or equal accuracy and higher log p."""
    return a[0] > b[0] or (a[0] == b[0] and a[1] > b[1])


def _means(correct: torch.Tensor, logp: torch.Tensor) -> tuple[float, float]:
    return float(correct.float().mean()), float(logp.mean())


def _single_gains(scorer: Scorer, candidates: list[Head], base: tuple[float, float], cfg: SinksConfig, task: str,
                  progress: bool) -> list[Gain]:
    """Each candidate calibrated alone at the search's beta and threshold, against the base."""
    gains = []
    for l, h in tqdm(candidates, desc=f"{task}: head search", disable=not progress, leave=False):
        m = _means(*scorer.score([(l, h)], cfg.beta, cfg.threshold, cfg.min_queries))
        gains.append(((l, h), m[0] - base[0], m[1] - base[1]))
    return gains


def _tune(scorer: Scorer, chosen: list[Head], best_single: tuple[float, float], cfg: SinksConfig, task: str,
          progress: bool) -> tuple[Setting, list[GridPoint]]:
    """The kept set (or the best single head, when the set does worse than it), then the best
    (beta, threshold) for it on the grid, every point's calibration accuracy listed."""
    beta, threshold = cfg.beta, cfg.threshold
    c, lp = scorer.score(chosen, beta, threshold, cfg.min_queries)
    if len(chosen) > 1 and _better(best_single, _means(c, lp)):  # the set does worse: the best head
        chosen = chosen[:1]
        c, lp = scorer.score(chosen, beta, threshold, cfg.min_queries)
    setting = Setting(chosen, beta, threshold, c, lp)
    best = _means(c, lp)
    grid = [GridPoint(task=task, beta=beta, threshold=threshold, accuracy=round(best[0], 4),
                      logprob=round(best[1], 4))]
    points = [(b, t) for b in cfg.betas for t in cfg.thresholds if (b, t) != (cfg.beta, cfg.threshold)]
    for b, t in tqdm(points, desc=f"{task}: beta x threshold", disable=not progress, leave=False):
        c, lp = scorer.score(chosen, b, t, cfg.min_queries)
        m = _means(c, lp)
        grid.append(GridPoint(task=task, beta=b, threshold=t, accuracy=round(m[0], 4), logprob=round(m[1], 4)))
        if _better(m, best):
            best, setting = m, Setting(chosen, b, t, c, lp)
    return setting, grid


def _measure(model: Model, heldout: list[MCQuestion], setting: Setting, cfg: SinksConfig) -> tuple[Setting, Setting]:
    """The held-out split scored once without and once with the chosen calibration."""
    keep = [min(l for l, _ in setting.heads)] if setting.heads else []
    held = Scorer(model, heldout, cfg.batch_size, keep)
    before_c, before_lp = held.score()
    before = Setting([], 1.0, 1.0, before_c, before_lp)
    if not setting.heads:
        return before, before
    act_c, act_lp = held.score(setting.heads, setting.beta, setting.threshold, cfg.min_queries)
    return before, replace(setting, correct=act_c, logp=act_lp)


def _intervals(calib_base: Setting, calib_act: Setting, before: Setting, act: Setting, groups: list[str],
               seed: int) -> dict[str, Interval]:
    """Wilson intervals of each accuracy and paired bootstraps of the held-out differences."""
    before_c, act_c = before.correct, act.correct
    return {
        "difference by group": group_difference(act_c, before_c, groups, seed),
        "base": wilson(int(before_c.sum()), len(before_c), split="test"),
        "act": wilson(int(act_c.sum()), len(act_c), split="test"),
        "difference": bootstrap_diff(act_c.float().tolist(), before_c.float().tolist(), seed=seed, split="test"),
        "logprob difference": bootstrap_diff(act.logp.tolist(), before.logp.tolist(), seed=seed, split="test"),
        "calibration base": wilson(int(calib_base.correct.sum()), len(calib_base.correct), split="calibration"),
        "calibration act": wilson(int(calib_act.correct.sum()), len(calib_act.correct), split="calibration"),
    }


def search_task(model: Model, task: str, calib: list[MCQuestion], heldout: list[MCQuestion], found: Discovery,
                cfg: SinksConfig, progress: bool) -> tuple[TaskCalibration, list[SearchStep], list[GridPoint], TaskExtras]:
    """ACT's choices on the calibration split of one task, then one held-out measurement."""
    strength = found["strength"]
    sink_heads = sorted(found["head_tokens"], key=lambda lh: (-float(strength[lh]), lh))
    candidates = [(l, h) for l, h in sink_heads if l >= cfg.min_layer][: cfg.max_search]
    scorer = Scorer(model, calib, cfg.batch_size, sorted({l for l, _ in candidates}))
    base_c, base_lp = scorer.score()
    calib_base = Setting([], 1.0, 1.0, base_c, base_lp)
    base = _means(base_c, base_lp)
    gains = _single_gains(scorer, candidates, base, cfg, task, progress)
    ranked = sorted(gains, key=lambda x: (-x[1], -x[2]))
    chosen = [lh for lh, g, gl in ranked if g > 0 or (g == 0 and gl > 0)][: cfg.max_heads]
    calib_act = replace(calib_base, beta=cfg.beta, threshold=cfg.threshold)
    grid: list[GridPoint] = []
    if chosen:
        best_single = (base[0] + ranked[0][1], base[1] + ranked[0][2])
        calib_act, grid = _tune(scorer, chosen, best_single, cfg, task, progress)
    del scorer
    before, act = _measure(model, heldout, calib_act, cfg)
    iv = _intervals(calib_base, calib_act, before, act, [q.group for q in heldout], cfg.seed)
    chance = 1.0 / n_options(task)
    row = TaskCalibration(
        task=task, chance=chance, n_calib=len(calib), n_heldout=len(heldout),
        candidates=[head_name(l, h) for l, h in candidates], heads=[head_name(l, h) for l, h in calib_act.heads],
        beta=calib_act.beta, threshold=calib_act.threshold, calib_before=base[0],
        calib_after=float(calib_act.correct.float().mean()), before=float(before.correct.float().mean()),
        after=float(act.correct.float().mean()), difference=float(act.correct.float().mean() - before.correct.float().mean()),
        logprob_before=float(before.logp.mean()), logprob_after=float(act.logp.mean()),
        base_above_chance=iv["base"].low > chance, changed=int((act.correct != before.correct).sum()))
    search = [SearchStep(task=task, name=head_name(l, h), accuracy_gain=round(g, 4), logprob_gain=round(gl, 4),
                         chosen=(l, h) in calib_act.heads) for (l, h), g, gl in gains]
    arrays = {"heldout_before": before.correct.to(torch.uint8), "heldout_after": act.correct.to(torch.uint8),
              "heldout_logp_before": before.logp.clone(), "heldout_logp_after": act.logp.clone()}
    return row, search, grid, {"intervals": iv, "arrays": arrays}
