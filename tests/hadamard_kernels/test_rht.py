"""Sign vectors, the RHT matrix, and the rht / inverse_rht kernels against float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from hadamard_kernels import DEFAULT_SIGN_VECTOR, get_rht_matrix, inverse_rht, random_sign_vector, rht
from hadamard_kernels.matrices import sylvester_matrix
from hadamard_kernels.reference import rel_rms, rht_ref, rounding_bound


def _bound(ref: torch.Tensor, dtype: torch.dtype, d: int) -> float:
    """bf16/fp16: 1.1x the error of one rounding of the exact result (the kernels compute in fp32
    and round once). fp32: the output rounding, the fp32 rounding of +-1/sqrt(d) (the same relative
    error for every entry, so it does not average out) and fp32 accumulation of d products, whose
    error grows like sqrt(d) roundings."""
    one = rounding_bound(ref, dtype)
    return 1.1 * one if dtype != torch.float32 else (2 + math.sqrt(d)) * one


# --------------------------------------------------------------------------------------- matrices

def test_default_sign_vector():
    assert DEFAULT_SIGN_VECTOR == (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


@pytest.mark.parametrize("d", [2, 4, 8, 16, 32, 64, 128, 256])
def test_rht_matrix_is_diag_s_h_over_sqrt_d(d, device):
    s = random_sign_vector(d, seed=d)
    m64 = get_rht_matrix(s, device, torch.float64, d)
    expect = torch.diag(s.double()) @ sylvester_matrix(d, torch.float64) / math.sqrt(d)
    torch.testing.assert_close(m64.cpu(), expect, rtol=0, atol=1e-15)
    # orthogonal
    torch.testing.assert_close(m64 @ m64.t(), torch.eye(d, dtype=torch.float64, device=device), rtol=0, atol=1e-12)
    # bf16: each entry +-1/sqrt(d) rounded once to bf16
    mb = get_rht_matrix(s, device, torch.bfloat16, d)
    assert mb.dtype == torch.bfloat16 and mb.shape == (d, d)
    assert torch.equal(mb.cpu(), expect.to(torch.bfloat16))


def test_rht_matrix_cached_on_hashable_signs(device):
    a = get_rht_matrix(DEFAULT_SIGN_VECTOR, device)
    b = get_rht_matrix(list(DEFAULT_SIGN_VECTOR), device)
    c = get_rht_matrix(torch.tensor(DEFAULT_SIGN_VECTOR, dtype=torch.float32), device)
    assert a is b and b is c
    assert a.dtype == torch.bfloat16


@pytest.mark.parametrize("bad, d, err", [
    ((1, -1, 1), 4, ValueError),            # wrong length
    ((1, -1, 2, 1), 4, ValueError),         # entry not +-1
    ((1, -1, 0, 1), 4, ValueError),
    ((1,), 1, ValueError),                  # d below 2
    ((1,) * 512, 512, ValueError),          # d above 256
    ((1,) * 12, 12, ValueError),            # not a power of two
    ("abcd", 4, TypeError),
])
def test_rht_matrix_errors(bad, d, err, device):
    with pytest.raises(err):
        get_rht_matrix(bad, device, torch.float32, d)


def test_random_sign_vector_reproducible():
    a = random_sign_vector(64, seed=123)
    b = random_sign_vector(64, seed=123)
    c = random_sign_vector(64, seed=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.tolist()) <= {1.0, -1.0} and a.shape == (64,)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(random_sign_vector(32, generator=g1), random_sign_vector(32, generator=g2))
    with pytest.raises(ValueError):
        random_sign_vector(0)
    with pytest.raises(ValueError):
        random_sign_vector(4, seed=1, generator=torch.Generator())


# ---------------------------------------------------------------------------------------- kernels

CASES = [
    # (shape, axis, d)
    ((5, 64), -1, 16),
    ((3, 64), 1, 32),
    ((128, 7), 0, 128),
    ((2, 32, 3), 1, 32),     # middle axis, inner 3 (odd)
    ((48, 5), 0, 16),
    ((3, 24), -1, 8),        # d < 16: register path
    ((8, 9), 0, 4),
    ((1, 256), -1, 256),
    ((4, 2), -1, 2),
    ((600, 16), -1, 16),     # several programs, each looping over tiles, the last one partly masked
    ((32, 300), 0, 16),      # the same along the inner (columns) dim
]


@pytest.mark.parametrize("shape, axis, d", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_rht_matches_float64(shape, axis, d, dtype, device, gen):
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    s = random_sign_vector(d, seed=d + len(shape))
    if dtype == torch.float32 and d > 128:
        with pytest.raises(ValueError, match="float32 input supports hadamard_dimension <= 128"):
            rht(x, s, d, axis)
        return
    y = rht(x, s, d, axis)
    ref = rht_ref(x, s, d, axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_rms(y, ref) <= _bound(ref, dtype, d)
    yi = inverse_rht(x, s, d, axis)
    refi = rht_ref(x, s, d, axis, inverse=True)
    assert rel_rms(yi, refi) <= _bound(refi, dtype, d)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d, axis", [(128, -1), (128, 0), (32, -1), (8, 0)])
def test_rht_is_correctly_rounded(d, axis, dtype, device, gen):
    """bf16/fp16: one dot with the exact +-1 matrix, fp32 accumulation, an fp32 1/sqrt(d) scale and
    one rounding, so (nearly) every output equals the float64 result rounded once to the dtype
    (the fp32 errors, ~2^-23 relative, flip a rounding only within ~2^-23 of a tie)."""
    shape = (2 * d, 40) if axis == 0 else (40, 2 * d)
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    s = random_sign_vector(d, seed=d + 7)
    for inverse, f in ((False, rht), (True, inverse_rht)):
        want = rht_ref(x, s, d, axis, inverse=inverse).to(dtype)
        got = f(x, s, d, axis)
        assert (got == want).double().mean().item() >= 0.999, (inverse, (got != want).sum().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("d, axis", [(16, -1), (32, 0), (4, 0)])
def test_inverse_of_rht_is_identity(d, axis, dtype, device, gen):
    shape = (4 * d, 6) if axis == 0 else (6, 4 * d)
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    s = random_sign_vector(d, seed=3)
    back = inverse_rht(rht(x, s, d, axis), s, d, axis)
    if dtype == torch.float32:
        torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    else:  # two bf16 roundings (rht output, inverse output), each within 1.1x one rounding
        assert rel_rms(back, x.double()) <= 2.2 * rounding_bound(rht_ref(x, s, d, axis), dtype)
    # the exact inverse of the float64 RHT round-trips exactly
    ref = rht_ref(rht_ref(x, s, d, axis), s, d, axis, inverse=True)
    torch.testing.assert_close(ref, x.double(), rtol=0, atol=1e-12)


def test_rht_non_contiguous_and_empty(device, gen):
    base = torch.randn(64, 10, generator=gen, device=device).to(torch.bfloat16)
    x = base.t()  # (10, 64) non-contiguous, transform along the last axis
    y = rht(x, DEFAULT_SIGN_VECTOR, 16, -1)
    ref = rht_ref(x, DEFAULT_SIGN_VECTOR, 16, -1)
    assert rel_rms(y, ref) <= _bound(ref, torch.bfloat16, 16)
    e = torch.empty(0, 32, device=device, dtype=torch.bfloat16)
    assert rht(e, DEFAULT_SIGN_VECTOR).shape == (0, 32)


def test_rht_errors(device):
    x = torch.randn(4, 24, device=device).to(torch.bfloat16)
    with pytest.raises(ValueError, match="multiple"):
        rht(x, DEFAULT_SIGN_VECTOR, 16)
    with pytest.raises(TypeError, match="int32"):
        rht(torch.zeros(4, 16, dtype=torch.int32, device=device), DEFAULT_SIGN_VECTOR)
    with pytest.raises(ValueError, match="entries"):
        rht(torch.zeros(4, 16, device=device), (1,) * 8, 16)
    with pytest.raises(ValueError, match="out of range"):
        rht(torch.zeros(4, 16, device=device), DEFAULT_SIGN_VECTOR, 16, axis=2)
    with pytest.raises(ValueError, match="power of two"):
        inverse_rht(torch.zeros(4, 24, device=device), (1,) * 24, 24)


def test_rht_torch_compile(device, gen):
    x = torch.randn(32, 64, generator=gen, device=device).to(torch.bfloat16)
    backend = "inductor" if device == "cuda" else "aot_eager"
    f = torch.compile(lambda t: inverse_rht(rht(t, DEFAULT_SIGN_VECTOR, 16, 0), DEFAULT_SIGN_VECTOR, 16, 0),
                      fullgraph=True, backend=backend)
    expect = inverse_rht(rht(x, DEFAULT_SIGN_VECTOR, 16, 0), DEFAULT_SIGN_VECTOR, 16, 0)
    assert torch.equal(f(x), expect)


def test_rht_opcheck(device, gen):
    x = torch.randn(32, 16, generator=gen, device=device).to(torch.bfloat16)
    torch.library.opcheck(torch.ops.hadamard_kernels.rht.default, (x, list(DEFAULT_SIGN_VECTOR), 0, False),
                          test_utils=("test_schema", "test_faketensor"))


# -------------------------------------------------------------------------------------- GPU sizes

@pytest.mark.cuda
@pytest.mark.parametrize("d", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("axis", [-1, 0])
def test_rht_gpu_sizes(d, axis, gen):
    x = torch.randn(4096, 2048, generator=gen, device="cuda").to(torch.bfloat16)
    s = random_sign_vector(d, seed=d)
    y = rht(x, s, d, axis)
    ref = rht_ref(x, s, d, axis)
    assert rel_rms(y, ref) <= _bound(ref, torch.bfloat16, d)
    assert (y == ref.to(torch.bfloat16)).double().mean().item() >= 0.999  # one exact dot, one rounding
    if d <= 128:
        yf = rht(x.float(), s, d, axis)
        assert rel_rms(yf, ref) <= _bound(ref, torch.float32, d)


@pytest.mark.parametrize("axis", [-1, 0])
def test_rht_tiled_loop_config(axis, device, gen):
    """The TILES > 1 loop (one program, several tiles, the matrix loaded once) through the raw kernels,
    whatever config the autotuner would pick; a ragged last tile."""
    import importlib

    import triton

    mod = importlib.import_module("hadamard_kernels.rht")
    d = 16
    x = torch.randn(3 * 37 * d if axis == -1 else 5 * d, 1 if axis == -1 else 301, generator=gen,
                    device=device).to(torch.bfloat16).reshape(-1, d) if axis == -1 else \
        torch.randn(5 * d, 301, generator=gen, device=device).to(torch.bfloat16)
    s = random_sign_vector(d, seed=11)
    signs = tuple(int(v) for v in s.tolist())
    y = torch.empty_like(x)
    m = mod._pm1_cached(signs, False, x.device, x.dtype)
    if axis == -1:
        n_rows = x.numel() // d
        grid = (triton.cdiv(n_rows, 32 * 4),)
        mod._rht_rows_kernel[grid](x, y, m, 1.0 / math.sqrt(d), n_rows, 0, D=d, IS_FP32=False, BLOCK_R=32,
                                   TILES=4)
    else:
        inner = x.shape[1]
        grid = (x.shape[0] // d, triton.cdiv(inner, 32 * 4))
        mod._rht_cols_kernel[grid](x, y, m, 1.0 / math.sqrt(d), inner, 0, D=d, IS_FP32=False, BLOCK_I=32,
                                   TILES=4)
    ref = rht_ref(x, s, d, axis)
    assert rel_rms(y, ref) <= _bound(ref, torch.bfloat16, d)
