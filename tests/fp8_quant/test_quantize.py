"""fp8_quant: payloads and descales bit for bit against ``fp8_quant.reference``.

The reference computes the same fp32 operations in the same order as the kernels (RoPE
``x*c + (+-p)*s``, the radix-2 butterfly, correctly rounded scale and product), so payloads must be
equal byte for byte. The only tolerated difference is a proven rounding-midpoint case (the fp32 value
before the cast within a few fp32 ulps of the midpoint of two adjacent e4m3 values, the bytes one code
apart), and only where RoPE/Hadamard are on; without them equality is exact.
"""

from __future__ import annotations

import ast
import inspect
import math

import pytest
import torch
import triton

import fp8_quant
from fp8_quant import HadamardMode, QuantizedQKV, dequantize_per_head, quantize_per_head, quantize_qkv
from fp8_quant import kernels as K
from fp8_quant import reference as R
from fp8_quant.quantize import QuantSpec
from hadamard_kernels.signs import SignVector, as_sign_vector

ON_GPU = torch.cuda.is_available()
F8 = torch.float8_e4m3fn


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def make(shape, gen, device, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(shape, generator=gen, device=device) * scale).to(dtype)


def make_qkv(b, hq, hkv, sq, skv, d, layout, gen, device, dtype=torch.bfloat16):
    def shp(h, s):
        return (b, h, s, d) if layout == "BHSD" else (b, s, h, d)
    return make(shp(hq, sq), gen, device, dtype), make(shp(hkv, skv), gen, device, dtype), \
        make(shp(hkv, skv), gen, device, dtype, scale=3.0)


