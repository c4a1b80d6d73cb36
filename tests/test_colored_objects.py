"""The Colored Objects prompt set (Merullo et al.): format, determinism, corruption, checks."""
from __future__ import annotations

import pytest

from workbench.datasets.colored_objects import COLORS, OBJECTS, colored_object_prompts, token_index
from workbench.errors import InputError


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return tiny_llama.tokenizer  # the embedded model's tokenizer, which the tiny models share


def test_format_and_answers(tok):
    ps = colored_object_prompts(10, tok, seed=3)
    assert len(ps) == 10 and len(set(ps.prompts)) == 10
    for p, a, w, c, sp in zip(ps.prompts, ps.answers, ps.wrong, ps.corrupt, ps.meta["spans"]):
        example, query = p.split("\n\n")
        assert example.startswith("Q: On the ") and "What color is the" in example and example.count("\nA: ") == 1
        assert query.startswith("Q: On the ") and query.endswith("?\nA:")
        assert any(query[len("Q: On the "):].startswith(s) for s in ("table", "desk", "floor"))
        assert any(v in query for v in ("there is", "you see", "I see"))
        assert a[0] == " " and a.strip().lower() in COLORS and a.strip()[0].isupper()
        assert a != w
        # the corrupt twin asks about another listed object, same token length
        assert c[: c.rindex("What")] == p[: p.rindex("What")]
        assert len(tok.encode(p)) == len(tok.encode(c))
        asked = p[p.rindex("the ") + 4: -len("?\nA:")]
        assert asked in OBJECTS
        # the answer colour sits right before the asked object in the query
        k = sp["answer"]
        assert p[sp["colors"][k]:].startswith(a.strip().lower() + " " + asked)
        # "an" before vowels
        for col in COLORS:
            if f" {col} " in query:
                art = "an" if col[0] in "aeiou" else "a"
                assert f" {art} {col} " in query


def test_deterministic_by_seed(tok):
    a = colored_object_prompts(5, tok, seed=1)
    b = colored_object_prompts(5, tok, seed=1)
    c = colored_object_prompts(5, tok, seed=2)
    assert a.prompts == b.prompts and a.answers == b.answers and a.prompts != c.prompts


def test_lists_match_the_paper():
    assert len(OBJECTS) == 17 and len(COLORS) == 8


def test_token_positions_of_colours(tok):
    ps = colored_object_prompts(3, tok)
    for p, sp in zip(ps.prompts, ps.meta["spans"]):
        ids = tok.encode(p, add_special_tokens=False)
        for ch in sp["colors"]:
            i = token_index(tok, p, ch)
            assert tok.decode([ids[i]]).strip().lower() in COLORS


def test_multi_token_answer_is_a_one_line_error(tok):
    with pytest.raises(InputError, match="single-token answers"):
        colored_object_prompts(2, tok, answer_format=" the {color} one")
    with pytest.raises(InputError, match="n=0"):
        colored_object_prompts(0, tok)


@pytest.mark.parametrize("fmt", ["plain-0shot", "plain-lower-1shot", "chat-0shot", "chat-2shot"])
def test_formats_build_aligned_prompts(tok, fmt):
    from workbench.datasets.colored_objects import FORMATS

    shots, answer_format, chat = FORMATS[fmt]
    ps = colored_object_prompts(6, tok, seed=5, format=fmt)
    for p, c, a, w, q, sp in zip(ps.prompts, ps.corrupt, ps.answers, ps.wrong, ps.meta["query_colors"], ps.meta["spans"]):
        assert len(tok.encode(p)) == len(tok.encode(c))
        assert a in q and w in q and len(set(q)) == 3 and q[sp["answer"]] == a
        if chat:
            assert p.endswith("<|im_start|>assistant\n") and p.count("<|im_start|>user") == shots + 1
            assert a == a.strip() and a.islower()
        else:
            assert p.endswith("?\nA:") and p.count("Q: ") == shots + 1
        ids = tok.encode(p, add_special_tokens=False)
        for ch in sp["colors"]:  # the spans point into the final query
            assert ch > len(p) - 200
            assert tok.decode([ids[token_index(tok, p, ch)]]).strip().lower() in COLORS


def test_unknown_format_is_a_one_line_error(tok):
    with pytest.raises(InputError, match="unknown Colored Objects format 'haiku'"):
        colored_object_prompts(2, tok, format="haiku")


def test_colour_accuracy_among_prompt_and_all_colours(tiny_llama):
    """Known answer: logits that favour a colour outside the prompt are wrong among all eight
    colours but may be right among the prompt's three."""
    import torch

    from workbench.analyses.circuits.formats import colour_scores

    ps = colored_object_prompts(2, tiny_llama.tokenizer, seed=0, format="plain-lower-0shot")
    V = tiny_llama.shape.d_vocab
    logits = torch.zeros(2, V)
    tid = tiny_llama.token_id
    outside = [c for c in ps.meta["candidates"] if c not in ps.meta["query_colors"][0]][0]
    logits[0, tid(ps.answers[0])] = 2.0
    logits[0, tid(outside)] = 5.0  # prompt 0: right among the three, wrong among all
    logits[1, tid(ps.wrong[1])] = 1.0  # prompt 1: wrong everywhere
    acc = colour_scores(logits, ps, tiny_llama)
    assert acc.among_prompt.tolist() == [True, False] and acc.among_all.tolist() == [False, False]
    assert acc.logit_diff.tolist() == [2.0, -1.0]
