"""CHAIR on hand-made captions with known answers; the vocabulary and synonyms in one place."""
from __future__ import annotations

import pytest

from workbench.analyses.vision_heads.vlm.chair import chair, mentioned_objects
from workbench.analyses.vision_heads.vlm.objects import BY_NAME, OBJECT_NAMES, PARTNERS, SYNONYMS


def test_synonyms_map_to_objects():
    assert mentioned_objects(" a kitten, two mugs and a Pony.") == ["cat", "cup", "horse"]
    assert mentioned_objects(" a cat and a cat.") == ["cat"]  # counted once
    assert mentioned_objects(" the sky is blue.") == []
    for obj in OBJECT_NAMES:
        assert SYNONYMS[obj] == obj and obj in BY_NAME[obj].synonyms
    assert all(PARTNERS[PARTNERS[o]] == o for o in PARTNERS)


def test_chair_known_answers():
    captions = [" a cat and a cup.", " a rocket.", " a horse and a motorbike and a flower."]
    truths = [("cat",), ("rocket", "astronaut"), ("horse", "flower")]
    s = chair(captions, truths)
    # mentioned: cat, cup | rocket | horse, motorcycle, flower -> 6; hallucinated: cup, motorcycle -> 2
    assert s.n_mentioned == 6 and s.n_hallucinated == 2
    assert s.chair_i == pytest.approx(2 / 6)
    assert s.chair_s == pytest.approx(2 / 3)
    # recall: cat 1/1, rocket 1/2, horse+flower 2/2 -> 4/5
    assert s.recall == pytest.approx(4 / 5)


def test_chair_edge_cases():
    s = chair([" nothing here."], [("cat",)])
    assert s.chair_i == 0.0 and s.chair_s == 0.0 and s.recall == 0.0
    with pytest.raises(ValueError):
        chair([" a cat."], [])
