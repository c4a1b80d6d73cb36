"""Edge patching between attention heads, batched and suffix-only.

The graph: sources are the heads (layer l, head h), index ``l*H + h``, whose output is
their direct write into the residual stream (``head_qkv.head_writes`` @ ``write_weights``):
``z[..., h, :] @ W_O[h]``, or under Gemma-2's post-attention norm ``(z_h / rms) @ W_O[h] (1 + w)``
with rms that of the layer's whole attention output in the same run (the exact split of the
norm: a layer's head writes sum to what it writes); destinations are
the heads' inputs (query, key and value together), index ``l*H + h``, plus the logits (the
final residual stream before the final norm), index ``L*H``. An edge (source, destination)
exists when the source's layer is below the destination's (every source reaches the logits).

A configuration is a boolean mask [n_src n_dst] = [L*H, L*H + 1]. Patching edge (s, d)
means: destination d reads the residual stream of this (patched) run, with s's direct
contribution swapped for its source value (corrupt run, mean or zero):
``input_d = resid_d + sum_s mask[s, d] * (source_out_s - run_out_s)``, at every position,
where ``run_out_s`` is s's output in the same patched run (so chains of patched edges
compose; under a post-attention norm at that run's own scale, so a head whose input is patched
rescales its layer's other writes as the model does). ``source_out_s`` is the write of
``source_z`` at the scale of its own layer total: for a corrupt run's ``hook_z``, the corrupt
run's write exactly; for a mean z, the write of a layer whose heads all output that mean. Nothing else reads the swapped value: the residual stream, the MLPs and the
other heads stay as the run computes them. This is the edge semantics of auto-circuit and
ACDC, restricted to head-to-head and head-to-logits edges.

Suffix-only: a configuration is clean below the layer of its first patched destination,
so the clean run's residual stream is reused there. The masked sum over source edges is
``workbench.kernels.patching.dispatch.masked_edge_sum`` (Triton on CUDA, PyTorch reference elsewhere).

API (used by the circuits analysis)::

    masks = edge_masks(model, [[((0, 1), (1, 3))], [((0, 1), "logits"), ((1, 2), "logits")]])
    sweep = run_edge_patches(model, tokens, source_z, masks, metric, max_batch=512)
    sweep.metric  # [P N]; sweep.clean_metric [N]
"""
from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from workbench.kernels.patching import dispatch

from ..cache import Tokens
from ..errors import InputError
from . import suffix as _suffix
from .engine import HeadPatchSweep, MetricFn
from .head_qkv import head_writes, write_weights

LOGITS = "logits"


def n_nodes(model: Any) -> tuple[int, int]:
    """(number of sources, number of destinations) = (L*H, L*H + 1)."""
    s = model.shape
    return s.n_layers * s.n_heads, s.n_layers * s.n_heads + 1


def _head_index(model: Any, head: Any, what: str, i: int) -> int:
    s = model.shape
    try:
        l, h = (int(v) for v in head)
    except (TypeError, ValueError):
        raise InputError(f"configuration {i}: {what} {head!r} is not a (layer, head) pair"
                         + (" or 'logits'" if what == "destination" else "")) from None
    if not 0 <= l < s.n_layers:
        raise InputError(f"configuration {i}: {what} layer {l} is out of range; the model has layers 0..{s.n_layers - 1}")
    if not 0 <= h < s.n_heads:
        raise InputError(f"configuration {i}: {what} head {h} (L{l}H{h}) is out of range; the model has heads 0..{s.n_heads - 1}")
    return l * s.n_heads + h


def edge_masks(model: Any, configs: list[list[tuple[Any, Any]]]) -> torch.Tensor:
    """Masks [P L*H L*H+1] from lists of edges ((layer, head), (layer, head) or "logits")."""
    n_src, n_dst = n_nodes(model)
    H = model.shape.n_heads
    # cpu: configuration masks are built on the CPU and moved per chunk
    masks = torch.zeros(len(configs), n_src, n_dst, dtype=torch.bool)
    for i, cfg in enumerate(configs):
        for edge in cfg:
            if len(edge) != 2:
                raise InputError(f"configuration {i}: {edge!r} is not a (source, destination) edge")
            src, dst = edge
            si = _head_index(model, src, "source", i)
            di = n_dst - 1 if dst == LOGITS else _head_index(model, dst, "destination", i)
            if di != n_dst - 1 and di // H <= si // H:
                raise InputError(f"configuration {i}: edge L{si // H}H{si % H} -> L{di // H}H{di % H} does not go forward; "
                                 "a source must be in an earlier layer than its destination")
            masks[i, si, di] = True
    return masks


