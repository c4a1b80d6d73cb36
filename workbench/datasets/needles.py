"""Needle-in-a-haystack prompts (Kamradt's test as used by Wu et al. for retrieval heads).

A haystack of real English text (the Python reference documentation that ships with
Python as ``pydoc_data.topics``, or any text file) is cut to a context length, a needle
sentence is inserted at a sentence boundary at a given depth, and a question asks for
it. Prompts are built at the token level, so the needle's token span is known exactly
(no re-tokenisation drift): the span of the *answer* part of the needle (Wu et al.'s
``real_needle``) is what the retrieval score counts copies from.

Two disjoint splits, so that the heads chosen on one set of tests are judged on another:
``RANKING_NEEDLES`` in the ``"ranking"`` haystack (every other topic of the Python docs)
and ``HELDOUT_NEEDLES`` in the ``"heldout"`` haystack (the remaining topics, less every line
the ranking half also has): different needles and different haystack texts (``split_tests``). Within a split each needle reads
its own stretch of the haystack (``spread=True``), so tests do not share one text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import InputError
from ..paths import file_problem, user_path


@dataclass(frozen=True)
class Needle:
    """One needle: ``lead + answer`` is inserted; ``question`` asks for ``answer``."""

    lead: str
    answer: str
    question: str

    @property
    def text(self) -> str:
        return self.lead + self.answer


def _n(lead: str, answer: str, question: str) -> "Needle":
    return Needle(lead, answer, question)


# Wu et al.'s detection needles (haystack_for_detect/needles.jsonl), lightly trimmed, then more
# in their style: the heads are ranked on these.
RANKING_NEEDLES = (
    _n(" The best thing to do in Beijing is", " to take a walk in Chaoyang Park and have a cup of Espresso in the evening.",
       "What is the best thing to do in Beijing?"),
    _n(" The best thing to do in San Francisco is", " to eat a sandwich and sit in Dolores Park on a sunny day.",
       "What is the best thing to do in San Francisco?"),
    _n(" Mr Green is disliked by everyone", " because he is a mean person and also he can't ride a horse or drive a car.",
       "Why does everyone dislike Mr Green?"),
    _n(" The secret ingredient in Grandma Rosa's soup is", " a spoonful of smoked paprika and two slices of fresh ginger.",
       "What is the secret ingredient in Grandma Rosa's soup?"),
    _n(" The password to the old lighthouse is", " purple elephant dancing under the silver moon.",
       "What is the password to the old lighthouse?"),
    _n(" The treasure of Captain Morgan is hidden", " under the third oak tree behind the abandoned chapel on Pine Hill.",
       "Where is the treasure of Captain Morgan hidden?"),
    _n(" The favourite hobby of Dr Alvarez is", " building model ships out of matchsticks and painting them blue.",
       "What is the favourite hobby of Dr Alvarez?"),
    _n(" The best way to cook a perfect steak is", " to sear it in a cast iron pan with butter, garlic and rosemary.",
       "What is the best way to cook a perfect steak?"),
)

# Held-out needles: none of them ranks heads; masking and KV compression are judged on these.
HELDOUT_NEEDLES = (
    _n(" The best thing to do in Lisbon is", " to ride the yellow tram up the hill and eat custard tarts by the river.",
       "What is the best thing to do in Lisbon?"),
    _n(" Ms Patel left the orchestra", " because she wanted to open a bakery that sells lemon cakes.",
       "Why did Ms Patel leave the orchestra?"),
    _n(" The key to the blue cabinet is kept", " inside a red teapot on the top shelf of the kitchen.",
       "Where is the key to the blue cabinet kept?"),
    _n(" The best thing to do in Kyoto is", " to visit the bamboo forest at sunrise and drink green tea in a quiet garden.",
       "What is the best thing to do in Kyoto?"),
    _n(" The name of Professor Lind's cat is", " Captain Whiskers, and he sleeps on a pile of old maps.",
       "What is the name of Professor Lind's cat?"),
    _n(" The only food the dragon of Eldoria eats is", " roasted chestnuts dipped in warm honey.",
       "What is the only food the dragon of Eldoria eats?"),
    _n(" The best thing to do in Cape Town is", " to hike up Table Mountain and watch the penguins at Boulders Beach.",
       "What is the best thing to do in Cape Town?"),
    _n(" Tom missed the train this morning", " because his bicycle had a flat tyre and he had to walk to the station.",
       "Why did Tom miss the train this morning?"),
    _n(" The hidden message in the painting says", " meet me at the harbour when the clock strikes nine.",
       "What does the hidden message in the painting say?"),
    _n(" The favourite colour of the queen of Norland is", " a deep emerald green like the northern forests.",
       "What is the favourite colour of the queen of Norland?"),
    _n(" The best thing to do in Reykjavik is", " to bathe in a hot spring and watch the northern lights at midnight.",
       "What is the best thing to do in Reykjavik?"),
    _n(" The recipe for the famous lemonade uses", " fresh mint leaves, brown sugar and a pinch of sea salt.",
       "What does the recipe for the famous lemonade use?"),
    _n(" The old sailor buried his gold", " beneath the lighthouse steps next to a rusty anchor.",
       "Where did the old sailor bury his gold?"),
    _n(" Dr Okafor's secret to a long life is", " walking ten kilometres every day and never drinking coffee after noon.",
       "What is Dr Okafor's secret to a long life?"),
    _n(" The best thing to do in Buenos Aires is", " to dance the tango in San Telmo and eat grilled steak late at night.",
       "What is the best thing to do in Buenos Aires?"),
    _n(" Everyone in the village loves the baker", " because he gives free bread to children every Sunday morning.",
       "Why does everyone in the village love the baker?"),
    _n(" The password for the school's computer lab is", " orange giraffe seventy two.",
       "What is the password for the school's computer lab?"),
    _n(" The best thing to do in Marrakech is", " to wander the spice market and drink mint tea on a rooftop at sunset.",
       "What is the best thing to do in Marrakech?"),
    _n(" The robot in the museum was built", " by a twelve year old girl from parts of an old washing machine.",
       "How was the robot in the museum built?"),
    _n(" The lost ring was finally found", " in the pocket of a winter coat at the back of the wardrobe.",
       "Where was the lost ring finally found?"),
    _n(" The best thing to do in Edinburgh is", " to climb Arthur's Seat at dawn and eat warm scones in the old town.",
       "What is the best thing to do in Edinburgh?"),
    _n(" Captain Reyes never sails on Fridays", " because a storm sank his first boat on a Friday in October.",
       "Why does Captain Reyes never sail on Fridays?"),
    _n(" The magic word that opens the castle gate is", " silver thunder over the sleeping valley.",
       "What is the magic word that opens the castle gate?"),
    _n(" The best thing to do in Istanbul is", " to take a ferry across the Bosphorus and eat grilled fish by the bridge.",
       "What is the best thing to do in Istanbul?"),
)

DEFAULT_NEEDLES = RANKING_NEEDLES  # the ranking bank; its first three are Wu et al.'s
SPLITS = ("ranking", "heldout")


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
    split: str = ""
    haystack_start: int = 0  # where in the split's haystack (token index) this test's text begins

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


def split_haystack(text: str) -> tuple[str, str]:
    """A haystack cut in two halves at a paragraph boundary near the middle: (ranking,
    held-out). Used for a user's ``--haystack`` file (the held-out half then loses the lines
    the ranking half also has, unless that would leave nothing)."""
    mid = len(text) // 2
    cut = text.rfind("\n\n", 0, mid)
    if cut <= 0:
        cut = text.rfind(". ", 0, mid) + 1 or mid
    return text[:cut], text[cut:]


def _norm_line(line: str) -> str:
    return " ".join(line.split())


def drop_shared_lines(text: str, other: str) -> str:
    """``text`` without the lines that also occur in ``other`` (whitespace-normalised): the
    Python docs repeat passages across topics, and a held-out haystack must not."""
    seen = {_norm_line(line) for line in other.splitlines()}
    seen.discard("")
    return "\n".join(line for line in text.splitlines() if _norm_line(line) not in seen)


def split_pydoc_haystack() -> tuple[str, str]:
    """The Python docs' topics (sorted by name) dealt alternately into two haystacks (ranking:
    topics 0, 2, 4, ..., about 250k characters; held-out: topics 1, 3, 5, ... less every line
    that also occurs in the ranking half, about 160k characters)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    ranking = "\n\n".join(topics[k].strip() for k in keys[0::2])
    heldout = "\n\n".join(topics[k].strip() for k in keys[1::2])
    return ranking, drop_shared_lines(heldout, ranking)


