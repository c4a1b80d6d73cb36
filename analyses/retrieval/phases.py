"""The retrieval run's first three phases: the ranking split scored and its heads ranked, the
decoding configurations chosen (before any held-out test is seen), and the held-out split
decoded under every configuration from one prefill per batch of tests."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from workbench.datasets.needles import NeedleTest
from workbench.heads import head_set_mask, random_heads, top_heads

from .config import RetrievalConfig
from .decoding import decode_all, decode_scored, prefilled, recalled
from .kv import kv_protected_groups
from .scoring import rouge1_recall, score_heads

Heads = list[tuple[int, int]]


# ---------------------------------------------------------------------------- 1. ranking
@dataclass
class Ranking:
    """The ranking split's retrieval scores (unpatched decoding) and the heads ranked by them."""

    per_test: Tensor  # [test layer head]
    recall: Tensor  # [test]
    answers: list[str]
    success: Tensor  # [test] the answer recalled the needle
    scores: Tensor  # [layer head] mean over counted tests
    ranked: Heads  # every head, best first
    retrieval: Heads  # over the threshold, best first


def rank_heads(model: Any, tests: list[NeedleTest], cfg: RetrievalConfig, stops: list[int],
               progress: bool) -> Ranking:
    """Decode every ranking test unpatched with the retrieval scorer, and rank the heads."""
    s = model.shape
    n_heads_total = s.n_layers * s.n_heads
    per_test = torch.zeros(len(tests), s.n_layers, s.n_heads)  # cpu: per-test results, gathered by row copies and floats
    recall = torch.zeros(len(tests))  # cpu: per-test results, gathered by row copies and floats
    answers = [""] * len(tests)
    for idx, state in prefilled(model, tests, cfg.batch_size, "ranking: prefill + scoring", progress):
        sc, texts = decode_scored(model, tests, idx, state, cfg, stops)
        for j, (i, text) in enumerate(zip(idx, texts)):
            per_test[i] = sc[j]
            answers[i] = text
            recall[i] = rouge1_recall(tests[i].needle.answer, text)
        del state
    success = recall > cfg.rouge_threshold
    scores = score_heads(per_test, success)
    return Ranking(per_test=per_test, recall=recall, answers=answers, success=success, scores=scores,
                   ranked=top_heads(scores, n_heads_total),
                   retrieval=top_heads(scores, n_heads_total, min_score=cfg.threshold))


# ---------------------------------------------------------------------------- 2. configurations
@dataclass
class Configurations:
    """The decoding configurations, all chosen before any held-out test is seen: the masks
    (top-k, then ``n_random`` random draws, per k) and the KV checks (top protected, then the
    random draws)."""

    ks: list[int]
    mask_cfgs: list[Tensor]  # each [layer head]
    mask_labels: list[tuple[str, int, int]]  # (top | random, k, draw)
    protect: Heads
    kv_heads: list[Heads]  # the protected heads, then each random draw
    kv_cfgs: Tensor  # [kv_config layer kv_head]

    def stacked(self, s: Any) -> tuple[Tensor, Tensor]:
        """Every configuration c as head masks [c layer head] and full-KV heads [c layer kv_head]:
        c = 0 unpatched (scored), then the masks, then the KV checks."""
        n_mask, n_kv = len(self.mask_cfgs), len(self.kv_heads)
        # cpu: head masks are built on the CPU and moved where they patch
        all_full = torch.ones(s.n_layers, s.n_kv_heads, dtype=torch.bool)
        # cpu: head masks are built on the CPU and moved where they patch
        no_mask = torch.zeros(s.n_layers, s.n_heads, dtype=torch.bool)
        head_masks = torch.stack([no_mask, *self.mask_cfgs, *([no_mask] * n_kv)])
        kv_full = torch.stack([all_full, *([all_full] * n_mask), *self.kv_cfgs])
        return head_masks, kv_full


