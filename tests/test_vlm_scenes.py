"""Scenes from real photographs: captions name the objects in reading order, splits are
deterministic, and the held-out split breaks the training co-occurrence prior."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import InputError
from workbench.analyses.vision_heads.vlm.chair import mentioned_objects
from workbench.analyses.vision_heads.vlm.objects import PARTNERS
from workbench.analyses.vision_heads.vlm.scenes import caption_for, make_scenes, photo_half, reading_order, token_objects


def test_captions():
    assert caption_for(["cat"]) == " a cat."
    assert caption_for(["cat", "astronaut"]) == " a cat and an astronaut."
    assert caption_for(["cat", "cup", "rocket"]) == " a cat, a cup and a rocket."


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_scenes_are_deterministic_and_consistent(split):
    a = make_scenes(6, split, seed=3, size=64)
    b = make_scenes(6, split, seed=3, size=64)
    for x, y in zip(a, b):
        assert x.caption == y.caption and np.array_equal(x.image, y.image)
        assert x.image.shape == (64, 64, 3) and 0 <= x.image.min() and x.image.max() <= 1
        assert 1 <= len(x.objects) <= 3 and len(x.boxes) == len(x.objects)
        assert list(x.boxes) == [x.boxes[i] for i in reading_order(list(x.boxes), 64)]
        assert mentioned_objects(x.caption) == list(x.objects)
        for i, (t, l, s) in enumerate(x.boxes):  # no two objects overlap
            for t2, l2, s2 in x.boxes[i + 1:]:
                assert t + s <= t2 or t2 + s2 <= t or l + s <= l2 or l2 + s2 <= l


def test_train_and_heldout_pictures_share_no_pixel():
    """Training objects come from the left half of each photograph, val/test from the right."""
    from workbench.analyses.vision_heads.vlm.objects import OBJECT_NAMES

    for name in OBJECT_NAMES:
        left, right = photo_half(name, "left"), photo_half(name, "right")
        whole_w = left.shape[-1] + right.shape[-1]
        assert left.shape[-2] == right.shape[-2] and abs(left.shape[-1] - right.shape[-1]) <= 1, name
        assert whole_w >= left.shape[-2]  # split across the long side


def test_val_and_test_differ_and_are_composed_differently_from_train():
    val, test, train = make_scenes(20, "val", size=96), make_scenes(20, "test", size=96), make_scenes(20, "train", size=96)
    assert [s.caption for s in val] != [s.caption for s in test]
    # training scenes: 2x2 cells (objects 80-100% of a cell, plain background) or free positions;
    # held-out ones always free, 38-50% of the canvas, on a noisy gradient
    assert {s.layout for s in train} == {"cells", "free"} and {s.layout for s in val + test} == {"free"}
    assert all(b[2] >= 0.8 * 48 - 1 for s in train if s.layout == "cells" for b in s.boxes)
    cells = [s for s in train if s.layout == "cells"]
    assert all((s.image[0, 0] == s.image[-1, -1]).all() for s in cells if not any(
        t == 0 and l == 0 or t + d >= 96 and l + d >= 96 for t, l, d in s.boxes))  # plain background
    assert all(0.38 * 96 - 1 <= b[2] <= 0.5 * 96 for s in test for b in s.boxes if len(s.objects) < 3)
    assert make_scenes(3, "heldout", size=32)[0].caption == make_scenes(3, "test", size=32)[0].caption


def test_token_objects_follow_the_boxes():
    s = make_scenes(1, "test", seed=5, size=160)[0]
    toks = token_objects(s, 5, 160)
    assert len(toks) == 25 and set(toks) - {None} <= set(s.objects)
    for obj, (t, l, side) in zip(s.objects, s.boxes):
        r, c = int((t + side / 2) // 32), int((l + side / 2) // 32)
        assert toks[r * 5 + c] == obj


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
    assert pair_rate(make_scenes(40, "test", size=32)) < 0.4
    assert pair_rate(make_scenes(40, "val", size=32)) < 0.4


def test_bad_split():
    with pytest.raises(InputError, match="split"):
        make_scenes(2, "validation")
    with pytest.raises(InputError, match="at least 1"):
        make_scenes(0)
