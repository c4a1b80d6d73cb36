"""Every head's measured sources at once: the query-side and key-side marginals of each
query's attended score, for all heads, from one forward pass per batch.

A marginal needs no pair matrix: the key-side share of component ``c`` is
``scale * q_i . R_a W_K n_c(a)`` = ``n_c(a) . (R_a^T q_i) W_K`` (``R_a`` the rotary map at the
attended key ``a``, ``n_c`` the component's share of the frozen-scale norm output), so one
d_model reading vector per (query, head) is dotted with every component. The query side is
the same with the roles swapped. The marginals over all components (``bias`` included) sum
to the attended score, as the pairs of ``attribution`` do.
"""
from __future__ import annotations

from typing import Any

import torch

from workbench.cache import run_with_cache

from .attribution import component_names
from .prompts import QueryPlan


def _cos_sin(model: Any, t: int, device: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """[T rd] rotary cos and sin at positions 0..t-1 (None without rotary)."""
    adapter = model.adapter
    if not adapter.rotary:
        return None
    probe = torch.zeros(1, dtype=model.dtype, device=device)
    cos, sin = adapter.rotary_cos_sin(model.hf, probe, torch.arange(t, device=device)[None])
    return cos[0].double(), sin[0].double()


def _unrotate(model: Any, g: torch.Tensor, rot: Any, pos: torch.Tensor) -> torch.Tensor:
    """R_pos^T g for g [H D] at positions ``pos`` [H]."""
    if rot is None:
        return g
    return model.adapter.rotary_grad(g, rot[0][pos], rot[1][pos])


def _layer_weights(model: Any, layer: int) -> tuple[torch.Tensor, ...]:
    """W_Q [H D M], W_K per query head [H D M], the q and k bias vectors [H D] (norm bias through
    the projection plus the projection's bias), the scale."""
    s, adapter = model.shape, model.adapter
    lay = adapter.layers(model.hf)[layer]
    attn = adapter.attn(lay)
    w = adapter.qkv_weights(attn, s)
    rep = s.n_heads // s.n_kv_heads
    w_q, w_k = w.w_q.detach().double(), w.w_k.detach().double().repeat_interleave(rep, 0)
    nb = getattr(adapter.attn_norm(lay), "bias", None)
    biases = []
    for wt, b in ((w_q, w.b_q), (w_k, None if w.b_k is None else w.b_k.repeat_interleave(rep, 0))):
        total = torch.zeros(wt.shape[:2], dtype=torch.float64, device=wt.device)
        if nb is not None:
            total = total + wt @ nb.detach().double()
        if b is not None:
            total = total + b.detach().double()
        biases.append(total)
    return w_q, w_k, biases[0], biases[1], adapter.scaling(attn, s)


def _stream_parts(model: Any, cache: Any) -> torch.Tensor:
    """[component batch pos M] every component of the stream into the last layer (float32);
    layer L's components are the first ``len(component_names(model, L)) - 1`` of them."""
    s, adapter = model.shape, model.adapter
    embed = cache["hook_embed"].float()
    parts = [embed] + ([] if adapter.rotary else [cache["blocks.0.hook_resid_pre"].float() - embed])
    layers = adapter.layers(model.hf)
    for l in range(s.n_layers - 1):
        w_o, b_o = adapter.out_weights(adapter.attn(layers[l]), s)
        z = cache[f"blocks.{l}.attn.hook_z"].float()
        parts += list(torch.einsum("bthd,hdm->hbtm", z, w_o.detach().float()).unbind(0))
        if b_o is not None:
            parts.append(b_o.detach().float().expand_as(embed))
        parts.append(cache[f"blocks.{l}.hook_mlp_out"].float())
    return torch.stack(parts)


def _norm_reader(model: Any, layer: int, resid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The reading vector ``u`` [.. M] of the norm's output pulled back to its input with the
    scale frozen on ``resid`` [.. M]: ``rstd * (w * u)``, centred for LayerNorm."""
    adapter = model.adapter
    norm = adapter.attn_norm(adapter.layers(model.hf)[layer])
    eps = adapter.norm_eps(norm)
    x = resid - resid.mean(-1, keepdim=True) if adapter.centred_norm else resid
    rstd = (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    weight = getattr(norm, "weight", None)
    v = u * weight.detach().double() if weight is not None else u
    if adapter.centred_norm:
        v = v - v.mean(-1, keepdim=True)
    return v * rstd


def all_head_sources(model: Any, qplan: QueryPlan, batch_size: int = 4) -> list[dict[str, torch.Tensor]]:
    """Per layer: ``key`` and ``query`` [head component] mean marginals of the attended score
    over the plan's prompts (components as ``component_names(model, layer)``)."""
    return [{side: per[side].mean(0) for side in ("key", "query")} for per in per_prompt_sources(model, qplan, batch_size)]


def per_prompt_sources(model: Any, qplan: QueryPlan, batch_size: int = 4) -> list[dict[str, torch.Tensor]]:
    """Per layer, per prompt (mean over its queries): ``key`` and ``query`` [prompt head component]
    marginals of the attended score; ``target`` and ``previous`` [prompt head] the share of queries
    whose attended key is the task's target / the previous token."""
    s = model.shape
    names = ["hook_embed", "blocks.0.hook_resid_pre"]
    for l in range(s.n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_mlp_out",
                  f"blocks.{l}.attn.hook_q", f"blocks.{l}.attn.hook_k"]
    per: list[dict[str, list[torch.Tensor]]] = [{"key": [], "query": [], "target": [], "previous": []}
                                                for _ in range(s.n_layers)]
    weights = [_layer_weights(model, l) for l in range(s.n_layers)]
    heads = torch.arange(s.n_heads, device=model.device)
    for start in range(0, len(qplan.tokens), batch_size):
        chunk = qplan.tokens.slice(start, start + batch_size)
        _, cache = run_with_cache(model, chunk, names, return_logits=False)
        rot = _cos_sin(model, chunk.input_ids.shape[1], model.device)
        parts = _stream_parts(model, cache)
        for layer in range(s.n_layers):
            w_q, w_k, bias_q, bias_k, scale = weights[layer]
            n_c = len(component_names(model, layer)) - 1
            resid = cache[f"blocks.{layer}.hook_resid_pre"].double()
            q = cache[f"blocks.{layer}.attn.hook_q"].double()  # [B T H D]
            k = cache[f"blocks.{layer}.attn.hook_k"].double().repeat_interleave(s.n_heads // s.n_kv_heads, 2)
            for row in range(len(chunk)):
                qs = torch.tensor(qplan.queries[start + row], device=model.device)  # [Q]
                sc = torch.einsum("qhd,khd->qhk", q[row, qs], k[row])
                sc = sc.masked_fill(torch.arange(k.shape[1], device=sc.device)[None, None] > qs[:, None, None], float("-inf"))
                att = sc.argmax(-1)  # [Q H]
                g_k = _unrotate(model, q[row, qs], rot, att)  # [Q H D]
                g_q = _unrotate(model, k[row, att, heads], rot, qs[:, None].expand_as(att))
                v_k = _norm_reader(model, layer, resid[row, att], torch.einsum("qhd,hdm->qhm", g_k, w_k))
                v_q = _norm_reader(model, layer, resid[row, qs][:, None], torch.einsum("qhd,hdm->qhm", g_q, w_q))
                comps = parts[:n_c, row]  # [C T M]
                at_key = torch.zeros(k.shape[1], *v_k.shape[1:], dtype=v_k.dtype, device=v_k.device)  # [T H M]
                at_key.index_put_((att, heads.expand_as(att)), v_k, accumulate=True)
                key = torch.einsum("ctm,thm->hc", comps, at_key.float()).double()
                query = torch.einsum("cqm,qhm->hc", comps[:, qs], v_q.float()).double()
                key = torch.cat([key, (g_k * bias_k).sum((0, -1))[:, None]], -1) * scale
                query = torch.cat([query, (g_q * bias_q).sum((0, -1))[:, None]], -1) * scale
                n_q = len(qs)
                targets = torch.tensor(qplan.targets[start + row], device=att.device)[:, None]
                per[layer]["key"].append((key / n_q).float().cpu())
                per[layer]["query"].append((query / n_q).float().cpu())
                per[layer]["target"].append((att == targets).float().mean(0).cpu())
                per[layer]["previous"].append((att == qs[:, None] - 1).float().mean(0).cpu())
    return [{k: torch.stack(v) for k, v in layer.items()} for layer in per]


def top_sources(model: Any, per_layer: list[dict[str, torch.Tensor]], k: int = 5) -> dict[str, dict[str, list]]:
    """``{"L{l}H{h}": {"key": [[component, mean], ...], "query": [...]}}``, strongest |mean| first."""
    out: dict[str, dict[str, list]] = {}
    for layer, sides in enumerate(per_layer):
        names = component_names(model, layer)
        for head in range(model.shape.n_heads):
            entry = {}
            for side, values in sides.items():
                v = values[head]
                order = torch.argsort(-v.abs(), stable=True)[:k]
                entry[side] = [[names[int(j)], round(float(v[j]), 5)] for j in order]
            out[f"L{layer}H{head}"] = entry
    return out
