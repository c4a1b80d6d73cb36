"""The retrieval run's last phase: every figure with its interval on the held-out split (the
masking curves, the KV check, the needle grid), the scores' replication, the splits' summary."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from workbench.datasets.needles import NeedleSet, NeedleTest
from workbench.heads import head_name, top_heads
from workbench.stats import Interval, bootstrap, bootstrap_diff, spearman, wilson

from .config import RetrievalConfig
from .decoding import mean_over_draws
from .kv import kv_share_kept
from .phases import Configurations, Heldout, Ranking
from .result import KVCheck, MaskingCurves, Replication, SplitInfo


@dataclass
class Intervals:
    """Every figure's interval, on the held-out split, by the name the report shows (in the
    order it shows them), and the curves' points."""

    named: dict[str, Interval]
    base: Interval  # unmasked held-out accuracy
    top: list[Interval]  # k = 0, then each k
    random: list[Interval | None]  # k = 0, then each k (None without random draws)
    random_draws: Tensor  # [k draw] accuracy of each random draw
    kv: Interval | None = None
    kv_random: Interval | None = None


def masking_intervals(ranking: Ranking, held: Heldout, configs: Configurations, cfg: RetrievalConfig) -> Intervals:
    """Unmasked accuracy on both splits, then per k: top-k masked (Wilson), k random heads
    masked (bootstrap over tests, each test averaged over the draws) and their difference."""
    n_held = len(held.answers)
    base = wilson(int(held.success.sum()), n_held, split="heldout")
    named = {"needle accuracy, unmasked (held-out)": base,
             "needle accuracy, unmasked (ranking)": wilson(int(ranking.success.sum()), len(ranking.answers),
                                                           split="ranking")}
    top_iv: list[Interval] = [base]
    rand_iv: list[Interval | None] = [base]
    rand_draws = torch.zeros(len(configs.ks), cfg.n_random)  # cpu: a result array
    for k_i, k in enumerate(configs.ks):
        top = held.mask_success[:, configs.mask_labels.index(("top", k, 0))]
        iv = wilson(int(top.sum()), n_held, split="heldout")
        top_iv.append(iv)
        named[f"top-{k} retrieval heads masked"] = iv
        if cfg.n_random:
            cols = [configs.mask_labels.index(("random", k, d)) for d in range(cfg.n_random)]
            per = mean_over_draws(held.mask_success[:, cols])
            rand_draws[k_i] = held.mask_success[:, cols].float().mean(0)
            riv = bootstrap(per, seed=cfg.seed, split="heldout")
            rand_iv.append(riv)
            named[f"{k} random heads masked ({cfg.n_random} draws)"] = riv
            named[f"top-{k} minus random, accuracy"] = bootstrap_diff(top.float().tolist(), per.tolist(),
                                                                       seed=cfg.seed, split="heldout")
        else:
            rand_iv.append(None)
    return Intervals(named=named, base=base, top=top_iv, random=rand_iv, random_draws=rand_draws)


def add_kv_intervals(iv: Intervals, held: Heldout, configs: Configurations, cfg: RetrievalConfig) -> None:
    """The KV check's accuracy with the top heads protected (Wilson), with random heads
    protected (bootstrap over tests) and their difference, added to ``iv``."""
    n_protect = len(configs.protect)
    kv_top = held.kv_success[:, 0]
    iv.kv = wilson(int(kv_top.sum()), len(held.answers), split="heldout")
    iv.named[f"KV compression, top {n_protect} heads protected"] = iv.kv
    if cfg.n_random:
        kv_rand = mean_over_draws(held.kv_success[:, 1:])
        iv.kv_random = bootstrap(kv_rand, seed=cfg.seed, split="heldout")
        iv.named[f"KV compression, {n_protect} random heads protected ({cfg.n_random} draws)"] = iv.kv_random
        iv.named["KV compression, top minus random protected"] = bootstrap_diff(
            kv_top.float().tolist(), kv_rand.tolist(), seed=cfg.seed, split="heldout")


