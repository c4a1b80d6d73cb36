"""What an edge or node outside a circuit carries: the ablation, one named choice.

Every place that measures a circuit (faithfulness, its curve, ACDC, exact edge patching)
takes an ``Ablation``; the old name ``corrupt`` is read as ``counterfactual``.
"""
from __future__ import annotations

from enum import Enum

import torch

from ..errors import InputError


class Ablation(str, Enum):
    """The value an ablated sender's output is replaced by, as the receiver reads it."""

    COUNTERFACTUAL = "counterfactual"
    """the paired corrupt run, prompt by prompt and position by position (the field's default)."""
    MEAN = "mean"
    """the mean over the corrupt prompts, position by position."""
    ZERO = "zero"
    """zero: the sender writes nothing."""
    RESAMPLE = "resample"
    """the corrupt run of another prompt (a fixed derangement of the prompts, by seed)."""

    def __str__(self) -> str:
        return self.value


ALIASES = {"corrupt": Ablation.COUNTERFACTUAL}
"""Old names still accepted: ``corrupt`` was the counterfactual ablation's first name."""

CHOICES = tuple(a.value for a in Ablation) + tuple(ALIASES)
"""Every spelling the command line accepts."""


def parse_ablation(value: "str | Ablation") -> Ablation:
    """An ``Ablation`` from its name or an alias; a one-line error for anything else."""
    if isinstance(value, Ablation):
        return value
    text = str(value).strip().lower()
    if text in ALIASES:
        return ALIASES[text]
    try:
        return Ablation(text)
    except ValueError:
        raise InputError(f"unknown ablation '{value}'; choose one of {', '.join(a.value for a in Ablation)}") from None


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A permutation of range(n) with no fixed point (n >= 2): the donor prompt of each prompt."""
    if n < 2:
        raise InputError("resample ablation needs at least 2 prompts (each takes another prompt's corrupt run)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)  # cpu: an index over prompts, used on any device
    shift = int(torch.randint(1, n, (1,), generator=g))
    out = torch.empty(n, dtype=torch.long)  # cpu: see above
    out[perm] = perm.roll(shift)
    return out


def ablation_values(acts: dict[str, torch.Tensor], ablation: "str | Ablation", n: int,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """The activations [n ...] an ablated sender carries, from the corrupt run's ``acts``."""
    how = parse_ablation(ablation)
    if how is Ablation.COUNTERFACTUAL:
        return acts
    if how is Ablation.MEAN:
        return {k: v.mean(dim=0, keepdim=True).expand(n, *v.shape[1:]) for k, v in acts.items()}
    if how is Ablation.ZERO:
        return {k: torch.zeros_like(v) for k, v in acts.items()}
    donor = derangement(n, seed)
    return {k: v[donor.to(v.device)] for k, v in acts.items()}
