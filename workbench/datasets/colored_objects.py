"""Colored Objects (Merullo et al. 2023, from BIG-bench's reasoning_about_colored_objects):

    Q: On the table, I see a red pen, an orange jug, and a blue cup. What color is the jug?
    A: Orange

with one solved example before the query. The corrupt twin asks about another object of
the same query, so the answer colour changes and the token length does not.
"""
from __future__ import annotations

import random
import re
from typing import Any

from ..errors import InputError
from ..tokens import single_token_id
from .base import PromptSet

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "brown", "black"]
OBJECTS = ["pen", "jug", "necklace", "notebook", "cup", "plate", "book", "ball", "hat", "key", "bowl", "shirt",
           "sock", "box", "lamp", "bag", "phone"]
SURFACES = ["table", "desk", "floor"]
VERBS = ["there is", "you see", "I see"]
TEMPLATE = "Q: On the {surface}, {verb} {a1} {c1} {o1}, {a2} {c2} {o2}, and {a3} {c3} {o3}. What color is the {q}?\nA:"
ANSWER = " {Color}"


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _question(rng: random.Random, objects: list[str], colors: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    objs = rng.sample(objects, 3)
    cols = rng.sample(colors, 3)
    fields = {"surface": rng.choice(SURFACES), "verb": rng.choice(VERBS)}
    for i in range(3):
        fields[f"a{i + 1}"], fields[f"c{i + 1}"], fields[f"o{i + 1}"] = _article(cols[i]), cols[i], objs[i]
    return fields, objs, cols


def _answer(fmt: str, color: str) -> str:
    return fmt.replace("{Color}", color.capitalize()).replace("{color}", color)


def colored_object_prompts(n: int, tokenizer: Any, seed: int = 0, template: str = TEMPLATE, answer_format: str = ANSWER,
                           colors: list[str] | None = None, objects: list[str] | None = None,
                           shots: int = 1) -> PromptSet:
    """``n`` one-shot Colored Objects prompts; answer " {Color}" vs the corrupt prompt's answer.

    Objects are kept only when they are one token with a leading space (so the corrupt twin
    has the same token length); every answer must be one token, else a one-line error."""
    if n < 1:
        raise InputError(f"n={n}: ask for at least one Colored Objects prompt")
    colors = list(colors or COLORS)
    for c in colors:
        try:
            single_token_id(tokenizer, _answer(answer_format, c))
        except InputError:
            pieces = tokenizer.tokenize(_answer(answer_format, c))
            raise InputError(f"the answer {_answer(answer_format, c)!r} is {len(pieces)} tokens {pieces}; Colored Objects "
                             f"needs single-token answers: use answer_format ' {{Color}}' or colours that are one token") from None
    objs = [o for o in (objects or OBJECTS) if len(tokenizer.encode(" " + o, add_special_tokens=False)) == 1]
    if len(objs) < 3 or len(colors) < 3:
        raise InputError("Colored Objects needs at least 3 single-token objects and 3 colours; pass longer lists")
    rng = random.Random(seed)
    prompts, corrupt, answers, wrong, spans = [], [], [], [], []
    for _ in range(n):
        prefix = ""
        for _shot in range(shots):
            f, o, c = _question(rng, objs, colors)
            k = rng.randrange(3)
            prefix += template.format(q=o[k], **f) + _answer(answer_format, c[k]) + "\n\n"
        f, o, c = _question(rng, objs, colors)
        k, j = rng.sample(range(3), 2)
        clean_text = prefix + template.format(q=o[k], **f)
        corrupt_text = prefix + template.format(q=o[j], **f)
        prompts.append(clean_text)
        corrupt.append(corrupt_text)
        answers.append(_answer(answer_format, c[k]))
        wrong.append(_answer(answer_format, c[j]))
        spans.append(_query_spans(clean_text, len(prefix), c, o, k))
    meta = {"seed": seed, "spans": spans, "colors": colors,
            "candidates": [_answer(answer_format, c) for c in colors]}
    return PromptSet(prompts, answers, wrong, corrupt=corrupt, name="Colored Objects", meta=meta)


def _query_spans(text: str, start: int, cols: list[str], objs: list[str], k: int) -> dict[str, Any]:
    """Character starts in the query (after the solved example) of the three colour words,
    the three objects, the asked object, and which of the three is the answer."""
    color_at = [re.search(rf"\b{c}\b", text[start:]).start() + start for c in cols]
    obj_at = [re.search(rf"\b{o}\b", text[start:]).start() + start for o in objs]
    asked = text.rindex(" " + objs[k]) + 1
    return {"colors": color_at, "objects": obj_at, "asked": asked, "answer": k}


def token_index(tokenizer: Any, text: str, char_index: int) -> int:
    """Index of the token that holds character ``char_index`` of ``text`` (no special tokens added)."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if a <= char_index < b:
            return i
    raise InputError(f"character {char_index} of the prompt falls in no token; check the prompt text")


def word_token_positions(tokenizer: Any, text: str, word: str) -> list[int]:
    """Token indices where the whole word ``word`` starts, in order."""
    return [token_index(tokenizer, text, m.start()) for m in re.finditer(rf"\b{re.escape(word)}\b", text)]
