"""A small four-option multiple-choice task built from data that ships with Python
(``calendar`` month and day names, ``string.ascii_uppercase``), for ACT's attention
calibration: a calibration split (the head search) and a disjoint held-out split.

Each question is a cloze sentence after three worked examples; the four options are
scored by their next-token logits (each option is one token with a leading space), the
way lm-eval scores multiple choice and ACT scores its classification labels:

"... The month that comes right after March is" -> " April" vs " July", " January", " May"

(A letter-answer format with the options listed puts a 135M model at chance; this one
gives it about 0.4 against a chance level of 0.25, so calibration has room to act.)
"""
from __future__ import annotations

import calendar
import random
import string
from dataclasses import dataclass
from typing import Any

from ..errors import InputError



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


SHOTS = ("The month that comes right after May is June.",
         "The day of the week that comes right before Friday is Thursday.",
         "The letter of the alphabet that comes right after K is L.")
_SHOT_ITEMS = {("month-after", "May"), ("day-before", "Friday"), ("letter-after", "K")}
_UNITS = {"month": "month", "day": "day of the week", "letter": "letter of the alphabet"}


def all_questions() -> list[tuple[str, str, str, list[str]]]:
    """Every (kind, cloze sentence, answer, distractor pool) the task can ask, in a fixed
    order, minus the worked examples. The pool leaves out the answer and the item asked
    about (a copy of it would be a free lure)."""
    out = []
    for kind, seq in _sequences().items():
        for i, item in enumerate(seq):
            for where, j in (("after", i + 1), ("before", i - 1)):
                if not 0 <= j < len(seq) or (f"{kind}-{where}", item) in _SHOT_ITEMS:
                    continue
                sentence = f"The {_UNITS[kind]} that comes right {where} {item} is"
                out.append((f"{kind}-{where}", sentence, seq[j], [x for x in seq if x not in (item, seq[j])]))
    return out


def _format(sentence: str) -> str:
    return " ".join(SHOTS) + " " + sentence


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
        made.append(MCQuestion(_format(question), options.index(answer), options, kind))
    return made[:n_calib], made[n_calib:]


def option_token_ids(tokenizer: Any, question: MCQuestion) -> list[int]:
    """Ids of the four option words with a leading space (each must be one token)."""
    from ..tokens import single_token_id

    return [single_token_id(tokenizer, " " + o) for o in question.options]
