"""Needle-in-a-haystack prompts (Kamradt's test as used by Wu et al. for retrieval heads).

A haystack of real English text (the Python reference documentation that ships with
Python as ``pydoc_data.topics``, or any text file) is cut to a context length, a needle
sentence is inserted at a sentence boundary at a given depth, and a question asks for
it. Prompts are built at the token level, so the needle's token span is known exactly
(no re-tokenisation drift): the span of the *answer* part of the needle (Wu et al.'s
``real_needle``) is what the retrieval score counts copies from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError


@dataclass(frozen=True)
class Needle:
    """One needle: ``lead + answer`` is inserted; ``question`` asks for ``answer``."""

    lead: str
    answer: str
    question: str

    @property
    def text(self) -> str:
        return self.lead + self.answer


# Wu et al.'s detection needles (haystack_for_detect/needles.jsonl), lightly trimmed.
DEFAULT_NEEDLES = (
    Needle(" The best thing to do in Beijing is", " to take a walk in Chaoyang Park and have a cup of Espresso in the evening.",
           "What is the best thing to do in Beijing?"),
    Needle(" The best thing to do in San Francisco is", " to eat a sandwich and sit in Dolores Park on a sunny day.",
           "What is the best thing to do in San Francisco?"),
    Needle(" Mr Green is disliked by everyone", " because he is a mean person and also he can't ride a horse or drive a car.",
           "Why does everyone dislike Mr Green?"),
)


@dataclass
class NeedleTest:
    """One test: ``ids`` is the whole prompt (token ids); the answer tokens sit at
    ``ids[answer_start:answer_end]``."""

    ids: list[int]
    answer_start: int
    answer_end: int
    needle: Needle
    context_length: int
    depth: float

    @property
    def answer_len(self) -> int:
        return self.answer_end - self.answer_start


@dataclass
class NeedleSet:
    tests: list[NeedleTest]
    context_lengths: list[int]
    depths: list[float]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tests)


def pydoc_haystack() -> str:
    """The Python reference documentation shipped with the interpreter (~465k characters)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def read_haystack(path: str | os.PathLike) -> str:
    """A user haystack file as text; empty, missing or binary files are one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"haystack file {p} does not exist; pass a plain-text file (or leave --haystack out for the Python docs)")
    raw = p.read_bytes()
    if not raw.strip():
        raise InputError(f"haystack file {p} is empty; pass a text file with at least a few sentences")
    if b"\x00" in raw[:65536]:
        raise InputError(f"haystack file {p} is not text (it holds binary bytes); pass a UTF-8 plain-text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"haystack file {p} is not UTF-8 text; convert it (iconv -t utf-8) or pass another file") from None
    if not any(ch.isalpha() for ch in text):
        raise InputError(f"haystack file {p} holds no words; pass a file of English prose")
    return text


def _sentence_end_ids(tokenizer: Any, ids: Sequence[int]) -> set[int]:
    """Token ids that end a sentence ('.', '.\\n', ...), among those present."""
    ends = set()
    for i in set(ids):
        piece = tokenizer.decode([i])
        if piece.rstrip().endswith((".", "!", "?")):
            ends.add(i)
    return ends


def _sentence_boundary(body: list[int], cut: int, ends: set[int]) -> int:
    """The nearest sentence boundary at or before ``cut`` (as the reference backs up to a
    period); the next one after it when there is none before; ``cut`` itself when neither."""
    back = cut
    while back > 0 and body[back - 1] not in ends:
        back -= 1
    if back > 0 or cut == 0:
        return back
    for fwd in range(cut, len(body)):
        if body[fwd] in ends:
            return fwd + 1
    return cut


def prompt_parts(tokenizer: Any, question: str, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids before the context and after it (question and answer cue).
    ``chat`` wraps everything in the tokenizer's chat template, as Wu et al. do for chat models."""
    ask = f"\n\nBased on the content of the document, Question: {question}\nAnswer:"
    if chat and getattr(tokenizer, "chat_template", None):
        marker = "\x00CONTEXT\x00"
        full = tokenizer.apply_chat_template([{"role": "user", "content": f"<document>{marker}</document>{ask}"}],
                                             tokenize=False, add_generation_prompt=True)
        before, after = full.split(marker)
        return tokenizer.encode(before, add_special_tokens=False), tokenizer.encode(after, add_special_tokens=False)
    return [], tokenizer.encode(ask, add_special_tokens=False)


def build_needle_tests(
    tokenizer: Any,
    context_lengths: Sequence[int],
    depths: Sequence[float],
    needles: Sequence[Needle] = DEFAULT_NEEDLES,
    haystack: str | None = None,
    haystack_file: str | os.PathLike | None = None,
    n_ctx: int | None = None,
    chat: bool = True,
) -> NeedleSet:
    """Every (needle, context length, depth) test. ``context_lengths`` count the whole
    prompt in tokens; depths are percentages (0 = start, 100 = end of the haystack)."""
    if not context_lengths or not depths or not needles:
        raise InputError("the needle grid is empty; give at least one context length, one depth and one needle")
    for d in depths:
        if not 0 <= d <= 100:
            raise InputError(f"depth {d} is outside 0..100; depths are percentages of the haystack")
    for L in context_lengths:
        if n_ctx is not None and L > n_ctx:
            raise InputError(f"context length {L} exceeds the model's context of {n_ctx} tokens; choose lengths up to {n_ctx}")
    source = "pydoc_data.topics"
    if haystack is None:
        if haystack_file is not None:
            haystack = read_haystack(haystack_file)
            source = str(haystack_file)
        else:
            haystack = pydoc_haystack()
    elif not haystack.strip():
        raise InputError("the haystack text is empty; pass some prose")
    hay_ids = tokenizer.encode(haystack, add_special_tokens=False)
    longest = max(context_lengths)
    if hay_ids and len(hay_ids) < longest:  # repeat a short haystack, as the reference does with its files
        hay_ids = (hay_ids * (longest // len(hay_ids) + 1))[: longest]
    ends = _sentence_end_ids(tokenizer, hay_ids)
    tests: list[NeedleTest] = []
    for needle in needles:
        lead = tokenizer.encode(needle.lead, add_special_tokens=False)
        answer = tokenizer.encode(needle.answer, add_special_tokens=False)
        before, after = prompt_parts(tokenizer, needle.question, chat)
        needle_ids = lead + answer
        for L in context_lengths:
            room = L - len(before) - len(after) - len(needle_ids)
            if room < 0:
                raise InputError(
                    f"the needle and question take {len(before) + len(after) + len(needle_ids)} tokens, more than the "
                    f"context length {L}; use a longer context or a shorter needle"
                )
            body = hay_ids[:room]
            for depth in depths:
                cut = _sentence_boundary(body, len(body) if depth >= 100 else int(len(body) * depth / 100), ends)
                ids = before + body[:cut] + needle_ids + body[cut:] + after
                start = len(before) + cut + len(lead)
                tests.append(NeedleTest(ids, start, start + len(answer), needle, int(L), float(depth)))
    return NeedleSet(tests, [int(x) for x in context_lengths], [float(d) for d in depths], source,
                     meta={"chat": chat, "n_needles": len(needles)})
