"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the
store, John gave a drink to" -> " Mary". Templates in both name orders (ABBA, BABA);
the corrupt "ABC" set replaces the names with three different ones."""
from __future__ import annotations

import random
from typing import Any

from ..errors import InputError
from .base import PromptSet

# Single tokens with a leading space in the SmolLM2 tokenizer (checked again at run time).
IOI_NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "James", "Sarah", "Michael", "David", "Emma",
             "Anna", "Paul", "Mark", "Lisa", "Kate", "Peter", "Jack", "Laura", "Ben", "Sam"]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]

# Wang et al.'s templates, with [A] the indirect object and [B] the subject (ABBA order);
# BABA swaps the first two names.
TEMPLATES = [
    "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [A] and [B] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [A] and [B] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [A] and [B] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [A] and [B] had a long argument, and afterwards [B] said to",
    "After [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [A] and [B] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [A] and [B] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [A] and [B] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [A] and [B] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [A] and [B] had a long argument. Afterwards [B] said to",
    "The [PLACE] [A] and [B] went to had a [OBJECT]. [B] gave it to",
    "Friends [A] and [B] found a [OBJECT] at the [PLACE]. [B] gave it to",
]


def single_token_names(tokenizer: Any, names: list[str]) -> list[str]:
    """Keep the names that are one token with a leading space in this tokenizer."""
    return [n for n in names if len(tokenizer.encode(" " + n, add_special_tokens=False)) == 1]


def _fill(template: str, io: str, s1: str, s2: str, place: str, obj: str, order: str) -> str:
    """Fill a template: ``io`` and ``s1`` are the two names introduced (in ABBA or BABA
    order), ``s2`` the repeated subject (== s1 in clean prompts, a third name in ABC)."""
    first, second = (io, s1) if order == "ABBA" else (s1, io)
    text = template.replace("[A] and [B]", f"{first} and {second}")
    return text.replace("[B]", s2).replace("[PLACE]", place).replace("[OBJECT]", obj)


def ioi_prompts(
    n: int,
    tokenizer: Any,
    seed: int = 0,
    templates: list[str] | None = None,
    names: list[str] | None = None,
) -> PromptSet:
    """``n`` IOI prompts (half ABBA, half BABA), answer " IO" vs wrong " S", with the ABC
    corruption (three fresh names, same template, same token length)."""
    if n < 1:
        raise InputError(f"n={n}: ask for at least one IOI prompt")
    rng = random.Random(seed)
    usable = single_token_names(tokenizer, names or IOI_NAMES)
    if len(usable) < 3:
        raise InputError("fewer than three names are single tokens in this tokenizer; pass names that are (leading space)")
    temps = templates or TEMPLATES
    prompts, corrupt, answers, wrong, meta_templates = [], [], [], [], []
    for i in range(n):
        t = temps[rng.randrange(len(temps))]
        a, b, c, d, e = rng.sample(usable, 5) if len(usable) >= 5 else (rng.sample(usable, 3) * 2)[:5]
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        order = "ABBA" if i % 2 == 0 else "BABA"
        prompts.append(_fill(t, a, b, b, place, obj, order))
        corrupt.append(_fill(t, c, d, e, place, obj, order))
        answers.append(" " + a)
        wrong.append(" " + b)
        meta_templates.append(temps.index(t) if t in temps else -1)
    return PromptSet(prompts, answers, wrong, corrupt=corrupt, name="IOI", meta={"template": meta_templates, "seed": seed})
