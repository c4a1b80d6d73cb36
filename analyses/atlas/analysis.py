"""The head atlas: every head of a model, seen by every head-level analysis at once.

The atlas reads analyses only through the registry: each spec's ``head_columns`` declare the
per-head quantities it contributes (name, unit, direction) and how to read them from a saved
Result's typed properties. ``run`` gathers the newest saved run of every such analysis on the
model (``fill`` runs the missing ones at their page sizes, ``spec.page_defaults``), adds two
quantities of its own (attention entropy and mean attention distance, on IOI prompts), and
joins them into one table: one row per (layer, head), one column per quantity, with the run
each column came from. On that table: Spearman rank correlations between every pair of
columns with permutation p-values, the top heads of each column with their ranks in the
others, and role clusters. Two models (``--model A --model B``) are lined up by relative depth.
"""
from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import InputError, WorkbenchError
from workbench.names import act_name, head_name
from workbench.results import Result, list_runs, load_result, provenance
from workbench.spec import check_config, option
from workbench.checks import checked_run

from . import crossstats

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"
ATLAS_KEY = "atlas"
MAX_MODELS = 2


@dataclass
class AtlasConfig:
    models: tuple[str, ...] = option(("smollm2-135m",), flag="--model", aliases=("-m",),
                                     help="model whose saved runs make the atlas (registry name, hub id or folder); "
                                          "give it twice to line up two models by relative depth")
    fill: bool = option(False, help="run each head-level analysis that has no saved run on the model, at the small "
                                    "size its spec states for its page (spec.page_defaults), and save it")
    analyses: tuple[str, ...] = option((), flag="--analysis",
                                       help="head-level analyses to gather (default: every one whose spec declares "
                                            "head columns)")
    n_prompts: int = option(16, flag="--n", help="IOI prompts for attention entropy and mean attention distance",
                            min=1, max=10_000)
    prompt: str = option(DEFAULT_PROMPT, help="prompt of the head cards: attention pattern and top tokens through "
                                              "W_O and the unembedding")
    top_k: int = option(5, help="top heads listed per column", min=1)
    n_permutations: int = option(1000, flag="--permutations", help="permutations per correlation's p-value", min=10,
                                 max=1_000_000)
    n_clusters: int = option(0, flag="--clusters", help="role clusters (0: chosen by silhouette among 2..8)", min=0,
                             max=64)
    seed: int = 0

    def validate(self) -> None:
        if not self.models:
            raise InputError("--model is missing; name the model whose atlas to build (e.g. --model smollm2-135m)")
        if len(self.models) > MAX_MODELS:
            raise InputError(f"--model was given {len(self.models)} times; the atlas lines up {MAX_MODELS} models at most")
        if not self.prompt.strip():
            raise InputError("--prompt is empty; give the text the head cards show")
        known = head_level_keys()
        for key in self.analyses:
            if key not in known:
                raise InputError(f"--analysis {key} is not a head-level analysis; choose from {', '.join(known)}")


def head_level_specs() -> list[Any]:
    """Every installed analysis that declares per-head columns (the atlas itself excluded)."""
    from workbench.spec import specs

    return [s for s in specs().values() if s.head_columns and s.key != ATLAS_KEY]


def head_level_keys() -> list[str]:
    return [s.key for s in head_level_specs()]


def load_target(config: AtlasConfig, common: Any) -> list[Any]:
    """Every model named by ``--model``, on the common backend, device and dtype."""
    from workbench.models import load_model

    check_config(config)
    models = []
    for name in config.models:
        print(f"loading {name} ...", file=sys.stderr, flush=True)
        models.append(load_model(name, backend=common.backend, device=common.device, dtype=common.dtype,
                                 compile=common.compile or None))
    return models


# ----------------------------------------------------------------------------- gathering
@dataclass
class Gathered:
    """Columns read from Results: values by name and each column's description."""

    values: dict[str, torch.Tensor]
    columns: list[dict[str, Any]]


