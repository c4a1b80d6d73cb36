"""Weights shared by the tests' planted models: a copy head whose OV circuit writes the
embedding of the needle's answer tokens into the residual stream, on a model where every
other attention output and every MLP is zero."""
from __future__ import annotations

from typing import Any, Iterable

import torch


def plant_copy_head(model: Any, head: tuple[int, int], answer_ids: Iterable[int], scale: float, seed: int = 0) -> None:
    """In place on a workbench Llama ``model``: the answer tokens get unit embeddings in the
    first ``d_head`` dimensions (every other token a small random embedding outside them);
    ``head`` (layer, query head) copies those dimensions x ``scale``; every other attention
    output and every MLP writes nothing. The attention pattern is the test's to plant."""
    hf, s = model.hf, model.shape
    dh = s.d_head
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=gen) * 0.01)
        emb[:, :dh] = 0
        for t in sorted(set(answer_ids)):
            v = torch.randn(dh, generator=gen)
            emb[t] = 0
            emb[t, :dh] = v / v.norm()
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        attn = hf.model.layers[head[0]].self_attn
        kv = head[1] // (s.n_heads // s.n_kv_heads)
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[kv * dh:(kv + 1) * dh, :dh] = torch.eye(dh)
        attn.o_proj.weight[:dh, head[1] * dh:(head[1] + 1) * dh] = scale * torch.eye(dh)
