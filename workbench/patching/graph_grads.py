"""What EAP and EAP-IG read off the edge graph (``workbench.patching.graph``): the senders'
activations of a no-grad run, and one backward pass that returns d metric / d (input of
each receiver) [receiver batch pos d_model], splitting the shared residual into per-head
inputs exactly (grouped-query keys and values included). An edge's score is then the
sender's change (``sender_deltas``) dotted with the receiver's gradient (``edge_scores_from``).

A head's change is the change of its write into the residual (``head_qkv.head_writes``): under
Gemma-2's post-attention norm, z_h / rms(the layer's output in that run) @ W_O[h] (1 + w), so
the changes of a layer's heads sum to the change of the layer's write. The gradients come
from autograd at the hook points (through the post-attention norm, whose scale depends on
every head of the layer, and the soft cap of the scores, chained in closed form)."""
from __future__ import annotations

from typing import Any

import torch

from ..cache import Tokens, forward
from .edge_graph import Graph, MetricFn, last_logits
from .head_qkv import QKV, attn_modules, attn_scale, attn_softcap, head_writes, write_weights


def _names(n_layers: int) -> list[str]:
    names = ["blocks.0.hook_resid_pre"]
    for l in range(n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_q", f"blocks.{l}.attn.hook_k",
                  f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_attn_scores", f"blocks.{l}.attn.hook_pattern",
                  f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_mlp_out"]
    names.append(f"blocks.{n_layers - 1}.hook_resid_post")
    return list(dict.fromkeys(names))


def sender_outputs(model: Any, tokens: Tokens, embed: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Last-token logits and the senders' activations of one no-grad run: 'input' [b pos d_model]
    (and 'embed', the token embeddings), 'z{l}' [b pos head d_head] (the head outputs as the
    residual receives them, ``head_writes``: hook_z, scaled by a post-attention norm where
    there is one), 'mlp{l}' [b pos d_model] (``hook_mlp_out``)."""
    L = model.shape.n_layers
    names = ["hook_embed", "blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(L)] + \
            [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    patches = {"hook_embed": (lambda a, e=embed: e.to(a.dtype))} if embed is not None else None
    with torch.no_grad():
        logits, store = forward(model, tokens, names, patches)
    acts = {"input": store["blocks.0.hook_resid_pre"], "embed": store["hook_embed"]}
    for l in range(L):
        acts[f"z{l}"] = head_writes(model, l, store[f"blocks.{l}.attn.hook_z"])
        acts[f"mlp{l}"] = store[f"blocks.{l}.hook_mlp_out"]
    return last_logits(logits, tokens), acts


def receiver_grads(model: Any, tokens: Tokens, metric: MetricFn, embed: torch.Tensor | None = None,
                   qkv: QKV | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean-metric / d (input of every receiver): [R b pos d_model], and the metric value.

    ``embed`` [b pos d_model] replaces the token embeddings (EAP-IG's interpolation).
    A head's input gradient is split out exactly: the gradients at its query, at its own
    copy of the (possibly shared) key and value, pushed back through norm and projections."""
    s = model.shape
    L, H = s.n_layers, s.n_heads
    own = qkv is None
    qkv = qkv or QKV(model)
    base = embed

    def seed(a: torch.Tensor) -> torch.Tensor:
        x = (base.to(a.dtype) if base is not None else a).detach().clone()
        return x.requires_grad_(True)

    names = _names(L)
    try:
        # a fresh tensor at the MLP input, so its gradient is the MLP's alone (not the residual's)
        patches = {"hook_embed": seed, **{f"blocks.{l}.hook_resid_mid": _fresh for l in range(L)}}
        logits, st = forward(model, tokens, names, patches, grad=True)
        m = metric(last_logits(logits, tokens)).mean()
        wanted = []
        for l in range(L):
            wanted += [st[f"blocks.{l}.attn.hook_attn_scores"], st[f"blocks.{l}.attn.hook_z"], st[f"blocks.{l}.hook_resid_mid"]]
        wanted.append(st[f"blocks.{L - 1}.hook_resid_post"])
        grads = torch.autograd.grad(m, wanted, allow_unused=True)
        out = torch.zeros(len(Graph.build(L, H).receivers), *tokens.input_ids.shape, s.d_model, dtype=model.dtype,
                          device=model.device)
        for l in range(L):
            g_scores, g_z, g_mid = (g if g is not None else torch.zeros_like(w) for g, w in zip(grads[3 * l: 3 * l + 3], wanted[3 * l: 3 * l + 3]))
            g_q, g_k, g_v = _qkv_grads(model, st, l, g_scores, g_z)
            r0 = l * (H + 1)
            x = st[f"blocks.{l}.hook_resid_pre"]
            out[r0:r0 + H] = head_input_grads(model, qkv, l, x.detach(), g_q, g_k, g_v).permute(2, 0, 1, 3)
            out[r0 + H] = g_mid
        g_final = grads[-1]
        out[-1] = g_final if g_final is not None else 0.0
    finally:
        if own:
            qkv.close()
    return out.detach(), m.detach()


def _qkv_grads(model: Any, st: dict[str, torch.Tensor], layer: int, g_scores: torch.Tensor,
               g_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query-head gradients at q, k, v [b pos head d_head] of ``layer`` from those at its
    attention scores and z (each head's own copy of a shared key and value). Soft-capped
    scores (c * tanh(s / c)) pass the gradient times 1 - tanh(s / c)^2 back to s = q.k * scale."""
    q = st[f"blocks.{layer}.attn.hook_q"]
    k = st[f"blocks.{layer}.attn.hook_k"]
    pattern = st[f"blocks.{layer}.attn.hook_pattern"]
    scale = attn_scale(model, layer)
    kq = k.detach().repeat_interleave(model.shape.n_heads // model.shape.n_kv_heads, dim=2)  # [b pos H d]
    cap = attn_softcap(model, layer)
    if cap:
        raw = torch.einsum("bqhd,bkhd->bhqk", q.detach(), kq) * scale
        g_scores = g_scores * (1.0 - torch.tanh(raw / cap).pow(2))
    g_q = torch.einsum("bhqk,bkhd->bqhd", g_scores, kq) * scale
    g_k = torch.einsum("bhqk,bqhd->bkhd", g_scores, q.detach()) * scale
    g_v = torch.einsum("bhqk,bqhd->bkhd", pattern.detach(), g_z)
    return g_q, g_k, g_v


def head_input_grads(model: Any, qkv: QKV, layer: int, x: torch.Tensor, g_q: torch.Tensor, g_k: torch.Tensor,
                     g_v: torch.Tensor) -> torch.Tensor:
    """Per-head input gradients [b pos head d_model] from per-query-head gradients at q, k, v
    [b pos head d_head]: back through rotary, the projections and the norm, in closed form."""
    s = model.shape
    adapter = model.adapter
    _, attn, norm = attn_modules(model, layer)
    group = torch.arange(s.n_heads, device=x.device) // (s.n_heads // s.n_kv_heads)
    if qkv.rotary is not None:
        cos, sin = (r[:, :, None, :] for r in qkv.rotary)
        g_q, g_k = adapter.rotary_grad(g_q, cos, sin), adapter.rotary_grad(g_k, cos, sin)
    w = adapter.qkv_weights(attn, s)
    g_n = (torch.einsum("bphd,hdm->bphm", g_q, w.w_q) + torch.einsum("bphd,hdm->bphm", g_k, w.w_k[group])
           + torch.einsum("bphd,hdm->bphm", g_v, w.w_v[group]))
    return adapter.norm_input_grad(norm, x[:, :, None], g_n)


def _fresh(a: torch.Tensor) -> torch.Tensor:
    return a + 0.0


def sender_deltas(model: Any, graph: Graph, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per sender block, (b - a) as residual writes: [b pos S_block d_model] for input, each
    layer's heads and each MLP, in sender order."""
    L = graph.n_layers
    out = [(b["input"] - a["input"])[:, :, None]]
    for l in range(L):
        dz = b[f"z{l}"] - a[f"z{l}"]
        out.append(torch.einsum("bphd,hdm->bphm", dz, write_weights(model, l)))
        out.append((b[f"mlp{l}"] - a[f"mlp{l}"])[:, :, None])
    return out


def edge_scores_from(graph: Graph, deltas: list[torch.Tensor], grads: torch.Tensor) -> torch.Tensor:
    """EAP's score matrix [S R]: sum over prompts and positions of delta_u . grad_v."""
    blocks = [torch.einsum("bpsm,rbpm->sr", d, grads) for d in deltas]
    scores = torch.cat(blocks, dim=0)
    return scores.masked_fill(~graph.valid.to(scores.device), 0.0)
