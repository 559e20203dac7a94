"""fp8_sdpa / fp8_rope_sdpa with FP8_REFERENCE on CPU (CUDA too) and FP8_FA3 on Hopper.

CPU accuracy shape: B=1, H=2, S=256, D=64 (the quantizer runs under the interpreter). The GPU tests
(marker ``fa3``) use the issue's shape B=1, H=8, S=4096, D=128 and print ``RECORD`` lines with the
measured SQNRs (run with ``-s``).
"""


import pytest
import torch
import torch.nn.functional as F

from attention import AttentionBackend, HadamardMode, fp8_rope_sdpa, fp8_sdpa
from attention.sdpa import _fp8_sdpa_impl
from attention.reference import rmse, rope_reference, sdpa_reference, sqnr_db
from tests.attention.conftest import randn
from tests.conftest import DEVICE

REF = AttentionBackend.FP8_REFERENCE
CPU_SHAPE = (1, 2, 256, 64)
GPU_SHAPE = (1, 8, 4096, 128)


def _inputs(gen, shape, kind="gaussian"):
    b, h, s, d = shape
    q, k, v = (randn(gen, b, h, s, d, dtype=torch.float32) for _ in range(3))
    if kind == "channel":
        for t in (q, k, v):
            t[..., 0] *= 20
            t[..., d // 2] *= 20
    elif kind == "sparse":
        for t in (q, k, v):
            mask = torch.rand(t.shape, generator=gen, device=t.device) < 1e-3
            t[mask] = randn(gen, int(mask.sum()), dtype=torch.float32) * 10
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def _sqnr(q, k, v, causal, backend, hadamard=HadamardMode.NONE, sign_vector=None):
    out = fp8_sdpa(q, k, v, is_causal=causal, backend=backend, hadamard=hadamard, sign_vector=sign_vector)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    return sqnr_db(out, sdpa_reference(q, k, v, causal)), out


# ---------------------------------------------------------------------------------------------
# Accuracy, CPU (FP8_REFERENCE, real quantizer) and GPU (FA3)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gaussian_sqnr_and_hadamard_cost(gen, causal):
    q, k, v = _inputs(gen, CPU_SHAPE)
    plain, _ = _sqnr(q, k, v, causal, REF)
    rotated, _ = _sqnr(q, k, v, causal, REF, HadamardMode.QKV)
    assert plain >= 25.0, plain
    assert rotated >= plain - 0.3, (plain, rotated)


def test_channel_outliers_qkv(gen):
    q, k, v = _inputs(gen, CPU_SHAPE, "channel")
    rotated, _ = _sqnr(q, k, v, False, REF, HadamardMode.QKV)
    assert rotated >= 20.5, rotated


def test_sparse_outliers_rmse(gen, fast_quant):
    """The RMSE ratio grows with S (measured with FP8_REFERENCE: ~1.3x at S=256, ~1.6x at S=1024,
    ~2.07x at S=4096, D=128), so this runs at the issue's S=4096, D=128 (H=2) with the reference
    quantizer, which is fast on CPU; the kernel quantizer is bit-identical to it (fp8_quant's tests)."""
    q, k, v = _inputs(gen, (1, 2, 4096, 128), "sparse")
    ref = sdpa_reference(q, k, v)
    plain = rmse(fp8_sdpa(q, k, v, backend=REF), ref)
    rotated = rmse(fp8_sdpa(q, k, v, backend=REF, hadamard=HadamardMode.QKV), ref)
    assert plain >= 2.0 * rotated, (plain, rotated)


def test_v_only_and_sign_vector(gen):
    """V_ONLY undoes V's rotation only; a random sign vector is undone too (wrong sign handling would
    scramble the output channels and fail by tens of dB)."""
    q, k, v = _inputs(gen, (1, 2, 128, 64))
    signs = torch.where(torch.rand(64, generator=gen, device=DEVICE) < 0.5, -1.0, 1.0)
    vonly, _ = _sqnr(q, k, v, True, REF, HadamardMode.V_ONLY)
    signed, _ = _sqnr(q, k, v, False, REF, HadamardMode.QKV, signs)
    assert vonly >= 25.0 and signed >= 25.0, (vonly, signed)


# ---------------------------------------------------------------------------------------------
# Semantics (fast quantizer): layouts, GQA, causal alignment, dtypes, empty, RoPE
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h_q,h_kv", [(4, 4), (4, 1), (8, 2)])
@pytest.mark.parametrize("s_q,s_kv", [(37, 37), (16, 53), (53, 16)])
def test_gqa_and_top_left_causal(gen, fast_quant, h_q, h_kv, s_q, s_kv):
    q = randn(gen, 2, h_q, s_q, 64)
    k, v = randn(gen, 2, h_kv, s_kv, 64), randn(gen, 2, h_kv, s_kv, 64)
    for causal in (False, True):
        out = fp8_sdpa(q, k, v, is_causal=causal, enable_gqa=h_q != h_kv, backend=REF)
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal,
                                              enable_gqa=h_q != h_kv)
        assert sqnr_db(out, want) >= 24.0, (causal, sqnr_db(out, want))


