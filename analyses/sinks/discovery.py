"""Finding sinks beyond the first token on a task's calibration prompts: which heads have
them, on which tokens, and the massive activations in the residual stream at those tokens."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from workbench.cache import run_with_cache
from workbench.datasets.multiple_choice import MCQuestion
from workbench.names import act_name

from .config import SinksConfig
from .patterns import column_means, find_sinks, first_positions, token_class
from .records import FirstTokenMassiveDim, MassiveDim

if TYPE_CHECKING:
    from workbench.models import Model

Head = tuple[int, int]
N_MASSIVE = 8  # dimensions listed per task


class Discovery(TypedDict):
    """What one task's calibration prompts show: per-head sink share and strength [layer head],
    sink counts by token, token class and head, the massive activations, and the example prompt."""

    share: torch.Tensor
    strength: torch.Tensor
    n: int
    n_sinks: int
    token_counts: Counter[str]
    class_counts: Counter[str]
    head_tokens: dict[Head, Counter[str]]
    massive: list[MassiveDim]
    first_massive: list[FirstTokenMassiveDim]
    example_column_means: torch.Tensor
    example_sinks: torch.Tensor
    example_tokens: list[str]
    example_prompt: str


@dataclass
class _Peak:
    """The layer whose residual stream is largest at the sink tokens (mean |h| per dimension
    at the sinks, at other tokens and at the first token, and the median |h| of real tokens)."""

    layer: int
    at_sink: torch.Tensor
    elsewhere: torch.Tensor
    at_first: torch.Tensor
    median: float


def _token_counts(sink_maps: torch.Tensor, ids: torch.Tensor,
                  tok: Any) -> tuple[Counter[str], Counter[str], dict[Head, Counter[str]]]:
    """Sink tokens counted over head x prompt occurrences: by text, by class and per head."""
    token_counts: Counter[str] = Counter()
    class_counts: Counter[str] = Counter()
    head_tokens: dict[Head, Counter[str]] = {}
    for b, l, h, k in sink_maps.nonzero().tolist():
        text = tok.decode([int(ids[b, k])])
        token_counts[text] += 1
        class_counts[token_class(text)] += 1
        head_tokens.setdefault((l, h), Counter())[text] += 1
    return token_counts, class_counts, head_tokens


def _peak_layer(cache: Any, res_names: list[str], valid: torch.Tensor, sink_tok: torch.Tensor,
                first_tok: torch.Tensor) -> _Peak:
    """The first layer with the largest mean |h| at the sink tokens in any dimension."""
    other_tok = valid & ~sink_tok & ~first_tok
    best: tuple[float, _Peak] | None = None
    for l, n in enumerate(res_names):
        h = cache[n].float().abs().cpu()  # [b pos d]
        at_sink = h[sink_tok].mean(0)  # [d]
        median = h[valid].median()
        peak = float(at_sink.max())
        if best is None or peak > best[0]:
            elsewhere = h[other_tok].mean(0) if other_tok.any() else torch.zeros_like(at_sink)
            best = (peak, _Peak(l, at_sink, elsewhere, h[first_tok].mean(0), float(median)))
    assert best is not None, "a model has at least one layer"
    return best[1]


def _massive_rows(p: _Peak, task: str, massive_ratio: float) -> list[MassiveDim]:
    """The dimensions largest at the sink tokens, and whether each is massive there."""
    rows = []
    for d in torch.argsort(-p.at_sink)[:N_MASSIVE].tolist():
        ratio = float(p.at_sink[d]) / max(p.median, 1e-12)
        rows.append(MassiveDim(task=task, layer=p.layer, dim=d, mean_abs_at_sinks=round(float(p.at_sink[d]), 3),
                               mean_abs_at_other_tokens=round(float(p.elsewhere[d]), 3),
                               mean_abs_at_first_token=round(float(p.at_first[d]), 3),
                               ratio_to_median=round(ratio, 1),
                               # massive at sinks: outsized against the median AND against ordinary tokens
                               massive=ratio > massive_ratio and float(p.at_sink[d]) > 2 * float(p.elsewhere[d])))
    return rows


def _first_token_rows(p: _Peak, task: str, massive_ratio: float) -> list[FirstTokenMassiveDim]:
    """The dimensions massive at the first token (over ``massive_ratio`` x the median), largest first."""
    dims = torch.nonzero(p.at_first > massive_ratio * p.median).flatten().tolist()
    return [FirstTokenMassiveDim(task=task, layer=p.layer, dim=d, mean_abs_at_first_token=round(float(p.at_first[d]), 3),
                                 mean_abs_at_sinks=round(float(p.at_sink[d]), 3),
                                 ratio_to_median=round(float(p.at_first[d]) / max(p.median, 1e-12), 1))
            for d in sorted(dims, key=lambda d: -float(p.at_first[d]))[:N_MASSIVE]]


def discover(model: Model, questions: list[MCQuestion], cfg: SinksConfig, progress: bool) -> Discovery:
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
    token_counts, class_counts, head_tokens = _token_counts(sink_maps, ids, tok)

    sink_tok = sink_maps.any(dim=(1, 2)) & valid  # [b pos] a non-first sink of any head
    first_tok = torch.zeros_like(valid)
    first_tok[torch.arange(valid.shape[0], device=valid.device), first_positions(valid)] = True
    task = questions[0].task
    massive: list[MassiveDim] = []
    first_massive: list[FirstTokenMassiveDim] = []
    if sink_tok.any():
        peak = _peak_layer(cache, res_names, valid, sink_tok, first_tok)
        massive = _massive_rows(peak, task, cfg.massive_ratio)
        first_massive = _first_token_rows(peak, task, cfg.massive_ratio)
    n_ex = int(valid[0].sum())
    return {"share": sink_maps.any(-1).float().mean(0),  # [L H] share of prompts with a non-first sink
            # [L H] mean over prompts of the strongest non-first sink
            "strength": (col_mean * sink_maps).amax(-1).mean(0),
            "n": len(questions), "n_sinks": int(sink_maps.sum()),
            "token_counts": token_counts, "class_counts": class_counts, "head_tokens": head_tokens,
            "massive": massive, "first_massive": first_massive,
            "example_column_means": col_mean[0, :, :, :n_ex].contiguous(),
            "example_sinks": sink_maps[0, :, :, :n_ex].to(torch.uint8).contiguous(),
            "example_tokens": [tok.decode([int(t)]) for t, v in zip(ids[0], valid[0]) if v],
            "example_prompt": questions[0].prompt}
