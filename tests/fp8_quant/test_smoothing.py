"""fp8_quant smoothing (``smooth_k`` / ``smooth_v``): payloads and descales bit for bit, means to fp32
precision.

The kernels' mean c is an fp32 sum in their own fixed order (per-chunk tile sums, then a fixed
reduction over the chunks) divided by S; no torch expression reproduces that order, so the payload
check takes the kernels' c: payload == e4m3(fl(fl(y - c) * scale)) with scale from max |fl(y - c)|
(``fp8_quant.reference.smoothed_values_reference``), and c itself is checked against the float64 mean
within the worst-case bound of an fp32 sum of S terms. Q, and K or V when not smoothed, must be
exactly the unsmoothed quantizer's bytes.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton

from fp8_quant import QuantizedQKV, quantize_per_head, quantize_qkv
from fp8_quant import kernels as K
from fp8_quant import reference as R
from fp8_quant.quantize import QuantSpec
from hadamard_kernels.signs import as_sign_vector

ON_GPU = torch.cuda.is_available()
F8 = torch.float8_e4m3fn


def _bhsd(b, h, s, d, layout):
    return (b, h, s, d) if layout == "BHSD" else (b, s, h, d)


def _inputs(b, hq, hkv, sq, skv, d, layout, gen, device, bias=8.0, dtype=torch.bfloat16):
    """Q gaussian; K and V gaussian plus a per-(batch, head, channel) bias of std ``bias``."""
    def biased(h, s):
        x = torch.randn(b, h, s, d, generator=gen, device=device)
        x = x + torch.randn(b, h, 1, d, generator=gen, device=device) * bias
        return (x if layout == "BHSD" else x.transpose(1, 2)).to(dtype)

    q = torch.randn(_bhsd(b, hq, sq, d, layout), generator=gen, device=device).to(dtype)
    return q, biased(hkv, skv), biased(hkv, skv)


def _cos_sin(s, d, gen, device, interleaved, compact):
    ang = torch.rand(s, d // 2, generator=gen, device=device) * 100.0
    if not compact:
        ang = ang.repeat_interleave(2, dim=-1) if interleaved else torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def _bytes(t):
    return t.view(torch.uint8)


def _assert_payload(got, want, scaled, layout, allow_midpoints, what, magnitude):
    """Bytes equal; where allowed (compiled RoPE/Hadamard), a differing byte must be a rounding-midpoint
    case one code apart: the scaled value within 4 fp32 ulps of ``magnitude`` (|y| * scale, BHSD: an ulp
    of y before the shift, which is where a compiled y may differ) of the midpoint."""
    g, w = _bytes(got), _bytes(R.from_bhsd(want, layout))
    bad = g != w
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    assert allow_midpoints, f"{what}: {n_bad} of {g.numel()} payload bytes differ from the reference"
    v = R.from_bhsd(scaled, layout)[bad]
    gf, wf = got[bad].float(), R.from_bhsd(want, layout)[bad].float()
    mag = torch.maximum(R.from_bhsd(magnitude, layout)[bad], v.abs())
    ulp = torch.nextafter(mag, torch.full_like(mag, math.inf)) - mag
    assert bool((((v - (gf + wf) / 2).abs() <= 4 * ulp) & ((g[bad].int() - w[bad].int()).abs() == 1)).all()), what
    assert n_bad <= max(2, g.numel() // 10000), f"{what}: too many midpoint flips ({n_bad})"


def _assert_mean_close(mean, xt, what):
    """|c - mean64| within the worst case of an fp32 sum of S terms (S * 2^-24 * mean |y|) plus the
    division's rounding: a missing chunk or row would be off by ~mean |y| / S, thousands of times more."""
    s = xt.shape[2]
    m64 = R.mean_f64(xt)
    bound = s * 2.0 ** -24 * xt.double().abs().mean(dim=2) + 2.0 ** -24 * m64.abs() + 1e-30
    err = (mean.double() - m64).abs()
    assert mean.dtype == torch.float32 and mean.shape == m64.shape, (mean.dtype, mean.shape)
    assert bool((err <= bound).all()), f"{what}: mean off by {float((err / bound).max()):.3g} x the bound"


