"""Composition scores from the weights alone (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits"), for every ordered pair of heads (earlier, later).

With row vectors, head ``a`` writes ``x @ W_OV[a]`` (``W_OV = W_V W_O``, [M M]) and head
``b`` scores ``x_q @ W_QK[b] @ x_k.T`` (``W_QK = W_Q W_K^T``). The composition score is
``||A B||_F / (||A||_F ||B||_F)`` with ``A = W_OV[a]`` and ``B`` = ``W_QK[b]`` (Q), ``W_QK[b].T``
(K) or ``W_OV[b]`` (V): how much of what ``a`` writes lies where ``b`` reads it. As in
TransformerLens's ``all_composition_scores``, only pairs with ``layer(a) < layer(b)`` count.

Every matrix is a product of two thin factors ([M D] @ [D M]), so each Frobenius norm is
taken through [D D] QR factors, never an [M M] product.

Handling stated:
- Norms: the reading head's attention norm is folded into its reading weights: its
  elementwise weight, and for LayerNorm the centring projection ``I - 11^T/M``. The scale
  (1/rms) is a positive scalar per position, and the score is scale-free, so it drops out.
- Grouped-query attention: query head ``h`` reads keys and values through its key-value
  group's ``W_K``/``W_V`` (``h // (n_heads / n_kv_heads)``); ``W_O`` is per query head.
- Rotary: ``W_QK`` is taken at relative distance 0 (no rotation). At distance ``d`` the
  true bilinear form is ``W_Q R(d) W_K^T``; the score ignores that dependence.
- Random baseline: the mean score of Gaussian factors of the same shapes ([M D] and [D M]
  for each side) is subtracted, so 0 is what unrelated heads of this size score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MODES = ("Q", "K", "V")


@dataclass
class HeadFactors:
    """Thin factors of every head, per layer: reading ``w_q``, ``w_k``, ``w_v`` [layer head M D]
    (norm folded in) and writing ``w_o`` [layer head D M]."""

    w_q: torch.Tensor
    w_k: torch.Tensor
    w_v: torch.Tensor
    w_o: torch.Tensor


def head_factors(model: Any) -> HeadFactors:
    """Every head's factors (float64, on the model's device)."""
    s, adapter = model.shape, model.adapter
    rep = s.n_heads // s.n_kv_heads
    qs, ks, vs, os_ = [], [], [], []
    for layer in adapter.layers(model.hf):
        attn = adapter.attn(layer)
        w = adapter.qkv_weights(attn, s)
        w_o, _ = adapter.out_weights(attn, s)
        fold = _norm_fold(adapter, adapter.attn_norm(layer), s.d_model, w_o.device)  # [M M]
        read = lambda m, fold=fold: fold @ m.detach().to(torch.float64).transpose(-1, -2)  # noqa: E731  [.. D M] -> [.. M D]
        qs.append(read(w.w_q))
        ks.append(read(w.w_k.repeat_interleave(rep, 0)))
        vs.append(read(w.w_v.repeat_interleave(rep, 0)))
        os_.append(w_o.detach().to(torch.float64))
    return HeadFactors(torch.stack(qs), torch.stack(ks), torch.stack(vs), torch.stack(os_))


def _norm_fold(adapter: Any, norm: Any, m: int, device: Any) -> torch.Tensor:
    """[M M] the norm's linear part without its scale: diag(weight), after centring for LayerNorm."""
    weight = getattr(norm, "weight", None)
    w = torch.ones(m, dtype=torch.float64, device=device) if weight is None else weight.detach().to(torch.float64)
    fold = torch.diag(w)
    if adapter.centred_norm:
        fold = (torch.eye(m, dtype=torch.float64, device=device) - 1.0 / m) @ fold
    return fold


def _r_factor(a: torch.Tensor) -> torch.Tensor:
    """[.. D D] R with ``R^T R = a^T a`` for thin ``a`` [.. M D] (QR), so ``||a X|| = ||R X||``."""
    return torch.linalg.qr(a.to(torch.float64), mode="r")[1]


