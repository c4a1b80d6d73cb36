"""The patching kernels: the Triton kernel (under Triton's interpreter on the CPU) against
its PyTorch reference, and the dispatcher's choice.

Tolerances: float32, max |kernel - reference| <= 1e-5 * (1 + max |reference|) (the same
sums in another order); bfloat16, <= 2**-7 * (1 + max |reference|) against a float32
reference on the same bf16-rounded inputs (one bf16 rounding of the output).
"""
from __future__ import annotations

import os

import pytest
import torch

from workbench.kernels.patching import dispatch, reference

SHAPES = [  # C, N, S, H, D, M: odd sizes, one-element axes, sizes that do not fill a tile
    (1, 1, 1, 1, 16, 16),
    (3, 2, 5, 3, 20, 37),
    (2, 3, 7, 9, 64, 70),
    (5, 1, 3, 4, 8, 33),
]


@pytest.fixture(scope="module")
def triton_kernels():
    """Import the Triton module with the interpreter switched on (it is read at decoration)."""
    pytest.importorskip("triton")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import workbench.kernels.patching.patch_mix as pm

        yield pm
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _inputs(shape, seed, dtype=torch.float32, expanded=False, bias=True):
    c, n, s, h, d, m = shape
    g = torch.Generator().manual_seed(seed)
    if expanded:  # the engine passes clean z shared by all configurations as a stride-0 view
        z = torch.randn(n, s, h, d, generator=g).to(dtype).expand(c, n, s, h, d)
    else:
        z = torch.randn(c, n, s, h, d, generator=g).to(dtype)
    src = torch.randn(1, s, h, d, generator=g).to(dtype).expand(n, s, h, d)  # a mean over prompts
    mask = torch.rand(c, s, h, generator=g) > 0.5
    w = (torch.randn(h * d, m, generator=g) / (h * d) ** 0.5).to(dtype).T.contiguous().T.view(h, d, m)
    b = torch.randn(m, generator=g).to(dtype) if bias else None
    return z, src, mask, w, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("expanded", [False, True])
def test_patch_mix_project_float32(triton_kernels, shape, expanded):
    z, src, mask, w, b = _inputs(shape, seed=sum(shape), expanded=expanded, bias=shape[0] % 2 == 1)
    got = triton_kernels.patch_mix_project(z, src, mask, w, b)
    want = reference.patch_mix_project(z, src, mask, w, b)
    assert got.shape == want.shape == (*shape[:3], shape[5])
    assert (got - want).abs().max() <= 1e-5 * (1 + want.abs().max())


@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_patch_mix_project_bfloat16(triton_kernels, shape):
    z, src, mask, w, b = _inputs(shape, seed=7, dtype=torch.bfloat16)
    got = triton_kernels.patch_mix_project(z, src, mask, w, b)
    assert got.dtype == torch.bfloat16
    want = reference.patch_mix_project(z.float(), src.float(), mask, w.float(), b.float())
    assert (got.float() - want).abs().max() <= 2 ** -7 * (1 + want.abs().max())


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_patch_mix_project_on_each_architectures_output_projection(triton_kernels, name, request):
    """The kernel reads W_O as the adapter gives it (a strided view of the model's own weight:
    a transposed Linear for Llama and GPT-NeoX, a Conv1D for GPT-2), with its bias."""
    model = request.getfixturevalue(name)
    s = model.shape
    attn = model.adapter.attn(model.adapter.layers(model.hf)[1])
    w, b = model.adapter.out_weights(attn, s)
    assert w.shape == (s.n_heads, s.d_head, s.d_model)
    z, src, mask, _, _ = _inputs((3, 2, 5, s.n_heads, s.d_head, s.d_model), seed=11)
    got = triton_kernels.patch_mix_project(z, src, mask, w, b)
    want = reference.patch_mix_project(z, src, mask, w, b)
    assert (got - want).abs().max() <= 1e-5 * (1 + want.abs().max())
    mixed = torch.where(mask[:, None, :, :, None], src[None], z)
    manual = mixed.reshape(3, 2, 5, -1) @ w.reshape(-1, s.d_model) + (0 if b is None else b)
    assert (want - manual).abs().max() <= 1e-5 * (1 + manual.abs().max())


def test_patch_mix_project_is_the_mix_then_the_projection():
    """Closed form: mask all False is z @ W_O, all True is source @ W_O."""
    z, src, mask, w, _ = _inputs((2, 2, 3, 3, 4, 5), seed=1)
    flat_w = w.reshape(-1, 5)
    none = reference.patch_mix_project(z, src, torch.zeros_like(mask), w)
    every = reference.patch_mix_project(z, src, torch.ones_like(mask), w)
    torch.testing.assert_close(none, z.reshape(2, 2, 3, -1) @ flat_w)
    torch.testing.assert_close(every, (src.reshape(2, 3, -1) @ flat_w).expand(2, 2, 3, 5))


@pytest.mark.parametrize("per_config", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_edge_sum(triton_kernels, per_config, dtype):
    g = torch.Generator().manual_seed(3)
    c, e, n, s, m = 3, 5, 2, 7, 33
    deltas = torch.randn(e, c, n, s, m, generator=g) if per_config else torch.randn(e, n, s, m, generator=g)
    base = torch.randn(c, n, s, m, generator=g) if per_config else torch.randn(n, s, m, generator=g)
    mask = torch.rand(c, e, generator=g) > 0.4
    deltas, base = deltas.to(dtype), base.to(dtype)
    got = triton_kernels.masked_edge_sum(base, deltas, mask)
    want = reference.masked_edge_sum(base.float(), deltas.float(), mask)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert got.shape == (c, n, s, m)
    assert (got.float() - want).abs().max() <= tol * (1 + want.abs().max())
    # closed form for one configuration
    i = 0
    manual = (base[i] if per_config else base).float() + sum(
        (deltas[k, i] if per_config else deltas[k]).float() for k in range(e) if mask[i, k])
    assert (want[i] - manual).abs().max() <= 1e-5 * (1 + manual.abs().max())


def test_dispatch_choice(monkeypatch):
    monkeypatch.delenv("WORKBENCH_KERNEL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.choose("cpu") == "reference"
    assert dispatch.choose("cpu", "reference") == "reference"
    with pytest.raises(dispatch.KernelUnavailable, match="needs CUDA"):
        dispatch.choose("cpu", "triton")
    monkeypatch.setenv("WORKBENCH_KERNEL", "reference")
    assert dispatch.choose("cpu") == "reference"
    with pytest.raises(dispatch.KernelChoiceError, match="unknown kernel backend 'cuda-magic'"):
        dispatch.choose("cpu", "cuda-magic")
    if torch.cuda.is_available():
        monkeypatch.delenv("WORKBENCH_KERNEL")
        assert dispatch.choose("cuda") == "triton"


def test_dispatch_forced_triton_under_interpreter(triton_kernels, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.choose("cpu", "triton") == "triton"
    z, src, mask, w, b = _inputs(SHAPES[1], seed=2)
    got = dispatch.patch_mix_project(z, src, mask, w, b, backend="triton")
    want = dispatch.patch_mix_project(z, src, mask, w, b)  # auto on the CPU: the reference
    assert (got - want).abs().max() <= 1e-5 * (1 + want.abs().max())
