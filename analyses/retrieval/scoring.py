"""Wu et al.'s retrieval score: ROUGE-1 recall (does an answer recall the needle), the
per-step scorer fed by ``generation.decode``, and head scores over the counted tests."""
from __future__ import annotations

import re

import torch

from workbench.names import act_name


# ---------------------------------------------------------------------------- ROUGE
def _tokens(text: str) -> list[str]:
    return [t for t in re.sub(r"[^a-z0-9]+", " ", text.lower()).split() if t]


def rouge1_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall of ``prediction`` against ``reference`` (Google's rouge-score with the
    Porter stemmer, as the reference code uses; a plain unigram fallback without it)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - rouge-score is a dependency
        from collections import Counter

        ref, pred = Counter(_tokens(reference)), Counter(_tokens(prediction))
        total = sum(ref.values())
        return sum(min(c, pred[t]) for t, c in ref.items()) / total if total else 0.0
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return float(_SCORER.score(reference, prediction)["rouge1"].recall)


_SCORER = None


# ---------------------------------------------------------------------------- scoring
class RetrievalScorer:
    """The per-step retrieval-score update, fed by ``generation.decode``'s ``on_step``.

    ``spans`` [rows 2] are the answer spans in the left-padded prompt coordinates;
    ``prompt_ids`` [rows pos] the padded prompts. ``scores`` [rows layer head]."""

    def __init__(self, prompt_ids: torch.Tensor, spans: torch.Tensor, n_layers: int, n_heads: int, max_steps: int):
        self.n_layers = n_layers
        rows = prompt_ids.shape[0]
        self.seq = torch.cat([prompt_ids, torch.zeros(rows, max_steps, dtype=torch.long, device=prompt_ids.device)], 1)
        self.prompt_len = prompt_ids.shape[1]
        spans = spans.to(prompt_ids.device)  # made from Python lists; compared with the patterns' argmax
        self.start, self.end = spans[:, 0], spans[:, 1]
        self.inc = 1.0 / (self.end - self.start).clamp(min=1).float()
        self.scores = torch.zeros(rows, n_layers, n_heads, device=prompt_ids.device)

    def names(self) -> list[str]:
        return [act_name("pattern", l) for l in range(self.n_layers)]

    def __call__(self, step: int, read: dict[str, torch.Tensor], token: torch.Tensor, active: torch.Tensor) -> None:
        # pattern [rows head key]: the newest query's attention at this step
        top = torch.stack([read[act_name("pattern", l)].argmax(-1) for l in range(self.n_layers)], 1)
        rows = torch.arange(top.shape[0], device=top.device)[:, None, None]
        at = self.seq[rows, top]  # token ids at the argmax positions [rows layer head]
        inside = (top >= self.start[:, None, None]) & (top < self.end[:, None, None])
        hit = inside & (at == token[:, None, None]) & active[:, None, None]
        self.scores += hit.float() * self.inc[:, None, None]
        self.seq[:, self.prompt_len + step] = token


def score_heads(per_test: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Head scores [layer head]: the mean of per-test scores [tests layer head] over counted tests."""
    if not counted.any():
        return torch.zeros(per_test.shape[1:])  # cpu: per-test scores are gathered on the CPU
    return per_test[counted].mean(0)
