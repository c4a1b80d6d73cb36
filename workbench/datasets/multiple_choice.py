"""A small four-option multiple-choice task built from data that ships with Python
(``calendar`` month and day names, ``string.ascii_uppercase``), for ACT's attention
calibration: a calibration split (the head search) and a disjoint held-out split.

"Question: Which month comes right after March?\\nOptions: July, April, January, May.\\nAnswer:" -> " April"

Scored as ACT scores classification tasks: the next-token logits of the four option words
(each one token with a leading space), the highest wins. (A letter-answer format puts a
135M model at chance; option words give it something to calibrate.)
"""
from __future__ import annotations

import calendar
import random
import string
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

LETTERS = ("A", "B", "C", "D")


@dataclass
class MCQuestion:
    prompt: str
    label: int  # index of the correct option
    options: list[str]
    kind: str


def _sequences() -> dict[str, list[str]]:
    return {
        "month": [calendar.month_name[i] for i in range(1, 13)],
        "day": [calendar.day_name[i] for i in range(7)],
        "letter": list(string.ascii_uppercase),
    }


def all_questions() -> list[tuple[str, str, str, list[str]]]:
    """Every (kind, question, answer, distractor pool) the task can ask, in a fixed order.
    The pool leaves out the answer and the item asked about (a copy of it would be a free lure)."""
    out = []
    for kind, seq in _sequences().items():
        unit = {"month": "month", "day": "day of the week", "letter": "letter of the alphabet"}[kind]
        for i, item in enumerate(seq):
            if i + 1 < len(seq):
                out.append((f"{kind}-after", f"Which {unit} comes right after {item}?", seq[i + 1],
                            [x for x in seq if x not in (item, seq[i + 1])]))
            if i > 0:
                out.append((f"{kind}-before", f"Which {unit} comes right before {item}?", seq[i - 1],
                            [x for x in seq if x not in (item, seq[i - 1])]))
    return out


def _format(question: str, options: list[str]) -> str:
    return f"Question: {question}\nOptions: {', '.join(options)}.\nAnswer:"


def mc_splits(n_calib: int, n_heldout: int, seed: int = 0) -> tuple[list[MCQuestion], list[MCQuestion]]:
    """Disjoint calibration and held-out splits (distinct questions), options shuffled by seed."""
    pool = all_questions()
    if n_calib < 1 or n_heldout < 1:
        raise InputError("both splits need at least one question; raise --n-calib / --n-heldout")
    if n_calib + n_heldout > len(pool):
        raise InputError(f"the task has {len(pool)} questions; ask for at most that many in total (calibration + held-out)")
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    made = []
    for idx in order[: n_calib + n_heldout]:
        kind, question, answer, others = pool[idx]
        distractors = rng.sample(others, 3)
        options = distractors + [answer]
        rng.shuffle(options)
        made.append(MCQuestion(_format(question, options), options.index(answer), options, kind))
    return made[:n_calib], made[n_calib:]


def option_token_ids(tokenizer: Any, question: MCQuestion) -> list[int]:
    """Ids of the four option words with a leading space (each must be one token)."""
    from ..tokens import single_token_id

    return [single_token_id(tokenizer, " " + o) for o in question.options]
