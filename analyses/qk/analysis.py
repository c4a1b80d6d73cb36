"""QK attribution and composition scores: why a head attends where it does.

For one head, each query's pre-softmax score to its attended key (the highest) is split
exactly into (query component, key component) pairs (``attribution``); so is the score
difference between the attended key and the runner-up ("why here and not there"). The
pairs are averaged per prompt, then over prompts with bootstrap intervals. Beside them,
Q-, K- and V-composition scores of every ordered pair of heads from the weights alone
(``composition``), corrected for the random baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.checks import checked_run
from workbench.heads import head_name
from workbench.results import Result, provenance
from workbench.spec import option
from workbench.stats import Interval, bootstrap

from .attribution import component_names, decompose, pair_scores, qk_parts
from .columns import strongest
from .composition import MODES, composition_scores, strongest_sources
from .prompts import TASKS, QueryPlan, parse_head, plan
from .mechanism import k_source_check
from .mechanism import set_intervals as set_mechanism_intervals
from .sources import per_prompt_sources, top_sources

if TYPE_CHECKING:
    from workbench.models import Model


@dataclass
class QKConfig:
    head: str = option("", help="the head whose scores are attributed, as L{layer}H{head} (default: the head "
                               "with the strongest K-composition from the weights)")
    task: str = option("induction", help="prompts: induction (repeated random tokens; every second-copy token is a "
                                         "query) or ioi (the last token is the query)", choices=TASKS)
    prompt: str = option("", help="one prompt instead of the task's prompts")
    query: int = option(-1, help="with --prompt: the query position (-1: the last token)", min=-1)
    n_prompts: int = option(16, flag="--n", help="task prompts", min=1, max=10_000)
    seq_len: int = option(10, help="induction: random tokens before the sequence repeats", min=2, max=2048)
    top_k: int = option(10, help="pairs and sources listed", min=1)
    batch_size: int = option(8, help="prompts per forward pass", min=1)
    seed: int = 0


def check_model(config: QKConfig, model: Model) -> None:
    """The head must exist in the model (one line naming --head otherwise)."""
    if config.head:
        parse_head(config.head, model.shape.n_layers, model.shape.n_heads)


def estimate_bytes(config: QKConfig, model: Model) -> int:
    """The component stack of one batch (float64): components x batch x positions x width."""
    s = model.shape
    layer = parse_head(config.head, s.n_layers, s.n_heads)[0] if config.head else s.n_layers - 1
    pos = 2 * config.seq_len + 1 if not config.prompt else 4 * len(config.prompt) // 3 + 8
    comps = 3 + layer * (s.n_heads + 2)
    return int(3 * 8 * comps * min(config.batch_size, config.n_prompts) * pos * s.d_model)


@dataclass(frozen=True)
class Source:
    """One source (a component, or a ``query · key`` pair) with its mean over prompts and
    bootstrap interval."""

    component: str
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class SourceValue:
    """A source and one value (a measured marginal, or a composition score)."""

    component: str
    value: float


@dataclass(frozen=True)
class HeadSources:
    """One head's measured top sources of its attended score, strongest |value| first."""

    key: list[SourceValue]
    query: list[SourceValue]


@dataclass(frozen=True)
class MechanismCheck:
    """The held-out K-composition check of induction (``mechanism.k_source_check``)."""

    induction_heads: list[str]
    previous_token_heads: list[str]
    random_heads: list[str]
    induction: Interval
    random: Interval
    difference: Interval


@dataclass(kw_only=True)
class QKResult(Result):
    """One head's scores split into (query, key) source pairs, every head's measured sources,
    and composition scores of every pair of heads from the weights."""

    analysis = "qk"

    config: QKConfig
    head: str
    layer: int
    head_index: int
    components: list[str]  # the residual components feeding the head, ``bias`` last
    top_pairs: list[Source]  # pairs of the attended score, by |mean|
    query_side: list[Source]
    key_side: list[Source]
    diff_top_pairs: list[Source]  # the same for attended minus runner-up
    diff_query_side: list[Source]
    diff_key_side: list[Source]
    attended_is_target_share: float | None  # induction: share of queries attending to the target
    identity_error: float  # largest |sum of pairs - the model's score|
    n_prompts: int
    n_queries: int
    composition_baseline: float
    composition_sources: dict[str, list[SourceValue]]  # per mode, the head's strongest writers
    head_sources: dict[str, HeadSources]  # every head's measured sources on these prompts
    mechanism: MechanismCheck | None = None
    pairs: Float[Tensor, "prompt component component"]
    pairs_diff: Float[Tensor, "prompt component component"]
    composition: dict[str, Float[Tensor, "writer_layer writer_head layer head"]]  # Q, K, V; NaN unless earlier


