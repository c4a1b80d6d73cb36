"""Multiple-choice scoring of a split with and without ACT's calibration on chosen heads."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workbench.datasets.multiple_choice import MCQuestion, option_token_ids
from workbench.generation import left_pad

from .patterns import calibration_patches
from .runner import LayerRunner

if TYPE_CHECKING:
    from workbench.models import Model

Batch = tuple[LayerRunner, torch.Tensor, torch.Tensor]  # the batch's runner, option ids, right labels


class Scorer:
    """A split of questions in left-padded batches, each with its base run; ``score(heads,
    beta, threshold)`` gives [questions] correct and log p(right option) among the options."""

    def __init__(self, model: Model, questions: list[MCQuestion], batch_size: int, keep: list[int]):
        tok = model.tokenizer
        self.batches: list[Batch] = []
        for s in range(0, len(questions), batch_size):
            chunk = questions[s:s + batch_size]
            ids, mask = left_pad([tok.encode(q.prompt, add_special_tokens=False) for q in chunk],
                                 tok.pad_token_id or 0, model.device)
            opts = torch.tensor([option_token_ids(tok, q) for q in chunk], device=model.device)
            labels = torch.tensor([q.label for q in chunk])  # cpu: labels compare with scores moved to the CPU below
            self.batches.append((LayerRunner(model, ids, mask, keep), opts, labels))
        self.n_heads = model.shape.n_heads

    def score(self, heads: list[tuple[int, int]] | None = None, beta: float = 1.0, threshold: float = 1.0,
              min_queries: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        sets: dict[int, torch.Tensor] = {}
        for l, h in heads or []:
            # cpu: head sets; calibrate_pattern takes their nonzero() as a CPU index
            sets.setdefault(l, torch.zeros(self.n_heads, dtype=torch.bool))[h] = True
        correct, logp = [], []
        for runner, opts, labels in self.batches:
            patches = calibration_patches(sets, runner.mask.bool(), beta, threshold, min_queries) if sets else {}
            logits = runner.logits(patches)
            scores = logits.gather(1, opts).float().log_softmax(-1).cpu()
            correct.append(scores.argmax(-1) == labels)
            logp.append(scores[torch.arange(len(labels)), labels])  # cpu: the scores were moved to the CPU above
        return torch.cat(correct), torch.cat(logp)