def _column_values(decl: Any, result: Any) -> dict[str, torch.Tensor]:
    """The columns one declaration gives for one Result: ``{full name: [layer head]}``."""
    try:
        got = decl.values(result)
    except (WorkbenchError, KeyError, AttributeError, TypeError, ValueError):
        return {}
    if got is None:
        return {}
    if isinstance(got, dict):
        # cpu: a result column, moved to the CPU right here
        return {f"{decl.name}_{k}": torch.as_tensor(v).detach().float().cpu() for k, v in got.items() if v is not None}
    return {decl.name: torch.as_tensor(got).detach().float().cpu()}  # cpu: a result column, moved to the CPU right here


def gather(model_name: str, specs_: list[Any], shape: tuple[int, int] | None = None,
           extra: tuple[Any, ...] = ()) -> Gathered:
    """The newest value of every declared column from the saved runs on ``model_name``
    (``extra`` Results first, as if newest). A run whose grid is not ``shape`` is skipped."""
    runs = [r for r in list_runs() if r.get("model") == model_name]
    values: dict[str, torch.Tensor] = {}
    columns: list[dict[str, Any]] = []
    for spec in specs_:
        names = set(spec.result_names)
        candidates: list[Any] = [r for r in extra if r.analysis in names and r.meta.get("model") == model_name]
        candidates += [r["path"] for r in runs if r["analysis"] in names]
        for cand in candidates:
            if isinstance(cand, str):
                try:
                    result = load_result(cand)
                except WorkbenchError as exc:
                    print(f"atlas: skipping {cand}: {exc}", file=sys.stderr)
                    continue
            else:
                result = cand
            for decl in spec.head_columns:
                for name, grid in _column_values(decl, result).items():
                    if name in values or grid.ndim != 2 or (shape is not None and tuple(grid.shape) != tuple(shape)):
                        continue
                    if shape is None:
                        shape = tuple(grid.shape)
                    values[name] = grid
                    columns.append({"name": name, "analysis": spec.key, "unit": decl.unit,
                                    "direction": int(decl.direction), "threshold": decl.threshold,
                                    "description": decl.description,
                                    "run": str(result.path) if result.path is not None else "",
                                    "created": result.meta.get("created")})
    return Gathered(values, columns)


def fill_missing(model: Any, specs_: list[Any], have: set[str], seed: int, progress: bool) -> list[dict[str, Any]]:
    """Run, at its page size, every head-level analysis with no saved run on ``model``; save each."""
    done = []
    for spec in specs_:
        if spec.key in have:
            continue
        fields = {f for f in spec.config.__dataclass_fields__}
        values = {k: v for k, v in spec.page_defaults.items() if k in fields}
        if "seed" in fields:
            values["seed"] = seed
        config = spec.config(**values)
        check_config(config)
        spec.check_target(config, model)
        if progress:
            print(f"atlas --fill: running {spec.key} with {values}", file=sys.stderr, flush=True)
        result = spec.run(model, config, progress=progress)
        path = result.save()
        done.append({"analysis": spec.key, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in values.items()}, "run": str(path)})
    return done


# ----------------------------------------------------------------------------- the atlas's own columns
def attention_columns(model: Any, n_prompts: int, seed: int) -> dict[str, torch.Tensor]:
    """[layer head] attention entropy (nats) and mean attention distance (tokens), averaged
    over every non-padding query after the first of ``n_prompts`` IOI prompts."""
    from workbench.cache import as_tokens, run_with_cache
    from workbench.datasets.ioi import ioi_prompts

    s = model.shape
    prompts = ioi_prompts(n_prompts, model.tokenizer, seed=seed).prompts
    tokens = as_tokens(model, prompts)
    names = [act_name("pattern", l) for l in range(s.n_layers)]
    _, cache = run_with_cache(model, tokens, names, batch_size=16, return_logits=False)
    mask = tokens.attention_mask.bool().cpu()  # [batch pos]
    t = mask.shape[1]
    queries = mask.clone()
    queries[:, 0] = False  # the first query has one key: entropy 0, distance 0 by construction
    # cpu: the patterns are moved to the CPU below
    dist = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).clamp(min=0).float()  # [q k]
    entropy = torch.zeros(s.n_layers, s.n_heads)  # cpu: a [layer head] result, filled from patterns moved to the CPU
    distance = torch.zeros(s.n_layers, s.n_heads)  # cpu: a [layer head] result, filled from patterns moved to the CPU
    n_q = queries.sum().clamp(min=1)
    for l, name in enumerate(names):
        p = cache[name].float().cpu()  # [batch head q k]
        ent = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)  # [batch head q]
        dd = (p * dist).sum(-1)
        w = queries[:, None, :].float()
        entropy[l] = (ent * w).sum((0, 2)) / n_q
        distance[l] = (dd * w).sum((0, 2)) / n_q
    return {"attn_entropy": entropy, "attn_distance": distance}


