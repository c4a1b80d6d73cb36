"""Scenes from real photographs: captions name the objects in reading order, splits are
deterministic, and the held-out split breaks the training co-occurrence prior."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import InputError
from analyses.vision_heads.vlm.chair import mentioned_objects
from analyses.vision_heads.vlm.objects import PARTNERS
from analyses.vision_heads.vlm.scenes import caption_for, make_scenes


def test_captions():
    assert caption_for(["cat"]) == " a cat."
    assert caption_for(["cat", "astronaut"]) == " a cat and an astronaut."
    assert caption_for(["cat", "cup", "rocket"]) == " a cat, a cup and a rocket."


def test_scenes_are_deterministic_and_consistent():
    a = make_scenes(6, "heldout", seed=3, size=64)
    b = make_scenes(6, "heldout", seed=3, size=64)
    for x, y in zip(a, b):
        assert x.caption == y.caption and np.array_equal(x.image, y.image)
        assert x.image.shape == (64, 64, 3) and 0 <= x.image.min() and x.image.max() <= 1
        assert 1 <= len(x.objects) <= 3 and list(x.cells) == sorted(x.cells)
        assert mentioned_objects(x.caption) == list(x.objects)


def test_train_split_carries_the_pair_prior():
    def pair_rate(scenes):
        lone = with_partner = 0
        for s in scenes:
            for o in s.objects:
                if PARTNERS[o] in s.objects:
                    with_partner += 1
                else:
                    lone += 1
        return with_partner / (lone + with_partner)

    assert pair_rate(make_scenes(40, "train", size=32)) > 0.6
    assert pair_rate(make_scenes(40, "heldout", size=32)) < 0.4


def test_bad_split():
    with pytest.raises(InputError, match="split"):
        make_scenes(2, "validation")
    with pytest.raises(InputError, match="at least 1"):
        make_scenes(0)
