"""A ``PromptSet``: prompts with a correct and a wrong single-token answer each, plus a
corrupted twin set of the same token lengths for patching."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..cache import Tokens, as_tokens
from ..errors import InputError
from ..tokens import single_token_id


@dataclass
class PromptSet:
    """``prompts[i]`` should be completed by ``answers[i]`` rather than ``wrong[i]``.
    ``corrupt`` (optional) is the same task with the answer-determining information
    changed, token-aligned with ``prompts``."""

    prompts: list[str]
    answers: list[str]
    wrong: list[str]
    corrupt: list[str] | None = None
    name: str = "prompts"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise InputError(f"the {self.name} prompt list is empty; ask for at least one prompt (n >= 1)")
        if not (len(self.prompts) == len(self.answers) == len(self.wrong)):
            raise InputError(f"{self.name}: prompts, answers and wrong answers differ in count; give one of each per prompt")
        if self.corrupt is not None and len(self.corrupt) != len(self.prompts):
            raise InputError(f"{self.name}: {len(self.corrupt)} corrupt prompts for {len(self.prompts)} clean ones; pair them one to one")

    def __len__(self) -> int:
        return len(self.prompts)

    def answer_ids(self, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] correct and wrong answer token ids; each answer must be one token."""
        tok = model.tokenizer
        correct = [single_token_id(tok, a) for a in self.answers]
        wrong = [single_token_id(tok, w) for w in self.wrong]
        return torch.tensor(correct, device=model.device), torch.tensor(wrong, device=model.device)

    def tokens(self, model: Any) -> Tokens:
        return as_tokens(model, self.prompts)

    def corrupt_tokens(self, model: Any) -> Tokens:
        """Corrupt prompts, checked to have the same token length as their clean twins."""
        if self.corrupt is None:
            raise InputError(f"{self.name} has no corrupt prompts; build the set with a corruption")
        clean, corrupt = self.tokens(model), as_tokens(model, self.corrupt)
        cl, co = clean.attention_mask.sum(1), corrupt.attention_mask.sum(1)
        bad = (cl != co).nonzero().flatten().tolist()
        if bad or clean.input_ids.shape != corrupt.input_ids.shape:
            i = bad[0] if bad else 0
            raise InputError(
                f"clean and corrupt prompt {i} differ in token length ({int(cl[i])} vs {int(co[i])}); "
                "patching needs token-aligned pairs: use corruptions that swap single tokens"
            )
        return corrupt