def test_fp16_non_contiguous_and_scale(gen, fast_quant):
    base = randn(gen, 1, 40, 3, 3, 128, dtype=torch.float16)  # (B, S, 3, H, D): a packed QKV projection
    q, k, v = (base[:, :, i].transpose(1, 2) for i in range(3))  # BHSD views, not contiguous
    out = fp8_sdpa(q, k, v, scale=0.05, backend=REF)
    assert out.dtype == torch.float16 and out.shape == (1, 3, 40, 128)
    assert sqnr_db(out, sdpa_reference(q, k, v, scale=0.05)) >= 24.0
    other = _fp8_sdpa_impl(q, k, v, False, 0.05, REF, HadamardMode.NONE, None, quant_layout="BHSD")  # bench variant
    assert torch.equal(other, out)


def test_empty_batch_returns_empty(fast_quant):
    q = torch.randn(0, 2, 16, 64, device=DEVICE, dtype=torch.bfloat16)
    out = fp8_sdpa(q, q, q, backend=REF)
    assert out.shape == (0, 2, 16, 64) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_sdpa(gen, fast_quant, interleaved):
    b, s, h, hk, d = 1, 48, 4, 2, 64
    q, k, v = randn(gen, b, s, h, d), randn(gen, b, s, hk, d), randn(gen, b, s, hk, d)
    ang = torch.arange(s, device=DEVICE)[:, None] * (10000 ** (-torch.arange(d // 2, device=DEVICE) / (d // 2)))
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
    out = fp8_rope_sdpa(q, k, v, cos, sin, rope_interleaved=interleaved, is_causal=True, backend=REF,
                        hadamard=HadamardMode.QKV)
    assert out.shape == (b, h, s, d)
    qr, kr = rope_reference(q, cos, sin, interleaved), rope_reference(k, cos, sin, interleaved)
    want = sdpa_reference(qr.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2), True)
    assert sqnr_db(out, want) >= 24.0


def test_reference_emulates_p_rounding(gen, fast_quant):
    """FP8_REFERENCE rounds P to e4m3 like FA3: its error against a reference that dequantizes the
    same payloads but keeps P in fp32 is the P rounding alone, far from zero and far below the total."""
    import attention.sdpa as sdpa

    q, k, v = randn(gen, 1, 2, 64, 64), randn(gen, 1, 2, 64, 64), randn(gen, 1, 2, 64, 64)
    q8, k8, v8, qd, kd, vd = fast_quant(q, k, v)
    out = sdpa._reference_fwd(q8.transpose(1, 2), k8.transpose(1, 2), v8.transpose(1, 2), qd, kd, vd, 0.125, False)
    deq = [t.double() * s[:, :, None, None].double() for t, s in ((q8, qd), (k8, kd), (v8, vd))]
    exact_p = sdpa_reference(*deq, scale=0.125).transpose(1, 2)
    p_err = sqnr_db(out, exact_p)
    assert 25.0 < p_err < 60.0, p_err


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,match", [
    ("mask", "attn_mask"), ("dropout", "dropout_p"), ("d80", "head dim D=80"), ("fp32", "dtype"),
    ("gqa", "enable_gqa"), ("grad", "no backward"), ("d96_hadamard", "power-of-two"), ("3d", "4-D"),
    ("heads", "multiple of H_kv"),
])
def test_refusals(case, match):
    d = {"d80": 80, "d96_hadamard": 96}.get(case, 64)
    q = torch.randn(1, 4, 8, d, device=DEVICE, dtype=torch.float32 if case == "fp32" else torch.bfloat16)
    k = torch.randn(1, {"gqa": 2, "heads": 3}.get(case, 4), 8, d, device=DEVICE, dtype=q.dtype)
    kw = {}
    if case == "mask":
        kw["attn_mask"] = torch.ones(8, 8, dtype=torch.bool, device=DEVICE)
    if case == "dropout":
        kw["dropout_p"] = 0.1
    if case == "grad":
        q.requires_grad_(True)
    if case == "d96_hadamard":
        kw["hadamard"] = HadamardMode.QKV
    if case == "heads":
        kw["enable_gqa"] = True
    if case == "3d":
        q = q[0]
    with pytest.raises(ValueError, match=match):
        fp8_sdpa(q, k, k, backend=REF, **kw)


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(64), "must be \\+1 or -1"), (torch.full((64,), 2.0), "must be \\+1 or -1"),
    (torch.ones(32), "has 32 entries"), ([1, -1] * 16, "has 32 entries"), ("ones", "SignVector, tuple, list"),
])
def test_sign_vector_refusals(bad, match):
    """Every entry must be +-1 and the length D; before, zeros returned an all-zero output and 2s a
    relative error of 5.5, with no error raised."""
    q = torch.randn(1, 2, 8, 64, device=DEVICE, dtype=torch.bfloat16)
    with pytest.raises((ValueError, TypeError), match=match):
        fp8_sdpa(q, q, q, backend=REF, hadamard="qkv", sign_vector=bad)


