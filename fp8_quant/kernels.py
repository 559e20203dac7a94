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

The kernels are compiled with ``enable_fp_fusion=False``: FMA contraction of RoPE's ``x*c + p*s`` would
change the fp32 rounding relative to ``fp8_quant/reference.py`` (payloads and descales are compared bit
for bit); the op is memory bound, so the separate multiply costs nothing measurable.

``quantize_launch(tensors, group, cos, sin, spec, *, chunk_s=None, config=None)`` is the one launcher:
``chunk_s`` forces the rows of an S-chunk, ``config`` (a ``triton.Config``) forces the config of both
kernels (``hadamard_kernels.runtime.launch``). Public functions (``fp8_quant.quantize``) never pass them.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import triton
import triton.language as tl

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
def _chunk_amax(x, H, S, n_chunks, local_pid, amax_ptr, G, rope, sign_ptr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr, INV_SQRT_D: tl.constexpr):
    # One program: amax of chunk c (CHUNK_S rows) of head (b, h) of x (H heads of S rows), as int32
    # bits (abs_bits: an integer max propagates NaN), folded into amax_ptr[(b*H + h) // G] by atomic max.
    c = local_pid % n_chunks
    bh = local_pid // n_chunks
    h = bh % H
    b = bh // H
    base = b.to(tl.int64) * x[1] + h.to(tl.int64) * x[2]
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.int32)
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        if s_begin + t * BLOCK_S < S:  # the last chunk of a head may be partial
            y, mask = _load_transformed(x, base, s_begin + t * BLOCK_S, S, rope, sign_ptr, HEAD_DIM, BLOCK_D,
                                        BLOCK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD, HAS_SIGN, LOG2_D, INV_SQRT_D)
            acc = tl.maximum(acc, abs_bits(y))
    tl.atomic_max(amax_ptr + bh // G, tl.max(tl.max(acc, 1), 0), sem="relaxed")


@triton.jit
def _chunk_quant(x, y_ptr, H, S, n_chunks, local_pid, amax_ptr, G, descale_ptr, rope, sign_ptr,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                 ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
                 HAD: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr, INV_SQRT_D: tl.constexpr,
                 LAYOUT: tl.constexpr):
    # One program: quantize chunk c of head (b, h) with the amax of its group (phase 1); the group's
    # first head, chunk 0, writes the descale. y_ptr: contiguous e4m3 output in LAYOUT, last dim HEAD_DIM.
    c = local_pid % n_chunks
    bh = local_pid // n_chunks
    h = bh % H
    b = bh // H
    group = bh // G  # = b * (H / G) + h / G
    amax = tl.load(amax_ptr + group).to(tl.float32, bitcast=True)
    scale, descale = e4m3_scales(amax)
    if (c == 0) & (h % G == 0):
        tl.store(descale_ptr + group, descale)
    base = b.to(tl.int64) * x[1] + h.to(tl.int64) * x[2]
    if LAYOUT == "BHSD":  # (B, H, S, D): row stride D
        ybase = (b.to(tl.int64) * H + h) * S * HEAD_DIM
        ys = HEAD_DIM
    else:  # (B, S, H, D): row stride H * D
        ybase = (b.to(tl.int64) * S * H + h) * HEAD_DIM
        ys = H * HEAD_DIM
    cols = tl.arange(0, BLOCK_D)
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        s0 = s_begin + t * BLOCK_S
        if s0 < S:  # the last chunk of a head may be partial
            y, mask = _load_transformed(x, base, s0, S, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, ROPE,
                                        INTERLEAVED, COMPACT_CS, HAD, HAS_SIGN, LOG2_D, INV_SQRT_D)
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
_KEY = ["HEAD_DIM", "CHUNK_S", "ROPE", "INTERLEAVED", "COMPACT_CS", "HAD_QK", "HAD_V", "HAS_SIGN"]


@triton.autotune(do_bench=autotune_do_bench, configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _qkv_amax_kernel(
    q, k, v, sizes, amax_ptr, rope, sign_ptr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Phase 1. q/k/v = (ptr, stride_b, stride_h, stride_s, stride_d); sizes = (H_Q, H_KV, S_Q, S_KV, NC_Q,
    # NC_KV, N_Q_PROGS, N_K_PROGS, GROUP, N_GROUPS). Grid: N_Q_PROGS (= B*H_Q*NC_Q) + 2 * N_K_PROGS
    # programs; program -> (tensor, batch, head, S-chunk). amax_ptr: 3 * N_GROUPS int32 zeros (Q's slots,
    # K's, V's). Max is idempotent, so autotuning's repeated runs need no reset.
    H_Q, H_KV, S_Q, S_KV = sizes[0], sizes[1], sizes[2], sizes[3]
    NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS = sizes[4], sizes[5], sizes[6], sizes[7]
    GROUP, N_GROUPS = sizes[8], sizes[9]
    pid = tl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_amax(q, H_Q, S_Q, NC_Q, pid, amax_ptr, GROUP, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S,
                    CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_amax(k, H_KV, S_KV, NC_KV, pid - N_Q_PROGS, amax_ptr + N_GROUPS, 1, rope, sign_ptr, HEAD_DIM,
                    BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D,
                    INV_SQRT_D)
    else:
        _chunk_amax(v, H_KV, S_KV, NC_KV, pid - N_Q_PROGS - N_K_PROGS, amax_ptr + 2 * N_GROUPS, 1, rope,
                    sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, False, INTERLEAVED, COMPACT_CS, HAD_V,
                    HAS_SIGN, LOG2_D, INV_SQRT_D)


@triton.autotune(do_bench=autotune_do_bench, configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _qkv_quant_kernel(
    q, k, v, out, sizes, amax_ptr, descale_ptr, rope, sign_ptr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, COMPACT_CS: tl.constexpr,
    HAD_QK: tl.constexpr, HAD_V: tl.constexpr, HAS_SIGN: tl.constexpr, LOG2_D: tl.constexpr,
    INV_SQRT_D: tl.constexpr, LAYOUT: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Phase 2. Same grid and arguments as phase 1, plus out = (yq_ptr, yk_ptr, yv_ptr) (contiguous e4m3 in
    # LAYOUT) and descale_ptr (3 * N_GROUPS fp32: Q's, K's, V's); program -> (tensor, batch, head,
    # S-chunk): group amax from phase 1, then recompute RoPE/Hadamard from the input and write e4m3.
    H_Q, H_KV, S_Q, S_KV = sizes[0], sizes[1], sizes[2], sizes[3]
    NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS = sizes[4], sizes[5], sizes[6], sizes[7]
    GROUP, N_GROUPS = sizes[8], sizes[9]
    pid = tl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_quant(q, out[0], H_Q, S_Q, NC_Q, pid, amax_ptr, GROUP, descale_ptr, rope, sign_ptr, HEAD_DIM,
                     BLOCK_D, BLOCK_S, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D,
                     INV_SQRT_D, LAYOUT)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_quant(k, out[1], H_KV, S_KV, NC_KV, pid - N_Q_PROGS, amax_ptr + N_GROUPS, 1,
                     descale_ptr + N_GROUPS, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, ROPE,
                     INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, LOG2_D, INV_SQRT_D, LAYOUT)
    else:
        _chunk_quant(v, out[2], H_KV, S_KV, NC_KV, pid - N_Q_PROGS - N_K_PROGS, amax_ptr + 2 * N_GROUPS, 1,
                     descale_ptr + 2 * N_GROUPS, rope, sign_ptr, HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK_S, False,
                     INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, LOG2_D, INV_SQRT_D, LAYOUT)


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


def quantize_launch(tensors: Sequence[torch.Tensor], group: int, cos: Optional[torch.Tensor],
                    sin: Optional[torch.Tensor], spec: "QuantSpec", *, chunk_s: Optional[int] = None,
                    config: Optional[triton.Config] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Quantize ``tensors`` = [q] or [q, k, v] (validated by the caller, in ``spec.layout``); Q's scale is
    shared by ``group`` consecutive heads. Returns ([payloads], [descales (B, H_kv)]). RoPE (``spec.rope``,
    cos/sin given) applies to Q and K, the Hadamard transform to Q and K if ``spec.had_qk``, to V if
    ``spec.had_v``, with ``spec.signs`` (or ones). ``chunk_s``: rows per S-chunk (a power of two >= 32);
    ``config``: the ``triton.Config`` both kernels run with (None: autotuned). Tests and benchmarks only."""
    layout = spec.layout
    q = tensors[0]
    device = q.device
    b, h_q, s_q, d = bhsd_dims(q, layout)
    qkv = len(tensors) == 3
    h_kv, s_kv = (bhsd_dims(tensors[1], layout)[1:3]) if qkv else (h_q // group, 0)
    n_groups = b * h_kv
    outs = [torch.empty(t.shape, dtype=torch.float8_e4m3fn, device=device) for t in tensors]
    ds_buf = torch.empty(len(tensors) * n_groups, dtype=torch.float32, device=device)
    descales = [ds_buf[i * n_groups:(i + 1) * n_groups].view(b, h_kv) for i in range(len(tensors))]
    if n_groups == 0:
        return outs, descales
    for s, ds in zip([s_q, s_kv, s_kv][:len(tensors)], descales):
        if s == 0 or d == 0:  # amax of nothing is 0 -> descale 1 (and no programs for this tensor)
            ds.fill_(1.0)
    if d == 0 or (s_q == 0 and s_kv == 0):
        return outs, descales

    chunk = _chunk_rows(b * (h_q * s_q + 2 * h_kv * s_kv), device, chunk_s)
    if config is not None and config.kwargs["BLOCK_S"] > chunk:
        raise ValueError(f"config BLOCK_S={config.kwargs['BLOCK_S']} exceeds the chunk of {chunk} rows")
    nc_q, nc_kv = triton.cdiv(s_q, chunk), triton.cdiv(s_kv, chunk)
    n_q, n_k = b * h_q * nc_q, (b * h_kv * nc_kv if qkv else 0)
    amax = torch.zeros(len(tensors) * n_groups, dtype=torch.int32, device=device)  # float bits, max = 0.0
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
    block_d = next_power_of_2(d)
    consts = dict(HEAD_DIM=d, BLOCK_D=block_d, CHUNK_S=chunk, ROPE=spec.rope, INTERLEAVED=spec.interleaved,
                  COMPACT_CS=spec.compact_cs, HAD_QK=spec.had_qk, HAD_V=spec.had_v,
                  HAS_SIGN=spec.signs is not None, LOG2_D=int(math.log2(block_d)), INV_SQRT_D=_inv_sqrt(d),
                  enable_fp_fusion=False)
    grid = (n_q + 2 * n_k,)
    launch(_qkv_amax_kernel, grid, (q_arg, k_arg, v_arg, sizes, amax, rope, sign), consts, config)
    launch(_qkv_quant_kernel, grid, (q_arg, k_arg, v_arg, out_arg, sizes, amax, ds_buf, rope, sign),
           {**consts, "LAYOUT": layout}, config)
    return outs, descales
