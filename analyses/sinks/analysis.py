"""Attention sinks beyond the first token and ACT's attention calibration (Yu et al.,
"Unveiling and Harnessing Hidden Attention Sinks", ICML 2024; GATECH-EIC/ACT).

Sinks, as in ACT's ``atten_process_*``: for each head and input, the column mean of the
attention map over the queries that can see each position (the column sum divided by the
number of real queries at or after it); positions over ``threshold`` are sinks. Sinks other
than the first token are reported with the heads that have them, their tokens, and the
massive activations in the residual stream at those tokens.

Calibration at inference (ACT): on chosen heads, attention to every non-first sink is
scaled by ``beta`` and the freed mass (1 - beta) x (sink mass) goes to the other visible
positions in proportion to their attention, so rows still sum to one. Heads are chosen by
a search on a calibration split (each candidate head calibrated alone, kept when it
raises calibration accuracy), then accuracy before/after is measured on a held-out split
of a small multiple-choice task built from data shipped with Python.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from workbench.cache import run_with_cache
from workbench.datasets.multiple_choice import MCQuestion, all_questions, mc_splits, option_token_ids
from workbench.errors import InputError
from workbench.generation import last_token_logits, left_pad
from workbench.heads import head_name
from workbench.results import Result, provenance, register_result
from workbench.spec import option


@dataclass
class SinksConfig:
    # threshold and beta are range-checked in validate() (its "outside 0..1" message is the documented one)
    threshold: float = option(0.1, help="a position is a sink when its column-mean attention is over this (0..1)")
    beta: float = option(0.4, help="calibration keeps this share of attention on non-first sinks (0..1)")
    n_calib: int = option(32, help="calibration questions (head search)", min=1)
    n_heldout: int = option(48, help="held-out questions (accuracy before/after)", min=1)
    max_search: int = option(16, help="candidate heads tried in the search (most frequent non-first sinks)", min=0)
    max_heads: int = option(8, help="heads kept after the search", min=1)
    min_layer: int = option(2, help="first layer searched (ACT searches from layer 2 on)", min=0)
    # ACT uses 1; 1 makes the last few positions of a short prompt trivially sinks
    min_queries: int = option(5, help="a sink must be seen by at least this many queries", min=1)
    massive_ratio: float = option(20.0, help="a hidden dimension is massive when |h| exceeds this x the median |h|",
                                  min=0)
    batch_size: int = option(24, help="prompts per forward pass", min=1)
    seed: int = 0

    def validate(self) -> None:
        """One-line errors for settings a user can fix, before the model loads."""
        for name in ("threshold", "beta"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name}={v} is outside 0..1; pass a value between 0 and 1")
        if self.n_calib < 1 or self.n_heldout < 1:
            raise InputError("n_calib and n_heldout must be at least 1")
        pool = len(all_questions())  # the task's fixed question set bounds both splits
        if self.n_calib + self.n_heldout > pool:
            fix = (f"choose --n-calib {pool - self.n_heldout} or less" if self.n_heldout < pool
                   else f"choose --n-heldout {pool - 1} or less")
            raise InputError(f"--n-calib {self.n_calib} plus --n-heldout {self.n_heldout} asks for "
                             f"{self.n_calib + self.n_heldout} questions but the task has {pool}; {fix}")
        if self.max_search < 0 or self.max_heads < 1 or self.min_queries < 1:
            raise InputError("max_search must be >= 0, max_heads and min_queries >= 1")


def validate(config: SinksConfig) -> None:
    """``config.validate()``: the checks as a function."""
    config.validate()


# ---------------------------------------------------------------------------- sinks
def _visible_queries(valid: torch.Tensor) -> torch.Tensor:
    """[batch key] number of real queries at or after each key (causal attention)."""
    v = valid.long()
    return v.flip(-1).cumsum(-1).flip(-1)


def column_means(pattern: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ACT's sink statistic: [batch head key] column sums of attention over real queries
    divided by the number of real queries that can see the key. ``pattern`` [batch head q k],
    ``valid`` [batch pos] real (non-pad) tokens."""
    real_q = valid[:, None, :, None].to(pattern.dtype)
    col = (pattern * real_q).sum(-2)
    return col / _visible_queries(valid)[:, None, :].clamp(min=1).to(pattern.dtype)