def test_sign_vector_forms_agree(gen, fast_quant):
    """A tensor, a list, a tuple and a SignVector of the same signs give the same output."""
    from hadamard_kernels.signs import SignVector

    q, k, v = (randn(gen, 1, 2, 16, 64) for _ in range(3))
    signs = torch.where(torch.rand(64, generator=gen, device=DEVICE) < 0.5, -1.0, 1.0)
    as_list = [int(x) for x in signs.tolist()]
    outs = [fp8_sdpa(q, k, v, backend=REF, hadamard="qkv", sign_vector=s)
            for s in (signs, as_list, tuple(as_list), SignVector(as_list))]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_no_backend_is_an_error_not_a_fallback():
    if DEVICE == "cuda":
        pytest.skip("on a GPU backend=None may legitimately find FA3/FA4")
    q = torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="FP8_REFERENCE"):
        fp8_sdpa(q, q, q)
    with pytest.raises(RuntimeError, match="SM90"):
        fp8_sdpa(q, q, q, backend=AttentionBackend.FP8_FA3)
    with pytest.raises(RuntimeError, match="SM100"):
        fp8_sdpa(q, q, q, backend="fp8_fa4")
    with pytest.raises(ValueError, match="unknown attention backend"):
        fp8_sdpa(q, q, q, backend="bf16")


