"""Retrieval heads (Wu et al., "Retrieval Head Mechanistically Explains Long-Context
Factuality"), their causal test, and a RazorAttention-style KV-cache compression check,
with the heads chosen on one split of needle tests and judged on another.

Retrieval score, as in the authors' ``retrieval_head_detection.py``: decode greedily; at
every step, for every head, take the argmax of the newest query's attention; when it
lands inside the needle's answer span and the prompt token there is the token being
generated at this step, add 1/(answer length) to the head's score for this test. A test
counts only when the answer recalls the needle (ROUGE-1 recall > 0.5); a head's score is
its mean over counted tests; heads over 0.1 are retrieval heads.

Splits (``workbench.datasets.needles.split_tests``): the heads are scored and ranked on the
*ranking* tests (``--needles`` of the ranking needles in one half of the Python docs) and
every causal figure is measured on the *held-out* tests (``--eval-needles`` other needles
in the other half of the docs): no needle and no haystack text is shared. The held-out
tests are scored too, to show how well the ranking replicates.

Causal test (held-out): mask the top-k retrieval heads, and k random heads outside the
top ones (``--random`` draws per k), during decoding (Wu et al. mask in the decode steps by
zeroing the head's query, so it attends uniformly), and report needle accuracy (share of
held-out tests recalled) over k, with Wilson intervals (top) and bootstrap intervals over
tests (random: each test's success averaged over the draws).

KV compression (RazorAttention, held-out): during decoding, keep the full cache for the KV
heads of the top retrieval heads and only ``sink`` first tokens plus a recent ``window`` for
every other KV head (no compensation token); needle accuracy and the share of cache kept,
against the same number of random heads protected (``--random`` draws).

One prefill per test serves every decoding configuration (the cache is repeated); tests
are prefilled ``--batch-size`` at a time and dropped once decoded, so memory does not
grow with the number of tests.

Layout: the settings in ``config.py``, ROUGE and the scorer in ``scoring.py``, the KV
bookkeeping in ``kv.py``, the decoding in ``decoding.py``, the run's phases in ``phases.py``
(ranking, configurations, held-out) and ``summary.py`` (intervals and figures), the Result in
``result.py``; ``run`` here strings the phases together, and the public names stay importable here.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import torch

from workbench.datasets.needles import split_tests
from workbench.generation import newline_stop_ids
from workbench.heads import head_name
from workbench.results import provenance
from workbench.checks import checked_run

# the rooms the run uses; their public names stay importable from here
from .config import FIXED_BYTES, RetrievalConfig, check_model, estimate_bytes, validate
from .kv import kv_compression_patches, kv_protected_groups, kv_share_kept
from .phases import choose_configurations, decode_heldout, rank_heads
from .result import KVCheck, MaskingCurves, Replication, RetrievalHead, RetrievalResult, SplitInfo
from .scoring import RetrievalScorer, rouge1_recall, score_heads
from .summary import (FIGURE_SPLITS, add_kv_intervals, kv_check, masking_curves, masking_intervals, needle_grid,
                      replication, split_info)

if TYPE_CHECKING:
    from workbench.models import Model

__all__ = ["FIXED_BYTES", "KVCheck", "MaskingCurves", "Replication", "RetrievalConfig", "RetrievalHead",
           "RetrievalResult", "RetrievalScorer", "SplitInfo", "check_model", "estimate_bytes", "kv_compression_patches",
           "kv_protected_groups", "kv_share_kept", "rouge1_recall", "run", "score_heads", "validate"]


# ---------------------------------------------------------------------------- run
@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: RetrievalConfig | None = None, progress: bool = True) -> RetrievalResult:
    """Score every head on the ranking split; then, on the held-out split, the unmasked
    accuracy and scores, the masking curves and the KV check."""
    cfg = config or RetrievalConfig()
    validate(cfg, model)
    s = model.shape
    n_heads_total = s.n_layers * s.n_heads
    rank_set, held_set = split_tests(model.tokenizer, list(cfg.context_lengths), list(cfg.depths), cfg.n_needles,
                                     cfg.n_eval_needles, haystack_file=cfg.haystack_file, n_ctx=s.n_ctx, chat=cfg.chat)
    stops = newline_stop_ids(model.tokenizer)
    ranking = rank_heads(model, rank_set.tests, cfg, stops, progress)  # 1. ranking split
    configs = choose_configurations(ranking.ranked, ranking.retrieval, cfg, s, random.Random(cfg.seed))  # 2.
    held = decode_heldout(model, held_set.tests, configs, cfg, stops, progress)  # 3. held-out split
    iv = masking_intervals(ranking, held, configs, cfg)  # 4. figures with their intervals, all held-out
    add_kv_intervals(iv, held, configs, cfg)
    rho, replicated = replication(ranking, held, n_heads_total)
    masking = masking_curves(iv, ranking, configs, cfg, len(held_set.tests))
    rank_accuracy = float(ranking.success.float().mean())
    result = RetrievalResult(
        config=cfg, scores=ranking.scores,
        retrieval_heads=[RetrievalHead(name=head_name(l, h), layer=l, head=h, score=round(float(ranking.scores[l, h]), 6))
                         for l, h in ranking.retrieval],
        masking=masking, share_over_threshold=len(ranking.retrieval) / n_heads_total,
        n_retrieval_heads=len(ranking.retrieval), n_tests=len(rank_set.tests), n_counted=int(ranking.success.sum()),
        needle_accuracy=rank_accuracy, heldout_accuracy=iv.base.value,
        mean_recall=float(held.recall.mean()), kv_compression=kv_check(iv, configs, cfg, held_set.tests),
        context_lengths=held_set.context_lengths, depths=held_set.depths,
        answers=held.answers, ranking_answers=ranking.answers, haystack=held_set.source,
        splits={"ranking": split_info("ranking", rank_set, rank_accuracy,
                                      "retrieval scores, the head ranking, the retrieval-head list"),
                "heldout": split_info("heldout", held_set, iv.base.value,
                                      "masking curves, KV compression, needle grid, replication of the scores")},
        figure_splits=dict(FIGURE_SPLITS), replication=replicated,
        heldout_scores=held.scores, per_test_scores=ranking.per_test, recall=ranking.recall,
        heldout_recall=held.recall, needle_grid=needle_grid(held_set, held.success),
        # cpu: result arrays
        masking_top=torch.tensor(masking.top_accuracy), masking_random=torch.tensor(masking.random_accuracy),
        masking_random_draws=iv.random_draws, mask_success=held.mask_success.to(torch.uint8),
        kv_success=held.kv_success.to(torch.uint8), meta=provenance(model=model.name, seed=cfg.seed))
    for name, interval in iv.named.items():
        result.set_interval(name, interval)
    if np.isfinite(rho.value) and np.isfinite(rho.low):
        result.set_interval("Spearman, ranking vs held-out head scores (heads as samples)", rho)
    return result
