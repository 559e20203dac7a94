"""Sign vectors, the RHT matrix, the rht / inverse_rht kernels and their gradients against float64 references."""

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
    first = (rht_mod.RHT_ROWS_CONFIGS if axis == -1 else rht_mod.RHT_COLS_CONFIGS)[0]
    assert torch.equal(y, rht_mod._rht_launch(x, s, axis, inverse, config=first))  # same math, any tiling


@pytest.mark.parametrize("axis", [-1, 0])
def test_rht_every_listed_config(axis, device, gen):
    """Every config of the rows / columns list through the seam (the interpreter autotunes to the
    first only); d = 8 (register path) and d = 32 (tl.dot), bit-identical results across configs."""
    configs = rht_mod.RHT_ROWS_CONFIGS if axis == -1 else rht_mod.RHT_COLS_CONFIGS
    for d in (8, 32):
        x = torch.randn((70, 2 * d) if axis == -1 else (2 * d, 70), generator=gen, device=device).to(torch.float16)
        s = SignVector(random_sign_vector(d, seed=d))
        want = rht_mod._rht_launch(x, s, axis, False, config=configs[0])
        assert rel_rms(want, rht_ref(x, s, d, axis)) <= _bound(rht_ref(x, s, d, axis), torch.float16, d)
        for cfg in configs:
            assert torch.equal(rht_mod._rht_launch(x, s, axis, False, config=cfg), want), (d, cfg)


def test_gluon_config_refused_where_gluon_does_not_run(device, gen):
    """A LOG_T (Gluon) config runs only contiguous rows along the last axis, d >= 16, on sm90:
    elsewhere (axis 0, d = 8, the interpreter) a ValueError, never a silent other kernel."""
    from hadamard_kernels import gluon_butterfly as G

    cfg = G._CONFIGS[0]
    s = SignVector(random_sign_vector(16, seed=1))
    with pytest.raises(ValueError, match="LOG_T"):
        rht_mod._rht_launch(torch.randn(32, 8, device=device), s, 0, False, config=cfg)
    with pytest.raises(ValueError, match="LOG_T"):
        rht_mod._rht_launch(torch.randn(4, 8, device=device), SignVector(random_sign_vector(8, seed=1)), 1, False,
                            config=cfg)
    if device == "cpu":
        with pytest.raises(ValueError, match="LOG_T"):
            rht_mod._rht_launch(torch.randn(4, 32, device=device), s, 1, False, config=cfg)