ATLAS_COLUMNS = {
    "attn_entropy": {"unit": "nats", "direction": -1, "threshold": None,
                     "description": "entropy of the head's attention, mean over queries of IOI prompts; lower = "
                                    "more focused"},
    "attn_distance": {"unit": "tokens", "direction": 1, "threshold": None,
                      "description": "mean distance from query to attended key, weighted by attention, on IOI prompts"},
}


def head_card(model: Any, prompt: str, k: int = 5) -> tuple[dict[str, Any], torch.Tensor]:
    """Every head on one prompt: its attention pattern [layer head q k] and the top tokens of
    its output at the last position through W_O, the final norm's weight and the unembedding."""
    from workbench.cache import run_with_cache

    s = model.shape
    names = [act_name(w, l) for l in range(s.n_layers) for w in ("pattern", "z")]
    _, cache = run_with_cache(model, [prompt], names, return_logits=False)
    ids = model.to_tokens([prompt])[0][0]
    tokens = [model.tokenizer.decode([int(i)]) for i in ids]
    adapter = model.adapter
    layers = adapter.layers(model.hf)
    w_u = adapter.unembed(model.hf).weight.detach().float().cpu()  # [V M]
    norm_w = getattr(adapter.final_norm(model.hf), "weight", None)
    # cpu: the unembedding and norm weight are moved to the CPU here
    scale = norm_w.detach().float().cpu() if norm_w is not None else torch.ones(w_u.shape[1])
    patterns = torch.stack([cache[act_name("pattern", l)][0].float().cpu() for l in range(s.n_layers)])
    top_tokens, top_logits = [], []
    for l in range(s.n_layers):
        w_o, _ = adapter.out_weights(adapter.attn(layers[l]), s)  # [H D M]
        z = cache[act_name("z", l)][0, -1].float().cpu()  # [H D]
        out = torch.einsum("hd,hdm->hm", z, w_o.detach().float().cpu()) * scale  # [H M]
        logits = out @ w_u.T  # [H V]
        val, idx = logits.topk(k, dim=-1)
        top_tokens.append([[model.tokenizer.decode([int(i)]) for i in row] for row in idx])
        top_logits.append([[round(float(v), 4) for v in row] for row in val])
    return {"prompt": prompt, "tokens": tokens, "top_tokens": top_tokens, "top_logits": top_logits}, patterns


