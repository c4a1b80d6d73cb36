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