def read_haystack(path: str | os.PathLike) -> str:
    """A user haystack file as text; empty, missing or binary files (and folders, pipes,
    unreadable files: each named as what it is) are one-line errors."""
    p = user_path(path)
    if (problem := file_problem(p)) is not None:
        raise InputError(f"haystack file {p} {problem}; pass a plain-text file (or leave --haystack out for the Python docs)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"haystack file {p} cannot be read ({exc.strerror or type(exc).__name__}); pass a readable file") from None
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
    spread: bool = False,
    split: str = "",
) -> NeedleSet:
    """Every (needle, context length, depth) test. ``context_lengths`` count the whole
    prompt in tokens; depths are percentages (0 = start, 100 = end of the haystack).

    ``spread``: needle i's haystack starts at token ``i * len(haystack) // n_needles`` (and
    wraps around), so the needles of a split read different stretches of text; otherwise
    every test starts at the haystack's beginning. ``split`` labels the tests."""
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
    n_hay = len(hay_ids)
    ends = _sentence_end_ids(tokenizer, hay_ids)
    tests: list[NeedleTest] = []
    for n_i, needle in enumerate(needles):
        start_at = n_i * n_hay // len(needles) if spread and n_hay else 0
        own = hay_ids[start_at:] + hay_ids[:start_at]  # this needle's stretch, wrapping around
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
            body = own[:room]
            for depth in depths:
                cut = _sentence_boundary(body, len(body) if depth >= 100 else int(len(body) * depth / 100), ends)
                ids = before + body[:cut] + needle_ids + body[cut:] + after
                start = len(before) + cut + len(lead)
                tests.append(NeedleTest(ids, start, start + len(answer), needle, int(L), float(depth), split,
                                        start_at))
    return NeedleSet(tests, [int(x) for x in context_lengths], [float(d) for d in depths], source,
                     meta={"chat": chat, "n_needles": len(needles), "split": split, "haystack_tokens": n_hay})


