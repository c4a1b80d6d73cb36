"""What the atlas of one model holds, as typed records: its columns, the runs ``--fill``
made, the rank correlations, each column's top heads, the role clusters and the head card;
and two models lined up by relative depth. Saved as JSON objects with these keys in this
order (the JSON the atlas saved when these were dicts, so earlier runs load as they are).

``crossstats`` computes on plain rows; ``from_row`` makes a record of one."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from workbench.errors import InputError
from workbench.stats import Interval


@dataclass(frozen=True)
class AtlasColumn:
    """One per-head quantity: where it came from and how to read it (``direction`` +1: larger
    is more of the role; ``threshold``: the value past which a head has the role)."""

    name: str
    analysis: str
    unit: str
    direction: int
    threshold: float | None
    description: str
    run: str  # the saved run it was read from ("" for the atlas's own columns)
    created: str | None  # when that run was made


@dataclass(frozen=True)
class FilledRun:
    """An analysis ``--fill`` ran: the settings it ran at and its saved run."""

    analysis: str
    settings: dict[str, Any]
    run: str


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho between two columns over the heads where both are finite, its Fisher-z
    interval and a permutation p-value (all None when a column is constant or too short)."""

    a: str
    b: str
    n: int
    rho: float | None
    p: float | None
    interval: Interval | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Correlation:
        iv = row["interval"]
        return cls(a=row["a"], b=row["b"], n=row["n"], rho=row["rho"], p=row["p"],
                   interval=Interval.from_dict(iv) if iv else None)


@dataclass(frozen=True)
class TopHead:
    """One of a column's strongest heads, with its value and its rank in every column."""

    head: str
    layer: int
    head_index: int
    value: float | None
    ranks: dict[str, int]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TopHead:
        return cls(**row)


@dataclass(frozen=True)
class ClusterTrait:
    """A column that describes a cluster: its mean direction-aware rank there, strong or weak."""

    column: str
    mean_rank: float
    side: str


@dataclass(frozen=True)
class Cluster:
    """One role cluster: its heads, their mean rank in every column and the columns that describe it."""

    id: int
    size: int
    members: list[str]
    profile: dict[str, float]
    strongest: list[ClusterTrait]
    description: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Cluster:
        return cls(**{**row, "strongest": [ClusterTrait(**s) for s in row["strongest"]]})


@dataclass(frozen=True)
class Clustering:
    """The role clusters of a model's heads: k, the method, its silhouette and the columns used."""

    k: int
    method: str
    silhouette: float | None
    columns: list[str]
    clusters: list[Cluster]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Clustering:
        return cls(**{**row, "clusters": [Cluster.from_row(c) for c in row["clusters"]]})


@dataclass(frozen=True)
class HeadCard:
    """The head cards' prompt, its tokens, and every head's top tokens (and their logits) at the
    last position through W_O, the final norm's weight and the unembedding: ``[layer][head][k]``."""

    prompt: str
    tokens: list[str]
    top_tokens: list[list[list[str]]]
    top_logits: list[list[list[float]]]


@dataclass(frozen=True)
class ModelAtlas:
    """Every head of one model: the columns, the runs ``--fill`` made, correlations, top heads,
    role clusters and the head card (None without a model forward)."""

    model: str
    n_layers: int
    n_heads: int
    columns: list[AtlasColumn]
    filled: list[FilledRun]
    n_attention_prompts: int  # IOI prompts of the attention columns (0 without a model forward)
    correlations: list[Correlation]
    top_heads: dict[str, list[TopHead]]
    clusters: Clustering
    card: HeadCard | None

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column_index(self, name: str) -> int:
        """The row of column ``name`` in the model's table."""
        names = self.column_names()
        if name not in names:
            raise InputError(f"the atlas of {self.model} has no column '{name}'; it has {', '.join(names)}")
        return names.index(name)


@dataclass(frozen=True)
class RoleRow:
    """One column both models have: whether its role is present in each (``_a``, ``_b``), in how
    many heads at what mean relative depth, the strongest head and both depth profiles."""

    column: str
    unit: str
    present_a: bool
    n_a: int
    depth_a: float | None
    top_a: str
    top_depth_a: float
    profile_a: list[float | None]
    present_b: bool
    n_b: int
    depth_b: float | None
    top_b: str
    top_depth_b: float
    profile_b: list[float | None]
    both: bool


@dataclass(frozen=True)
class Comparison:
    """Two models lined up by relative depth (``depth_bins`` bins of (layer + 0.5) / n_layers)."""

    models: list[str]
    depth_bins: int
    roles: list[RoleRow]
    roles_in_both: list[str]
    rule: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Comparison:
        return cls(**{**row, "roles": [RoleRow(**r) for r in row["roles"]]})


def table(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Records as plain rows: one dict per record, its fields in order."""
    return [dataclasses.asdict(r) for r in records]
