"""Attention sinks beyond the first token and ACT's attention calibration (Yu et al.,
"Unveiling and Harnessing Hidden Attention Sinks", ICML 2024; GATECH-EIC/ACT).

Sinks, as in ACT's ``atten_process_*``: for each head and input, the column mean of the
attention map over the queries that can see each position (the column sum divided by the
number of real queries at or after it); positions over ``threshold`` are sinks. Sinks other
than the first token are reported with the heads that have them, their tokens, and the
massive activations in the residual stream at those tokens.

Calibration at inference (ACT): on chosen heads, attention to every non-first sink is
scaled by ``beta`` and the freed mass (1 - beta) x (sink mass) goes to the other visible
positions in proportion to their attention, so rows still sum to one.

Everything ACT chooses is chosen on a calibration split, per task: the candidate heads
(the ``max_search`` heads from layer ``min_layer`` on with the strongest non-first sinks on
the calibration prompts), the heads kept (each candidate calibrated alone at ``beta`` and
``threshold``, kept when it raises calibration accuracy, or keeps it and raises the mean
log-probability of the right option; at most ``max_heads``; the best single head when the
set does worse than it), then ``beta`` and ``threshold`` for that set from the grid
``betas`` x ``thresholds``. Accuracy before and after is then measured once on the task's
held-out split, which chose nothing (``workbench.datasets.multiple_choice``: the splits
share no word or adjective), with Wilson intervals and a paired bootstrap of the difference.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from jaxtyping import Float, UInt8
from torch import Tensor
from tqdm.auto import tqdm

from workbench.cache import run_with_cache
from workbench.datasets.multiple_choice import TASKS, MCQuestion, check_sizes, n_options, option_token_ids, task_splits
from workbench.errors import InputError
from workbench.generation import left_pad
from workbench.names import act_name, head_name
from workbench.results import Result, provenance
from workbench.spec import option
from workbench.stats import bootstrap, bootstrap_diff, wilson
from workbench.checks import checked_run

from .runner import LayerRunner


@dataclass
class SinksConfig:
    tasks: tuple[str, ...] = option(("category", "sentiment"), flag="--task", choices=TASKS,
                                    help="multiple-choice tasks, each with its own calibration and held-out split "
                                         "(repeat --task for several)")
    # threshold and beta are range-checked in validate() (its "outside 0..1" message is the documented one)
    threshold: float = option(0.1, help="a position is a sink when its column-mean attention is over this (0..1); "
                                        "also the threshold of the head search")
    beta: float = option(0.4, help="calibration keeps this share of attention on non-first sinks (0..1) in the "
                                   "head search")
    betas: tuple[float, ...] = option((0.2, 0.4, 0.6), help="beta grid searched for the chosen heads on the "
                                                            "calibration split")
    thresholds: tuple[float, ...] = option((0.1, 0.2), help="threshold grid searched for the chosen heads on the "
                                                            "calibration split")
    n_calib: int = option(64, help="calibration questions per task (head, beta and threshold search)", min=1)
    n_heldout: int = option(200, help="held-out questions per task (accuracy before/after)", min=1)
    max_search: int = option(8, help="candidate heads tried per task (strongest non-first sinks first)", min=0)
    max_heads: int = option(4, help="heads kept after the search", min=1)
    min_layer: int = option(2, help="first layer searched (ACT searches from layer 2 on)", min=0)
    # ACT uses 1; 1 makes the last few positions of a short prompt trivially sinks
    min_queries: int = option(5, help="a sink must be seen by at least this many queries", min=1)
    massive_ratio: float = option(20.0, help="a hidden dimension is massive when |h| exceeds this x the median |h|",
                                  min=0)
    batch_size: int = option(32, help="prompts per forward pass", min=1)
    seed: int = 0

    def validate(self) -> None:
        """One-line errors for settings a user can fix, before the model loads."""
        for name in ("threshold", "beta"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name}={v} is outside 0..1; pass a value between 0 and 1")
        for name in ("betas", "thresholds"):
            values = tuple(getattr(self, name))
            if not values:
                raise InputError(f"--{name} is empty; pass at least one value, e.g. --{name} 0.4")
            for v in values:
                if not 0.0 <= float(v) <= 1.0:
                    raise InputError(f"{name} holds {v}, which is outside 0..1; pass values between 0 and 1")
        if not self.tasks:
            raise InputError(f"no task given; pass --task with one of {', '.join(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise InputError("a task is given twice in --task; name each task once")
        for task in self.tasks:
            if task not in TASKS:
                raise InputError(f"unknown task '{task}' for --task; choose one of {', '.join(TASKS)}")
            check_sizes(task, self.n_calib, self.n_heldout)
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
        sinks[torch.arange(sinks.shape[0], device=sinks.device), :, first] = False
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
    return {act_name("pattern", l): (lambda p, hs=hs: calibrate_pattern(p, valid, hs, beta, threshold, min_queries))
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
Rows = list[dict[str, Any]]


@dataclass(kw_only=True)
class SinksResult(Result):
    """Sinks beyond the first token on every task's calibration prompts, the massive
    activations at their tokens, and ACT's calibration chosen and measured per task."""

    analysis = "sinks"

    config: SinksConfig
    sinks: Rows  # heads with non-first sinks, strongest first: name, layer, head, share_of_prompts, strength, tokens
    # per task: task, chance, n_calib, n_heldout, heads, beta, threshold, calib_before/after, before, after, difference
    calibration: Rows
    search: Rows  # single-head calibration gains on each task's calibration split, one row per candidate
    grid: Rows = field(default_factory=list)  # calibration accuracy of the chosen heads at each (beta, threshold)
    search_parameters: dict[str, Any] = field(default_factory=dict)
    n_sink_prompts: int = 0  # prompts the sinks were found on (every task's calibration split)
    n_sinks_beyond_first: int  # counted over head x prompt x position
    n_heads_with_sinks: int
    sink_tokens: dict[str, int]  # the commonest tokens at non-first sinks (head x prompt occurrences)
    sink_token_classes: dict[str, int]
    massive_activations: Rows  # per task: the largest mean |h| dimensions at sink tokens, in their peak layer
    first_token_massive_activations: Rows = field(default_factory=list)
    example_tokens: list[str]
    example_prompt: str = ""
    sink_share: Float[Tensor, "layer head"]  # share of prompts where the head has a non-first sink
    sink_strength: Float[Tensor, "layer head"]  # mean over prompts of the strongest non-first column mean
    example_column_means: Float[Tensor, "layer head pos"]  # on the example prompt
    example_sinks: UInt8[Tensor, "layer head pos"]  # 1 at the example prompt's non-first sinks
    heldout_before: dict[str, UInt8[Tensor, " question"]] = field(default_factory=dict)  # per task: 1 = right
    heldout_after: dict[str, UInt8[Tensor, " question"]] = field(default_factory=dict)
    heldout_logp_before: dict[str, Float[Tensor, " question"]] = field(default_factory=dict)  # log p(right option)
    heldout_logp_after: dict[str, Float[Tensor, " question"]] = field(default_factory=dict)

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Format 1 kept the held-out tensors as ``{task}_heldout_before`` (and after, logp_before,
        logp_after): they become entries of the per-task dict fields."""
        renamed = {}
        for name, tensor in arrays.items():
            for what in ("heldout_logp_before", "heldout_logp_after", "heldout_before", "heldout_after"):
                if name.endswith("_" + what):
                    name = f"{what}/{name[:-len(what) - 1]}"
                    break
            renamed[name] = tensor
        return metrics, renamed

    @property
    def task_names(self) -> list[str]:
        return [row["task"] for row in self.calibration]

    def task(self, name: str) -> dict[str, Any]:
        """The calibration row of one task."""
        for row in self.calibration:
            if row["task"] == name:
                return dict(row)
        raise InputError(f"this run has no task '{name}'; it has {', '.join(self.task_names)}")

    @property
    def calibrated_heads(self) -> list[str]:
        """Heads chosen by the search on any task, in the order first chosen."""
        return list(dict.fromkeys(h for row in self.calibration for h in row["heads"]))

    def interval(self, task: str, what: str) -> Any:
        """The stored interval of ``what`` (``base``, ``act``, ``difference``, ``difference by group``,
        ``logprob difference``, ``calibration base``, ``calibration act``) on ``task``."""
        return self.intervals[interval_name(task, what)]

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        out = {"sinks": data["sinks"][:20], "calibration": data["calibration"]}
        if self.path is not None:
            out["run"] = str(self.path)
        return out


_INTERVAL_NAMES = {"base": "held-out accuracy, base", "act": "held-out accuracy, ACT",
                   "difference": "held-out accuracy, ACT - base (paired)",
                   "difference by group": "held-out accuracy, ACT - base (paired, resampling groups)",
                   "logprob difference": "held-out log p(right option), ACT - base (paired)",
                   "calibration base": "calibration accuracy, base", "calibration act": "calibration accuracy, ACT"}


def interval_name(task: str, what: str) -> str:
    """The name a task's interval is stored under (``Result.intervals``)."""
    return f"{task}: {_INTERVAL_NAMES[what]}"