def split_tests(
    tokenizer: Any,
    context_lengths: Sequence[int],
    depths: Sequence[float],
    n_ranking: int,
    n_heldout: int,
    haystack_file: str | os.PathLike | None = None,
    n_ctx: int | None = None,
    chat: bool = True,
) -> tuple[NeedleSet, NeedleSet]:
    """The ranking and the held-out needle sets: the first ``n_ranking`` of
    ``RANKING_NEEDLES`` in the ranking haystack and the first ``n_heldout`` of
    ``HELDOUT_NEEDLES`` in the held-out haystack (the Python docs dealt in two, or the two
    halves of ``haystack_file``), each needle on its own stretch of its haystack."""
    if not 1 <= n_ranking <= len(RANKING_NEEDLES):
        raise InputError(f"{n_ranking} ranking needles; choose 1..{len(RANKING_NEEDLES)}")
    if not 1 <= n_heldout <= len(HELDOUT_NEEDLES):
        raise InputError(f"{n_heldout} held-out needles; choose 1..{len(HELDOUT_NEEDLES)}")
    if haystack_file is not None:
        rank_hay, held_hay = split_haystack(read_haystack(haystack_file))
        held_hay = drop_shared_lines(held_hay, rank_hay) or held_hay
        sources = (f"{haystack_file} (first half)", f"{haystack_file} (second half)")
    else:
        rank_hay, held_hay = split_pydoc_haystack()
        sources = ("pydoc_data.topics (even topics)", "pydoc_data.topics (odd topics)")
    out = []
    for name, bank, n, hay, src in (("ranking", RANKING_NEEDLES, n_ranking, rank_hay, sources[0]),
                                    ("heldout", HELDOUT_NEEDLES, n_heldout, held_hay, sources[1])):
        ns = build_needle_tests(tokenizer, context_lengths, depths, bank[:n], haystack=hay, n_ctx=n_ctx, chat=chat,
                                spread=True, split=name)
        ns.source = src
        out.append(ns)
    return out[0], out[1]
