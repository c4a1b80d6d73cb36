"""The image mode: LRP, the SR map and the gradient map of photographs through
EfficientNet-Lite0, each scored by deleting its most salient regions."""
from __future__ import annotations


import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.errors import InputError
from workbench.results import provenance

from .cnn import COMPOSITES
from .config import IMAGE_METHODS, LrpImageConfig
from .records import TopClass
from .result import LrpImageResult


def blur_baseline(x: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    """A strongly blurred copy of the input ``[1 3 H W]`` (Gaussian, reflect padding): removed
    regions keep their colour but lose their shapes, so deletion does not add new edges."""
    radius = int(2 * sigma)
    g = torch.exp(-torch.arange(-radius, radius + 1, device=x.device).float() ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    y = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = torch.nn.functional.conv2d(y, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(y, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def check_image_config(config: LrpImageConfig) -> None:
    """One-line errors for image settings that cannot run, before the CNN is built."""
    if not config.images:
        raise InputError("no image given; pass an image file path or a shipped photo name such as chelsea")
    if config.composite not in COMPOSITES:
        raise InputError(f"unknown LRP composite '{config.composite}'; choose one of {', '.join(COMPOSITES)}")
    if config.baseline not in ("blur", "gray"):
        raise InputError(f"unknown deletion baseline '{config.baseline}'; choose blur or gray")
    if config.class_index is not None and not 0 <= config.class_index < 1000:
        raise InputError(f"class index {config.class_index} is outside ImageNet's 0..999")
    if config.image_size < 32 or config.image_size % config.region:
        raise InputError(f"region {config.region} does not divide the image size {config.image_size}; "
                         "choose a region such as 8, 16 or 32 and a size that is a multiple of it (at least 32)")


def run_images(config: LrpImageConfig, progress: bool = True) -> LrpImageResult:
    """Top classes, LRP / SR / gradient maps and their deletion curves for every image."""
    from workbench.vision import load_efficientnet_lite0, load_image, preprocess, top_classes

    from workbench.analyses.lrp import cnn as C

    check_image_config(config)
    net = load_efficientnet_lite0()
    canonical = C.CanonicalEfficientNet(net)
    torch.manual_seed(config.seed)
    names: list[str] = []
    crops: list[torch.Tensor] = []
    tops: dict[str, list[TopClass]] = {}
    maps: dict[str, list[torch.Tensor]] = {m: [] for m in IMAGE_METHODS}
    curves: dict[str, list[torch.Tensor]] = {m: [] for m in (*IMAGE_METHODS, "random")}
    rel_sums: list[float] = []
    logits_expl: list[float] = []
    for spec in tqdm(config.images, desc="explaining images", disable=not progress, leave=False):
        img, name = load_image(spec)
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        x, crop = preprocess(img, config.image_size)
        with torch.no_grad():
            logits = net(x)[0]
        cls = int(logits.argmax()) if config.class_index is None else config.class_index
        tops[name] = [TopClass(**t) for t in top_classes(logits, config.top_k)]
        relevance, _ = C.lrp_relevance(canonical, x, cls, config.composite)
        lrp_map = relevance.sum(1)[0]
        sr_map = torch.from_numpy(C.salient_relevance(lrp_map.cpu().numpy(), grid=config.sr_grid))
        grad_map = C.gradient_map(net, x, cls)
        rand_map = torch.rand(lrp_map.shape)  # cpu: the saliency maps are on the CPU (the LRP image network runs there)
        baseline = blur_baseline(x) if config.baseline == "blur" else torch.zeros_like(x)
        for m, sal in zip((*IMAGE_METHODS, "random"), (lrp_map, sr_map, grad_map, rand_map)):
            curves[m].append(C.region_deletion_curve(net, x, sal, cls, config.region, config.step, config.n_steps, baseline))
        for m, sal in zip(IMAGE_METHODS, (lrp_map, sr_map, grad_map)):
            maps[m].append(sal.float())
        names.append(name)
        crops.append(torch.from_numpy((crop * 255).round().astype(np.uint8)))
        rel_sums.append(float(relevance.sum()))
        logits_expl.append(float(logits[cls]))
    deletion = {m: torch.stack(v) for m, v in curves.items()}
    per_image = {m: [float((c[0] - c).mean()) for c in deletion[m]] for m in curves}
    return LrpImageResult(
        config=config, names=names, top_classes=tops, top1={n: t[0].name for n, t in tops.items()},
        explained_class={n: int(t[0].index) if config.class_index is None else config.class_index
                         for n, t in tops.items()},
        aopc={m: float(np.mean(v)) for m, v in per_image.items()}, aopc_per_image=per_image,
        relevance_fraction=[r / l if abs(l) > 1e-6 else float("nan") for r, l in zip(rel_sums, logits_expl)],
        rules=C.RULES[config.composite],
        removed_fraction_max=min(1.0, config.step * config.n_steps * config.region ** 2 / config.image_size ** 2),
        image_crops=torch.stack(crops), saliency_maps={m: torch.stack(v) for m, v in maps.items()},
        deletion_curves=deletion, meta=provenance(model="efficientnet-lite0", seed=config.seed))
