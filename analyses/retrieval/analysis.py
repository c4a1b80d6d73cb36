"""Retrieval heads (Wu et al., "Retrieval Head Mechanistically Explains Long-Context
Factuality"), their causal test, and a RazorAttention-style KV-cache compression check.

Retrieval score, as in the authors' ``retrieval_head_detection.py``: decode greedily; at
every step, for every head, take the argmax of the newest query's attention; when it
lands inside the needle's answer span and the prompt token there is the token being
generated at this step, add 1/(answer length) to the head's score for this test. A test
counts only when the answer recalls the needle (ROUGE-1 recall > 0.5); a head's score is
its mean over counted tests; heads over 0.1 are retrieval heads.

Causal test: mask the top-k retrieval heads, and k random non-retrieval heads (several
draws), during decoding (Wu et al. mask in the decode steps by zeroing the head's query,
so it attends uniformly), and report needle accuracy (share of tests recalled) over k.

KV compression (RazorAttention): during decoding, keep the full cache for the KV heads of
the top retrieval heads and only ``sink`` first tokens plus a recent ``window`` for every
other KV head (no compensation token); needle accuracy and the share of cache kept.

One prefill per test serves every decoding configuration (the cache is repeated).
"""
from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from tqdm.auto import tqdm

from workbench.datasets.needles import DEFAULT_NEEDLES, NeedleSet, build_needle_tests, read_haystack
from workbench.errors import InputError
from workbench.generation import Prefill, decode, newline_stop_ids, prefill
from workbench.heads import MASK_MODES, head_name, head_set_mask, mask_patches, random_heads, top_heads
from workbench.results import Result, provenance, register_result
from workbench.spec import option


@dataclass
class RetrievalConfig:
    context_lengths: tuple[int, ...] = option((250, 500, 1000), flag="--lengths",
                                              help="comma-separated context lengths (tokens)", min=1)
    depths: tuple[float, ...] = option((25, 75), help="comma-separated needle depths (percent)", min=0, max=100)
    n_needles: int = option(2, flag="--needles", help=f"how many of the built-in needles (1-{len(DEFAULT_NEEDLES)})",
                            min=1, max=len(DEFAULT_NEEDLES))
    haystack_file: str | None = option(None, flag="--haystack",
                                       help="a text file to use as haystack (default: the Python docs)")
    chat: bool = option(True, help="wrap prompts in the tokenizer's chat template")
    max_new_tokens: int = option(24, help="answer tokens decoded at most", min=1)
    # the two thresholds are range-checked in validate() (its "outside 0..1" message is the documented one)
    threshold: float = option(0.1, help="retrieval heads score over this (0..1)")
    rouge_threshold: float = option(0.5, help="a test counts when the answer's ROUGE-1 recall is over this (0..1)")
    mask_ks: tuple[int, ...] = option((2, 5, 10, 20), flag="--ks", help="comma-separated numbers of heads to mask",
                                      min=1)
    n_random: int = option(2, flag="--random", help="random-head draws per k", min=0)
    mask_mode: str = option("query", help="query (Wu et al.: uniform attention) | zero (z = 0)", choices=MASK_MODES)
    kv_protect: int = option(20, help="top retrieval heads that keep the full KV cache", min=0)
    kv_sink: int = option(4, help="first tokens kept by compressed heads", min=0)
    kv_window: int = option(64, help="recent tokens kept by compressed heads", min=1)
    batch_size: int = option(4, help="needle prompts per prefill forward pass", min=1)
    decode_rows: int = option(48, help="rows (tests x masking configurations) decoded together", min=1)
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
        if not 1 <= self.n_needles <= len(DEFAULT_NEEDLES):
            raise InputError(f"n_needles={self.n_needles}; choose 1..{len(DEFAULT_NEEDLES)}")
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
        self.start, self.end = spans[:, 0], spans[:, 1]
        self.inc = 1.0 / (self.end - self.start).clamp(min=1).float()
        self.scores = torch.zeros(rows, n_layers, n_heads)

    def names(self) -> list[str]:
        return [f"blocks.{l}.attn.hook_pattern" for l in range(self.n_layers)]

    def __call__(self, step: int, read: dict[str, torch.Tensor], token: torch.Tensor, active: torch.Tensor) -> None:
        # pattern [rows head key]: the newest query's attention at this step
        top = torch.stack([read[f"blocks.{l}.attn.hook_pattern"].argmax(-1) for l in range(self.n_layers)], 1)
        rows = torch.arange(top.shape[0])[:, None, None]
        at = self.seq[rows, top]  # token ids at the argmax positions [rows layer head]
        inside = (top >= self.start[:, None, None]) & (top < self.end[:, None, None])
        hit = inside & (at == token[:, None, None]) & active[:, None, None]
        self.scores += hit.float() * self.inc[:, None, None]
        self.seq[:, self.prompt_len + step] = token


