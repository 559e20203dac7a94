"""The Gluon quantizer (``fp8_quant.gluon_kernels``): on CPU its configs, the launcher's choice and
refusals; on a Hopper GPU the same bytes and descales as the plain-Triton kernels and the reference
for every head dim it takes, RoPE form, Hadamard mode, layout, GQA ratio, odd and partial S, strided
inputs and every config the prune keeps (outputs NaN-poisoned: conftest).
"""

from __future__ import annotations

import pytest
import torch
import triton

from fp8_quant import QuantizedQKV, quantize_qkv
from fp8_quant import gluon_kernels as GK
from fp8_quant import kernels as K
from fp8_quant.quantize import QuantSpec
from hadamard_kernels.signs import as_sign_vector
from tests.fp8_quant.test_quantize import check_qkv, make_cos_sin, make_qkv

F8 = torch.float8_e4m3fn


def _gluon_here() -> bool:
    return torch.cuda.is_available() and GK.eligible([torch.zeros(1, 128, device="cuda")], 128, False)


# ---------------------------------------------------------------------------------------------
# CPU: configs and the launcher
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_d", range(4, 9))
@pytest.mark.parametrize("chunk", [32, 64, 128, 512])
def test_prune_always_leaves_a_fitting_config(log_d, chunk):
    kept = GK._prune(GK.CONFIGS, {"LOG_D": log_d, "CHUNK_S": chunk})
    assert 1 <= len(kept) <= 5
    for c in kept:
        log_t = c.kwargs["LOG_T"]
        assert log_t >= log_d and (1 << (log_t - log_d)) <= chunk  # whole rows, within one chunk
        assert GK.plan(log_d, log_t, c.num_warps.bit_length() - 1, GK.VEC_BITS) is not None
    fit = GK._first_fit(log_d, chunk)  # the one-config autotuner's choice (Triton skips the prune)
    assert GK.fits(fit, 1 << log_d, chunk)


def test_last_layout_index():
    # D = 128: one layout change out (the stages end in L1), none back before the amax / the cast
    for cfg in GK._prune(GK.CONFIGS, {"LOG_D": 7, "CHUNK_S": 128}):
        w = cfg.num_warps
        chain = GK.plan(7, cfg.kwargs["LOG_T"], w.bit_length() - 1, GK.VEC_BITS)
        assert GK._last(7, cfg.kwargs["LOG_T"], w, True) == len(chain) - 2 == 1
        assert GK._last(7, cfg.kwargs["LOG_T"], w, False) == 0


def test_launcher_refusals(gen, device):
    q, k, v = make_qkv(1, 2, 2, 40, 40, 64, "BHSD", gen, device)
    spec = QuantSpec(had_qk=True, had_v=True)
    with pytest.raises(ValueError, match="kernel must be"):
        K.quantize_launch([q, k, v], 1, None, None, spec, kernel="cuda")
    if not _gluon_here():
        with pytest.raises(ValueError, match="Gluon quantizer runs on sm90"):
            K.quantize_launch([q, k, v], 1, None, None, spec, kernel="gluon")
    with pytest.raises(ValueError, match="not a config of the Triton kernels"):
        K.quantize_launch([q, k, v], 1, None, None, spec, kernel="triton", config=GK.CONFIGS[0])
    with pytest.raises(ValueError, match="not a config of the Triton kernels"):  # not eligible: Triton
        K.quantize_launch([q, k, v], 1, None, None, QuantSpec(had_qk=True, smooth_k=True), config=GK.CONFIGS[0])
    with pytest.raises(ValueError, match="Gluon quantizer runs on sm90"):  # smoothing: on any machine
        K.quantize_launch([q, k, v], 1, None, None, QuantSpec(had_qk=True, smooth_k=True), kernel="gluon")
    with pytest.raises(ValueError, match="kernel must be"):  # checked before anything, empty inputs too
        K.quantize_launch([q[:, :, :0], k[:, :, :0], v[:, :, :0]], 1, None, None, spec, kernel="gpu")


