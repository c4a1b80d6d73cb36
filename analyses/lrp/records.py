"""The rows of the LRP results' tables, as typed records (saved as JSON objects with these keys,
in this order: the same JSON the rows were saved as when they were dicts)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadRelevance:
    """A head among those of largest mean |AttnLRP relevance| over the prompts."""

    layer: int
    head: int
    relevance: float  # signed mean over prompts


@dataclass(frozen=True)
class TopClass:
    """One of an image's most probable ImageNet classes."""

    index: int
    name: str
    prob: float
    logit: float