def replication(ranking: Ranking, held: Heldout, n_heads_total: int) -> tuple[Interval, Replication]:
    """How the ranking scores replicate on the held-out split: Spearman over heads, and the
    overlap of the top heads."""
    with warnings.catch_warnings():  # constant scores (no head ever copies) give an undefined rho: NaN, said so
        warnings.simplefilter("ignore")
        rho = spearman(ranking.scores.flatten().tolist(), held.scores.flatten().tolist(),
                       split="ranking vs heldout")
    top_n = max(1, min(len(ranking.retrieval), 10)) if ranking.retrieval else 10
    held_ranked = top_heads(held.scores, n_heads_total)
    overlap = len(set(ranking.ranked[:top_n]) & set(held_ranked[:top_n]))
    return rho, Replication(spearman=_finite(rho.value), spearman_low=_finite(rho.low), spearman_high=_finite(rho.high),
                            top_n=top_n, top_overlap=overlap,
                            heldout_top_heads=[head_name(l, h) for l, h in held_ranked[:top_n]],
                            n_heldout_counted=int(held.success.sum()))


def masking_curves(iv: Intervals, ranking: Ranking, configs: Configurations, cfg: RetrievalConfig,
                   n_held: int) -> MaskingCurves:
    nan = float("nan")
    return MaskingCurves(
        k=[0] + configs.ks,
        top_accuracy=[i.value for i in iv.top],
        random_accuracy=[i.value if i is not None else nan for i in iv.random],
        top_heads=[head_name(l, h) for l, h in ranking.ranked[: max(configs.ks)]],
        mode=cfg.mask_mode,
        top_low=[i.low for i in iv.top], top_high=[i.high for i in iv.top],
        random_low=[i.low if i is not None else nan for i in iv.random],
        random_high=[i.high if i is not None else nan for i in iv.random],
        n_tests=n_held, n_random=cfg.n_random, split="heldout")


def kv_check(iv: Intervals, configs: Configurations, cfg: RetrievalConfig, tests: list[NeedleTest]) -> KVCheck:
    nan = float("nan")
    assert iv.kv is not None  # add_kv_intervals ran
    kv_cfgs = configs.kv_cfgs
    prompt_lens = torch.tensor([len(t.ids) for t in tests])  # cpu: prompt lengths from Python ints
    return KVCheck(
        protected_heads=[head_name(l, h) for l, h in configs.protect],
        random_protected_heads=[[head_name(l, h) for l, h in draw] for draw in configs.kv_heads[1:]],
        full_kv_heads=int(kv_cfgs[0].sum()),
        n_kv_heads=int(kv_cfgs[0].numel()),
        cache_kept=kv_share_kept(kv_cfgs[0], prompt_lens, cfg.kv_sink, cfg.kv_window),
        accuracy=iv.kv.value,
        random_protected_cache_kept=(float(np.mean([kv_share_kept(c, prompt_lens, cfg.kv_sink, cfg.kv_window)
                                                    for c in kv_cfgs[1:]])) if cfg.n_random else nan),
        random_protected_accuracy=iv.kv_random.value if iv.kv_random is not None else nan,
        full_cache_accuracy=iv.base.value,
        sink=cfg.kv_sink, window=cfg.kv_window,
        n_tests=len(tests), n_random=cfg.n_random, split="heldout")


def split_info(name: str, ns: NeedleSet, acc: float, used: str) -> SplitInfo:
    lens = [len(t.ids) for t in ns.tests]
    return SplitInfo(name=name, n_tests=len(ns), n_needles=int(ns.meta["n_needles"]), haystack=ns.source,
                     context_lengths=list(ns.context_lengths), prompt_tokens=[min(lens), max(lens)], accuracy=acc,
                     used_for=used)


def needle_grid(held_set: NeedleSet, success: Tensor) -> Tensor:
    """Held-out unmasked accuracy over (context length, depth) [length depth], averaged over needles."""
    L, D = held_set.context_lengths, held_set.depths
    grid = torch.zeros(len(L), len(D))  # cpu: a result grid
    count = torch.zeros(len(L), len(D))  # cpu: a result grid
    for i, t in enumerate(held_set.tests):
        a, b = L.index(t.context_length), D.index(t.depth)
        grid[a, b] += float(success[i])
        count[a, b] += 1
    return grid / count.clamp(min=1)


def _finite(x: float) -> float | None:
    """None for NaN (constant scores: no head ever copied), so the saved JSON compares equal."""
    return float(x) if np.isfinite(x) else None


FIGURE_SPLITS = {"retrieval scores and head ranking": "ranking", "retrieval heads over threshold": "ranking",
                 "masking curves": "heldout", "KV compression": "heldout", "needle grid": "heldout",
                 "unmasked needle accuracy": "heldout", "score replication": "ranking vs heldout"}
