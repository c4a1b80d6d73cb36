"""Suffix-only recomputation for head patching: exact, and only the work a patch can change.

A configuration whose first patched layer is ``l0`` and first patched position is ``p0``
leaves every layer below ``l0`` and every position before ``p0`` exactly as in the clean
run. So the clean run is cached once (residual stream into each layer, keys and values
after rotary, head outputs z), and each configuration is computed only on the suffix:
layers ``l0..L-1``, positions ``p0..T-1``, attending to the clean keys and values of
positions ``< p0``. At its first layer a configuration's head outputs are the clean ones,
so that layer costs only the mix and the output projection.

Configurations are grouped by ``p0`` and sorted by ``l0``; within one chunk they join the
batch at their first layer (no layer is computed for a configuration that is still
clean there). The mix of head outputs with the source and the output projection is one
fused op (``kernels.dispatch.patch_mix_project``: the Triton kernel on CUDA, its PyTorch
reference elsewhere).

Supports the Llama family (RMSNorm, rotary, grouped-query attention) and GPT-2, with
right padding (``attention_mask``). Shapes: N prompts, T positions, S = T - p0 suffix
positions, H query heads, K key-value heads, D head size, M model width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from kernels import dispatch

from ..cache import Tokens
from ..errors import InputError


@dataclass
class CleanRun:
    """What the suffix recomputation reuses from the clean run (per layer lists)."""

    resid_pre: list[torch.Tensor]  # [N T M] residual stream into layer l
    keys: list[torch.Tensor]  # [N K T D] keys after rotary
    values: list[torch.Tensor]  # [N K T D]
    z: list[torch.Tensor]  # [N T H D] head outputs before W_O
    final_resid_last: torch.Tensor  # [N M] residual after the last layer at each prompt's last position
    last_logits: torch.Tensor  # [N vocab]
    mask_add: torch.Tensor  # [N 1 T T] additive causal + padding mask
    last_positions: torch.Tensor  # [N]
    rotary: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin [1 T D] (Llama)


def _layers(model: Any) -> list[Any]:
    base = model.hf.base_model
    return list(base.layers) if model.arch == "llama" else list(base.h)


def _final_norm(model: Any) -> Any:
    base = model.hf.base_model
    return base.norm if model.arch == "llama" else base.ln_f


def check_supported(model: Any) -> None:
    if model.arch not in ("llama", "gpt2"):
        raise InputError(f"suffix-only patching supports Llama-family and GPT-2 models, not '{model.arch}'; "
                         "use method='full' for this model")


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N T] 0/1 padding mask -> [N 1 T T] additive mask (0 where query i may see key j)."""
    n, t = attention_mask.shape
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def clean_run(model: Any, tokens: Tokens) -> CleanRun:
    """One clean forward keeping what the suffixes reuse. It reads the workbench hook points
    directly (like the caching layer's hf backend) so that only the last positions are
    unembedded: the [N T vocab] logits would cost a quarter of a forward."""
    check_supported(model)
    L = model.shape.n_layers
    names = [f"blocks.{l}.{n}" for l in range(L) for n in ("hook_resid_pre", "attn.hook_k", "attn.hook_v", "attn.hook_z")]
    names.append(f"blocks.{L - 1}.hook_resid_post")
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def keep(m, i, o, name=name):
            store[name] = o.detach()
        handles.append(model.hook_points[name].register_forward_hook(keep))
    n = tokens.input_ids.shape[0]
    last = tokens.last_positions
    rows = torch.arange(n, device=last.device)
    try:
        with torch.no_grad():
            hidden = model.hf.base_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                         use_cache=False).last_hidden_state
            last_logits = model.hf.get_output_embeddings()(hidden[rows, last])
    finally:
        for h in handles:
            h.remove()
    rotary = None
    if model.arch == "llama":
        t = tokens.input_ids.shape[1]
        pos = torch.arange(t, device=model.device)[None]
        with torch.no_grad():
            rotary = model.hf.base_model.rotary_emb(store["blocks.0.hook_resid_pre"], pos)
    return CleanRun(
        resid_pre=[store[f"blocks.{l}.hook_resid_pre"] for l in range(L)],
        keys=[store[f"blocks.{l}.attn.hook_k"].transpose(1, 2) for l in range(L)],
        values=[store[f"blocks.{l}.attn.hook_v"].transpose(1, 2) for l in range(L)],
        z=[store[f"blocks.{l}.attn.hook_z"] for l in range(L)],
        final_resid_last=store[f"blocks.{L - 1}.hook_resid_post"][rows, last],
        last_logits=last_logits,
        mask_add=additive_mask(tokens.attention_mask, model.dtype),
        last_positions=last,
        rotary=rotary,
    )


