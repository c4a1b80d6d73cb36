"""Induction heads: how much each head attends, on a random token sequence repeated
twice, from a token in the second copy to the token right after that token's first
occurrence (Olsson et al. 2022, "In-context learning and induction heads").

The input follows TransformerLens's convention: ``[BOS] + seq + seq`` with ``seq`` random
tokens (distinct within a row here, so every token of the second copy has exactly one
earlier occurrence). For a query at position ``q`` of the second copy the induction
target is ``q - (seq_len - 1)``: the diagonal at offset ``1 - seq_len`` that TransformerLens's
demo reads from ``hook_pattern``. The demo averages the whole diagonal, which also holds
one or two first-copy queries with nothing to induct from; this score averages only the
``seq_len`` second-copy queries, so a perfect induction head scores exactly 1.

The previous-token score is the mean attention from every query ``q >= 1`` to ``q - 1``
(the diagonal at offset -1), over the whole repeated sequence: the layer-0 half of the
induction circuit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from workbench.cache import run_with_cache
from workbench.errors import InputError
from workbench.names import act_name, head_name
from workbench.stats import split_half_top
from workbench.results import Result, provenance
from workbench.spec import option
from workbench.checks import checked_run

if TYPE_CHECKING:
    from workbench.models import Model


@dataclass
class InductionConfig:
    n_prompts: int = option(32, flag="--n", help="random token sequences (each repeated twice)", min=1, max=100_000)
    seq_len: int = option(20, help="random tokens before the sequence repeats", min=2, max=4096)
    threshold: float = option(0.4, help="induction score from which a head counts as an induction head (0.4 is the "
                              "cut of ARENA's induction_attn_detector; a head attending uniformly to the past "
                              "scores about 0.03 at seq_len 20)", min=0.0, max=1.0)
    prepend_bos: bool = option(True, help="start every sequence with the tokenizer's BOS token "
                               "(TransformerLens's convention; skipped when the tokenizer has none)")
    top_k: int = option(10, help="heads listed in the summary", min=1)
    batch_size: int = option(32, help="sequences per forward pass", min=1)
    seed: int = 0


def uses_bos(model: Model, config: InductionConfig) -> bool:
    """Whether the sequences start with a BOS token (asked for and the tokenizer has one)."""
    return bool(config.prepend_bos) and getattr(model.tokenizer, "bos_token_id", None) is not None


def sequence_length(model: Model, config: InductionConfig) -> int:
    """Positions per row: [BOS] + seq + seq."""
    return int(uses_bos(model, config)) + 2 * config.seq_len


def candidate_tokens(model: Model) -> torch.Tensor:
    """Token ids the random sequences draw from: the vocabulary less special and added tokens."""
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    special |= set((getattr(tok, "added_tokens_decoder", None) or {}).keys())
    # cpu: the token sampler works on the CPU; sequences are moved to the model per batch
    keep = torch.ones(model.shape.d_vocab, dtype=torch.bool)
    ids = [i for i in special if 0 <= i < model.shape.d_vocab]
    if ids:
        # cpu: the token sampler works on the CPU; sequences are moved to the model per batch
        keep[torch.tensor(ids)] = False
    return keep.nonzero().flatten()


def check_model(config: InductionConfig, model: Model) -> None:
    """The repeated sequence must fit the model's context and its vocabulary must have
    ``seq_len`` distinct ordinary tokens; one-line errors naming the option otherwise."""
    total = sequence_length(model, config)
    if total > model.shape.n_ctx:
        raise InputError(f"--seq-len {config.seq_len} makes {total} positions but {model.name} holds {model.shape.n_ctx}; "
                         f"use --seq-len {(model.shape.n_ctx - 1) // 2} or less")
    n_cand = int(candidate_tokens(model).numel())
    if config.seq_len > n_cand:
        raise InputError(f"--seq-len {config.seq_len} needs that many distinct tokens but {model.name} has {n_cand}; "
                         "lower --seq-len")


def estimate_bytes(config: InductionConfig, model: Model) -> int:
    """Peak memory of one forward pass: the logits and every layer's attention pattern (float32)."""
    s, n = model.shape, min(config.batch_size, config.n_prompts)
    t = sequence_length(model, config)
    return 2 * 4 * n * t * (s.d_vocab + s.n_layers * s.n_heads * t)


def repeated_tokens(model: Model, config: InductionConfig) -> torch.Tensor:
    """[n_prompts pos] token ids: [BOS] + seq + seq, ``seq`` distinct random tokens per row,
    the same for the same seed."""
    cand = candidate_tokens(model)
    gen = torch.Generator().manual_seed(config.seed)
    # cpu: the token sampler works on the CPU; sequences are moved to the model per batch
    seq = torch.stack([cand[torch.randperm(len(cand), generator=gen)[: config.seq_len]]
                       for _ in range(config.n_prompts)])
    parts = [seq, seq]
    if uses_bos(model, config):
        # cpu: the token sampler works on the CPU; sequences are moved to the model per batch
        parts.insert(0, torch.full((config.n_prompts, 1), int(model.tokenizer.bos_token_id), dtype=seq.dtype))
    return torch.cat(parts, dim=1)


