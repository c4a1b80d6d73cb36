"""The head atlas's result: every head of one or two models with every per-head quantity the
installed analyses declare (``records.ModelAtlas`` per model), the tables as tensors, and
the views pandas users want (one row per head, the columns' sources, CSV and Parquet)."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.names import head_name
from workbench.results import Result

from .config import ATLAS_KEY, AtlasConfig
from .records import Comparison, ModelAtlas

if TYPE_CHECKING:
    import pandas as pd

SOURCE_FIELDS = ("name", "analysis", "unit", "direction", "threshold", "run", "created", "description")


def _by_model(arrays: dict[str, Tensor], old: str, new: str) -> dict[str, Tensor]:
    """Format 1's ``{old}_{i}`` tensors as entry ``i`` of dict field ``new``."""
    out = {}
    for name, tensor in arrays.items():
        stem, _, i = name.rpartition("_")
        out[f"{new}/{i}" if stem == old and i.isdigit() else name] = tensor
    return out


@dataclass(kw_only=True)
class AtlasResult(Result):
    """Every head of one or two models with every per-head quantity the installed analyses
    declare, their correlations, top heads, role clusters and head cards. The dict fields'
    keys are the model's index (``"0"``, ``"1"``)."""

    analysis = ATLAS_KEY

    config: AtlasConfig
    models: list[str]
    atlases: list[ModelAtlas]  # per model: columns, correlations, top heads, clusters, card, filled
    comparison: Comparison | None = None  # two models lined up by relative depth (None for one model)
    tables: dict[str, Float[Tensor, "column layer head"]]  # every quantity of every head
    cluster_grids: dict[str, Int[Tensor, "layer head"]]  # the cluster of each head (-1: not clustered)
    card_patterns: dict[str, Float[Tensor, "layer head query key"]] = field(default_factory=dict)  # with a model

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        for old, new in (("table", "tables"), ("clusters", "cluster_grids"), ("card_pattern", "card_patterns")):
            arrays = _by_model(arrays, old, new)
        return metrics, arrays

    # ----- one model's data, by its index -------------------------------------------------
    def atlas(self, i: int = 0) -> ModelAtlas:
        """Model ``i``'s atlas (its columns, correlations, top heads, clusters, card)."""
        return self.atlases[i]

    def table(self, i: int = 0) -> torch.Tensor:
        """[column layer head] every quantity of every head of model ``i``."""
        return self.tables[str(i)]

    def column(self, name: str, i: int = 0) -> torch.Tensor:
        """[layer head] one column of model ``i``'s table."""
        return self.table(i)[self.atlas(i).column_index(name)]

    def cluster_labels(self, i: int = 0) -> torch.Tensor:
        """[layer head] the cluster of each head of model ``i`` (-1: not clustered)."""
        return self.cluster_grids[str(i)]

    def card_pattern(self, i: int = 0) -> torch.Tensor | None:
        """[layer head q k] attention patterns on the card prompt (None without a model)."""
        return self.card_patterns.get(str(i))

    # ----- for pandas users ------------------------------------------------------------------
    def frame(self, i: int = 0) -> pd.DataFrame:
        """Model ``i``'s table as a pandas DataFrame: one row per head, one column per quantity."""
        import pandas as pd

        a = self.atlas(i)
        table = self.table(i).reshape(len(a.columns), -1).cpu().numpy()
        layer, head = np.divmod(np.arange(a.n_layers * a.n_heads), a.n_heads)
        data = {"model": a.model, "layer": layer, "head": head,
                "name": [head_name(l, h) for l, h in zip(layer, head)],
                "cluster": self.cluster_labels(i).flatten().cpu().numpy()}
        data.update({c.name: table[j] for j, c in enumerate(a.columns)})
        return pd.DataFrame(data)

    def sources(self, i: int = 0) -> pd.DataFrame:
        """Model ``i``'s columns with the analysis and run each came from, as a DataFrame."""
        import pandas as pd

        a = self.atlas(i)
        return pd.DataFrame([{"model": a.model, **{k: getattr(c, k) for k in SOURCE_FIELDS}} for c in a.columns])

    def files(self) -> dict[str, str | bytes]:
        """atlas.csv, atlas_columns.csv and atlas.parquet for pandas users (every model's rows)."""
        import pandas as pd

        frame = pd.concat([self.frame(i) for i in range(len(self.models))], ignore_index=True)
        sources = pd.concat([self.sources(i) for i in range(len(self.models))], ignore_index=True)
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return {"atlas.csv": frame.to_csv(index=False), "atlas_columns.csv": sources.to_csv(index=False),
                "atlas.parquet": buf.getvalue()}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"models": list(self.models)}
        for i in range(len(self.models)):
            a = self.atlas(i)
            key = "" if i == 0 else f"_{i}"
            out[f"columns{key}"] = {c.name: c.run or "this run" for c in a.columns}
            out[f"top_heads{key}"] = {col: [t.head for t in rows] for col, rows in a.top_heads.items()}
            out[f"clusters{key}"] = [{"size": c.size, "described_by": c.description} for c in a.clusters.clusters]
            out[f"strongest_correlations{key}"] = [
                {"a": c.a, "b": c.b, "rho": c.rho, "p": c.p}
                for c in sorted((c for c in a.correlations if c.rho is not None and math.isfinite(c.rho)),
                                key=lambda c: -abs(c.rho or 0.0))[:5]]
        if self.comparison:
            out["roles_in_both"] = self.comparison.roles_in_both
        if self.path is not None:
            out["run"] = str(self.path)
        return out
