"""The two-pass QKV quantizer of ``fp8_quant.kernels`` in Gluon, for Hopper (sm90): the same programs,
arithmetic and bits, with the Hadamard transform as the layout chain of
``hadamard_kernels.gluon_butterfly`` instead of plain Triton's one layout change per radix-2 stage.

Why. In the plain-Triton kernels the D = 128 transform costs 7 layout changes of the fp32 tile per
pass; with two passes Hadamard quantization ran at half the speed of plain quantization (0.50x at
S = 16384 on an H200), at the plain butterfly's own rate of transformed elements per second. Here a
program's [BLOCK_S, D] tile is a 1-d tile of T = BLOCK_S * D elements in the linear layouts of
``gluon_butterfly.plan`` (row bits above the log2 D column bits):

- L0 (load/store): 8 consecutive columns per thread (16-byte loads), a warp reads 512 contiguous
  bytes; RoPE's partner of an interleaved pair is the neighbouring register (no second load), the
  half-rotation partner is a second load of the same cache lines (as in plain Triton).
- The stages run in ascending bit order (the plain kernel's, so payloads, descales and amax bits are
  the same): the low column bits in L0, one ``gl.convert_layout`` to a layout that holds the rest in
  registers (D = 128: one change; D = 256 with few values per thread: two).
- Pass 1 takes the amax in the last layout (the max does not care where a value sits); pass 2
  quantizes there and moves the 1-byte payload, not the fp32 value, back to L0 for the store.

Scope (``eligible``): inputs (bf16/fp16, as the public functions take) whose last dim is contiguous,
D a power of two in [16, 256], no smoothing (``smooth_k`` / ``smooth_v`` run the plain-Triton
kernels), on an NVIDIA sm90 GPU (where it was measured), compiled (the interpreter runs the
plain-Triton kernels, so CI tests those and the GPU tests compare both). ``quantize_launch`` runs it
where a Hadamard transform is on (``gluon_launch``, on the Triton kernels' grid); the quantizer's ops
are opaque to ``torch.compile``, so compiled calls run it too. Everything else of the contract is the
plain kernels': the same grid of (tensor, batch, head, S-chunk) programs, the same int32 amax slots
(``abs_bits``: an integer max propagates NaN), the same scale policy, no FMA contraction.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from hadamard_kernels.gluon_butterfly import chain, chain_layout, chain_length, hopper, plan, radix2_stages, stage_mask
from hadamard_kernels.runtime import autotune_configs, autotune_do_bench, is_interpreter, launch
from hadamard_kernels.triton_helpers import abs_bits, e4m3_scales

VEC_BITS = 3  # 8 bf16/fp16 values: 16-byte loads
_VEC = gl.constexpr(VEC_BITS)  # the same, for the kernels
MIN_D = 16
MAX_D = 256


@gluon.constexpr_function
def _last(log_d, log_t, num_warps, had):
    # index in the chain of the layout a tile ends in: the last one with stages (L0 without a transform)
    if not had:
        return 0
    n = chain_length(log_d, log_t, num_warps, VEC_BITS)
    return n - 1 if stage_mask(log_d, log_t, num_warps, VEC_BITS, n - 1) else n - 2


@gluon.constexpr_function
def _pairs_layout(log_d, log_t, num_warps):
    # L0 of a T / 2 tile whose element k stands for the pair 2k, 2k + 1 of L0: bit 0 (a register bit of
    # L0) dropped, every other bit one lower; gl.join(a, a) of it is L0 again
    reg, lane, warp, _ = chain(log_d, log_t, num_warps, VEC_BITS)[0]
    return gl.DistributedLinearLayout([[1 << (b - 1)] for b in reg if b], [[1 << (b - 1)] for b in lane],
                                      [[1 << (b - 1)] for b in warp], [], [1 << (log_t - 1)])


@gluon.jit
def _transformed(x, base, s0, S, rope, sign_ptr, LOG_D: gl.constexpr, LOG_T: gl.constexpr,
                 ROPE: gl.constexpr, INTERLEAVED: gl.constexpr, COMPACT_CS: gl.constexpr,
                 HAD: gl.constexpr, HAS_SIGN: gl.constexpr, INV_SQRT_D: gl.constexpr):
    # Rows s0 .. s0 + T / D of one head as a 1-d fp32 tile after RoPE and the Hadamard transform, in
    # the chain's layout _last(..., HAD); masked rows are 0. x = (ptr, stride_b, stride_h, stride_s,
    # stride_d == 1), base = offset of (b, h, 0, 0); rope = (cos, sin, stride_cs, stride_cd).
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    D: gl.constexpr = 1 << LOG_D
    L0: gl.constexpr = chain_layout(LOG_D, LOG_T, NW, _VEC, 0)
    idx = gl.arange(0, T, layout=L0)
    cols = idx % D
    rows = s0 + idx // D
    mask = rows < S
    row_off = base + rows.to(gl.int64) * x[3]
    y = gl.load(x[0] + row_off + cols, mask=mask, other=0.0).to(gl.float32)
    if ROPE:
        if INTERLEAVED:  # partner of column 2k is 2k + 1 and back: register bit 0 of L0
            a, b = y.reshape([T // 2, 2]).split()
            p = gl.convert_layout(gl.join(b, a).reshape([T]), L0)  # the same layout: no data moves
            neg = (cols % 2) == 0
        else:
            # partner column c +- D/2, written so that the compiler sees 8-element runs (vector loads)
            neg = cols < D // 2
            pcols = gl.where(neg, cols + D // 2, cols - D // 2)
            p = gl.load(x[0] + row_off + pcols, mask=mask, other=0.0).to(gl.float32)
        if INTERLEAVED and COMPACT_CS:  # columns 2k, 2k + 1 share angle k: load T / 2, repeat in registers
            LH: gl.constexpr = _pairs_layout(LOG_D, LOG_T, NW)
            hidx = gl.arange(0, T // 2, layout=LH)
            hrows = s0 + hidx // (D // 2)
            cs_off = hrows.to(gl.int64) * rope[2] + (hidx % (D // 2)) * rope[3]
            c = gl.load(rope[0] + cs_off, mask=hrows < S, other=0.0).to(gl.float32)
            s = gl.load(rope[1] + cs_off, mask=hrows < S, other=0.0).to(gl.float32)
            c = gl.convert_layout(gl.join(c, c).reshape([T]), L0)  # the same layout: no data moves
            s = gl.convert_layout(gl.join(s, s).reshape([T]), L0)
        else:  # idx % (D / 2), not cols % (D / 2): the compiler then sees 8-element runs (vector loads)
            cs_off = rows.to(gl.int64) * rope[2] + ((idx % (D // 2)) if COMPACT_CS else cols) * rope[3]
            c = gl.load(rope[0] + cs_off, mask=mask, other=0.0).to(gl.float32)
            s = gl.load(rope[1] + cs_off, mask=mask, other=0.0).to(gl.float32)
        y = y * c + gl.where(neg, -p, p) * s
    if HAD:
        if HAS_SIGN:
            y = y * gl.load(sign_ptr + cols).to(gl.float32)
        y = radix2_stages(y, T, LOG_D, stage_mask(LOG_D, LOG_T, NW, _VEC, 0))
        for i in gl.static_range(1, _last(LOG_D, LOG_T, NW, HAD) + 1):
            y = gl.convert_layout(y, chain_layout(LOG_D, LOG_T, NW, _VEC, i))
            y = radix2_stages(y, T, LOG_D, stage_mask(LOG_D, LOG_T, NW, _VEC, i))
        y = y * INV_SQRT_D
    return y


@gluon.jit
def _geometry(sizes, local_pid, TENSOR: gl.constexpr):
    # (heads H, rows S, chunks per head, scale group G, chunk c, head index b*H + h): a copy of
    # fp8_quant.kernels._chunk_geometry (sizes: see there). Gluon kernels can call @triton.jit helpers
    # (abs_bits, e4m3_scales below), but fp8_quant.kernels imports this module, so importing its helper
    # here would make an import cycle.
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


@gluon.jit
def _chunk_amax(x, sizes, slots, local_pid, rope, sign_ptr, LOG_D: gl.constexpr, LOG_T: gl.constexpr,
                CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr, COMPACT_CS: gl.constexpr,
                HAD: gl.constexpr, HAS_SIGN: gl.constexpr, INV_SQRT_D: gl.constexpr, TENSOR: gl.constexpr):
    NW: gl.constexpr = gl.num_warps()
    BLOCK_S: gl.constexpr = 1 << (LOG_T - LOG_D)
    H, S, n_chunks, G, c, bh = _geometry(sizes, local_pid, TENSOR)
    h = bh % H
    b = bh // H
    base = b.to(gl.int64) * x[1] + h.to(gl.int64) * x[2]
    acc = gl.zeros([1 << LOG_T], gl.int32, layout=chain_layout(LOG_D, LOG_T, NW, _VEC, _last(LOG_D, LOG_T, NW, HAD)))
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        if s_begin + t * BLOCK_S < S:  # the last chunk of a head may be partial
            y = _transformed(x, base, s_begin + t * BLOCK_S, S, rope, sign_ptr, LOG_D, LOG_T, ROPE, INTERLEAVED,
                             COMPACT_CS, HAD, HAS_SIGN, INV_SQRT_D)
            acc = gl.maximum(acc, abs_bits(y))
    gl.atomic_max(slots + TENSOR * sizes[9] + bh // G, gl.max(acc, axis=0), sem="relaxed")


@gluon.jit
def _chunk_quant(x, y_ptr, sizes, slots, descales, local_pid, rope, sign_ptr, LOG_D: gl.constexpr,
                 LOG_T: gl.constexpr, CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr,
                 COMPACT_CS: gl.constexpr, HAD: gl.constexpr, HAS_SIGN: gl.constexpr, INV_SQRT_D: gl.constexpr,
                 LAYOUT: gl.constexpr, TENSOR: gl.constexpr):
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    D: gl.constexpr = 1 << LOG_D
    BLOCK_S: gl.constexpr = T // D
    L0: gl.constexpr = chain_layout(LOG_D, LOG_T, NW, _VEC, 0)
    H, S, n_chunks, G, c, bh = _geometry(sizes, local_pid, TENSOR)
    h = bh % H
    b = bh // H
    group = bh // G
    slot = TENSOR * sizes[9] + group
    amax = gl.load(slots + slot).to(gl.float32, bitcast=True)
    scale, descale = e4m3_scales(amax)
    if (c == 0) & (h % G == 0):
        gl.store(descales + slot, descale)
    base = b.to(gl.int64) * x[1] + h.to(gl.int64) * x[2]
    if LAYOUT == "BHSD":  # (B, H, S, D): row stride D
        ybase = (b.to(gl.int64) * H + h) * S * D
        ys = D
    else:  # (B, S, H, D): row stride H * D
        ybase = (b.to(gl.int64) * S * H + h) * D
        ys = H * D
    idx = gl.arange(0, T, layout=L0)
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        s0 = s_begin + t * BLOCK_S
        if s0 < S:
            y = _transformed(x, base, s0, S, rope, sign_ptr, LOG_D, LOG_T, ROPE, INTERLEAVED, COMPACT_CS, HAD,
                             HAS_SIGN, INV_SQRT_D)
            q = gl.convert_layout((y * scale).to(gl.float8e4nv), L0)  # to_e4m3, then 1-byte values move
            rows = s0 + idx // D
            gl.store(y_ptr + ybase + rows.to(gl.int64) * ys + idx % D, q, mask=rows < S)


@gluon.jit
def _qkv_amax_kernel(q, k, v, sizes, slots, rope, sign_ptr,
                     LOG_D: gl.constexpr, CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr,
                     COMPACT_CS: gl.constexpr, HAD_QK: gl.constexpr, HAD_V: gl.constexpr, HAS_SIGN: gl.constexpr,
                     INV_SQRT_D: gl.constexpr, LOG_T: gl.constexpr):
    # Phase 1, as fp8_quant.kernels._qkv_amax_kernel without smoothing (slots: one zeroed int32 per
    # tensor and group).
    N_Q_PROGS = sizes[6]
    N_K_PROGS = sizes[7]
    pid = gl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_amax(q, sizes, slots, pid, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS,
                    HAD_QK, HAS_SIGN, INV_SQRT_D, 0)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_amax(k, sizes, slots, pid - N_Q_PROGS, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, ROPE, INTERLEAVED,
                    COMPACT_CS, HAD_QK, HAS_SIGN, INV_SQRT_D, 1)
    else:
        _chunk_amax(v, sizes, slots, pid - N_Q_PROGS - N_K_PROGS, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, False,
                    INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, INV_SQRT_D, 2)


@gluon.jit
def _qkv_quant_kernel(q, k, v, out, sizes, slots, descales, rope, sign_ptr,
                      LOG_D: gl.constexpr, CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr,
                      COMPACT_CS: gl.constexpr, HAD_QK: gl.constexpr, HAD_V: gl.constexpr, HAS_SIGN: gl.constexpr,
                      INV_SQRT_D: gl.constexpr, LAYOUT: gl.constexpr, LOG_T: gl.constexpr):
    # Phase 2, as fp8_quant.kernels._qkv_quant_kernel without smoothing.
    N_Q_PROGS = sizes[6]
    N_K_PROGS = sizes[7]
    pid = gl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_quant(q, out[0], sizes, slots, descales, pid, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, ROPE,
                     INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, INV_SQRT_D, LAYOUT, 0)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_quant(k, out[1], sizes, slots, descales, pid - N_Q_PROGS, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S,
                     ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, INV_SQRT_D, LAYOUT, 1)
    else:
        _chunk_quant(v, out[2], sizes, slots, descales, pid - N_Q_PROGS - N_K_PROGS, rope, sign_ptr, LOG_D, LOG_T,
                     CHUNK_S, False, INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, INV_SQRT_D, LAYOUT, 2)


# --- Autotune: LOG_T = log2(BLOCK_S * D) and warps, from (log2 values per thread, warps); the prune
# keeps those whose plan exists and whose BLOCK_S fits the chunk (<= 5).
CONFIGS = [
    triton.Config({"LOG_T": r + 5 + w.bit_length() - 1}, num_warps=w, num_stages=1)
    for r, w in ((4, 4), (5, 4), (4, 8), (5, 8), (6, 4), (3, 8), (4, 2), (4, 1))
]  # the last two: small head dims in 32-row chunks (D = 16: 512-element tiles)


def _fits(config, log_d: int, chunk: int) -> bool:
    log_t = config.kwargs["LOG_T"]
    return (log_t >= log_d and (1 << (log_t - log_d)) <= chunk
            and plan(log_d, log_t, config.num_warps.bit_length() - 1, VEC_BITS) is not None)


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    log_d, chunk = args["LOG_D"], args["CHUNK_S"]
    kept = [c for c in configs if _fits(c, log_d, chunk)][:5]
    return kept or [next(c for c in CONFIGS if _fits(c, log_d, chunk))]


@functools.lru_cache(maxsize=64)
def _first_fit(log_d: int, chunk: int) -> triton.Config:
    """The config used when the autotuner holds one (Triton skips the prune then)."""
    return _prune(CONFIGS[:1], {"LOG_D": log_d, "CHUNK_S": chunk})[0]


def fits(config: triton.Config, d: int, chunk: int) -> bool:
    """A Gluon config (LOG_T, warps) runs head dim d in chunks of ``chunk`` rows."""
    return "LOG_T" in config.kwargs and _fits(config, d.bit_length() - 1, chunk)


_KEY = ["LOG_D", "CHUNK_S", "ROPE", "INTERLEAVED", "COMPACT_CS", "HAD_QK", "HAD_V", "HAS_SIGN"]
_amax_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(CONFIGS), key=_KEY,
                              prune_configs_by={"early_config_prune": _prune})(_qkv_amax_kernel)
_quant_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(CONFIGS), key=_KEY,
                               prune_configs_by={"early_config_prune": _prune})(_qkv_quant_kernel)

_COMPILED = not is_interpreter()  # decided at import, like @triton.jit itself


def supports(tensors, d: int, smooth: bool) -> bool:
    """The call's shape rules: D a power of two in [16, 256], no smoothing, every input's last dim
    contiguous (dtypes: the public functions allow bf16 / fp16 only)."""
    return not smooth and MIN_D <= d <= MAX_D and d & (d - 1) == 0 and all(t.stride(-1) == 1 for t in tensors)


def eligible(tensors, d: int, smooth: bool) -> bool:
    """True when the Gluon kernels can run this call: compiled (not the interpreter), on an NVIDIA sm90
    GPU (``gluon_butterfly.hopper``), and ``supports``."""
    return _COMPILED and tensors[0].is_cuda and hopper(tensors[0].get_device()) and supports(tensors, d, smooth)


def gluon_launch(grid, args, n_slots: int, layout: str, consts: dict, config=None) -> None:
    """Both passes on ``grid`` (the Triton kernels' grid: the same programs). args = (q, k, v, out,
    sizes, descales, rope, sign) as ``fp8_quant.kernels.quantize_launch`` builds them; ``consts``: its
    constexprs (``kernels._consts``); ``config``: a Gluon config (None: autotuned)."""
    q_arg, k_arg, v_arg, out_arg, sizes, ds_buf, rope, sign = args
    log_d = consts["LOG2_D"]
    gconsts = dict(LOG_D=log_d, CHUNK_S=consts["CHUNK_S"], ROPE=consts["ROPE"], INTERLEAVED=consts["INTERLEAVED"],
                   COMPACT_CS=consts["COMPACT_CS"], HAD_QK=consts["HAD_QK"], HAD_V=consts["HAD_V"],
                   HAS_SIGN=consts["HAS_SIGN"], INV_SQRT_D=consts["INV_SQRT_D"], enable_fp_fusion=False)
    if config is None and len(_amax_tuned.configs) == 1:  # Triton skips the prune for one config
        config = _first_fit(log_d, consts["CHUNK_S"])
    # |x| bits, max = 0.0; max is idempotent, so autotuning's repeated runs need no reset
    slots = torch.zeros(n_slots, dtype=torch.int32, device=ds_buf.device)
    launch(_amax_tuned, grid, (q_arg, k_arg, v_arg, sizes, slots, rope, sign), gconsts, config)
    launch(_quant_tuned, grid, (q_arg, k_arg, v_arg, out_arg, sizes, slots, ds_buf, rope, sign),
           {**gconsts, "LAYOUT": layout}, config)
