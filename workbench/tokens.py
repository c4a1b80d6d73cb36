"""Tokenisation with the checks a researcher needs: no empty prompt lists, answers
that are exactly one token, right padding with the position of each last real token."""
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
    return enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)


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