def make_cos_sin(s, d, gen, device, interleaved, compact, dtype=torch.float32):
    ang = torch.rand(s, d // 2, generator=gen, device=device) * 100.0
    if not compact:
        ang = ang.repeat_interleave(2, dim=-1) if interleaved else torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def assert_fp8_equal(got, want, scaled, *, layout, allow_midpoints, what=""):
    """Bytes equal, or (if allowed) each differing byte a proven midpoint case; returns the count."""
    assert got.dtype == F8 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    g = got.view(torch.uint8)
    w = want.view(torch.uint8)
    bad = g != w
    n_bad = int(bad.sum())
    if n_bad == 0:
        return 0
    assert allow_midpoints, f"{what}: {n_bad} of {g.numel()} payload bytes differ from the reference"
    v = R.from_bhsd(scaled, layout)  # scaled is BHSD fp32
    v = v[bad]
    gf, wf = got[bad].float(), want[bad].float()
    mid = (gf + wf) / 2
    ulp = (torch.nextafter(v.abs(), torch.full_like(v, math.inf)) - v.abs())
    near_mid = (v - mid).abs() <= 4 * ulp
    adjacent = (g[bad].int() - w[bad].int()).abs() == 1
    assert bool((near_mid & adjacent).all()), (
        f"{what}: {n_bad} differing bytes, not all are rounding-midpoint cases: values {v[:8].tolist()}, "
        f"kernel {gf[:8].tolist()}, reference {wf[:8].tolist()}")
    assert n_bad <= max(2, g.numel() // 10000), f"{what}: too many midpoint flips ({n_bad})"
    return n_bad


def check_qkv(res, q, k, v, *, layout, cos=None, sin=None, interleaved=False, mode="none", sign=None):
    assert isinstance(res, QuantizedQKV)
    h_axis = 1 if layout == "BHSD" else 2
    group = q.shape[h_axis] // k.shape[h_axis]
    mode = HadamardMode(mode)
    transformed = cos is not None or mode != HadamardMode.NONE
    allow = ON_GPU and transformed  # under the interpreter there is no FMA and no reordering: exact
    for name, x, y8, ds, grp, rope, had in (
        ("q", q, res.q, res.q_descale, group, cos is not None, mode == HadamardMode.QKV),
        ("k", k, res.k, res.k_descale, 1, cos is not None, mode == HadamardMode.QKV),
        ("v", v, res.v, res.v_descale, 1, False, mode != HadamardMode.NONE),
    ):
        xt = R.transformed_reference(x, layout=layout, cos=cos if rope else None, sin=sin if rope else None,
                                     rope_interleaved=interleaved, hadamard=had, sign_vector=sign)
        want, want_ds, scaled = R.quantize_values_reference(xt, grp)
        assert y8.shape == x.shape and y8.dtype == F8
        assert y8.is_contiguous()
        assert ds.dtype == torch.float32 and ds.shape == want_ds.shape
        # exact; NaN matches NaN whatever its bit pattern (the GPU's canonical NaN differs from torch's)
        torch.testing.assert_close(ds, want_ds, rtol=0, atol=0, equal_nan=True, msg=f"{name} descale")
        assert_fp8_equal(y8, R.from_bhsd(want, layout), scaled, layout=layout, allow_midpoints=allow, what=name)


# ---------------------------------------------------------------------------------------------
# reference self-checks (the reference itself against float64 math)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [64, 128, 256])
def test_reference_hadamard_is_the_rht_matrix(d, gen, device):
    x = torch.randn(5, d, generator=gen, device=device)
    s = (torch.randint(0, 2, (d,), generator=gen, device=device) * 2 - 1).float()
    want = x.double() @ R.hadamard_matrix_f64(d, s, device)
    got = R.hadamard_reference(x, s).double()
    assert (got - want).abs().max() < 1e-5 * want.abs().max()
    h = R.hadamard_matrix_f64(d, s, device)
    assert torch.allclose(h @ h.T, torch.eye(d, dtype=torch.float64, device=device), atol=1e-12)


@pytest.mark.parametrize("interleaved", [False, True])
def test_reference_rope_is_a_rotation(interleaved, gen, device):
    d, s = 16, 7
    x = torch.randn(1, 1, s, d, generator=gen, device=device)
    ang = torch.rand(s, d // 2, generator=gen, device=device) * 10
    got = R.rope_reference(x, ang.cos(), ang.sin(), interleaved).double()
    xd = x.double()
    if interleaved:
        a, b = xd[..., 0::2], xd[..., 1::2]
    else:
        a, b = xd[..., : d // 2], xd[..., d // 2:]
    c, sn = ang.cos().double(), ang.sin().double()
    ra, rb = a * c - b * sn, b * c + a * sn
    want = torch.stack([ra, rb], -1).flatten(-2) if interleaved else torch.cat([ra, rb], -1)
    assert (got - want).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# quantize_qkv against the reference
# ---------------------------------------------------------------------------------------------

# (B, H_q, H_kv, S_q, S_kv, D, layout, rope: None | "neox" | "interleaved", compact cos/sin, hadamard, signs)
CPU_CASES = [
    (1, 2, 2, 70, 70, 64, "BHSD", None, False, "none", False),
    (2, 4, 1, 45, 77, 64, "BSHD", None, False, "none", False),
    (1, 8, 1, 33, 40, 128, "BHSD", "neox", False, "none", False),
    (1, 4, 1, 50, 37, 64, "BSHD", "interleaved", True, "none", False),
    (1, 2, 2, 40, 65, 64, "BHSD", "neox", True, "qkv", True),
    (1, 4, 1, 70, 45, 128, "BSHD", "interleaved", False, "qkv", False),
    (1, 2, 1, 35, 33, 64, "BHSD", None, False, "v_only", True),
    (1, 2, 2, 20, 36, 256, "BSHD", "neox", False, "qkv", True),
    (1, 2, 1, 33, 20, 32, "BHSD", "interleaved", False, "v_only", False),
]

GPU_CASES = [
    (2, 32, 8, 4096 + 77, 3000, 128, "BHSD", None, False, "none", False),
    (1, 32, 32, 8192, 8192, 128, "BSHD", "neox", False, "qkv", True),
    (2, 16, 2, 1000, 4099, 64, "BSHD", "interleaved", True, "v_only", False),
    (1, 8, 8, 3333, 3333, 256, "BHSD", "neox", True, "qkv", False),
    (1, 32, 4, 2048, 6000, 128, "BHSD", "interleaved", False, "qkv", True),
]


def _run_case(case, gen, device, dtype=torch.bfloat16):
    b, hq, hkv, sq, skv, d, layout, rope, compact, mode, signed = case
    q, k, v = make_qkv(b, hq, hkv, sq, skv, d, layout, gen, device, dtype)
    cos = sin = None
    interleaved = rope == "interleaved"
    if rope:
        cos, sin = make_cos_sin(max(sq, skv) + 3, d, gen, device, interleaved, compact)
    sign = None
    if signed:
        sign = (torch.randint(0, 2, (d,), generator=gen, device=device) * 2 - 1).to(torch.float32)
    res = quantize_qkv(q, k, v, layout=layout, cos=cos, sin=sin, rope_interleaved=interleaved,
                       hadamard=mode, sign_vector=sign)
    check_qkv(res, q, k, v, layout=layout, cos=cos, sin=sin, interleaved=interleaved, mode=mode, sign=sign)


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_quantize_qkv_matches_reference(case, gen, device):
    _run_case(case, gen, device)


@pytest.mark.cuda
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_quantize_qkv_matches_reference_gpu(case, dtype, gen, device):
    _run_case(case, gen, device, dtype)


def test_fp16_and_cos_sin_dtype(gen, device):
    q, k, v = make_qkv(1, 2, 1, 40, 40, 64, "BHSD", gen, device, torch.float16)
    cos, sin = make_cos_sin(40, 64, gen, device, False, True, dtype=torch.bfloat16)
    res = quantize_qkv(q, k, v, cos=cos, sin=sin, hadamard=HadamardMode.QKV)
    check_qkv(res, q, k, v, layout="BHSD", cos=cos, sin=sin, mode="qkv")


def test_strided_inputs(gen, device):
    # q: a BHSD view of a BSHD buffer; k: a head-dim slice of a wider buffer; v: last-dim stride 2
    q = make((1, 40, 2, 64), gen, device).transpose(1, 2)
    k = make((1, 1, 50, 128), gen, device)[..., 32:96]
    v = make((1, 1, 50, 128), gen, device)[..., ::2]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    cos, sin = make_cos_sin(50, 64, gen, device, False, False)
    res = quantize_qkv(q, k, v, cos=cos[::1], sin=sin, hadamard="qkv")
    check_qkv(res, q, k, v, layout="BHSD", cos=cos, sin=sin, mode="qkv")
    # non-contiguous cos/sin (a column slice)
    cw, sw = make_cos_sin(50, 128, gen, device, False, False)
    cos2, sin2 = cw[:, :64], sw[:, :64]
    res = quantize_qkv(q, k, v, cos=cos2, sin=sin2)
    check_qkv(res, q, k, v, layout="BHSD", cos=cos2, sin=sin2)


def test_q_group_shares_the_max(gen, device):
    # one query head of each group is much larger: the whole group gets its scale
    q, k, v = make_qkv(2, 8, 2, 33, 33, 64, "BHSD", gen, device)
    q[:, 1] *= 50
    res = quantize_qkv(q, k, v)
    want = q.float().abs().reshape(2, 2, -1).amax(-1)
    assert torch.equal(res.q_descale, R.scales_from_amax(want)[1])
    check_qkv(res, q, k, v, layout="BHSD")


# ---------------------------------------------------------------------------------------------
# quantize_per_head / dequantize_per_head
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
@pytest.mark.parametrize("chunk", [32, 64])
def test_quantize_per_head_many_chunks(layout, chunk, gen, device):
    # S = 150 is not a multiple of any chunk; group_size 2 spreads a group over 2 heads x several chunks
    shape = (2, 4, 150, 64) if layout == "BHSD" else (2, 150, 4, 64)
    x = make(shape, gen, device)
    outs, dss = K.quantize_launch([x], 2, None, None, QuantSpec(layout=layout), chunk_s=chunk)  # the seam
    y, ds = outs[0], dss[0]
    want, want_ds = R.quantize_per_head_reference(x, 2, layout=layout)
    assert ds.shape == (2, 2)
    assert torch.equal(ds, want_ds)
    assert torch.equal(y.view(torch.uint8), want.view(torch.uint8))
    back = dequantize_per_head(y, ds, layout=layout, group_size=2)
    assert back.dtype == torch.float32
    assert torch.equal(back, R.dequantize_reference(y, ds, layout=layout, group_size=2).float())  # exact -> 1 rounding
    assert dequantize_per_head(y, ds, layout=layout, group_size=2, dtype=torch.bfloat16).dtype == torch.bfloat16
    # FP8 precision: each value within half an e4m3 ulp (relative 2^-4) or the subnormal step
    err = (back - x.float()).abs()
    tol = x.float().abs() * 2.0 ** -4 + ds.repeat_interleave(2, 1).reshape(
        (2, 4, 1, 1) if layout == "BHSD" else (2, 1, 4, 1)) * 2.0 ** -9
    assert bool((err <= tol * 1.0001).all())


@pytest.mark.parametrize("chunk", [16, 48])
def test_quantize_per_head_bad_chunk(chunk, gen, device):
    # the kernels' row blocks are >= 32 rows: a smaller or non-power-of-two chunk is refused before launch
    x = make((1, 2, 70, 64), gen, device)
    with pytest.raises(ValueError, match="chunk_s"):
        K.quantize_launch([x], 1, None, None, QuantSpec(), chunk_s=chunk)


def test_quantize_per_head_rope_hadamard(gen, device):
    x = make((1, 2, 70, 64), gen, device)
    cos, sin = make_cos_sin(70, 64, gen, device, True, True)
    s = (torch.randint(0, 2, (64,), generator=gen, device=device) * 2 - 1).float()
    spec = QuantSpec(rope=True, interleaved=True, compact_cs=True, had_qk=True, signs=as_sign_vector(s))
    outs, dss = K.quantize_launch([x], 1, cos, sin, spec, chunk_s=32)  # the seam
    y, ds = outs[0], dss[0]
    y2, ds2 = quantize_per_head(x, 1, cos=cos, sin=sin, rope_interleaved=True, hadamard=True, sign_vector=s)
    assert torch.equal(ds2, ds) and torch.equal(y2.view(torch.uint8), y.view(torch.uint8))
    want, want_ds = R.quantize_per_head_reference(x, 1, cos=cos, sin=sin, rope_interleaved=True,
                                                  hadamard=True, sign_vector=s)
    assert torch.equal(ds, want_ds)
    xt = R.transformed_reference(x, cos=cos, sin=sin, rope_interleaved=True, hadamard=True, sign_vector=s)
    assert_fp8_equal(y, want, R.quantize_values_reference(xt, 1)[2], layout="BHSD", allow_midpoints=ON_GPU)


@pytest.mark.parametrize("signed", [False, True])
def test_inverse_rotated_v_recovers_v(signed, gen, device):
    d = 128
    q, k, v = make_qkv(1, 2, 2, 40, 60, d, "BHSD", gen, device)
    s = (torch.randint(0, 2, (d,), generator=gen, device=device) * 2 - 1).float() if signed else None
    res = quantize_qkv(q, k, v, hadamard=HadamardMode.V_ONLY, sign_vector=s)
    vr = dequantize_per_head(res.v, res.v_descale).double() @ R.hadamard_matrix_f64(d, s, device).T
    rel = ((vr - v.double()).norm() / v.double().norm()).item()
    assert rel < 2.0 ** -4, rel  # e4m3: 3 mantissa bits -> relative RMS error ~ 2^-4 / sqrt(3) at most
    assert rel > 2.0 ** -9  # and it did quantize


# ---------------------------------------------------------------------------------------------
# zero, tiny, NaN, Inf, empty
# ---------------------------------------------------------------------------------------------

def test_zero_and_tiny_heads(gen, device):
    q, k, v = make_qkv(1, 4, 2, 40, 40, 64, "BHSD", gen, device)
    q[:, 0:2] = 0  # a whole Q group
    k[:, 1] = 1e-13  # amax below 1e-12
    v[:, 0] = 0
    res = quantize_qkv(q, k, v, hadamard="qkv")
    assert res.q_descale[0, 0].item() == 1.0 and res.k_descale[0, 1].item() == 1.0
    assert res.v_descale[0, 0].item() == 1.0
    assert (res.q[:, 0:2].float() == 0).all() and (res.v[:, 0].float() == 0).all()
    assert (res.k[:, 1].float() == 0).all()  # 1e-13 * scale 1 is below the smallest e4m3 subnormal
    check_qkv(res, q, k, v, layout="BHSD", mode="qkv")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_policy(bad, gen, device):
    """A NaN or Inf in a (batch, group) makes its descale NaN / inf and its whole payload NaN;
    other groups are unaffected and exact."""
    q, k, v = make_qkv(2, 4, 2, 40, 40, 64, "BHSD", gen, device)
    q[1, 2, 5, 7] = bad  # batch 1, group 1
    v[0, 1, 30, 3] = bad
    res = quantize_qkv(q, k, v)
    want_ds = float("nan") if math.isnan(bad) else math.inf
    for ds, pos in ((res.q_descale, (1, 1)), (res.v_descale, (0, 1))):
        got = ds[pos].item()
        assert (math.isnan(got) if math.isnan(want_ds) else got == want_ds), got
    assert torch.isnan(res.q[1, 2:4].float()).all()
    assert torch.isnan(res.v[0, 1].float()).all()
    check_qkv(res, q, k, v, layout="BHSD")  # the reference applies the same policy
    assert torch.isfinite(res.q_descale[0]).all() and torch.isfinite(res.k_descale).all()


def test_amax_maps_to_448(gen, device):
    # the element that sets a head's amax is quantized to exactly +-448 (scale = 448 / amax)
    q, k, v = make_qkv(1, 2, 2, 33, 33, 64, "BHSD", gen, device)
    res = quantize_qkv(q, k, v)
    assert res.q.float().abs().amax().item() == 448.0


def test_empty_inputs(device):
    z = torch.empty(0, 2, 8, 64, dtype=torch.bfloat16, device=device)
    res = quantize_qkv(z, z, z)
    assert res.q.shape == z.shape and res.q_descale.shape == (0, 2)
    q = torch.randn(1, 2, 0, 64, device=device).bfloat16()
    kv = torch.randn(1, 2, 10, 64, device=device).bfloat16()
    res = quantize_qkv(q, kv, kv)
    assert res.q.shape == q.shape and torch.equal(res.q_descale, torch.ones(1, 2, device=device))
    check_qkv(res, q, kv, kv, layout="BHSD")


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

def _bad(device):
    b = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16, device=device)
    return b


@pytest.mark.parametrize("what,exc,match", [
    ("fp32", TypeError, "bfloat16 or float16"),
    ("3d", ValueError, "4-D"),
    ("gqa", ValueError, "multiple of H_kv"),
    ("had_dim", ValueError, "power of two"),
    ("big_dim", ValueError, "head dim"),
    ("cos_shape", ValueError, "cos must have shape"),
    ("cos_only", ValueError, "both cos and sin"),
    ("layout", ValueError, "layout"),
    ("sign", ValueError, "sign_vector"),
    ("mode", ValueError, "hadamard"),
    ("dtype_mix", TypeError, "dtypes differ"),
    ("rope_odd", ValueError, "even head dim"),
])
def test_bad_inputs(what, exc, match, device):
    q = torch.zeros(1, 4, 8, 64, dtype=torch.bfloat16, device=device)
    k = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16, device=device)
    v = k.clone()
    kw = {}
    if what == "fp32":
        q = q.float()
    elif what == "3d":
        q = q[0]
    elif what == "gqa":
        q = torch.zeros(1, 3, 8, 64, dtype=torch.bfloat16, device=device)
    elif what == "had_dim":
        q, k, v = (torch.zeros(1, h, 8, 96, dtype=torch.bfloat16, device=device) for h in (4, 2, 2))
        kw = dict(hadamard="v_only")
    elif what == "big_dim":
        q, k, v = (torch.zeros(1, h, 8, 512, dtype=torch.bfloat16, device=device) for h in (4, 2, 2))
    elif what == "cos_shape":
        kw = dict(cos=torch.zeros(8, 48, device=device), sin=torch.zeros(8, 48, device=device))
    elif what == "cos_only":
        kw = dict(cos=torch.zeros(8, 64, device=device))
    elif what == "layout":
        kw = dict(layout="BSDH")
    elif what == "sign":
        kw = dict(hadamard="qkv", sign_vector=torch.ones(32, device=device))
    elif what == "mode":
        kw = dict(hadamard="rows")
    elif what == "dtype_mix":
        v = v.half()
    elif what == "rope_odd":
        q, k, v = (torch.zeros(1, h, 8, 63, dtype=torch.bfloat16, device=device) for h in (4, 2, 2))
        kw = dict(cos=torch.zeros(8, 63, device=device), sin=torch.zeros(8, 63, device=device))
    with pytest.raises(exc, match=match):
        quantize_qkv(q, k, v, **kw)


def test_bad_per_head_inputs(device):
    x = torch.zeros(1, 4, 8, 64, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match="group_size"):
        quantize_per_head(x, 3)
    y, ds = quantize_per_head(x, 2)
    with pytest.raises(ValueError, match="descale must have shape"):
        dequantize_per_head(y, ds, group_size=1)
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        dequantize_per_head(x, ds, group_size=2)


# ---------------------------------------------------------------------------------------------
# custom ops, torch.compile, CUDA graphs
# ---------------------------------------------------------------------------------------------

def test_custom_ops_opcheck(gen, device):
    q, k, v = make_qkv(1, 2, 1, 33, 33, 64, "BHSD", gen, device)
    torch.library.opcheck(torch.ops.fp8_quant.quantize_qkv.default,
                          (q, k, v, "BHSD", None, None, False, True, True, None, None),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.fp8_quant.quantize_per_head.default,
                          (q, 2, "BHSD", None, None, False, False, None, None),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph(gen, device):
    q, k, v = make_qkv(1, 2, 1, 33, 33, 64, "BSHD", gen, device)
    cos, sin = make_cos_sin(33, 64, gen, device, False, True)

    def f(q, k, v, cos, sin):
        r = quantize_qkv(q, k, v, layout="BSHD", cos=cos, sin=sin, hadamard=HadamardMode.QKV)
        y, ds = quantize_per_head(v, 1, layout="BSHD")
        return r.q, r.k, r.v, r.q_descale, r.k_descale, r.v_descale, dequantize_per_head(y, ds, layout="BSHD")

    backend = "inductor" if ON_GPU else "aot_eager"  # CPU inductor would need a C++ toolchain
    got = torch.compile(f, fullgraph=True, backend=backend)(q, k, v, cos, sin)
    want = f(q, k, v, cos, sin)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a.view(torch.uint8) if a.dtype == F8 else a, b.view(torch.uint8) if b.dtype == F8 else b)


@pytest.mark.cuda
def test_cuda_graph_capture(gen, device):
    q, k, v = make_qkv(1, 8, 2, 1000, 1000, 128, "BHSD", gen, device)
    cos, sin = make_cos_sin(1000, 128, gen, device, False, False)
    kw = dict(cos=cos, sin=sin, hadamard="qkv")
    want = quantize_qkv(q, k, v, **kw)  # also warms the autotuner outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = quantize_qkv(q, k, v, **kw)
    q.mul_(2)
    g.replay()
    torch.cuda.synchronize()
    want2 = quantize_qkv(q, k, v, **kw)
    for a, b in zip(out[:6], want2[:6]):  # v_mean: None (no smoothing)
        assert torch.equal(a.view(torch.uint8) if a.dtype == F8 else a, b.view(torch.uint8) if b.dtype == F8 else b)


def test_torch_compile_sees_the_custom_ops(gen, device):
    # Eager calls skip the dispatcher; under torch.compile the graph must hold the custom ops (not a
    # trace into the launcher).
    q, k, v = make_qkv(1, 2, 1, 33, 33, 64, "BHSD", gen, device)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    def f(q, k, v):
        r = quantize_qkv(q, k, v, hadamard="v_only")
        y, ds = quantize_per_head(q, 2)
        return r.v, r.v_descale, y, ds

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend=backend)(q, k, v)
    assert len(graphs) == 1
    assert "fp8_quant.quantize_qkv" in graphs[0] and "fp8_quant.quantize_per_head" in graphs[0], graphs[0]
    want = f(q, k, v)
    for a, b in zip(got, want):
        assert torch.equal(a.view(torch.uint8) if a.dtype == F8 else a, b.view(torch.uint8) if b.dtype == F8 else b)


# ---------------------------------------------------------------------------------------------
# sign vectors, the seam, kernel signatures
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["zeros", "twos", "short", "long"])
@pytest.mark.parametrize("fn", ["qkv", "per_head"])
def test_bad_sign_vector(bad, fn, device):
    # entries must be +-1 and the length D: zeros used to give an all-zero payload, 2s garbage
    d = 64
    q = torch.ones(1, 2, 8, d, dtype=torch.bfloat16, device=device)
    sign = {"zeros": torch.zeros(d, device=device), "twos": torch.full((d,), 2.0, device=device),
            "short": torch.ones(d - 1, device=device), "long": [1] * (2 * d)}[bad]
    with pytest.raises(ValueError, match="sign" if bad in ("short", "long") else r"\+1 or -1"):
        if fn == "qkv":
            quantize_qkv(q, q, q, hadamard="qkv", sign_vector=sign)
        else:
            quantize_per_head(q, 1, hadamard=True, sign_vector=sign)


