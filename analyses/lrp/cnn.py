"""LRP on EfficientNet-Lite0 with zennit, the gradient map, and the pixel-region deletion test.

Rules (zennit ``EpsilonGammaBox``, the composite recommended for CNNs by Montavon et al. 2019):

* batch norm folded into the convolution before it (exact: same logits), so every conv has a bias;
* first convolution (the stem): ZBox with the input's bounds, [-1, 1] after normalisation;
* every other convolution (1x1 expand / project, depthwise kxk, head): Gamma, gamma = 0.25;
* the classifier (Linear 1280 -> 1000): Epsilon, epsilon = 1e-6;
* global average pooling and the residual sums: Norm (relevance split in proportion to the inputs);
* ReLU6: Pass (relevance passes unchanged); TF 'same' padding: relevance of padded zeros dropped.

The relevance of the chosen class's logit is seeded as 1 at the output; pixel relevance is the
sum over the three colour channels: ``[H W]``.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from workbench.vision.efficientnet import EfficientNetLite0, MBConv

from workbench.analyses.lrp.imports import import_zennit

COMPOSITES = ("epsilon_gamma_box", "epsilon_plus_flat")
RULES = {
    "epsilon_gamma_box": "BN folded; stem conv ZBox [-1, 1]; other convs Gamma(0.25); classifier Epsilon(1e-6); "
                         "avg-pool and residual sums Norm; ReLU6 Pass",
    "epsilon_plus_flat": "BN folded; stem conv Flat; other convs ZPlus; classifier Epsilon(1e-6); "
                         "avg-pool and residual sums Norm; ReLU6 Pass",
}


# ---------------------------------------------------------------------------- canonical model
def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A 2-d conv's ``kernel_size`` / ``stride`` / ``padding`` (torch types them ``tuple[int, ...]``;
    a Conv2d's have two entries)."""
    first, second = size
    return first, second


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias computing ``bn(conv(x))`` in eval mode (exact up to float error)."""
    running_mean, running_var = bn.running_mean, bn.running_var
    # folding uses the running statistics, which every BN of the pretrained network tracks
    assert running_mean is not None and running_var is not None, "batch norm without running statistics"
    scale = bn.weight / torch.sqrt(running_var + bn.eps)
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, _pair(conv.kernel_size), stride=_pair(conv.stride),
                       padding=padding, groups=conv.groups, bias=True)
    folded.weight.data = conv.weight.data * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.data if conv.bias is not None else torch.zeros_like(running_mean)
    assert folded.bias is not None  # made with bias=True
    folded.bias.data = (bias - running_mean) * scale + bn.bias
    return folded.to(conv.weight.dtype)


def _mbconv(block: nn.Module) -> MBConv:
    """One of EfficientNet-Lite0's ``_blocks`` (an ``nn.ModuleList``, whose items torch types as
    ``Module``), checked to be the MBConv it holds."""
    if not isinstance(block, MBConv):
        raise TypeError(f"an EfficientNet block is a {type(block).__name__}, not an MBConv")
    return block


class CanonicalMBConv(nn.Module):
    """An MBConv block with batch norms folded and the residual add as a module
    (``zennit.layer.Sum`` over a stacked pair), so LRP gives it the Norm rule."""

    def __init__(self, block: MBConv):
        super().__init__()
        self.expand = block.expand
        if block.expand:
            self.expand_conv = fold_batchnorm(block._expand_conv, block._bn0)
            self.act0 = nn.ReLU6()
        self.pad = block._pad
        self.depthwise_conv = fold_batchnorm(block._depthwise_conv, block._bn1)
        self.act1 = nn.ReLU6()
        self.project_conv = fold_batchnorm(block._project_conv, block._bn2)
        self.residual = block.residual
        if self.residual:
            from zennit.layer import Sum

            self.add = Sum(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act0(self.expand_conv(x)) if self.expand else x
        h = self.act1(self.depthwise_conv(self.pad(h)))
        h = self.project_conv(h)
        return self.add(torch.stack([h, x], dim=-1)) if self.residual else h


class CanonicalEfficientNet(nn.Module):
    """EfficientNet-Lite0 rewritten for LRP: same logits, folded batch norms, residual sums as
    modules. ``stem_conv`` is the first layer (ZBox)."""

    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        import_zennit()
        self.stem_pad = net._stem_pad
        self.stem_conv = fold_batchnorm(net._conv_stem, net._bn0)
        self.stem_act = nn.ReLU6()
        self.blocks = nn.Sequential(*[CanonicalMBConv(_mbconv(b)) for b in net._blocks])
        self.head_conv = fold_batchnorm(net._conv_head, net._bn1)
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = copy.deepcopy(net._fc)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_conv(self.stem_pad(x)))
        x = self.blocks(x)
        x = self.head_act(self.head_conv(x))
        return self.fc(self.flatten(self.pool(x)))


# ---------------------------------------------------------------------------- attributions
def make_composite(name: str = "epsilon_gamma_box", low: float = -1.0, high: float = 1.0, zero_params=None):
    """The zennit composite by name (see the module docstring for the rules). The ZBox bounds are
    scalars because the stem sees the *padded* input (225 x 225 for 224)."""
    import_zennit()
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

    if name == "epsilon_gamma_box":
        # cpu: 0-dim bounds mix with an input on any device
        return EpsilonGammaBox(low=torch.tensor(float(low)), high=torch.tensor(float(high)), epsilon=1e-6, gamma=0.25,
                               zero_params=zero_params)
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=1e-6, zero_params=zero_params)
    from workbench.errors import InputError

    raise InputError(f"unknown LRP composite '{name}'; choose one of {', '.join(COMPOSITES)}")


def lrp_relevance(model: nn.Module, x: torch.Tensor, class_index: int, composite_name: str = "epsilon_gamma_box",
                  low: float = -1.0, high: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input relevance [1 3 H W], logits [1 classes]) for ``class_index`` under the composite."""
    import_zennit()
    from zennit.attribution import Gradient

    composite = make_composite(composite_name, low, high)

    def onehot(output: torch.Tensor) -> torch.Tensor:
        seed = torch.zeros_like(output)
        seed[:, class_index] = 1.0
        return seed

    with Gradient(model=model, composite=composite) as attributor:
        logits, relevance = attributor(x.clone(), onehot)
    return relevance.detach(), logits.detach()


