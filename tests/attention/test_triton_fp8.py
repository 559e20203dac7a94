"""FP8_TRITON (attention/triton_fp8.py): the kernel against FP8_REFERENCE (``_reference_fwd``) and a
float64 SDPA of the same e4m3 payloads, masks of every form, GQA 1/4/8, S_q != S_kv, top-left causal,
head dims 64-256, the V^T layout, validation; on a GPU, real shapes, every config, the autotuner.

Tight checks. The kernel subtracts the running row max (FA3 does too), the reference the final one,
so P of blocks seen before a row's maximum is rounded to e4m3 at another scale. Where no row's
maximum moves after its first key block (one key block, or inputs whose key 0 dominates every row)
kernel and reference agree to >= 60 dB under the interpreter (mostly bit for bit), >= 40 dB compiled
(``TIGHT_DB``: Hopper's FP8 accumulation); elsewhere the kernel must be as close to
float64 as the reference is (within 1 dB). Payloads are random e4m3 with random descales (the
quantizer has its own tests); CPU shapes are small (the interpreter), ``config=`` forces 32 x 32
tiles where a test needs several key blocks.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from attention import transpose as TV
from attention import triton_fp8 as T
from attention.reference import sqnr_db
from attention.sdpa import _reference_fwd
from fp8_quant import quantize_qkv
from fp8_quant.reference import scales_from_amax
from tests.conftest import DEVICE, HAS_CUDA
from tests.isolated_configs import check_configs, run_configs

SMALL = T._cfg(32, 32, 4, 2)  # several key blocks at CPU sizes
# Kernel vs reference where no running max moves. The interpreter's dots are exact fp32 sums of exact
# e4m3 products (>= 80 dB measured over seeds, mostly bit for bit); compiled on Hopper, FP8 wgmma
# accumulates with ~14 mantissa bits (FA3 alike), which a float32 emulation puts at 48-53 dB for
# 2^-12..2^-14 relative error. A moving running max or a wrong kernel gives ~30-35 dB.
TIGHT_DB = 40.0 if HAS_CUDA else 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def payloads(gen, b, s_q, s_kv, h_q, h_kv, d, boost=False, boost_key=None):
    """e4m3 q (B, S_q, H_q, D), k/v (B, S_kv, H_kv, D) and float32 (B, H_kv) descales. ``boost``: key 0
    (or key ``boost_key[b]`` of batch b) holds every row's maximum score, so the kernel's running max
    is final from the first key block it reads."""
    def r(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE) * 40
    q, k, v = r(b, s_q, h_q, d), r(b, s_kv, h_kv, d), r(b, s_kv, h_kv, d)
    if boost:  # two channels: ~7 logits above the other keys, whose P stays in e4m3's normal range
        q[..., :2] = 200.0
        for bi in range(b):
            k[bi, 0 if boost_key is None else boost_key[bi], :, :2] = 448.0
    ds = [torch.rand(b, h_kv, generator=gen, device=DEVICE) * 0.02 + 0.01 for _ in range(3)]
    return (q.to(torch.float8_e4m3fn), k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn), *ds)


def f64_sdpa(q, k, v, qd, kd, vd, scale, causal, mask=None):
    """float64 torch SDPA of the dequantized payloads, BSHD in and out."""
    g = q.shape[2] // k.shape[2]
    deq = [(t.double() * s.double().repeat_interleave(r, 1)[:, None, :, None]).transpose(1, 2)
           for t, s, r in ((q, qd, g), (k, kd, 1), (v, vd, 1))]
    if mask is not None:  # torch's SDPA takes no 1-D mask: broadcast it first
        mask = T.broadcast_mask(mask, q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        mask = mask if mask.dtype == torch.bool else mask.double()
        if causal:  # torch's CUDA SDPA takes no mask together with is_causal: join them (top-left)
            seen = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril()
            mask = mask & seen if mask.dtype == torch.bool else mask.masked_fill(~seen, float("-inf"))
            causal = False
    return F.scaled_dot_product_attention(*deq, attn_mask=mask, is_causal=causal, scale=scale,
                                          enable_gqa=True).transpose(1, 2)


def check(args, scale, causal, mask=None, tight=True, **kw):
    """Run the kernel; compare with the reference (tight) and float64; return the output."""
    out = T._triton_fp8_launch(*args, scale, causal, mask, **kw)
    b, s_q, h_q, d = args[0].shape
    assert out.shape == (b, s_q, h_q, d) and out.dtype == torch.bfloat16 and not out.isnan().any()
    ref = _reference_fwd(*args, scale, causal, mask)
    want = f64_sdpa(*args, scale, causal, mask)
    got_db, ref_db = sqnr_db(out, want), sqnr_db(ref, want)
    if tight:
        assert sqnr_db(out, ref) >= TIGHT_DB, (sqnr_db(out, ref), got_db, ref_db)
    assert got_db >= ref_db - 1.0 and got_db >= 25.0, (got_db, ref_db)
    return out


# ---------------------------------------------------------------------------------------------
# The kernel against the references (CPU interpreter; the same tests on a GPU)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h_q,h_kv", [(4, 4), (4, 1), (8, 1)], ids=["mha", "gqa4", "gqa8"])
@pytest.mark.parametrize("s_q,s_kv", [(37, 53), (53, 37), (1, 40)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_one_key_block_matches_reference(gen, h_q, h_kv, s_q, s_kv, causal):
    check(payloads(gen, 2, s_q, s_kv, h_q, h_kv, 64), 0.1, causal)


@pytest.mark.parametrize("d", [64, 96, 128, 192, 256])
def test_head_dims(gen, d):
    check(payloads(gen, 1, 40, 33, 2, 1, d), d ** -0.5, d % 64 == 0)


@pytest.mark.parametrize("s_q,s_kv", [(100, 200), (200, 100), (96, 96)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_many_key_blocks_matches_reference_when_the_max_comes_first(gen, s_q, s_kv, causal):
    """32 x 32 tiles: the online softmax over several key blocks, both loops (unmasked blocks, then
    the causal diagonal and the S_kv tail), several query blocks, top-left causal for S_q != S_kv."""
    check(payloads(gen, 1, s_q, s_kv, 4, 2, 64, boost=True), 0.1, causal, config=SMALL)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_many_key_blocks_as_accurate_as_the_reference(gen, causal):
    """Without a dominant key the running max moves between blocks: the kernel differs from the
    reference (the documented deviation) but is as close to float64 as the reference is."""
    args = payloads(gen, 1, 100, 200, 4, 1, 64)
    out = check(args, 0.1, causal, tight=False, config=SMALL)
    one = check(args, 0.1, causal, tight=False)  # default tiles: fewer blocks, another rounding
    assert sqnr_db(out, one) >= 25.0


def test_negative_scale_and_non_contiguous_views(gen):
    """scale < 0 (the unmasked blocks take min(qk) for the row max) and BSHD views of BHSD payloads
    give what contiguous payloads give."""
    q, k, v, qd, kd, vd = payloads(gen, 2, 48, 40, 4, 2, 64)
    check((q, k, v, qd, kd, vd), -0.08, False, config=SMALL, tight=False)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    for causal in (False, True):
        assert torch.equal(T._triton_fp8_launch(*views, qd, kd, vd, 0.1, causal),
                           T._triton_fp8_launch(q, k, v, qd, kd, vd, 0.1, causal))


def test_v_transposed_input_and_padding_never_read(gen):
    """``transpose_v`` pads rows to 16 keys with (poisoned: NaN) memory; passing its result with
    ``v_is_transposed`` gives the same output bit for bit, and nothing of the padding leaks in."""
    q, k, v, qd, kd, vd = payloads(gen, 1, 30, 37, 2, 2, 64)
    vt = TV.transpose_v(v)
    assert vt.shape == (1, 2, 64, 37) and vt.stride(-1) == 1 and vt.stride(2) == 48
    assert torch.equal(vt, v.permute(0, 2, 3, 1))
    a = T._triton_fp8_launch(q, k, vt, qd, kd, vd, 0.1, True, v_is_transposed=True, config=SMALL)
    b = T._triton_fp8_launch(q, k, v, qd, kd, vd, 0.1, True, config=SMALL)
    assert torch.equal(a, b) and not a.isnan().any()


def _fp8(gen, *shape):
    return (torch.randn(*shape, generator=gen, device=DEVICE) * 50).to(torch.float8_e4m3fn)


@pytest.mark.parametrize("shape", [(1, 37, 2, 64), (2, 5, 3, 96), (1, 130, 1, 128), (1, 300, 2, 192),
                                   (1, 17, 2, 256)], ids=str)
def test_transpose_v_matches_permute(gen, shape):
    """``transpose_v``'s Triton copy equals ``v.permute(0, 2, 3, 1)`` byte for byte: into a buffer
    poisoned with e4m3 NaN (0x7F) whose 16-key padding it leaves untouched, and from a strided view.
    ``config``: every one of ``TRANSPOSE_CONFIGS`` on a GPU, the interpreter's one on CPU."""
    v = _fp8(gen, *shape)
    b, s, h, d = shape
    want = v.permute(0, 2, 3, 1).view(torch.uint8)
    configs = TV.TRANSPOSE_CONFIGS if HAS_CUDA else TV.TRANSPOSE_CONFIGS[:1]
    for cfg in [None, *configs]:
        buf = torch.full((b, h, d, -(-s // 16) * 16), 0x7F, dtype=torch.uint8, device=DEVICE)
        TV._transpose_into(v, buf[..., :s].view(torch.float8_e4m3fn), cfg)
        assert torch.equal(buf[..., :s], want), cfg
        assert (buf[..., s:] == 0x7F).all(), cfg
    view = _fp8(gen, b, s, h + 1, d)[:, :, 1:]  # strided along S and B
    vt = TV.transpose_v(view)
    assert vt.shape == (b, h, d, s) and vt.stride(-1) == 1 and vt.stride(2) == -(-s // 16) * 16
    assert torch.equal(vt.view(torch.uint8), view.permute(0, 2, 3, 1).view(torch.uint8))


def test_transpose_v_refuses_bad_input(gen):
    v = _fp8(gen, 1, 8, 2, 64)
    with pytest.raises(TypeError, match="torch.Tensor"):
        TV.transpose_v(v.tolist())
    with pytest.raises(ValueError, match="1-byte"):
        TV.transpose_v(v.to(torch.bfloat16))
    with pytest.raises(ValueError, match="4-D"):
        TV.transpose_v(v[0])
    with pytest.raises(ValueError, match="unit last stride"):
        TV.transpose_v(v.transpose(2, 3))
    assert TV.transpose_v(v[:, :0]).shape == (1, 2, 64, 0)


@pytest.mark.skipif(HAS_CUDA, reason="the GPU tests run the TMA path compiled")
def test_tma_path_matches_pointer_path_under_the_interpreter(gen, monkeypatch):
    """The TMA branch (descriptors for K and V^T, out-of-bounds tiles zero-filled) runs under the
    interpreter when forced: bit for bit the pointer branch, with the V^T padding poisoned (NaN)."""
    monkeypatch.setattr(T, "_tma_ok", lambda k, vt, d: True)
    for s_q, s_kv, causal, form in ((100, 200, True, None), (90, 150, False, "key_bool"), (90, 150, True, "bool_full")):
        args = payloads(gen, 2, s_q, s_kv, 4, 2, 64)
        mask = None if form is None else _mask(gen, form, s_q=s_q, s_kv=s_kv)
        tma = T._triton_fp8_launch(*args, 0.1, causal, mask, config=SMALL, use_tma=True)
        ptr = T._triton_fp8_launch(*args, 0.1, causal, mask, config=SMALL, use_tma=False)
        assert torch.equal(tma, ptr) and not tma.isnan().any(), (s_q, s_kv, causal, form)


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------

def _mask(gen, form, b=2, h=4, s_q=37, s_kv=53):
    u = lambda *shape: torch.rand(*shape, generator=gen, device=DEVICE)  # noqa: E731
    if form == "bool_full":
        return u(b, h, s_q, s_kv) > 0.3
    if form == "bool_2d":
        return u(s_q, s_kv) > 0.5
    if form == "add_heads":  # varies along heads and keys: tile path with stride 0 on b and rows
        return (u(1, h, 1, s_kv) - 0.5) * 4
    if form == "add_rows":
        return torch.where(u(b, 1, s_q, 1) > 0.2, u(b, 1, s_q, 1), float("-inf")).expand(b, 1, s_q, s_kv)
    if form == "key_bool":  # key padding, a length per batch
        return (torch.arange(s_kv, device=DEVICE) < torch.tensor([s_kv - 9, 20], device=DEVICE)[:, None])[:, None, None]
    if form == "key_float":
        m = (u(b, 1, 1, s_kv) - 0.5) * 3
        return m.masked_fill(u(b, 1, 1, s_kv) < 0.3, float("-inf"))
    if form == "key_1d":
        return u(s_kv) > 0.4
    if form == "key_bf16":
        return ((u(1, 1, 1, s_kv) - 0.5) * 2).to(torch.bfloat16)
    raise ValueError(form)


KEY_FORMS = ("key_bool", "key_float", "key_1d", "key_bf16")


@pytest.mark.parametrize("form", ["bool_full", "bool_2d", "add_heads", "add_rows", *KEY_FORMS])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_masks_one_key_block(gen, form, causal):
    mask = _mask(gen, form)
    kind = T.mask_operand(mask, 2, 4, 37, 53)[0]
    assert kind == (T.KEY_MASK if form in KEY_FORMS else T.TILE_MASK), (form, kind)
    check(payloads(gen, 2, 37, 53, 4, 2, 64), 0.1, causal, mask)


@pytest.mark.parametrize("form", ["bool_full", "add_heads", "key_bool", "key_float"])
def test_masks_many_key_blocks(gen, form):
    mask = _mask(gen, form, s_q=90, s_kv=150).clone()
    if mask.dtype != torch.bool:  # biases <= 0: no key climbs above the dominant key 0
        mask = -mask.abs()
    mask[..., 0] = True if mask.dtype == torch.bool else 0.0  # key 0 is always seen
    for causal in (False, True):
        check(payloads(gen, 2, 90, 150, 4, 1, 64, boost=True), 0.1, causal, mask, config=SMALL)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_key_padding_skips_fully_masked_blocks(gen, causal):
    """Keys outside [first valid, last valid] of each batch are never read: their K/V payloads are NaN
    here, yet the output is finite and matches the reference computed on clean payloads. Batch 0's
    valid keys are one run starting inside a block (the bounds-only path: no per-key bias), batch 1's
    have a hole (the per-key bias path); causal: rows before the first valid key see none (0)."""
    # the first valid key of each batch dominates its rows: a tight comparison over many blocks
    q, k, v, qd, kd, vd = payloads(gen, 2, 200 if causal else 64, 256, 2, 1, 64, boost=True, boost_key=(40, 100))
    valid = torch.zeros(2, 256, dtype=torch.bool, device=DEVICE)
    valid[0, 40:150] = True
    valid[1, 100:190] = True
    valid[1, 120:130] = False  # a hole: computed with -inf bias, not skipped
    mask = valid[:, None, None, :]
    want = _reference_fwd(q, k, v, qd, kd, vd, 0.1, causal, mask)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    for bi, (lo, hi) in enumerate(((32, 160), (96, 192))):  # the 32-key blocks holding valid keys
        for t in (poisoned_k, poisoned_v):
            t.view(torch.uint8)[bi, :lo] = 0x7F  # e4m3 NaN
            t.view(torch.uint8)[bi, hi:] = 0x7F
    out = T._triton_fp8_launch(q, poisoned_k, poisoned_v, qd, kd, vd, 0.1, causal, mask, config=SMALL)
    assert not out.isnan().any()
    assert sqnr_db(out, want) >= TIGHT_DB
    if causal:
        assert (out[0, :40] == 0).all() and (out[1, :100] == 0).all() and (out[0, 40:] != 0).any(dim=-1).all()


@pytest.mark.parametrize("form", ["bool_row", "neg_inf_row", "key_all_masked"])
def test_fully_masked_rows_are_zero_like_torch(gen, form):
    """Rows with no visible key return 0, which is what F.scaled_dot_product_attention returns."""
    args = payloads(gen, 2, 20, 40, 2, 2, 64)
    if form == "bool_row":
        mask = torch.ones(2, 2, 20, 40, dtype=torch.bool, device=DEVICE)
        mask[1, 0, 5] = False
    elif form == "neg_inf_row":
        mask = torch.zeros(20, 40, device=DEVICE)
        mask[7] = float("-inf")
    else:
        mask = torch.ones(2, 1, 1, 40, dtype=torch.bool, device=DEVICE)
        mask[1] = False  # every key of batch 1 padded
    out = check(args, 0.1, False, mask)
    ref = _reference_fwd(*args, 0.1, False, mask)
    torch_out = f64_sdpa(*args, 0.1, False, mask)
    if mask.dtype == torch.bool:
        dead = ~mask.expand(2, 2, 20, 40).any(-1)
    else:
        dead = torch.isinf(mask).all(-1).expand(2, 2, 20)
    dead = dead.transpose(1, 2)  # (B, S_q, H)
    assert dead.any()
    assert (out[dead] == 0).all() and (ref[dead] == 0).all() and (torch_out[dead] == 0).all()


def test_causal_and_mask_together(gen):
    """Both apply (a key is seen when the mask allows it and it is not in the future), as torch's
    default CPU SDPA does with both arguments."""
    args = payloads(gen, 1, 45, 45, 2, 2, 64)
    mask = _mask(gen, "key_float", b=1, s_kv=45)
    out = check(args, 0.1, True, mask)
    both = mask.expand(1, 2, 45, 45) + torch.zeros(45, 45, device=DEVICE).masked_fill(
        torch.ones(45, 45, dtype=torch.bool, device=DEVICE).triu(1), float("-inf"))
    assert sqnr_db(out, f64_sdpa(*args, 0.1, False, both)) >= 25.0


# ---------------------------------------------------------------------------------------------
# Validation and edge cases
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Q quantized in the kernel (q_descale=None): one e4m3 scale per BLOCK_M query rows of a head
# ---------------------------------------------------------------------------------------------

def _block_quantized(q, block_m):
    """The kernel's Q payload and descale per row, in PyTorch: the amax of each block of ``block_m``
    rows of a head (the program's tile), ``scales_from_amax``, fp32 multiply, round to e4m3."""
    b, s, h, d = q.shape
    pad = -s % block_m
    amax = F.pad(q.float().abs(), (0, 0, 0, 0, 0, pad)).view(b, -1, block_m, h, d).amax(dim=(2, 4))
    scale, descale = (t.repeat_interleave(block_m, 1)[:, :s] for t in scales_from_amax(amax))  # (B, S, H)
    return (q.float() * scale[..., None]).to(torch.float8_e4m3fn), descale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_quant_q_equals_prequantized_when_blocks_share_a_scale(gen, dtype, causal):
    """Every row of a GQA group with the same amax: each block's scale is the group's, so the
    kernel's Q payload is the pre-quantized one and both paths give the same output (the scale
    product differs by fp32 rounding only). Several key blocks, odd sizes, GQA 2."""
    _, k, v, _, kd, vd = payloads(gen, 2, 45, 70, 4, 2, 64, boost=True)
    q = (torch.randn(2, 45, 4, 64, generator=gen, device=DEVICE) * 3).clamp(-10.0, 10.0)
    q[..., :2] = 200.0 / 40  # the boost of ``payloads`` (its dominant key), at Q's scale
    q[..., 5] = 11.0  # every row's amax
    q = q.to(dtype)
    q8, descale = _block_quantized(q, SMALL.kwargs["BLOCK_M"])
    assert torch.equal(descale, descale[:1, :1, :1].expand_as(descale))
    qd = descale[:, 0, ::2].contiguous()  # (B, H_kv): the shared value
    out = T._triton_fp8_launch(q, k, v, None, kd, vd, 0.1, causal, config=SMALL)
    pre = T._triton_fp8_launch(q8, k, v, qd, kd, vd, 0.1, causal, config=SMALL)
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    assert sqnr_db(out, pre) >= TIGHT_DB, sqnr_db(out, pre)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_quant_q_matches_float64(gen, causal):
    """Rows of very different sizes, five query blocks: close to float64 SDPA of the block-wise
    dequantized Q (what the kernel computes), and about as close to the exact answer as one scale per
    head (e4m3 is floating point: a finer scale gains only where a coarser one would push values
    below e4m3's normal range, under 2^-6 / 448 of the amax; the two differ by rounding noise)."""
    _, k, v, qd, kd, vd = payloads(gen, 1, 150, 90, 8, 2, 128)
    q = torch.randn(1, 150, 8, 128, generator=gen, device=DEVICE)
    q = (q * torch.logspace(-2, 1, 150, device=DEVICE)[None, :, None, None]).to(torch.bfloat16)
    out = T._triton_fp8_launch(q, k, v, None, kd, vd, 128 ** -0.5, causal, config=SMALL)
    q8, descale = _block_quantized(q, SMALL.kwargs["BLOCK_M"])
    ones = torch.ones_like(kd)
    want = f64_sdpa(q8.double() * descale.double()[..., None], k, v, ones, kd, vd, 128 ** -0.5, causal)
    exact = f64_sdpa(q.double(), k, v, ones, kd, vd, 128 ** -0.5, causal)
    head = quantize_qkv(q, k.to(torch.bfloat16), v.to(torch.bfloat16), layout="BSHD")  # one scale per group
    per_head = T._triton_fp8_launch(head.q, k, v, head.q_descale, kd, vd, 128 ** -0.5, causal, config=SMALL)
    figures = (sqnr_db(out, want), sqnr_db(out, exact), sqnr_db(per_head, exact))
    print(f"\nQUANT_Q causal={causal}: vs block-wise f64 {figures[0]:.2f} dB, vs exact {figures[1]:.2f} dB, "
          f"one scale per head {figures[2]:.2f} dB")
    assert figures[0] >= 30.0 and figures[1] >= figures[2] - 1.0, figures


@pytest.mark.parametrize("bad", ["nan_descale", "inf_descale", "nan_k"])
def test_non_finite_head_is_nan_never_zero(gen, bad):
    """A NaN or infinite descale, or a NaN key, makes every row that reads it NaN (as FA3 does), never
    the 0 of a row with no visible key; the other (batch, KV head)s are unchanged bit for bit."""
    q, k, v, qd, kd, vd = payloads(gen, 2, 30, 40, 4, 2, 64)
    clean = T._triton_fp8_launch(q, k, v, qd, kd, vd, 0.1, False)
    if bad == "nan_k":
        k = k.clone()
        k[1, 7, 0, 3] = float("nan")
    else:
        qd = qd.clone()
        qd[1, 0] = float("nan") if bad == "nan_descale" else float("inf")
    out = T._triton_fp8_launch(q, k, v, qd, kd, vd, 0.1, False)
    assert out[1, :, :2].isnan().all()  # batch 1, query heads 0 and 1 (KV head 0)
    keep = torch.ones(2, 4, dtype=torch.bool, device=DEVICE)
    keep[1, :2] = False
    assert torch.equal(out.transpose(1, 2)[keep], clean.transpose(1, 2)[keep])


def test_quant_q_nan_stays_in_its_block(gen):
    """A NaN in one query row makes its block's rows NaN (the block's scale is NaN) and leaves every
    other block, and the other heads, bit for bit as they were."""
    _, k, v, _, kd, vd = payloads(gen, 1, 70, 50, 2, 2, 64)
    q = torch.randn(1, 70, 2, 64, generator=gen, device=DEVICE).to(torch.bfloat16)
    clean = T._triton_fp8_launch(q, k, v, None, kd, vd, 0.1, True, config=SMALL)
    bad = q.clone()
    bad[0, 40, 1, 3] = float("nan")  # block 1 (rows 32-63) of head 1
    out = T._triton_fp8_launch(bad, k, v, None, kd, vd, 0.1, True, config=SMALL)
    assert out[0, 32:64, 1].isnan().all()
    keep = torch.ones(70, 2, dtype=torch.bool, device=DEVICE)
    keep[32:64, 1] = False
    assert torch.equal(out[0][keep], clean[0][keep])


def test_empty_inputs_return_empty(gen):
    q, k, v, qd, kd, vd = payloads(gen, 1, 8, 8, 2, 2, 64)
    assert T._triton_fp8_launch(q[:, :0], k, v, qd, kd, vd, 0.1, True).shape == (1, 0, 2, 64)
    e = [t[:0] for t in (q, k, v, qd, kd, vd)]
    assert T._triton_fp8_launch(*e, 0.1, False).shape == (0, 8, 2, 64)


@pytest.mark.parametrize("case,err,match", [
    ("bf16", TypeError, "float8_e4m3fn"), ("stride", ValueError, "unit last stride"),
    ("d80", ValueError, "head dim D=80"), ("heads", ValueError, "multiple of H_kv"),
    ("descale", ValueError, "q_descale must be float32"), ("s_kv0", ValueError, "S_kv=0"),
    ("mask_shape", ValueError, "does not broadcast"), ("mask_dtype", ValueError, "attn_mask dtype torch.int32"),
    ("v_shape", ValueError, "do not match"), ("quant_q_fp32", TypeError, "bfloat16 or float16"),
    ("quant_q_e4m3", TypeError, "bfloat16 or float16"),
])
def test_refusals(gen, case, err, match):
    d = 80 if case == "d80" else 64
    q, k, v, qd, kd, vd = payloads(gen, 1, 8, 8, 4 if case != "heads" else 3, 2, d)
    mask = None
    if case == "bf16":
        q = q.to(torch.bfloat16)
    if case == "stride":
        k = k.transpose(1, 3)
    if case == "descale":
        qd = qd.double()
    if case == "s_kv0":
        k, v = k[:, :0], v[:, :0]
    if case == "mask_shape":
        mask = torch.ones(3, 8, dtype=torch.bool, device=DEVICE)
    if case == "mask_dtype":
        mask = torch.ones(8, 8, dtype=torch.int32, device=DEVICE)
    if case == "v_shape":
        v = v[:, :7]
    if case.startswith("quant_q"):  # q_descale=None: q must be bf16/fp16
        qd = None
        q = q.float() if case == "quant_q_fp32" else q
    with pytest.raises(err, match=match):
        T._triton_fp8_launch(q, k, v, qd, kd, vd, 0.1, False, mask)


def test_config_list_and_prune():
    assert T.configs_for(64)[0] is T.CONFIGS[0]  # the interpreter's config fits every head dim
    for d in (64, 96, 128, 192, 256):
        kept = T.configs_for(d)
        assert kept and all(c in T.CONFIGS for c in kept), d
        assert T.CONFIGS[0] in kept
    assert all(c.kwargs["BLOCK_M"] == 64 for c in T.configs_for(128, s_q=1))  # decode: the small tile
    assert len(T.configs_for(256)) < len(T.configs_for(128))


_AOT_SCRIPT = r"""
import re, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile, make_backend
from triton.runtime.jit import create_function_from_signature
from attention import triton_fp8 as T

target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)
fn = T._fp8_attn_fwd_kernel

def aot(d, causal, mask, use_tma, cfg, quant_q=False):
    b, s, h = 1, 512, 4
    q, k = (torch.empty(b, s, h, d, dtype=torch.float8_e4m3fn) for _ in range(2))
    if quant_q:
        q = torch.empty(b, s, h, d, dtype=torch.bfloat16)
    vt = torch.empty(b, h, d, s, dtype=torch.float8_e4m3fn)
    out = torch.empty(b, s, h, d, dtype=torch.bfloat16)
    kind, is_bool, margs = T.mask_operand(mask, b, h, s, s)
    args = ((q, q.stride(0), q.stride(1), q.stride(2)), (k, k.stride(0), k.stride(1), k.stride(2)),
            (vt, vt.stride(0), vt.stride(1), vt.stride(2)), out, tuple(torch.empty(b, h) for _ in range(3)),
            (margs[0] if margs[0] is not None else q,) + margs[1:], (h, h, s, s), 0.18)
    kw = dict(HEAD_DIM=d, BLOCK_D=d, CAUSAL=causal, MASK_KIND=kind, MASK_BOOL=is_bool, NEG_SCALE=False,
              USE_TMA=use_tma, QUANT_Q=quant_q, Q_BUCKET=512, KV_BUCKET=512, debug=False, **cfg.all_kwargs())
    bound, spec, options = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
    return compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)

kp = torch.ones(1, 1, 1, 512, dtype=torch.bool)
for name, d, causal, mask, tma, qq in (("d128-causal-tma", 128, True, None, True, False),
                                       ("d64-keymask-ptr", 64, False, kp, False, False),
                                       ("d128-quantq-tma", 128, True, None, True, True)):
    ptx = aot(d, causal, mask, tma, T.CONFIGS[0], qq).asm["ptx"]
    print("AOT", name, len(re.findall(r"wgmma\.mma_async\S*\.e4m3\.e4m3", ptx)),
          len(re.findall(r"mma\.sync\S*e4m3", ptx)), int("cp.async.bulk.tensor" in ptx))
"""


def test_first_config_compiles_for_sm90_with_fp8_wgmma():
    """Without a GPU: triton compiles the kernel for SM90 (the wheel's ptxas), in a process without
    the interpreter. Both dots must be e4m3 wgmma (V^T makes P @ V's B operand K-major; a V in the
    wrong order would fall back to mma.sync), and the TMA variants must use TMA loads; Q quantized in
    the kernel (QUANT_Q) too."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    lines = {ln.split()[1]: [int(x) for x in ln.split()[2:]] for ln in r.stdout.splitlines() if ln.startswith("AOT")}
    assert lines["d128-causal-tma"][0] > 0 and lines["d128-causal-tma"][1] == 0 and lines["d128-causal-tma"][2] == 1
    assert lines["d64-keymask-ptr"][0] > 0 and lines["d64-keymask-ptr"][1] == 0 and lines["d64-keymask-ptr"][2] == 0
    assert lines["d128-quantq-tma"][0] > 0 and lines["d128-quantq-tma"][1] == 0 and lines["d128-quantq-tma"][2] == 1


# ---------------------------------------------------------------------------------------------
# GPU: real shapes, every config, the autotuner
# ---------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gpu_real_shape(gen, causal, d):
    args = payloads(gen, 1, 4096, 4096, 8, 8, d)
    out = check(args, d ** -0.5, causal, tight=False)
    vs_f64 = sqnr_db(out, f64_sdpa(*args, d ** -0.5, causal))
    vs_ref = sqnr_db(out, _reference_fwd(*args, d ** -0.5, causal))
    print(f"\nRECORD fp8_triton payloads D={d} causal={causal}: vs f64 {vs_f64:.2f} dB, "
          f"vs FP8_REFERENCE {vs_ref:.2f} dB")


@pytest.mark.cuda
@pytest.mark.parametrize("form", ["key_quarter", "key_quarter_causal", "tile_bool", "gqa_kv_mask"])
def test_gpu_masks(gen, form):
    b, s, h_q, h_kv = 2, 2048, 8, 8
    if form == "gqa_kv_mask":
        h_kv = 2
    args = payloads(gen, b, s, s, h_q, h_kv, 128)
    lengths = torch.tensor([s, 3 * s // 4], device=DEVICE)
    mask = (torch.arange(s, device=DEVICE) < lengths[:, None])[:, None, None]
    if form == "tile_bool":
        mask = torch.rand(b, h_q, s, s, generator=gen, device=DEVICE) > 0.25
    out = check(args, 128 ** -0.5, form == "key_quarter_causal", mask, tight=False)
    assert T.mask_operand(mask, b, h_q, s, s)[0] == (T.TILE_MASK if form == "tile_bool" else T.KEY_MASK)
    assert out.isfinite().all()


def _check_configs(d: int, use_tma: bool, start: int = 0) -> None:
    """Subprocess side of ``test_every_config_compiles_and_matches``: each config that fits d from
    ``start`` on through the seam, ``START i`` before and ``OK i`` / ``FAIL i <reason>`` after it."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    args = payloads(gen, 1, 1000, 1500, 8, 2, d)
    mask = (torch.arange(1500, device="cuda") < 1200)[None, None, None]  # key padding (fast path)
    runs = [(causal, m, f64_sdpa(*args, 0.1, causal, m)) for causal, m in ((True, None), (False, mask))]
    ref_db = [sqnr_db(_reference_fwd(*args, 0.1, causal, m), want) for causal, m, want in runs]
    qb = (torch.randn(1, 1000, 8, d, generator=gen, device="cuda") * 5).to(torch.bfloat16)  # QUANT_Q

    def want_qq(block_m):
        q8, descale = _block_quantized(qb, block_m)
        return f64_sdpa(q8.double() * descale.double()[..., None], *args[1:3], torch.ones_like(args[4]),
                        *args[4:], 0.1, True, mask)

    def check(cfg):
        for (causal, m, want), ref in zip(runs, ref_db):
            out = T._triton_fp8_launch(*args, 0.1, causal, m, config=cfg, use_tma=use_tma)
            torch.cuda.synchronize()
            db = sqnr_db(out, want)
            if not db >= ref - 1.0:
                return f"SQNR {db:.2f} dB (causal={causal}, reference {ref:.2f} dB)"
        out = T._triton_fp8_launch(qb, *args[1:3], None, *args[4:], 0.1, True, mask, config=cfg, use_tma=use_tma)
        db = sqnr_db(out, want_qq(cfg.kwargs["BLOCK_M"]))
        if not db >= 30.0:  # the interpreter measures 37-39 dB for this path at D = 64
            return f"QUANT_Q SQNR {db:.2f} dB against the block-wise dequantized float64 answer"
        return None

    check_configs(T.configs_for(d), start, check)


@pytest.mark.cuda
@pytest.mark.parametrize("use_tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_every_config_compiles_and_matches(d, use_tma):
    """Every config that fits d, through the seam, in a subprocess (a compiler abort kills only it;
    the run restarts after the crashed config). A failure names the config: drop it from CONFIGS."""
    command = lambda start: [sys.executable, "-m", "tests.attention.test_triton_fp8", str(d), str(int(use_tma)), str(start)]  # noqa: E731
    failures = run_configs(command, T.configs_for(d), timeout=600)
    assert not failures, "\n".join(failures)


_AUTOTUNE_SCRIPT = r"""
import torch
from attention import triton_fp8 as T  # first: the config list is read at import, before tests.conftest

from attention.sdpa import _reference_fwd
from fp8_quant import quantize_qkv
from fp8_quant.reference import scales_from_amax
from attention.reference import sqnr_db
from tests.attention.test_triton_fp8 import f64_sdpa, payloads
gen = torch.Generator(device="cuda").manual_seed(1)
for d, causal in ((128, False), (128, True), (64, False), (256, True)):
    args = payloads(gen, 1, 4096, 4096, 8, 8, d)
    out = T._triton_fp8_launch(*args, d ** -0.5, causal)
    db = sqnr_db(out, f64_sdpa(*args, d ** -0.5, causal))
    ref = sqnr_db(_reference_fwd(*args, d ** -0.5, causal), f64_sdpa(*args, d ** -0.5, causal))
    assert db >= ref - 1.0, (d, causal, db, ref)
    print(f"OK d={d} causal={causal}: {db:.2f} dB (reference {ref:.2f}), config {T._fp8_attn_fwd.best_config}")
"""


@pytest.mark.cuda
def test_gpu_full_autotune():
    """The full autotuner (no LOWPREC_AUTOTUNE=first) picks configs that give the right answer."""
    env = {k: v for k, v in os.environ.items() if k != "LOWPREC_AUTOTUNE"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _AUTOTUNE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)
    assert r.stdout.count("OK ") == 4


@pytest.mark.cuda
def test_gpu_refuses_below_sm89(monkeypatch, gen):
    import attention.triton_fp8 as mod

    args = payloads(gen, 1, 64, 64, 2, 2, 64)
    monkeypatch.setattr(mod, "device_capability", lambda device=None: (8, 0))
    with pytest.raises(RuntimeError, match="SM89"):
        T._triton_fp8_launch(*args, 0.1, False)


if __name__ == "__main__" and HAS_CUDA:
    _check_configs(int(sys.argv[1]), bool(int(sys.argv[2])), int(sys.argv[3]))