def first_positions(valid: torch.Tensor) -> torch.Tensor:
    """[batch] index of the first real token (0 with right padding)."""
    return valid.long().argmax(-1)


def find_sinks(pattern: torch.Tensor, valid: torch.Tensor, threshold: float, include_first: bool = False,
               min_queries: int = 1) -> torch.Tensor:
    """[batch head key] True at sink positions (column mean over ``threshold``, seen by at
    least ``min_queries`` real queries); the first real token is left out unless ``include_first``."""
    seen = _visible_queries(valid) >= min_queries
    sinks = (column_means(pattern, valid) > threshold) & (valid.bool() & seen)[:, None, :]
    if not include_first:
        first = first_positions(valid)
        sinks[torch.arange(sinks.shape[0]), :, first] = False
    return sinks


def calibrate_pattern(pattern: torch.Tensor, valid: torch.Tensor, heads: torch.Tensor, beta: float,
                      threshold: float, min_queries: int = 1) -> torch.Tensor:
    """ACT calibration of ``pattern`` [batch head q k] on the heads where ``heads`` [head] is
    True: attention to non-first sinks times ``beta``, the freed mass spread over the other
    positions in proportion to their attention. Rows with no other mass are left alone."""
    if not bool(heads.any()):
        return pattern
    idx = heads.nonzero().flatten()
    a = pattern[:, idx].float()  # [b h' q k]
    sink = find_sinks(a, valid, threshold, min_queries=min_queries)[:, :, None, :]  # [b h' 1 k]
    sink_mass = (a * sink).sum(-1, keepdim=True)
    other = a * ~sink
    other_mass = other.sum(-1, keepdim=True)
    ok = (other_mass > 0) & (sink_mass > 0) & valid[:, None, :, None].bool()
    moved = torch.where(ok, (1 - beta) * sink_mass / other_mass.clamp(min=1e-30), torch.zeros_like(sink_mass))
    new = torch.where(sink & ok, a * beta, a + other * moved)
    out = pattern.clone()
    out[:, idx] = new.to(pattern.dtype)
    return out


