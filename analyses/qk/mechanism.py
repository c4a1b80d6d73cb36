"""The K-composition mechanism of induction (Olsson et al. 2022), checked held-out: on the
even-numbered prompts choose the top induction heads (share of second-copy queries whose
attended key is the induction target), the top previous-token heads (share attending to the
token before) and random control heads (outside the induction heads, in the same layers or
later); on the odd-numbered prompts measure how often a head's top key-side source (its
largest key-side marginal of the attended score on that prompt) is one of the chosen
previous-token heads, for the induction heads against the random heads.

Rank note: the induction analysis ranks by mean attention on the induction stripe; here the
ranking is by the share of queries whose *highest* score is at the target (the same prompts,
argmax instead of softmax mass)."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from workbench.heads import head_name, random_heads
from workbench.stats import Interval, bootstrap

from .attribution import component_names


def _grid(per_layer: list[dict[str, torch.Tensor]], key: str, rows: slice) -> torch.Tensor:
    """[layer head] mean of ``key`` over the prompts in ``rows``."""
    return torch.stack([p[key][rows].mean(0) for p in per_layer])


def _top(grid: torch.Tensor, k: int) -> list[tuple[int, int]]:
    order = torch.argsort(grid.flatten(), descending=True, stable=True)[:k]
    return [divmod(int(i), grid.shape[1]) for i in order]


def _hit_rows(model: Any, per_layer: list[dict[str, torch.Tensor]], heads: list[tuple[int, int]],
              sources: set[str], rows: slice) -> np.ndarray:
    """[prompt] per held-out prompt, the share of ``heads`` whose top key-side source is in ``sources``."""
    hits = []
    for layer, head in heads:
        names = component_names(model, layer)
        top = per_layer[layer]["key"][rows, head].argmax(-1)  # [prompt]
        hits.append([names[int(j)] in sources for j in top])
    return np.asarray(hits, dtype=float).mean(0)


def k_source_check(model: Any, per_layer: list[dict[str, torch.Tensor]], n_induction: int = 3, n_previous: int = 3,
                   n_random: int = 3, seed: int = 0) -> dict[str, Any] | None:
    """The held-out comparison (None with fewer than 4 prompts): chosen heads and both shares
    with bootstrap intervals over the held-out prompts."""
    n = per_layer[0]["key"].shape[0]
    if n < 4:
        return None
    choose, measure = slice(0, n, 2), slice(1, n, 2)
    induction = _top(_grid(per_layer, "target", choose), n_induction)
    previous = _top(_grid(per_layer, "previous", choose), n_previous)
    first = min(l for l, _ in induction)
    s = model.shape
    pool_exclude = set(induction) | {(l, h) for l in range(first) for h in range(s.n_heads)}
    controls = random_heads(s.n_layers, s.n_heads, n_random, random.Random(seed), exclude=pool_exclude)
    names = {head_name(l, h) for l, h in previous}
    ind = _hit_rows(model, per_layer, induction, names, measure)
    ctl = _hit_rows(model, per_layer, controls, names, measure)
    split = "held-out half"
    return {"induction_heads": [head_name(*h) for h in induction], "previous_token_heads": sorted(names),
            "random_heads": [head_name(*h) for h in controls],
            "induction": bootstrap(ind, seed=seed, split=split).to_dict(),
            "random": bootstrap(ctl, seed=seed, split=split).to_dict(),
            "difference": bootstrap(ind - ctl, seed=seed, split=split).to_dict()}


def set_intervals(result: Any, check: dict[str, Any]) -> None:
    """The check's figures as the result's intervals (the README row reads them)."""
    prev = ", ".join(check["previous_token_heads"])
    result.set_interval(f"share of held-out prompts where a top induction head's top key-side source is a top "
                        f"previous-token head ({prev})", Interval.from_dict(check["induction"]))
    result.set_interval("the same share for random heads (control)", Interval.from_dict(check["random"]))
    result.set_interval("induction minus random", Interval.from_dict(check["difference"]))
