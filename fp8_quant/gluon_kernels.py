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

Scope (``eligible``): bf16/fp16 inputs whose last dim is contiguous, D a power of two in [16, 256],
no smoothing (``smooth_k`` / ``smooth_v`` run the plain-Triton kernels), on an NVIDIA sm90 GPU (where
it was measured), compiled (the interpreter runs the plain-Triton kernels, so CI tests those and the
GPU tests compare both). ``quantize_launch`` picks it; the quantizer's ops are opaque to
``torch.compile``, so compiled calls run it too. Everything else of the contract is the plain
kernels': the same grid of (tensor, batch, head, S-chunk) programs, the same int32 amax slots
(``abs_bits``: an integer max propagates NaN), the same scale policy, no FMA contraction.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from hadamard_kernels.gluon_butterfly import chain, chain_layout, chain_length, plan, radix2_stages, stage_mask
from hadamard_kernels.runtime import autotune_configs, autotune_do_bench, device_capability, is_interpreter

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
def _angles(rope, s0, S, LOG_D: gl.constexpr, LOG_T: gl.constexpr, INTERLEAVED: gl.constexpr,
            COMPACT_CS: gl.constexpr):
    # RoPE's cos and sin of rows s0 .. s0 + T / D as fp32 tiles in L0 (loaded once, used for HB heads).
    # rope = (cos, sin, stride_cs, stride_cd); full (S, D) or compact (S, D / 2) tables.
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    D: gl.constexpr = 1 << LOG_D
    L0: gl.constexpr = chain_layout(LOG_D, LOG_T, NW, _VEC, 0)
    if INTERLEAVED and COMPACT_CS:  # columns 2k, 2k + 1 share angle k: load T / 2, repeat in registers
        LH: gl.constexpr = _pairs_layout(LOG_D, LOG_T, NW)
        hidx = gl.arange(0, T // 2, layout=LH)
        hrows = s0 + hidx // (D // 2)
        cs_off = hrows.to(gl.int64) * rope[2] + (hidx % (D // 2)) * rope[3]
        c = gl.load(rope[0] + cs_off, mask=hrows < S, other=0.0).to(gl.float32)
        s = gl.load(rope[1] + cs_off, mask=hrows < S, other=0.0).to(gl.float32)
        c = gl.convert_layout(gl.join(c, c).reshape([T]), L0)  # the same layout: no data moves
        s = gl.convert_layout(gl.join(s, s).reshape([T]), L0)
    else:  # idx % (D / 2), not (idx % D) % (D / 2): the compiler then sees 8-element runs (vector loads)
        idx = gl.arange(0, T, layout=L0)
        rows = s0 + idx // D
        cs_off = rows.to(gl.int64) * rope[2] + ((idx % (D // 2)) if COMPACT_CS else (idx % D)) * rope[3]
        c = gl.load(rope[0] + cs_off, mask=rows < S, other=0.0).to(gl.float32)
        s = gl.load(rope[1] + cs_off, mask=rows < S, other=0.0).to(gl.float32)
    return c, s


@gluon.jit
def _transformed(x, base, s0, S, c, s, sgn, LOG_D: gl.constexpr, LOG_T: gl.constexpr, ROPE: gl.constexpr,
                 INTERLEAVED: gl.constexpr, HAD: gl.constexpr, HAS_SIGN: gl.constexpr, INV_SQRT_D: gl.constexpr):
    # Rows s0 .. s0 + T / D of one head as a 1-d fp32 tile after RoPE (c, s: ``_angles``) and the
    # Hadamard transform (sgn: the sign vector's tile), in the chain's layout _last(..., HAD); masked
    # rows are 0. x = (ptr, stride_b, stride_h, stride_s, stride_d == 1), base = offset of (b, h, 0, 0).
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
        else:  # partner column c +- D/2 (the same cache lines), written so that loads stay vectors
            neg = cols < D // 2
            p = gl.load(x[0] + row_off + gl.where(neg, cols + D // 2, cols - D // 2), mask=mask,
                        other=0.0).to(gl.float32)
        y = y * c + gl.where(neg, -p, p) * s
    if HAD:
        if HAS_SIGN:
            y = y * sgn
        y = radix2_stages(y, T, LOG_D, stage_mask(LOG_D, LOG_T, NW, _VEC, 0))
        for i in gl.static_range(1, _last(LOG_D, LOG_T, NW, HAD) + 1):
            y = gl.convert_layout(y, chain_layout(LOG_D, LOG_T, NW, _VEC, i))
            y = radix2_stages(y, T, LOG_D, stage_mask(LOG_D, LOG_T, NW, _VEC, i))
        y = y * INV_SQRT_D
    return y


@gluon.jit
def _program(sizes, local_pid, rope, sign_ptr, LOG_D: gl.constexpr, LOG_T: gl.constexpr, ROPE: gl.constexpr,
             HAD: gl.constexpr, HAS_SIGN: gl.constexpr, HB: gl.constexpr, TENSOR: gl.constexpr):
    # A program of tensor TENSOR (0 Q, 1 K, 2 V): HB heads h0 .. h0 + HB - 1 of batch b, S-chunk c.
    # sizes = (H_Q, H_KV, S_Q, S_KV, NC_Q, NC_KV, N_Q_PROGS, N_K_PROGS, GROUP, N_GROUPS) with program
    # counts B * H / HB * NC. Returns (H, S, G, b, h0, c, sign tile or 0).
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
    blk = local_pid // n_chunks  # b * (H / HB) + h0 / HB
    sgn = 0.0
    if HAD and HAS_SIGN:
        L0: gl.constexpr = chain_layout(LOG_D, LOG_T, gl.num_warps(), _VEC, 0)
        sgn = gl.load(sign_ptr + gl.arange(0, 1 << LOG_T, layout=L0) % (1 << LOG_D)).to(gl.float32)
    return H, S, G, blk // (H // HB), (blk % (H // HB)) * HB, local_pid % n_chunks, sgn


@gluon.jit
def _chunk_amax(x, sizes, slots, local_pid, rope, sign_ptr, LOG_D: gl.constexpr, LOG_T: gl.constexpr,
                CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr, COMPACT_CS: gl.constexpr,
                HAD: gl.constexpr, HAS_SIGN: gl.constexpr, INV_SQRT_D: gl.constexpr, HB: gl.constexpr,
                TENSOR: gl.constexpr):
    # Phase 1 of one program: per head, the amax of its chunk as int32 bits (abs_bits), folded into
    # the head's group slot by atomic max; RoPE's angles are loaded once per tile for the HB heads.
    NW: gl.constexpr = gl.num_warps()
    BLOCK_S: gl.constexpr = 1 << (LOG_T - LOG_D)
    H, S, G, b, h0, c, sgn = _program(sizes, local_pid, rope, sign_ptr, LOG_D, LOG_T, ROPE, HAD, HAS_SIGN, HB,
                                      TENSOR)
    LAST: gl.constexpr = chain_layout(LOG_D, LOG_T, NW, _VEC, _last(LOG_D, LOG_T, NW, HAD))
    accs = (gl.zeros([1 << LOG_T], gl.int32, layout=LAST),) * HB
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        s0 = s_begin + t * BLOCK_S
        if s0 < S:  # the last chunk of a head may be partial
            ca = 0.0
            sa = 0.0
            if ROPE:
                ca, sa = _angles(rope, s0, S, LOG_D, LOG_T, INTERLEAVED, COMPACT_CS)
            for j in gl.static_range(HB):
                base = b.to(gl.int64) * x[1] + (h0 + j).to(gl.int64) * x[2]
                y = _transformed(x, base, s0, S, ca, sa, sgn, LOG_D, LOG_T, ROPE, INTERLEAVED, HAD, HAS_SIGN,
                                 INV_SQRT_D)
                accs = accs[:j] + (gl.maximum(accs[j], y.to(gl.int32, bitcast=True) & 0x7FFFFFFF),) + accs[j + 1:]
    for j in gl.static_range(HB):
        gl.atomic_max(slots + TENSOR * sizes[9] + (b * H + h0 + j) // G, gl.max(accs[j], axis=0), sem="relaxed")


@gluon.jit
def _scales(amax):
    # fp8_quant's scale policy (hadamard_kernels.triton_helpers.e4m3_scales), bit for bit
    tiny = amax < 1e-12
    big = gl.to_tensor(448.0)
    scale = gl.where(tiny, 1.0, gl.div_rn(big, gl.where(tiny, 1.0, amax)))
    scale = gl.where(amax == float("inf"), float("nan"), scale)
    descale = gl.where(tiny, 1.0, gl.div_rn(amax, big))
    return scale, descale


@gluon.jit
def _chunk_quant(x, y_ptr, sizes, slots, descales, local_pid, rope, sign_ptr, LOG_D: gl.constexpr,
                 LOG_T: gl.constexpr, CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr,
                 COMPACT_CS: gl.constexpr, HAD: gl.constexpr, HAS_SIGN: gl.constexpr, INV_SQRT_D: gl.constexpr,
                 LAYOUT: gl.constexpr, HB: gl.constexpr, TENSOR: gl.constexpr):
    # Phase 2 of one program: each head's scale from its group's amax (chunk 0 of the group's first
    # head writes the descale), then RoPE/Hadamard again and e4m3 out (contiguous, in LAYOUT).
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    D: gl.constexpr = 1 << LOG_D
    BLOCK_S: gl.constexpr = T // D
    L0: gl.constexpr = chain_layout(LOG_D, LOG_T, NW, _VEC, 0)
    H, S, G, b, h0, c, sgn = _program(sizes, local_pid, rope, sign_ptr, LOG_D, LOG_T, ROPE, HAD, HAS_SIGN, HB,
                                      TENSOR)
    scales = ()
    for j in gl.static_range(HB):
        slot = TENSOR * sizes[9] + (b * H + h0 + j) // G
        scale, descale = _scales(gl.load(slots + slot).to(gl.float32, bitcast=True))
        if (c == 0) & ((h0 + j) % G == 0):
            gl.store(descales + slot, descale)
        scales = scales + (scale,)
    if LAYOUT == "BHSD":  # (B, H, S, D): row stride D
        ys = D
    else:  # (B, S, H, D): row stride H * D
        ys = H * D
    idx = gl.arange(0, T, layout=L0)
    s_begin = c * CHUNK_S
    for t in range(0, CHUNK_S // BLOCK_S):
        s0 = s_begin + t * BLOCK_S
        if s0 < S:
            ca = 0.0
            sa = 0.0
            if ROPE:
                ca, sa = _angles(rope, s0, S, LOG_D, LOG_T, INTERLEAVED, COMPACT_CS)
            rows = s0 + idx // D
            for j in gl.static_range(HB):
                h = h0 + j
                y = _transformed(x, b.to(gl.int64) * x[1] + h.to(gl.int64) * x[2], s0, S, ca, sa, sgn, LOG_D,
                                 LOG_T, ROPE, INTERLEAVED, HAD, HAS_SIGN, INV_SQRT_D)
                q = gl.convert_layout((y * scales[j]).to(gl.float8e4nv), L0)  # to_e4m3; 1-byte values move
                if LAYOUT == "BHSD":
                    ybase = (b.to(gl.int64) * H + h) * S * D
                else:
                    ybase = (b.to(gl.int64) * S * H + h) * D
                gl.store(y_ptr + ybase + rows.to(gl.int64) * ys + idx % D, q, mask=rows < S)


@gluon.jit
def _qkv_amax_kernel(q, k, v, sizes, slots, rope, sign_ptr,
                     LOG_D: gl.constexpr, CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr,
                     COMPACT_CS: gl.constexpr, HAD_QK: gl.constexpr, HAD_V: gl.constexpr, HAS_SIGN: gl.constexpr,
                     INV_SQRT_D: gl.constexpr, HB: gl.constexpr, LOG_T: gl.constexpr):
    # Phase 1, as fp8_quant.kernels._qkv_amax_kernel without smoothing (slots: 3 * N_GROUPS int32 zeros),
    # with HB heads per program (see _program).
    N_Q_PROGS = sizes[6]
    N_K_PROGS = sizes[7]
    pid = gl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_amax(q, sizes, slots, pid, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, ROPE, INTERLEAVED, COMPACT_CS,
                    HAD_QK, HAS_SIGN, INV_SQRT_D, HB, 0)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_amax(k, sizes, slots, pid - N_Q_PROGS, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, ROPE, INTERLEAVED,
                    COMPACT_CS, HAD_QK, HAS_SIGN, INV_SQRT_D, HB, 1)
    else:
        _chunk_amax(v, sizes, slots, pid - N_Q_PROGS - N_K_PROGS, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, False,
                    INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, INV_SQRT_D, HB, 2)


@gluon.jit
def _qkv_quant_kernel(q, k, v, out, sizes, slots, descales, rope, sign_ptr,
                      LOG_D: gl.constexpr, CHUNK_S: gl.constexpr, ROPE: gl.constexpr, INTERLEAVED: gl.constexpr,
                      COMPACT_CS: gl.constexpr, HAD_QK: gl.constexpr, HAD_V: gl.constexpr, HAS_SIGN: gl.constexpr,
                      INV_SQRT_D: gl.constexpr, LAYOUT: gl.constexpr, HB: gl.constexpr, LOG_T: gl.constexpr):
    # Phase 2, as fp8_quant.kernels._qkv_quant_kernel without smoothing, HB heads per program.
    N_Q_PROGS = sizes[6]
    N_K_PROGS = sizes[7]
    pid = gl.program_id(0)
    if pid < N_Q_PROGS:
        _chunk_quant(q, out[0], sizes, slots, descales, pid, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S, ROPE,
                     INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, INV_SQRT_D, LAYOUT, HB, 0)
    elif pid < N_Q_PROGS + N_K_PROGS:
        _chunk_quant(k, out[1], sizes, slots, descales, pid - N_Q_PROGS, rope, sign_ptr, LOG_D, LOG_T, CHUNK_S,
                     ROPE, INTERLEAVED, COMPACT_CS, HAD_QK, HAS_SIGN, INV_SQRT_D, LAYOUT, HB, 1)
    else:
        _chunk_quant(v, out[2], sizes, slots, descales, pid - N_Q_PROGS - N_K_PROGS, rope, sign_ptr, LOG_D, LOG_T,
                     CHUNK_S, False, INTERLEAVED, COMPACT_CS, HAD_V, HAS_SIGN, INV_SQRT_D, LAYOUT, HB, 2)


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
def first_fit(log_d: int, chunk: int) -> triton.Config:
    """The config used when the autotuner holds one (Triton skips the prune then)."""
    return _prune(CONFIGS[:1], {"LOG_D": log_d, "CHUNK_S": chunk})[0]


_KEY = ["LOG_D", "CHUNK_S", "ROPE", "INTERLEAVED", "COMPACT_CS", "HAD_QK", "HAD_V", "HAS_SIGN", "HB"]
amax_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(CONFIGS), key=_KEY,
                             prune_configs_by={"early_config_prune": _prune})(_qkv_amax_kernel)
quant_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(CONFIGS), key=_KEY,
                              prune_configs_by={"early_config_prune": _prune})(_qkv_quant_kernel)

def heads_per_program(rope: bool, h_q: int, h_kv: int) -> int:
    """HB: 1 without RoPE (most programs); with RoPE 4 (or 2) when it divides both head counts: the
    cos/sin tiles, read once per row tile, then serve HB heads (on an H200 the angle reads, 4 bytes
    each from L2 per element and pass, held RoPE quantization at 0.70x of plain)."""
    if rope:
        for hb in (4, 2):
            if h_q % hb == 0 and h_kv % hb == 0:
                return hb
    return 1


_COMPILED = not is_interpreter()


@functools.lru_cache(maxsize=8)
def _hopper(index: int) -> bool:
    return torch.version.hip is None and device_capability(index)[0] == 9


def eligible(tensors, d: int, smooth: bool) -> bool:
    """True when the Gluon kernels can run this call: compiled (not the interpreter), an NVIDIA sm90
    GPU, D a power of two in [16, 256], no smoothing, every input's last dim contiguous."""
    return (_COMPILED and not smooth and MIN_D <= d <= MAX_D and d & (d - 1) == 0 and tensors[0].is_cuda
            and _hopper(tensors[0].get_device()) and all(t.stride(-1) == 1 for t in tensors))
