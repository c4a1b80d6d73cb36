"""The prompts and query positions QK attribution reads: a task's prompts (repeated random
sequences for induction, IOI sentences) or one prompt given on the command line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.cache import Tokens, as_tokens
from workbench import names
from workbench.errors import InputError

TASKS = ("induction", "ioi")


@dataclass
class QueryPlan:
    """Tokens [batch pos], and per row the query positions and (where the task knows it)
    each query's target key (-1: none)."""

    tokens: Tokens
    queries: list[list[int]]
    targets: list[list[int]]


def parse_head(text: str, n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, int]:
    """``L18H6`` -> (18, 6), checked against the model's sizes when given."""
    try:
        layer, head = names.parse_head(text.strip().upper())  # the one head-name format
    except InputError:
        raise InputError(f"--head {text!r} is not a head name; write it as L{{layer}}H{{head}}, e.g. L18H6") from None
    if n_layers is not None and not 0 <= layer < n_layers:
        raise InputError(f"--head {text}: layer {layer} is out of range; the model has layers 0..{n_layers - 1}")
    if n_heads is not None and not 0 <= head < n_heads:
        raise InputError(f"--head {text}: head {head} is out of range; the model has heads 0..{n_heads - 1}")
    return layer, head


def candidate_tokens(model: Any) -> torch.Tensor:
    """Ordinary token ids (special and added tokens left out)."""
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    special |= set((getattr(tok, "added_tokens_decoder", None) or {}).keys())
    keep = torch.ones(model.shape.d_vocab, dtype=torch.bool)  # cpu: the token sampler works on the CPU
    ids = [i for i in special if 0 <= i < model.shape.d_vocab]
    if ids:
        keep[torch.tensor(ids)] = False  # cpu: indices into the CPU mask above
    return keep.nonzero().flatten()


def repeated_tokens(model: Any, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """[n pos] ``[BOS] + seq + seq`` with ``seq`` distinct random ordinary tokens."""
    cand = candidate_tokens(model)
    if seq_len > len(cand):
        raise InputError(f"--seq-len {seq_len} needs that many distinct tokens; the model has {len(cand)}")
    gen = torch.Generator().manual_seed(seed)
    seq = torch.stack([cand[torch.randperm(len(cand), generator=gen)[:seq_len]]  # cpu: a CPU generator: the same prompts on every device
                       for _ in range(n)])
    parts = [seq, seq]
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if bos is not None:
        parts.insert(0, torch.full((n, 1), int(bos), dtype=seq.dtype))  # cpu: joined with the CPU sequences
    return torch.cat(parts, dim=1)


def induction_plan(ids: torch.Tensor, seq_len: int, model: Any) -> QueryPlan:
    """Every second-copy token is a query; its target is the token after its first occurrence."""
    n, t = ids.shape
    queries = list(range(t - seq_len, t))
    targets = [q - (seq_len - 1) for q in queries]
    return QueryPlan(as_tokens(model, ids.to(model.device)), [queries] * n, [targets] * n)


def plan(model: Any, config: Any, tokens: torch.Tensor | None = None) -> QueryPlan:
    """The config's prompts and queries (``tokens``: repeated sequences given directly, for tests)."""
    if tokens is not None:
        return induction_plan(tokens, tokens.shape[1] // 2, model)
    if config.prompt:
        toks = as_tokens(model, [config.prompt])
        last = int(toks.last_positions[0])
        q = last if config.query < 0 else config.query
        if q > last:
            raise InputError(f"--query {config.query} is past the prompt's last position {last}")
        return QueryPlan(toks, [[q]], [[-1]])
    if config.task == "induction":
        return induction_plan(repeated_tokens(model, config.n_prompts, config.seq_len, config.seed), config.seq_len, model)
    from workbench.datasets import ioi_prompts

    toks = as_tokens(model, ioi_prompts(config.n_prompts, model.tokenizer, seed=config.seed).prompts)
    lasts = [int(x) for x in toks.last_positions]
    return QueryPlan(toks, [[x] for x in lasts], [[-1] for _ in lasts])