def choose_configurations(ranked: Heads, retrieval: Heads, cfg: RetrievalConfig, s: Any,
                          rng: random.Random) -> Configurations:
    """The masks for every k and the KV checks, random heads drawn outside the top ones."""
    ks = [int(k) for k in cfg.mask_ks]
    exclude = set(ranked[: max(ks)]) | set(retrieval)
    mask_cfgs, mask_labels = [], []
    for k in ks:
        mask_cfgs.append(head_set_mask(ranked[:k], s.n_layers, s.n_heads))
        mask_labels.append(("top", k, 0))
        for d in range(cfg.n_random):
            mask_cfgs.append(head_set_mask(random_heads(s.n_layers, s.n_heads, k, rng, exclude), s.n_layers, s.n_heads))
            mask_labels.append(("random", k, d))
    protect = ranked[: cfg.kv_protect]
    kv_heads = [protect] + [random_heads(s.n_layers, s.n_heads, len(protect), rng, set(protect)) if protect else []
                            for _ in range(cfg.n_random)]
    kv_cfgs = torch.stack([kv_protected_groups(h, s.n_layers, s.n_heads, s.n_kv_heads) for h in kv_heads])
    return Configurations(ks=ks, mask_cfgs=mask_cfgs, mask_labels=mask_labels, protect=protect, kv_heads=kv_heads,
                          kv_cfgs=kv_cfgs)


# ---------------------------------------------------------------------------- 3. held-out scoring, masking, KV
@dataclass
class Heldout:
    """The held-out split decoded under every configuration: the unpatched scores and answers,
    and which tests each mask and each KV check still recalls."""

    per_test: Tensor  # [test layer head]
    recall: Tensor  # [test]
    answers: list[str]
    mask_success: Tensor  # [test mask_config] bool
    kv_success: Tensor  # [test kv_config] bool
    success: Tensor  # [test] unpatched
    scores: Tensor  # [layer head]


def decode_heldout(model: Any, tests: list[NeedleTest], configs: Configurations, cfg: RetrievalConfig,
                   stops: list[int], progress: bool) -> Heldout:
    """Every configuration decoded from one prefill per batch of tests, in one call where
    decode_rows allows: c = 0 unpatched (scored), then the masks, then the KV checks."""
    s = model.shape
    n_mask, n_kv = len(configs.mask_cfgs), len(configs.kv_heads)
    head_masks, kv_full = configs.stacked(s)
    n_cfg = 1 + n_mask + n_kv
    per_test = torch.zeros(len(tests), s.n_layers, s.n_heads)  # cpu: per-test results, gathered by row copies and floats
    recall = torch.zeros(len(tests))  # cpu: per-test results, gathered by row copies and floats
    answers = [""] * len(tests)
    # cpu: per-test results, gathered by row copies and floats
    mask_success = torch.zeros(len(tests), n_mask, dtype=torch.bool)
    # cpu: per-test results, gathered by row copies and floats
    kv_success = torch.zeros(len(tests), n_kv, dtype=torch.bool)
    held_batch = max(1, cfg.decode_rows // n_cfg)
    for idx, state in prefilled(model, tests, held_batch, "held-out: prefill, scoring, masking, KV", progress):
        sc, texts = decode_all(model, tests, idx, state, cfg, stops, head_masks, kv_full)
        for j, i in enumerate(idx):
            per_test[i] = sc[j]
            answers[i] = texts[j][0]
            recall[i] = rouge1_recall(tests[i].needle.answer, texts[j][0])
            for c in range(n_mask):
                mask_success[i, c] = recalled(tests[i], texts[j][1 + c], cfg.rouge_threshold)
            for c in range(n_kv):
                kv_success[i, c] = recalled(tests[i], texts[j][1 + n_mask + c], cfg.rouge_threshold)
        del state
    success = recall > cfg.rouge_threshold
    return Heldout(per_test=per_test, recall=recall, answers=answers, mask_success=mask_success,
                   kv_success=kv_success, success=success, scores=score_heads(per_test, success))
