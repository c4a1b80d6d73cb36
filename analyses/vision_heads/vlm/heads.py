"""Vision-aware head divergence (VHD) and vision-aware head reinforcement (VHR): the math,
independent of any particular model.

Where the head output is read: ``blocks.{l}.attn.hook_z``, each head's attention-weighted
value mix *before* the output projection W_O, ``[.. head d_head]``. Why there: it is the
last place where heads are separate (o_proj sums them into one residual write), and it is
exactly where VHR acts: multiplying z_h by alpha multiplies the head's contribution
z_h W_O^h to the residual stream by alpha (o_proj is linear without bias in Llama-family
models), so the quantity measured and the quantity amplified are the same object.

Which distance: the Euclidean (L2) distance ``||z_img - z_txt||_2`` per head, at the same
decoding step, with the same previously generated tokens in both branches. L2 keeps the
magnitude of the change (a head that stops firing without the image counts), which cosine
would discard; ``distance="cosine"`` (1 - cosine similarity) is offered for heads whose
output norms differ a lot.
"""
from __future__ import annotations

import torch

from workbench.errors import InputError

DISTANCES = ("l2", "cosine")


def head_divergence(z_image: torch.Tensor, z_text: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """VHD per head: ``[.. head d_head]`` twice -> ``[.. head]`` (L2 or 1 - cosine)."""
    if distance not in DISTANCES:
        raise InputError(f"unknown VHD distance '{distance}'; choose one of {', '.join(DISTANCES)}")
    if z_image.shape != z_text.shape:
        raise InputError(f"head outputs with and without the image differ in shape: {tuple(z_image.shape)} vs {tuple(z_text.shape)}")
    a, b = z_image.float(), z_text.float()
    if distance == "l2":
        return (a - b).norm(dim=-1)
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def token_vhd(vhd: torch.Tensor, k: int) -> torch.Tensor:
    """T-VHD: the mean of the k largest head VHDs at each token, ``[.. layer head] -> [..]``."""
    flat = vhd.flatten(-2)
    k = max(1, min(int(k), flat.shape[-1]))
    return flat.topk(k, dim=-1).values.mean(dim=-1)


def vhr_select(vhd_layer: torch.Tensor) -> torch.Tensor:
    """VHR's head choice within one layer, ``[.. head] -> bool [.. head]``: drop outlier heads
    (VHD above the layer mean plus one standard deviation), keep those above the layer median."""
    mean = vhd_layer.mean(dim=-1, keepdim=True)
    std = vhd_layer.std(dim=-1, keepdim=True, unbiased=False)
    median = vhd_layer.quantile(0.5, dim=-1, keepdim=True)
    return (vhd_layer > median) & (vhd_layer <= mean + std)


def random_select(counts: torch.Tensor, n_heads: int, generator: torch.Generator) -> torch.Tensor:
    """The random-heads control: for each row, ``counts[row]`` heads drawn uniformly,
    ``[rows] -> bool [rows head]`` (the same number of heads VHR picked there)."""
    # cpu: a CPU generator draws on the CPU; the caller moves the mask where it patches
    scores = torch.rand(counts.shape[0], n_heads, generator=generator)
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks < counts[:, None].to(ranks.device)


def top_heads(vhd_map: torch.Tensor, k: int = 10) -> list[dict]:
    """The k heads with the largest mean VHD, ``[layer head]`` -> [{layer, head, vhd}]."""
    n_heads = vhd_map.shape[1]
    order = torch.argsort(vhd_map.flatten(), descending=True)[:k]
    return [{"layer": int(i // n_heads), "head": int(i % n_heads), "name": f"L{int(i // n_heads)}H{int(i % n_heads)}",
             "vhd": float(vhd_map.flatten()[i])} for i in order]