# ----------------------------------------------------------------------------- one model's atlas
def build_one(name: str, model: Any | None, config: AtlasConfig, progress: bool,
              extra: tuple[Any, ...] = ()) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    specs_ = [s for s in head_level_specs() if not config.analyses or s.key in config.analyses]
    shape = (model.shape.n_layers, model.shape.n_heads) if model is not None else None
    got = gather(name, specs_, shape, extra)
    filled: list[dict[str, Any]] = []
    if config.fill and model is not None:
        have = {c["analysis"] for c in got.columns}
        filled = fill_missing(model, specs_, have, config.seed, progress)
        if filled:
            got = gather(name, specs_, shape, extra)
    values, columns = dict(got.values), list(got.columns)
    card, arrays = None, {}
    if model is not None:
        for col, grid in attention_columns(model, config.n_prompts, config.seed).items():
            values[col] = grid
            columns.append({"name": col, "analysis": ATLAS_KEY, **ATLAS_COLUMNS[col], "run": "", "created": None})
        card, pattern = head_card(model, config.prompt, k=5)
        arrays["card_pattern"] = pattern
    if not values:
        raise InputError(f"no saved run of any head-level analysis on {name} ({', '.join(s.key for s in specs_)}); "
                         f"run one (e.g. `workbench induction --model {name}`) or pass --fill")
    n_layers, n_heads = next(iter(values.values())).shape
    order = [c["name"] for c in columns]
    table = torch.stack([values[c] for c in order])  # [column layer head]
    flat = table.reshape(len(order), -1).cpu().numpy().astype(float)
    directions = [c["direction"] for c in columns]
    labels, clusters = crossstats.role_clusters(flat, order, directions, config.n_clusters, int(n_heads))
    atlas = {
        "model": name,
        "n_layers": int(n_layers),
        "n_heads": int(n_heads),
        "columns": columns,
        "filled": filled,
        "n_attention_prompts": config.n_prompts if model is not None else 0,
        "correlations": crossstats.correlations(flat, order, config.n_permutations, config.seed),
        "top_heads": crossstats.top_heads(flat, order, directions, int(n_heads), config.top_k),
        "clusters": clusters,
        "card": card,
    }
    # cpu: cluster labels from scikit-learn, a result array
    arrays.update({"table": table, "clusters": torch.as_tensor(labels).reshape(int(n_layers), int(n_heads))})
    return atlas, arrays


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(target: Any, config: AtlasConfig | None = None, progress: bool = True, results: tuple[Any, ...] = ()) -> "AtlasResult":
    """The atlas of each model in ``target`` (a loaded model, a list of them, or None: the
    saved runs of ``config.models[0]`` alone, with no model forward). ``results`` are unsaved
    Results to read as if they were the newest runs (the ablation report's own run)."""
    cfg = config or AtlasConfig()
    check_config(cfg)
    models = [] if target is None else (list(target) if isinstance(target, (list, tuple)) else [target])
    names = [m.name for m in models] or list(cfg.models[:1])
    atlases, tensors = [], {"table": {}, "clusters": {}, "card_pattern": {}}
    for i, name in enumerate(names):
        atlas, arr = build_one(name, models[i] if i < len(models) else None, cfg, progress, tuple(results))
        atlases.append(atlas)
        for k, v in arr.items():
            tensors[k][str(i)] = v
    comparison = None
    if len(atlases) == 2:
        comparison = crossstats.compare(
            [(a, tensors["table"][str(i)].reshape(len(a["columns"]), -1).cpu().numpy().astype(float))
             for i, a in enumerate(atlases)])
    result = AtlasResult(config=cfg, models=names, atlases=atlases, comparison=comparison, tables=tensors["table"],
                         cluster_grids=tensors["clusters"], card_patterns=tensors["card_pattern"],
                         meta=provenance(model=names[0], seed=cfg.seed))
    first = atlases[0]
    best = max((c for c in first["correlations"] if c["rho"] is not None), key=lambda c: abs(c["rho"]), default=None)
    if best is not None and best.get("interval"):
        from workbench.stats import Interval

        result.set_interval(f"Spearman {best['a']} vs {best['b']} over heads", Interval.from_dict(best["interval"]))
    return result


