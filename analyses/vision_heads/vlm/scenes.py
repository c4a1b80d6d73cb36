"""Scenes composed from real photographs: one to three objects (each a random crop of a
shipped photograph) placed in the cells of a 2x2 layout on a plain background, with a
caption that names them in reading order ("a cat and a cup.").

Splits differ in their co-occurrence statistics: ``train`` adds an object's partner
(``objects.PARTNERS``) with probability ``pair_prob`` (a language prior, like forks with
knives in COCO); ``heldout`` draws objects independently (pair_prob 0), so many held-out
scenes hold one member of a pair without the other, where a model that leans on its
prior names the missing partner: a hallucination."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from workbench.errors import InputError
from analyses.vision_heads.vlm.objects import BY_NAME, OBJECT_NAMES, PARTNERS

SPLITS = {"train": (0.85, 0), "heldout": (0.0, 1_000_003)}  # split -> (pair_prob, seed offset)
CELLS = 4  # 2x2 layout


@dataclass
class Scene:
    """One composed image ``[size size 3]`` in [0, 1] and its caption; ``objects`` in caption
    (reading) order, ``cells`` the 2x2 cell (row-major) of each."""

    image: np.ndarray
    objects: tuple[str, ...]
    cells: tuple[int, ...]
    caption: str


def caption_for(objects: tuple[str, ...] | list[str]) -> str:
    """' a cat.', ' a cat and a cup.', ' a cat, a cup and a rocket.' (leading space: it follows the prompt)."""
    if not objects:
        raise InputError("a caption needs at least one object")
    words = [("an " if o[0] in "aeiou" else "a ") + o for o in objects]
    body = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return " " + body + "."


@lru_cache(maxsize=16)
def _photo(name: str) -> torch.Tensor:
    """The object's shipped photograph as ``[3 H W]`` float in [0, 1], loaded once."""
    from workbench.vision.images import shipped_image

    photo = torch.from_numpy(shipped_image(BY_NAME[name].photo)).permute(2, 0, 1)[None]
    scale = 256 / min(photo.shape[-2:])
    if scale < 1:  # shrink once: scene cells are at most half the canvas
        size = (round(photo.shape[-2] * scale), round(photo.shape[-1] * scale))
        photo = torch.nn.functional.interpolate(photo, size=size, mode="bilinear", align_corners=False, antialias=True)
    return photo[0].clamp(0, 1).contiguous()


def _object_patch(name: str, side: int, rng: np.random.Generator) -> torch.Tensor:
    """A random square crop (70-100% of the short side), maybe mirrored, resized to ``side``."""
    photo = _photo(name)
    _, h, w = photo.shape
    crop = int(min(h, w) * rng.uniform(0.7, 1.0))
    top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    patch = photo[:, top:top + crop, left:left + crop]
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
        if partner and partner not in chosen and len(chosen) < k + 1 and rng.random() < pair_prob:
            chosen.append(partner)
    return chosen[:3]


def compose(objects: list[str], cells: list[int], rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Paint ``objects`` into their 2x2 ``cells`` on a plain random background: ``[size size 3]``."""
    half = size // 2
    canvas = torch.empty(3, size, size)
    canvas[:] = torch.from_numpy(rng.uniform(0.25, 0.75, size=(3, 1, 1))).float()
    for obj, cell in zip(objects, cells):
        side = int(half * rng.uniform(0.8, 1.0))
        r0 = (cell // 2) * half + int(rng.integers(0, half - side + 1))
        c0 = (cell % 2) * half + int(rng.integers(0, half - side + 1))
        canvas[:, r0:r0 + side, c0:c0 + side] = _object_patch(obj, side, rng)
    return canvas.permute(1, 2, 0).numpy().copy()


def make_scenes(n: int, split: str = "train", seed: int = 0, size: int = 224) -> list[Scene]:
    """``n`` scenes of ``split`` (deterministic by seed); captions name objects in reading order."""
    if split not in SPLITS:
        raise InputError(f"unknown scene split '{split}'; choose one of {', '.join(SPLITS)}")
    if n < 1:
        raise InputError(f"the number of scenes must be at least 1, got {n}")
    pair_prob, offset = SPLITS[split]
    rng = np.random.default_rng(seed + offset)
    scenes = []
    for _ in range(n):
        chosen = _pick_objects(rng, pair_prob)
        cells = sorted(rng.choice(CELLS, size=len(chosen), replace=False).tolist())
        order = list(rng.permutation(len(chosen)))
        placed = [chosen[i] for i in order]  # random placement, caption follows the cells
        image = compose(placed, cells, rng, size)
        scenes.append(Scene(image=image, objects=tuple(placed), cells=tuple(cells), caption=caption_for(placed)))
    return scenes
