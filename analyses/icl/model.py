"""One-layer multi-head attention for in-context regression (the model of He et al.):
the query token (x_q, 0) attends to the n context tokens (x_i, y_i) (not to itself);
every head has full-size Q, K, V in R^{(d+1)x(d+1)} and an output row O_h in R^{d+1}:

    f(Z, z_q) = sum_h O_h V_h Z softmax(Z^T K_h^T Q_h z_q / sqrt(d+1))

No positional encoding: context pairs are exchangeable, so any context length works up to
the memory cap ``max_context``. ``attention="linear"`` replaces the softmax by the raw
scores divided by the *training* length (a linear transformer whose 1/n is baked into its
weights), the comparison of the paper's length-generalisation claim.
"""
from __future__ import annotations

import math

import torch
from torch import nn

ATTENTIONS = ("softmax", "linear")


class AttentionRegressor(nn.Module):
    """Parameters W_Q, W_K, W_V: [head d_head d_in] (d_head = d_in = d+1), W_O: [head d_head].
    Initialised like ``nn.Linear`` (uniform +-1/sqrt(fan_in)), as in the authors' code."""

    def __init__(self, d: int, n_heads: int, attention: str = "softmax", n_train: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}")
        self.d, self.n_heads, self.attention, self.n_train = d, n_heads, attention, n_train
        D = d + 1

        def uniform(shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            # cpu: the in-context regression study runs on the CPU (its own small model)
            return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)

        self.W_Q = uniform((n_heads, D, D), D)
        self.W_K = uniform((n_heads, D, D), D)
        self.W_V = uniform((n_heads, D, D), D)
        self.W_O = uniform((n_heads, D), n_heads * D)

    def scores(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """Attention logits of the query on each context token: [batch head n]."""
        q = torch.einsum("hed,bd->bhe", self.W_Q, zq)
        k = torch.einsum("hed,bnd->bhne", self.W_K, z)
        return torch.einsum("bhe,bhne->bhn", q, k) / math.sqrt(self.d + 1)

    def forward(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """z: [batch n d+1], zq: [batch d+1] -> prediction of y_q [batch]."""
        s = self.scores(z, zq)
        a = torch.softmax(s, dim=-1) if self.attention == "softmax" else s / self.n_train
        v = torch.einsum("hed,bnd->bhne", self.W_V, z)
        out = torch.einsum("bhn,bhne->bhe", a, v)
        return torch.einsum("bhe,he->b", out, self.W_O)

    @torch.no_grad()
    def kq(self) -> torch.Tensor:
        """Per head KQ = W_Q^T W_K: [head d+1 d+1], rows index the query token, columns the key
        token; the logit is z_q^T KQ z_i / sqrt(d+1)."""
        return torch.einsum("hed,hef->hdf", self.W_Q, self.W_K).clone()

    @torch.no_grad()
    def ov(self) -> torch.Tensor:
        """Per head OV = W_V^T O_h: [head d+1], what a head writes to the prediction per unit of
        each token entry; entry d (the last) reads y."""
        return torch.einsum("hed,he->hd", self.W_V, self.W_O).clone()


def build(d: int, n_heads: int, attention: str = "softmax", n_train: int = 1, seed: int = 0) -> AttentionRegressor:
    gen = torch.Generator().manual_seed(seed)
    return AttentionRegressor(d, n_heads, attention=attention, n_train=n_train, generator=gen)
