"""FP8_TRITON: an autotuned Triton FP8 attention forward with masks (e4m3 Q/K/V in, bf16 out).

What it computes is what FP8_REFERENCE (``attention.sdpa._reference_fwd``, FA3's FP8 forward in
float32) computes: S = (q8 k8^T) * scale * q_descale * k_descale (e4m3 x e4m3 dot, fp32 accumulate),
plus the mask's bias; an online softmax in the log2 domain with FA3's +8 offset, P = exp2(S' - m + 8)
<= 256, row sum l from the fp32 P; P rounded to e4m3 for an e4m3 x e4m3 P @ V dot; O = acc * v_descale
/ l, rounded to bf16. The one expected difference from the reference: m is the *running* row max of
the key blocks seen so far (the reference subtracts the final one), so P of the blocks before a row's
maximum is rounded to e4m3 at another scale (an independent rounding of the same relative size, ~5%
per element; the kernel is as far from the reference as FA3 is). With one key block, or when every
row's maximum lies in its first key block, they agree to a bf16 rounding (tests check both).

Shapes and conventions (the FA3 call contract of ``attention.backends``): q (B, S_q, H_q, D), k (B,
S_kv, H_kv, D), v (B, S_kv, H_kv, D), any strides with a unit last stride (BSHD views of BHSD
tensors); descales float32 (B, H_kv), one per (batch, KV head), q's shared by the query heads of a
GQA group; D in 64, 96, 128, 192, 256 (96/192 run as 128/256 with masked columns); H_q a multiple of
H_kv; causal is top-left (query i sees keys j <= i) for any S_q, S_kv.

Masks: boolean (True = attend) or additive float (float32/bf16/fp16), any shape that broadcasts to
(B, H_q, S_q, S_kv) (broadcast by stride 0, never materialized). A mask that varies only along batch
and keys ((B, 1, 1, S_kv), (S_kv,), ...: key padding) takes the fast path: a per-key bias loaded once
per key block, and each program walks only the key blocks from the one holding its first valid key
to the one holding its last (a scan of the mask row, S_kv bytes, before the loop); blocks of masked
keys inside that range are computed with an -inf bias. Other masks are loaded as
[BLOCK_M, BLOCK_N] tiles. A mask and ``causal`` together: a key is seen when both allow it (as
torch's default CPU SDPA does). A row whose keys are all masked returns 0, as
``F.scaled_dot_product_attention`` does (torch 2.13: bool and -inf masks alike; a finite large
negative bias instead gives the average of V, as in torch).

V^T. Hopper's FP8 wgmma needs its B operand K-major, so P @ V reads V^T: (B, H_kv, D, S_kv) with S
contiguous (rows padded to a multiple of 16 keys for TMA). ``attention.transpose.transpose_v`` builds
it in the launcher: one autotuned Triton copy, B*S_kv*H_kv*D bytes read and written (39 us at S =
16384 on the H200, 0.7% of the kernel). The quantizer could write V in that layout directly (its
quantize pass stores [rows, D] tiles: store them transposed, index ``(b, h, d, s)``), which would
remove the copy.

Q quantized in the kernel (``q_descale=None``, ``fp8_sdpa(..., q_in_kernel=True)``): q is bf16/fp16;
each program quantizes its [BLOCK_M, D] tile with one scale (448 / the tile's NaN-propagating amax,
``hadamard_kernels.triton_helpers.e4m3_scales``, the quantizer's policy) and folds the descale into
its score scale, so the key loop is the pre-quantized one and the quantizer pass skips Q.

Kernel: one program per BLOCK_M queries of one (batch, query head), grid (query blocks, H_q, B),
causal query blocks heaviest first. Two loops over key blocks: first the blocks that need no bounds
or causal mask, then the rest (the causal diagonal, the S_kv tail). K and V^T tiles come through TMA
descriptors on SM90+ (``USE_TMA``) or pointer loads elsewhere and under the interpreter. No warp
specialization: compiled for SM90 with triton 3.6, ``tl.range(..., warp_specialize=True)`` leaves this
loop unspecialized with 8 warps (no ``ttg.warp_specialize`` in the TTGIR) and aborts the compile with
4 warps (``PassManager::run failed`` in ``NVGPUWarpSpecialization``), as it does for the tutorial's
attention loop.

Seam: ``_triton_fp8_launch(q, k, v, q_descale, k_descale, v_descale, scale, causal, attn_mask=None, *,
config=None, use_tma=None, v_is_transposed=False)``: ``config`` forces a ``triton.Config`` of
``CONFIGS`` (``hadamard_kernels.runtime.launch``), ``use_tma`` forces pointer loads (False) or TMA,
``v_is_transposed`` takes V as ``transpose_v`` returns it; ``q_descale=None`` with a bf16/fp16 q
quantizes Q in the kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from attention.backends import HEAD_DIMS, AttentionBackend
from attention.transpose import transpose_v
from hadamard_kernels.triton_helpers import abs_bits, e4m3_scales, to_e4m3
from hadamard_kernels.runtime import (autotune_configs, autotune_do_bench, bucket, device_capability, launch,
                                      next_power_of_2, tma_allocator, uses_tma)

_LOG2E = 1.4426950408889634
_LOG2E_C = tl.constexpr(1.4426950408889634)
_P_OFFSET_C = tl.constexpr(8.0)  # FA3's FP8 max offset: P = exp2(s - m + 8) <= 256
_SCAN_C = tl.constexpr(1024)  # keys per step of the key-padding range scan
NO_MASK, KEY_MASK, TILE_MASK = 0, 1, 2
MASK_DTYPES = (torch.bool, torch.float32, torch.bfloat16, torch.float16)
MASK_BACKENDS = (AttentionBackend.FP8_TRITON, AttentionBackend.FP8_REFERENCE)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _bias(m, MASK_BOOL: tl.constexpr):
    # loaded mask values -> additive bias in the log2 domain (bool, stored as uint8: 0 or -inf)
    if MASK_BOOL:
        return tl.where(m != 0, 0.0, float("-inf"))
    else:
        return m.to(tl.float32) * _LOG2E_C


@triton.jit
def _key_range(kp_ptr, stride_n, hi, MASK_BOOL: tl.constexpr):
    # Key padding: (first valid key, last valid key + 1, plain) among keys [0, hi), (hi, 0, .) when
    # none; plain: the valid keys form one run [first, last) and their bias is 0 (a bool mask, or a
    # float mask of 0 / -inf), so bounds alone apply the mask.
    first = hi + tl.zeros([], dtype=tl.int32)
    last = tl.zeros([], dtype=tl.int32)
    count = tl.zeros([], dtype=tl.int32)
    zeros = tl.zeros([], dtype=tl.int32)
    for c in range(0, hi, _SCAN_C):
        offs = c + tl.arange(0, _SCAN_C)
        if MASK_BOOL:
            ok = tl.load(kp_ptr + offs * stride_n, mask=offs < hi, other=0) != 0
            zero = ok
        else:
            bias = tl.load(kp_ptr + offs * stride_n, mask=offs < hi, other=float("-inf")).to(tl.float32)
            ok = bias > float("-inf")
            zero = bias == 0.0
        first = tl.minimum(first, tl.min(tl.where(ok, offs, hi), 0))
        last = tl.maximum(last, tl.max(tl.where(ok, offs + 1, 0), 0))
        count += tl.sum(ok.to(tl.int32), 0)
        zeros += tl.sum(zero.to(tl.int32), 0)
    return first, last, (count == last - first) & (zeros == count)


@triton.jit
def _attend(acc, l_i, m_i, qt, offs_m, lo, hi, qk_scale, kv, msk, sizes,
            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
            CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_BOOL: tl.constexpr, NEG_SCALE: tl.constexpr,
            USE_TMA: tl.constexpr):
    # Key blocks [lo, hi) (lo a multiple of BLOCK_N) into the online softmax of rows offs_m.
    # kv = (K source, K row stride, V^T source, V^T row stride): TMA descriptors or base pointers of
    # this (batch, KV head); msk = (base, stride_m, stride_n) of this program's mask rows. MASKED:
    # the bounds (key < S_KV) and causal masks, needed only in the last blocks.
    BM: tl.constexpr = qt.shape[0]
    S_Q = sizes[2]
    S_KV = sizes[3]
    offs_d = tl.arange(0, BLOCK_D)
    offs_bn = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_bn
        if USE_TMA:  # out-of-bounds rows/columns come back as zeros
            kt = kv[0].load([start_n, 0])
            vt = kv[2].load([0, start_n])
        else:
            k_ptrs = kv[0] + start_n.to(tl.int64) * kv[1] + (offs_bn[:, None] * kv[1] + offs_d[None, :])
            v_ptrs = kv[2] + start_n + (offs_d[:, None] * kv[3] + offs_bn[None, :])
            if MASKED:
                kt = tl.load(k_ptrs, mask=(offs_n < S_KV)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
                vt = tl.load(v_ptrs, mask=(offs_d < HEAD_DIM)[:, None] & (offs_n < S_KV)[None, :], other=0.0)
            elif BLOCK_D != HEAD_DIM:
                kt = tl.load(k_ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
                vt = tl.load(v_ptrs, mask=(offs_d < HEAD_DIM)[:, None], other=0.0)
            else:
                kt = tl.load(k_ptrs)
                vt = tl.load(v_ptrs)
        qk = tl.dot(qt, tl.trans(kt))
        if MASKED or MASK_KIND != 0:
            s = qk * qk_scale
            if MASK_KIND == 1:  # key padding: one bias per key
                mk = tl.load(msk[0] + offs_n * msk[2], mask=offs_n < S_KV, other=0)
                s = s + _bias(mk, MASK_BOOL)[None, :]
            if MASK_KIND == 2:
                m_ptrs = msk[0] + start_n.to(tl.int64) * msk[2] + (tl.arange(0, BM)[:, None] * msk[1]
                                                                   + offs_bn[None, :] * msk[2])
                mt = tl.load(m_ptrs, mask=(offs_m < S_Q)[:, None] & (offs_n < S_KV)[None, :], other=0)
                s = s + _bias(mt, MASK_BOOL)
            if MASKED:
                ok = (offs_n < S_KV)[None, :]
                if CAUSAL:
                    ok = ok & (offs_n[None, :] <= offs_m[:, None])
                s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            if MASK_KIND != 0:  # a row with no visible key so far keeps m = -inf and P = 0
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            else:
                m_use = m_new
            p = tl.math.exp2(s - (m_use - _P_OFFSET_C)[:, None])
        else:  # the max of qk * c is max(qk) * c for c >= 0 (min(qk) * c for c < 0)
            if NEG_SCALE:
                m_new = tl.maximum(m_i, tl.min(qk, 1) * qk_scale)
            else:
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
            p = tl.math.exp2(qk * qk_scale - (m_use - _P_OFFSET_C)[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(tl.float8e4nv), tl.trans(vt), acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fp8_attn_fwd_kernel(q, k, vt, o_ptr, descale, mask, sizes, sm_scale_log2,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                         MASK_KIND: tl.constexpr, MASK_BOOL: tl.constexpr, NEG_SCALE: tl.constexpr,
                         USE_TMA: tl.constexpr, QUANT_Q: tl.constexpr, Q_BUCKET: tl.constexpr,
                         KV_BUCKET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # q = (ptr, stride_b, stride_s, stride_h): e4m3 (B, S_Q, H_Q, D), unit stride along D; k: the same
    # for (B, S_KV, H_KV, D); vt = (ptr, stride_b, stride_h, stride_d): V^T, e4m3 (B, H_KV, D, S_KV),
    # unit stride along S; o_ptr: bf16 (B, S_Q, H_Q, D) contiguous; descale = (q, k, v) float32
    # (B, H_KV) contiguous; mask = (ptr, stride_b, stride_h, stride_m, stride_n) of a mask broadcast to
    # (B, H_Q, S_Q, S_KV) (bool as uint8); sizes = (H_Q, H_KV, S_Q, S_KV); sm_scale_log2 = scale *
    # log2(e). One program: BLOCK_M query rows of one (batch, query head) against all their keys.
    # QUANT_Q: q is bf16/fp16 instead, quantized here with one scale for the program's BLOCK_M rows
    # (the quantizer's policy: ``e4m3_scales`` of the tile's NaN-propagating amax), so the key loop
    # is the pre-quantized one; descale[0] is then not read.
    # Q_BUCKET / KV_BUCKET only key the autotuner.
    H_Q, H_KV, S_Q, S_KV = sizes[0], sizes[1], sizes[2], sizes[3]
    if CAUSAL:  # the last query blocks see the most keys: start them first
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    hk = h // (H_Q // H_KV)
    bh_kv = b * H_KV + hk
    row0 = start_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = (offs_m < S_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q_base = q[0] + b.to(tl.int64) * q[1] + h.to(tl.int64) * q[3] + row0.to(tl.int64) * q[2]
    qt = tl.load(q_base + (tl.arange(0, BLOCK_M)[:, None] * q[2] + offs_d[None, :]), mask=q_ok, other=0.0)
    if QUANT_Q:
        qf = qt.to(tl.float32)
        q_scale, q_descale = e4m3_scales(tl.max(tl.max(abs_bits(qf), 1), 0).to(tl.float32, bitcast=True))
        qt = to_e4m3(qf, q_scale)
        qk_scale = (sm_scale_log2 * tl.load(descale[1] + bh_kv)) * q_descale
    else:
        qk_scale = sm_scale_log2 * tl.load(descale[0] + bh_kv) * tl.load(descale[1] + bh_kv)

    # Keys this block may see: [lo, hi); blocks below n_full need no bounds or causal mask.
    hi = S_KV
    full_end = S_KV
    if CAUSAL:  # top-left: query i sees keys j <= i; keys below row0 + 1 are seen by every row
        hi = tl.minimum(hi, tl.minimum(row0 + BLOCK_M, S_Q))
        full_end = row0 + 1
    lo = 0
    if MASK_KIND == 1:
        m_base = mask[0] + b.to(tl.int64) * mask[1]
        first, last, plain = _key_range(m_base, mask[4], hi, MASK_BOOL)
        lo = (first // BLOCK_N) * BLOCK_N
        hi = tl.minimum(hi, last)
    elif MASK_KIND == 2:
        m_base = mask[0] + b.to(tl.int64) * mask[1] + h.to(tl.int64) * mask[2] + row0.to(tl.int64) * mask[3]
    else:
        m_base = mask[0]
    n_full = tl.maximum((tl.minimum(full_end, hi) // BLOCK_N) * BLOCK_N, lo)

    k_base = k[0] + b.to(tl.int64) * k[1] + hk.to(tl.int64) * k[3]
    v_base = vt[0] + b.to(tl.int64) * vt[1] + hk.to(tl.int64) * vt[2]
    if USE_TMA:
        k_src = tl.make_tensor_descriptor(k_base, shape=[S_KV, HEAD_DIM], strides=[k[2], 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(v_base, shape=[HEAD_DIM, S_KV], strides=[vt[3], 1],
                                          block_shape=[BLOCK_D, BLOCK_N])
    else:
        k_src = k_base
        v_src = v_base
    kv = (k_src, k[2], v_src, vt[3])
    msk = (m_base, mask[3], mask[4])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key padding with one run of valid keys and bias 0: the blocks from the first whole block of
    # valid keys up to n_full need no bias (the fast loop); the blocks before take the per-key bias
    plain_from = n_full
    if MASK_KIND == 1:
        plain_from = tl.where(plain, tl.minimum(tl.cdiv(first, BLOCK_N) * BLOCK_N, n_full), n_full)
    acc, l_i, m_i = _attend(acc, l_i, m_i, qt, offs_m, lo, plain_from, qk_scale, kv, msk, sizes, BLOCK_N, HEAD_DIM,
                            BLOCK_D, False, CAUSAL, MASK_KIND, MASK_BOOL, NEG_SCALE, USE_TMA)
    if MASK_KIND == 1:
        acc, l_i, m_i = _attend(acc, l_i, m_i, qt, offs_m, plain_from, n_full, qk_scale, kv, msk, sizes, BLOCK_N,
                                HEAD_DIM, BLOCK_D, False, CAUSAL, 0, MASK_BOOL, NEG_SCALE, USE_TMA)
    acc, l_i, m_i = _attend(acc, l_i, m_i, qt, offs_m, n_full, hi, qk_scale, kv, msk, sizes, BLOCK_N, HEAD_DIM,
                            BLOCK_D, True, CAUSAL, MASK_KIND, MASK_BOOL, NEG_SCALE, USE_TMA)

    # O = acc * v_descale / l; rows with no visible key (l = 0) are 0; a NaN l (a NaN or infinite
    # score or descale) stays NaN, never 0
    vd = tl.load(descale[2] + bh_kv)
    none = l_i == 0.0
    o = tl.where(none[:, None], 0.0, acc * (vd / tl.where(none, 1.0, l_i))[:, None])
    o_base = o_ptr + ((b.to(tl.int64) * S_Q + row0) * H_Q + h) * HEAD_DIM
    tl.store(o_base + (tl.arange(0, BLOCK_M)[:, None] * (H_Q * HEAD_DIM) + offs_d[None, :]), o.to(tl.bfloat16),
             mask=q_ok)


# ---------------------------------------------------------------------------------------------
# Autotune configs: a plain list, easy to edit after a GPU run. The first entry is what the
# interpreter (and LOWPREC_AUTOTUNE=first) runs; it fits every head dim. Every entry compiles for
# SM90 with triton 3.6 on both load paths (the GPU test ``test_every_config_compiles_and_matches``
# runs each one). Register spills, from the wheel's ptxas for the causal key-padding kernel (the
# largest): none at D = 64; at D = 128 (128, 64, 4, 3) spills 40-88 bytes and (128, 128, 8, 3) 8 with
# QUANT_Q on the pointer path; at D = 256 (64, 64, 4, 3) and (128, 64, 8, 2) spill 4-96 bytes (most
# with QUANT_Q). The autotuner times them all; on the H200 (64, 128, 4, 3) wins at D = 128 (notes:
# benchmarks/NOTES.md).
# ---------------------------------------------------------------------------------------------

def _cfg(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


CONFIGS = [
    _cfg(128, 64, 8, 2),  # first: the interpreter's
    _cfg(64, 128, 4, 3),  # two one-warpgroup programs per SM: one's softmax overlaps the other's dots
    _cfg(128, 128, 8, 2),
    _cfg(128, 128, 8, 3),
    _cfg(128, 64, 4, 3),
    _cfg(64, 64, 4, 3),
]


def _fits(c: triton.Config, block_d: int, q_bucket: int) -> bool:
    bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
    if bm > 64 and q_bucket <= 64:  # short queries (decode): the smallest tile
        return False
    # fp32 registers per thread for the O accumulator and the S tile; e4m3 tiles in shared memory
    # (D = 256 with 128-key tiles, 160 KiB, spills registers on the pointer path)
    regs = (bm * block_d + bm * bn) // (32 * c.num_warps)
    smem = bm * block_d + c.num_stages * 2 * bn * block_d
    return regs <= 192 and smem <= 144 * 1024


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    kept = [c for c in configs if _fits(c, args["BLOCK_D"], args["Q_BUCKET"])]
    return kept or [configs[0]]


def configs_for(head_dim: int, s_q: int = 4096) -> list:
    """The configs of ``CONFIGS`` the autotuner tries for this head dim and query length."""
    return _prune(CONFIGS, {"BLOCK_D": next_power_of_2(head_dim), "Q_BUCKET": _bucket(s_q)})


def _bucket(n: int) -> int:
    # sequence-length key of the autotuner: powers of two from 64 up to 8192 (the best tile does not
    # change past a few thousand keys; fewer buckets, fewer tuning runs)
    return min(max(bucket(n), 64), 8192)


_KEY = ["HEAD_DIM", "CAUSAL", "MASK_KIND", "MASK_BOOL", "NEG_SCALE", "USE_TMA", "QUANT_Q", "Q_BUCKET", "KV_BUCKET"]
# The output is written once per launch (no accumulation), so repeated timing runs need no reset.
_fp8_attn_fwd = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(CONFIGS), key=_KEY,
                                prune_configs_by={"early_config_prune": _prune})(_fp8_attn_fwd_kernel)


# ---------------------------------------------------------------------------------------------
# Masks, V^T, validation, launcher (the seam)
# ---------------------------------------------------------------------------------------------

def mask_shape_reason(attn_mask, b: int, h_q: int, s_q: int, s_kv: int, device) -> Optional[str]:
    """Why ``attn_mask`` cannot be used for attention of shape (B, H_q, S_q, S_kv), or None."""
    if not isinstance(attn_mask, torch.Tensor):
        return f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}"
    if attn_mask.dtype not in MASK_DTYPES:
        return (f"attn_mask dtype {attn_mask.dtype} is not supported (bool, or an additive float32/bfloat16/"
                f"float16 mask)")
    want = (b, h_q, s_q, s_kv)
    if attn_mask.dim() > 4 or any(m not in (1, n) for m, n in zip(reversed(attn_mask.shape), reversed(want))):
        return f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to (B, H_q, S_q, S_kv) = {want}"
    if attn_mask.device != device:
        return f"attn_mask is on {attn_mask.device}, the inputs on {device}"
    if attn_mask.requires_grad and torch.is_grad_enabled():
        return "attn_mask requires grad but FP8 attention has no backward"
    return None


def mask_reason(attn_mask, query, key, backend: AttentionBackend, layout: str) -> Optional[str]:
    """``fp8_sdpa``'s mask check: FA3/FA4 take no mask; FP8_TRITON and FP8_REFERENCE take any mask
    that broadcasts to (B, H_q, S_q, S_kv) (query/key 4-D in ``layout``)."""
    if backend not in MASK_BACKENDS:
        return (f"attn_mask is not supported by {backend.name} (a mask is never dropped or replaced by a causal "
                f"mask); FP8_TRITON and FP8_REFERENCE take masks")
    hd, sd = (1, 2) if layout == "BHSD" else (2, 1)
    return mask_shape_reason(attn_mask, query.shape[0], query.shape[hd], query.shape[sd], key.shape[sd],
                             query.device)


def broadcast_mask(attn_mask: torch.Tensor, b: int, h_q: int, s_q: int, s_kv: int) -> torch.Tensor:
    """A (B, H_q, S_q, S_kv) view of a validated mask (stride 0 on broadcast dims, no copy)."""
    return attn_mask[(None,) * (4 - attn_mask.dim())].expand(b, h_q, s_q, s_kv)


def mask_operand(attn_mask, b: int, h_q: int, s_q: int, s_kv: int) -> tuple:
    """(MASK_KIND, MASK_BOOL, (tensor, stride_b, stride_h, stride_m, stride_n)) the kernel reads for a
    validated mask or None: KEY_MASK when the broadcast mask varies only along batch and keys (stride 0
    along heads and queries), else TILE_MASK; bool masks as uint8 (a view)."""
    if attn_mask is None:
        return NO_MASK, False, (None, 0, 0, 0, 0)
    m4 = broadcast_mask(attn_mask, b, h_q, s_q, s_kv)
    is_bool = m4.dtype == torch.bool
    if is_bool:
        m4 = m4.view(torch.uint8)
    kind = KEY_MASK if m4.stride(1) == 0 and m4.stride(2) == 0 else TILE_MASK
    return kind, is_bool, (m4,) + tuple(m4.stride())

def _check(q, k, v, descales, v_is_transposed: bool) -> None:
    quant_q = descales[0] is None
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"FP8_TRITON: {name} must be a torch.Tensor, got {type(t).__name__}")
        if name == "q" and quant_q:
            if t.dtype not in (torch.bfloat16, torch.float16):
                raise TypeError(f"FP8_TRITON: with q_descale=None, q must be bfloat16 or float16 (quantized in the "
                                f"kernel), got {t.dtype}")
        elif t.dtype != torch.float8_e4m3fn:
            hint = " (or bf16/fp16 with q_descale=None)" if name == "q" else ""
            raise TypeError(f"FP8_TRITON: {name} must be float8_e4m3fn{hint}, got {t.dtype}")
        if t.dim() != 4 or t.stride(-1) != 1:
            raise ValueError(f"FP8_TRITON: {name} must be 4-D with a unit last stride, got shape {tuple(t.shape)} "
                             f"strides {t.stride()}")
    b, s_q, h_q, d = q.shape
    s_kv, h_kv = k.shape[1], k.shape[2]
    v_shape = (b, h_kv, d, s_kv) if v_is_transposed else (b, s_kv, h_kv, d)
    if k.shape[0] != b or k.shape[3] != d or tuple(v.shape) != v_shape:
        raise ValueError(f"FP8_TRITON: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match "
                         f"(B, S, H, D){' with v as V^T (B, H_kv, D, S_kv)' if v_is_transposed else ''}")
    if d not in HEAD_DIMS[AttentionBackend.FP8_TRITON]:
        raise ValueError(f"FP8_TRITON: head dim D={d} is not supported ({HEAD_DIMS[AttentionBackend.FP8_TRITON]})")
    if h_kv == 0 or h_q % h_kv:
        raise ValueError(f"FP8_TRITON: H_q={h_q} must be a multiple of H_kv={h_kv}")
    if s_kv == 0 and s_q > 0:
        raise ValueError(f"FP8_TRITON: S_kv=0 with S_q={s_q}: attention over no keys is undefined")
    if h_q > 65535 or b > 65535:  # grid axes 1 and 2
        raise ValueError(f"FP8_TRITON: H_q={h_q} and B={b} must be at most 65535 (CUDA grid limits)")
    for name, t in zip(("q_descale", "k_descale", "v_descale"), descales):
        if t is None and name == "q_descale":
            continue
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (b, h_kv):
            raise ValueError(f"FP8_TRITON: {name} must be float32 of shape (B, H_kv) = {(b, h_kv)}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if not all(t.device == q.device for t in (k, v, *descales) if t is not None):
        raise ValueError("FP8_TRITON: q, k, v and the descales must be on one device")
    if q.device.type == "cuda" and device_capability(q.device) < (8, 9):
        raise RuntimeError(f"FP8_TRITON needs FP8 tensor-core dots (SM89 or newer); {q.device} has compute "
                           f"capability {device_capability(q.device)}")


def _tma_ok(k: torch.Tensor, vt: torch.Tensor, d: int) -> bool:
    return (uses_tma(k.device) and d == next_power_of_2(d)
            and all(t.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in t.stride()[:3]) for t in (k, vt)))


def _triton_fp8_launch(q, k, v, q_descale, k_descale, v_descale, scale: float, causal: bool, attn_mask=None, *,
                       config: "triton.Config | None" = None, use_tma: "bool | None" = None,
                       v_is_transposed: bool = False) -> torch.Tensor:
    """The seam: bf16 (B, S_q, H_q, D) attention of e4m3 q, k, v (module docstring); with
    ``q_descale=None``, q is bf16/fp16 and the kernel quantizes it, one scale per block of BLOCK_M
    query rows of a head (the config's tile). ``config``: one
    config of ``CONFIGS`` instead of the autotuner's pick; ``use_tma``: None picks TMA where it works
    (compiled SM90+, 16-byte aligned rows, D a power of two), False forces pointer loads, True
    requires TMA; ``v_is_transposed``: v is already ``transpose_v(v)``."""
    descales = (q_descale, k_descale, v_descale)
    _check(q, k, v, descales, v_is_transposed)
    b, s_q, h_q, d = q.shape
    s_kv, h_kv = k.shape[1], k.shape[2]
    if attn_mask is not None:
        why = mask_shape_reason(attn_mask, b, h_q, s_q, s_kv, q.device)
        if why is not None:
            raise ValueError(f"FP8_TRITON: {why}")
    out = torch.empty((b, s_q, h_q, d), dtype=torch.bfloat16, device=q.device)
    if out.numel() == 0:
        return out
    kind, mask_bool, mask_args = mask_operand(attn_mask, b, h_q, s_q, s_kv)
    if mask_args[0] is None:  # no mask: any pointer (never read)
        mask_args = (q,) + mask_args[1:]
    vt = v if v_is_transposed else transpose_v(v)
    tma_ok = _tma_ok(k, vt, d)
    if use_tma and not tma_ok:
        raise ValueError("FP8_TRITON: use_tma=True needs TMA (compiled SM90+, 16-byte aligned rows, D a power of 2)")
    use_tma = tma_ok if use_tma is None else use_tma
    args = ((q, q.stride(0), q.stride(1), q.stride(2)), (k, k.stride(0), k.stride(1), k.stride(2)),
            (vt, vt.stride(0), vt.stride(1), vt.stride(2)), out,
            tuple(t if t.is_contiguous() else t.contiguous() for t in (k_descale if q_descale is None else q_descale,
                                                                        k_descale, v_descale)), mask_args,
            (h_q, h_kv, s_q, s_kv), float(scale) * _LOG2E)
    consts = dict(HEAD_DIM=d, BLOCK_D=next_power_of_2(d), CAUSAL=bool(causal), MASK_KIND=kind, MASK_BOOL=mask_bool,
                  NEG_SCALE=scale < 0, USE_TMA=use_tma, QUANT_Q=q_descale is None, Q_BUCKET=_bucket(s_q),
                  KV_BUCKET=_bucket(s_kv))

    def grid(meta):
        return (triton.cdiv(s_q, meta["BLOCK_M"]), h_q, b)

    if use_tma:
        with tma_allocator():
            launch(_fp8_attn_fwd, grid, args, consts, config)
    else:
        launch(_fp8_attn_fwd, grid, args, consts, config)
    return out
