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
fused op (``workbench.kernels.patching.dispatch.patch_mix_project``: the Triton kernel on CUDA, its PyTorch
reference elsewhere).

Works on every architecture with an adapter (``workbench.adapters``: the Llama family
with RMSNorm, rotary and grouped-query attention; GPT-2; GPT-NeoX with partial rotary and
the parallel residual; Gemma-2, whose soft-capped layers attend eagerly, whose sliding
layers get the window in their mask and whose attention output goes through its
post-attention norm, ``Adapter.attn_write``), with right padding (``attention_mask``). Shapes: N prompts, T
positions, S = T - p0 suffix positions, H query heads, K key-value heads, D head size, M
model width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from workbench.kernels.patching import dispatch

from ..adapters import Adapter, adapter_for
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
    rotary: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin [1 T rotary_dims] (None without rotary)


def check_supported(model: Any) -> Adapter:
    """The model's architecture adapter (a one-line error for an architecture without one)."""
    return adapter_for(model)


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
    adapter = check_supported(model)
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
            hidden = adapter.base(model.hf)(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                            use_cache=False).last_hidden_state
            last_logits = unembed_float32(model)(hidden[rows, last])
    finally:
        for h in handles:
            h.remove()
    pos = torch.arange(tokens.input_ids.shape[1], device=model.device)[None]
    with torch.no_grad():
        rotary = adapter.rotary_cos_sin(model.hf, store["blocks.0.hook_resid_pre"], pos)
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


def unembed_float32(model: Any) -> Any:
    """The unembedding as a function giving float32 logits. In a low-precision model it runs in
    float32: the metrics are differences of logits of size 10-20, which bfloat16 rounds to
    about 0.06, as large as a small head's effect."""
    adapter, hf = model.adapter, model.hf
    lin = adapter.unembed(hf)
    weight = getattr(lin, "weight", None)
    if model.dtype == torch.float32 or weight is None:
        return lambda x: adapter.cap_logits(hf, lin(x).float())
    w, b = weight.float(), (None if getattr(lin, "bias", None) is None else lin.bias.float())
    return lambda x: adapter.cap_logits(hf, F.linear(x.float(), w, b))