def gradient_map(model: nn.Module, x: torch.Tensor, class_index: int) -> torch.Tensor:
    """Vanilla gradient saliency (Simonyan et al. 2014): ``|d logit / d x|`` summed over channels, [H W]."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        logit = model(x)[0, class_index]
        (grad,) = torch.autograd.grad(logit, x)
    return grad.abs().sum(1)[0].detach()


# ---------------------------------------------------------------------------- salient relevance
def salient_relevance(relevance: np.ndarray | torch.Tensor, grid: int = 56, scales=(1.0, 0.8, 0.5, 0.3),
                      patch: int = 3, k: int = 64, c: float = 3.0, foci_threshold: float = 0.8) -> np.ndarray:
    """The SR map of Li et al. ("Beyond saliency", 2017/2019): context-aware saliency
    (Goferman et al., CVPR 2010) computed on the LRP relevance map instead of colour.

    For every patch i (``patch`` x ``patch`` cells of the relevance map resampled to ``grid`` x
    ``grid`` times each scale): dissimilarity to patch j is
    ``d(i, j) = d_rel(i, j) / (1 + c * d_pos(i, j))`` (relevance-vector distance, normalised to
    [0, 1], shrunk by positional distance); single-scale saliency is
    ``S_i = 1 - exp(-mean of d(i, j) over the K patches most similar in relevance)``; the scales
    are averaged; the attended areas (foci) are where the mean saliency is at least
    ``foci_threshold`` of its maximum, and context is added by
    ``SR_i = S_i * (1 - d_foci(i))`` with ``d_foci`` the distance to the nearest focus (normalised
    to [0, 1]). Input: relevance [H W] (absolute values are used, as in the paper's code);
    output: SR [H W] in [0, 1].
    """
    from scipy.ndimage import distance_transform_edt

    # cpu: a relevance map from numpy, on the CPU
    rel = torch.as_tensor(np.asarray(relevance), dtype=torch.float32).abs()
    h, w = rel.shape
    scale_ref = torch.quantile(rel.flatten(), 0.995).clamp_min(1e-12)
    rel = (rel / scale_ref).clamp(max=1.0)[None, None]
    maps = []
    for s in scales:
        g = max(patch + 2, int(round(grid * s)))
        small = nn.functional.interpolate(rel, size=(g, g), mode="area")
        feats = nn.functional.unfold(small, patch, padding=patch // 2)[0].T  # [g*g, patch*patch]
        # cpu: the salient-relevance map is computed on the CPU from numpy input
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], 1).float() / (g - 1)
        d_rel = torch.cdist(feats, feats) / (patch * patch) ** 0.5
        d_pos = torch.cdist(pos, pos)
        d = d_rel / (1 + c * d_pos)
        kk = min(k, d.shape[0] - 1)
        nearest = torch.topk(d_rel, kk + 1, largest=False).indices[:, 1:]  # most similar, self excluded
        sal = 1 - torch.exp(-torch.gather(d, 1, nearest).mean(1))
        sal = sal.reshape(1, 1, g, g)
        sal = nn.functional.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        maps.append(sal)
    mean = torch.stack(maps).mean(0)
    mean = (mean - mean.min()) / (mean.max() - mean.min()).clamp_min(1e-12)
    foci = (mean >= foci_threshold).cpu().numpy()
    dist = distance_transform_edt(~foci)
    dist = dist / max(float(dist.max()), 1e-12)
    sr = mean.cpu().numpy() * (1 - dist)
    return (sr / max(float(sr.max()), 1e-12)).astype(np.float32)


# ---------------------------------------------------------------------------- faithfulness
def region_scores(saliency: np.ndarray | torch.Tensor, region: int) -> torch.Tensor:
    """Sum of a [H W] map over each ``region`` x ``region`` block: [H/region W/region]."""
    # cpu: a saliency map from numpy, on the CPU
    m = torch.as_tensor(np.asarray(saliency), dtype=torch.float32)[None, None]
    return nn.functional.avg_pool2d(m, region)[0, 0] * region * region


def region_deletion_curve(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, saliency,
                          class_index: int, region: int = 16, step: int = 4, n_steps: int = 16,
                          baseline: float = 0.0, batch: int = 17) -> torch.Tensor:
    """The class logit after removing the ``k * step`` most salient regions (region x region
    pixel blocks set to ``baseline`` in normalised input units, 0 = mid-grey), k = 0..n_steps:
    ``[n_steps + 1]``."""
    scores = region_scores(saliency, region)
    gh, gw = scores.shape
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    images = []
    for k in range(n_steps + 1):
        mask = torch.zeros(gh * gw, device=x.device)
        mask[order[: k * step]] = 1
        mask = mask.reshape(1, 1, gh, gw)
        mask = nn.functional.interpolate(mask, scale_factor=region, mode="nearest")
        mask = nn.functional.pad(mask, (0, x.shape[-1] - mask.shape[-1], 0, x.shape[-2] - mask.shape[-2]))
        images.append(x * (1 - mask) + baseline * mask)
    stacked = torch.cat(images)
    out = []
    with torch.no_grad():
        for i in range(0, len(stacked), batch):
            out.append(model(stacked[i:i + batch])[:, class_index].float())
    return torch.cat(out)