def check_edge_masks(model: Any, masks: torch.Tensor) -> None:
    n_src, n_dst = n_nodes(model)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (n_src, n_dst):
        raise InputError(f"edge masks have shape {tuple(masks.shape)}, expected [configs, {n_src}, {n_dst}] "
                         "(configs x source heads L*H x destination heads L*H + logits); build them with edge_masks()")
    if masks.dtype != torch.bool:
        raise InputError(f"edge masks must be boolean, got {masks.dtype}; use masks.bool()")
    H = model.shape.n_heads
    dev = masks.device
    layer_src = torch.arange(n_src, device=dev) // H
    layer_dst = torch.cat([torch.arange(n_dst - 1, device=dev) // H, torch.tensor([model.shape.n_layers], device=dev)])
    backward = masks & ~(layer_src[:, None] < layer_dst[None, :])
    if backward.any():
        c, si, di = backward.nonzero()[0].tolist()
        raise InputError(f"configuration {c}: edge L{si // H}H{si % H} -> L{di // H}H{di % H} does not go forward; "
                         "a source must be in an earlier layer than its destination")


class _Outputs:
    """Per-head writes [N T M] of the clean run and of the source, made on demand."""

    def __init__(self, runner: _suffix.SuffixRunner, n: int, t: int):
        self.runner, self.n, self.t = runner, n, t
        model = runner.model
        self.w = [write_weights(model, l) for l in range(model.shape.n_layers)]  # [H D M] per layer
        self._clean: dict[int, torch.Tensor] = {}
        self._source: dict[int, torch.Tensor] = {}
        self._scaled: dict[tuple[str, int], torch.Tensor] = {}

    def scaled(self, z: torch.Tensor, l: int) -> torch.Tensor:
        """Every head's output z [.. T H D] of layer ``l`` as the residual receives it, at the scale
        of this z's own layer total (``head_qkv.head_writes``: z itself without a post-norm)."""
        return head_writes(self.runner.model, l, z)

    def project(self, z_scaled: torch.Tensor, l: int, h: int) -> torch.Tensor:
        """Head h's write [.. T M] from its scaled output [.. T D]."""
        return z_scaled @ self.w[l][h]

    def _layer(self, which: str, l: int) -> torch.Tensor:
        if (which, l) not in self._scaled:
            z = self.runner.clean.z[l] if which == "clean" else self.runner.source_for(l, self.n, self.t)
            self._scaled[which, l] = self.scaled(z, l)
        return self._scaled[which, l]

    def clean(self, idx: int) -> torch.Tensor:
        H = self.runner.model.shape.n_heads
        if idx not in self._clean:
            l, h = divmod(idx, H)
            self._clean[idx] = self.project(self._layer("clean", l)[:, :, h], l, h)
        return self._clean[idx]

    def source(self, idx: int) -> torch.Tensor:
        H = self.runner.model.shape.n_heads
        if idx not in self._source:
            l, h = divmod(idx, H)
            self._source[idx] = self.project(self._layer("source", l)[:, :, h], l, h)
        return self._source[idx]


def _patched_input(base: torch.Tensor, masks_d: torch.Tensor, outs: _Outputs, run_out: dict[int, torch.Tensor],
                   l0: int, H: int, kernel: str | None, last: torch.Tensor | None = None) -> torch.Tensor:
    """base [C N S M] + the masked source swaps into one destination (``masks_d`` [C n_src])."""
    used = masks_d.any(dim=0).nonzero().flatten().tolist()
    shared = [s for s in used if s // H < l0]  # sources below the first changed layer: clean in this run
    own = [s for s in used if s // H >= l0]

    def at(t: torch.Tensor) -> torch.Tensor:  # [.. N T M] -> [.. N S M] (the last positions only, for logits)
        if last is None:
            return t
        rows = torch.arange(t.shape[-3], device=t.device)
        return t[..., rows, last, :][..., None, :]

    x = base
    if shared:
        deltas = torch.stack([at(outs.source(s) - outs.clean(s)) for s in shared])  # [E N S M]
        x = dispatch.masked_edge_sum(x, deltas, masks_d[:, shared], backend=kernel)
    if own:
        deltas = torch.stack([at(outs.source(s)[None] - run_out[s]) for s in own])  # [E C N S M]
        x = dispatch.masked_edge_sum(x, deltas, masks_d[:, own], backend=kernel)
    return x


def run_edge_patches(
    model: Any,
    tokens: Tokens,
    source_z: dict[int, torch.Tensor],
    masks: torch.Tensor,
    metric: MetricFn,
    max_batch: int = 512,
    progress: bool = False,
    desc: str = "edge patching",
    kernel: str | None = None,
    clean: Any = None,
) -> HeadPatchSweep:
    """Run every edge configuration in ``masks`` [P L*H L*H+1] on every prompt (see the
    module docstring for the semantics). ``source_z[l]``: [N pos head d_head] or anything
    that broadcasts to it, for every layer that holds a patched source. Returns metric
    [P N] and the clean metric [N]; ``max_batch`` bounds configurations x prompts per pass;
    ``clean`` reuses a ``workbench.patching.suffix.clean_run(model, tokens)``."""
    check_edge_masks(model, masks)
    _suffix.check_supported(model)
    n, t = tokens.input_ids.shape
    if max_batch < n:
        raise InputError(f"max_batch={max_batch} cannot hold one configuration of {n} prompts; raise it to at least {n}")
    s = model.shape
    L, H = s.n_layers, s.n_heads
    src_layers = sorted(set((masks.any(dim=(0, 2)).nonzero().flatten() // H).tolist()))
    missing = [l for l in src_layers if l not in source_z]
    if missing:
        raise InputError(f"the edge masks patch sources in layers {missing} but source_z has no entry for them; "
                         "pass source_z[l] for every layer with a patched source")
    idx = torch.arange(n)  # cpu: prompt indices: a CPU index may index a tensor on any device
    with torch.no_grad():
        if clean is None:
            clean = _suffix.clean_run(model, tokens)
        clean_metric = metric(clean.last_logits[None], idx)[0]
        out = clean_metric[None].repeat(masks.shape[0], 1)
        runner = _suffix.SuffixRunner(model, clean, source_z, kernel=kernel)
        outs = _Outputs(runner, n, t)
        dev = masks.device
        dst_layer = torch.cat([torch.arange(L * H, device=dev) // H, torch.tensor([L], device=dev)])
        has = masks.any(dim=(1, 2))
        first = torch.where(masks.any(dim=1), dst_layer[None], L + 1).min(dim=1).values
        order = sorted((int(first[i]), i) for i in has.nonzero().flatten().tolist())
        per_chunk = max(1, max_batch // n)
        chunks: list[tuple[int, list[int]]] = []
        for l0, i in order:
            if not chunks or chunks[-1][0] != l0 or len(chunks[-1][1]) >= per_chunk:
                chunks.append((l0, []))
            chunks[-1][1].append(i)
        for l0, cfg in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            m = masks[cfg].to(model.device)
            logits = _run_edge_chunk(runner, outs, m, l0, kernel)
            out[torch.tensor(cfg, device=out.device)] = metric(logits, idx).to(out.dtype)
    return HeadPatchSweep(metric=out, clean_metric=clean_metric, n_forwards=1 + len(chunks))


def _run_edge_chunk(runner: _suffix.SuffixRunner, outs: _Outputs, masks: torch.Tensor, l0: int,
                    kernel: str | None) -> torch.Tensor:
    """Last-token logits [C N vocab] for edge masks [C n_src n_dst] whose first patched
    destination is in layer ``l0`` (L: only the logits)."""
    model, clean = runner.model, runner.clean
    s = model.shape
    L, H = s.n_layers, s.n_heads
    c = masks.shape[0]
    n, t = clean.mask_add.shape[0], clean.mask_add.shape[-1]
    needed = set(masks.any(dim=(0, 2)).nonzero().flatten().tolist())  # sources some edge reads
    run_out: dict[int, torch.Tensor] = {}  # source -> its output in this run [C N T M] (layers >= l0)
    if l0 < L:
        xc = clean.resid_pre[l0]
        x = xc.expand(c, *xc.shape).reshape(c * n, t, -1)
    for l in range(l0, L):
        q, k, v = runner.qkv(l, x, 0)
        k, v = runner.per_query_head(l, k, v, c, 0)
        dests = [h for h in range(H) if masks[:, :, l * H + h].any()]
        if dests:
            q, k, v = q.clone(), k.clone(), v.clone()
            base = x.view(c, n, t, -1)
            for h in dests:
                xd = _patched_input(base, masks[:, :, l * H + h], outs, run_out, l0, H, kernel)
                qh, kh, vh = runner.head_qkv(l, h, xd.reshape(c * n, t, -1))
                q[:, h], k[:, h], v[:, h] = qh, kh, vh
        z = runner.attend(l, q, k, v, c, 0)  # [C N T H D]
        sources = [h for h in range(H) if l * H + h in needed]
        if sources:
            zs = outs.scaled(z, l)  # at this run's own scale (the layer's total in this run)
            for h in sources:
                run_out[l * H + h] = outs.project(zs[:, :, :, h], l, h)
        w_o, b_o = runner.w_o[l]
        attn_out = z.reshape(c, n, t, -1) @ w_o.reshape(-1, w_o.shape[-1])
        if b_o is not None:
            attn_out = attn_out + b_o
        x = runner.finish_layer(l, x, attn_out.reshape(c * n, t, -1))
    last = clean.last_positions
    rows = torch.arange(n, device=last.device)
    if l0 < L:
        final = x.view(c, n, t, -1)[:, rows, last]  # [C N M]
    else:
        final = clean.final_resid_last.expand(c, *clean.final_resid_last.shape)
    final = _patched_input(final[:, :, None], masks[:, :, L * H], outs, run_out, l0, H, kernel, last=last)[:, :, 0]
    return runner.unembed(runner.norm(final))