def output_projection(model: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W_O as a view [H D M] and b_O [M] (or None)."""
    adapter = model.adapter
    return adapter.out_weights(adapter.attn(adapter.layers(model.hf)[layer]), model.shape)


class SuffixRunner:
    """Runs chunks of configurations on their suffixes against one cached clean run."""

    def __init__(self, model: Any, clean: CleanRun, source_z: dict[int, torch.Tensor], kernel: str | None = None,
                 compile: bool | None = None):
        self.adapter = adapter = check_supported(model)
        try:  # WORKBENCH_KERNEL or kernel= naming no backend: bad input, said before any work
            dispatch.choose(clean.last_logits.device, kernel)
        except dispatch.KernelChoiceError as err:
            raise InputError(f"{err} (WORKBENCH_KERNEL or kernel=)") from None
        except dispatch.KernelUnavailable:
            pass  # raised again, with its own message, where the kernel is called
        self.model, self.clean, self.kernel = model, clean, kernel
        self.layers = adapter.layers(model.hf)
        self.attns = [adapter.attn(layer) for layer in self.layers]
        self.norm = adapter.final_norm(model.hf)
        self.unembed = unembed_float32(model)
        self.source = source_z
        self.w_o = [adapter.out_weights(attn, model.shape) for attn in self.attns]
        self.w_qkv = [adapter.qkv_weights(attn, model.shape) for attn in self.attns]
        self.scaling = [adapter.scaling(attn, model.shape) for attn in self.attns]
        # the residual stream's sums in float32 when the model is in 16 bits: 30 layers of small
        # updates added to a large stream otherwise lose their last digits at every layer
        self.resid_dtype = torch.float32 if model.dtype in (torch.bfloat16, torch.float16) else model.dtype
        # no padding: every prompt has the same (causal) mask, which then broadcasts over the batch
        self.shared_mask = bool((clean.mask_add == clean.mask_add[:1]).all())
        # per layer: the mask with the layer's sliding window (None: the clean mask), the score cap
        self.windowed = [window_mask(clean.mask_add, adapter.sliding_window(attn)) for attn in self.attns]
        self.softcap = [adapter.attn_softcap(attn) for attn in self.attns]
        # --compile: the per-layer pieces under torch.compile, compiled once for every layer and shape
        self.compiled = bool(getattr(model, "compile", False) if compile is None else compile)
        steps: tuple[QKVStep, FinishStep] = compiled_steps() if self.compiled else (qkv_step, finish_step)
        self._qkv_step, self._finish_step = steps

    # ------------------------------------------------------------------ one layer's pieces
    def qkv(self, l: int, x: torch.Tensor, p0: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B S M] (positions p0..) -> q [B H S D], k and v [B K S D] (rotary applied)."""
        cos, sin = (None, None) if self.clean.rotary is None else (r[:, None, p0:] for r in self.clean.rotary)
        return self._qkv_step(self.adapter, self.layers[l], self.attns[l], x, cos, sin, self.model.shape, self.model.dtype)

    def _attention(self, l: int, x: torch.Tensor, c: int, p0: int) -> torch.Tensor:
        """Head outputs z [c N S H D] of the suffix, attending to the clean prefix keys."""
        q, k, v = self.qkv(l, x, p0)
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
        """q [B H S D], k and v [B H T D] -> z [c N S H D] (causal + padding mask, as HF eager),
        by PyTorch's fused attention: nothing reads the pattern here, so it is never built."""
        s = self.model.shape
        n = self.clean.mask_add.shape[0]
        S, T = q.shape[2], k.shape[2]
        windowed, cap = self.windowed[l], self.softcap[l]
        mask = (self.clean.mask_add if windowed is None else windowed)[:, :, p0:, :T]  # [N 1 S T]
        if self.shared_mask and S == T and windowed is None and cap is None:  # plain causal: the fastest kernel
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling[l])
        else:
            mask = mask[:1] if self.shared_mask else mask.expand(c, *mask.shape).reshape(c * n, 1, S, T)
            z = capped_attention(q, k, v, mask, self.scaling[l], cap)
        z = z.transpose(1, 2)  # [B S H D]
        return z.reshape(c, n, S, s.n_heads, s.d_head)

    def head_qkv(self, l: int, h: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value [B S D] of query head ``h`` (its KV group's key and value)
        from its own input x [B S M], positions from 0 (rotary applied)."""
        s = self.model.shape
        w = self.w_qkv[l]
        g = h // (s.n_heads // s.n_kv_heads)
        hx = self.adapter.attn_norm(self.layers[l])(x)

        def part(weight: torch.Tensor, bias: torch.Tensor | None, i: int) -> torch.Tensor:
            return torch.nn.functional.linear(hx, weight[i], None if bias is None else bias[i])

        q, k, v = part(w.w_q, w.b_q, h), part(w.w_k, w.b_k, g), part(w.w_v, w.b_v, g)
        if self.clean.rotary is not None:
            cos, sin = self.clean.rotary
            q, k = self.adapter.apply_rotary(q, cos, sin), self.adapter.apply_rotary(k, cos, sin)
        return q, k, v

    def finish_layer(self, l: int, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Layer l's output residual from its input ``x`` and its attention output (MLP added
        as the architecture does: sequential, or parallel for GPT-NeoX)."""
        return self._finish_step(self.adapter, self.layers[l], x, attn_out)

    def source_for(self, l: int, n: int, t: int) -> torch.Tensor:
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
                assert x is not None  # set when the first prompts joined
                parts.append(self._attention(l, x, active, p0))
            if joining:
                zc = clean.z[l][:, p0:]
                parts.append(zc.expand(joining, *zc.shape))
                xc = clean.resid_pre[l][:, p0:]
                xj = xc.expand(joining, *xc.shape).reshape(joining * n, S, -1).to(self.resid_dtype)
                x = xj if x is None else torch.cat([x, xj])
                active += joining
            z = parts[0] if len(parts) == 1 else torch.cat(parts)  # [active N S H D]
            mask_l = masks[:active, l, :, p0:].transpose(1, 2)  # [active S H]
            w_o, b_o = self.w_o[l]
            if mask_l.any():
                attn_out = dispatch.patch_mix_project(z, self.source_for(l, n, t)[:, p0:], mask_l, w_o, b_o, backend=self.kernel)
            else:
                attn_out = z.reshape(active, n, S, -1) @ w_o.reshape(-1, w_o.shape[-1])
                if b_o is not None:
                    attn_out = attn_out + b_o
            assert x is not None  # the first layer of the loop is a first patched layer: its prompts joined
            x = self.finish_layer(l, x, attn_out.reshape(active * n, S, -1))
        if x is None:
            raise InputError(f"first patched layers {first_layers} lie outside the model's {L} layers")
        c = active
        last = clean.last_positions
        inside = last >= p0
        idx = (last - p0).clamp(min=0)
        final = x.view(c, n, S, -1)[:, torch.arange(n, device=x.device), idx]  # [c N M]
        final = torch.where(inside[None, :, None], final, clean.final_resid_last[None].to(final.dtype))
        return self.unembed(self.adapter.norm_to(self.norm, final, torch.float32))

    def clean_logits(self) -> torch.Tensor:
        """Last-token logits [N vocab] of the unpatched prompts along this runner's own path (its
        float32 residual stream), so that a 16-bit model's effects are differences of like with like."""
        s, t = self.model.shape, self.clean.mask_add.shape[-1]
        none = torch.zeros(1, s.n_layers, s.n_heads, t, dtype=torch.bool, device=self.clean.mask_add.device)
        return self.run_chunk(none, [0], 0)[0]


def qkv_step(adapter: Adapter, layer: Any, attn: Any, x: torch.Tensor, cos: torch.Tensor | None,
             sin: torch.Tensor | None, shape: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's norm, q/k/v projections and rotary: x [B S M] -> q [B H S D], k and v [B K S D]."""
    h = adapter.norm_to(adapter.attn_norm(layer), x, dtype)
    q, k, v = (t.transpose(1, 2) for t in adapter.qkv(attn, h, shape))
    if cos is not None and sin is not None:
        q, k = adapter.apply_rotary(q, cos, sin), adapter.apply_rotary(k, cos, sin)
    return q, k, v


def finish_step(adapter: Adapter, layer: Any, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """One layer's residual sums, MLP norm and MLP (``Adapter.finish_layer``) from the attention's
    output after W_O (through the norm after the attention where there is one, ``Adapter.attn_write``)."""
    return adapter.finish_layer(layer, x, adapter.attn_write(layer, attn_out))


QKVStep = Callable[[Adapter, Any, Any, torch.Tensor, torch.Tensor | None, torch.Tensor | None, Any, torch.dtype],
                   tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
FinishStep = Callable[[Adapter, Any, torch.Tensor, torch.Tensor], torch.Tensor]
_COMPILED: list[tuple[QKVStep, FinishStep]] = []


def compiled_steps() -> tuple[QKVStep, FinishStep]:
    """``qkv_step`` and ``finish_step`` under ``torch.compile``, made once per process. The layer's
    modules are arguments (their weights are graph inputs, not constants) and the batch and
    position sizes are dynamic, so one compiled graph serves every layer and every chunk; the
    fused attention and the patch mix stay eager (they are one library call each already)."""
    if not _COMPILED:
        _COMPILED.append((torch.compile(qkv_step, dynamic=True), torch.compile(finish_step, dynamic=True)))
    return _COMPILED[0]


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


def window_mask(mask_add: torch.Tensor, window: int | None) -> torch.Tensor | None:
    """The additive mask [N 1 T T] of a layer that sees only the last ``window`` keys (None
    without a window)."""
    if window is None:
        return None
    t = mask_add.shape[-1]
    pos = torch.arange(t, device=mask_add.device)
    return mask_add.masked_fill(pos[None, :] <= pos[:, None] - window, torch.finfo(mask_add.dtype).min)


def capped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                     cap: float | None) -> torch.Tensor:
    """z [B H S D] from q [B H S D], k and v [B H T D] under an additive mask: the fused kernel,
    or with ``cap`` the eager scores soft-capped, c * tanh(s / c), before the mask (Gemma-2)."""
    if cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.tanh((q @ k.transpose(2, 3)) * scale / cap) * cap + mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