def output_projection(model: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W_O as a view [H D M] and b_O [M] (or None)."""
    s = model.shape
    block = _layers(model)[layer]
    if model.arch == "llama":
        lin = block.self_attn.o_proj
        return lin.weight.T.view(s.n_heads, s.d_head, -1), lin.bias
    conv = block.attn.c_proj
    return conv.weight.view(s.n_heads, s.d_head, -1), conv.bias


class SuffixRunner:
    """Runs chunks of configurations on their suffixes against one cached clean run."""

    def __init__(self, model: Any, clean: CleanRun, source_z: dict[int, torch.Tensor], kernel: str | None = None):
        check_supported(model)
        self.model, self.clean, self.kernel = model, clean, kernel
        self.layers = _layers(model)
        self.norm = _final_norm(model)
        self.unembed = model.hf.get_output_embeddings()
        self.source = source_z
        self.w_o = [output_projection(model, l) for l in range(model.shape.n_layers)]

    # ------------------------------------------------------------------ one layer's pieces
    def _qkv(self, l: int, x: torch.Tensor, p0: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B S M] -> q [B H S D], k and v [B K S D] (rotary applied for Llama)."""
        s = self.model.shape
        b, S, _ = x.shape
        block = self.layers[l]
        if self.model.arch == "llama":
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            attn = block.self_attn
            h = block.input_layernorm(x)
            q = attn.q_proj(h).view(b, S, -1, s.d_head).transpose(1, 2)
            k = attn.k_proj(h).view(b, S, -1, s.d_head).transpose(1, 2)
            v = attn.v_proj(h).view(b, S, -1, s.d_head).transpose(1, 2)
            cos, sin = self.clean.rotary
            q, k = apply_rotary_pos_emb(q, k, cos[:, p0:], sin[:, p0:])
            return q, k, v
        h = block.ln_1(x)
        q, k, v = block.attn.c_attn(h).split(s.d_model, dim=2)
        return tuple(t.view(b, S, -1, s.d_head).transpose(1, 2) for t in (q, k, v))  # type: ignore[return-value]

    def _attention(self, l: int, x: torch.Tensor, c: int, p0: int) -> torch.Tensor:
        """Head outputs z [c N S H D] of the suffix, attending to the clean prefix keys."""
        q, k, v = self._qkv(l, x, p0)
        k, v = self.per_query_head(l, k, v, c, p0)
        return self.attend(l, q, k, v, c, p0)

    def per_query_head(self, l: int, k: torch.Tensor, v: torch.Tensor, c: int, p0: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Suffix keys/values [B K S D] -> with the clean prefix, one per query head [B H T D]."""
        n = self.clean.mask_add.shape[0]
        if p0 > 0:
            pk = self.clean.keys[l][:, :, :p0]
            pv = self.clean.values[l][:, :, :p0]
            k = torch.cat([pk.expand(c, *pk.shape).reshape(c * n, *pk.shape[1:]), k], dim=2)
            v = torch.cat([pv.expand(c, *pv.shape).reshape(c * n, *pv.shape[1:]), v], dim=2)
        rep = self.model.shape.n_heads // k.shape[1]
        if rep > 1:
            b, kh, t, d = k.shape
            k = k[:, :, None].expand(b, kh, rep, t, d).reshape(b, kh * rep, t, d)
            v = v[:, :, None].expand(b, kh, rep, t, d).reshape(b, kh * rep, t, d)
        return k, v

    def attend(self, l: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c: int, p0: int) -> torch.Tensor:
        """q [B H S D], k and v [B H T D] -> z [c N S H D] (causal + padding mask, as HF eager)."""
        s = self.model.shape
        n = self.clean.mask_add.shape[0]
        scaling = self.layers[l].self_attn.scaling if self.model.arch == "llama" else self.layers[l].attn.scaling
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # [B H S T]
        S, T = scores.shape[-2:]
        scores = (scores.view(c, n, s.n_heads, S, T) + self.clean.mask_add[None, :, :, p0:, :T]).view(c * n, s.n_heads, S, T)
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        z = torch.matmul(pattern, v).transpose(1, 2)  # [B S H D]
        return z.reshape(c, n, S, s.n_heads, s.d_head)

    def head_qkv(self, l: int, h: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value [B S D] of query head ``h`` (its KV group's key and value)
        from its own input x [B S M], positions from 0 (rotary applied for Llama)."""
        s = self.model.shape
        d = s.d_head
        block = self.layers[l]
        if self.model.arch == "llama":
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            attn = block.self_attn
            g = h // (s.n_heads // s.n_kv_heads)
            hx = block.input_layernorm(x)

            def part(lin, i):
                bias = lin.bias[i * d:(i + 1) * d] if lin.bias is not None else None
                return torch.nn.functional.linear(hx, lin.weight[i * d:(i + 1) * d], bias)

            q, k, v = part(attn.q_proj, h), part(attn.k_proj, g), part(attn.v_proj, g)
            cos, sin = self.clean.rotary
            q, k = apply_rotary_pos_emb(q[:, None], k[:, None], cos, sin)
            return q[:, 0], k[:, 0], v
        hx = block.ln_1(x)
        w, b = block.attn.c_attn.weight, block.attn.c_attn.bias
        cols = [slice(j * s.d_model + h * d, j * s.d_model + (h + 1) * d) for j in range(3)]
        return tuple(hx @ w[:, cs] + b[cs] for cs in cols)  # type: ignore[return-value]

    def _mlp(self, l: int, x: torch.Tensor) -> torch.Tensor:
        block = self.layers[l]
        if self.model.arch == "llama":
            return x + block.mlp(block.post_attention_layernorm(x))
        return x + block.mlp(block.ln_2(x))

    def _source(self, l: int, n: int, t: int) -> torch.Tensor:
        s = self.model.shape
        if l not in self.source:
            raise InputError(f"the patch masks patch layer {l} but source_z has no entry for it; pass source_z[{l}] "
                             f"([N pos head d_head], or a mean that broadcasts to it)")
        src = self.source[l].to(device=self.model.device, dtype=self.model.dtype)
        try:
            return src.expand(n, t, s.n_heads, s.d_head)
        except RuntimeError:
            raise InputError(f"source_z[{l}] has shape {tuple(src.shape)}, which does not broadcast to "
                             f"[{n}, {t}, {s.n_heads}, {s.d_head}] (N pos head d_head); pass a corrupt run's hook_z or its mean") from None

    # ------------------------------------------------------------------ a chunk
    def run_chunk(self, masks: torch.Tensor, first_layers: list[int], p0: int) -> torch.Tensor:
        """Last-token logits [c N vocab] for ``masks`` [c L H T], all with first patched position
        ``p0`` and first patched layers ``first_layers`` (ascending)."""
        clean = self.clean
        n, t = clean.mask_add.shape[0], clean.mask_add.shape[-1]
        L = self.model.shape.n_layers
        S = t - p0
        x: torch.Tensor | None = None
        active = 0
        for l in range(first_layers[0], L):
            joining = sum(1 for f in first_layers[active:] if f == l)
            parts = []
            if active:
                parts.append(self._attention(l, x, active, p0))
            if joining:
                zc = clean.z[l][:, p0:]
                parts.append(zc.expand(joining, *zc.shape))
                xc = clean.resid_pre[l][:, p0:]
                xj = xc.expand(joining, *xc.shape).reshape(joining * n, S, -1)
                x = xj if x is None else torch.cat([x, xj])
                active += joining
            z = parts[0] if len(parts) == 1 else torch.cat(parts)  # [active N S H D]
            mask_l = masks[:active, l, :, p0:].transpose(1, 2)  # [active S H]
            w_o, b_o = self.w_o[l]
            if mask_l.any():
                attn_out = dispatch.patch_mix_project(z, self._source(l, n, t)[:, p0:], mask_l, w_o, b_o, backend=self.kernel)
            else:
                attn_out = z.reshape(active, n, S, -1) @ w_o.reshape(-1, w_o.shape[-1])
                if b_o is not None:
                    attn_out = attn_out + b_o
            x = x + attn_out.reshape(active * n, S, -1)
            x = self._mlp(l, x)
        c = active
        last = clean.last_positions
        inside = last >= p0
        idx = (last - p0).clamp(min=0)
        final = x.view(c, n, S, -1)[:, torch.arange(n, device=x.device), idx]  # [c N M]
        final = torch.where(inside[None, :, None], final, clean.final_resid_last[None])
        return self.unembed(self.norm(final))


def first_patched(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per configuration of ``masks`` [P L H T]: (any patch [P], first layer [P], first position [P])."""
    by_layer = masks.any(dim=(2, 3))  # [P L]
    by_pos = masks.any(dim=(1, 2))  # [P T]
    has = by_layer.any(dim=1)
    first_layer = torch.where(has, by_layer.float().argmax(dim=1), 0)
    first_pos = torch.where(has, by_pos.float().argmax(dim=1), 0)
    return has, first_layer, first_pos


def plan_chunks(masks: torch.Tensor, per_chunk: int) -> list[tuple[list[int], list[int], int]]:
    """Group configurations by first position, sort by first layer, cut into chunks of at
    most ``per_chunk``: [(config indices, their first layers, p0)]. Unpatched ones are left out."""
    has, first_layer, first_pos = first_patched(masks)
    order = sorted((int(first_pos[i]), int(first_layer[i]), i) for i in has.nonzero().flatten().tolist())
    chunks: list[tuple[list[int], list[int], int]] = []
    for p, fl, i in order:
        if not chunks or chunks[-1][2] != p or len(chunks[-1][0]) >= per_chunk:
            chunks.append(([], [], p))
        chunks[-1][0].append(i)
        chunks[-1][1].append(fl)
    return chunks


def suffix_work(masks: torch.Tensor, n_layers: int, n_pos: int) -> float:
    """The share of a full forward per configuration that the suffix recomputes (layers x
    positions), summed over configurations: the arithmetic floor in units of full forwards."""
    has, first_layer, first_pos = first_patched(masks)
    frac = (n_layers - first_layer).float() / n_layers * (n_pos - first_pos).float() / n_pos
    return float((frac * has.float()).sum())