def test_sign_vector_forms_agree(gen, device):
    # a list, a tuple and a SignVector give the payload of the tensor
    d = 64
    q, k, v = make_qkv(1, 2, 1, 33, 40, d, "BHSD", gen, device)
    s = (torch.randint(0, 2, (d,), generator=gen, device=device) * 2 - 1).float()
    want = quantize_qkv(q, k, v, hadamard="qkv", sign_vector=s)
    check_qkv(want, q, k, v, layout="BHSD", mode="qkv", sign=s)
    values = [int(x) for x in s.tolist()]
    for form in (values, tuple(values), SignVector(values), s.to(torch.int8)):
        got = quantize_qkv(q, k, v, hadamard="qkv", sign_vector=form)
        assert got.v_mean is None and want.v_mean is None  # no smoothing: the seventh field is None
        for a, b in zip(got[:6], want[:6]):
            assert torch.equal(a.view(torch.uint8) if a.dtype == F8 else a, b.view(torch.uint8) if b.dtype == F8 else b)
    y, ds = quantize_per_head(v, 1, hadamard=True, sign_vector=tuple(values))
    y2, ds2 = quantize_per_head(v, 1, hadamard=True, sign_vector=s)
    assert torch.equal(ds, ds2) and torch.equal(y.view(torch.uint8), y2.view(torch.uint8))