def test_compile_fullgraph(gen):
    q, k, v = (randn(gen, 1, 2, 64, 64) for _ in range(3))
    fn = torch.compile(lambda a, b, c: fp8_sdpa(a, b, c, is_causal=True, backend=REF, hadamard=HadamardMode.QKV),
                       fullgraph=True, backend="aot_eager")
    out = fn(q, k, v)
    assert sqnr_db(out, sdpa_reference(q, k, v, True)) >= 24.0


# ---------------------------------------------------------------------------------------------
# GPU: FA3 at the shape
# ---------------------------------------------------------------------------------------------

FA3 = AttentionBackend.FP8_FA3


@pytest.mark.fa3
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fa3_gaussian(gen, causal):
    q, k, v = _inputs(gen, GPU_SHAPE)
    plain, out = _sqnr(q, k, v, causal, FA3)
    rotated, _ = _sqnr(q, k, v, causal, FA3, HadamardMode.QKV)
    ref_fp8, ref_out = _sqnr(q, k, v, causal, REF)
    bf16 = sqnr_db(F.scaled_dot_product_attention(q, k, v, is_causal=causal), sdpa_reference(q, k, v, causal))
    agree = sqnr_db(out, ref_out)
    print(f"\nRECORD fa3 gaussian causal={causal}: fp8 {plain:.2f} dB, qkv {rotated:.2f} dB, "
          f"reference {ref_fp8:.2f} dB, bf16 sdpa {bf16:.2f} dB, FA3 vs FP8_REFERENCE {agree:.2f} dB")
    assert plain >= 25.0 and rotated >= plain - 0.3
    assert abs(ref_fp8 - plain) <= 1.0 and agree >= plain + 3.0, (ref_fp8, plain, agree)


@pytest.mark.fa3
def test_fa3_channel_outliers(gen):
    q, k, v = _inputs(gen, GPU_SHAPE, "channel")
    plain, _ = _sqnr(q, k, v, False, FA3)
    rotated, _ = _sqnr(q, k, v, False, FA3, HadamardMode.QKV)
    signs = torch.where(torch.rand(GPU_SHAPE[-1], generator=gen, device=DEVICE) < 0.5, -1.0, 1.0)
    signed, _ = _sqnr(q, k, v, False, FA3, HadamardMode.QKV, signs)
    vonly, _ = _sqnr(q, k, v, False, FA3, HadamardMode.V_ONLY)
    print(f"\nRECORD fa3 channel outliers: none {plain:.2f} dB, qkv {rotated:.2f} dB, qkv+signs {signed:.2f} dB, "
          f"v_only {vonly:.2f} dB")
    assert rotated >= 20.5, rotated


@pytest.mark.fa3
def test_fa3_sparse_outliers(gen):
    q, k, v = _inputs(gen, GPU_SHAPE, "sparse")
    ref = sdpa_reference(q, k, v)
    plain = rmse(fp8_sdpa(q, k, v, backend=FA3), ref)
    rotated = rmse(fp8_sdpa(q, k, v, backend=FA3, hadamard=HadamardMode.QKV), ref)
    print(f"\nRECORD fa3 sparse outliers rmse: none {plain:.4g}, qkv {rotated:.4g}, ratio {plain / rotated:.2f}")
    assert plain >= 2.0 * rotated


@pytest.mark.fa3
@pytest.mark.parametrize("s_q,s_kv", [(512, 1536), (1536, 512)])
def test_fa3_top_left_causal_and_gqa(gen, s_q, s_kv):
    q = randn(gen, 2, 8, s_q, 128)
    k, v = randn(gen, 2, 2, s_kv, 128), randn(gen, 2, 2, s_kv, 128)
    out = fp8_sdpa(q, k, v, is_causal=True, enable_gqa=True, backend=FA3)
    ref_out = fp8_sdpa(q, k, v, is_causal=True, enable_gqa=True, backend=REF)
    want = sdpa_reference(q, k, v, True)
    assert sqnr_db(out, want) >= 25.0 and sqnr_db(out, ref_out) >= 30.0