def check_smoothed(res, q, k, v, group, spec, cos=None, sin=None, sign=None, k_mean=None, v_mean=None):
    """``res`` (payloads, descales) of a smoothed call against the references; k_mean / v_mean: the
    kernels' means (None for a tensor not smoothed)."""
    outs, ds = res
    layout = spec.layout
    transformed = spec.rope or spec.had_qk or spec.had_v
    allow = ON_GPU and transformed
    kw = dict(layout=layout, rope_interleaved=spec.interleaved, sign_vector=sign)
    qt = R.transformed_reference(q, cos=cos, sin=sin, hadamard=spec.had_qk, **kw)
    kt = R.transformed_reference(k, cos=cos, sin=sin, hadamard=spec.had_qk, **kw)
    vt = R.transformed_reference(v, hadamard=spec.had_v, **kw)
    for name, xt, y8, d8, grp, on, mean in (("q", qt, outs[0], ds[0], group, False, None),
                                            ("k", kt, outs[1], ds[1], 1, spec.smooth_k, k_mean),
                                            ("v", vt, outs[2], ds[2], 1, spec.smooth_v, v_mean)):
        assert y8.dtype == F8 and y8.is_contiguous() and y8.shape == R.from_bhsd(xt, layout).shape
        if on:
            _assert_mean_close(mean, xt, name)
            want, want_ds, scaled = R.smoothed_values_reference(xt, mean)
            magnitude = xt.abs() * R.scales_from_amax(want_ds * R.E4M3_MAX)[0][:, :, None, None]
            # the kernels' amax formula is the reference's max |fl(y - c)| (monotone rounding)
            assert torch.equal(R.shifted_amax_reference(xt, mean), (xt - mean[:, :, None]).abs().amax((2, 3)))
        else:
            assert mean is None
            want, want_ds, scaled = R.quantize_values_reference(xt, grp)
            magnitude = scaled.abs()
        torch.testing.assert_close(d8, want_ds, rtol=0, atol=0, equal_nan=True, msg=f"{name} descale")
        _assert_payload(y8, want, scaled, layout, allow, name, magnitude)


# (B, H_q, H_kv, S_q, S_kv, D, layout, rope, compact cos/sin, hadamard, signs, smooth_k, smooth_v, chunk_s)
CPU_CASES = [
    (1, 2, 2, 70, 70, 64, "BHSD", None, False, "none", False, True, True, 32),
    (2, 4, 1, 45, 150, 64, "BSHD", None, False, "none", False, True, False, 32),  # 5 chunks, GQA 4
    (1, 8, 2, 33, 77, 128, "BHSD", "neox", False, "qkv", True, True, True, 32),  # odd S, RoPE + Hadamard
    (1, 4, 1, 50, 37, 64, "BSHD", "interleaved", True, "v_only", False, False, True, None),
    (1, 2, 1, 20, 1, 256, "BHSD", None, False, "qkv", False, True, True, None),  # one key row
    (1, 2, 2, 40, 90, 96, "BSHD", None, False, "none", False, True, True, 32),  # D = 96: masked columns
    (1, 2, 1, 16, 700, 128, "BHSD", "neox", True, "none", False, True, True, 32),  # 22 chunks > RED_C = 16
]

GPU_CASES = [
    (2, 32, 8, 4096 + 77, 3000, 128, "BHSD", None, False, "none", False, True, True, None),
    (1, 32, 32, 8192, 8192, 128, "BSHD", "neox", False, "qkv", True, True, True, None),
    (2, 16, 2, 1000, 4099, 64, "BSHD", "interleaved", True, "v_only", False, False, True, None),
    (1, 8, 8, 3333, 3333, 256, "BHSD", "neox", True, "qkv", False, True, False, None),
    (1, 8, 2, 100, 65536 + 3, 128, "BSHD", None, False, "none", False, True, True, None),  # ~1000 chunks a head
]