def test_routing(gen, device, monkeypatch):
    # eligible calls with a Hadamard transform and without smoothing go to the Gluon launcher;
    # plain and RoPE-only calls, smoothing and Triton configs do not
    calls = []
    monkeypatch.setattr(K, "gluon_eligible", lambda tensors, d, smooth: not smooth)
    monkeypatch.setattr(GK, "gluon_launch", lambda *a: calls.append(a[3]))
    q, k, v = make_qkv(1, 4, 2, 40, 33, 64, "BSHD", gen, device)
    quantize_qkv(q, k, v, layout="BSHD", hadamard="qkv")
    quantize_qkv(q, k, v, layout="BSHD", hadamard="v_only")
    assert calls == ["BSHD", "BSHD"]
    cos, sin = make_cos_sin(40, 64, gen, device, False, True)
    quantize_qkv(q, k, v, layout="BSHD", cos=cos, sin=sin)
    quantize_qkv(q, k, v, layout="BSHD")
    quantize_qkv(q, k, v, layout="BSHD", hadamard="qkv", smooth_k=True)
    triton_config = triton.Config({"BLOCK_S": 32}, num_warps=4, num_stages=2)
    K.quantize_launch([q, k, v], 2, None, None, QuantSpec(layout="BSHD"), config=triton_config)
    K.quantize_launch([q, k, v], 2, None, None, QuantSpec(layout="BSHD", had_qk=True), config=triton_config)
    assert calls == ["BSHD", "BSHD"]
    K.quantize_launch([q, k, v], 2, None, None, QuantSpec(layout="BSHD", had_v=True), config=GK.CONFIGS[0])
    assert calls == ["BSHD", "BSHD", "BSHD"]  # a Gluon config: the Gluon kernels


def test_gluon_launch_constexprs_and_single_config(monkeypatch):
    # the launcher maps the Triton kernels' constexprs onto the Gluon kernels', zeroes one amax slot per
    # tensor and group, and with a one-config autotuner (Triton then skips the prune) passes one that fits
    seen = []
    monkeypatch.setattr(GK, "launch", lambda kernel, grid, args, consts, config: seen.append((args, consts, config)))
    monkeypatch.setattr(GK._amax_tuned, "configs", GK.CONFIGS[:1])
    consts, _ = K._consts(16, 32, "BHSD", True, True, True, True, False, True)
    x = torch.zeros(1)
    args = ("q", "k", "v", "out", "sizes", x, "rope", "sign")
    GK.gluon_launch((7,), args, 6, "BSHD", consts)
    (a1, c1, cfg1), (a2, c2, cfg2) = seen
    assert cfg1 is cfg2 is GK._first_fit(4, 32) and GK.fits(cfg1, 16, 32)
    assert c1 == dict(LOG_D=4, CHUNK_S=32, ROPE=True, INTERLEAVED=True, COMPACT_CS=True, HAD_QK=True, HAD_V=False,
                      HAS_SIGN=True, INV_SQRT_D=consts["INV_SQRT_D"], enable_fp_fusion=False)
    assert c2 == {**c1, "LAYOUT": "BSHD"}
    slots = a1[4]
    assert slots.dtype == torch.int32 and slots.shape == (6,) and a2[5] is slots and a2[6] is x


def test_eligibility_rules(device):
    x = torch.zeros(1, 2, 8, 128, device=device)
    assert GK.supports([x, x[:, :1]], 128, False) and GK.supports([x[..., :16]], 16, False)
    assert not GK.supports([x], 96, False)  # not a power of two
    assert not GK.supports([x], 512, False) and not GK.supports([x[..., :8]], 8, False)  # outside [16, 256]
    assert not GK.supports([x], 128, True)  # smoothing: the Triton kernels
    assert not GK.supports([x, x.transpose(2, 3)], 128, False)  # a strided last dim
    if device == "cpu":
        assert not GK.eligible([x], 128, False)  # the interpreter runs the Triton kernels


# ---------------------------------------------------------------------------------------------
# GPU: the same bytes as the Triton kernels and the reference
# ---------------------------------------------------------------------------------------------

# (B, H_q, H_kv, S_q, S_kv, D, layout, rope, compact cos/sin, hadamard, signs)
GLUON_CASES = [
    (1, 4, 4, 300, 300, 16, "BHSD", None, False, "qkv", True),
    (2, 4, 2, 77, 1000, 32, "BSHD", "neox", False, "qkv", False),
    (1, 8, 1, 513, 129, 64, "BHSD", "interleaved", True, "v_only", True),
    (2, 32, 8, 4096 + 77, 3000, 128, "BHSD", None, False, "none", False),
    (1, 32, 32, 5000, 5000, 128, "BSHD", "neox", True, "qkv", True),
    (1, 16, 4, 2048, 6001, 128, "BHSD", "interleaved", False, "qkv", False),
    (1, 8, 8, 3333, 3333, 256, "BHSD", "neox", False, "qkv", True),
    (1, 4, 1, 999, 70, 256, "BSHD", None, False, "v_only", False),
]