@pytest.mark.fa3
def test_fa3_backend_none_picks_fa3_and_compiles(gen):
    q, k, v = (randn(gen, 1, 8, 1024, 128) for _ in range(3))
    out = fp8_sdpa(q, k, v, is_causal=True)  # backend=None -> FA3 on SM90
    comp = torch.compile(lambda a, b, c: fp8_sdpa(a, b, c, is_causal=True, backend=FA3), fullgraph=True)(q, k, v)
    assert torch.equal(out, comp) or sqnr_db(comp, out) > 40
    assert sqnr_db(out, sdpa_reference(q, k, v, True)) >= 25.0


@pytest.mark.fa3
def test_fa3_cuda_graph(gen):
    q, k, v = (randn(gen, 1, 8, 1024, 128) for _ in range(3))
    fp8_sdpa(q, k, v, backend=FA3)  # warm (autotune, provider import)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fp8_sdpa(q, k, v, backend=FA3)
    g.replay()
    torch.cuda.synchronize()
    assert sqnr_db(out, sdpa_reference(q, k, v)) >= 25.0


def test_non_tensor_inputs_are_type_errors():
    import numpy as np

    q = torch.randn(1, 2, 8, 64, device=DEVICE, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="query must be a torch.Tensor, got ndarray"):
        fp8_sdpa(np.zeros((1, 2, 8, 64)), q, q, backend=REF)
    with pytest.raises(TypeError, match="value must be a torch.Tensor, got list"):
        fp8_sdpa(q, q, [1.0], backend=REF)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        fp8_rope_sdpa(None, q, q, q, q, backend=REF)


def test_fast_validation_accepts_exactly_what_the_full_check_accepts():
    """``unsupported_reason`` accepts valid calls in one fast expression and sends everything else to
    the full check: over a grid of valid and invalid calls, both must agree on every one."""
    import itertools

    from attention.sdpa import _unsupported_reason, unsupported_reason

    def t(shape, dtype=torch.bfloat16, grad=False):
        return torch.zeros(shape, dtype=dtype, device=DEVICE).requires_grad_(grad)

    shapes = [((1, 4, 8, 64), (1, 4, 8, 64)), ((1, 4, 8, 64), (1, 2, 8, 64)), ((1, 4, 8, 64), (1, 3, 8, 64)),
              ((2, 4, 8, 64), (1, 4, 8, 64)), ((1, 4, 8, 80), (1, 4, 8, 80)), ((1, 4, 8, 96), (1, 4, 8, 96)),
              ((1, 4, 8, 64), (1, 4, 0, 64)), ((1, 4, 0, 64), (1, 4, 0, 64)), ((1, 4, 8, 64), (1, 4, 8, 128)),
              ((4, 8, 64), (4, 8, 64))]
    variants = itertools.product(shapes, [torch.bfloat16, torch.float32], [False, True], [None, "mask"],
                                 [0.0, 0.1], [None, 0.5, float("nan")], [False, True],
                                 [HadamardMode.NONE, HadamardMode.QKV], ["BHSD", "BSHD"])
    n = 0
    for (qs, ks), dtype, gqa, mask, p, scale, grad, mode, layout in variants:
        q, k, v = t(qs, dtype, grad), t(ks, dtype), t(ks, dtype)
        m = None if mask is None else torch.ones(8, 8, dtype=torch.bool, device=DEVICE)
        for backend in (AttentionBackend.FP8_REFERENCE, AttentionBackend.FP8_FA4):
            fast = unsupported_reason(q, k, v, m, p, False, scale, gqa, backend=backend, hadamard=mode,
                                      layout=layout)
            full = _unsupported_reason(q, k, v, m, p, scale, gqa, backend, mode, layout)
            assert (fast is None) == (full is None), (qs, ks, dtype, gqa, mask, p, scale, grad, mode, layout,
                                                      backend, fast, full)
            n += full is None
    assert n > 0  # the grid holds accepted calls too