def test_seam_forced_config(gen, device):
    # the seam launches both kernels with exactly the given config; same bytes as the autotuned launch
    q, k, v = make_qkv(1, 4, 2, 100, 70, 64, "BSHD", gen, device)
    cos, sin = make_cos_sin(100, 64, gen, device, False, True)
    spec = QuantSpec(layout="BSHD", rope=True, compact_cs=True, had_qk=True, had_v=True)
    cfg = triton.Config({"BLOCK_S": 64}, num_warps=4, num_stages=2)
    outs, ds = K.quantize_launch([q, k, v], 2, cos, sin, spec, chunk_s=64, config=cfg)
    check_qkv(QuantizedQKV(*outs, *ds), q, k, v, layout="BSHD", cos=cos, sin=sin, mode="qkv")
    with pytest.raises(ValueError, match="BLOCK_S"):
        K.quantize_launch([q, k, v], 2, cos, sin, spec, chunk_s=32, config=cfg)


def _jit_functions():
    tree = ast.parse(inspect.getsource(K))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                "jit" in ast.unparse(dec) for dec in node.decorator_list):
            yield node


def test_jit_functions_take_at_most_24_parameters():
    # Triton's launch cost grows with the argument count: tuples (one parameter) carry pointer + strides
    found = list(_jit_functions())
    assert {f.name for f in found} >= {"_qkv_amax_kernel", "_qkv_quant_kernel"}
    for f in found:
        n = len(f.args.posonlyargs) + len(f.args.args) + len(f.args.kwonlyargs)
        assert n <= 24, f"{f.name} takes {n} parameters"
    # no other module of the package defines kernels
    for mod in ("quantize", "reference"):
        src = inspect.getsource(getattr(fp8_quant, mod) if hasattr(fp8_quant, mod) else __import__(
            f"fp8_quant.{mod}", fromlist=[mod]))
        assert "@triton.jit" not in src


