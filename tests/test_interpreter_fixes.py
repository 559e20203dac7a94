"""The interpreter shim (hadamard_kernels/interpreter_fixes.py) against torch's casts, bit for bit,
and against the compiled GPU kernels' saturation; plus canaries that fail once upstream Triton fixes
the bugs, so the shim can be dropped."""

import pytest
import torch
import triton
import triton.language as tl

from hadamard_kernels import runtime
from hadamard_kernels import interpreter_fixes
from tests.conftest import DEVICE

interpreter_only = pytest.mark.skipif(not runtime.is_interpreter(),
                                      reason="checks the interpreter shim; compiled kernels do not use it")


@triton.jit
def _cast_kernel(x_ptr, bf16_ptr, f32_ptr, fp8_ptr, n, BLOCK: tl.constexpr):
    # x: (n,) any float dtype -> bf16 copy, fp32 copy (via the bf16 copy) and e4m3 copy of x.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    xb = x.to(tl.bfloat16)
    tl.store(bf16_ptr + offs, xb, mask=mask)
    tl.store(f32_ptr + offs, xb.to(tl.float32), mask=mask)
    tl.store(fp8_ptr + offs, x.to(tl.float8e4nv), mask=mask)


@triton.jit
def _fp8_upcast_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(tl.float32), mask=mask)


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], tl.dot(a, b))


def _casts(x):
    n = x.numel()
    bf, f32 = torch.empty(n, dtype=torch.bfloat16, device=x.device), torch.empty(n, device=x.device)
    fp8 = torch.empty(n, dtype=torch.float8_e4m3fn, device=x.device)
    BLOCK = 4096
    _cast_kernel[(triton.cdiv(n, BLOCK),)](x, bf, f32, fp8, n, BLOCK=BLOCK)
    return bf, f32, fp8


def _fp8_reference(x):
    """What the GPU's cvt.rn.satfinite does: clamp to +-448 (NaN stays NaN), round to nearest even."""
    return x.float().clamp(-448.0, 448.0).to(torch.float8_e4m3fn)


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _same_bits(a, b):
    return torch.equal(_bits(a), _bits(b))


def _all_finite_bf16(device):
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return x[torch.isfinite(x)].to(device)


def _fp32_sample(device, n=1 << 20):
    g = torch.Generator().manual_seed(1234)
    # log-uniform magnitudes over fp8's and bf16's whole range, random signs, plus exact ties
    mag = torch.exp2(torch.empty(n).uniform_(-24, 12, generator=g))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x = mag * sign
    ties_bf16 = (torch.randn(4096, generator=g).to(torch.bfloat16).float().view(torch.int32) | 0x8000).view(torch.float32)
    ties_fp8 = torch.tensor([v * s for v in (-127.68, 127.68, 0.5625 + 0.03125, 240.0 + 8.0, 17.0, 19.0)
                             for s in (1, -1)])
    return torch.cat([x, ties_bf16, ties_fp8]).to(device)


def test_all_finite_bf16_values_bit_exact():
    x = _all_finite_bf16(DEVICE)
    bf, f32, fp8 = _casts(x)
    assert _same_bits(bf, x)
    assert _same_bits(f32, x.float())
    assert _same_bits(fp8, _fp8_reference(x))


def test_large_fp32_sample_bit_exact():
    x = _fp32_sample(DEVICE)
    bf, f32, fp8 = _casts(x)
    assert _same_bits(bf, x.to(torch.bfloat16))
    assert _same_bits(f32, x.to(torch.bfloat16).float())
    assert _same_bits(fp8, _fp8_reference(x))


def test_fp8_saturates_like_the_gpu():
    x = torch.tensor([448.0, 449.0, 464.0, 465.0, 500.0, 1000.0, float("inf"), -600.0, float("-inf"),
                      float("nan"), 0.0, -0.0, 1e-9], device=DEVICE)
    _, _, fp8 = _casts(x)
    got = fp8.float().cpu()
    want = [448.0, 448.0, 448.0, 448.0, 448.0, 448.0, 448.0, -448.0, -448.0]
    assert got[:9].tolist() == want
    assert torch.isnan(got[9])
    assert got[10:].tolist() == [0.0, -0.0, 0.0]


def test_fp8_upcast_all_bytes():
    raw = torch.arange(256, dtype=torch.int32).to(torch.uint8).to(DEVICE)
    y = torch.empty(256, device=DEVICE)
    _fp8_upcast_kernel[(1,)](raw.view(torch.float8_e4m3fn), y, 256, BLOCK=256)
    want = raw.view(torch.float8_e4m3fn).float()
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    finite = ~torch.isnan(want)
    assert _same_bits(y[finite], want[finite])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dot_16bit_operands_accumulate_in_fp32(dtype, gen):
    a = torch.randn(32, 64, generator=gen, device=DEVICE).to(dtype)
    b = torch.randn(64, 16, generator=gen, device=DEVICE).to(dtype)
    c = torch.empty(32, 16, device=DEVICE)
    _dot_kernel[(1,)](a, b, c, M=32, N=16, K=64)
    ref = a.double() @ b.double()
    assert (c.double() - ref).abs().max().item() < 1e-4 * ref.abs().max().item()


