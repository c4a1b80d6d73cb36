"""The prompt tasks of the LRP deletion test: each prompt comes with the token to explain and a
contrast token, and the explained value is ``logit(target) - logit(contrast)`` at the last
position.

* ``ioi``: indirect object identification (``workbench.datasets.ioi_prompts``): IO minus S.
* ``successor``: continue a known sequence (months, days of the week, letters, number words
  one to twenty) after three consecutive items:
  ``"The days of the week in order: Monday, Tuesday, Wednesday,"`` -> `` Thursday`` against the
  last item listed, `` Wednesday`` (a copy of a prompt token, the natural lure, as S is in IOI).

Both are deterministic by seed; the successor questions are drawn without replacement from the
53 that the four sequences give, so at most 53 prompts.
"""
from __future__ import annotations

import calendar
import random
import string
from dataclasses import dataclass
from typing import Any

from workbench.errors import InputError

TASKS = ("ioi", "successor")

_UNITS = {"month": "months of the year", "day": "days of the week", "letter": "letters of the alphabet",
          "number": "numbers"}
_NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen twenty").split()
LISTED = 3  # items listed before the one to predict


def sequences() -> dict[str, list[str]]:
    return {
        "month": [calendar.month_name[i] for i in range(1, 13)],
        "day": [calendar.day_name[i] for i in range(7)],
        "letter": list(string.ascii_uppercase),
        "number": list(_NUMBERS),
    }


def successor_questions() -> list[tuple[str, tuple[str, ...], str]]:
    """Every (kind, listed items, next item) the successor task asks, in a fixed order."""
    out = []
    for kind, seq in sequences().items():
        for i in range(len(seq) - LISTED):
            out.append((kind, tuple(seq[i:i + LISTED]), seq[i + LISTED]))
    return out


@dataclass
class TaskPrompts:
    """``prompts[i]`` is explained as ``logit(targets[i]) - logit(contrasts[i])``."""

    task: str
    prompts: list[str]
    targets: list[str]
    contrasts: list[str]


def successor_prompts(n: int, seed: int = 0) -> TaskPrompts:
    questions = successor_questions()
    if not 1 <= n <= len(questions):
        raise InputError(f"the successor task has {len(questions)} questions; ask for 1 to {len(questions)} prompts (--n)")
    chosen = random.Random(seed).sample(questions, n)
    prompts = [f"The {_UNITS[kind]} in order: {', '.join(items)}," for kind, items, _ in chosen]
    return TaskPrompts("successor", prompts, [" " + nxt for _, _, nxt in chosen], [" " + items[-1] for _, items, _ in chosen])


def task_prompts(task: str, n: int, tokenizer: Any, seed: int = 0) -> TaskPrompts:
    """``n`` prompts of ``task`` with their target and contrast tokens."""
    if task == "ioi":
        from workbench.datasets import ioi_prompts

        ps = ioi_prompts(n, tokenizer, seed=seed)
        return TaskPrompts("ioi", list(ps.prompts), list(ps.answers), list(ps.wrong))
    if task == "successor":
        return successor_prompts(n, seed)
    raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
