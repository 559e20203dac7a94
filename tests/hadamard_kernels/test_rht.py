"""Sign vectors, the RHT matrix, and the rht / inverse_rht kernels against float64 references."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from hadamard_kernels import DEFAULT_SIGN_VECTOR, get_rht_matrix, inverse_rht, random_sign_vector, rht, rht_amax
from hadamard_kernels import signs as signs_mod
from hadamard_kernels.matrices import sylvester_matrix
from hadamard_kernels.reference import rel_rms, rht_amax_contract, rht_ref, rounding_bound
from hadamard_kernels.signs import SignVector, rht_matrix_f64

# the package exports the function ``rht``, which shadows the module of the same name
rht_mod = importlib.import_module("hadamard_kernels.rht")


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


def test_rht_matrix_same_for_every_sign_vector_form(device):
    a = get_rht_matrix(DEFAULT_SIGN_VECTOR, device)
    b = get_rht_matrix(list(DEFAULT_SIGN_VECTOR), device)
    c = get_rht_matrix(torch.tensor(DEFAULT_SIGN_VECTOR, dtype=torch.float32), device)
    e = get_rht_matrix(SignVector(DEFAULT_SIGN_VECTOR), device)
    assert torch.equal(a, b) and torch.equal(b, c) and torch.equal(c, e)
    assert a.dtype == torch.bfloat16
    assert a is not b and a.data_ptr() != b.data_ptr()  # a fresh copy per call (see the next test)


def test_rht_matrix_copy_is_safe_to_modify(device, gen):
    """get_rht_matrix hands out a copy: modifying it changes neither later matrices nor the kernels'
    results (the kernels read the matrices cached on the SignVector)."""
    s = random_sign_vector(16, seed=5)
    x = torch.randn(64, 48, generator=gen, device=device).to(torch.bfloat16)
    y0 = rht(x, s, 16, 0)
    r0, a0 = rht_amax(x, s, 16, 0)
    for dtype in (torch.bfloat16, x.dtype, torch.float32):
        m = get_rht_matrix(s, device, dtype, 16)
        m *= 4
    m = get_rht_matrix(s, device, torch.bfloat16, 16)
    m.zero_()
    assert torch.equal(get_rht_matrix(s, device, torch.bfloat16, 16),
                       rht_matrix_f64(s).to(torch.bfloat16).to(device))
    assert torch.equal(rht(x, s, 16, 0), y0)
    r1, a1 = rht_amax(x, s, 16, 0)
    rr, aa = rht_amax_contract(x, s, 16, 0)
    assert r1.view(torch.int32).item() == r0.view(torch.int32).item() == rr.view(torch.int32).item()
    assert a1.view(torch.int32).item() == a0.view(torch.int32).item() == aa.view(torch.int32).item()


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


@pytest.mark.parametrize("form", ["tuple", "SignVector"])
def test_rht_torch_compile(form, device, gen):
    import torch._dynamo

    x = torch.randn(32, 64, generator=gen, device=device).to(torch.bfloat16)
    s = DEFAULT_SIGN_VECTOR if form == "tuple" else SignVector(DEFAULT_SIGN_VECTOR)
    backend = "inductor" if device == "cuda" else "aot_eager"
    torch._dynamo.reset()
    f = torch.compile(lambda t: inverse_rht(rht(t, s, 16, 0), s, 16, 0), fullgraph=True, backend=backend)
    expect = inverse_rht(rht(x, s, 16, 0), s, 16, 0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
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


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("axis", [-1, 0])
def test_rht_tiled_loop_config(axis, inverse, device, gen):
    """The TILES > 1 loop (one program, several tiles, the matrix loaded once) through the seam with
    an explicit config, whatever config the autotuner would pick; a ragged last tile."""
    import triton

    d = 16
    if axis == -1:
        x = torch.randn(3 * 37, d, generator=gen, device=device).to(torch.bfloat16)
        cfg = triton.Config({"BLOCK_R": 32, "TILES": 4}, num_warps=4, num_stages=2)
    else:
        x = torch.randn(5 * d, 301, generator=gen, device=device).to(torch.bfloat16)
        cfg = triton.Config({"BLOCK_I": 32, "TILES": 4}, num_warps=4, num_stages=2)
    s = SignVector(random_sign_vector(d, seed=11))
    y = rht_mod._rht_launch(x, s, axis, inverse, config=cfg)
    ref = rht_ref(x, s, d, axis, inverse=inverse)
    assert rel_rms(y, ref) <= _bound(ref, torch.bfloat16, d)
    assert torch.equal(y, (inverse_rht if inverse else rht)(x, s, d, axis))  # same math, any tiling


@pytest.mark.parametrize("axis", [-1, 0])
def test_rht_every_listed_config(axis, device, gen):
    """Every config of the rows / columns list through the seam (the interpreter autotunes to the
    first only); d = 8 (register path) and d = 32 (tl.dot), bit-identical results across configs."""
    configs = rht_mod.RHT_ROWS_CONFIGS if axis == -1 else rht_mod.RHT_COLS_CONFIGS
    for d in (8, 32):
        x = torch.randn((70, 2 * d) if axis == -1 else (2 * d, 70), generator=gen, device=device).to(torch.float16)
        s = SignVector(random_sign_vector(d, seed=d))
        want = rht(x, s, d, axis)
        for cfg in configs:
            assert torch.equal(rht_mod._rht_launch(x, s, axis, False, config=cfg), want), (d, cfg)


# ---------------------------------------------------------------------------------- sign vectors

@pytest.mark.parametrize("bad", [
    torch.zeros(16), torch.full((16,), 2.0), (2,) * 16, [0] * 16,       # entries not +-1
    (1, -1) * 4, torch.ones(8), torch.ones(32),                          # wrong length
    torch.ones(4, 4),                                                    # not 1-D
], ids=["zeros-tensor", "twos-tensor", "twos-tuple", "zeros-list", "short-tuple", "short-tensor",
        "long-tensor", "2d-tensor"])
def test_bad_sign_vectors_raise(bad, device):
    x = torch.randn(32, 32, device=device).to(torch.bfloat16)
    bad = bad.to(device) if isinstance(bad, torch.Tensor) else bad
    for f in (rht, inverse_rht, rht_amax):
        with pytest.raises(ValueError):
            f(x, bad, 16, 0)
    with pytest.raises(ValueError):
        get_rht_matrix(bad, device, torch.bfloat16, 16)


def test_sign_vector_forms_give_identical_results(device, gen):
    d = 32
    t = random_sign_vector(d, seed=21)
    forms = [t.tolist(), tuple(int(v) for v in t.tolist()), t.to(device), t.to(torch.int8), SignVector(t)]
    for axis in (0, -1):
        x = torch.randn(2 * d, 2 * d, generator=gen, device=device).to(torch.bfloat16)
        outs = [(rht(x, s, d, axis), inverse_rht(x, s, d, axis), rht_amax(x, s, d, axis)) for s in forms]
        for y, yi, (r, a) in outs[1:]:
            assert torch.equal(y, outs[0][0]) and torch.equal(yi, outs[0][1])
            assert r.view(torch.int32).item() == outs[0][2][0].view(torch.int32).item()
            assert a.view(torch.int32).item() == outs[0][2][1].view(torch.int32).item()


@pytest.mark.parametrize("f", ["rht", "inverse_rht", "rht_amax"])
def test_sign_tensor_read_once_per_version(f, device, gen, monkeypatch):
    """A sign tensor is read to the host (a device sync on a GPU) once: later calls with the same,
    unmodified tensor construct no new SignVector; an in-place change is noticed."""
    fn = {"rht": rht, "inverse_rht": inverse_rht, "rht_amax": rht_amax}[f]
    d = 16
    s = torch.tensor(DEFAULT_SIGN_VECTOR, dtype=torch.float32, device=device)  # not seen before
    x = torch.randn(2 * d, 8 * d, generator=gen, device=device).to(torch.bfloat16)
    made = []
    real_init = signs_mod.SignVector.__init__

    def counting_init(self, values):
        made.append(type(values).__name__)
        real_init(self, values)

    monkeypatch.setattr(signs_mod.SignVector, "__init__", counting_init)
    first = fn(x, s, d, 0)
    assert made == ["Tensor"]
    for _ in range(3):
        again = fn(x, s, d, 0)
    assert made == ["Tensor"]  # not re-read
    s[3] = -s[3]  # in place: a new tensor version
    changed = fn(x, s, d, 0)
    assert made == ["Tensor", "Tensor"]
    flipped = tuple(int(v) for v in s.tolist())
    if f == "rht_amax":
        assert torch.equal(torch.stack(again), torch.stack(first))
        rr, _ = rht_amax_contract(x, flipped, d, 0)
        assert changed[0].view(torch.int32).item() == rr.view(torch.int32).item()
    else:
        assert torch.equal(again, first)
        assert torch.equal(changed, fn(x, flipped, d, 0)) and not torch.equal(changed, first)
    s[3] = 2.0  # an invalid in-place change is caught too
    with pytest.raises(ValueError):
        fn(x, s, d, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_inverse_rht_attention_layout(d, dtype, device, gen):
    """attention undoes its output rotation with inverse_rht(out, sv, D, axis=-1) on (B, S, H, D)."""
    x = torch.randn(2, 3, 2, d, generator=gen, device=device).to(dtype)
    sv = SignVector(random_sign_vector(d, seed=d + 1))
    y = inverse_rht(x, sv, d, axis=-1)
    ref = rht_ref(x, sv, d, -1, inverse=True)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert rel_rms(y, ref) <= _bound(ref, dtype, d)
    back = rht(y, sv, d, -1)
    assert rel_rms(back, x.double()) <= 2.2 * rounding_bound(ref, dtype)


def test_autograd_recording_goes_through_the_op(device, gen):
    """With x.requires_grad the public function dispatches through the custom op (as it always did),
    so autograd sees the op; without, the same numbers come from the direct launch."""
    x = torch.randn(32, 16, generator=gen, device=device).to(torch.bfloat16)
    xg = x.clone().requires_grad_()
    y = rht(xg, DEFAULT_SIGN_VECTOR)
    assert torch.equal(y.detach(), rht(x, DEFAULT_SIGN_VECTOR))
    with torch.no_grad():
        assert torch.equal(rht(xg, DEFAULT_SIGN_VECTOR), rht(x, DEFAULT_SIGN_VECTOR))
