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
"""
from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor
from tqdm.auto import tqdm

from workbench.datasets.needles import HELDOUT_NEEDLES, RANKING_NEEDLES, NeedleSet, NeedleTest, read_haystack, split_tests
from workbench.errors import InputError
from workbench.generation import Prefill, decode, newline_stop_ids, prefill
from workbench.names import act_name
from workbench.heads import MASK_MODES, head_name, head_set_mask, mask_patches, random_heads, top_heads
from workbench.results import Result, provenance
from workbench.spec import option
from workbench.stats import Interval, bootstrap, bootstrap_diff, spearman, wilson
from workbench.checks import checked_run


@dataclass
class RetrievalConfig:
    context_lengths: tuple[int, ...] = option((256,), flag="--lengths",
                                              help="comma-separated context lengths (tokens), both splits", min=1)
    depths: tuple[float, ...] = option((25, 50, 75), help="comma-separated needle depths (percent)", min=0, max=100)
    n_needles: int = option(4, flag="--needles", help=f"ranking needles: heads are scored on these "
                            f"(1-{len(RANKING_NEEDLES)})", min=1, max=len(RANKING_NEEDLES))
    n_eval_needles: int = option(16, flag="--eval-needles", help=f"held-out needles, in another haystack: masking and "
                                 f"KV compression are measured on these (1-{len(HELDOUT_NEEDLES)})",
                                 min=1, max=len(HELDOUT_NEEDLES))
    haystack_file: str | None = option(None, flag="--haystack",
                                       help="a text file to use as haystack, its first half for ranking and its "
                                            "second half held out (default: the Python docs, topics dealt in two)")
    chat: bool = option(True, help="wrap prompts in the tokenizer's chat template")
    max_new_tokens: int = option(24, help="answer tokens decoded at most", min=1)
    # the two thresholds are range-checked in validate() (its "outside 0..1" message is the documented one)
    threshold: float = option(0.1, help="retrieval heads score over this (0..1)")
    rouge_threshold: float = option(0.5, help="a test counts when the answer's ROUGE-1 recall is over this (0..1)")
    mask_ks: tuple[int, ...] = option((2, 5, 10), flag="--ks", help="comma-separated numbers of heads to mask",
                                      min=1)
    n_random: int = option(2, flag="--random", help="random-head draws per k (and for the KV control)", min=0)
    mask_mode: str = option("query", help="query (Wu et al.: uniform attention) | zero (z = 0)", choices=MASK_MODES)
    kv_protect: int = option(20, help="top retrieval heads that keep the full KV cache", min=0)
    kv_sink: int = option(4, help="first tokens kept by compressed heads", min=0)
    kv_window: int = option(64, help="recent tokens kept by compressed heads", min=1)
    batch_size: int = option(4, help="ranking needle prompts per prefill forward pass (held-out: as many as "
                                     "--decode-rows holds with all their decoding configurations)", min=1)
    decode_rows: int = option(52, help="rows (tests x decoding configurations) decoded together", min=1)
    seed: int = 0
    renamed: ClassVar[dict[str, str]] = {"prefill_batch": "batch_size"}

    def validate(self, model: Any | None = None) -> None:
        """One-line errors for settings a user can fix, before the model loads (and, given
        the model, the masking ks against its head count); an unreadable haystack file too."""
        for name in ("threshold", "rouge_threshold"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name}={v} is outside 0..1; pass a value between 0 and 1")
        if self.mask_mode not in MASK_MODES:
            raise InputError(f"unknown mask mode '{self.mask_mode}'; choose one of {', '.join(MASK_MODES)}")
        if not 1 <= self.n_needles <= len(RANKING_NEEDLES):
            raise InputError(f"n_needles={self.n_needles}; choose 1..{len(RANKING_NEEDLES)}")
        if not 1 <= self.n_eval_needles <= len(HELDOUT_NEEDLES):
            raise InputError(f"n_eval_needles={self.n_eval_needles}; choose 1..{len(HELDOUT_NEEDLES)}")
        if self.max_new_tokens < 1 or self.n_random < 0 or self.kv_sink < 0 or self.kv_window < 1:
            raise InputError("max_new_tokens and kv_window must be >= 1, n_random and kv_sink >= 0")
        if not self.context_lengths or not self.depths or not self.mask_ks:
            raise InputError("--lengths, --depths and --ks each need at least one value")
        if self.haystack_file is not None:
            read_haystack(self.haystack_file)
        if model is not None:
            total = model.shape.n_layers * model.shape.n_heads
            bad = [k for k in self.mask_ks if not 0 < int(k) <= total // 2]
            if bad:
                raise InputError(f"--ks {','.join(map(str, bad))}: masking k heads outside 1..{total // 2} "
                                 f"(half of the {total} heads); choose smaller k")

    @property
    def n_ranking_tests(self) -> int:
        return self.n_needles * len(self.context_lengths) * len(self.depths)

    @property
    def n_heldout_tests(self) -> int:
        return self.n_eval_needles * len(self.context_lengths) * len(self.depths)


def validate(config: RetrievalConfig, model: Any | None = None) -> None:
    """``config.validate(model)``: the checks as a function."""
    config.validate(model)


def check_model(config: RetrievalConfig, model: Any) -> None:
    """The spec's check before a run: the masking ks (``validate``), every context length
    within the model's context, and ``--kv-protect``: the KV check protects that many top
    heads and draws as many random heads outside them for its control, so at most half the heads."""
    config.validate(model)
    s = model.shape
    longest = max(int(v) for v in config.context_lengths)
    if longest > s.n_ctx:
        raise InputError(f"--lengths {longest} is longer than {model.name}'s context of {s.n_ctx} tokens; "
                         f"choose lengths up to {s.n_ctx}")
    total = s.n_layers * s.n_heads
    if config.kv_protect > total // 2:
        raise InputError(f"--kv-protect {config.kv_protect} protects that many heads and draws as many random heads "
                         f"for the control, but {model.name} has {total} heads; choose --kv-protect {total // 2} or less")


# ---------------------------------------------------------------------------- ROUGE
def _tokens(text: str) -> list[str]:
    return [t for t in re.sub(r"[^a-z0-9]+", " ", text.lower()).split() if t]


def rouge1_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall of ``prediction`` against ``reference`` (Google's rouge-score with the
    Porter stemmer, as the reference code uses; a plain unigram fallback without it)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - rouge-score is a dependency
        from collections import Counter

        ref, pred = Counter(_tokens(reference)), Counter(_tokens(prediction))
        total = sum(ref.values())
        return sum(min(c, pred[t]) for t, c in ref.items()) / total if total else 0.0
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return float(_SCORER.score(reference, prediction)["rouge1"].recall)


_SCORER = None


# ---------------------------------------------------------------------------- scoring
class RetrievalScorer:
    """The per-step retrieval-score update, fed by ``generation.decode``'s ``on_step``.

    ``spans`` [rows 2] are the answer spans in the left-padded prompt coordinates;
    ``prompt_ids`` [rows pos] the padded prompts. ``scores`` [rows layer head]."""

    def __init__(self, prompt_ids: torch.Tensor, spans: torch.Tensor, n_layers: int, n_heads: int, max_steps: int):
        self.n_layers = n_layers
        rows = prompt_ids.shape[0]
        self.seq = torch.cat([prompt_ids, torch.zeros(rows, max_steps, dtype=torch.long, device=prompt_ids.device)], 1)
        self.prompt_len = prompt_ids.shape[1]
        spans = spans.to(prompt_ids.device)  # made from Python lists; compared with the patterns' argmax
        self.start, self.end = spans[:, 0], spans[:, 1]
        self.inc = 1.0 / (self.end - self.start).clamp(min=1).float()
        self.scores = torch.zeros(rows, n_layers, n_heads, device=prompt_ids.device)

    def names(self) -> list[str]:
        return [act_name("pattern", l) for l in range(self.n_layers)]

    def __call__(self, step: int, read: dict[str, torch.Tensor], token: torch.Tensor, active: torch.Tensor) -> None:
        # pattern [rows head key]: the newest query's attention at this step
        top = torch.stack([read[act_name("pattern", l)].argmax(-1) for l in range(self.n_layers)], 1)
        rows = torch.arange(top.shape[0], device=top.device)[:, None, None]
        at = self.seq[rows, top]  # token ids at the argmax positions [rows layer head]
        inside = (top >= self.start[:, None, None]) & (top < self.end[:, None, None])
        hit = inside & (at == token[:, None, None]) & active[:, None, None]
        self.scores += hit.float() * self.inc[:, None, None]
        self.seq[:, self.prompt_len + step] = token


def score_heads(per_test: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Head scores [layer head]: the mean of per-test scores [tests layer head] over counted tests."""
    if not counted.any():
        return torch.zeros(per_test.shape[1:])  # cpu: per-test scores are gathered on the CPU
    return per_test[counted].mean(0)