def test_dot_e4m3_operands_exact_and_nan(gen):
    """e4m3 x e4m3 ``tl.dot``: the exact fp32 sum of exact products (small K: no rounding), and a NaN
    payload (0x7F) makes its row of the product NaN, as on the GPU."""
    a = (torch.randn(16, 32, generator=gen, device=DEVICE) * 8).to(torch.float8_e4m3fn)
    b = (torch.randn(32, 16, generator=gen, device=DEVICE) * 8).to(torch.float8_e4m3fn)
    a[3, 5] = float("nan")
    c = torch.full((16, 16), 7.0, device=DEVICE)
    _dot_kernel[(1,)](a, b, c, M=16, N=16, K=32)
    ref = a.double() @ b.double()
    assert c[3].isnan().all() and not c[torch.arange(16, device=DEVICE) != 3].isnan().any()
    ok = ~c.isnan()
    assert (c.double()[ok] - ref[ok]).abs().max().item() <= 1e-6 * ref[ok].abs().max().item()


# --- canaries: these fail when upstream Triton fixes its interpreter, so the shim can be dropped ---

@interpreter_only
def test_upstream_interpreter_still_reads_e4m3_nan_as_480_in_dot():
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    a[0, 0] = float("nan")
    b = torch.ones(16, 16).to(torch.float8_e4m3fn)
    c = torch.empty(16, 16)
    with interpreter_fixes.unfixed():
        _dot_kernel[(1,)](a, b, c, M=16, N=16, K=16)
    assert not c[0].isnan().any(), "upstream Triton's interpreter now reads the e4m3 NaN in tl.dot: drop that part"

@interpreter_only
def test_upstream_interpreter_still_rounds_fp8_wrongly():
    x = _fp32_sample("cpu")
    with interpreter_fixes.unfixed():
        _, _, fp8 = _casts(x)
    wrong = (_bits(fp8) != _bits(_fp8_reference(x))).sum().item()
    assert wrong > 0, "upstream Triton now casts to e4m3 like the GPU: drop that part of the shim"


@interpreter_only
def test_upstream_interpreter_still_truncates_bf16():
    x = _fp32_sample("cpu")
    with interpreter_fixes.unfixed():
        bf, _, _ = _casts(x)
    wrong = (_bits(bf) != _bits(x.to(torch.bfloat16))).sum().item()
    assert wrong > 0, "upstream Triton now rounds fp32 -> bf16 to nearest even: drop that part of the shim"


@interpreter_only
def test_upstream_interpreter_still_multiplies_bf16_bit_patterns():
    a = torch.randn(16, 16).to(torch.bfloat16)
    b = torch.randn(16, 16).to(torch.bfloat16)
    c = torch.empty(16, 16)
    with interpreter_fixes.unfixed():
        _dot_kernel[(1,)](a, b, c, M=16, N=16, K=16)
    err = (c - a.float() @ b.float()).abs().max().item()
    assert err > 1.0, "upstream Triton's interpreter now does bf16 tl.dot right: drop that part of the shim"


@triton.jit
def _runtime_loop_kernel(x_ptr, y_ptr, n_iters, BLOCK: tl.constexpr):
    # y[:BLOCK] = sum over i < n_iters of x[i*BLOCK : (i+1)*BLOCK]; n_iters is a runtime scalar.
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(n_iters):
        acc += tl.load(x_ptr + i * BLOCK + offs)
    for i in tl.range(0, n_iters, 2):
        acc += 0.0 * tl.load(x_ptr + i * BLOCK + offs)
    tl.store(y_ptr + offs, acc)


def test_runtime_loop_bound():
    x = torch.randn(5, 64, device=DEVICE)
    y = torch.empty(64, device=DEVICE)
    _runtime_loop_kernel[(1,)](x, y, 5, BLOCK=64)
    assert torch.allclose(y, x.sum(0), rtol=1e-5, atol=1e-5)


def _numpy_refuses_1d_int():
    import numpy as np

    try:
        int(np.ones(1, dtype=np.int32))
        return False
    except TypeError:
        return True


@interpreter_only
def test_upstream_interpreter_still_fails_runtime_loop_bounds():
    if not _numpy_refuses_1d_int():
        pytest.skip("this numpy still converts 1-element arrays with int(): the bug does not show")
    x = torch.randn(5, 64)
    y = torch.empty(64)
    with interpreter_fixes.unfixed():
        with pytest.raises(Exception, match="0-dimensional|converted"):
            _runtime_loop_kernel[(1,)](x, y, 5, BLOCK=64)