def test_public_functions_have_no_private_knobs():
    for fn in (quantize_qkv, quantize_per_head, dequantize_per_head):
        assert not [p for p in inspect.signature(fn).parameters if p.startswith("_")], fn


def test_torch_compile_with_sign_vectors(gen, device):
    # under torch.compile the sign vector reaches the custom op as a tensor: a tensor as given, a
    # list/tuple/SignVector as its cached copy; both validated, same bytes as eager
    d = 64
    q, k, v = make_qkv(1, 2, 1, 33, 33, d, "BHSD", gen, device)
    s = (torch.randint(0, 2, (d,), generator=gen, device=device) * 2 - 1).float()
    sv = SignVector([int(x) for x in s.tolist()])

    def f(q, k, v, s):
        r = quantize_qkv(q, k, v, hadamard="qkv", sign_vector=s)
        y, ds = quantize_per_head(q, 2, hadamard=True, sign_vector=s)
        return r.q, r.v, r.q_descale, y, ds

    want = f(q, k, v, s)
    torch._dynamo.reset()
    for form in (s, sv, [int(x) for x in s.tolist()]):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, form)
        for a, b in zip(got, want):
            assert torch.equal(a.view(torch.uint8) if a.dtype == F8 else a, b.view(torch.uint8) if b.dtype == F8 else b)
    with pytest.raises(Exception, match=r"\+1 or -1"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, torch.zeros(d, device=device))