# ----------------------------------------------------------------------------- result
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
    atlases: list[dict[str, Any]]  # per model: columns, correlations, top heads, clusters, card, filled
    comparison: dict[str, Any] | None = None  # two models lined up by relative depth (None for one model)
    tables: dict[str, Float[Tensor, "column layer head"]]  # every quantity of every head
    cluster_grids: dict[str, Int[Tensor, "layer head"]]  # the cluster of each head (-1: not clustered)
    card_patterns: dict[str, Float[Tensor, "layer head query key"]] = field(default_factory=dict)  # with a model

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        for old, new in (("table", "tables"), ("clusters", "cluster_grids"), ("card_pattern", "card_patterns")):
            arrays = _by_model(arrays, old, new)
        return metrics, arrays

    def atlas(self, i: int = 0) -> dict[str, Any]:
        """Model ``i``'s atlas (its columns, correlations, top heads, clusters, card)."""
        return self.atlases[i]

    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def model(self) -> str:
        return str(self.models[0])

    @property
    def n_layers(self) -> int:
        return int(self.atlas()["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.atlas()["n_heads"])

    @property
    def columns(self) -> list[dict[str, Any]]:
        """Each column: name, analysis, unit, direction, threshold, description, run, created."""
        return list(self.atlas()["columns"])

    @property
    def column_names(self) -> list[str]:
        return [c["name"] for c in self.atlas()["columns"]]

    @property
    def table(self) -> torch.Tensor:
        """[column layer head] every quantity of every head (model 0)."""
        return self.tables["0"]

    def table_of(self, i: int = 0) -> torch.Tensor:
        return self.tables[str(i)]

    def column(self, name: str, i: int = 0) -> torch.Tensor:
        """[layer head] one column of model ``i``'s table."""
        names = [c["name"] for c in self.atlas(i)["columns"]]
        if name not in names:
            raise InputError(f"the atlas of {self.atlas(i)['model']} has no column '{name}'; it has {', '.join(names)}")
        return self.table_of(i)[names.index(name)]

    @property
    def correlations(self) -> list[dict[str, Any]]:
        """Every pair of columns: a, b, rho, its Fisher-z interval, the permutation p-value and n."""
        return list(self.atlas()["correlations"])

    @property
    def top_heads(self) -> dict[str, list[dict[str, Any]]]:
        """Per column, its top heads (direction-aware) with their ranks in every other column."""
        return dict(self.atlas()["top_heads"])

    @property
    def clusters(self) -> list[dict[str, Any]]:
        """Role clusters: id, size, heads, and the columns that describe them most."""
        return list(self.atlas()["clusters"]["clusters"])

    @property
    def cluster_labels(self) -> torch.Tensor:
        """[layer head] the cluster of each head (-1: not clustered)."""
        return self.cluster_grids["0"]

    @property
    def card(self) -> dict[str, Any] | None:
        """The head cards' prompt, its tokens and each head's top tokens (None without a model)."""
        return self.atlas().get("card")

    @property
    def card_pattern(self) -> torch.Tensor | None:
        """[layer head q k] attention patterns on the card prompt (None without a model)."""
        return self.card_patterns.get("0")

    @property
    def filled(self) -> list[dict[str, Any]]:
        """Analyses ``--fill`` ran, with the settings they ran at and their runs."""
        return list(self.atlas().get("filled") or [])

    def frame(self, i: int = 0) -> Any:
        """Model ``i``'s table as a pandas DataFrame: one row per head, one column per quantity."""
        import pandas as pd

        a = self.atlas(i)
        n_layers, n_heads = int(a["n_layers"]), int(a["n_heads"])
        table = self.table_of(i).reshape(len(a["columns"]), -1).cpu().numpy()
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        data = {"model": a["model"], "layer": layer, "head": head,
                "name": [head_name(l, h) for l, h in zip(layer, head)],
                "cluster": self.cluster_grids[str(i)].flatten().cpu().numpy()}
        data.update({c["name"]: table[j] for j, c in enumerate(a["columns"])})
        return pd.DataFrame(data)

    def sources(self, i: int = 0) -> Any:
        """Model ``i``'s columns with the analysis and run each came from, as a DataFrame."""
        import pandas as pd

        a = self.atlas(i)
        return pd.DataFrame([{"model": a["model"], **{k: c.get(k) for k in
                              ("name", "analysis", "unit", "direction", "threshold", "run", "created", "description")}}
                             for c in a["columns"]])

    def files(self) -> dict[str, str | bytes]:
        """atlas.csv, atlas_columns.csv and atlas.parquet for pandas users (every model's rows)."""
        import pandas as pd

        frame = pd.concat([self.frame(i) for i in range(self.n_models)], ignore_index=True)
        sources = pd.concat([self.sources(i) for i in range(self.n_models)], ignore_index=True)
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return {"atlas.csv": frame.to_csv(index=False), "atlas_columns.csv": sources.to_csv(index=False),
                "atlas.parquet": buf.getvalue()}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"models": self.model_names}
        for i in range(self.n_models):
            a = self.atlas(i)
            key = "" if i == 0 else f"_{i}"
            out[f"columns{key}"] = {c["name"]: c["run"] or "this run" for c in a["columns"]}
            out[f"top_heads{key}"] = {col: [t["head"] for t in rows] for col, rows in a["top_heads"].items()}
            out[f"clusters{key}"] = [{"size": c["size"], "described_by": c["description"]} for c in a["clusters"]["clusters"]]
            out[f"strongest_correlations{key}"] = [
                {"a": c["a"], "b": c["b"], "rho": c["rho"], "p": c["p"]}
                for c in sorted((c for c in a["correlations"] if c["rho"] is not None and math.isfinite(c["rho"])),
                                key=lambda c: -abs(c["rho"]))[:5]]
        if self.comparison:
            out["roles_in_both"] = self.comparison["roles_in_both"]
        if self.path is not None:
            out["run"] = str(self.path)
        return out