def _pair_norms(left_l: torch.Tensor, left_r: torch.Tensor, right_l: torch.Tensor,
                right_r: torch.Tensor) -> torch.Tensor:
    """||(A_l A_r)(B_l B_r)||_F for every a in the left batch [a M D]/[a D M] and every b in
    the right [b M D]/[b D M]: [a b]. With QR factors ``A_l = Q R_a`` and ``B_r^T = Q' R_b`` the
    norm is ``||R_a A_r B_l R_b^T||``: one [a*D M] @ [M b*D] product (float32), no [M M] matrix."""
    a, d, m = left_r.shape
    b = right_l.shape[0]
    left = (_r_factor(left_l) @ left_r.to(torch.float64)).float()  # [a D M]
    right = (right_l.to(torch.float64) @ _r_factor(right_r.transpose(-1, -2)).transpose(-1, -2)).float()  # [b M D]
    c = left.reshape(a * d, m) @ right.permute(1, 0, 2).reshape(m, b * d)  # [a*D b*D]
    return c.view(a, d, b, d).pow(2).sum((1, 3)).double().sqrt()


def _norms(l_: torch.Tensor, r_: torch.Tensor) -> torch.Tensor:
    """||L R||_F for [n M D] @ [n D M]: [n]."""
    sq = ((l_.transpose(-1, -2) @ l_) * (r_ @ r_.transpose(-1, -2))).sum((-1, -2))
    return sq.clamp(min=0).sqrt()


def _sides(f: HeadFactors, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The reading head's matrix as factors [layer head M D], [layer head D M]."""
    if mode == "Q":
        return f.w_q, f.w_k.transpose(-1, -2)
    if mode == "K":
        return f.w_k, f.w_q.transpose(-1, -2)
    return f.w_v, f.w_o


def raw_scores(f: HeadFactors, mode: str) -> torch.Tensor:
    """[layer head layer head] ``||W_OV[a] B[b]|| / (||W_OV[a]|| ||B[b]||)`` for a in an earlier
    layer than b, NaN elsewhere; 0 where a head writes or reads nothing."""
    n_layers, n_heads = f.w_o.shape[:2]
    bl, br = _sides(f, mode)
    ov_norm = _norms(f.w_v.flatten(0, 1), f.w_o.flatten(0, 1)).view(n_layers, n_heads)
    b_norm = _norms(bl.flatten(0, 1), br.flatten(0, 1)).view(n_layers, n_heads)
    out = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"), dtype=torch.float64, device=f.w_o.device)
    for la in range(n_layers - 1):
        num = _pair_norms(f.w_v[la], f.w_o[la], bl[la + 1:].flatten(0, 1), br[la + 1:].flatten(0, 1))
        den = ov_norm[la][:, None] * b_norm[la + 1:].flatten()[None]
        out[la, :, la + 1:] = torch.where(den > 0, num / den.clamp(min=1e-300), 0.0).view(n_heads, -1, n_heads)
    return out


def random_baseline(d_model: int, d_head: int, n_samples: int = 16, seed: int = 0, *,
                    device: Any) -> float:
    """The mean composition score of Gaussian factors with the heads' shapes."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [(n_samples, d_model, d_head), (n_samples, d_head, d_model)] * 2
    al, ar, bl, br = (torch.randn(sh, generator=gen, dtype=torch.float64).to(device)  # cpu: a CPU generator, so every device gets the same baseline
                      for sh in shapes)
    num = _pair_norms(al, ar, bl, br).diagonal()  # sample i with sample i
    return float((num / (_norms(al, ar) * _norms(bl, br))).mean())


def composition_scores(model: Any, n_samples: int = 16, seed: int = 0) -> tuple[dict[str, torch.Tensor], float]:
    """Per mode (Q, K, V): [layer head layer head] score minus the random baseline (NaN where
    the writer is not in an earlier layer than the reader); and the baseline."""
    f = head_factors(model)
    s = model.shape
    base = random_baseline(s.d_model, s.d_head, n_samples, seed, device=f.w_o.device)
    return {mode: raw_scores(f, mode) - base for mode in MODES}, base


def strongest_sources(scores: torch.Tensor, k: int = 3) -> list[list[list[tuple[int, int, float]]]]:
    """Per reading head [layer][head], its ``k`` strongest writers (layer, head, score)."""
    n_layers, n_heads = scores.shape[:2]
    # cpu: a small [head head] table turned into lists
    flat = scores.permute(2, 3, 0, 1).reshape(n_layers * n_heads, -1).detach().cpu().nan_to_num(float("-inf"))
    out = []
    for lb in range(n_layers):
        row = []
        for hb in range(n_heads):
            vals, idx = flat[lb * n_heads + hb].topk(min(k, flat.shape[1]))
            row.append([(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(vals, idx) if v > float("-inf")])
        out.append(row)
    return out