def test_dequantize_names_a_wrong_rank(device):
    x = torch.zeros(2, 3, 4, dtype=torch.float8_e4m3fn, device=device)
    with pytest.raises(ValueError, match=r"x_fp8 must be 4-D \(BHSD\), got shape \(2, 3, 4\)"):
        dequantize_per_head(x, torch.ones(2, 3, device=device))


def test_grad_inputs_are_refused_and_named(gen, device):
    """quantize_qkv used to drop gradients silently; now inputs requiring grad (grad mode on) are
    refused before any launch, naming the input (tests/test_policies.py checks the other functions)."""
    q, k, v = make_qkv(1, 2, 1, 8, 8, 64, "BHSD", gen, device)
    cos, sin = make_cos_sin(8, 64, gen, device, False, False)
    for name in ("q", "k", "v", "cos", "sin"):
        args = dict(q=q, k=k, v=v, cos=cos, sin=sin)
        args[name] = args[name].clone().requires_grad_()
        with pytest.raises(ValueError, match=f"quantize_qkv: {name} requires grad, but quantize_qkv has no backward"):
            quantize_qkv(args.pop("q"), args.pop("k"), args.pop("v"), **args)
    with pytest.raises(ValueError, match="quantize_per_head: x requires grad"):
        quantize_per_head(q.clone().requires_grad_())
    with torch.no_grad():
        got = quantize_qkv(q.clone().requires_grad_(), k, v)
    check_qkv(got, q, k, v, layout="BHSD")
    assert not any(t.requires_grad for t in got[:6]) and got.v_mean is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the examples use CPU tensors, which run only under the interpreter: the CPU suite runs them")
def test_docstring_examples_run():
    import doctest

    for f in (quantize_qkv, quantize_per_head):
        (t,) = doctest.DocTestFinder(recurse=False).find(f, f.__name__, globs={"torch": torch, f.__name__: f})
        result = doctest.DocTestRunner().run(t)
        assert result.failed == 0 and result.attempted >= 3, (f.__name__, result)
