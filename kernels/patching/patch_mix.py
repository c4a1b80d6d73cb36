"""Triton kernels for batched activation patching (same signatures as ``reference``).

``patch_mix_project``: for every configuration c, prompt n and position s, the attention
output ``sum_h where(mask[c,s,h], source[n,s,h], z[c,n,s,h]) @ W_O[h] (+ b_O)``. The mix
happens on tiles in registers right before the matrix product, so the mixed
``[C N S H D]`` head outputs are never written to memory, and the source (or z) tile is
only read where the mask asks for it.

``masked_edge_sum``: ``base + sum_e mask[c,e] * deltas[e]`` for edge patching, one pass
over the deltas, skipping edges whose weight is zero.

Runs on CUDA, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1`` set
before this module is imported), which is how the tests check it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _patch_mix_project_kernel(
    z_ptr, src_ptr, mask_ptr, w_ptr, b_ptr, out_ptr,
    N, S, H, D, M, n_rows,
    szc, szn, szs, szh, szd,
    ssn, sss, ssh, ssd,
    smc, sms, smh,
    swh, swd, swm,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    row_ok = rows < n_rows
    c = rows // (N * S)
    rem = rows % (N * S)
    n = rem // S
    s = rem % S
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    col_ok = cols < M
    z_row = z_ptr + c * szc + n * szn + s * szs
    src_row = src_ptr + n * ssn + s * sss
    acc = tl.full((BLOCK_R, BLOCK_M), 0.0, tl.float32)  # tl.zeros is a jit helper the interpreter cannot call when triton was imported first
    for h in range(0, H):
        take = tl.load(mask_ptr + c * smc + s * sms + h * smh, mask=row_ok, other=0) != 0
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            keep_z = (row_ok & ~take)[:, None] & d_ok[None, :]
            use_src = (row_ok & take)[:, None] & d_ok[None, :]
            zt = tl.load(z_row[:, None] + h * szh + dd[None, :] * szd, mask=keep_z, other=0.0)
            st = tl.load(src_row[:, None] + h * ssh + dd[None, :] * ssd, mask=use_src, other=0.0)
            wt = tl.load(w_ptr + h * swh + dd[:, None] * swd + cols[None, :] * swm,
                         mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            mixed = (zt + st.to(zt.dtype)).to(wt.dtype)  # each is zero where the other was read
            if DOT_F32:  # the interpreter's dot mishandles bfloat16: multiply in float32 there
                mixed = mixed.to(tl.float32)
                wt = wt.to(tl.float32)
            if IEEE:
                acc += tl.dot(mixed, wt, input_precision="ieee")
            else:
                acc += tl.dot(mixed, wt)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None] * M + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _masked_edge_sum_kernel(
    base_ptr, delta_ptr, mask_ptr, out_ptr,
    E, inner, sbc, sde, sdc, smc, sme,
    BLOCK: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < inner
    acc = tl.load(base_ptr + c * sbc + offs, mask=ok, other=0.0).to(tl.float32)
    for e in range(0, E):
        w = tl.load(mask_ptr + c * smc + e * sme).to(tl.float32)
        if w != 0.0:
            acc += w * tl.load(delta_ptr + e * sde + c * sdc + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + c * inner + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _pow2_at_least(x: int, lo: int = 16, hi: int = 64) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, x))))


def patch_mix_project(
    z: torch.Tensor,
    source: torch.Tensor,
    mask: torch.Tensor,
    w_o: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """See ``reference.patch_mix_project``: z [C N S H D], source [N S H D],
    mask [C S H], w_o [H D M], bias [M] -> [C N S M] in z's dtype."""
    c, n, s, h, d = z.shape
    m = w_o.shape[-1]
    out = torch.empty(c, n, s, m, device=z.device, dtype=z.dtype)
    n_rows = c * n * s
    if n_rows == 0:
        return out
    interpreting = z.device.type == "cpu"
    mask_u8 = mask.to(torch.uint8)
    w = w_o.to(z.dtype)
    b = bias.to(z.dtype) if bias is not None else out  # dummy pointer when there is no bias
    block_r, block_m, block_d = 32, _pow2_at_least(m, hi=64), _pow2_at_least(d, hi=64)
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(m, block_m))
    _patch_mix_project_kernel[grid](
        z, source, mask_u8, w, b, out,
        n, s, h, d, m, n_rows,
        *z.stride(), *source.stride(), *mask_u8.stride(), *w.stride(),
        HAS_BIAS=bias is not None, IEEE=z.dtype == torch.float32 or interpreting, DOT_F32=interpreting,
        BLOCK_R=block_r, BLOCK_D=block_d, BLOCK_M=block_m,
    )
    return out


def masked_edge_sum(base: torch.Tensor, deltas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """See ``reference.masked_edge_sum``: base [N S M] or [C N S M], deltas
    [E N S M] or [E C N S M], mask [C E] -> [C N S M]."""
    c, e = mask.shape
    shared = deltas.ndim == 4
    inner_shape = deltas.shape[1:] if shared else deltas.shape[2:]
    inner = int(torch.Size(inner_shape).numel())
    base_c = base.reshape(-1, inner).contiguous() if base.ndim == 4 else base.reshape(1, inner).contiguous()
    deltas_c = deltas.contiguous()
    weights = mask.to(torch.float32).contiguous()
    out = torch.empty(c, *inner_shape, device=deltas.device, dtype=deltas.dtype)
    if inner == 0 or c == 0:
        return out
    block = 1024
    grid = (c, triton.cdiv(inner, block))
    _masked_edge_sum_kernel[grid](
        base_c, deltas_c, weights, out,
        e, inner, inner if base.ndim == 4 else 0, deltas_c.stride(0), 0 if shared else deltas_c.stride(1),
        weights.stride(0), weights.stride(1),
        BLOCK=block,
    )
    return out
