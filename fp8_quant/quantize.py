"""Per-head FP8 (e4m3) quantization of Q, K and V with RoPE and the Hadamard transform fused in.

Semantics (see the package docstring for the public API):
- Values quantized = RoPE (Q, K only, when cos/sin are given) then Hadamard (by ``HadamardMode``), in fp32.
- One scale per (batch, KV head); for Q the max over the GQA group of H_q / H_kv query heads.
  scale = 448 / amax, descale = amax / 448 (both correctly rounded fp32), amax < 1e-12 -> scale 1,
  descale 1. Payload = cast_e4m3(x * scale), saturating at +-448, round to nearest even.
- Non-finite policy: a NaN anywhere in a (batch, group) makes amax NaN: descale NaN and the whole
  group's payload NaN. An Inf (and no NaN) makes amax inf: descale inf, scale NaN, payload NaN. We never
  clamp a non-finite amax to a finite scale, so the caller (and FA3, whose output will be NaN) sees it.

Kernel design ("two-pass", the reference path):
1. ``_qkv_amax_kernel``: one launch over (tensor, batch, head, S-chunk) for Q, K and V together; each
   program transforms its CHUNK_S x D slice in registers and writes one chunk amax.
2. ``_qkv_quant_kernel``: one launch over the same grid; each program reduces its group's chunk maxima
   (G * n_chunks floats, from L2), derives scale/descale, recomputes RoPE/Hadamard from the input and
   writes FP8. The first chunk program of each group writes the descale. Two launches in all; no
   intermediate tensor besides the chunk maxima.
"persistent" (``_qkv_persistent_kernel``): the two-pass work items walked by a cooperative grid of
num_sms * OCC co-resident programs in rounds; a program takes the amax of one item per round and
quantizes the item it read LOOKAHEAD rounds earlier, once the item's group has all its arrivals (an
atomic counter per group), so the second read of every element should come from L2, not DRAM.
Measured on an H200 (plain, B=1, H=32, D=128): 51% of the copy ceiling at S=16384 and 49% at 65536
against 58% and 61% for "two-pass" (per-round atomics and waits cost more than the DRAM read saved).
"single-read" (``_qkv_single_read_kernel``): a persistent, cooperative launch of num_sms * 2 co-resident
programs; rounds over the (batch, KV group)s of Q, then K, then V; in a round every program loads and
transforms its ROWS rows of the group into registers (each element read once), the programs combine the
group amax with a global atomic max plus an arrival counter (spin-wait; safe only because the cooperative
launch guarantees co-residency), then quantize from registers. It refuses (ValueError) when a slice would
exceed ``_SINGLE_READ_MAX_ELEMS`` per program. Under the interpreter, which runs programs one after
another, it runs ONE program that takes every group whole, so the spin-wait never waits.
``_impl="auto"`` runs ``_AUTO_IMPL`` (chosen from the GPU benchmark).

The kernels are compiled with ``enable_fp_fusion=False``: FMA contraction of RoPE's ``x*c + p*s`` would
change the fp32 rounding relative to the reference (``fp8_quant/reference.py``); the op is memory
bound, so the separate multiply costs nothing measurable.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from hadamard_kernels._triton_utils import autotune_configs, bucket, is_interpreter, next_power_of_2, num_sms

E4M3_MAX = 448.0
AMAX_EPS = 1e-12
_E4M3_MAX_C = tl.constexpr(448.0)
_AMAX_EPS_C = tl.constexpr(1e-12)
MAX_HADAMARD_DIM = 256
MAX_HEAD_DIM = 256
_IMPLS = ("auto", "two-pass", "persistent", "single-read")
# What "auto" (the public default) runs: set from the GPU benchmark (impls "two-pass" vs "single-read").
_AUTO_IMPL = "two-pass"
_LAYOUTS = ("BHSD", "BSHD")


class HadamardMode(str, enum.Enum):
    NONE = "none"
    QKV = "qkv"  # rotate Q, K and V by the same orthonormal transform (QK^T unchanged; rotate O back)
    V_ONLY = "v_only"  # rotate V only (rotate O back)


class QuantizedQKV(NamedTuple):
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_descale: torch.Tensor
    k_descale: torch.Tensor
    v_descale: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _max_nan(a, b):
    # max that propagates NaN (the default tl.maximum drops NaN on the GPU)
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _rows_transformed(x_ptr, row_off, pos, rmask, stride_d,
                      cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                      ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                      HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
                      INV_SQRT_D: tl.constexpr):
    # Rows given by their int64 offsets row_off [R] and positions pos [R] (RoPE angle rows) as fp32
    # [R, BLOCK_D] after RoPE (if ROPE) and the Hadamard transform (if HAD); masked rows/cols are 0.
    cols = tl.arange(0, BLOCK_D)
    mask = rmask[:, None] & (cols < HEAD_DIM)[None, :]
    x = tl.load(x_ptr + row_off[:, None] + cols[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)
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
        cs_off = pos.to(tl.int64)[:, None] * stride_cs + ccols[None, :] * stride_cd
        c = tl.load(cos_ptr + cs_off, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + cs_off, mask=mask, other=0.0).to(tl.float32)
        x = x * c + tl.where(neg[None, :], -p, p) * s
    if HAD:
        if HAS_SIGN:
            sgn = tl.load(sign_ptr + cols).to(tl.float32)
            x = x * sgn[None, :]
        # radix-2 butterfly in registers, half-sizes 1, 2, ..., D/2: (a, b) -> (a + b, a - b)
        for i in tl.static_range(LOG2_D):  # x.shape[0]: the row count, unchanged by every stage
            x = tl.reshape(x, [x.shape[0], BLOCK_D // (2 * (1 << i)), 2, (1 << i)])
            x = tl.permute(x, [0, 1, 3, 2])
            a, b = tl.split(x)
            x = tl.join(a + b, a - b)
            x = tl.permute(x, [0, 1, 3, 2])
            x = tl.reshape(x, [x.shape[0], BLOCK_D])
        x = x * INV_SQRT_D
    return x, mask


@triton.jit
def _load_transformed(x_ptr, base, stride_s, stride_d, s0, S,
                      cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                      ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                      HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
                      INV_SQRT_D: tl.constexpr):
    # Rows s0 .. s0 + BLOCK_S of one head (base = offset of (b, h, 0, 0)), transformed (see above).
    rows = s0 + tl.arange(0, BLOCK_S)
    row_off = base + rows.to(tl.int64) * stride_s
    x, mask = _rows_transformed(x_ptr, row_off, rows, rows < S, stride_d, cos_ptr, sin_ptr, stride_cs,
                                stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, ROPE, INTERLEAVED, COMPACT_CS, HAD,
                                HAS_SIGN, LOG2_D, INV_SQRT_D)
    return x, mask, row_off


@triton.jit
def _chunk_amax(x_ptr, stride_b, stride_h, stride_s, stride_d, H, S, n_chunks, local_pid, amax_ptr, G,
                cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr, INV_SQRT_D: tl.constexpr):
    # One program: amax of chunk c (CHUNK_S rows) of head (b, h), folded into amax_ptr[(b*H + h) // G]
    # (int32 bits of a non-negative float) by an atomic max.
    c = local_pid % n_chunks
    bh = local_pid // n_chunks
    h = bh % H
    b = bh // H
    base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        if s_begin + t * BLOCK_S < S:  # the last chunk of a head may be partial
            x, mask, row_off = _load_transformed(
                x_ptr, base, stride_s, stride_d, s_begin + t * BLOCK_S, S, cos_ptr, sin_ptr, stride_cs,
                stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD, HAS_SIGN,
                LOG2_D, INV_SQRT_D)
            acc = _max_nan(acc, tl.abs(x))
    # tl.max may drop NaN (GPU) and a custom-combine tl.reduce is slow under the interpreter:
    # reduce the NaN flag separately (acc is NaN-sticky per element).
    has_nan = tl.max(tl.max((acc != acc).to(tl.int32), 1), 0)
    amax = tl.where(has_nan > 0, float("nan"), tl.max(tl.max(acc, 1), 0))
    # Non-negative floats order like their int32 bit patterns, and a positive NaN (0x7fc00000) sorts
    # above +inf, so an integer atomic max is a NaN-propagating float max (tl.atomic_max on floats
    # would route NaN through its negative-value branch and lose it).
    bits = tl.where(amax != amax, 0x7FC00000, amax.to(tl.int32, bitcast=True))
    tl.atomic_max(amax_ptr + bh // G, bits, sem="relaxed")


@triton.jit
def _chunk_quant(x_ptr, stride_b, stride_h, stride_s, stride_d,
                 y_ptr, stride_yb, stride_yh, stride_ys,
                 H, S, n_chunks, local_pid, amax_ptr, G, descale_ptr,
                 cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                 ROPE: tl.constexpr, INTERLEAVED: tl.constexpr,
                 COMPACT_CS: tl.constexpr, HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
                 INV_SQRT_D: tl.constexpr, ATOMIC_READ: tl.constexpr = False):
    # One program: read the amax of the group of head (b, h) (phase 1's atomic max), then quantize
    # chunk c of head (b, h); the group's first head, chunk 0, writes the descale. ATOMIC_READ: read
    # the amax through L2 (an atomic), never from a possibly stale L1 line (the persistent kernel,
    # where the slot was written during this launch).
    c = local_pid % n_chunks
    bh = local_pid // n_chunks
    h = bh % H
    b = bh // H
    group = bh // G  # = b * (H / G) + h / G
    if ATOMIC_READ:
        amax = tl.atomic_add(amax_ptr + group, 0, sem="acquire").to(tl.float32, bitcast=True)
    else:
        amax = tl.load(amax_ptr + group).to(tl.float32, bitcast=True)
    tiny = amax < _AMAX_EPS_C
    big = tl.full([], _E4M3_MAX_C, tl.float32)
    scale = tl.where(tiny, 1.0, tl.math.div_rn(big, tl.where(tiny, 1.0, amax)))
    scale = tl.where(amax == float("inf"), float("nan"), scale)  # non-finite amax: payload NaN
    descale = tl.where(tiny, 1.0, tl.math.div_rn(amax, big))
    if (c == 0) & (h % G == 0):
        tl.store(descale_ptr + group, descale)
    base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    ybase = b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh
    cols = tl.arange(0, BLOCK_D)
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        s0 = s_begin + t * BLOCK_S
        if s0 < S:  # the last chunk of a head may be partial
            x, mask, row_off = _load_transformed(
                x_ptr, base, stride_s, stride_d, s0, S, cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                HEAD_DIM, BLOCK_D, BLOCK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD, HAS_SIGN, LOG2_D, INV_SQRT_D)
            rows = s0 + tl.arange(0, BLOCK_S)
            y = (x * scale).to(tl.float8e4nv)  # the GPU cast saturates to +-448 and keeps NaN
            tl.store(y_ptr + ybase + rows.to(tl.int64)[:, None] * stride_ys + cols[None, :], y, mask=mask)


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


# No S_BUCKET in the key: the work of one program is set by CHUNK_S (itself a power-of-two bucket of the
# total row count), so one tuning serves every S with the same chunk, and a benchmark compiles less.
_KEY = ["HEAD_DIM", "CHUNK_S", "ROPE", "INTERLEAVED", "COMPACT_CS", "HAD_QK", "HAD_V", "HAS_SIGN"]


@triton.jit
def _spin_until(cnt_ptr, target):
    # wait until the arrival counter reaches target (acquire: the arrivals' writes are visible after)
    seen = tl.atomic_add(cnt_ptr, 0, sem="acquire")
    while seen < target:
        seen = tl.atomic_add(cnt_ptr, 0, sem="acquire")


@triton.jit
def _item_amax(item, q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
               H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP,
               amax_q_ptr, amax_k_ptr, amax_v_ptr, cnt_q_ptr, cnt_k_ptr, cnt_v_ptr,
               cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
               ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
               HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
               INV_SQRT_D: tl.constexpr, SYNC: tl.constexpr):
    # Work item -> (tensor, batch, head, S-chunk): items 0 .. N_Q_PROGS are Q's, then K's, then V's.
    # Folds the chunk amax into its (batch, KV group) slot; SYNC: then arrives on the group's counter.
    if item < N_Q_PROGS:
        _chunk_amax(q_ptr, sqb, sqh, sqs, sqd, H_Q, S_Q, NC_Q, item, amax_q_ptr, GROUP, cos_ptr, sin_ptr,
                    stride_cs, stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED,
                    COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D)
        if SYNC:
            tl.atomic_add(cnt_q_ptr + (item // NC_Q) // GROUP, 1, sem="release")
    elif item < N_Q_PROGS + N_K_PROGS:
        local = item - N_Q_PROGS
        _chunk_amax(k_ptr, skb, skh, sks, skd, H_KV, S_KV, NC_KV, local, amax_k_ptr, 1, cos_ptr,
                    sin_ptr, stride_cs, stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE,
                    INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D)
        if SYNC:
            tl.atomic_add(cnt_k_ptr + local // NC_KV, 1, sem="release")
    else:
        local = item - N_Q_PROGS - N_K_PROGS
        _chunk_amax(v_ptr, svb, svh, svs, svd, H_KV, S_KV, NC_KV, local, amax_v_ptr, 1,
                    cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S,
                    False, INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, LOG2_D, INV_SQRT_D)
        if SYNC:
            tl.atomic_add(cnt_v_ptr + local // NC_KV, 1, sem="release")


@triton.jit
def _item_quant(item, q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
                yq_ptr, yqb, yqh, yqs, yk_ptr, ykb, ykh, yks, yv_ptr, yvb, yvh, yvs,
                H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP,
                amax_q_ptr, amax_k_ptr, amax_v_ptr, cnt_q_ptr, cnt_k_ptr, cnt_v_ptr, dq_ptr, dk_ptr, dv_ptr,
                cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
                INV_SQRT_D: tl.constexpr, SYNC: tl.constexpr):
    # Same item mapping as _item_amax: quantize the item with its group's amax; SYNC: first wait until
    # every item of the group has arrived, and read the amax through L2.
    if item < N_Q_PROGS:
        if SYNC:
            _spin_until(cnt_q_ptr + (item // NC_Q) // GROUP, GROUP * NC_Q)
        _chunk_quant(q_ptr, sqb, sqh, sqs, sqd, yq_ptr, yqb, yqh, yqs, H_Q, S_Q, NC_Q, item, amax_q_ptr,
                     GROUP, dq_ptr, cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, HEAD_DIM, BLOCK_D,
                     BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D,
                     INV_SQRT_D, SYNC)
    elif item < N_Q_PROGS + N_K_PROGS:
        local = item - N_Q_PROGS
        if SYNC:
            _spin_until(cnt_k_ptr + local // NC_KV, NC_KV)
        _chunk_quant(k_ptr, skb, skh, sks, skd, yk_ptr, ykb, ykh, yks, H_KV, S_KV, NC_KV, local,
                     amax_k_ptr, 1, dk_ptr, cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, HEAD_DIM,
                     BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D,
                     INV_SQRT_D, SYNC)
    else:
        local = item - N_Q_PROGS - N_K_PROGS
        if SYNC:
            _spin_until(cnt_v_ptr + local // NC_KV, NC_KV)
        _chunk_quant(v_ptr, svb, svh, svs, svd, yv_ptr, yvb, yvh, yvs, H_KV, S_KV, NC_KV, local,
                     amax_v_ptr, 1, dv_ptr, cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, HEAD_DIM,
                     BLOCK_D, BLOCK_S, CHUNK_S, False, INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, LOG2_D,
                     INV_SQRT_D, SYNC)


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _qkv_amax_kernel(
    q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
    H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP,
    amax_q_ptr, amax_k_ptr, amax_v_ptr,
    cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, S_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Phase 1. Grid: N_Q_PROGS (= B*H_Q*NC_Q) + N_K_PROGS + N_V_PROGS programs; program -> (tensor,
    # batch, head, S-chunk of CHUNK_S rows); atomically maxes the chunk's amax of the transformed values
    # into its (batch, KV group) slot. Max is idempotent, so autotuning's repeated runs need no reset.
    _item_amax(tl.program_id(0), q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs,
               svd, H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP, amax_q_ptr, amax_k_ptr,
               amax_v_ptr, amax_q_ptr, amax_k_ptr, amax_v_ptr, cos_ptr, sin_ptr, stride_cs, stride_cd,
               sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAD_V,
               HAS_SIGN, LOG2_D, INV_SQRT_D, False)


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _qkv_quant_kernel(
    q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
    yq_ptr, yqb, yqh, yqs, yk_ptr, ykb, ykh, yks, yv_ptr, yvb, yvh, yvs,
    H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP,
    amax_q_ptr, amax_k_ptr, amax_v_ptr, dq_ptr, dk_ptr, dv_ptr,
    cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, S_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Phase 2. Same grid as phase 1; program -> (tensor, batch, head, S-chunk): group amax from phase 1,
    # then recompute RoPE/Hadamard from the input and write e4m3 (output last dim contiguous).
    _item_quant(tl.program_id(0), q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs,
                svd, yq_ptr, yqb, yqh, yqs, yk_ptr, ykb, ykh, yks, yv_ptr, yvb, yvh, yvs, H_Q, H_KV, S_Q,
                S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP, amax_q_ptr, amax_k_ptr, amax_v_ptr,
                amax_q_ptr, amax_k_ptr, amax_v_ptr, dq_ptr, dk_ptr, dv_ptr, cos_ptr, sin_ptr, stride_cs,
                stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS,
                HAD_QK, HAD_V, HAS_SIGN, LOG2_D, INV_SQRT_D, False)


def _prune_persistent(configs, named_args, **kwargs):
    # The launch is cooperative: every program must be resident at once, or it fails ("too many blocks
    # in cooperative launch"). Keep at most 16K tile elements per SM (BLOCK_S * BLOCK_D * OCC).
    args = {**named_args, **kwargs}
    block_d = args["BLOCK_D"]
    keep = [c for c in _prune(configs, named_args, **kwargs)
            if c.kwargs["BLOCK_S"] * block_d * c.kwargs["OCC"] <= 16384]
    return keep or [min(configs, key=lambda c: (c.kwargs["OCC"], c.kwargs["BLOCK_S"]))]


# --- persistent two-phase design (second read from L2) ------------------------------------------

@triton.autotune(configs=autotune_configs([
    triton.Config({"BLOCK_S": bs, "OCC": occ}, num_warps=w, num_stages=2)
    for bs, w, occ in ((32, 4, 2), (32, 4, 4), (64, 8, 2), (64, 4, 2))]),
    key=_KEY, prune_configs_by={"early_config_prune": _prune_persistent},
    reset_to_zero=["scratch_ptr"],  # amax slots and arrival counters accumulate: zero before each trial
)
@triton.jit
def _qkv_persistent_kernel(
    q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
    yq_ptr, yqb, yqh, yqs, yk_ptr, ykb, ykh, yks, yv_ptr, yvb, yvh, yvs,
    H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, N_ITEMS, GROUP, N_GROUPS, MAX_GROUP_ITEMS,
    MIN_LOOKAHEAD, scratch_ptr, dq_ptr, dk_ptr, dv_ptr,
    cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, S_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr, BLOCK_S: tl.constexpr, OCC: tl.constexpr,
):
    # Persistent and cooperative: NP co-resident programs walk the two-pass work items (tensor, batch,
    # head, S-chunk; Q, then K, then V, each (batch, KV group)'s items contiguous) in rounds of NP
    # items. In iteration it a program takes the amax of item it*NP + pid (atomic max into the group's
    # slot, then an arrival on the group's counter) and quantizes item (it - LOOKAHEAD)*NP + pid once
    # every item of that group has arrived. That item was read from DRAM LOOKAHEAD rounds earlier
    # (~NP * CHUNK_S * D * 2 bytes per round), so the second read is served from L2: DRAM sees each
    # input element once. LOOKAHEAD = rounds a group can span, so a wait never needs a later round.
    # OCC (programs per SM) is read by the launcher's grid only. scratch: 3*N_GROUPS amax slots
    # (int32 float bits), then 3*N_GROUPS arrival counters.
    pid = tl.program_id(0)
    NP = tl.num_programs(0)
    n_rounds = tl.cdiv(N_ITEMS, NP)
    lookahead = tl.maximum(MIN_LOOKAHEAD, tl.cdiv(MAX_GROUP_ITEMS - 1, NP))
    amax_q = scratch_ptr
    amax_k = scratch_ptr + N_GROUPS
    amax_v = scratch_ptr + 2 * N_GROUPS
    cnt_q = scratch_ptr + 3 * N_GROUPS
    cnt_k = scratch_ptr + 4 * N_GROUPS
    cnt_v = scratch_ptr + 5 * N_GROUPS
    it = pid * 0  # an int32 tensor from the start (loop-carried)
    while it < n_rounds + lookahead:  # a while loop: the interpreter cannot range() over a runtime bound
        a = it * NP + pid
        if (it < n_rounds) & (a < N_ITEMS):
            _item_amax(a, q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
                       H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP, amax_q, amax_k, amax_v,
                       cnt_q, cnt_k, cnt_v, cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, HEAD_DIM, BLOCK_D,
                       BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAD_V, HAS_SIGN, LOG2_D,
                       INV_SQRT_D, True)
        u = (it - lookahead) * NP + pid
        if (it >= lookahead) & (u < N_ITEMS):
            _item_quant(u, q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
                        yq_ptr, yqb, yqh, yqs, yk_ptr, ykb, ykh, yks, yv_ptr, yvb, yvh, yvs, H_Q, H_KV, S_Q,
                        S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP, amax_q, amax_k, amax_v, cnt_q, cnt_k,
                        cnt_v, dq_ptr, dk_ptr, dv_ptr, cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                        HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAD_V,
                        HAS_SIGN, LOG2_D, INV_SQRT_D, True)
        it += 1


# --- single-read (persistent) design ----------------------------------------------------------

@triton.jit
def _group_round(x_ptr, stride_b, stride_h, stride_s, stride_d, y_ptr, stride_yb, stride_yh, stride_ys,
                 H, S, G, H_KV, g, pid, NP, amax_ptr, cnt_ptr, descale_ptr,
                 cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
                 ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                 HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr, INV_SQRT_D: tl.constexpr):
    # One program's share of one (batch, KV group) g: rows pid*ROWS .. of the group's G*S rows (G heads
    # of S rows each, head-major). Load + transform once into registers, fold the local amax into
    # amax_ptr[0] (int32 float bits, atomic max), arrive on cnt_ptr[0], spin until all NP programs
    # arrived, then quantize the registers. Needs all NP programs co-resident (cooperative launch).
    b = g // H_KV
    r = pid * ROWS + tl.arange(0, ROWS)
    rmask = r < G * S
    h = (g % H_KV) * G + r // S
    pos = r % S
    row_off = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + pos.to(tl.int64) * stride_s
    x, mask = _rows_transformed(x_ptr, row_off, pos, rmask, stride_d, cos_ptr, sin_ptr, stride_cs, stride_cd,
                                sign_ptr, HEAD_DIM, BLOCK_D, ROPE, INTERLEAVED, COMPACT_CS, HAD, HAS_SIGN,
                                LOG2_D, INV_SQRT_D)
    a = tl.abs(x)
    has_nan = tl.max(tl.max((a != a).to(tl.int32), 1), 0)
    amax = tl.where(has_nan > 0, float("nan"), tl.max(tl.max(a, 1), 0))
    bits = tl.where(amax != amax, 0x7FC00000, amax.to(tl.int32, bitcast=True))
    tl.atomic_max(amax_ptr, bits, sem="relaxed")
    tl.atomic_add(cnt_ptr, 1, sem="release")
    _spin_until(cnt_ptr, NP)
    amax = tl.atomic_max(amax_ptr, 0, sem="relaxed").to(tl.float32, bitcast=True)
    tiny = amax < _AMAX_EPS_C
    big = tl.full([], _E4M3_MAX_C, tl.float32)
    scale = tl.where(tiny, 1.0, tl.math.div_rn(big, tl.where(tiny, 1.0, amax)))
    scale = tl.where(amax == float("inf"), float("nan"), scale)
    descale = tl.where(tiny, 1.0, tl.math.div_rn(amax, big))
    if pid == 0:
        tl.store(descale_ptr + g, descale)
    y_off = b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh + pos.to(tl.int64) * stride_ys
    cols = tl.arange(0, BLOCK_D)
    tl.store(y_ptr + y_off[:, None] + cols[None, :], (x * scale).to(tl.float8e4nv), mask=mask)


@triton.autotune(
    configs=autotune_configs([triton.Config({}, num_warps=8), triton.Config({}, num_warps=4)]),
    key=["S_BUCKET", "HEAD_DIM", "ROWS", "ROPE", "INTERLEAVED", "COMPACT_CS", "HAD_QK",
                               "HAD_V", "HAS_SIGN"],
    reset_to_zero=["amax_ptr", "cnt_ptr"],  # atomics accumulate (arrival counters): zero before each trial
)
@triton.jit
def _qkv_single_read_kernel(
    q_ptr, sqb, sqh, sqs, sqd, k_ptr, skb, skh, sks, skd, v_ptr, svb, svh, svs, svd,
    yq_ptr, yqb, yqh, yqs, yk_ptr, ykb, ykh, yks, yv_ptr, yvb, yvh, yvs,
    H_Q, H_KV, S_Q, S_KV, GROUP, N_GROUPS, NP, amax_ptr, cnt_ptr, dq_ptr, dk_ptr, dv_ptr,
    cos_ptr, sin_ptr, stride_cs, stride_cd, sign_ptr, S_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr,
):
    # Persistent, NP co-resident programs. Rounds: the N_GROUPS (= B*H_KV) Q groups, then the K heads,
    # then the V heads; in each round every program takes ROWS rows of the round's group (each element
    # read from memory once), the programs agree on the group's amax through global atomics + an
    # arrival counter, and each quantizes its registers. amax_ptr/cnt_ptr: 3*N_GROUPS int32 zeros.
    pid = tl.program_id(0)
    rnd = pid * 0  # an int32 tensor from the start (loop-carried)
    while rnd < 3 * N_GROUPS:  # a while loop: the interpreter cannot range() over a runtime bound
        if rnd < N_GROUPS:
            _group_round(q_ptr, sqb, sqh, sqs, sqd, yq_ptr, yqb, yqh, yqs, H_Q, S_Q, GROUP, H_KV, rnd, pid, NP,
                         amax_ptr + rnd, cnt_ptr + rnd, dq_ptr, cos_ptr, sin_ptr, stride_cs, stride_cd,
                         sign_ptr, HEAD_DIM, BLOCK_D, ROWS, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN,
                         LOG2_D, INV_SQRT_D)
        elif rnd < 2 * N_GROUPS:
            _group_round(k_ptr, skb, skh, sks, skd, yk_ptr, ykb, ykh, yks, H_KV, S_KV, 1, H_KV, rnd - N_GROUPS,
                         pid, NP, amax_ptr + rnd, cnt_ptr + rnd, dk_ptr, cos_ptr, sin_ptr, stride_cs,
                         stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, ROWS, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK,
                         HAS_SIGN, LOG2_D, INV_SQRT_D)
        else:
            _group_round(v_ptr, svb, svh, svs, svd, yv_ptr, yvb, yvh, yvs, H_KV, S_KV, 1, H_KV,
                         rnd - 2 * N_GROUPS, pid, NP, amax_ptr + rnd, cnt_ptr + rnd, dv_ptr, cos_ptr, sin_ptr,
                         stride_cs, stride_cd, sign_ptr, HEAD_DIM, BLOCK_D, ROWS, False, INTERLEAVED,
                         COMPACT_CS, HAD_V, HAS_SIGN, LOG2_D, INV_SQRT_D)
        rnd += 1


# Registers one program may spend on its slice (bf16 input held as fp32 after the transform): beyond
# this the single-read design would spill, and "single-read" refuses (use "two-pass").
_SINGLE_READ_MAX_ELEMS = 256 * 128
# Programs per SM in the persistent grid. The launch is cooperative, so if the compiled kernel cannot
# keep this many programs per SM resident the launch fails with a CUDA error instead of deadlocking.
# Measured on an H200: with 2 per SM the launch failed ("too many blocks in cooperative launch") for
# D = 128 slices of 256 rows; one per SM always fits when the kernel fits on an SM at all.
_SINGLE_READ_OCCUPANCY = 1


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

def _bhsd_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    sb, s1, s2, sd = x.stride()
    return (sb, s1, s2, sd) if layout == "BHSD" else (sb, s2, s1, sd)


def _dims(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    b, a1, a2, d = x.shape
    return (b, a1, a2, d) if layout == "BHSD" else (b, a2, a1, d)


def _chunk_rows(total_rows: int, device: torch.device, override: Optional[int]) -> int:
    """Rows of one S-chunk (a power of two): enough programs to fill the GPU several times over,
    as few chunk maxima as that allows."""
    if override is not None:
        override = int(override)
        if override < 32 or override & (override - 1):
            raise ValueError(f"_chunk_s must be a power of two >= 32, got {override}")
        return override
    return _pow2_rows(total_rows // (16 * num_sms(device)))


def _pow2_rows(rows: int) -> int:
    """The power of two at or below rows, clamped to 32 .. 512 (chunk sizes)."""
    rows = 1 << max(0, int(rows).bit_length() - 1)
    return min(512, max(32, rows))


@functools.lru_cache(maxsize=None)
def _inv_sqrt(d: int) -> float:
    """1/sqrt(d) rounded to fp32 (the constant the kernels multiply by), computed once per d."""
    return float(torch.tensor(1.0 / math.sqrt(d), dtype=torch.float32))


def _check_tensor(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be bfloat16 or float16, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, H, S, D) or (B, S, H, D), got shape {tuple(x.shape)}")


def _check_hadamard_dim(d: int) -> None:
    if d > MAX_HADAMARD_DIM or d & (d - 1):
        raise ValueError(f"the Hadamard transform needs a head dim that is a power of two <= "
                         f"{MAX_HADAMARD_DIM}, got D={d}")


def _check_rope(cos, sin, d: int, s_needed: int, device) -> None:
    if (cos is None) != (sin is None):
        raise ValueError("give both cos and sin, or neither")
    if cos is None:
        return
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, the inputs on {device}")
        if t.dim() != 2 or t.shape[1] not in (d, d // 2) or t.shape[0] < s_needed:
            raise ValueError(f"{name} must have shape (S, D) = (>= {s_needed}, {d}) or (S, D/2) = "
                             f"(>= {s_needed}, {d // 2}), got {tuple(t.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin shapes differ: {tuple(cos.shape)} vs {tuple(sin.shape)}")
    if d % 2:
        raise ValueError(f"RoPE needs an even head dim, got D={d}")


def _sign_or_none(sign_vector, d: int, device, need: bool):
    if sign_vector is None or not need:
        return None
    if not isinstance(sign_vector, torch.Tensor):
        raise TypeError(f"sign_vector must be a torch.Tensor, got {type(sign_vector).__name__}")
    if sign_vector.shape != (d,):
        raise ValueError(f"sign_vector must have shape ({d},), got {tuple(sign_vector.shape)}")
    if sign_vector.device != device:
        raise ValueError(f"sign_vector is on {sign_vector.device}, the inputs on {device}")
    return sign_vector.to(torch.float32).contiguous()


def _launch(tensors, group: int, layout: str, cos, sin, rope_interleaved: bool, had_qk: bool, had_v: bool,
            sign_vector, impl: str, chunk_s: Optional[int]):
    """tensors: [q] or [q, k, v] (validated). Returns (payloads list, descales list)."""
    if impl not in _IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {_IMPLS}")
    q = tensors[0]
    device = q.device
    b, h_q, s_q, d = _dims(q, layout)
    if len(tensors) == 3:
        _, h_kv, s_kv, _ = _dims(tensors[1], layout)
    else:
        h_kv, s_kv = h_q // group, 0
    outs = [torch.empty(t.shape, dtype=torch.float8_e4m3fn, device=device) for t in tensors]
    descales = [torch.empty((b, h_kv), dtype=torch.float32, device=device) for _ in tensors]
    sizes = [(h_q, s_q)] + [(h_kv, s_kv)] * (len(tensors) - 1)
    if b * h_kv == 0:
        return outs, descales
    for (h, s), ds in zip(sizes, descales):
        if s == 0 or d == 0:  # amax of nothing is 0 -> descale 1 (and no programs for this tensor)
            ds.fill_(1.0)
    if d == 0 or (s_q == 0 and s_kv == 0):
        return outs, descales

    rope = cos is not None
    compact = bool(rope and cos.shape[1] != d)
    stride_cs, stride_cd = (cos.stride(0), cos.stride(1)) if rope else (0, 0)
    if rope and sin.stride() != cos.stride():
        sin = sin.contiguous()
        cos = cos.contiguous()
        stride_cs, stride_cd = cos.stride()
    if impl == "auto":
        impl = _AUTO_IMPL
        if impl == "single-read" and (len(tensors) != 3 or s_q == 0 or s_kv == 0 or _single_read_plan(
                b, h_q, h_kv, s_q, s_kv, d, device) is None):
            impl = "two-pass"
    if impl == "single-read" and len(tensors) == 3 and s_q > 0 and s_kv > 0:
        return _launch_single_read(tensors, outs, descales, group, layout, cos, sin, rope_interleaved,
                                   had_qk, had_v, sign_vector)
    if impl == "single-read":
        raise ValueError("the single-read design quantizes Q, K and V together and needs S_q, S_kv > 0")
    total_rows = b * (h_q * s_q + 2 * h_kv * s_kv)
    if impl == "persistent" and chunk_s is None and not is_interpreter():
        chunk = _persistent_chunk_rows(d, device)
    else:
        chunk = _chunk_rows(total_rows, device, chunk_s)
    nc_q = triton.cdiv(s_q, chunk)
    nc_kv = triton.cdiv(s_kv, chunk)
    n_q, n_kv = b * h_q * nc_q, b * h_kv * nc_kv
    n_k = n_kv if len(tensors) == 3 else 0
    n_v = n_kv if len(tensors) == 3 else 0
    n_groups = b * h_kv
    amax = torch.zeros(len(tensors) * n_groups, dtype=torch.int32, device=device)  # float bits, max = 0.0
    amax_q = amax[:n_groups]
    amax_k = amax[n_groups:2 * n_groups] if len(tensors) == 3 else amax_q
    amax_v = amax[2 * n_groups:] if len(tensors) == 3 else amax_q
    if len(tensors) == 3:
        k, v = tensors[1], tensors[2]
        yk, yv = outs[1], outs[2]
        dk, dv = descales[1], descales[2]
    else:  # unused pointers (no K/V programs): any valid tensor
        k = v = q
        yk = yv = outs[0]
        dk = dv = descales[0]
    sign = sign_vector
    block_d = next_power_of_2(d)
    consts = dict(
        HEAD_DIM=d, BLOCK_D=block_d, CHUNK_S=chunk, ROPE=rope, INTERLEAVED=bool(rope_interleaved),
        COMPACT_CS=compact, HAD_QK=bool(had_qk), HAD_V=bool(had_v),
        HAS_SIGN=sign is not None,
        LOG2_D=int(math.log2(block_d)), INV_SQRT_D=_inv_sqrt(d),
    )
    cos_arg = cos if rope else q
    sin_arg = sin if rope else q
    sign_arg = sign if sign is not None else q
    grid = (n_q + n_k + n_v,)
    s_bucket = bucket(max(s_q, s_kv))
    in_args = [q, *_bhsd_strides(q, layout), k, *_bhsd_strides(k, layout), v, *_bhsd_strides(v, layout)]
    dims = [h_q, h_kv, s_q, s_kv, nc_q, nc_kv, n_q, n_k, group]
    rope_args = [cos_arg, sin_arg, stride_cs, stride_cd, sign_arg, s_bucket]
    if impl == "persistent":
        out_args = []
        for y in (outs[0], yk, yv):
            out_args += [y, *_bhsd_strides(y, layout)[:3]]
        scratch = torch.zeros(6 * n_groups, dtype=torch.int32, device=device)  # amax slots, counters
        n_items = n_q + n_k + n_v
        max_group_items = max(group * nc_q, nc_kv if len(tensors) == 3 else 0)
        if is_interpreter() or device.type != "cuda":
            pgrid = (1,)  # programs run one after another there: one program, no waiting
            extra = {}
        else:
            sms = num_sms(device)
            pgrid = lambda meta: (min(sms * meta["OCC"], n_items),)  # noqa: E731
            extra = {"launch_cooperative_grid": True}
        _qkv_persistent_kernel[pgrid](
            *in_args, *out_args, h_q, h_kv, s_q, s_kv, nc_q, nc_kv, n_q, n_k, n_items, group, n_groups,
            max_group_items, _PERSISTENT_MIN_LOOKAHEAD, scratch, descales[0], dk, dv, *rope_args, enable_fp_fusion=False, **consts, **extra)
        return outs, descales
    _qkv_amax_kernel[grid](*in_args, *dims, amax_q, amax_k, amax_v, *rope_args, enable_fp_fusion=False,
                           **consts)
    out_args = []
    for y in (outs[0], yk, yv):
        out_args += [y, *_bhsd_strides(y, layout)[:3]]
    _qkv_quant_kernel[grid](*in_args, *out_args, *dims, amax_q, amax_k, amax_v,
                            descales[0], dk, dv, *rope_args, enable_fp_fusion=False, **consts)
    return outs, descales


# Persistent design: bytes of 16-bit input one round covers (num_sms * 4 items), and the fewest rounds
# between an item's amax read and its quantize read.
_PERSISTENT_ROUND_BYTES = 16 << 20
_PERSISTENT_MIN_LOOKAHEAD = 1


def _persistent_chunk_rows(d: int, device: torch.device) -> int:
    """Rows of one S-chunk in the persistent design: one round of work (num_sms * 4 programs x one
    chunk each, 16-bit input) covers ~8 MiB, so the rounds in flight between a chunk's two reads stay
    well inside L2 (50 MiB on H100/H200)."""
    return _pow2_rows(_PERSISTENT_ROUND_BYTES // (num_sms(device) * 4 * next_power_of_2(d) * 2))


def _single_read_plan(b, h_q, h_kv, s_q, s_kv, d, device) -> Optional[tuple[int, int]]:
    """(programs, rows per program) for the single-read design, or None where a group's slice would
    not fit the register budget. Under the interpreter programs run one after another, so a spin-wait
    could never finish: one program takes every group whole (no waiting needed)."""
    group = h_q // h_kv
    max_rows = max(group * s_q, s_kv)
    block_d = next_power_of_2(d)
    if is_interpreter() or device.type != "cuda":
        np_ = 1
    else:
        np_ = num_sms(device) * _SINGLE_READ_OCCUPANCY
    rows = next_power_of_2(triton.cdiv(max_rows, np_))
    if not is_interpreter() and rows * block_d > _SINGLE_READ_MAX_ELEMS:
        return None
    np_ = min(np_, triton.cdiv(max_rows, rows))
    return np_, rows


def _launch_single_read(tensors, outs, descales, group, layout, cos, sin, rope_interleaved, had_qk, had_v, sign):
    q, k, v = tensors
    device = q.device
    b, h_q, s_q, d = _dims(q, layout)
    _, h_kv, s_kv, _ = _dims(k, layout)
    plan = _single_read_plan(b, h_q, h_kv, s_q, s_kv, d, device)
    if plan is None:
        raise ValueError(f"single-read: a (batch, KV group) slice of {max(group * s_q, s_kv)} rows x D={d} does "
                         f"not fit on chip across {num_sms(device) * _SINGLE_READ_OCCUPANCY} programs; "
                         f"use the two-pass design")
    np_, rows = plan
    n_groups = b * h_kv
    scratch = torch.zeros(6 * n_groups, dtype=torch.int32, device=device)  # one memset for both
    amax, cnt = scratch[:3 * n_groups], scratch[3 * n_groups:]
    rope = cos is not None
    compact = bool(rope and cos.shape[1] != d)
    if rope and sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    stride_cs, stride_cd = cos.stride() if rope else (0, 0)
    block_d = next_power_of_2(d)
    in_args = [q, *_bhsd_strides(q, layout), k, *_bhsd_strides(k, layout), v, *_bhsd_strides(v, layout)]
    out_args = []
    for y in outs:
        out_args += [y, *_bhsd_strides(y, layout)[:3]]
    extra = {} if is_interpreter() else {"launch_cooperative_grid": True}
    _qkv_single_read_kernel[(np_,)](
        *in_args, *out_args, h_q, h_kv, s_q, s_kv, group, n_groups, np_, amax, cnt, *descales,
        cos if rope else q, sin if rope else q, stride_cs, stride_cd, sign if sign is not None else q,
        bucket(max(s_q, s_kv)),
        HEAD_DIM=d, BLOCK_D=block_d, ROWS=rows, ROPE=rope, INTERLEAVED=bool(rope_interleaved), COMPACT_CS=compact,
        HAD_QK=bool(had_qk), HAD_V=bool(had_v), HAS_SIGN=sign is not None, LOG2_D=int(math.log2(block_d)),
        INV_SQRT_D=_inv_sqrt(d), enable_fp_fusion=False, **extra)
    return outs, descales


def _validate_qkv(q, k, v, layout):
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    bq, hq, sq, dq = _dims(q, layout)
    bk, hk, sk, dk = _dims(k, layout)
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if bq != bk or dq != dk:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} ({layout}) must share batch and head dim")
    if dq > MAX_HEAD_DIM:
        raise ValueError(f"head dim must be <= {MAX_HEAD_DIM}, got D={dq}")
    if hk == 0 and hq != 0 or (hk and hq % hk):
        raise ValueError(f"H_q={hq} must be a multiple of H_kv={hk} (GQA)")
    return bq, hq, hk, sq, sk, dq


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------

def _quantize_qkv_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, cos: Optional[torch.Tensor],
                     sin: Optional[torch.Tensor], rope_interleaved: bool, hadamard: str,
                     sign_vector: Optional[torch.Tensor], impl: str
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, hq, hk, sq, sk, d = _validate_qkv(q, k, v, layout)
    mode = HadamardMode(hadamard)
    if mode != HadamardMode.NONE:
        _check_hadamard_dim(d)
    _check_rope(cos, sin, d, max(sq, sk), q.device)
    sign = _sign_or_none(sign_vector, d, q.device, mode != HadamardMode.NONE)
    group = hq // hk if hk else 1
    outs, ds = _launch([q, k, v], group, layout, cos, sin, rope_interleaved, mode == HadamardMode.QKV,
                       mode != HadamardMode.NONE, sign, impl, None)
    return outs[0], outs[1], outs[2], ds[0], ds[1], ds[2]


# The custom op is what torch.compile sees; eager calls run the same function without the dispatcher
# round trip (measured at ~0.1-0.3 ms of host time per call, more than the kernels take at S = 4096).
_quantize_qkv_op = torch.library.custom_op("fp8_quant::quantize_qkv", mutates_args=())(_quantize_qkv_impl)


@_quantize_qkv_op.register_fake
def _(q, k, v, layout, cos, sin, rope_interleaved, hadamard, sign_vector, impl):
    b = q.shape[0]
    hk = k.shape[1] if layout == "BHSD" else k.shape[2]
    f8 = torch.float8_e4m3fn
    ds = [q.new_empty((b, hk), dtype=torch.float32) for _ in range(3)]
    return (q.new_empty(q.shape, dtype=f8), k.new_empty(k.shape, dtype=f8), v.new_empty(v.shape, dtype=f8), *ds)


def _quantize_per_head_impl(x: torch.Tensor, group_size: int, layout: str, cos: Optional[torch.Tensor],
                          sin: Optional[torch.Tensor], rope_interleaved: bool, hadamard: bool,
                          sign_vector: Optional[torch.Tensor], chunk_s: Optional[int]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    _check_tensor("x", x)
    b, h, s, d = _dims(x, layout)
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim must be <= {MAX_HEAD_DIM}, got D={d}")
    if group_size < 1 or h % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the head count H={h}")
    if hadamard:
        _check_hadamard_dim(d)
    _check_rope(cos, sin, d, s, x.device)
    sign = _sign_or_none(sign_vector, d, x.device, hadamard)
    outs, ds = _launch([x], group_size, layout, cos, sin, rope_interleaved, hadamard, False, sign, "two-pass",
                       chunk_s)
    return outs[0], ds[0]


_quantize_per_head_op = torch.library.custom_op("fp8_quant::quantize_per_head", mutates_args=())(
    _quantize_per_head_impl)


@_quantize_per_head_op.register_fake
def _(x, group_size, layout, cos, sin, rope_interleaved, hadamard, sign_vector, chunk_s):
    h = x.shape[1] if layout == "BHSD" else x.shape[2]
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], h // group_size),
                                                                        dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

def _mode(hadamard) -> HadamardMode:
    try:
        return HadamardMode(getattr(hadamard, "value", hadamard))
    except ValueError:
        raise ValueError(f"hadamard must be one of {[m.value for m in HadamardMode]}, got {hadamard!r}") from None


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "BHSD",
                 cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                 rope_interleaved: bool = False, hadamard: HadamardMode | str = HadamardMode.NONE,
                 sign_vector: Optional[torch.Tensor] = None, _impl: str = "auto") -> QuantizedQKV:
    """Quantize Q, K, V to e4m3 with one float32 descale per (batch, KV head).

    q: (B, H_q, S_q, D), k and v: (B, H_kv, S_kv, D) in ``layout`` ("BHSD" or "BSHD"), bf16/fp16, any
    strides; H_q a multiple of H_kv. Q's scale is shared by each GQA group (max over its H_q/H_kv heads).
    RoPE (cos, sin of shape (S, D) or (S, D/2), S >= max(S_q, S_kv)) is applied to Q and K in fp32
    (NeoX half-split pairing, or interleaved pairs with ``rope_interleaved``); V is never RoPE'd.
    ``hadamard``: NONE, QKV (rotate Q, K, V by diag(s) H_D / sqrt(D), s = ``sign_vector`` or ones), or
    V_ONLY; D a power of two <= 256 then. Payloads keep the layout (contiguous); descales (B, H_kv).
    ``_impl`` is private: the kernel design ("two-pass"; "auto" picks the measured-faster one).
    """
    mode = _mode(hadamard)
    op = _quantize_qkv_op if torch.compiler.is_compiling() else _quantize_qkv_impl
    res = op(q, k, v, layout, cos, sin, bool(rope_interleaved), mode.value, sign_vector, _impl)
    return QuantizedQKV(*res)


def quantize_per_head(x: torch.Tensor, group_size: int = 1, *, layout: str = "BHSD",
                      cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                      rope_interleaved: bool = False, hadamard: bool | HadamardMode | str = False,
                      sign_vector: Optional[torch.Tensor] = None, _chunk_s: Optional[int] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one (B, H, S, D) / (B, S, H, D) tensor with one scale per (batch, group of
    ``group_size`` consecutive heads). Returns (payload e4m3 in ``layout``, descale (B, H/group_size) fp32).
    ``hadamard``: True (or HadamardMode.QKV / V_ONLY) rotates by diag(s) H_D / sqrt(D)."""
    if isinstance(hadamard, (HadamardMode, str)):
        hadamard = _mode(hadamard) != HadamardMode.NONE
    op = _quantize_per_head_op if torch.compiler.is_compiling() else _quantize_per_head_impl
    return op(x, int(group_size), layout, cos, sin, bool(rope_interleaved), bool(hadamard),
                                 sign_vector, _chunk_s)


def dequantize_per_head(x_fp8: torch.Tensor, descale: torch.Tensor, *, layout: str = "BHSD", group_size: int = 1,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_fp8 * descale (one per (batch, head group)), in ``dtype`` (default float32). The inverse
    Hadamard, if one was applied, is the caller's: multiply by (diag(s) H_D / sqrt(D))^T."""
    if x_fp8.dtype != torch.float8_e4m3fn:
        raise TypeError(f"x_fp8 must be float8_e4m3fn, got {x_fp8.dtype}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    b, h, s, d = _dims(x_fp8, layout)
    if descale.shape != (b, h // max(group_size, 1)) or group_size < 1 or h % group_size:
        raise ValueError(f"descale must have shape (B, H / group_size) = ({b}, {h // max(group_size, 1)}), "
                         f"got {tuple(descale.shape)} for x {tuple(x_fp8.shape)} ({layout}), group_size={group_size}")
    ds = descale.to(torch.float32).repeat_interleave(group_size, dim=1)
    ds = ds[:, :, None, None] if layout == "BHSD" else ds[:, None, :, None]
    return (x_fp8.to(torch.float32) * ds).to(dtype)