def score_heads(per_test: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Head scores [layer head]: the mean of per-test scores [tests layer head] over counted tests."""
    if not counted.any():
        return torch.zeros(per_test.shape[1:])
    return per_test[counted].mean(0)


# ---------------------------------------------------------------------------- KV compression
def kv_protected_groups(heads: list[tuple[int, int]], n_layers: int, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """[layer kv_head] True where a KV head serves at least one protected query head."""
    group = n_heads // n_kv_heads
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
            cfg = torch.arange(rows) % n_cfg
            off = pad_offsets.repeat_interleave(n_cfg)[:, None]  # [rows 1]
            pos = torch.arange(k)[None]
            kept = ((pos >= off) & (pos < off + sink)) | (pos >= k - window)  # [rows key]
            visible = keep_full[cfg][:, :, None] | kept[:, None, :]  # [rows head key]
            return scores.masked_fill(~visible[:, :, None, :], torch.finfo(scores.dtype).min)

        patches[f"blocks.{layer}.attn.hook_attn_scores"] = fn
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
    """Needle accuracy over the number of masked heads (k = 0 is the unmasked model)."""

    k: list[int]
    top_accuracy: list[float]
    random_accuracy: list[float]
    top_heads: list[str]
    mode: str = "query"


@dataclass(frozen=True)
class KVCheck:
    """The RazorAttention-style check: cache kept and needle accuracy for the top retrieval
    heads protected, the same budget on random heads, and the full cache."""

    protected_heads: list[str]
    full_kv_heads: int
    n_kv_heads: int
    cache_kept: float
    accuracy: float
    random_protected_cache_kept: float
    random_protected_accuracy: float
    full_cache_accuracy: float
    sink: int
    window: int


def _from_dict(cls: type, raw: dict[str, Any]) -> Any:
    """A frozen record from a saved dict, ignoring keys it does not know."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


@register_result
@dataclass
class RetrievalResult(Result):
    analysis = "retrieval"
    config_cls = RetrievalConfig

    @property
    def scores(self) -> torch.Tensor:
        """[layer head] retrieval scores."""
        return self.arrays["scores"]

    @property
    def needle_grid(self) -> torch.Tensor:
        """[context length, depth] needle accuracy (averaged over needles)."""
        return self.arrays["needle_grid"]

    @property
    def retrieval_heads(self) -> list[dict[str, Any]]:
        """Heads over the threshold, best first: name, layer, head, score."""
        return list(self.metrics["retrieval_heads"])

    @property
    def n_retrieval_heads(self) -> int:
        return int(self.metrics["n_retrieval_heads"])

    @property
    def share_over_threshold(self) -> float:
        """Share of all heads whose retrieval score is over the threshold."""
        return float(self.metrics["share_over_threshold"])

    @property
    def n_tests(self) -> int:
        return int(self.metrics["n_tests"])

    @property
    def n_counted(self) -> int:
        """Tests whose answer recalled the needle (the ones the scores average over)."""
        return int(self.metrics["n_counted"])

    @property
    def needle_accuracy(self) -> float:
        return float(self.metrics["needle_accuracy"])

    @property
    def mean_recall(self) -> float:
        return float(self.metrics["mean_recall"])

    @property
    def context_lengths(self) -> list[int]:
        return [int(x) for x in self.metrics["context_lengths"]]

    @property
    def depths(self) -> list[float]:
        return [float(x) for x in self.metrics["depths"]]

    @property
    def answers(self) -> list[str]:
        """The unmasked model's decoded answer per test."""
        return list(self.metrics["answers"])

    @property
    def masking(self) -> MaskingCurves:
        return _from_dict(MaskingCurves, self.metrics["masking"])

    @property
    def kv_compression(self) -> KVCheck:
        return _from_dict(KVCheck, self.metrics["kv_compression"])

    def summary(self) -> dict[str, Any]:
        out = {k: self.metrics[k] for k in ("scores", "retrieval_heads", "masking")}
        if self.path is not None:
            out["run"] = str(self.path)
        return out

    def report_sections(self) -> list:
        from .figures import retrieval_sections

        return retrieval_sections(self)


def _decode_configs(model: Any, state: Prefill, tests: list, cfg: RetrievalConfig, n_cfg: int,
                    make_patches: Callable[[torch.Tensor], dict], stops: list[int], desc: str,
                    progress: bool) -> list[str]:
    """Decode every test under ``n_cfg`` configurations, chunked to ``decode_rows`` rows;
    returns texts in row order test-major (test t, config c -> t * n_cfg + c)."""
    per_chunk = max(1, cfg.decode_rows // n_cfg)
    texts: list[str] = []
    chunks = list(range(0, len(tests), per_chunk))
    for s in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        rows = list(range(s, min(s + per_chunk, len(tests))))
        patches = make_patches(torch.as_tensor(rows))
        gen = decode(model, state, cfg.max_new_tokens, stops, patches=patches, repeat=n_cfg, rows=rows)
        texts.extend(gen.texts(model.tokenizer))
    return texts


def run(model: Any, config: RetrievalConfig | None = None, progress: bool = True) -> RetrievalResult:
    """Score every head on the needle grid, then the masking curves and the KV check."""
    cfg = config or RetrievalConfig()
    validate(cfg, model)
    s = model.shape
    rng = random.Random(cfg.seed)
    needles: NeedleSet = build_needle_tests(model.tokenizer, list(cfg.context_lengths), list(cfg.depths),
                                            DEFAULT_NEEDLES[: cfg.n_needles], haystack_file=cfg.haystack_file,
                                            n_ctx=s.n_ctx, chat=cfg.chat)
    tests = needles.tests
    stops = newline_stop_ids(model.tokenizer)
    # one prefill per test, shared by every decoding configuration
    order = sorted(range(len(tests)), key=lambda i: len(tests[i].ids))  # similar lengths share a batch
    states = []
    for b in tqdm(range(0, len(order), cfg.batch_size), desc="prefill", disable=not progress, leave=False):
        idx = order[b:b + cfg.batch_size]
        states.append((idx, prefill(model, [tests[i].ids for i in idx])))

    def spans_for(idx: list[int], state: Prefill) -> tuple[torch.Tensor, torch.Tensor]:
        off = torch.tensor([state.prompt_len - len(tests[i].ids) for i in idx])
        spans = torch.tensor([[tests[i].answer_start, tests[i].answer_end] for i in idx]) + off[:, None]
        return spans, off

    # 1. retrieval scores (unpatched decoding)
    per_test = torch.zeros(len(tests), s.n_layers, s.n_heads)
    recall = torch.zeros(len(tests))
    answers = [""] * len(tests)
    for idx, state in tqdm(states, desc="scoring", disable=not progress, leave=False):
        spans, _ = spans_for(idx, state)
        scorer = RetrievalScorer(state.input_ids, spans, s.n_layers, s.n_heads, cfg.max_new_tokens)
        gen = decode(model, state, cfg.max_new_tokens, stops, read=scorer.names(), on_step=scorer)
        for j, (i, text) in enumerate(zip(idx, gen.texts(model.tokenizer))):
            per_test[i] = scorer.scores[j]
            answers[i] = text
            recall[i] = rouge1_recall(tests[i].needle.answer, text)
    success = recall > cfg.rouge_threshold
    scores = score_heads(per_test, success)
    ranked = top_heads(scores, s.n_layers * s.n_heads)
    retrieval = top_heads(scores, s.n_layers * s.n_heads, min_score=cfg.threshold)

    # 2. masking: top-k retrieval heads vs k random non-retrieval heads
    ks = [int(k) for k in cfg.mask_ks]
    exclude = set(ranked[: max(ks)]) | set(retrieval)
    configs, labels = [], []
    for k in ks:
        configs.append(head_set_mask(ranked[:k], s.n_layers, s.n_heads))
        labels.append(("top", k, 0))
        for d in range(cfg.n_random):
            configs.append(head_set_mask(random_heads(s.n_layers, s.n_heads, k, rng, exclude), s.n_layers, s.n_heads))
            labels.append(("random", k, d))
    cfg_masks = torch.stack(configs)
    n_cfg = len(configs)
    mask_success = torch.zeros(len(tests), n_cfg, dtype=torch.bool)
    for idx, state in states:
        texts = _decode_configs(model, state, idx, cfg, n_cfg, lambda rows: mask_patches(cfg_masks, cfg.mask_mode),
                                stops, "masking", progress)
        for j, i in enumerate(idx):
            for c in range(n_cfg):
                mask_success[i, c] = rouge1_recall(tests[i].needle.answer, texts[j * n_cfg + c]) > cfg.rouge_threshold
    acc = mask_success.float().mean(0)
    top_acc = [float(success.float().mean())] + [float(acc[labels.index(("top", k, 0))]) for k in ks]
    rand_draws = torch.tensor([[float(acc[labels.index(("random", k, d))]) for d in range(cfg.n_random)] for k in ks]) \
        if cfg.n_random else torch.zeros(len(ks), 0)
    rand_acc = [float(success.float().mean())] + [float(r.mean()) if r.numel() else float("nan") for r in rand_draws]

    # 3. KV compression: full cache for the top retrieval heads' KV heads, sink + window elsewhere
    protect = ranked[: cfg.kv_protect]
    rand_protect = random_heads(s.n_layers, s.n_heads, len(protect), rng, set(protect)) if protect else []
    kv_cfgs = torch.stack([kv_protected_groups(protect, s.n_layers, s.n_heads, s.n_kv_heads),
                           kv_protected_groups(rand_protect, s.n_layers, s.n_heads, s.n_kv_heads)])
    kv_success = torch.zeros(len(tests), 2, dtype=torch.bool)
    for idx, state in states:
        _, off = spans_for(idx, state)

        def make(rows: torch.Tensor, off=off) -> dict:
            return kv_compression_patches(kv_cfgs, 2, s.n_heads, off[rows], cfg.kv_sink, cfg.kv_window)

        texts = _decode_configs(model, state, idx, cfg, 2, make, stops, "kv compression", progress)
        for j, i in enumerate(idx):
            for c in range(2):
                kv_success[i, c] = rouge1_recall(tests[i].needle.answer, texts[j * 2 + c]) > cfg.rouge_threshold
    prompt_lens = torch.tensor([len(t.ids) for t in tests])
    kv = {
        "protected_heads": [head_name(l, h) for l, h in protect],
        "full_kv_heads": int(kv_cfgs[0].sum()),
        "n_kv_heads": int(kv_cfgs[0].numel()),
        "cache_kept": kv_share_kept(kv_cfgs[0], prompt_lens, cfg.kv_sink, cfg.kv_window),
        "accuracy": float(kv_success[:, 0].float().mean()),
        "random_protected_cache_kept": kv_share_kept(kv_cfgs[1], prompt_lens, cfg.kv_sink, cfg.kv_window),
        "random_protected_accuracy": float(kv_success[:, 1].float().mean()),
        "full_cache_accuracy": float(success.float().mean()),
        "sink": cfg.kv_sink, "window": cfg.kv_window,
    }

    # the needle grid: accuracy over (context length, depth), averaged over needles
    L, D = needles.context_lengths, needles.depths
    grid = torch.zeros(len(L), len(D))
    count = torch.zeros(len(L), len(D))
    for i, t in enumerate(tests):
        a, b = L.index(t.context_length), D.index(t.depth)
        grid[a, b] += float(success[i])
        count[a, b] += 1
    grid = grid / count.clamp(min=1)

    metrics = {
        "scores": [[round(float(v), 6) for v in row] for row in scores],
        "retrieval_heads": [{"name": head_name(l, h), "layer": l, "head": h, "score": round(float(scores[l, h]), 6)}
                            for l, h in retrieval],
        "masking": {"k": [0] + ks, "top_accuracy": top_acc, "random_accuracy": rand_acc,
                    "top_heads": [head_name(l, h) for l, h in ranked[: max(ks)]], "mode": cfg.mask_mode},
        "share_over_threshold": len(retrieval) / (s.n_layers * s.n_heads),
        "n_retrieval_heads": len(retrieval),
        "n_tests": len(tests),
        "n_counted": int(success.sum()),
        "needle_accuracy": float(success.float().mean()),
        "mean_recall": float(recall.mean()),
        "kv_compression": kv,
        "context_lengths": L,
        "depths": D,
        "answers": answers,
        "haystack": needles.source,
    }
    arrays = {
        "scores": scores, "per_test_scores": per_test, "recall": recall, "needle_grid": grid,
        "masking_top": torch.tensor(top_acc), "masking_random": torch.tensor(rand_acc),
        "masking_random_draws": rand_draws, "mask_success": mask_success.to(torch.uint8),
        "kv_success": kv_success.to(torch.uint8),
    }
    return RetrievalResult(config=cfg, metrics=metrics, arrays=arrays, meta=provenance(model=model.name, seed=cfg.seed))


FIXED_BYTES = 128 * 2**20  # haystack, tokenizer work, scorer: measured on tiny-llama (--lengths 256 / 512: 134 / 143 MB)


def estimate_bytes(config: RetrievalConfig, model: Any) -> int:
    """The spec's memory estimate before a run: every test's prefilled KV cache (all kept, one
    prefill serves every decoding configuration), plus the larger of one prefill forward
    (one layer's eager attention: the mask and two score-sized tensors at once over the longest
    context; the logits of the last position only) and one decoding chunk
    (``decode_rows`` repeated caches, buffered for the answer).

    Calibration (tiny-llama, CPU, ru_maxrss over the RSS after the model loaded): 33 tests of
    512 tokens in one prefill (--batch-size 33): 0.41 GB; this estimate: 0.47 GB."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()
    longest = max(int(v) for v in config.context_lengths)
    n_tests = config.n_needles * len(config.context_lengths) * len(config.depths)
    kv_token = 2 * s.n_layers * s.n_kv_heads * s.d_head * size
    states = n_tests * longest * kv_token
    prefill = min(config.batch_size, n_tests) * longest * size * ((2 * s.n_heads + 1) * longest + 8 * s.d_model)
    n_cfg = max(2, len(config.mask_ks) * (1 + config.n_random))  # masking configurations (KV check: 2)
    decode = min(config.decode_rows, n_tests * n_cfg) * (longest + config.max_new_tokens) * kv_token * 2
    return int(FIXED_BYTES + states + max(prefill, decode))