def calibration_patches(head_sets: dict[int, torch.Tensor], valid: torch.Tensor, beta: float,
                        threshold: float, min_queries: int = 1) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Patches on ``blocks.{l}.attn.hook_pattern`` calibrating the heads in ``head_sets[l]`` ([head] bool)."""
    return {f"blocks.{l}.attn.hook_pattern": (lambda p, hs=hs: calibrate_pattern(p, valid, hs, beta, threshold, min_queries))
            for l, hs in head_sets.items() if bool(hs.any())}


def token_class(text: str) -> str:
    """A coarse class of a token for the sink table."""
    if "\n" in text:
        return "newline"
    s = text.strip()
    if not s:
        return "space"
    if all(not ch.isalnum() for ch in s):
        return "punctuation"
    if s.isdigit():
        return "number"
    return "word"


# ---------------------------------------------------------------------------- result
@register_result
@dataclass
class SinksResult(Result):
    analysis = "sinks"
    config_cls = SinksConfig

    @property
    def sinks(self) -> list[dict[str, Any]]:
        """Heads with sinks beyond the first token, strongest first: name, layer, head,
        share_of_prompts, strength, tokens."""
        return list(self.metrics["sinks"])

    @property
    def n_sinks_beyond_first(self) -> int:
        """Sinks beyond the first token, counted over head x prompt x position."""
        return int(self.metrics["n_sinks_beyond_first"])

    @property
    def n_heads_with_sinks(self) -> int:
        return int(self.metrics["n_heads_with_sinks"])

    @property
    def sink_share(self) -> torch.Tensor:
        """[layer head] share of prompts where the head has a sink beyond the first token."""
        return self.arrays["sink_share"]

    @property
    def sink_strength(self) -> torch.Tensor:
        """[layer head] mean over prompts of the strongest non-first column mean."""
        return self.arrays["sink_strength"]

    @property
    def example_column_means(self) -> torch.Tensor:
        """[layer head pos] column means on the example prompt."""
        return self.arrays["example_column_means"]

    @property
    def example_sinks(self) -> torch.Tensor:
        """[layer head pos] True at the example prompt's sinks beyond the first token."""
        return self.arrays["example_sinks"].bool()

    @property
    def example_tokens(self) -> list[str]:
        return list(self.metrics["example_tokens"])

    @property
    def example_prompt(self) -> str:
        return str(self.metrics.get("example_prompt", ""))

    @property
    def sink_tokens(self) -> dict[str, int]:
        """The commonest tokens at sinks beyond the first token (head x prompt occurrences)."""
        return dict(self.metrics["sink_tokens"])

    @property
    def sink_token_classes(self) -> dict[str, int]:
        return dict(self.metrics["sink_token_classes"])

    @property
    def massive_activations(self) -> list[dict[str, Any]]:
        return list(self.metrics["massive_activations"])

    @property
    def first_token_massive_activations(self) -> list[dict[str, Any]]:
        return list(self.metrics.get("first_token_massive_activations") or [])

    @property
    def calibration_before(self) -> float:
        """Held-out accuracy without calibration."""
        return float(self.metrics["calibration"]["before"])

    @property
    def calibration_after(self) -> float:
        """Held-out accuracy with the chosen heads calibrated."""
        return float(self.metrics["calibration"]["after"])

    @property
    def calibrated_heads(self) -> list[str]:
        return list(self.metrics["calibration"]["heads"])

    @property
    def calibration_split_before(self) -> float | None:
        v = (self.metrics.get("calibration_split") or {}).get("before")
        return None if v is None else float(v)

    @property
    def calibration_split_after(self) -> float | None:
        v = (self.metrics.get("calibration_split") or {}).get("after")
        return None if v is None else float(v)

    @property
    def search(self) -> list[dict[str, Any]]:
        """Single-head calibration gains on the calibration split, one row per candidate."""
        return list(self.metrics["search"])

    @property
    def n_heldout(self) -> int:
        return int(self.metrics["n_heldout"])

    def summary(self) -> dict[str, Any]:
        out = {k: self.metrics[k] for k in ("sinks", "calibration")}
        if self.path is not None:
            out["run"] = str(self.path)
        return out

    def report_sections(self) -> list:
        from .figures import sinks_sections

        return sinks_sections(self)


