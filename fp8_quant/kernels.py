"""The Triton kernels of ``fp8_quant`` and their launcher (the seam that picks chunk size and config).

Design ("two-pass"), two launches over one grid of (tensor, batch, head, S-chunk) programs, Q's
programs first, then K's, then V's:
1. ``_qkv_amax_kernel``: each program applies RoPE/Hadamard to its CHUNK_S x D slice in registers and
   folds the slice's amax into its (tensor, batch, KV group) slot of one int32 buffer (``abs_bits``:
   |x| as int32 bits, an integer max that propagates NaN, then ``atomic_max`` into the zeroed slot).
2. ``_qkv_quant_kernel``: each program reads its group's amax, derives scale/descale
   (``e4m3_scales``), recomputes RoPE/Hadamard from the input and writes e4m3 (``to_e4m3``). The
   first chunk of the group's first head writes the descale.
No intermediate tensor besides the amax slots. Inputs take any strides (passed as a tuple
``(ptr, stride_b, stride_h, stride_s, stride_d)`` per tensor); the FP8 outputs are ours and
contiguous in the given ``LAYOUT``, so their strides follow from the sizes.

Smoothing (``SMOOTH_K`` / ``SMOOTH_V``, K and V only): quantize y - c instead of y, c the per-(batch, KV
head, channel) mean over S of the transformed values y (exact for attention: a K shift changes each
score row by a constant, a V shift is added back to the output by the consumer). Phase 1 also writes,
per program of a smoothed tensor, its chunk's per-channel fp32 sum (one row of ``sums``, no atomics:
the reduction below is deterministic) and folds its per-channel max of y and of -y into the group's
zeroed int32 slots (``_ordered_key``: an unsigned integer max is the float max; max is
order-independent). Phase 2's programs of a smoothed tensor each reduce their group's chunk sums in
a fixed order (``_group_mean_amax``), c = sum / S (fp32, correctly rounded), and take as amax
max over channels of max(fl(max - c), fl(c - min)), which equals max |fl(y - c)| exactly (rounding
is monotonic), unless the plain amax is non-finite (NaN/Inf: the non-finite policy is unchanged).
Chunk 0 of each group writes c (the V mean is returned to the caller). No extra launch; the stats
buffers exist only when smoothing is on.

The kernels are compiled with ``enable_fp_fusion=False``: FMA contraction of RoPE's ``x*c + p*s`` would
change the fp32 rounding relative to ``fp8_quant/reference.py`` (payloads and descales are compared bit
for bit); the op is memory bound, so the separate multiply costs nothing measurable.

``quantize_launch(tensors, group, cos, sin, spec, *, chunk_s=None, config=None, kernel="auto")`` is the
one launcher: ``chunk_s`` forces the rows of an S-chunk, ``config`` (a ``triton.Config``) forces the
config of both kernels (``hadamard_kernels.runtime.launch``), ``kernel`` picks these kernels or their
Gluon twins (``fp8_quant.gluon_kernels``: the same programs and bytes, the D = 128 transform with one
layout change instead of seven), which "auto" runs on sm90 where a Hadamard transform is on. Public
functions (``fp8_quant.quantize``) never pass them.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import triton
import triton.language as tl

from fp8_quant import gluon_kernels as GK
from fp8_quant.gluon_kernels import eligible as gluon_eligible
from hadamard_kernels.runtime import autotune_do_bench, autotune_configs, launch, next_power_of_2, num_sms
from hadamard_kernels.triton_helpers import abs_bits, butterfly_stages, e4m3_scales, to_e4m3

if TYPE_CHECKING:  # the launcher only reads the spec's fields
    from fp8_quant.quantize import QuantSpec


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _load_transformed(x, base, s0, S, rope, sign_ptr,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                      ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                      HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
                      INV_SQRT_D: tl.constexpr):
    # x = (ptr, stride_b, stride_h, stride_s, stride_d); base = offset of (b, h, 0, 0). Rows s0 ..
    # s0 + BLOCK_S of that head as fp32 [BLOCK_S, BLOCK_D] after RoPE (if ROPE, angle row = position)
    # and the Hadamard transform (if HAD); masked rows/cols are 0. rope = (cos, sin, stride_cs, stride_cd).
    x_ptr = x[0]
    stride_s = x[3]
    stride_d = x[4]
    rows = s0 + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_D)
    row_off = base + rows.to(tl.int64) * stride_s
    mask = (rows < S)[:, None] & (cols < HEAD_DIM)[None, :]
    y = tl.load(x_ptr + row_off[:, None] + cols[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        if INTERLEAVED:
            pcols = cols ^ 1
            neg = (cols % 2) == 0
            if COMPACT_CS:
                ccols = cols // 2
            else:
                ccols = cols
        else:
            pcols = tl.where(cols < HEAD_DIM // 2, cols + HEAD_DIM // 2, cols - HEAD_DIM // 2)
            neg = cols < HEAD_DIM // 2
            if COMPACT_CS:
                ccols = cols % (HEAD_DIM // 2)
            else:
                ccols = cols
        # the partner element comes from the same cache lines (L1 hit), not from DRAM again
        p = tl.load(x_ptr + row_off[:, None] + pcols[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)
        cs_off = rows.to(tl.int64)[:, None] * rope[2] + ccols[None, :] * rope[3]
        c = tl.load(rope[0] + cs_off, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(rope[1] + cs_off, mask=mask, other=0.0).to(tl.float32)
        y = y * c + tl.where(neg[None, :], -p, p) * s
    if HAD:
        if HAS_SIGN:
            sgn = tl.load(sign_ptr + cols).to(tl.float32)
            y = y * sgn[None, :]
        y = butterfly_stages(y, BLOCK_S, BLOCK_D, LOG2_D) * INV_SQRT_D
    return y, mask


@triton.jit
def _ordered_key(v):
    # fp32 -> uint32 key whose unsigned order is the float order (-inf < -0 < +0 < +inf); every float
    # but one NaN pattern has a key > 0, so an unsigned atomic max into a zeroed slot is a float max.
    b = v.to(tl.int32, bitcast=True)
    return (tl.where(b < 0, b ^ 0x7FFFFFFF, b) ^ -2147483648).to(tl.uint32, bitcast=True)


@triton.jit
def _key_value(k):
    # int32 bits of an ``_ordered_key`` -> the fp32 value
    s = k ^ -2147483648
    return tl.where(s < 0, s ^ 0x7FFFFFFF, s).to(tl.float32, bitcast=True)


@triton.jit
def _chunk_geometry(sizes, local_pid, TENSOR: tl.constexpr):
    # (heads H, rows S, chunks per head, scale group G, chunk c, head index b*H + h) of a program of
    # tensor TENSOR (0 Q, 1 K, 2 V). sizes: see _qkv_amax_kernel.
    if TENSOR == 0:
        H = sizes[0]
        S = sizes[2]
        n_chunks = sizes[4]
        G = sizes[8]
    else:
        H = sizes[1]
        S = sizes[3]
        n_chunks = sizes[5]
        G = 1
    return H, S, n_chunks, G, local_pid % n_chunks, local_pid // n_chunks


@triton.jit
def _chunk_amax(x, sizes, bufs, local_pid, rope, sign_ptr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr, INV_SQRT_D: tl.constexpr,
                TENSOR: tl.constexpr, SMOOTH: tl.constexpr):
    # One program: amax of chunk c (CHUNK_S rows) of head (b, h) of tensor TENSOR, as int32 bits
    # (abs_bits: an integer max propagates NaN), folded into its group's slot by atomic max. SMOOTH:
    # also the chunk's per-channel sum (row TENSOR-1, local_pid of ``sums``) and the per-channel max of
    # y and of -y folded into the group's key slots (bufs: see _qkv_amax_kernel).
    H, S, n_chunks, G, c, bh = _chunk_geometry(sizes, local_pid, TENSOR)
    n_groups = sizes[9]
    amax_slot = bufs[0] + TENSOR * n_groups + bh // G
    h = bh % H
    b = bh // H
    base = b.to(tl.int64) * x[1] + h.to(tl.int64) * x[2]
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.int32)
    col_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    col_max = tl.full([BLOCK_D], float("-inf"), tl.float32)
    col_neg_max = tl.full([BLOCK_D], float("-inf"), tl.float32)
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        if s_begin + t * BLOCK_S < S:  # the last chunk of a head may be partial
            y, mask = _load_transformed(x, base, s_begin + t * BLOCK_S, S, rope, sign_ptr, HEAD_DIM, BLOCK_D,
                                        BLOCK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD, HAS_SIGN, LOG2_D, INV_SQRT_D)
            acc = tl.maximum(acc, abs_bits(y))
            if SMOOTH:  # masked elements are 0: harmless in the sum, excluded from the extremes
                col_sum += tl.sum(y, 0)
                col_max = tl.maximum(col_max, tl.max(tl.where(mask, y, float("-inf")), 0))
                col_neg_max = tl.maximum(col_neg_max, tl.max(tl.where(mask, -y, float("-inf")), 0))
    tl.atomic_max(amax_slot, tl.max(tl.max(acc, 1), 0), sem="relaxed")
    if SMOOTH:
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < HEAD_DIM
        row = (TENSOR - 1) * sizes[7] + local_pid  # sums: (2, N_K_PROGS, HEAD_DIM)
        tl.store(bufs[2] + row.to(tl.int64) * HEAD_DIM + cols, col_sum, mask=cmask)
        key_row = bufs[0] + 3 * n_groups + ((TENSOR - 1) * n_groups + bh).to(tl.int64) * (2 * HEAD_DIM)
        keys = key_row.to(tl.pointer_type(tl.uint32)) + cols
        tl.atomic_max(keys, _ordered_key(col_max), mask=cmask, sem="relaxed")
        tl.atomic_max(keys + HEAD_DIM, _ordered_key(col_neg_max), mask=cmask, sem="relaxed")


@triton.jit
def _group_mean_amax(sums_ptr, keys_ptr, n_chunks, S, amax,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, RED_C: tl.constexpr):
    # The group's mean c (fp32 [BLOCK_D], 0 past HEAD_DIM) and the amax of its shifted values.
    # sums_ptr: the group's first chunk-sum row (n_chunks rows of HEAD_DIM); keys_ptr: its max(y) and
    # max(-y) key rows; amax: the plain amax. Fixed order: lane r of a [RED_C, BLOCK_D] accumulator adds
    # rows r, r + RED_C, ... in turn, then one tree over the RED_C lanes.
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < HEAD_DIM
    lanes = tl.arange(0, RED_C)
    acc = tl.zeros([RED_C, BLOCK_D], dtype=tl.float32)
    for c0 in range(0, n_chunks, RED_C):
        r = c0 + lanes
        acc += tl.load(sums_ptr + r.to(tl.int64)[:, None] * HEAD_DIM + cols[None, :],
                       mask=(r < n_chunks)[:, None] & cmask[None, :], other=0.0)
    mean = tl.math.div_rn(tl.sum(acc, 0), tl.zeros([BLOCK_D], dtype=tl.float32) + S)  # S: exact below 2^24
    y_max = _key_value(tl.load(keys_ptr + cols, mask=cmask, other=0))
    y_neg_max = _key_value(tl.load(keys_ptr + HEAD_DIM + cols, mask=cmask, other=0))  # -min
    shifted = tl.max(tl.where(cmask, tl.maximum(y_max - mean, mean + y_neg_max), 0.0), 0)
    # a non-finite plain amax (NaN or Inf in the group) keeps the non-finite policy
    return mean, tl.where(amax < float("inf"), shifted, amax)


@triton.jit
def _chunk_quant(x, y_ptr, sizes, bufs, local_pid, rope, sign_ptr,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                 ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                 HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr, INV_SQRT_D: tl.constexpr,
                 LAYOUT: tl.constexpr, TENSOR: tl.constexpr, SMOOTH: tl.constexpr, RED_C: tl.constexpr):
    # One program: quantize chunk c of head (b, h) with the amax of its group (phase 1); the group's
    # first head, chunk 0, writes the descale (and, SMOOTH, the mean). y_ptr: contiguous e4m3 output in
    # LAYOUT, last dim HEAD_DIM. SMOOTH: the group's mean c and shifted amax, then y - c is quantized.
    H, S, n_chunks, G, c, bh = _chunk_geometry(sizes, local_pid, TENSOR)
    h = bh % H
    b = bh // H
    group = bh // G  # = b * (H / G) + h / G
    n_groups = sizes[9]
    amax = tl.load(bufs[0] + TENSOR * n_groups + group).to(tl.float32, bitcast=True)
    cols = tl.arange(0, BLOCK_D)
    if SMOOTH:
        slot = ((TENSOR - 1) * n_groups + group).to(tl.int64)
        mean, amax = _group_mean_amax(bufs[2] + ((TENSOR - 1) * sizes[7] + group * n_chunks).to(tl.int64) * HEAD_DIM,
                                      bufs[0] + 3 * n_groups + slot * (2 * HEAD_DIM), n_chunks, S, amax, HEAD_DIM,
                                      BLOCK_D, RED_C)
        if c == 0:
            tl.store(bufs[3] + slot * HEAD_DIM + cols, mean, mask=cols < HEAD_DIM)
    scale, descale = e4m3_scales(amax)
    if (c == 0) & (h % G == 0):
        tl.store(bufs[1] + TENSOR * n_groups + group, descale)
    base = b.to(tl.int64) * x[1] + h.to(tl.int64) * x[2]
    if LAYOUT == "BHSD":  # (B, H, S, D): row stride D
        ybase = (b.to(tl.int64) * H + h) * S * HEAD_DIM
        ys = HEAD_DIM
    else:  # (B, S, H, D): row stride H * D
        ybase = (b.to(tl.int64) * S * H + h) * HEAD_DIM
        ys = H * HEAD_DIM
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        s0 = s_begin + t * BLOCK_S
        if s0 < S:  # the last chunk of a head may be partial
            y, mask = _load_transformed(x, base, s0, S, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, ROPE,
                                        INTERLEAVED, COMPACT_CS, HAD, HAS_SIGN, LOG2_D, INV_SQRT_D)
            if SMOOTH:
                y = y - mean[None, :]
            rows = s0 + tl.arange(0, BLOCK_S)
            tl.store(y_ptr + ybase + rows.to(tl.int64)[:, None] * ys + cols[None, :], to_e4m3(y, scale), mask=mask)


def _configs():
    # Four configs (every new autotune key compiles all of them): BLOCK_S 32/64 x 4/8 warps, 2 stages.
    # The first is the one the interpreter (and LOWPREC_AUTOTUNE=first) uses.
    return autotune_configs([triton.Config({"BLOCK_S": bs}, num_warps=w, num_stages=2)
                             for bs, w in ((32, 4), (64, 8), (64, 4), (32, 8))])


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    chunk, block_d = args["CHUNK_S"], args["BLOCK_D"]
    keep = [c for c in configs if c.kwargs["BLOCK_S"] <= chunk and c.kwargs["BLOCK_S"] * block_d <= 16384]
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_S"])]


# No sequence length in the key: the work of one program is set by CHUNK_S (itself a power-of-two bucket of
# the total row count), so one tuning serves every S with the same chunk, and a benchmark compiles less.
_KEY = ["HEAD_DIM", "CHUNK_S", "ROPE", "INTERLEAVED", "COMPACT_CS", "HAD_QK", "HAD_V", "HAS_SIGN", "SMOOTH_K",
        "SMOOTH_V"]


@triton.autotune(do_bench=autotune_do_bench, configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _qkv_amax_kernel(
    q, k, v, sizes, bufs, rope, sign_ptr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr, SMOOTH_K: tl.constexpr, SMOOTH_V: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Phase 1. q/k/v = (ptr, stride_b, stride_h, stride_s, stride_d); sizes = (H_Q, H_KV, S_Q, S_KV, NC_Q,
    # NC_KV, N_Q_PROGS, N_K_PROGS, GROUP, N_GROUPS). Grid: N_Q_PROGS (= B*H_Q*NC_Q) + 2 * N_K_PROGS
    # programs; program -> (tensor, batch, head, S-chunk). bufs = (int32 slots, descales, sums, means):
    # the int32 slots are zeros: 3 * N_GROUPS amax slots (Q's, K's, V's), then, when smoothing, the
    # keys (2 tensors K/V, N_GROUPS, max y / max -y, HEAD_DIM); sums: fp32 (2, N_K_PROGS, HEAD_DIM).
    # Max is idempotent and the sums are overwritten, so autotuning's repeated runs need no reset.
    N_Q_PROGS = sizes[6]
    N_K_PROGS = sizes[7]
    pid = tl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_amax(q, sizes, bufs, pid, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED,
                    COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D, 0, False)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_amax(k, sizes, bufs, pid - N_Q_PROGS, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE,
                    INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D, 1, SMOOTH_K)
    else:
        _chunk_amax(v, sizes, bufs, pid - N_Q_PROGS - N_K_PROGS, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S,
                    CHUNK_S, False, INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, LOG2_D, INV_SQRT_D, 2, SMOOTH_V)


@triton.autotune(do_bench=autotune_do_bench, configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _qkv_quant_kernel(
    q, k, v, out, sizes, bufs, rope, sign_ptr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr, LAYOUT: tl.constexpr, SMOOTH_K: tl.constexpr, SMOOTH_V: tl.constexpr,
    RED_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Phase 2. Same grid and arguments as phase 1, plus out = (yq_ptr, yk_ptr, yv_ptr) (contiguous e4m3 in
    # LAYOUT); bufs[1]: 3 * N_GROUPS fp32 descales (Q's, K's, V's), bufs[3]: fp32 means (2, N_GROUPS,
    # HEAD_DIM) of the smoothed tensors; program -> (tensor, batch, head, S-chunk): group amax from
    # phase 1, then recompute RoPE/Hadamard from the input and write e4m3.
    N_Q_PROGS = sizes[6]
    N_K_PROGS = sizes[7]
    pid = tl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_quant(q, out[0], sizes, bufs, pid, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE,
                     INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D, LAYOUT, 0, False, RED_C)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_quant(k, out[1], sizes, bufs, pid - N_Q_PROGS, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S,
                     ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D, LAYOUT, 1, SMOOTH_K, RED_C)
    else:
        _chunk_quant(v, out[2], sizes, bufs, pid - N_Q_PROGS - N_K_PROGS, rope, sign_ptr, HEAD_DIM, BLOCK_D,
                     BLOCK_S, CHUNK_S, False, INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, LOG2_D, INV_SQRT_D, LAYOUT,
                     2, SMOOTH_V, RED_C)


# ---------------------------------------------------------------------------------------------
# Launcher (the seam)
# ---------------------------------------------------------------------------------------------

def bhsd_dims(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """(B, H, S, D) of a 4-D tensor in ``layout`` ("BHSD" or "BSHD")."""
    b, a1, a2, d = x.shape
    return (b, a1, a2, d) if layout == "BHSD" else (b, a2, a1, d)


def _in_arg(x: torch.Tensor, layout: str) -> tuple:
    sb, s1, s2, sd = x.stride()
    return (x, sb, s1, s2, sd) if layout == "BHSD" else (x, sb, s2, s1, sd)


def _chunk_rows(total_rows: int, device: torch.device, chunk_s: Optional[int]) -> int:
    """Rows of one S-chunk (a power of two): ``chunk_s`` if given, else enough programs to fill the
    GPU several times over with as few chunk maxima as that allows (32 .. 512)."""
    if chunk_s is not None:
        chunk_s = int(chunk_s)
        if chunk_s < 32 or chunk_s & (chunk_s - 1):
            raise ValueError(f"chunk_s must be a power of two >= 32, got {chunk_s}")
        return chunk_s
    rows = total_rows // (16 * num_sms(device))
    rows = 1 << max(0, int(rows).bit_length() - 1)
    return min(512, max(32, rows))


@functools.lru_cache(maxsize=None)
def _inv_sqrt(d: int) -> float:
    """1/sqrt(d) rounded to fp32 (the constant the kernels multiply by), computed once per d."""
    return float(torch.tensor(1.0 / math.sqrt(d), dtype=torch.float32))


@functools.lru_cache(maxsize=1024)
def _consts(d: int, chunk: int, layout: str, rope: bool, interleaved: bool, compact_cs: bool, had_qk: bool,
            had_v: bool, has_sign: bool, smooth_k: bool = False, smooth_v: bool = False) -> tuple[dict, dict]:
    """The constexprs of the amax kernel and of the quantize kernel, built once per combination."""
    block_d = next_power_of_2(d)
    consts = dict(HEAD_DIM=d, BLOCK_D=block_d, CHUNK_S=chunk, ROPE=rope, INTERLEAVED=interleaved,
                  COMPACT_CS=compact_cs, HAD_QK=had_qk, HAD_V=had_v, HAS_SIGN=has_sign,
                  LOG2_D=int(math.log2(block_d)), INV_SQRT_D=_inv_sqrt(d), SMOOTH_K=smooth_k, SMOOTH_V=smooth_v,
                  enable_fp_fusion=False)
    # RED_C: chunk-sum rows reduced at once by a smoothed program (a [RED_C, BLOCK_D] fp32 tile, 2048
    # elements); fixed per head dim, so the mean's summation order does not depend on the config.
    return consts, {**consts, "LAYOUT": layout, "RED_C": max(1, 2048 // block_d)}


def quantize_launch(tensors: Sequence[torch.Tensor], group: int, cos: Optional[torch.Tensor],
                    sin: Optional[torch.Tensor], spec: "QuantSpec", *, chunk_s: Optional[int] = None,
                    config: Optional[triton.Config] = None, kernel: str = "auto") -> tuple:
    """Quantize ``tensors`` = [q] or [q, k, v] (validated by the caller, in ``spec.layout``); Q's scale is
    shared by ``group`` consecutive heads. Returns ([payloads], [descales (B, H_kv)]), and when
    ``spec.smooth_k`` or ``spec.smooth_v`` (three tensors only) a third item (k_mean, v_mean): the
    fp32 (B, H_kv, D) means subtracted before quantization (None for a tensor not smoothed). RoPE
    (``spec.rope``, cos/sin given) applies to Q and K, the Hadamard transform to Q and K if
    ``spec.had_qk``, to V if ``spec.had_v``, with ``spec.signs`` (or ones). ``chunk_s``: rows per
    S-chunk (a power of two >= 32); ``config``: the ``triton.Config`` both kernels run with (None:
    autotuned); ``kernel``: "triton" (these kernels), "gluon" (``fp8_quant.gluon_kernels``, the same
    bits; ValueError where it cannot run) or "auto" (Gluon where a Hadamard transform is on,
    ``gluon_kernels.eligible`` holds and the config is None or a Gluon one, else Triton). Tests and
    benchmarks only.

    Host work per call (it runs on every eager call): the payloads, the descales, the zeroed amax slots,
    two launches; with smoothing, two more buffers (chunk sums, means)."""
    if kernel not in ("auto", "triton", "gluon"):
        raise ValueError(f"kernel must be 'auto', 'triton' or 'gluon', got {kernel!r}")
    layout = spec.layout
    q = tensors[0]
    device = q.device
    b, h_q, s_q, d = bhsd_dims(q, layout)
    n_t = len(tensors)
    qkv = n_t == 3
    smooth = spec.smooth_k or spec.smooth_v
    if smooth and not qkv:
        raise ValueError("smoothing applies to K and V: quantize_launch needs [q, k, v]")
    h_kv, s_kv = (bhsd_dims(tensors[1], layout)[1:3]) if qkv else (h_q // group, 0)
    # auto: Gluon where a Hadamard transform runs (H200, S = 16384: 0.81x of plain's speed against 0.50x
    # for Hadamard, 0.47x against 0.35x with RoPE); plain and RoPE-only calls stay on the Triton kernels
    # (plain: the same time; RoPE only: Triton 4% faster there)
    hadamard = spec.had_qk or spec.had_v
    gluon_config = config is not None and "LOG_T" in config.kwargs
    if kernel == "auto":
        use_gluon = (config is None or gluon_config) and hadamard and gluon_eligible(tensors, d, smooth)
    else:
        use_gluon = kernel == "gluon"
        if use_gluon and not gluon_eligible(tensors, d, smooth):
            raise ValueError(f"the Gluon quantizer runs on sm90 GPUs, compiled, for D a power of two in [16, 256] "
                             f"with contiguous last dims and no smoothing; got D={d}, device {device}, "
                             f"smooth={smooth}")
    if config is not None and gluon_config != use_gluon:
        why = "" if kernel != "auto" else (" (auto runs the Gluon kernels only where a Hadamard transform is on "
                                           "and gluon_kernels.eligible holds)")
        raise ValueError(f"config {config} is not a config of the {'Gluon' if use_gluon else 'Triton'} kernels "
                         f"this call runs{why}")
    chunk = _chunk_rows(b * (h_q * s_q + 2 * h_kv * s_kv), device, chunk_s)
    if use_gluon:
        if config is not None and not GK.fits(config, d, chunk):
            raise ValueError(f"config {config} does not fit D={d} with chunks of {chunk} rows "
                             f"(see fp8_quant.gluon_kernels.CONFIGS)")
    elif config is not None and config.kwargs["BLOCK_S"] > chunk:
        raise ValueError(f"config BLOCK_S={config.kwargs['BLOCK_S']} exceeds the chunk of {chunk} rows")
    n_groups = b * h_kv
    outs = [torch.empty(t.shape, dtype=torch.float8_e4m3fn, device=device) for t in tensors]
    ds_buf = torch.empty(n_t * n_groups, dtype=torch.float32, device=device)  # written by phase 2
    descales = list(ds_buf.view(n_t, b, h_kv).unbind(0))
    means = None
    if smooth:  # written by phase 2 (chunk 0 of each smoothed group); the mean of no rows is 0
        means = (torch.zeros if s_kv == 0 else torch.empty)((2, b, h_kv, d), dtype=torch.float32, device=device)
        result = (outs, descales, (means[0] if spec.smooth_k else None, means[1] if spec.smooth_v else None))
    else:
        result = (outs, descales)
    if n_groups == 0:
        return result
    for s, ds in zip((s_q, s_kv, s_kv)[:n_t], descales):
        if s == 0 or d == 0:  # amax of nothing is 0 -> descale 1 (and no programs for this tensor)
            ds.fill_(1.0)
    if d == 0 or (s_q == 0 and s_kv == 0):
        return result

    nc_q, nc_kv = (s_q + chunk - 1) // chunk, (s_kv + chunk - 1) // chunk
    n_q, n_k = b * h_q * nc_q, (b * h_kv * nc_kv if qkv else 0)
    if spec.rope:
        if sin.stride() != cos.stride():
            cos, sin = cos.contiguous(), sin.contiguous()
        rope = (cos, sin, cos.stride(0), cos.stride(1))
    else:
        rope = (q, q, 0, 0)  # unused pointers
    sign = spec.signs._cached(device) if spec.signs is not None else q
    q_arg = _in_arg(q, layout)
    k_arg, v_arg = (_in_arg(tensors[1], layout), _in_arg(tensors[2], layout)) if qkv else (q_arg, q_arg)
    out_arg = tuple(outs) if qkv else (outs[0],) * 3  # without K/V there are no K/V programs
    sizes = (h_q, h_kv, s_q, s_kv, nc_q, nc_kv, n_q, n_k, group, n_groups)
    consts, consts_quant = _consts(d, chunk, layout, spec.rope, spec.interleaved, spec.compact_cs, spec.had_qk,
                                   spec.had_v, spec.signs is not None, spec.smooth_k, spec.smooth_v)
    grid = (n_q + 2 * n_k,)
    if use_gluon:
        GK.gluon_launch(grid, (q_arg, k_arg, v_arg, out_arg, sizes, ds_buf, rope, sign), n_t * n_groups, layout,
                        consts, config)
        return result
    # |x| bits (max = 0.0), then with smoothing the (K, V) x group x (max y, max -y) x D key slots
    slots = torch.zeros(n_t * n_groups + (4 * n_groups * d if smooth else 0), dtype=torch.int32, device=device)
    sums = torch.empty(2 * n_k * d, dtype=torch.float32, device=device) if smooth else ds_buf
    bufs = (slots, ds_buf, sums, means if smooth else ds_buf)
    launch(_qkv_amax_kernel, grid, (q_arg, k_arg, v_arg, sizes, bufs, rope, sign), consts, config)
    launch(_qkv_quant_kernel, grid, (q_arg, k_arg, v_arg, out_arg, sizes, bufs, rope, sign), consts_quant, config)
    return result
