"""Scenes composed from real photographs, with a caption naming the objects in reading order
("a cat and a cup.").

Three splits, which differ in where the object pictures come from, how the scene is composed
and how objects co-occur:

* ``train``: each object is a random square crop of the *left* half of its photograph (the
  long side split in two); half the scenes place the objects in the cells of a 2x2 layout at
  80-100% of a cell on a plain background, the other half at free positions on a noisy
  gradient (the held-out layout, with other seeds and other pictures); an object's partner
  (``objects.PARTNERS``) is added with probability ``pair_prob`` 0.85 (the co-occurrence
  prior, like forks with knives in COCO).
* ``val`` and ``test``: crops of the *right* half of each photograph, so no pixel of a held-out
  object was seen in training; objects at free positions (never the 2x2 cells), 38-50% of the
  canvas, on a two-colour gradient with noise; objects drawn independently (pair_prob 0), so
  many scenes hold one of a pair without the other, where a model that leans on the prior
  names the missing partner: a hallucination. ``val`` and ``test`` differ by seed only; the
  analysis chooses on ``val`` and reports on ``test``.

Limits: eight objects, one photograph each (the halves differ, the object is the same); the
held-out halves show other parts of the same cat, cup or rocket."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from workbench.errors import InputError
from workbench.analyses.vision_heads.vlm.objects import BY_NAME, OBJECT_NAMES, PARTNERS

# split -> (pair_prob, seed offset, photo half, layout)
SPLITS = {"train": (0.85, 0, "left", "mixed"), "val": (0.0, 2_000_003, "right", "free"),
          "test": (0.0, 1_000_003, "right", "free")}
ALIASES = {"heldout": "test"}
CELLS = 4  # the training 2x2 layout


@dataclass
class Scene:
    """One composed image ``[size size 3]`` in [0, 1] and its caption; ``objects`` in caption
    (reading) order, ``boxes`` the ``(top, left, side)`` pixel square of each."""

    image: np.ndarray
    objects: tuple[str, ...]
    boxes: tuple[tuple[int, int, int], ...]
    caption: str
    split: str = "train"
    layout: str = "cells"


def caption_for(objects: tuple[str, ...] | list[str]) -> str:
    """' a cat.', ' a cat and a cup.', ' a cat, a cup and a rocket.' (leading space: it follows the prompt)."""
    if not objects:
        raise InputError("a caption needs at least one object")
    words = [("an " if o[0] in "aeiou" else "a ") + o for o in objects]
    body = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return " " + body + "."


@lru_cache(maxsize=32)
def photo_half(name: str, half: str) -> torch.Tensor:
    """One half of the object's shipped photograph, split across its long side (``left`` /
    ``right``; top / bottom for a portrait photo), as ``[3 H W]`` in [0, 1]; the halves share no pixel."""
    from workbench.vision.images import shipped_image

    photo = torch.from_numpy(shipped_image(BY_NAME[name].photo)).permute(2, 0, 1)[None]
    scale = 256 / min(photo.shape[-2:])
    if scale < 1:  # shrink once: objects are at most half the canvas
        size = (round(photo.shape[-2] * scale), round(photo.shape[-1] * scale))
        photo = torch.nn.functional.interpolate(photo, size=size, mode="bilinear", align_corners=False, antialias=True)
    photo = photo[0].clamp(0, 1)
    _, h, w = photo.shape
    if w >= h:
        mid = w // 2
        part = photo[:, :, :mid] if half == "left" else photo[:, :, mid:]
    else:
        mid = h // 2
        part = photo[:, :mid] if half == "left" else photo[:, mid:]
    return part.contiguous()


def object_patch(name: str, side: int, rng: np.random.Generator, half: str = "left") -> torch.Tensor:
    """A random crop of one photo half (85-100% of its height and of its width, so the object's
    part in that half stays in view), maybe mirrored, resized to ``side x side``: ``[3 side side]``."""
    photo = photo_half(name, half)
    _, h, w = photo.shape
    ch, cw = int(h * rng.uniform(0.85, 1.0)), int(w * rng.uniform(0.85, 1.0))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    patch = photo[:, top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        patch = patch.flip(-1)
    return torch.nn.functional.interpolate(patch[None], size=(side, side), mode="bilinear", align_corners=False,
                                           antialias=True)[0].clamp(0, 1)


def _pick_objects(rng: np.random.Generator, pair_prob: float) -> list[str]:
    k = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    chosen: list[str] = []
    while len(chosen) < k:
        obj = OBJECT_NAMES[int(rng.integers(len(OBJECT_NAMES)))]
        if obj in chosen:
            continue
        chosen.append(obj)
        partner = PARTNERS.get(obj)
        if partner and partner not in chosen and rng.random() < pair_prob:
            chosen.append(partner)
    return chosen[:3]


def _cell_boxes(n: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """``n`` squares in distinct cells of a 2x2 layout, 80-100% of a cell each."""
    half = size // 2
    boxes = []
    for cell in sorted(rng.choice(CELLS, size=n, replace=False).tolist()):
        side = int(half * rng.uniform(0.8, 1.0))
        top = (cell // 2) * half + int(rng.integers(0, half - side + 1))
        left = (cell % 2) * half + int(rng.integers(0, half - side + 1))
        boxes.append((top, left, side))
    return boxes


def _free_boxes(n: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """``n`` non-overlapping squares anywhere on the canvas, 38-50% of its side each."""
    for _ in range(200):
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n):
            side = int(size * rng.uniform(0.38, 0.5))
            top, left = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            if all(top + side <= t or t + s <= top or left + side <= l or l + s <= left for t, l, s in boxes):
                boxes.append((top, left, side))
        if len(boxes) == n:
            return boxes
    return _cell_boxes(n, size, rng)  # three large squares that would not fit: fall back to cells


def reading_order(boxes: list[tuple[int, int, int]], size: int) -> list[int]:
    """Indices of ``boxes`` in reading order: the upper half before the lower, then left to right."""
    return sorted(range(len(boxes)), key=lambda i: (boxes[i][0] + boxes[i][2] / 2 >= size / 2,
                                                    boxes[i][1] + boxes[i][2] / 2))


def _background(rng: np.random.Generator, size: int, layout: str) -> torch.Tensor:
    a = torch.from_numpy(rng.uniform(0.2, 0.8, size=(3, 1, 1))).float()
    if layout == "cells":
        return a.expand(3, size, size).clone()
    b = torch.from_numpy(rng.uniform(0.2, 0.8, size=(3, 1, 1))).float()
    ramp = torch.linspace(0, 1, size)  # cpu: scenes are drawn on the CPU
    ramp = ramp[None, :, None] if rng.random() < 0.5 else ramp[None, None, :]
    noise = torch.from_numpy(rng.normal(0, 0.04, size=(3, size, size))).float()
    return (a + (b - a) * ramp + noise).clamp(0, 1)


def compose(objects: list[str], boxes: list[tuple[int, int, int]], rng: np.random.Generator, size: int = 224,
            half: str = "left", layout: str = "cells") -> np.ndarray:
    """Paint ``objects`` (crops of one photo ``half``) into their ``boxes``: ``[size size 3]``."""
    canvas = _background(rng, size, layout)
    for obj, (top, left, side) in zip(objects, boxes):
        canvas[:, top:top + side, left:left + side] = object_patch(obj, side, rng, half)
    return canvas.permute(1, 2, 0).cpu().numpy().copy()


def make_scenes(n: int, split: str = "train", seed: int = 0, size: int = 224) -> list[Scene]:
    """``n`` scenes of ``split`` (deterministic by seed); captions name objects in reading order."""
    split = ALIASES.get(split, split)
    if split not in SPLITS:
        raise InputError(f"unknown scene split '{split}'; choose one of {', '.join(SPLITS)}")
    if n < 1:
        raise InputError(f"the number of scenes must be at least 1, got {n}")
    pair_prob, offset, half, layout = SPLITS[split]
    rng = np.random.default_rng(seed + offset)
    scenes = []
    for _ in range(n):
        chosen = _pick_objects(rng, pair_prob)
        order = list(rng.permutation(len(chosen)))
        chosen = [chosen[i] for i in order]
        scene_layout = layout if layout != "mixed" else ("cells" if rng.random() < 0.5 else "free")
        boxes = _cell_boxes(len(chosen), size, rng) if scene_layout == "cells" else _free_boxes(len(chosen), size, rng)
        image = compose(chosen, boxes, rng, size, half, scene_layout)
        idx = reading_order(boxes, size)
        placed = tuple(chosen[i] for i in idx)
        scenes.append(Scene(image=image, objects=placed, boxes=tuple(boxes[i] for i in idx), caption=caption_for(placed),
                            split=split, layout=scene_layout))
    return scenes


def token_objects(scene: Scene, grid: int, size: int) -> list[str | None]:
    """For each of the ``grid x grid`` visual tokens (row-major), the object whose square holds
    the token's centre, or None (background)."""
    out: list[str | None] = []
    step = size / grid
    for tok in range(grid * grid):
        r, c = divmod(tok, grid)
        y, x = (r + 0.5) * step, (c + 0.5) * step
        hit = None
        for obj, (top, left, side) in zip(scene.objects, scene.boxes):
            if top <= y < top + side and left <= x < left + side:
                hit = obj
        out.append(hit)
    return out