def induction_stripe(pattern: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[... seq_len] attention of each second-copy query to its induction target
    ``q - (seq_len - 1)``, from a pattern [... query key] whose last ``2*seq_len`` positions
    are seq + seq."""
    return pattern.diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)[..., -seq_len:]


def previous_token_stripe(pattern: torch.Tensor) -> torch.Tensor:
    """[... pos-1] attention of each query ``q >= 1`` to ``q - 1``."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)


def uniform_baseline(seq_len: int, bos: bool) -> float:
    """The induction score of a head that attends uniformly to every earlier position:
    the mean of 1/(q+1) over the second-copy queries q."""
    start = int(bos) + seq_len
    return sum(1.0 / (q + 1) for q in range(start, start + seq_len)) / seq_len


@dataclass(frozen=True)
class InductionHead:
    """One head's two scores (a row of the summary's ``top_heads``)."""

    layer: int
    head: int
    induction_score: float
    prev_token_score: float


@dataclass(kw_only=True)
class InductionResult(Result):
    """Every head's induction and previous-token score on repeated random sequences."""

    analysis = "induction"

    config: InductionConfig
    top_heads: list[InductionHead]  # by induction score, highest first
    induction_heads: list[str]  # L{l}H{h} of every head at or over the threshold, highest score first
    n_induction_heads: int
    threshold: float
    max_induction_score: float
    max_prev_token_score: float
    uniform_baseline: float  # what a head attending uniformly to the past would score on this layout
    n_prompts: int
    seq_len: int
    bos: bool  # whether the sequences started with a BOS token
    induction_score: Float[Tensor, "layer head"]  # mean attention from second-copy tokens to their targets
    prev_token_score: Float[Tensor, "layer head"]  # mean attention from each token to the one before it
    induction_per_sequence: Float[Tensor, "prompt layer head"]


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model, config: InductionConfig | None = None, progress: bool = True) -> InductionResult:
    """Score every head on ``n_prompts`` repeated random sequences, ``batch_size`` at a time."""
    config = config or InductionConfig()
    if config.n_prompts < 1:
        raise InputError(f"--n must be at least one prompt (got {config.n_prompts})")
    if config.seq_len < 2:
        raise InputError(f"--seq-len must be at least 2 (got {config.seq_len})")
    check_model(config, model)
    s = model.shape
    bos = uses_bos(model, config)
    tokens = repeated_tokens(model, config)
    names = [act_name("pattern", l) for l in range(s.n_layers)]
    # cpu: per-prompt scores, filled with .cpu() slices
    ind_seq = torch.zeros(config.n_prompts, s.n_layers, s.n_heads, dtype=torch.float64)
    prev_sum = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)  # cpu: per-head sums, added with .cpu() values
    starts = range(0, config.n_prompts, config.batch_size)
    for start in tqdm(starts, desc="induction scores", disable=not progress, leave=False):
        chunk = tokens[start:start + config.batch_size].to(model.device)
        _, cache = run_with_cache(model, chunk, names, return_logits=False)
        for l, name in enumerate(names):
            pattern = cache[name].double()  # [batch head query key]
            ind_seq[start:start + len(chunk), l] = induction_stripe(pattern, config.seq_len).mean(dim=2).cpu()
            prev_sum[l] += previous_token_stripe(pattern).sum(dim=(0, 2)).cpu()
    n_pos = tokens.shape[1]
    induction = ind_seq.mean(dim=0).float()
    prev = (prev_sum / (config.n_prompts * (n_pos - 1))).float()

    flat = induction.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    top = [InductionHead(int(i // s.n_heads), int(i % s.n_heads), float(flat[i]), float(prev.flatten()[i]))
           for i in order[: config.top_k]]
    over = [i for i in order if float(flat[i]) >= config.threshold]
    result = InductionResult(
        config=config, top_heads=top, induction_heads=[head_name(i // s.n_heads, i % s.n_heads) for i in over],
        n_induction_heads=len(over), threshold=config.threshold, max_induction_score=float(flat.max()),
        max_prev_token_score=float(prev.max()), uniform_baseline=uniform_baseline(config.seq_len, bos),
        n_prompts=config.n_prompts, seq_len=config.seq_len, bos=bos, induction_score=induction,
        prev_token_score=prev, induction_per_sequence=ind_seq.float(),
        meta=provenance(model=model.name, seed=config.seed) | {"backend": model.backend})
    set_held_out_intervals(result)
    return result


def set_held_out_intervals(result: InductionResult, n_top: int = 3) -> None:
    """The top heads ranked on the even-numbered sequences, scored on the odd ones."""
    per_seq = result.induction_per_sequence
    n_heads = per_seq.shape[2]
    names = [head_name(i // n_heads, i % n_heads) for i in range(per_seq.shape[1] * n_heads)]
    top = split_half_top(per_seq.flatten(1).cpu().numpy(), names, n_top)
    for rank, (name, iv) in enumerate(top, start=1):
        result.set_interval(f"induction score, head ranked #{rank} on the ranking half ({name})", iv)