# ---------------------------------------------------------------------------- scoring
class _Scorer:
    """A split of questions in left-padded batches, each with its base run; ``score(heads,
    beta, threshold)`` gives [questions] correct and log p(right option) among the options."""

    def __init__(self, model: Any, questions: list[MCQuestion], batch_size: int, keep: list[int]):
        tok = model.tokenizer
        self.batches = []
        for s in range(0, len(questions), batch_size):
            chunk = questions[s:s + batch_size]
            ids, mask = left_pad([tok.encode(q.prompt, add_special_tokens=False) for q in chunk],
                                 tok.pad_token_id or 0, model.device)
            opts = torch.tensor([option_token_ids(tok, q) for q in chunk], device=model.device)
            labels = torch.tensor([q.label for q in chunk])  # cpu: labels compare with scores moved to the CPU below
            self.batches.append((LayerRunner(model, ids, mask, keep), opts, labels))
        self.n_heads = model.shape.n_heads

    def score(self, heads: list[tuple[int, int]] | None = None, beta: float = 1.0, threshold: float = 1.0,
              min_queries: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        sets: dict[int, torch.Tensor] = {}
        for l, h in heads or []:
            # cpu: head sets; calibrate_pattern takes their nonzero() as a CPU index
            sets.setdefault(l, torch.zeros(self.n_heads, dtype=torch.bool))[h] = True
        correct, logp = [], []
        for runner, opts, labels in self.batches:
            patches = calibration_patches(sets, runner.mask.bool(), beta, threshold, min_queries) if sets else {}
            logits = runner.logits(patches)
            scores = logits.gather(1, opts).float().log_softmax(-1).cpu()
            correct.append(scores.argmax(-1) == labels)
            logp.append(scores[torch.arange(len(labels)), labels])  # cpu: the scores were moved to the CPU above
        return torch.cat(correct), torch.cat(logp)


def _group_difference(after: torch.Tensor, before: torch.Tensor, groups: list[str], seed: int) -> Any:
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


# ---------------------------------------------------------------------------- discovery
def _discover(model: Any, questions: list[MCQuestion], cfg: SinksConfig, progress: bool) -> dict[str, Any]:
    """Non-first sinks of every head on ``questions`` (right-padded, through the caching layer)
    and the massive activations at their tokens."""
    s = model.shape
    tok = model.tokenizer
    pat_names = [act_name("pattern", l) for l in range(s.n_layers)]
    res_names = [act_name("resid_post", l) for l in range(s.n_layers)]
    tokens = model.to_tokens([q.prompt for q in questions])
    _, cache = run_with_cache(model, tokens, pat_names + res_names, batch_size=cfg.batch_size, return_logits=False,
                              progress=progress)
    valid = tokens[1].bool().cpu()
    ids = tokens[0].cpu()
    sink_maps = torch.stack([find_sinks(cache[n].float().cpu(), valid, cfg.threshold, min_queries=cfg.min_queries)
                             for n in pat_names], 1)  # [b L H k]
    col_mean = torch.stack([column_means(cache[n].float().cpu(), valid) for n in pat_names], 1)  # [b L H k]
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

    sink_tok = sink_maps.any(dim=(1, 2)) & valid  # [b pos] a non-first sink of any head
    first = first_positions(valid)
    first_tok = torch.zeros_like(valid)
    first_tok[torch.arange(valid.shape[0], device=valid.device), first] = True
    other_tok = valid & ~sink_tok & ~first_tok
    task = questions[0].task
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
            massive.append({"task": task, "layer": layer, "dim": d, "mean_abs_at_sinks": round(float(at_sink[d]), 3),
                            "mean_abs_at_other_tokens": round(float(elsewhere[d]), 3),
                            "mean_abs_at_first_token": round(float(at_first[d]), 3),
                            "ratio_to_median": round(ratio, 1),
                            # massive at sinks: outsized against the median AND against ordinary tokens
                            "massive": ratio > cfg.massive_ratio and float(at_sink[d]) > 2 * float(elsewhere[d])})
        first_dims = torch.nonzero(at_first > cfg.massive_ratio * median).flatten().tolist()
        first_massive = [{"task": task, "layer": layer, "dim": d, "mean_abs_at_first_token": round(float(at_first[d]), 3),
                          "mean_abs_at_sinks": round(float(at_sink[d]), 3),
                          "ratio_to_median": round(float(at_first[d]) / max(median, 1e-12), 1)}
                         for d in sorted(first_dims, key=lambda d: -float(at_first[d]))[:8]]
    n_ex = int(valid[0].sum())
    return {"share": share, "strength": strength, "n": len(questions), "n_sinks": int(sink_maps.sum()),
            "token_counts": token_counts, "class_counts": class_counts, "head_tokens": head_tokens,
            "massive": massive, "first_massive": first_massive,
            "example_column_means": col_mean[0, :, :, :n_ex].contiguous(),
            "example_sinks": sink_maps[0, :, :, :n_ex].to(torch.uint8).contiguous(),
            "example_tokens": [tok.decode([int(t)]) for t, v in zip(ids[0], valid[0]) if v],
            "example_prompt": questions[0].prompt}


# ---------------------------------------------------------------------------- search
def _search_task(model: Any, task: str, calib: list[MCQuestion], heldout: list[MCQuestion], found: dict[str, Any],
                 cfg: SinksConfig, progress: bool) -> tuple[dict[str, Any], list[dict], list[dict], dict[str, Any]]:
    """ACT's choices on the calibration split of one task, then one held-out measurement."""
    strength = found["strength"]
    sink_heads = sorted(found["head_tokens"], key=lambda lh: (-float(strength[lh]), lh))
    candidates = [(l, h) for l, h in sink_heads if l >= cfg.min_layer][: cfg.max_search]
    scorer = _Scorer(model, calib, cfg.batch_size, sorted({l for l, _ in candidates}))
    base_c, base_lp = scorer.score()
    base = _means(base_c, base_lp)
    gains = []
    for l, h in tqdm(candidates, desc=f"{task}: head search", disable=not progress, leave=False):
        m = _means(*scorer.score([(l, h)], cfg.beta, cfg.threshold, cfg.min_queries))
        gains.append(((l, h), m[0] - base[0], m[1] - base[1]))
    ranked = sorted(gains, key=lambda x: (-x[1], -x[2]))
    chosen = [lh for lh, g, gl in ranked if g > 0 or (g == 0 and gl > 0)][: cfg.max_heads]
    beta, threshold = cfg.beta, cfg.threshold
    after_c, after_lp = base_c, base_lp
    grid: list[dict[str, Any]] = []
    if chosen:
        after_c, after_lp = scorer.score(chosen, beta, threshold, cfg.min_queries)
        best_single = (base[0] + ranked[0][1], base[1] + ranked[0][2])
        if len(chosen) > 1 and _better(best_single, _means(after_c, after_lp)):  # the set does worse: the best head
            chosen = chosen[:1]
            after_c, after_lp = scorer.score(chosen, beta, threshold, cfg.min_queries)
        best = _means(after_c, after_lp)
        grid.append({"task": task, "beta": beta, "threshold": threshold, "accuracy": round(best[0], 4),
                     "logprob": round(best[1], 4)})
        points = [(b, t) for b in cfg.betas for t in cfg.thresholds if (b, t) != (cfg.beta, cfg.threshold)]
        for b, t in tqdm(points, desc=f"{task}: beta x threshold", disable=not progress, leave=False):
            c, lp = scorer.score(chosen, b, t, cfg.min_queries)
            m = _means(c, lp)
            grid.append({"task": task, "beta": b, "threshold": t, "accuracy": round(m[0], 4), "logprob": round(m[1], 4)})
            if _better(m, best):
                best, beta, threshold, after_c, after_lp = m, b, t, c, lp
    del scorer
    keep = [min(l for l, _ in chosen)] if chosen else []
    held = _Scorer(model, heldout, cfg.batch_size, keep)
    before_c, before_lp = held.score()
    if chosen:
        act_c, act_lp = held.score(chosen, beta, threshold, cfg.min_queries)
    else:
        act_c, act_lp = before_c, before_lp
    del held

    chance = 1.0 / n_options(task)
    iv = {
        "difference by group": _group_difference(act_c, before_c, [q.group for q in heldout], cfg.seed),
        "base": wilson(int(before_c.sum()), len(before_c), split="test"),
        "act": wilson(int(act_c.sum()), len(act_c), split="test"),
        "difference": bootstrap_diff(act_c.float().cpu().numpy(), before_c.float().cpu().numpy(), seed=cfg.seed, split="test"),
        "logprob difference": bootstrap_diff(act_lp.cpu().numpy(), before_lp.cpu().numpy(), seed=cfg.seed, split="test"),
        "calibration base": wilson(int(base_c.sum()), len(base_c), split="calibration"),
        "calibration act": wilson(int(after_c.sum()), len(after_c), split="calibration"),
    }
    row = {"task": task, "chance": chance, "n_calib": len(calib), "n_heldout": len(heldout),
           "candidates": [head_name(l, h) for l, h in candidates],
           "heads": [head_name(l, h) for l, h in chosen], "beta": beta, "threshold": threshold,
           "calib_before": base[0], "calib_after": float(after_c.float().mean()),
           "before": float(before_c.float().mean()), "after": float(act_c.float().mean()),
           "difference": float(act_c.float().mean() - before_c.float().mean()),
           "logprob_before": float(before_lp.mean()), "logprob_after": float(act_lp.mean()),
           "base_above_chance": iv["base"].low > chance,
           "changed": int((act_c != before_c).sum())}
    search = [{"task": task, "name": head_name(l, h), "accuracy_gain": round(g, 4), "logprob_gain": round(gl, 4),
               "chosen": (l, h) in chosen} for (l, h), g, gl in gains]
    arrays = {"heldout_before": before_c.to(torch.uint8), "heldout_after": act_c.to(torch.uint8),
              "heldout_logp_before": before_lp.clone(), "heldout_logp_after": act_lp.clone()}
    return row, search, grid, {"intervals": iv, "arrays": arrays}


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Any, config: SinksConfig | None = None, progress: bool = True) -> SinksResult:
    """Per task: find non-first sinks on the calibration prompts, search ACT's heads, beta and
    threshold on them, and measure accuracy before and after on the held-out split."""
    cfg = config or SinksConfig()
    validate(cfg)
    s = model.shape
    splits = {t: task_splits(t, cfg.n_calib, cfg.n_heldout, seed=cfg.seed) for t in cfg.tasks}

    # 1-2. sinks and massive activations on each task's calibration prompts
    found = {t: _discover(model, splits[t][0], cfg, progress) for t in cfg.tasks}
    n_total = sum(f["n"] for f in found.values())
    share = sum(f["share"] * f["n"] for f in found.values()) / n_total
    strength = sum(f["strength"] * f["n"] for f in found.values()) / n_total
    token_counts: Counter = sum((f["token_counts"] for f in found.values()), Counter())
    class_counts: Counter = sum((f["class_counts"] for f in found.values()), Counter())
    head_tokens: dict[tuple[int, int], Counter] = {}
    for f in found.values():
        for lh, c in f["head_tokens"].items():
            head_tokens.setdefault(lh, Counter()).update(c)
    sink_heads = sorted(head_tokens, key=lambda lh: (-float(strength[lh]), lh))
    sinks = [{"name": head_name(l, h), "layer": l, "head": h, "share_of_prompts": round(float(share[l, h]), 4),
              "strength": round(float(strength[l, h]), 4),
              "tokens": dict(head_tokens[(l, h)].most_common(5))} for l, h in sink_heads]

    # 3. ACT per task: choices on the calibration split, one measurement on the held-out split
    rows, search, grid, intervals = [], [], [], {}
    heldout: dict[str, dict[str, torch.Tensor]] = {k: {} for k in ("heldout_before", "heldout_after",
                                                                    "heldout_logp_before", "heldout_logp_after")}
    for t in cfg.tasks:
        row, srch, grd, extra = _search_task(model, t, splits[t][0], splits[t][1], found[t], cfg, progress)
        rows.append(row)
        search += srch
        grid += grd
        for what, tensor in extra["arrays"].items():
            heldout[what][t] = tensor
        intervals.update({interval_name(t, k): v for k, v in extra["intervals"].items()})

    first = found[cfg.tasks[0]]
    result = SinksResult(
        config=cfg, sinks=sinks, calibration=rows, search=search, grid=grid,
        search_parameters={"tasks": list(cfg.tasks), "n_calib": cfg.n_calib, "n_heldout": cfg.n_heldout,
                              "max_search": cfg.max_search, "max_heads": cfg.max_heads, "min_layer": cfg.min_layer,
                              "min_queries": cfg.min_queries, "search_beta": cfg.beta,
                              "search_threshold": cfg.threshold, "betas": list(cfg.betas),
                              "thresholds": list(cfg.thresholds), "n_heads_in_model": s.n_layers * s.n_heads},
        n_sink_prompts=n_total, n_sinks_beyond_first=sum(f["n_sinks"] for f in found.values()),
        n_heads_with_sinks=len(sink_heads), sink_tokens=dict(token_counts.most_common(15)),
        sink_token_classes=dict(class_counts),
        massive_activations=[r for f in found.values() for r in f["massive"]],
        first_token_massive_activations=[r for f in found.values() for r in f["first_massive"]],
        example_tokens=first["example_tokens"], example_prompt=first["example_prompt"],
        sink_share=share, sink_strength=strength, example_column_means=first["example_column_means"],
        example_sinks=first["example_sinks"], **heldout, meta=provenance(model=model.name, seed=cfg.seed))
    for name, iv in intervals.items():
        result.set_interval(name, iv)
    return result
