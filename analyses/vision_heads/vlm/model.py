"""A small LLaVA-style vision-language model: a frozen vision encoder (EfficientNet-Lite0,
ImageNet) whose last spatial feature map gives one visual token per cell (``grid x grid``,
the map's own size ``ceil(image_size / 32)`` unless a coarser grid is asked for), a
trained linear projector into the embedding space of a frozen language model (smollm2-135m),
and prompts with one image placeholder where the projected tokens are spliced in.

Everything the head analyses need is a ``PairedBatch``: the same prompt with the image
(rows ``:n``) and without it (rows ``n:``, the placeholder simply removed), left-padded to
one length so the last positions line up, with position ids that ignore the padding.
A Hugging Face LLaVA or SmolVLM model can produce the same object (see ``analyses.vision_heads.vlm.hf_vlm``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from workbench.errors import InputError

if TYPE_CHECKING:
    from workbench.vision.efficientnet import EfficientNetLite0

IMAGE_TOKEN = "<image>"
DEFAULT_PROMPT = f"{IMAGE_TOKEN} A photo of"


def split_prompt(prompt: str) -> tuple[str, str]:
    """The text before and after the single image placeholder; a one-line error otherwise."""
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text, got {type(prompt).__name__}")
    count = prompt.count(IMAGE_TOKEN)
    if count != 1:
        what = "has no" if count == 0 else f"has {count}"
        raise InputError(f"the prompt {what} image placeholder {IMAGE_TOKEN}; put exactly one {IMAGE_TOKEN} where the "
                         f"image goes, e.g. {DEFAULT_PROMPT!r}")
    before, after = prompt.split(IMAGE_TOKEN)
    if not (before + after).strip():
        raise InputError(f"the prompt has only the image placeholder; add text after it, e.g. {DEFAULT_PROMPT!r}")
    return before, after


def prepare_images(images: Any, size: int) -> torch.Tensor:
    """Images -> network input ``[n 3 size size]`` (resize short side, centre crop, normalise).

    Accepts one array ``[H W C]`` / ``[H W]``, a list of them (C = 1, 3 or 4; float in [0, 1] or
    8-bit; tensors in the list channel-first ``[3 H W]``), or a tensor ``[n 3 H W]`` / ``[3 H W]`` in [0, 1]. Anything else is a one-line error."""
    from workbench.vision.images import normalize, resize_crop, to_rgb_float

    if isinstance(images, torch.Tensor):
        t = images.detach().float()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise InputError(f"an image tensor must be [n 3 height width] (RGB in [0, 1]), got shape {tuple(images.shape)}")
        if min(t.shape[-2:]) < 32:
            raise InputError(f"images are {t.shape[-2]}x{t.shape[-1]} pixels, too small; give at least 32x32")
        arrays = [t[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy() for i in range(t.shape[0])]
    elif isinstance(images, np.ndarray) and images.ndim in (2, 3):
        arrays = [images]
    elif isinstance(images, (list, tuple)) and images:
        arrays = list(images)
    else:
        shape = getattr(images, "shape", None)
        raise InputError(f"images must be an array [H W 3], a list of them or a tensor [n 3 H W], got "
                         f"{type(images).__name__}{'' if shape is None else ' of shape ' + str(tuple(shape))}")
    out = []
    for i, arr in enumerate(arrays):
        if isinstance(arr, torch.Tensor):  # torch images are channel-first [3 H W]
            if arr.ndim != 3 or arr.shape[0] != 3:
                raise InputError(f"image {i}: a tensor image must be [3 height width], got shape {tuple(arr.shape)}")
            arr = arr.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
        rgb = to_rgb_float(np.asarray(arr), source=f"image {i}")
        if min(rgb.shape[:2]) < 32:
            raise InputError(f"image {i} is {rgb.shape[0]}x{rgb.shape[1]} pixels, too small; give at least 32x32")
        out.append(normalize(resize_crop(rgb, size))[0])
    return torch.stack(out)


def left_pad(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``[len_i d]`` -> embeddings ``[n pos d]``, attention mask and position ids ``[n pos]``
    (left padding: every row's last token sits at the last position)."""
    length = max(r.shape[0] for r in rows)
    d = rows[0].shape[-1]
    embeds = rows[0].new_zeros(len(rows), length, d)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        embeds[i, length - r.shape[0]:] = r
        mask[i, length - r.shape[0]:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions


@dataclass
class PairedBatch:
    """The same prompt with the image (rows ``:n``) and without it (rows ``n:``).

    ``embeds`` ``[2n pos d_model]``, ``attention_mask`` / ``position_ids`` ``[2n pos]``,
    ``image_mask`` bool ``[2n pos]`` (True at visual tokens), ``prompt_len`` the padded
    prompt length (decoding steps start there)."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    image_mask: torch.Tensor
    n: int
    prompt_len: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.prompt_len:
            self.prompt_len = self.embeds.shape[1]


def feature_grid(image_size: int, grid: int = 0) -> int:
    """Visual tokens per side: ``grid``, or with 0 the encoder's last feature map
    (EfficientNet-Lite0 downsamples by 32: ``ceil(image_size / 32)``)."""
    return int(grid) if grid else -(-int(image_size) // 32)


class VisionLanguageModel:
    """Frozen encoder -> feature-map grid -> projector -> frozen language model (``lm``, a
    workbench ``Model`` with its hook points, so head outputs are read through the caching layer)."""

    def __init__(self, lm: Any, encoder: EfficientNetLite0, projector: nn.Module, grid: int = 0, image_size: int = 160,
                 name: str = "effnet-smollm2") -> None:
        self.lm, self.encoder, self.projector = lm, encoder, projector
        self.grid, self.image_size, self.name = feature_grid(image_size, grid), image_size, name

    @property
    def n_image_tokens(self) -> int:
        return self.grid * self.grid

    def encode(self, images: Any) -> torch.Tensor:
        """Frozen visual features, ``images -> [n grid*grid d_vision]``."""
        if isinstance(images, torch.Tensor) and images.ndim == 3 and images.shape[-1] == self.projector.in_features:
            return images  # already features
        pixels = prepare_images(images, self.image_size)
        with torch.no_grad():
            fmap = self.encoder.features(pixels)
            pooled = nn.functional.adaptive_avg_pool2d(fmap, self.grid)
        return pooled.flatten(2).transpose(1, 2).contiguous()

    def image_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens ``[n grid*grid d_model]``."""
        return self.projector(features.to(self.lm.dtype))

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.hf.get_input_embeddings()(ids.to(self.lm.device))

    def text_ids(self, text: str) -> torch.Tensor:
        # cpu: token ids from the tokenizer; callers move them
        return torch.tensor(self.lm.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long) if text else \
            torch.zeros(0, dtype=torch.long)  # cpu: token ids from the tokenizer; callers move them

    def rows(self, prompt: str, features: torch.Tensor | None, suffixes: Sequence[str] | None = None,
             grad: bool = False) -> list[torch.Tensor]:
        """Per image: [before | visual tokens | after | suffix] embeddings; ``features`` None drops the image."""
        before, after = split_prompt(prompt)
        n = features.shape[0] if features is not None else len(suffixes or [None])
        pre = self.token_embeds(self.text_ids(before))
        post = self.token_embeds(self.text_ids(after))
        with torch.set_grad_enabled(grad):
            vis = self.image_embeds(features) if features is not None else None
        out = []
        for i in range(n):
            parts = [pre] + ([vis[i]] if vis is not None else []) + [post]
            if suffixes is not None:
                parts.append(self.token_embeds(self.text_ids(suffixes[i])))
            out.append(torch.cat(parts))
        return out

    def paired_batch(self, prompt: str, images: Any) -> PairedBatch:
        """The prompt with and without each image, ready for decoding or head comparison."""
        split_prompt(prompt)
        features = self.encode(images)
        with torch.no_grad():
            with_img = self.rows(prompt, features)
            without = self.rows(prompt, None, suffixes=None) * features.shape[0]
        embeds, mask, pos = left_pad(with_img + without)
        before, _ = split_prompt(prompt)
        n_before = len(self.text_ids(before))
        image_mask = torch.zeros_like(mask, dtype=torch.bool)
        start = embeds.shape[1] - with_img[0].shape[0] + n_before
        image_mask[: features.shape[0], start:start + self.n_image_tokens] = True
        return PairedBatch(embeds.detach(), mask, pos, image_mask, n=features.shape[0])
