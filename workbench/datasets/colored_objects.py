"""Colored Objects (Merullo et al. 2023, from BIG-bench's reasoning_about_colored_objects):

    Q: On the table, I see a red pen, an orange jug, and a blue cup. What color is the jug?
    A: Orange

with one solved example before the query. The corrupt twin asks about another object of
the same query, so the answer colour changes and the token length does not.

``FORMATS`` names the prompt formats searched for a model that can do the task (the
layout above, with 0-3 solved examples, capitalised or lower-case answers, plain text or
inside the model's chat template: each example a user turn answered by an assistant turn).
``meta["query_colors"]`` holds, per prompt, the three colours of the query as answer
strings: accuracy "among the prompt's colours" is the argmax over those three (chance 1/3),
against the argmax over all eight colours (chance 1/8).
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


# name -> (solved examples, answer format, chat template)
FORMATS: dict[str, tuple[int, str, bool]] = {}
for _shots in range(4):
    FORMATS[f"plain-{_shots}shot"] = (_shots, ANSWER, False)
    FORMATS[f"plain-lower-{_shots}shot"] = (_shots, " {color}", False)
    FORMATS[f"chat-{_shots}shot"] = (_shots, "{color}", True)
DEFAULT_FORMAT = "plain-lower-1shot"  # the best on the development split (docs/circuits.md; analyses/circuits/formats.py)
CHAT_QUESTION_END = "\nA:"  # dropped from the question in a chat turn (the assistant turn answers)


def format_of(name: str) -> tuple[int, str, bool]:
    """(shots, answer format, chat) of a named format; a one-line error for an unknown one."""
    if name not in FORMATS:
        raise InputError(f"unknown Colored Objects format '{name}'; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def _answer(fmt: str, color: str) -> str:
    return fmt.replace("{Color}", color.capitalize()).replace("{color}", color)


def colored_object_prompts(n: int, tokenizer: Any, seed: int = 0, template: str = TEMPLATE, answer_format: str = ANSWER,
                           colors: list[str] | None = None, objects: list[str] | None = None,
                           shots: int = 1, chat: bool = False, format: str | None = None) -> PromptSet:
    """``n`` Colored Objects prompts (``shots`` solved examples first); answer " {Color}" vs the
    corrupt prompt's answer. ``format`` (a key of ``FORMATS``) sets shots, answer format and
    chat together; ``chat`` renders the examples and the query through the tokenizer's chat
    template (one user turn per question, one assistant turn per solved answer).

    Objects are kept only when they are one token with a leading space (so the corrupt twin
    has the same token length); every answer must be one token, else a one-line error."""
    if n < 1:
        raise InputError(f"n={n}: ask for at least one Colored Objects prompt")
    if format is not None:
        shots, answer_format, chat = format_of(format)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise InputError("this tokenizer has no chat template; use a plain Colored Objects format (chat=False)")
    colors = list(colors or COLORS)
    for color in colors:
        try:
            single_token_id(tokenizer, _answer(answer_format, color))
        except InputError:
            pieces = tokenizer.tokenize(_answer(answer_format, color))
            raise InputError(f"the answer {_answer(answer_format, color)!r} is {len(pieces)} tokens {pieces}; Colored Objects "
                             f"needs single-token answers: use answer_format ' {{Color}}' or colours that are one token") from None
    objs = [o for o in (objects or OBJECTS) if len(tokenizer.encode(" " + o, add_special_tokens=False)) == 1]
    if len(objs) < 3 or len(colors) < 3:
        raise InputError("Colored Objects needs at least 3 single-token objects and 3 colours; pass longer lists")
    rng = random.Random(seed)
    prompts, corrupt, answers, wrong, spans, query_colors = [], [], [], [], [], []
    for _ in range(n):
        prefix = ""
        turns: list[dict[str, str]] = []
        for _shot in range(shots):
            f, o, c = _question(rng, objs, colors)
            k = rng.randrange(3)
            question = template.format(q=o[k], **f)
            prefix += question + _answer(answer_format, c[k]) + "\n\n"
            turns += [{"role": "user", "content": question.removesuffix(CHAT_QUESTION_END)},
                      {"role": "assistant", "content": _answer(answer_format, c[k])}]
        f, o, c = _question(rng, objs, colors)
        k, j = rng.sample(range(3), 2)
        q_clean, q_corrupt = template.format(q=o[k], **f), template.format(q=o[j], **f)
        if chat:
            clean_text, corrupt_text = (tokenizer.apply_chat_template(
                turns + [{"role": "user", "content": q.removesuffix(CHAT_QUESTION_END)}], tokenize=False,
                add_generation_prompt=True) for q in (q_clean, q_corrupt))
            start = clean_text.rindex(q_clean.removesuffix(CHAT_QUESTION_END))
        else:
            clean_text, corrupt_text, start = prefix + q_clean, prefix + q_corrupt, len(prefix)
        prompts.append(clean_text)
        corrupt.append(corrupt_text)
        answers.append(_answer(answer_format, c[k]))
        wrong.append(_answer(answer_format, c[j]))
        spans.append(_query_spans(clean_text, start, c, o, k))
        query_colors.append([_answer(answer_format, x) for x in c])
    meta = {"seed": seed, "spans": spans, "colors": colors, "query_colors": query_colors,
            "candidates": [_answer(answer_format, c) for c in colors], "shots": shots, "chat": chat,
            "answer_format": answer_format, "format": format}
    return PromptSet(prompts, answers, wrong, corrupt=corrupt, name="Colored Objects", meta=meta)


def _query_spans(text: str, start: int, cols: list[str], objs: list[str], k: int) -> dict[str, Any]:
    """Character starts in the query (after the solved example) of the three colour words,
    the three objects, the asked object, and which of the three is the answer."""
    color_at = [_word_at(text, start, c) for c in cols]
    obj_at = [_word_at(text, start, o) for o in objs]
    asked = text.rindex(" " + objs[k]) + 1
    return {"colors": color_at, "objects": obj_at, "asked": asked, "answer": k}


def _word_at(text: str, start: int, word: str) -> int:
    """Character start of the first whole ``word`` in ``text`` at or after ``start``."""
    found = re.search(rf"\b{word}\b", text[start:])
    if found is None:
        raise ValueError(f"{word!r} is not in the query it was drawn for")
    return found.start() + start


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