def _items(model: Model, qplan: QueryPlan, layer: int, head: int, batch_size: int,
           progress: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], float]:
    """Per prompt: the mean pair contributions to the attended score [C C] and to attended -
    runner-up [C C]; per query whether the attended key is the target; the identity's error."""
    n = len(qplan.tokens)
    pairs, diffs, hits, err = [], [], [], 0.0
    for start in tqdm(range(0, n, batch_size), desc="QK attribution", disable=not progress, leave=False):
        dec = decompose(model, qplan.tokens.slice(start, start + batch_size), layer)
        q, k, scale = qk_parts(model, dec, head)
        for row in range(len(dec.lengths)):
            p_att, p_diff = [], []
            for i, target in zip(qplan.queries[start + row], qplan.targets[start + row]):
                p = pair_scores(q, k, scale, row, i)  # [C C key]
                model_scores = dec.scores[row, head, i, : i + 1]
                err = max(err, float((p.sum((0, 1)) - model_scores).abs().max()))
                order = torch.argsort(model_scores, descending=True)
                att = int(order[0])
                p_att.append(p[..., att])
                if len(order) > 1:
                    p_diff.append(p[..., att] - p[..., int(order[1])])
                if target >= 0:
                    hits.append(float(att == target))
            pairs.append(torch.stack(p_att).mean(0).float().cpu())
            diffs.append(torch.stack(p_diff).mean(0).float().cpu() if p_diff else torch.zeros_like(pairs[-1]))
    return pairs, diffs, hits, err


def summarise(per_prompt: torch.Tensor, names: list[str], k: int, seed: int) -> dict[str, list[Source]]:
    """Top pairs and both marginals of [prompt C C], by |mean|, each with a bootstrap interval over prompts."""
    x = per_prompt.double().cpu().numpy()

    def rows(values: np.ndarray, labels: list[str]) -> list[Source]:
        order = np.argsort(-np.abs(values.mean(0)), kind="stable")[:k]
        out = []
        for j in order:
            iv = bootstrap(values[:, j], seed=seed, split="all prompts")
            out.append(Source(labels[j], iv.value, iv.low, iv.high))
        return out

    c = len(names)
    pair_labels = [f"{a} · {b}" for a in names for b in names]
    return {"pairs": rows(x.reshape(len(x), c * c), pair_labels), "query_side": rows(x.sum(2), names),
            "key_side": rows(x.sum(1), names)}


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: QKConfig | None = None, progress: bool = True,
        tokens: torch.Tensor | None = None) -> QKResult:
    """Attribute the head's scores on the config's prompts; score composition from the weights.
    ``tokens`` [n 2*seq_len]: repeated sequences given directly (tests' hand-built models)."""
    config = config or QKConfig()
    s = model.shape
    comp, base = composition_scores(model, seed=config.seed)
    if config.head:
        layer, head = parse_head(config.head, s.n_layers, s.n_heads)
    else:
        best = strongest(comp["K"]).nan_to_num(float("-inf"))
        layer, head = divmod(int(best.flatten().argmax()), s.n_heads)
    qplan = plan(model, config, tokens)
    pairs, diffs, hits, err = _items(model, qplan, layer, head, config.batch_size, progress)
    per_layer = per_prompt_sources(model, qplan, config.batch_size)
    check = k_source_check(model, per_layer, seed=config.seed) if qplan.targets[0][0] >= 0 else None
    names = component_names(model, layer)
    att = summarise(torch.stack(pairs), names, config.top_k, config.seed)
    why = summarise(torch.stack(diffs), names, config.top_k, config.seed)
    sources = {m: strongest_sources(comp[m], k=config.top_k)[layer][head] for m in MODES}
    by_head = top_sources(model, [{side: p[side].mean(0) for side in ("key", "query")} for p in per_layer], k=config.top_k)
    result = QKResult(
        config=config, head=head_name(layer, head), layer=layer, head_index=head, components=names,
        top_pairs=att["pairs"], query_side=att["query_side"], key_side=att["key_side"],
        diff_top_pairs=why["pairs"], diff_query_side=why["query_side"], diff_key_side=why["key_side"],
        attended_is_target_share=float(np.mean(hits)) if hits else None, identity_error=err,
        n_prompts=len(pairs), n_queries=sum(len(q) for q in qplan.queries), composition_baseline=base,
        composition_sources={m: [SourceValue(head_name(a, b), v) for a, b, v in sources[m]] for m in MODES},
        head_sources={name: HeadSources([SourceValue(*x) for x in e["key"]], [SourceValue(*x) for x in e["query"]])
                      for name, e in by_head.items()},
        mechanism=None if check is None else MechanismCheck(
            check["induction_heads"], check["previous_token_heads"], check["random_heads"],
            *(Interval.from_dict(check[k]) for k in ("induction", "random", "difference"))),
        pairs=torch.stack(pairs), pairs_diff=torch.stack(diffs),
        composition={m: comp[m].float().cpu() for m in MODES},
        meta=provenance(model=model.name, seed=config.seed) | {"backend": model.backend})
    for side in ("key_side", "query_side"):
        top = getattr(result, side)[0]
        result.set_interval(f"{side.replace('_', '-')} top source of {result.head}'s attended score ({top.component})",
                            Interval(top.mean, top.low, top.high, len(pairs), "bootstrap", split="all prompts"))
    if check is not None:
        set_mechanism_intervals(result, check)
    return result

