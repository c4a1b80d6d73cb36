"""Statistics across the atlas's columns (private to the atlas): rank correlations with
permutation p-values, each column's top heads with their ranks elsewhere, role clusters on
rank-normalised columns, and two models lined up by relative depth.

Arrays are ``[column head]`` with heads flattened as ``layer * n_heads + head``."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import rankdata

from workbench.names import head_name
from workbench.stats import permutation_p, spearman

SPLIT = "all heads"
MAX_AUTO_CLUSTERS = 8
DEPTH_BINS = 5
OUTLIER_Z = 3.5


def _name(i: int, n_heads: int) -> str:
    """The name of flat head index ``i`` (layer-major)."""
    return head_name(i // n_heads, i % n_heads)


def _usable(x: np.ndarray) -> bool:
    x = x[np.isfinite(x)]
    return len(x) > 3 and float(np.ptp(x)) > 0


def correlations(table: np.ndarray, names: list[str], n_perm: int, seed: int) -> list[dict[str, Any]]:
    """Spearman's rho between every pair of columns over the heads where both are finite,
    its Fisher-z interval, and a two-sided permutation p-value (|rho| against ``n_perm``
    shuffles of one column's ranks, ``workbench.stats.permutation_p``)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            x, y = table[i], table[j]
            ok = np.isfinite(x) & np.isfinite(y)
            row: dict[str, Any] = {"a": names[i], "b": names[j], "n": int(ok.sum()), "rho": None, "p": None,
                                   "interval": None}
            if not (_usable(x[ok]) and _usable(y[ok])):
                out.append(row)
                continue
            iv = spearman(x[ok], y[ok], split=SPLIT)
            rx, ry = rankdata(x[ok]), rankdata(y[ok])
            rx, ry = rx - rx.mean(), ry - ry.mean()
            denom = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
            perms = rng.permuted(np.tile(ry, (n_perm, 1)), axis=1)
            null = perms @ rx / denom
            row.update(rho=float(iv.value), p=permutation_p(abs(iv.value), np.abs(null)), interval=iv.to_dict())
            out.append(row)
    return out


def direction_ranks(x: np.ndarray, direction: int) -> np.ndarray:
    """1 = the strongest head of a column (largest value, or smallest for direction -1);
    ties share the best rank; non-finite values rank last."""
    v = np.where(np.isfinite(x), direction * x, -np.inf)
    return rankdata(-v, method="min").astype(int)


def top_heads(table: np.ndarray, names: list[str], directions: list[int], n_heads: int,
              k: int) -> dict[str, list[dict[str, Any]]]:
    """Per column, its ``k`` strongest heads past the column's median (a flag lists only flagged
    heads), each with its value and its rank in every column."""
    ranks = {n: direction_ranks(table[j], directions[j]) for j, n in enumerate(names)}
    out = {}
    for j, name in enumerate(names):
        v = directions[j] * table[j]
        past = np.isfinite(v) & (v > np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else np.zeros_like(v, bool)
        order = [i for i in np.argsort(ranks[name], kind="stable") if past[i]][:k]  # only heads past the median
        out[name] = [{"head": _name(int(i), n_heads), "layer": int(i) // n_heads, "head_index": int(i) % n_heads,
                      "value": float(table[j, i]) if np.isfinite(table[j, i]) else None,
                      "ranks": {n: int(r[i]) for n, r in ranks.items()}} for i in order]
    return out


def rank_normalise(table: np.ndarray, directions: list[int]) -> np.ndarray:
    """[column head] each column's direction-aware rank scaled to (0, 1] (1 = strongest); ties
    share their average rank, so a flag's unflagged heads sit near the middle, not at the top."""
    out = []
    for x, d in zip(table, directions):
        v = np.where(np.isfinite(x), d * x, -np.inf)
        out.append(rankdata(v, method="average") / len(v))
    return np.stack(out)


METHOD = "ward on rank-normalised columns"


def _fit_clusters(x: np.ndarray, n_clusters: int) -> tuple[np.ndarray, int, float | None]:
    """Ward clustering of the [head column] profiles: (labels, k, silhouette), with ``n_clusters``
    clusters, or (0) the k in 2..8 with the best silhouette (the smallest such k on a tie)."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    n = x.shape[0]
    if n_clusters:
        k = min(n_clusters, n - 1)
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
        return labels, k, float(silhouette_score(x, labels)) if 1 < k < n else None
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(2, min(MAX_AUTO_CLUSTERS, n - 1) + 1):
        lab = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
        s = float(silhouette_score(x, lab))
        if best is None or s > best[0] + 1e-12:
            best = (s, k, lab)
    if best is None:
        raise ValueError(f"role clusters need at least 3 heads, got {n}")
    sil, k, labels = best
    return labels, k, sil


def _by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """The labels renumbered by cluster size, largest first (ties keep their order)."""
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    relabel = np.empty(k, dtype=int)
    relabel[order] = np.arange(k)
    return relabel[labels]


def _describe(x: np.ndarray, labels: np.ndarray, k: int, used: list[str], n_heads: int) -> list[dict[str, Any]]:
    """Each cluster's members, mean rank in every column, and the three columns where it departs
    most from the middle."""
    clusters = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        profile = x[members].mean(0)
        dev = profile - 0.5
        strongest = np.argsort(-np.abs(dev), kind="stable")[:3]
        described = [{"column": used[j], "mean_rank": round(float(profile[j]), 3),
                      "side": "strong" if dev[j] > 0 else "weak"} for j in strongest]
        clusters.append({"id": c, "size": int(len(members)), "members": [_name(int(m), n_heads) for m in members],
                         "profile": {used[j]: round(float(profile[j]), 4) for j in range(len(used))},
                         "strongest": described,
                         "description": ", ".join(f"{d['side']} {d['column']} ({d['mean_rank']:.2f})" for d in described)})
    return clusters


def role_clusters(table: np.ndarray, names: list[str], directions: list[int], n_clusters: int,
                  n_heads: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Heads grouped by their profile across the usable columns (Ward agglomerative clustering
    of rank-normalised columns; ``n_clusters`` 0 picks k in 2..8 by silhouette). Each cluster
    is described by the columns where its mean rank departs most from the middle."""
    n = table.shape[1]
    keep = [j for j in range(len(names)) if np.isfinite(table[j]).all() and _usable(table[j])]
    empty = {"k": 0, "method": METHOD, "silhouette": None, "columns": [], "clusters": []}
    if len(keep) < 2 or n < 4:
        return np.full(n, -1), empty
    x = rank_normalise(table[keep], [directions[j] for j in keep]).T  # [head column]
    used = [names[j] for j in keep]
    labels, k, sil = _fit_clusters(x, n_clusters)
    labels = _by_size(labels, k)
    return labels, {"k": int(k), "method": METHOD, "silhouette": sil, "columns": used,
                    "clusters": _describe(x, labels, k, used, n_heads)}


def role_heads(x: np.ndarray, direction: int, threshold: float | None) -> np.ndarray:
    """Heads that have a column's role: past its declared threshold, or else robust outliers
    (direction-aware value at least 3.5 robust z over the median, MAD scaled by 1.4826)."""
    v = direction * x
    ok = np.isfinite(v)
    if threshold is not None:
        return ok & (v > direction * threshold)
    med = np.median(v[ok])
    mad = 1.4826 * np.median(np.abs(v[ok] - med))
    scale = mad if mad > 0 else (np.std(v[ok]) or 1.0)
    return ok & ((v - med) / scale >= OUTLIER_Z)


def depth_profile(x: np.ndarray, direction: int, n_layers: int, n_heads: int) -> list[float | None]:
    """Mean rank-normalised value per relative-depth bin (``DEPTH_BINS`` equal bins of layer / n_layers)."""
    r = rank_normalise(x[None], [direction])[0]
    depth = (np.arange(n_layers * n_heads) // n_heads + 0.5) / n_layers
    bins = np.minimum((depth * DEPTH_BINS).astype(int), DEPTH_BINS - 1)
    return [round(float(r[bins == b].mean()), 4) if (bins == b).any() else None for b in range(DEPTH_BINS)]


def compare(atlases: list[tuple[dict[str, Any], np.ndarray]]) -> dict[str, Any]:
    """Two atlases lined up by relative depth: for every column both have, whether its role is
    present in each model (heads past the threshold, or outliers), how many heads have it and at
    what mean relative depth, the strongest head of each, and both depth profiles."""
    (a, ta), (b, tb) = atlases
    names_a = [c["name"] for c in a["columns"]]
    names_b = [c["name"] for c in b["columns"]]
    rows = []
    for name in [n for n in names_a if n in names_b]:
        col = a["columns"][names_a.index(name)]
        row: dict[str, Any] = {"column": name, "unit": col["unit"]}
        for tag, atlas, table, names in (("a", a, ta, names_a), ("b", b, tb, names_b)):
            x = table[names.index(name)]
            L, H = int(atlas["n_layers"]), int(atlas["n_heads"])
            heads = role_heads(x, col["direction"], col["threshold"])
            depth = (np.flatnonzero(heads) // H + 0.5) / L
            best = int(np.argmin(direction_ranks(x, col["direction"])))
            row[f"present_{tag}"] = bool(heads.any())
            row[f"n_{tag}"] = int(heads.sum())
            row[f"depth_{tag}"] = round(float(depth.mean()), 3) if len(depth) else None
            row[f"top_{tag}"] = _name(best, H)
            row[f"top_depth_{tag}"] = round((best // H + 0.5) / L, 3)
            row[f"profile_{tag}"] = depth_profile(x, col["direction"], L, H)
        row["both"] = row["present_a"] and row["present_b"]
        rows.append(row)
    return {"models": [a["model"], b["model"]], "depth_bins": DEPTH_BINS, "roles": rows,
            "roles_in_both": [r["column"] for r in rows if r["both"]],
            "rule": f"a role is present when a head passes the column's declared threshold, or else is an outlier "
                    f"(robust z >= {OUTLIER_Z}); depth = (layer + 0.5) / n_layers"}
