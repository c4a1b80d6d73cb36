"""Tokenisation with the checks a researcher needs: no empty prompt lists, no prompt
longer than the model's context, answers that are exactly one token, right padding
with the position of each last real token."""
from __future__ import annotations

from typing import Any

import torch

from .errors import InputError


def tokenize(model: Any, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch pos] token ids and attention mask, right-padded, on the model's device."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("the prompt list is empty; pass at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompt {i} is empty; every prompt needs some text")
    tok = model.tokenizer
    tok.padding_side = "right"
    enc = tok(prompts, return_tensors="pt", padding=True)
    lengths = enc["attention_mask"].sum(dim=1)
    longest = int(lengths.argmax()) if len(lengths) else 0
    check_context(model, int(lengths[longest]) if len(lengths) else 0, f"prompt {longest}")
    return enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)


def context_limit(model: Any) -> int | None:
    """The most positions the model can attend over (``shape.n_ctx``), or None when unknown."""
    shape = getattr(model, "shape", None)
    n_ctx = getattr(shape, "n_ctx", None)
    return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None


def check_context(model: Any, n_tokens: int, what: str = "the prompt") -> None:
    """Refuse a sequence longer than the model's context: one line naming the length and the limit."""
    limit = context_limit(model)
    if limit is not None and n_tokens > limit:
        name = getattr(model, "name", "this model")
        raise InputError(f"{what} is {n_tokens} tokens but {name} has a context of {limit} tokens; "
                         f"shorten it to at most {limit} tokens or use a model with a longer context")


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch] index of each prompt's last real token (right padding)."""
    return attention_mask.long().sum(dim=1) - 1


def single_token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` when it encodes to exactly one token, else a one-line error."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise InputError(
            f"answer {text!r} is {len(ids)} tokens {pieces} in this tokenizer, not one; choose single-token answers "
            f"(names with a leading space usually are)"
        )
    return ids[0]