def _run_case(case, gen, device, dtype=torch.bfloat16):
    b, hq, hkv, sq, skv, d, layout, rope, compact, mode, signed, sk, sv, chunk = case
    q, k, v = _inputs(b, hq, hkv, sq, skv, d, layout, gen, device, dtype=dtype)
    interleaved = rope == "interleaved"
    cos = sin = None
    if rope:
        cos, sin = _cos_sin(max(sq, skv) + 3, d, gen, device, interleaved, compact)
    sign = (torch.randint(0, 2, (d,), generator=gen, device=device) * 2 - 1).float() if signed else None
    spec = QuantSpec(layout=layout, rope=rope is not None, interleaved=interleaved, compact_cs=bool(rope) and compact,
                     had_qk=mode == "qkv", had_v=mode != "none", signs=None if sign is None else as_sign_vector(sign),
                     smooth_k=sk, smooth_v=sv)
    outs, ds, (k_mean, v_mean) = K.quantize_launch([q, k, v], hq // hkv, cos, sin, spec, chunk_s=chunk)
    check_smoothed((outs, ds), q, k, v, hq // hkv, spec, cos, sin, sign, k_mean, v_mean)
    # the public call: the same bytes when it chunks the same way, and v_mean (or None) as the seventh field
    pub = quantize_qkv(q, k, v, layout=layout, cos=cos, sin=sin, rope_interleaved=interleaved, hadamard=mode,
                       sign_vector=sign, smooth_k=sk, smooth_v=sv)
    assert isinstance(pub, QuantizedQKV) and (pub.v_mean is None) == (not sv)
    if chunk is None:
        for got, want in zip(pub[:6], outs + ds):
            assert torch.equal(_bytes(got) if got.dtype == F8 else got, _bytes(want) if want.dtype == F8 else want)
        if sv:
            assert torch.equal(pub.v_mean, v_mean)
    else:
        check_smoothed((list(pub[:3]), list(pub[3:6])), q, k, v, hq // hkv, spec, cos, sin, sign,
                       K.quantize_launch([q, k, v], hq // hkv, cos, sin, spec)[2][0], pub.v_mean)


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_smoothed_quantizer_matches_reference(case, gen, device):
    _run_case(case, gen, device)


@pytest.mark.cuda
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_smoothed_quantizer_matches_reference_gpu(case, dtype, gen, device):
    _run_case(case, gen, device, dtype)


def test_shifted_amax_formula(gen, device):
    """max over channels of max(fl(max y - c), fl(c - min y)) == max |fl(y - c)| in fp32, for means
    inside the range, outside it (an fp32 mean may round past a constant channel) and at its ends."""
    y = torch.randn(3, 2, 50, 16, generator=gen, device=device) * torch.logspace(-3, 3, 16, device=device)
    y[0, 0, :, 3] = 1.1  # a constant channel
    c = (y.mean(dim=2) + torch.randn(3, 2, 16, generator=gen, device=device) * 0.3).float()
    c[0, 0, 3] = torch.nextafter(torch.tensor(1.1), torch.tensor(2.0)).item()  # just above the constant
    c[1, 1] = y[1, 1].amax(dim=0)  # at the maximum
    want = (y - c[:, :, None]).abs().amax((2, 3))
    assert torch.equal(R.shifted_amax_reference(y, c), want)


def test_smoothing_removes_the_bias_from_the_error(gen, device):
    """A channel bias of 8 sigma: without smoothing the scale follows the bias and the varying part
    loses ~3 bits; with it, dequantized payload + mean recovers y to e4m3 precision of the varying part."""
    q, k, v = _inputs(1, 2, 2, 40, 256, 64, "BHSD", gen, device, bias=8.0)
    plain = quantize_qkv(q, k, v)
    smooth = quantize_qkv(q, k, v, smooth_k=True, smooth_v=True)
    outs, ds, (k_mean, _) = K.quantize_launch([q, k, v], 1, None, None, QuantSpec(smooth_k=True, smooth_v=True))
    for name, x, p8, pd, s8, sd, mean in (("k", k, plain.k, plain.k_descale, smooth.k, smooth.k_descale, k_mean),
                                          ("v", v, plain.v, plain.v_descale, smooth.v, smooth.v_descale,
                                           smooth.v_mean)):
        xf = x.double()
        varying = xf - xf.mean(dim=2, keepdim=True)
        err_plain = R.dequantize_reference(p8, pd) - xf
        err_smooth = R.dequantize_reference(s8, sd) + mean.double()[:, :, None] - xf
        rel_plain = float(err_plain.norm() / varying.norm())
        rel_smooth = float(err_smooth.norm() / varying.norm())
        assert rel_smooth < 2.0 ** -4, (name, rel_smooth)  # e4m3 of the varying part
        assert rel_plain > 4 * rel_smooth, (name, rel_plain, rel_smooth)


def test_zero_constant_and_empty(gen, device):
    q, k, v = _inputs(1, 4, 2, 40, 40, 64, "BHSD", gen, device)
    k[:, 0] = 0  # the mean is 0, nothing is left: descale 1, payload 0
    v[:, 1] = 2.5  # constant per channel: y - c is exactly 0 (2.5 * 40 and / 40 are exact)
    res = quantize_qkv(q, k, v, smooth_k=True, smooth_v=True)
    assert res.k_descale[0, 0].item() == 1.0 and (res.k[:, 0].float() == 0).all()
    assert res.v_descale[0, 1].item() == 1.0 and (res.v[:, 1].float() == 0).all()
    assert (res.v_mean[0, 1] == 2.5).all()
    # S_kv = 0: the mean of no rows is 0; no batch: empty means
    kv0 = torch.zeros(1, 2, 0, 64, dtype=torch.bfloat16, device=device)
    res = quantize_qkv(q, kv0, kv0, smooth_k=True, smooth_v=True)
    assert torch.equal(res.v_mean, torch.zeros(1, 2, 64, device=device))
    assert torch.equal(res.v_descale, torch.ones(1, 2, device=device))
    z = torch.zeros(0, 2, 8, 64, dtype=torch.bfloat16, device=device)
    assert quantize_qkv(z, z, z, smooth_v=True).v_mean.shape == (0, 2, 64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_policy_with_smoothing(bad, gen, device):
    """A NaN/Inf in a smoothed group: descale NaN / +inf and the whole group's payload NaN (as
    without smoothing); every other group bit for bit the clean call's, means included."""
    q, k, v = _inputs(2, 4, 2, 40, 70, 64, "BHSD", gen, device)
    spec = QuantSpec(smooth_k=True, smooth_v=True)
    clean = K.quantize_launch([q, k, v], 2, None, None, spec, chunk_s=32)
    kb, vb = k.clone(), v.clone()
    kb[1, 0, 50, 3] = bad
    vb[0, 1, 5, 60] = bad
    outs, ds, means = K.quantize_launch([q, kb, vb], 2, None, None, spec, chunk_s=32)
    for t, (bi, hi) in ((1, (1, 0)), (2, (0, 1))):
        d = ds[t][bi, hi].item()
        assert math.isnan(d) if math.isnan(bad) else d == math.inf, d
        assert torch.isnan(outs[t][bi, hi].float()).all()
        keep = torch.ones(2, 2, dtype=torch.bool, device=device)
        keep[bi, hi] = False
        assert torch.equal(ds[t][keep], clean[1][t][keep])
        assert torch.equal(means[t - 1][keep], clean[2][t - 1][keep])
        assert torch.equal(_bytes(outs[t])[keep], _bytes(clean[0][t])[keep])
    assert torch.equal(_bytes(outs[0]), _bytes(clean[0][0])) and torch.equal(ds[0], clean[1][0])


def test_bad_smoothing_arguments(device):
    q = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16, device=device)
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="smooth_k must be a bool"):
            quantize_qkv(q, q, q, smooth_k=bad)
        with pytest.raises(TypeError, match="smooth_v must be a bool"):
            quantize_qkv(q, q, q, smooth_v=bad)
    with pytest.raises(ValueError, match="needs \\[q, k, v\\]"):
        K.quantize_launch([q], 1, None, None, QuantSpec(smooth_v=True))
    with pytest.raises(TypeError):
        quantize_per_head(q, 1, smooth_v=True)  # one tensor, one scale: no smoothing there


def test_buffers_only_when_smoothing(gen, device, monkeypatch):
    """Host cost: smoothing off allocates what it did before (payloads, descales, amax slots); on, two
    more buffers (chunk sums, means). Two launches either way."""
    q, k, v = _inputs(1, 2, 1, 40, 40, 64, "BHSD", gen, device)
    specs = (QuantSpec(), QuantSpec(smooth_k=True, smooth_v=True))
    for spec in specs:  # compile / tune first: only the steady-state call is counted
        K.quantize_launch([q, k, v], 2, None, None, spec)
    calls = {"alloc": 0, "launch": 0}
    for name in ("empty", "zeros"):
        real = getattr(torch, name)

        def counted(*a, _real=real, **kw):
            calls["alloc"] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(torch, name, counted)
    real_launch = K.launch

    def launch(*a, **kw):
        calls["launch"] += 1
        return real_launch(*a, **kw)
    monkeypatch.setattr(K, "launch", launch)
    counts = []
    for spec in specs:
        calls.update(alloc=0, launch=0)
        K.quantize_launch([q, k, v], 2, None, None, spec)
        counts.append(dict(calls))
    assert counts[0] == {"alloc": 5, "launch": 2}, counts  # 3 payloads, descales, amax slots
    assert counts[1] == {"alloc": 7, "launch": 2}, counts


def test_forced_configs_each_bit_exact(gen, device):
    """Every config of the seam: payloads exact against the reference with that run's means (the mean's
    summation order may differ between configs; each run is self-consistent)."""
    q, k, v = _inputs(1, 2, 1, 70, 130, 64, "BSHD", gen, device)
    spec = QuantSpec(layout="BSHD", had_qk=True, had_v=True, smooth_k=True, smooth_v=True)
    for cfg in (triton.Config({"BLOCK_S": 32}, num_warps=4, num_stages=2),
                triton.Config({"BLOCK_S": 64}, num_warps=8, num_stages=2)):
        outs, ds, (km, vm) = K.quantize_launch([q, k, v], 2, None, None, spec, chunk_s=64, config=cfg)
        check_smoothed((outs, ds), q, k, v, 2, spec, k_mean=km, v_mean=vm)


def test_custom_op_opcheck_with_smoothing(gen, device):
    q, k, v = _inputs(1, 2, 1, 33, 33, 64, "BHSD", gen, device)
    for sk, sv in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.fp8_quant.quantize_qkv.default,
                              (q, k, v, "BHSD", None, None, False, True, True, None, None, sk, sv),
                              test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_smoothing_matches_eager(gen, device):
    q, k, v = _inputs(1, 4, 2, 33, 50, 64, "BSHD", gen, device)
    cos, sin = _cos_sin(50, 64, gen, device, False, True)

    def f(q, k, v, cos, sin):
        return quantize_qkv(q, k, v, layout="BSHD", cos=cos, sin=sin, hadamard="qkv", smooth_k=True, smooth_v=True)

    want = f(q, k, v, cos, sin)
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")(q, k, v, cos, sin)
    assert isinstance(got, QuantizedQKV) and got.v_mean is not None
    for a, b in zip(got, want):
        assert torch.equal(_bytes(a) if a.dtype == F8 else a, _bytes(b) if b.dtype == F8 else b)
    torch._dynamo.reset()


@pytest.mark.cuda
def test_cuda_graph_capture_with_smoothing(gen, device):
    q, k, v = _inputs(1, 8, 2, 1000, 1500, 128, "BHSD", gen, device)
    kw = dict(hadamard="qkv", smooth_k=True, smooth_v=True)
    quantize_qkv(q, k, v, **kw)  # warm the autotuner outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = quantize_qkv(q, k, v, **kw)
    v.mul_(2)
    g.replay()
    torch.cuda.synchronize()
    want = quantize_qkv(q, k, v, **kw)
    for a, b in zip(out, want):
        assert torch.equal(_bytes(a) if a.dtype == F8 else a, _bytes(b) if b.dtype == F8 else b)
