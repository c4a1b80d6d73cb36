"""ACT's sink statistic and its calibration on attention patterns (Yu et al., ICML 2024).

A position is a sink of a head when its column mean of attention, over the real queries
that can see it, is over the threshold. Calibration scales the attention to every non-first
sink by ``beta`` and gives the freed mass to the other visible positions in proportion to
their attention, so rows still sum to one."""
from __future__ import annotations

from typing import Callable

import torch

from workbench.names import act_name

Patch = Callable[[torch.Tensor], torch.Tensor]


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


def _calibrator(valid: torch.Tensor, heads: torch.Tensor, beta: float, threshold: float, min_queries: int) -> Patch:
    """The patch that calibrates one layer's pattern on ``heads``."""
    def patch(pattern: torch.Tensor) -> torch.Tensor:
        return calibrate_pattern(pattern, valid, heads, beta, threshold, min_queries)

    return patch


def calibration_patches(head_sets: dict[int, torch.Tensor], valid: torch.Tensor, beta: float,
                        threshold: float, min_queries: int = 1) -> dict[str, Patch]:
    """Patches on ``blocks.{l}.attn.hook_pattern`` calibrating the heads in ``head_sets[l]`` ([head] bool)."""
    return {act_name("pattern", l): _calibrator(valid, hs, beta, threshold, min_queries)
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