def _evaluate(model: Any, questions: list[MCQuestion], batch_size: int, heads: dict[int, torch.Tensor] | None,
              beta: float, threshold: float, min_queries: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[questions] correct (argmax over the four option words) and the log-probability of the
    right option among the four, with ``heads`` calibrated."""
    correct, logp = [], []
    for s in range(0, len(questions), batch_size):
        chunk = questions[s:s + batch_size]
        ids, mask = left_pad([model.tokenizer.encode(q.prompt, add_special_tokens=False) for q in chunk],
                             model.tokenizer.pad_token_id or 0, model.device)
        patches = calibration_patches(heads, mask.bool(), beta, threshold, min_queries) if heads else {}
        logits, _ = last_token_logits(model, ids, mask, patches)
        opts = torch.tensor([option_token_ids(model.tokenizer, q) for q in chunk], device=logits.device)
        scores = logits.gather(1, opts).float().log_softmax(-1).cpu()
        labels = torch.tensor([q.label for q in chunk])
        correct.append(scores.argmax(-1) == labels)
        logp.append(scores[torch.arange(len(chunk)), labels])
    return torch.cat(correct), torch.cat(logp)


def _accuracy(model: Any, questions: list[MCQuestion], batch_size: int, heads: dict[int, torch.Tensor] | None,
              beta: float, threshold: float, min_queries: int = 1) -> torch.Tensor:
    return _evaluate(model, questions, batch_size, heads, beta, threshold, min_queries)[0]


def run(model: Any, config: SinksConfig | None = None, progress: bool = True) -> SinksResult:
    """Find non-first sinks on the calibration prompts, then search and evaluate ACT calibration."""
    cfg = config or SinksConfig()
    validate(cfg)
    s = model.shape
    calib, heldout = mc_splits(cfg.n_calib, cfg.n_heldout, seed=cfg.seed)
    tok = model.tokenizer

    # 1. sinks on the calibration prompts (right-padded, through the caching layer)
    pat_names = [f"blocks.{l}.attn.hook_pattern" for l in range(s.n_layers)]
    res_names = [f"blocks.{l}.hook_resid_post" for l in range(s.n_layers)]
    tokens = model.to_tokens([q.prompt for q in calib])
    _, cache = run_with_cache(model, tokens, pat_names + res_names, batch_size=cfg.batch_size, return_logits=False,
                              progress=progress)
    valid = tokens[1].bool().cpu()
    ids = tokens[0].cpu()
    sink_maps = torch.stack([find_sinks(cache[n].float(), valid, cfg.threshold, min_queries=cfg.min_queries)
                             for n in pat_names], 1)  # [b L H k]
    col_mean = torch.stack([column_means(cache[n].float(), valid) for n in pat_names], 1)  # [b L H k]
    share = sink_maps.any(-1).float().mean(0)  # [L H] share of prompts with a non-first sink
    strength = (col_mean * sink_maps).amax(-1).mean(0)  # [L H] mean over prompts of the strongest non-first sink
    token_counts: Counter = Counter()
    class_counts: Counter = Counter()
    head_tokens: dict[tuple[int, int], Counter] = {}
    for b, l, h, k in sink_maps.nonzero().tolist():
        text = tok.decode([int(ids[b, k])])
        token_counts[text] += 1
        class_counts[token_class(text)] += 1
        head_tokens.setdefault((l, h), Counter())[text] += 1
    sink_heads = sorted(head_tokens, key=lambda lh: (-float(strength[lh]), lh))
    sinks = [{"name": head_name(l, h), "layer": l, "head": h, "share_of_prompts": round(float(share[l, h]), 4),
              "strength": round(float(strength[l, h]), 4),
              "tokens": dict(head_tokens[(l, h)].most_common(5))} for l, h in sink_heads]

    # 2. massive activations at sink tokens (positions that are a non-first sink of any head)
    sink_tok = sink_maps.any(dim=(1, 2)) & valid  # [b pos]
    first = first_positions(valid)
    first_tok = torch.zeros_like(valid)
    first_tok[torch.arange(valid.shape[0]), first] = True
    other_tok = valid & ~sink_tok & ~first_tok
    massive, first_massive = [], []
    if sink_tok.any():
        best = None
        for l, n in enumerate(res_names):
            h = cache[n].float().abs().cpu()  # [b pos d]
            at_sink = h[sink_tok].mean(0)  # [d]
            median = h[valid].median()
            peak = float(at_sink.max())
            if best is None or peak > best[0]:
                best = (peak, l, at_sink, h[other_tok].mean(0) if other_tok.any() else torch.zeros_like(at_sink),
                        h[first_tok].mean(0), float(median))
        _, layer, at_sink, elsewhere, at_first, median = best
        for d in torch.argsort(-at_sink)[:8].tolist():
            ratio = float(at_sink[d]) / max(median, 1e-12)
            massive.append({"layer": layer, "dim": d, "mean_abs_at_sinks": round(float(at_sink[d]), 3),
                            "mean_abs_at_other_tokens": round(float(elsewhere[d]), 3),
                            "mean_abs_at_first_token": round(float(at_first[d]), 3),
                            "ratio_to_median": round(ratio, 1),
                            # massive at sinks: outsized against the median AND against ordinary tokens
                            "massive": ratio > cfg.massive_ratio and float(at_sink[d]) > 2 * float(elsewhere[d])})
        first_dims = torch.nonzero(at_first > cfg.massive_ratio * median).flatten().tolist()
        first_massive = [{"layer": layer, "dim": d, "mean_abs_at_first_token": round(float(at_first[d]), 3),
                          "mean_abs_at_sinks": round(float(at_sink[d]), 3),
                          "ratio_to_median": round(float(at_first[d]) / max(median, 1e-12), 1)}
                         for d in sorted(first_dims, key=lambda d: -float(at_first[d]))[:8]]

    # 3. ACT head search on the calibration split, evaluation on the held-out split
    # A head is kept when calibrating it alone raises calibration accuracy, or keeps it and raises the
    # mean log-probability of the right option (ties in accuracy are common on a small split).
    base_correct, base_logp = _evaluate(model, calib, cfg.batch_size, None, cfg.beta, cfg.threshold, cfg.min_queries)
    base_calib = base_correct
    candidates = [(l, h) for l, h in sink_heads if l >= cfg.min_layer][: cfg.max_search]  # strongest sinks first
    gains = []
    for l, h in tqdm(candidates, desc="head search", disable=not progress, leave=False):
        hs = {l: torch.zeros(s.n_heads, dtype=torch.bool)}
        hs[l][h] = True
        acc, logp = _evaluate(model, calib, cfg.batch_size, hs, cfg.beta, cfg.threshold, cfg.min_queries)
        gains.append(((l, h), float(acc.float().mean() - base_correct.float().mean()),
                      float(logp.mean() - base_logp.mean())))
    ranked_gains = sorted(gains, key=lambda x: (-x[1], -x[2]))
    chosen = [lh for lh, g, gl in ranked_gains if g > 0 or (g == 0 and gl > 0)][: cfg.max_heads]

    def as_sets(heads: list[tuple[int, int]]) -> dict[int, torch.Tensor]:
        sets: dict[int, torch.Tensor] = {}
        for l, h in heads:
            sets.setdefault(l, torch.zeros(s.n_heads, dtype=torch.bool))[h] = True
        return sets

    calib_after = base_calib
    if chosen:
        calib_after = _accuracy(model, calib, cfg.batch_size, as_sets(chosen), cfg.beta, cfg.threshold, cfg.min_queries)
        best_single = float(base_calib.float().mean()) + ranked_gains[0][1]
        if float(calib_after.float().mean()) < best_single and len(chosen) > 1:  # the set does worse: keep the best head
            chosen = chosen[:1]
            calib_after = _accuracy(model, calib, cfg.batch_size, as_sets(chosen), cfg.beta, cfg.threshold, cfg.min_queries)
    before = _accuracy(model, heldout, cfg.batch_size, None, cfg.beta, cfg.threshold, cfg.min_queries)
    after = _accuracy(model, heldout, cfg.batch_size, as_sets(chosen), cfg.beta, cfg.threshold, cfg.min_queries) if chosen else before

    example = 0
    metrics = {
        "sinks": sinks,
        "calibration": {"before": float(before.float().mean()), "after": float(after.float().mean()),
                        "heads": [head_name(l, h) for l, h in chosen]},
        "calibration_split": {"before": float(base_calib.float().mean()), "after": float(calib_after.float().mean()),
                              "n": len(calib)},
        "search": [{"name": head_name(l, h), "accuracy_gain": round(g, 4), "logprob_gain": round(gl, 4)}
                   for (l, h), g, gl in gains],
        "n_heldout": len(heldout),
        "n_sinks_beyond_first": int(sink_maps.sum()),
        "n_heads_with_sinks": len(sink_heads),
        "sink_tokens": dict(token_counts.most_common(15)),
        "sink_token_classes": dict(class_counts),
        "massive_activations": massive,
        "first_token_massive_activations": first_massive,
        "example_tokens": [tok.decode([int(t)]) for t, v in zip(ids[example], valid[example]) if v],
        "example_prompt": calib[example].prompt,
    }
    n_ex = int(valid[example].sum())
    arrays = {
        "sink_share": share, "sink_strength": strength,
        "example_column_means": col_mean[example, :, :, :n_ex].contiguous(),  # [L H pos]
        "example_sinks": sink_maps[example, :, :, :n_ex].to(torch.uint8).contiguous(),
        "heldout_before": before.to(torch.uint8), "heldout_after": after.to(torch.uint8),
    }
    return SinksResult(config=cfg, metrics=metrics, arrays=arrays, meta=provenance(model=model.name, seed=cfg.seed))