def _inputs(case, gen, dtype=torch.bfloat16):
    b, hq, hkv, sq, skv, d, layout, rope, compact, mode, signed = case
    q, k, v = make_qkv(b, hq, hkv, sq, skv, d, layout, gen, "cuda", dtype)
    cos = sin = None
    if rope:
        cos, sin = make_cos_sin(max(sq, skv) + 3, d, gen, "cuda", rope == "interleaved", compact)
    signs = None
    if signed:
        signs = (torch.randint(0, 2, (d,), generator=gen, device="cuda") * 2 - 1).to(torch.float32)
    spec = QuantSpec(layout=layout, rope=rope is not None, interleaved=rope == "interleaved",
                     compact_cs=compact, had_qk=mode == "qkv", had_v=mode != "none",
                     signs=None if signs is None else as_sign_vector(signs, d))
    return (q, k, v), cos, sin, spec, hq // hkv, mode, signs


def _assert_same(a, b, what):
    (oa, da), (ob, db) = a[:2], b[:2]
    for x, y, name in zip(oa + da, ob + db, ("q", "k", "v", "q_descale", "k_descale", "v_descale")):
        if x.dtype == F8:  # payload bytes, NaN codes included
            x, y = x.view(torch.uint8), y.view(torch.uint8)
            assert torch.equal(x, y), f"{what}: {name} differs ({int((x != y).sum())} of {x.numel()})"
        else:  # descales: equal values, NaN where the other has NaN
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=f"{what}: {name} differs")


@pytest.mark.cuda
@pytest.mark.parametrize("case", GLUON_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gluon_equals_triton_and_reference(case, dtype, gen):
    if not _gluon_here():
        pytest.skip("the Gluon quantizer runs on sm90")
    qkv, cos, sin, spec, group, mode, signs = _inputs(case, gen, dtype)
    got = K.quantize_launch(list(qkv), group, cos, sin, spec, kernel="gluon")
    want = K.quantize_launch(list(qkv), group, cos, sin, spec, kernel="triton")
    _assert_same(got, want, case)
    check_qkv(QuantizedQKV(*got[0], *got[1]), *qkv, layout=spec.layout, cos=cos, sin=sin,
              interleaved=spec.interleaved, mode=mode, sign=signs)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gluon_every_kept_config(d, gen):
    if not _gluon_here():
        pytest.skip("the Gluon quantizer runs on sm90")
    case = (1, 4, 2, 700, 333, d, "BSHD", "neox", False, "qkv", True)
    qkv, cos, sin, spec, group, _, _ = _inputs(case, gen)
    want = K.quantize_launch(list(qkv), group, cos, sin, spec, chunk_s=128, kernel="triton")
    for cfg in GK._prune(GK.CONFIGS, {"LOG_D": d.bit_length() - 1, "CHUNK_S": 128}):
        got = K.quantize_launch(list(qkv), group, cos, sin, spec, chunk_s=128, config=cfg)
        _assert_same(got, want, (d, cfg))


@pytest.mark.cuda
@pytest.mark.parametrize("rope", [False, True])
def test_gluon_q_only_groups(rope, gen):
    # quantize_per_head's path: one tensor, a scale shared by groups of 4 heads
    if not _gluon_here():
        pytest.skip("the Gluon quantizer runs on sm90")
    x = torch.randn(2, 8, 1234, 128, generator=gen, device="cuda").to(torch.bfloat16)
    cos, sin = make_cos_sin(1234, 128, gen, "cuda", False, True) if rope else (None, None)
    spec = QuantSpec(rope=rope, compact_cs=rope, had_qk=True)
    _assert_same(K.quantize_launch([x], 4, cos, sin, spec, kernel="gluon"),
                 K.quantize_launch([x], 4, cos, sin, spec, kernel="triton"), ("q only", rope))


@pytest.mark.cuda
def test_gluon_strided_and_non_finite(gen):
    if not _gluon_here():
        pytest.skip("the Gluon quantizer runs on sm90")
    # rows read in place from wider tensors (row stride 136 elements: the compiler cannot assume
    # 16-byte aligned rows)
    big = torch.randn(2, 3, 500, 136, generator=gen, device="cuda").to(torch.bfloat16)
    q, k, v = big[..., :128], big[:, :1, :, 8:], big[:, 1:2, :, :128]
    spec = QuantSpec(had_qk=True, had_v=True)
    _assert_same(K.quantize_launch([q, k, v], 3, None, None, spec, kernel="gluon"),
                 K.quantize_launch([q, k, v], 3, None, None, spec, kernel="triton"), "strided")
    # NaN and Inf follow the non-finite policy of the Triton kernels, bit for bit
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    q2[0, 0, 7, 3] = float("nan")
    k2[1, 0, 100, 0] = float("inf")
    _assert_same(K.quantize_launch([q2, k2, v2], 3, None, None, spec, kernel="gluon"),
                 K.quantize_launch([q2, k2, v2], 3, None, None, spec, kernel="triton"), "non-finite")