@pytest.mark.cuda
@pytest.mark.parametrize("d", sorted(rht_mod.GLUON_D))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_rht_gluon_rows_every_kept_config(d, dtype, gen, monkeypatch):
    """Contiguous rows along the last axis run the Gluon butterfly with the signs fused (routing
    checked), forward and inverse, for every Gluon config the prune keeps for d, against float64:
    within the rounding bound and, for bf16/fp16, (nearly) every output the float64 result rounded
    once. Rows: an odd count, so the last program's tile is partly masked."""
    from hadamard_kernels import gluon_butterfly as G

    if dtype == torch.float32 and d > 128:
        pytest.skip("fp32 rht supports d <= 128 (validated before the launch)")
    x = torch.randn(2053, 3 * d, generator=gen, device="cuda").to(dtype)
    x[0].fill_(float("nan"))  # poison one row: NaN stays in its own blocks
    s = SignVector(random_sign_vector(d, seed=d + 3))
    calls = []
    real = rht_mod.gluon_launch
    monkeypatch.setattr(rht_mod, "gluon_launch", lambda *a, **k: calls.append(k) or real(*a, **k))
    configs = G._prune(G._CONFIGS, {"LOG_N": d.bit_length() - 1, "VEC_BITS": G._VEC_BITS[dtype]})
    for inverse in (False, True):
        ref = rht_ref(x[1:], s, d, -1, inverse=inverse)
        for cfg in [None] + configs:
            y = rht_mod._rht_launch(x, s, -1, inverse, config=cfg)
            assert torch.isnan(y[0]).all() and not torch.isnan(y[1:]).any()
            assert rel_rms(y[1:], ref) <= _bound(ref, dtype, d), (inverse, cfg)
            if dtype != torch.float32:
                assert (y[1:] == ref.to(dtype)).double().mean().item() >= 0.999, (inverse, cfg)
    assert len(calls) == 2 * (1 + len(configs)) and all(k["signs_after"] == (i >= len(calls) // 2)
                                                        for i, k in enumerate(calls))
    for inverse, f in ((False, rht), (True, inverse_rht)):  # the public call routes there too
        got, want = f(x, s, d, -1), rht_mod._rht_launch(x, s, -1, inverse)
        assert torch.isnan(got[0]).all() and torch.equal(got[1:], want[1:])


@pytest.mark.cuda
@pytest.mark.parametrize("d", sorted(rht_mod.GLUON_D))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_rht_gluon_columns_every_kept_config(d, dtype, gen, monkeypatch):
    """Blocks along axis 0 of a 2-D tensor and along the middle axis of a 3-D one (>= 64 contiguous
    elements after the axis) run the Gluon column tiles with the signs fused, forward and inverse, for
    every kept config (config None: routed there for d in GLUON_COLS_D only, checked): column counts
    that not every tile divides, one NaN column that stays in its own blocks."""
    from hadamard_kernels import gluon_butterfly as G

    if dtype == torch.float32 and d > 128:
        pytest.skip("fp32 rht supports d <= 128 (validated before the launch)")
    s = SignVector(random_sign_vector(d, seed=d + 5))
    calls = []
    real = rht_mod.gluon_cols_launch
    monkeypatch.setattr(rht_mod, "gluon_cols_launch", lambda *a, **k: calls.append(k) or real(*a, **k))
    configs = G._prune_cols(G._COLS_CONFIGS, {"LOG_D": d.bit_length() - 1, "VEC_BITS": G._VEC_BITS[dtype]})
    for shape, axis in (((3 * d, 336), 0), ((2, 2 * d, 80), 1)):
        x = torch.randn(shape, generator=gen, device="cuda").to(dtype)
        x[..., 5] = float("nan")
        keep = torch.ones(shape[-1], dtype=torch.bool, device="cuda")
        keep[5] = False
        for inverse in (False, True):
            ref = rht_ref(x[..., keep], s, d, axis, inverse=inverse)
            for cfg in [None] + configs:
                y = rht_mod._rht_launch(x, s, axis, inverse, config=cfg)
                assert torch.isnan(y[..., 5]).all() and not torch.isnan(y[..., keep]).any()
                assert rel_rms(y[..., keep], ref) <= _bound(ref, dtype, d), (shape, inverse, cfg)
                if dtype != torch.float32:
                    assert (y[..., keep] == ref.to(dtype)).double().mean().item() >= 0.999, (shape, inverse, cfg)
    routed = d in rht_mod.GLUON_COLS_D  # config None: the Gluon tiles only where they measured faster
    per_case = len(configs) + routed
    assert len(calls) == 4 * per_case
    x = torch.randn(3 * d, 336, generator=gen, device="cuda").to(dtype)
    assert torch.equal(rht(x, s, d, 0), rht_mod._rht_launch(x, s, 0, False))  # the public call: the same route
    assert len(calls) == 4 * per_case + 2 * routed
    narrow = torch.randn(3 * d, 40, generator=gen, device="cuda").to(dtype)  # 40 columns: the dot kernel
    ref = rht_ref(narrow, s, d, 0)
    assert rel_rms(rht(narrow, s, d, 0), ref) <= _bound(ref, dtype, d) and len(calls) == 4 * per_case + 2 * routed


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
    """With x.requires_grad the public function dispatches through the op (whose backward is
    registered), so autograd records it; without, the same numbers come from the direct launch."""
    x = torch.randn(32, 16, generator=gen, device=device).to(torch.bfloat16)
    xg = x.clone().requires_grad_()
    y = rht(xg, DEFAULT_SIGN_VECTOR)
    assert y.requires_grad and y.grad_fn is not None
    assert torch.equal(y.detach(), rht(x, DEFAULT_SIGN_VECTOR))
    with torch.no_grad():
        assert torch.equal(rht(xg, DEFAULT_SIGN_VECTOR), rht(x, DEFAULT_SIGN_VECTOR))
        assert not rht(xg, DEFAULT_SIGN_VECTOR).requires_grad
    with torch.inference_mode():
        assert torch.equal(rht(xg, DEFAULT_SIGN_VECTOR), rht(x, DEFAULT_SIGN_VECTOR))


# -------------------------------------------------------------------------------------- gradients
# The gradient policy: rht / inverse_rht are orthogonal maps, so their backward is the other one on
# the incoming gradient (same signs, axis, d), one more call of the same kernels.

GRAD_CASES = [
    # (shape, axis, d): both kernels (last axis = rows, other axes = columns), odd outer/inner sizes
    ((5, 48), -1, 16),
    ((3, 64, 7), 1, 32),
    ((64, 3), 0, 64),
    ((7, 24), -1, 8),        # d < 16: register path
    ((2, 16, 5), -2, 4),
]


@pytest.mark.parametrize("inverse", [False, True], ids=["rht", "inverse_rht"])
@pytest.mark.parametrize("shape, axis, d", GRAD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gradient_matches_float64_autograd(shape, axis, d, dtype, inverse, device, gen):
    """x.grad against float64 autograd through the reference, on fresh random x and upstream grad:
    within one rounding of the exact gradient (the fp32 bound for fp32), in x's dtype, and bit for
    bit the other transform applied to the upstream gradient (the backward is that kernel call)."""
    f, other = (inverse_rht, rht) if inverse else (rht, inverse_rht)
    s = random_sign_vector(d, seed=d + 3 * len(shape))
    x = torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_()
    g = torch.randn(shape, generator=gen, device=device).to(dtype)
    f(x, s, d, axis).backward(g)
    x64 = x.detach().double().requires_grad_()
    rht_ref(x64, s, d, axis, inverse=inverse).backward(g.double())
    ref = x64.grad
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert rel_rms(x.grad, ref) <= _bound(ref, dtype, d), rel_rms(x.grad, ref)
    # the exact gradient is the other transform of g (an orthogonal map's adjoint is its inverse)
    torch.testing.assert_close(ref, rht_ref(g, s, d, axis, inverse=not inverse), rtol=0, atol=1e-12)
    assert torch.equal(x.grad, other(g, s, d, axis))


def test_gradient_of_non_contiguous_upstream_and_views(device, gen):
    """y.sum() hands backward an expanded (stride-0) gradient; a transposed input and a transposed
    upstream gradient: the backward makes them contiguous itself."""
    d = 16
    s = random_sign_vector(d, seed=2)
    base = torch.randn(48, 6, generator=gen, device=device).requires_grad_()
    x = base.t()  # (6, 48), not contiguous
    rht(x, s, d, -1).sum().backward()
    ones = torch.ones(6, 48, device=device)
    assert torch.equal(base.grad, inverse_rht(ones, s, d, -1).t())
    base.grad = None
    g = torch.randn(48, 6, generator=gen, device=device).t()
    rht(x, s, d, -1).backward(g)
    assert torch.equal(base.grad, inverse_rht(g.contiguous(), s, d, -1).t())


@pytest.mark.parametrize("axis, shape, d", [(-1, (3, 16), 8), (1, (1, 16, 3), 16), (0, (32, 2), 32)])
def test_jacobian_is_the_rht_matrix_exactly(axis, shape, d, device):
    """The hand-computed check (the kernels take no float64, so no float64 gradcheck): in fp32 the
    forward of a one-hot input and the backward of a one-hot upstream gradient are exact (products
    with +-1, one fp32 scale), so every entry of both Jacobians equals the float64 reference's
    (+-1/sqrt(d) or 0) rounded once to fp32: J[i, j] = d y_j / d x_i of rht is kron(I, R) in x's
    layout, its backward gives J^T row by row, and inverse_rht's are the transposes."""
    s = random_sign_vector(d, seed=d + 1)
    n = math.prod(shape)
    basis = torch.eye(n, device=device)
    want = torch.stack([rht_ref(e.reshape(shape), s, d, axis).reshape(-1) for e in basis.double()]).float()
    assert set(want.abs().unique().tolist()) == {0.0, float(torch.tensor(1 / math.sqrt(d)).float())}
    jac_fwd = torch.stack([rht(e.reshape(shape), s, d, axis).reshape(-1) for e in basis])
    x = torch.zeros(shape, device=device, requires_grad=True)
    y, yi = rht(x, s, d, axis), inverse_rht(x, s, d, axis)

    def jac_bwd(out):  # row j: the gradient of out_j
        return torch.stack([torch.autograd.grad(out, x, e.reshape(shape), retain_graph=True)[0].reshape(-1)
                            for e in basis])

    assert torch.equal(jac_fwd, want)
    assert torch.equal(jac_bwd(y), want.t())
    assert torch.equal(jac_bwd(yi), want)  # inverse_rht: Jacobian want^T, so its backward rows are want's


@pytest.mark.parametrize("inverse, shape, axis", [(False, (2, 16), -1), (True, (16, 2), 0)],
                         ids=["rht-rows", "inverse_rht-columns"])
def test_gradcheck_fp32(inverse, shape, axis, device, gen):
    """torch.autograd.gradcheck / gradgradcheck in fp32 (the kernels take no float64). The map is
    linear, so central differences with eps = 1 are exact but for fp32 rounding of f(x +- 1):
    the tolerances stay tight (a swapped or wrong backward is off by O(1)). Small shapes: every
    perturbation is a kernel launch under the interpreter."""
    f = inverse_rht if inverse else rht
    s = SignVector(random_sign_vector(16, seed=9))
    x = torch.randn(shape, generator=gen, device=device).requires_grad_()
    fn = lambda t: f(t, s, 16, axis)  # noqa: E731
    with pytest.warns(UserWarning, match="double precision"):
        assert torch.autograd.gradcheck(fn, (x,), eps=1.0, atol=1e-5, rtol=1e-5)
    with pytest.warns(UserWarning, match="double precision"):
        assert torch.autograd.gradgradcheck(fn, (x,), eps=1.0, atol=1e-5, rtol=1e-5)


def test_double_backward(device, gen):
    """create_graph=True: the gradient inverse_rht(g) is itself differentiable (w.r.t. g)."""
    d = 16
    s = random_sign_vector(d, seed=4)
    x = torch.randn(4, 32, generator=gen, device=device).requires_grad_()
    g = torch.randn(4, 32, generator=gen, device=device).requires_grad_()
    (gx,) = torch.autograd.grad(rht(x, s, d), x, g, create_graph=True)
    w = torch.randn(4, 32, generator=gen, device=device)
    (gg,) = torch.autograd.grad((gx * w).sum(), g)
    assert torch.equal(gx.detach(), inverse_rht(g.detach(), s, d))
    assert torch.equal(gg, rht(w, s, d))  # d/dg <inverse_rht(g), w> = rht(w)


def test_backward_under_torch_compile(device, gen):
    """register_autograd on the op keeps torch.compile working: a compiled forward + backward
    (fullgraph, no recompile) gives the eager gradients bit for bit."""
    import torch._dynamo

    s = SignVector(DEFAULT_SIGN_VECTOR)
    x = torch.randn(32, 48, generator=gen, device=device).to(torch.bfloat16).requires_grad_()
    g = torch.randn(32, 48, generator=gen, device=device).to(torch.bfloat16)
    fn = lambda t: inverse_rht(rht(t, s, 16, -1) * 2, s, 16, 0)  # noqa: E731
    fn(x).backward(g)
    want = x.grad.clone()
    x.grad = None
    torch._dynamo.reset()
    backend = "inductor" if device == "cuda" else "aot_eager"
    f = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            x.grad = None
            f(x).backward(g)
            assert torch.equal(x.grad, want)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------ host path

def test_size_bucket_is_the_runtime_bucket():
    from hadamard_kernels.runtime import bucket

    for n in list(range(1, 4100)) + [2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 3 * 2 ** 40]:
        assert rht_mod._size_bucket(n) == bucket(n).bit_length(), n


@pytest.mark.parametrize("shape, axis, rows", [((3 * 97, 32), -1, True), ((32, 3 * 97), 0, False),
                                               ((16 * 37, 1), 0, True)],
                         ids=["rows", "columns", "size-1-inner-rows"])
def test_eager_call_hands_the_input_itself_to_the_launch(shape, axis, rows, device, gen, monkeypatch):
    """The eager path adds no per-call tensor work: a contiguous x reaches the launch as the same
    tensor object (no view, reshape or copy), the grid is plain integers (no triton.cdiv, a JIT
    function in triton 3.6) covering exactly the rows / inner columns, and an axis followed only by
    size-1 dims uses the rows kernel."""
    import triton

    def no_cdiv(*a, **k):
        raise AssertionError("triton.cdiv called on the host path")

    monkeypatch.setattr(rht_mod, "GLUON_D", frozenset())  # the plain-Triton launch (the Gluon one: below)
    x = torch.randn(shape, generator=gen, device=device).to(torch.bfloat16)
    rht(x, DEFAULT_SIGN_VECTOR, 16, axis)  # warm: any compilation happens before the patch
    monkeypatch.setattr(triton, "cdiv", no_cdiv)
    seen = []
    real_launch = rht_mod.launch

    def spy(kernel, grid, args, consts, config=None):
        meta = {"BLOCK_R": 64, "BLOCK_I": 64, "TILES": 4}
        seen.append((kernel, args[0], grid(meta), consts))
        return real_launch(kernel, grid, args, consts, config)

    monkeypatch.setattr(rht_mod, "launch", spy)
    y = rht(x, DEFAULT_SIGN_VECTOR, 16, axis)
    (kernel, arg, grid, consts), = seen
    assert arg is x
    assert all(type(v) is int for v in grid)
    if rows:
        assert kernel is rht_mod._rht_rows and grid == ((x.numel() // 16 + 255) // 256,)
    else:
        assert kernel is rht_mod._rht_cols and grid == (2, (3 * 97 + 255) // 256)
    assert consts == {"D": 16, "IS_FP32": False}
    ref = rht_ref(x, DEFAULT_SIGN_VECTOR, 16, axis)
    assert rel_rms(y, ref) <= _bound(ref, torch.bfloat16, 16)


def test_op_body_knows_when_it_is_traced(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(4, 16, device=device)
    assert not rht_mod._tracing(x)
    with FakeTensorMode() as mode:
        assert rht_mod._tracing(mode.from_tensor(x))


@pytest.mark.cuda
def test_eager_gluon_call_and_autograd_run_the_same_kernel(gen, monkeypatch):
    """On Hopper an eager rht of contiguous rows hands x itself to the Gluon launch (integer grid),
    and with autograd recording both the forward and the backward op run that kernel eagerly too, so
    a gradient is bit for bit the eager inverse_rht of the upstream gradient."""
    from hadamard_kernels import gluon_butterfly as G

    x = torch.randn(3 * 97, 32, generator=gen, device="cuda").to(torch.bfloat16)
    s = DEFAULT_SIGN_VECTOR
    rht(x, s, 16)
    seen = []
    real = G.launch
    monkeypatch.setattr(G, "launch", lambda k, grid, args, consts, config=None: seen.append((args[0], grid, consts))
                        or real(k, grid, args, consts, config))
    y = rht(x, s, 16)
    (arg, grid, consts), = seen
    assert arg is x and consts["SIGNS"] == 1
    assert all(type(v) is int for v in grid({"LOG_T": 12}))
    xr = x.detach().clone().requires_grad_()
    g = torch.randn_like(x)
    yr = rht(xr, s, 16)
    yr.backward(g)
    assert len(seen) == 3 and seen[2][2]["SIGNS"] == 2  # forward op, backward op (the inverse)
    assert torch.equal(yr, y) and torch.equal(xr.grad, inverse_rht(g, s, 16))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the examples use CPU tensors, which run only under the interpreter: the CPU suite runs them")
def test_docstring_examples_run():
    import doctest

    for f in (rht, inverse_rht):
        tests = doctest.DocTestFinder(recurse=False).find(f, f.__name__, globs={"torch": torch, "rht": rht,
                                                                                 "inverse_rht": inverse_rht})
        assert tests and tests[0].examples
        torch.manual_seed(0)
        result = doctest.DocTestRunner().run(tests[0])
        assert result.failed == 0 and result.attempted >= 3, (f.__name__, result)