# ---------------------------------------------------------------------------- KV compression
def kv_protected_groups(heads: list[tuple[int, int]], n_layers: int, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """[layer kv_head] True where a KV head serves at least one protected query head."""
    group = n_heads // n_kv_heads
    # cpu: a head list's mask, like the head list; moved where it patches
    full = torch.zeros(n_layers, n_kv_heads, dtype=torch.bool)
    for l, h in heads:
        full[l, h // group] = True
    return full


def kv_compression_patches(full_kv: torch.Tensor, n_cfg: int, n_heads: int, pad_offsets: torch.Tensor,
                           sink: int, window: int) -> dict[str, Callable]:
    """Score patches (``blocks.{l}.attn.hook_attn_scores`` [rows head 1 key]) that hide, for
    compressed heads, every key but the first ``sink`` real tokens and the last ``window``.
    ``full_kv`` [C layer kv_head]; row r is configuration ``r % C`` and prompt ``r // C``."""
    n_kv = full_kv.shape[2]
    group = n_heads // n_kv
    full_q = full_kv.repeat_interleave(group, dim=2)  # [C layer head]
    patches = {}
    for layer in range(full_kv.shape[1]):
        if bool(full_q[:, layer].all()):
            continue
        keep_full = full_q[:, layer]

        def fn(scores: torch.Tensor, keep_full=keep_full) -> torch.Tensor:
            rows, _, _, k = scores.shape
            cfg = torch.arange(rows, device=scores.device) % n_cfg
            off = pad_offsets.to(scores.device).repeat_interleave(n_cfg)[:, None]  # [rows 1]
            pos = torch.arange(k, device=scores.device)[None]
            kept = ((pos >= off) & (pos < off + sink)) | (pos >= k - window)  # [rows key]
            visible = keep_full.to(scores.device)[cfg][:, :, None] | kept[:, None, :]  # [rows head key]
            return scores.masked_fill(~visible[:, :, None, :], torch.finfo(scores.dtype).min)

        patches[act_name("attn_scores", layer)] = fn
    return patches


def kv_share_kept(full_kv: torch.Tensor, prompt_lens: torch.Tensor, sink: int, window: int) -> float:
    """Share of the prompt's KV cache kept: full KV heads keep every token, the others
    ``min(len, sink + window)``; averaged over prompts. ``full_kv`` [layer kv_head]."""
    n = full_kv.numel()
    n_full = int(full_kv.sum())
    kept = [(n_full * L + (n - n_full) * min(L, sink + window)) / (n * L) for L in prompt_lens.tolist()]
    return float(sum(kept) / len(kept))


# ---------------------------------------------------------------------------- result
@dataclass(frozen=True)
class MaskingCurves:
    """Held-out needle accuracy over the number of masked heads (k = 0 is the unmasked
    model), top-k retrieval heads against k random heads (mean over draws), with the
    intervals' bounds, the number of held-out tests and the split the figures come from."""

    k: list[int]
    top_accuracy: list[float]
    random_accuracy: list[float]
    top_heads: list[str]
    mode: str = "query"
    top_low: list[float] = field(default_factory=list)
    top_high: list[float] = field(default_factory=list)
    random_low: list[float] = field(default_factory=list)
    random_high: list[float] = field(default_factory=list)
    n_tests: int = 0
    n_random: int = 0
    split: str = ""


@dataclass(frozen=True, kw_only=True)
class KVCheck:
    """The RazorAttention-style check: cache kept and needle accuracy for the top retrieval
    heads protected, the same budget on random heads (mean over draws), and the full cache."""

    protected_heads: list[str]
    random_protected_heads: list[list[str]] = field(default_factory=list)
    full_kv_heads: int
    n_kv_heads: int
    cache_kept: float
    accuracy: float
    random_protected_cache_kept: float
    random_protected_accuracy: float
    full_cache_accuracy: float
    sink: int
    window: int
    n_tests: int = 0
    n_random: int = 0
    split: str = ""


@dataclass(frozen=True)
class SplitInfo:
    """One split of needle tests: how many, on which needles and haystack, and what it gives."""

    name: str
    n_tests: int
    n_needles: int
    haystack: str
    context_lengths: list[int]
    prompt_tokens: list[int]
    accuracy: float
    used_for: str


@dataclass(kw_only=True)
class RetrievalResult(Result):
    """Every head's retrieval score on the ranking split, and on the held-out split the
    masking curves, the KV-compression check, the needle grid and the scores' replication."""

    analysis = "retrieval"

    config: RetrievalConfig
    scores: Float[Tensor, "layer head"]  # retrieval scores on the ranking split (the heads are chosen by these)
    retrieval_heads: list[dict[str, Any]]  # over the threshold on the ranking split, best first: name, layer, head, score
    masking: MaskingCurves
    share_over_threshold: float  # share of all heads whose retrieval score (ranking split) is over the threshold
    n_retrieval_heads: int
    n_tests: int  # ranking tests (the scores average over the counted ones)
    n_counted: int  # ranking tests whose answer recalled the needle
    needle_accuracy: float  # unmasked, on the ranking split
    heldout_accuracy: float  # unmasked, on the held-out split (k = 0 of the masking curve)
    mean_recall: float
    kv_compression: KVCheck
    context_lengths: list[int]
    depths: list[float]
    answers: list[str]  # the unmasked model's decoded answer per held-out test (per ranking test in older runs)
    ranking_answers: list[str] = field(default_factory=list)
    haystack: str = ""
    splits: dict[str, SplitInfo] = field(default_factory=dict)  # ranking and held-out (empty before the splits)
    figure_splits: dict[str, str] = field(default_factory=dict)  # which split each reported figure comes from
    # how the ranking scores replicate on the held-out split: Spearman over heads, overlap of the top heads
    replication: dict[str, Any] = field(default_factory=dict)
    heldout_scores: Float[Tensor, "layer head"]  # the scores measured again on the held-out split
    per_test_scores: Float[Tensor, "test layer head"]
    recall: Float[Tensor, " test"]
    heldout_recall: Float[Tensor, " heldout_test"]
    needle_grid: Float[Tensor, "length depth"]  # unmasked held-out accuracy (averaged over needles)
    masking_top: Float[Tensor, " k"]
    masking_random: Float[Tensor, " k"]
    masking_random_draws: Tensor
    mask_success: UInt8[Tensor, "heldout_test config"]
    kv_success: UInt8[Tensor, "heldout_test kv_config"]

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Runs saved before the splits had no held-out scores or accuracy."""
        metrics.setdefault("heldout_accuracy", metrics.get("needle_accuracy"))
        if "scores" in arrays:
            arrays.setdefault("heldout_scores", torch.zeros_like(arrays["scores"]))
        return metrics, arrays

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {"scores": [[round(float(v), 6) for v in row] for row in self.scores],
               "retrieval_heads": data["retrieval_heads"], "masking": data["masking"]}
        out |= {k: data[k] for k in ("kv_compression", "splits", "figure_splits", "replication") if data.get(k)}
        if self.path is not None:
            out["run"] = str(self.path)
        return out


# ---------------------------------------------------------------------------- decoding
def _prefilled(model: Any, tests: list[NeedleTest], batch_size: int, desc: str, progress: bool):
    """Yield (test indices, Prefill) ``batch_size`` tests at a time, similar lengths together;
    each state is dropped by the caller once decoded."""
    order = sorted(range(len(tests)), key=lambda i: len(tests[i].ids))
    for b in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[b:b + batch_size]
        yield idx, prefill(model, [tests[i].ids for i in idx])


def _spans(tests: list[NeedleTest], idx: list[int], state: Prefill) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer spans in the left-padded coordinates [rows 2] and the pad offsets [rows]."""
    # cpu: answer spans from Python lists; the scorer moves them to the prompt's device
    off = torch.tensor([state.prompt_len - len(tests[i].ids) for i in idx])
    # cpu: answer spans from Python lists; the scorer moves them to the prompt's device
    spans = torch.tensor([[tests[i].answer_start, tests[i].answer_end] for i in idx]) + off[:, None]
    return spans, off


def _score(model: Any, tests: list[NeedleTest], idx: list[int], state: Prefill, cfg: RetrievalConfig,
           stops: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Unpatched greedy decoding with the retrieval scorer: per-test scores [rows layer head], answers."""
    s = model.shape
    spans, _ = _spans(tests, idx, state)
    scorer = RetrievalScorer(state.input_ids, spans, s.n_layers, s.n_heads, cfg.max_new_tokens)
    gen = decode(model, state, cfg.max_new_tokens, stops, read=scorer.names(), on_step=scorer)
    return scorer.scores, gen.texts(model.tokenizer)


def _decode_all(model: Any, tests: list[NeedleTest], idx: list[int], state: Prefill, cfg: RetrievalConfig,
                stops: list[int], head_masks: torch.Tensor, kv_full: torch.Tensor) -> tuple[torch.Tensor, list[list[str]]]:
    """Decode the state's tests under every configuration c: heads ``head_masks[c]`` [layer head]
    masked and KV heads outside ``kv_full[c]`` [layer kv_head] compressed (configuration 0 is
    the unpatched model), in as few calls as ``decode_rows`` allows: the weights are read once
    per step for all rows. Returns the unpatched rows' retrieval scores [tests layer head]
    and texts[test][configuration]."""
    s = model.shape
    n_tests, n_cfg = len(idx), head_masks.shape[0]
    spans, off = _spans(tests, idx, state)
    per = max(1, cfg.decode_rows // max(1, n_tests))
    texts = [[""] * n_cfg for _ in range(n_tests)]
    # cpu: per-test scores, gathered by row copies (a row copy crosses devices)
    scores = torch.zeros(n_tests, s.n_layers, s.n_heads)
    for g in range(0, n_cfg, per):
        group = list(range(g, min(g + per, n_cfg)))
        rep = len(group)
        patches = dict(mask_patches(head_masks[group], cfg.mask_mode)) if head_masks[group].any() else {}
        if not bool(kv_full[group].all()):
            patches.update(kv_compression_patches(kv_full[group], rep, s.n_heads, off, cfg.kv_sink, cfg.kv_window))
        scorer = None
        if 0 in group:  # rows are test-major: row r is test r // rep under configuration group[r % rep]
            scorer = RetrievalScorer(state.input_ids.repeat_interleave(rep, 0), spans.repeat_interleave(rep, 0),
                                     s.n_layers, s.n_heads, cfg.max_new_tokens)
        gen = decode(model, state, cfg.max_new_tokens, stops, patches=patches, repeat=rep,
                     read=scorer.names() if scorer else (), on_step=scorer)
        out = gen.texts(model.tokenizer)
        for j in range(n_tests):
            for c_i, c in enumerate(group):
                texts[j][c] = out[j * rep + c_i]
            if scorer is not None:
                scores[j] = scorer.scores[j * rep + group.index(0)]
    return scores, texts


def _recalled(test: NeedleTest, text: str, threshold: float) -> bool:
    return rouge1_recall(test.needle.answer, text) > threshold


def _mean_over_draws(success: torch.Tensor) -> np.ndarray:
    """[tests draws] successes -> each test's success rate over the draws."""
    return success.float().mean(1).cpu().numpy()


# ---------------------------------------------------------------------------- run
@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Any, config: RetrievalConfig | None = None, progress: bool = True) -> RetrievalResult:
    """Score every head on the ranking split; then, on the held-out split, the unmasked
    accuracy and scores, the masking curves and the KV check."""
    cfg = config or RetrievalConfig()
    validate(cfg, model)
    s = model.shape
    n_heads_total = s.n_layers * s.n_heads
    rng = random.Random(cfg.seed)
    rank_set, held_set = split_tests(model.tokenizer, list(cfg.context_lengths), list(cfg.depths), cfg.n_needles,
                                     cfg.n_eval_needles, haystack_file=cfg.haystack_file, n_ctx=s.n_ctx, chat=cfg.chat)
    stops = newline_stop_ids(model.tokenizer)

    # 1. ranking split: retrieval scores (unpatched decoding), the heads ranked
    rt = rank_set.tests
    per_test = torch.zeros(len(rt), s.n_layers, s.n_heads)  # cpu: per-test results, gathered by row copies and floats
    recall = torch.zeros(len(rt))  # cpu: per-test results, gathered by row copies and floats
    rank_answers = [""] * len(rt)
    for idx, state in _prefilled(model, rt, cfg.batch_size, "ranking: prefill + scoring", progress):
        sc, texts = _score(model, rt, idx, state, cfg, stops)
        for j, (i, text) in enumerate(zip(idx, texts)):
            per_test[i] = sc[j]
            rank_answers[i] = text
            recall[i] = rouge1_recall(rt[i].needle.answer, text)
        del state
    success = recall > cfg.rouge_threshold
    scores = score_heads(per_test, success)
    ranked = top_heads(scores, n_heads_total)
    retrieval = top_heads(scores, n_heads_total, min_score=cfg.threshold)

    # 2. the decoding configurations, all chosen before any held-out test is seen
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

    # 3. held-out split: every configuration decoded from one prefill per batch of tests, in one
    # call where decode_rows allows: c = 0 unpatched (scored), then the masks, then the KV checks
    ht = held_set.tests
    n_mask, n_kv = len(mask_cfgs), len(kv_heads)
    # cpu: head masks are built on the CPU and moved where they patch
    all_full = torch.ones(s.n_layers, s.n_kv_heads, dtype=torch.bool)
    # cpu: head masks are built on the CPU and moved where they patch
    no_mask = torch.zeros(s.n_layers, s.n_heads, dtype=torch.bool)
    head_masks = torch.stack([no_mask, *mask_cfgs, *([no_mask] * n_kv)])
    kv_full = torch.stack([all_full, *([all_full] * n_mask), *kv_cfgs])
    n_cfg = 1 + n_mask + n_kv
    # cpu: per-test results, gathered by row copies and floats
    held_per_test = torch.zeros(len(ht), s.n_layers, s.n_heads)
    held_recall = torch.zeros(len(ht))  # cpu: per-test results, gathered by row copies and floats
    answers = [""] * len(ht)
    # cpu: per-test results, gathered by row copies and floats
    mask_success = torch.zeros(len(ht), n_mask, dtype=torch.bool)
    # cpu: per-test results, gathered by row copies and floats
    kv_success = torch.zeros(len(ht), n_kv, dtype=torch.bool)
    held_batch = max(1, cfg.decode_rows // n_cfg)
    for idx, state in _prefilled(model, ht, held_batch, "held-out: prefill, scoring, masking, KV", progress):
        sc, texts = _decode_all(model, ht, idx, state, cfg, stops, head_masks, kv_full)
        for j, i in enumerate(idx):
            held_per_test[i] = sc[j]
            answers[i] = texts[j][0]
            held_recall[i] = rouge1_recall(ht[i].needle.answer, texts[j][0])
            for c in range(n_mask):
                mask_success[i, c] = _recalled(ht[i], texts[j][1 + c], cfg.rouge_threshold)
            for c in range(n_kv):
                kv_success[i, c] = _recalled(ht[i], texts[j][1 + n_mask + c], cfg.rouge_threshold)
        del state
    held_success = held_recall > cfg.rouge_threshold
    n_held = len(ht)
    held_scores = score_heads(held_per_test, held_success)

    # 4. figures with their intervals, every one on the held-out split
    result_intervals: dict[str, Interval] = {}
    base = wilson(int(held_success.sum()), n_held, split="heldout")
    result_intervals["needle accuracy, unmasked (held-out)"] = base
    result_intervals["needle accuracy, unmasked (ranking)"] = wilson(int(success.sum()), len(rt), split="ranking")
    top_iv, rand_iv = [base], [base]
    rand_draws = torch.zeros(len(ks), cfg.n_random)  # cpu: a result array
    for k_i, k in enumerate(ks):
        top = mask_success[:, mask_labels.index(("top", k, 0))]
        iv = wilson(int(top.sum()), n_held, split="heldout")
        top_iv.append(iv)
        result_intervals[f"top-{k} retrieval heads masked"] = iv
        if cfg.n_random:
            cols = [mask_labels.index(("random", k, d)) for d in range(cfg.n_random)]
            per = _mean_over_draws(mask_success[:, cols])
            rand_draws[k_i] = mask_success[:, cols].float().mean(0)
            riv = bootstrap(per, seed=cfg.seed, split="heldout")
            rand_iv.append(riv)
            result_intervals[f"{k} random heads masked ({cfg.n_random} draws)"] = riv
            result_intervals[f"top-{k} minus random, accuracy"] = bootstrap_diff(top.float().cpu().numpy(), per,
                                                                                  seed=cfg.seed, split="heldout")
        else:
            rand_iv.append(None)
    kv_top = kv_success[:, 0]
    kv_iv = wilson(int(kv_top.sum()), n_held, split="heldout")
    result_intervals[f"KV compression, top {len(protect)} heads protected"] = kv_iv
    kv_rand_iv = None
    if cfg.n_random:
        kv_rand = _mean_over_draws(kv_success[:, 1:])
        kv_rand_iv = bootstrap(kv_rand, seed=cfg.seed, split="heldout")
        result_intervals[f"KV compression, {len(protect)} random heads protected ({cfg.n_random} draws)"] = kv_rand_iv
        result_intervals["KV compression, top minus random protected"] = bootstrap_diff(
            kv_top.float().cpu().numpy(), kv_rand, seed=cfg.seed, split="heldout")
    with warnings.catch_warnings():  # constant scores (no head ever copies) give an undefined rho: NaN, said so
        warnings.simplefilter("ignore")
        rho = spearman(scores.flatten().cpu().numpy(), held_scores.flatten().cpu().numpy(), split="ranking vs heldout")
    top_n = max(1, min(len(retrieval), 10)) if retrieval else 10
    held_ranked = top_heads(held_scores, n_heads_total)
    overlap = len(set(ranked[:top_n]) & set(held_ranked[:top_n]))

    prompt_lens = torch.tensor([len(t.ids) for t in ht])  # cpu: prompt lengths from Python ints
    nan = float("nan")
    masking = {
        "k": [0] + ks,
        "top_accuracy": [iv.value for iv in top_iv],
        "random_accuracy": [iv.value if iv is not None else nan for iv in rand_iv],
        "top_heads": [head_name(l, h) for l, h in ranked[: max(ks)]],
        "mode": cfg.mask_mode,
        "top_low": [iv.low for iv in top_iv], "top_high": [iv.high for iv in top_iv],
        "random_low": [iv.low if iv is not None else nan for iv in rand_iv],
        "random_high": [iv.high if iv is not None else nan for iv in rand_iv],
        "n_tests": n_held, "n_random": cfg.n_random, "split": "heldout",
    }
    kv = {
        "protected_heads": [head_name(l, h) for l, h in protect],
        "random_protected_heads": [[head_name(l, h) for l, h in draw] for draw in kv_heads[1:]],
        "full_kv_heads": int(kv_cfgs[0].sum()),
        "n_kv_heads": int(kv_cfgs[0].numel()),
        "cache_kept": kv_share_kept(kv_cfgs[0], prompt_lens, cfg.kv_sink, cfg.kv_window),
        "accuracy": kv_iv.value,
        "random_protected_cache_kept": (float(np.mean([kv_share_kept(c, prompt_lens, cfg.kv_sink, cfg.kv_window)
                                                       for c in kv_cfgs[1:]])) if cfg.n_random else nan),
        "random_protected_accuracy": kv_rand_iv.value if kv_rand_iv is not None else nan,
        "full_cache_accuracy": base.value,
        "sink": cfg.kv_sink, "window": cfg.kv_window,
        "n_tests": n_held, "n_random": cfg.n_random, "split": "heldout",
    }

    def split_info(name: str, ns: NeedleSet, acc: float, used: str) -> SplitInfo:
        lens = [len(t.ids) for t in ns.tests]
        return SplitInfo(name=name, n_tests=len(ns), n_needles=int(ns.meta["n_needles"]), haystack=ns.source,
                         context_lengths=list(ns.context_lengths), prompt_tokens=[min(lens), max(lens)], accuracy=acc,
                         used_for=used)

    # the needle grid: held-out unmasked accuracy over (context length, depth), averaged over needles
    L, D = held_set.context_lengths, held_set.depths
    grid = torch.zeros(len(L), len(D))  # cpu: a result grid
    count = torch.zeros(len(L), len(D))  # cpu: a result grid
    for i, t in enumerate(ht):
        a, b = L.index(t.context_length), D.index(t.depth)
        grid[a, b] += float(held_success[i])
        count[a, b] += 1
    grid = grid / count.clamp(min=1)

    result = RetrievalResult(
        config=cfg, scores=scores,
        retrieval_heads=[{"name": head_name(l, h), "layer": l, "head": h, "score": round(float(scores[l, h]), 6)}
                         for l, h in retrieval],
        masking=MaskingCurves(**masking), share_over_threshold=len(retrieval) / n_heads_total,
        n_retrieval_heads=len(retrieval), n_tests=len(rt), n_counted=int(success.sum()),
        needle_accuracy=float(success.float().mean()), heldout_accuracy=base.value,
        mean_recall=float(held_recall.mean()), kv_compression=KVCheck(**kv), context_lengths=L, depths=D,
        answers=answers, ranking_answers=rank_answers, haystack=held_set.source,
        splits={"ranking": split_info("ranking", rank_set, float(success.float().mean()),
                                      "retrieval scores, the head ranking, the retrieval-head list"),
                "heldout": split_info("heldout", held_set, base.value,
                                      "masking curves, KV compression, needle grid, replication of the scores")},
        figure_splits={"retrieval scores and head ranking": "ranking", "retrieval heads over threshold": "ranking",
                       "masking curves": "heldout", "KV compression": "heldout", "needle grid": "heldout",
                       "unmasked needle accuracy": "heldout", "score replication": "ranking vs heldout"},
        replication={"spearman": _finite(rho.value), "spearman_low": _finite(rho.low), "spearman_high": _finite(rho.high),
                     "top_n": top_n, "top_overlap": overlap,
                     "heldout_top_heads": [head_name(l, h) for l, h in held_ranked[:top_n]],
                     "n_heldout_counted": int(held_success.sum())},
        heldout_scores=held_scores, per_test_scores=per_test, recall=recall, heldout_recall=held_recall,
        needle_grid=grid,
        # cpu: result arrays
        masking_top=torch.tensor(masking["top_accuracy"]), masking_random=torch.tensor(masking["random_accuracy"]),
        masking_random_draws=rand_draws, mask_success=mask_success.to(torch.uint8),
        kv_success=kv_success.to(torch.uint8), meta=provenance(model=model.name, seed=cfg.seed))
    for name, iv in result_intervals.items():
        result.set_interval(name, iv)
    if np.isfinite(rho.value) and np.isfinite(rho.low):
        result.set_interval("Spearman, ranking vs held-out head scores (heads as samples)", rho)
    return result


def _finite(x: float) -> float | None:
    """None for NaN (constant scores: no head ever copied), so the saved JSON compares equal."""
    return float(x) if np.isfinite(x) else None


FIXED_BYTES = 128 * 2**20  # haystack, tokenizer work, scorer: measured on tiny-llama (--lengths 256 / 512: 134 / 143 MB)


def estimate_bytes(config: RetrievalConfig, model: Any) -> int:
    """The spec's memory estimate before a run: the larger of one prefill forward (its KV
    cache, and one layer's eager attention: the mask and two score-sized tensors at once over
    the longest context; the logits of the last position only) and one decoding call (its
    rows' repeated caches, buffered for the answer). Ranking tests are prefilled
    ``batch_size`` at a time and decoded once; held-out tests as many at a time as
    ``decode_rows`` holds with all their configurations. Tests are dropped once decoded, so
    the number of tests does not count beyond one batch.

    Calibration (tiny-llama, CPU, ru_maxrss over the RSS after the model loaded): 33 tests of
    512 tokens in one prefill (--batch-size 33): 0.41 GB; this estimate: 0.47 GB."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()  # cpu: only its element size is read
    longest = max(int(v) for v in config.context_lengths)
    n_cfg = 1 + len(config.mask_ks) * (1 + config.n_random) + 1 + config.n_random
    held_batch = min(max(1, config.decode_rows // n_cfg), config.n_heldout_tests)
    batch = max(min(config.batch_size, config.n_ranking_tests), held_batch)
    kv_token = 2 * s.n_layers * s.n_kv_heads * s.d_head * size
    states = batch * longest * kv_token
    prefill_b = batch * longest * size * ((2 * s.n_heads + 1) * longest + 8 * s.d_model)
    rows = max(min(config.batch_size, config.n_ranking_tests),
               held_batch * min(n_cfg, max(1, config.decode_rows // held_batch)))
    decode_b = rows * (longest + config.max_new_tokens) * kv_token * 2
    return int(FIXED_BYTES + states + max(prefill_b, decode_b))
