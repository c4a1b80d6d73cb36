"""Patching metrics: logit difference, normalised effect, accuracy."""
from __future__ import annotations

import torch


def logit_diff(last_logits: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """[..., vocab] logits at the answer position -> [...] logit(correct) - logit(wrong), in
    float32 (a difference of two large logits loses its digits in a 16-bit type)."""
    c = last_logits.gather(-1, correct.expand(last_logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    w = last_logits.gather(-1, wrong.expand(last_logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return c.float() - w.float()


def normalized_effect(patched: torch.Tensor | float, clean: torch.Tensor | float, corrupt: torch.Tensor | float) -> torch.Tensor:
    """(patched - clean) / (corrupt - clean): 0 = no effect, 1 = the full corrupt effect."""
    # cpu: a number becomes a 0-dim tensor, which mixes with any device; a tensor keeps its own
    denom = torch.as_tensor(corrupt) - torch.as_tensor(clean)
    if torch.any(denom.abs() < 1e-8):
        raise ValueError("clean and corrupt metrics are equal, so the normalised effect is undefined; use a corruption that changes the answer")
    # cpu: a number becomes a 0-dim tensor, which mixes with any device; a tensor keeps its own
    return (torch.as_tensor(patched) - torch.as_tensor(clean)) / denom


def accuracy(last_logits: torch.Tensor, correct: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Share of prompts whose top token (among ``candidates`` [batch k] if given) is ``correct``."""
    if candidates is not None:
        cand_logits = last_logits.gather(-1, candidates)
        pred = candidates.gather(-1, cand_logits.argmax(-1, keepdim=True)).squeeze(-1)
    else:
        pred = last_logits.argmax(-1)
    return (pred == correct).float().mean()
