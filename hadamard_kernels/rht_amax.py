"""RHT + amax in one pass: ``rht_amax(x, s, d, axis)`` -> (max |RHT(x)|, max |x|), never writing RHT(x).

Contract (2-D bf16 (M, N), axis=0, bit for bit):

    rht_amax == (x.t().reshape(N * M // d, d) @ get_rht_matrix(s, dev, torch.bfloat16, d))
                .to(torch.bfloat16).abs().max().float()

i.e. each column is cut into blocks of d consecutive rows, each block is multiplied by the bf16 RHT
matrix (entries +-1/sqrt(d) rounded to bf16) with fp32 accumulation, the product is rounded to bf16,
then |.| and the max. axis=1 is the same along rows (``x.reshape(M * N // d, d) @ R``). Matrix dtype
for other inputs: fp16 inputs use the fp16 matrix and round the product to fp16; fp32 inputs use the
fp32 matrix (tf32x3 dots on GPU, ~fp32 accurate, not bit for bit) and no rounding.

Kernel: a persistent grid (one program per SM). Program p handles tiles p, p + P, p + 2P, ...: the
loop runs from 0 over the same trip count in every program, cdiv(n_tiles, P), and tiles past the end
are pushed out of bounds (zero-filled / masked: |0| never raises a max); triton 3.6's interpreter
rejects a program_id-derived loop start. Tiles come through TMA tensor descriptors on SM90+ (pointer
loads elsewhere / under the interpreter), the d x d RHT is a ``tl.dot`` (fp32 register math for
d < 16, ``rht.block_dot``), and two element-wise max accumulators stay in registers. They hold |value|
as int32 bit patterns (``triton_helpers.abs_bits``: NaN above +inf above every finite value), so NaN
propagates through plain integer max and one integer ``atomic_max`` per program and output merges the
programs into zero-initialized int32 buffers that are then viewed as float32.

A second, tiled kernel pair (``_rht_amax_tiled_rows_kernel`` / ``_rht_amax_tiled_cols_kernel``) runs
the same math over a grid that covers the input, TILES tiles per program with pointer loads, one
atomic max per output per program. It measured faster on the H200 up to 4096^2 and slower from
8192^2 on (``_TILED_MAX_NUMEL``), so ``rht_amax`` runs it for inputs of <= 2^25 elements with a unit
column stride (axis 1: contiguous); other inputs run the persistent one.

Seam: ``_rht_amax_launch(x, sv, axis, config=None, use_tma=None, kernel="auto")``; ``config=None``
autotunes, a ``triton.Config`` from ``AMAX_COLS_CONFIGS`` (axis 0) / ``AMAX_ROWS_CONFIGS`` (axis 1)
runs exactly that one on the persistent kernel, one from ``AMAX_TILED_CONFIGS`` on the tiled one.
Tests and benchmarks pick kernels and configs there (e.g. only ``WARP_SPECIALIZE`` ones).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from hadamard_kernels.rht import DEFAULT_SIGN_VECTOR, _resolve_signs, block_dot
from hadamard_kernels.runtime import (autotune_configs, autotune_do_bench, bucket, launch, num_sms, tma_allocator,
                                      uses_tma)
from hadamard_kernels.signs import SignVector, as_sign_vector
from hadamard_kernels.triton_helpers import abs_bits
from hadamard_kernels.triton_ops import graph_constant, traced_launch, triton_library_op

SUPPORTED_SCALING = ("tensorwise",)
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# -------------------------------------------------------------------------------------------------
# Kernels
# -------------------------------------------------------------------------------------------------

@triton.jit
def _rht_amax_cols_kernel(x_ptr, m_ptr, amax_ptr, M, N, stride_m, stride_n, n_progs, size_bucket,
                          D: tl.constexpr, IS_FP32: tl.constexpr, USE_TMA: tl.constexpr,
                          GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                          LOOP_STAGES: tl.constexpr):
    # axis=0. x: (M, N), M % D == 0. A tile is GROUPS blocks of D consecutive rows x BLOCK_N columns;
    # each block [D, BLOCK_N] is transformed as R^T @ block (column j of the block is one RHT input
    # vector), rounded to x's dtype, and folded into the running |.| max. The persistent program
    # walks tiles pid, pid + P, ...; at the end one atomic max per output.
    pid = tl.program_id(0)
    n_row_tiles = tl.cdiv(M // D, GROUPS)
    n_col_tiles = tl.cdiv(N, BLOCK_N)
    n_tiles = n_row_tiles * n_col_tiles
    k = tl.arange(0, D)
    mt = tl.load(m_ptr + k[None, :] * D + k[:, None])  # mt[j, i] = R[i, j]
    cols0 = tl.arange(0, BLOCK_N)
    if USE_TMA:
        desc = tl.make_tensor_descriptor(x_ptr, shape=[M, N], strides=[stride_m, 1], block_shape=[D, BLOCK_N])
    acc_r = tl.zeros([D, BLOCK_N], dtype=tl.int32)
    acc_x = tl.zeros([D, BLOCK_N], dtype=tl.int32)
    for i in tl.range(0, tl.cdiv(n_tiles, n_progs), num_stages=LOOP_STAGES, warp_specialize=WARP_SPECIALIZE):
        t = pid + i * n_progs
        tm = tl.where(t < n_tiles, t // n_col_tiles, n_row_tiles)  # past the end: rows >= M
        tn = t % n_col_tiles
        for g in tl.static_range(GROUPS):
            row0 = (tm * GROUPS + g) * D  # rows >= M (last row tile) are zero-filled / masked
            if USE_TMA:
                x = desc.load([row0, tn * BLOCK_N])
            else:
                rows = row0 + k
                cols = tn * BLOCK_N + cols0
                mask = (rows[:, None] < M) & (cols[None, :] < N)
                offs = rows[:, None].to(tl.int64) * stride_m + cols[None, :].to(tl.int64) * stride_n
                x = tl.load(x_ptr + offs, mask=mask, other=0.0)
            y = block_dot(mt, x, D, IS_FP32)
            acc_r = tl.maximum(acc_r, abs_bits(y.to(x_ptr.dtype.element_ty)))
            acc_x = tl.maximum(acc_x, abs_bits(x))
    tl.atomic_max(amax_ptr, tl.max(tl.max(acc_r, axis=1), axis=0))  # slot 0: max |RHT(x)|
    tl.atomic_max(amax_ptr + 1, tl.max(tl.max(acc_x, axis=1), axis=0))  # slot 1: max |x|


@triton.jit
def _rht_amax_rows_kernel(x_ptr, m_ptr, amax_ptr, M, N, stride_m, stride_n, n_progs, size_bucket,
                          D: tl.constexpr, IS_FP32: tl.constexpr, USE_TMA: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                          LOOP_STAGES: tl.constexpr):
    # axis=1. x: (M, N), N % D == 0, BLOCK_N % D == 0. A tile [BLOCK_M, BLOCK_N] is reshaped (row
    # major, no data movement in memory) to [BLOCK_M * BLOCK_N / D, D] rows of one RHT input each,
    # multiplied by R, rounded to x's dtype and folded into the running |.| max. Persistent loop and
    # one atomic max per output as in the columns kernel.
    pid = tl.program_id(0)
    n_row_tiles = tl.cdiv(M, BLOCK_M)
    n_col_tiles = tl.cdiv(N, BLOCK_N)
    n_tiles = n_row_tiles * n_col_tiles
    R_ROWS: tl.constexpr = BLOCK_M * BLOCK_N // D
    k = tl.arange(0, D)
    m = tl.load(m_ptr + k[:, None] * D + k[None, :])
    rows0 = tl.arange(0, BLOCK_M)
    cols0 = tl.arange(0, BLOCK_N)
    if USE_TMA:
        desc = tl.make_tensor_descriptor(x_ptr, shape=[M, N], strides=[stride_m, 1], block_shape=[BLOCK_M, BLOCK_N])
    acc_r = tl.zeros([R_ROWS, D], dtype=tl.int32)
    acc_x = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for i in tl.range(0, tl.cdiv(n_tiles, n_progs), num_stages=LOOP_STAGES, warp_specialize=WARP_SPECIALIZE):
        t = pid + i * n_progs
        tm = tl.where(t < n_tiles, t // n_col_tiles, n_row_tiles)  # past the end: rows >= M
        tn = t % n_col_tiles
        if USE_TMA:
            x = desc.load([tm * BLOCK_M, tn * BLOCK_N])
        else:
            rows = tm * BLOCK_M + rows0
            cols = tn * BLOCK_N + cols0
            mask = (rows[:, None] < M) & (cols[None, :] < N)
            offs = rows[:, None].to(tl.int64) * stride_m + cols[None, :].to(tl.int64) * stride_n
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        y = block_dot(tl.reshape(x, (R_ROWS, D)), m, D, IS_FP32)
        acc_r = tl.maximum(acc_r, abs_bits(y.to(x_ptr.dtype.element_ty)))
        acc_x = tl.maximum(acc_x, abs_bits(x))
    tl.atomic_max(amax_ptr, tl.max(tl.max(acc_r, axis=1), axis=0))  # slot 0: max |RHT(x)|
    tl.atomic_max(amax_ptr + 1, tl.max(tl.max(acc_x, axis=1), axis=0))  # slot 1: max |x|


@triton.jit
def _rht_amax_tiled_rows_kernel(x_ptr, m_ptr, amax_ptr, n_rows, size_bucket,
                                D: tl.constexpr, IS_FP32: tl.constexpr, BLOCK_E: tl.constexpr, TILES: tl.constexpr):
    # axis=1 of a contiguous x, read as n_rows = M * N / D rows of D: the rht rows kernel's tiles
    # ([BLOCK_R, D], y = x @ R), without the store. One program per TILES tiles (a grid over the
    # whole input, no persistent loop), one atomic max per output at the end. BLOCK_E: elements
    # per tile (BLOCK_R = BLOCK_E / D rows).
    BLOCK_R: tl.constexpr = BLOCK_E // D
    pid = tl.program_id(0)
    cols = tl.arange(0, D)
    m = tl.load(m_ptr + cols[:, None] * D + cols[None, :])
    acc_r = tl.zeros([BLOCK_R, D], dtype=tl.int32)
    acc_x = tl.zeros([BLOCK_R, D], dtype=tl.int32)
    for t in tl.range(0, TILES):
        rows = (pid.to(tl.int64) * TILES + t) * BLOCK_R + tl.arange(0, BLOCK_R)
        x = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=rows[:, None] < n_rows, other=0.0)
        y = block_dot(x, m, D, IS_FP32)
        acc_r = tl.maximum(acc_r, abs_bits(y.to(x_ptr.dtype.element_ty)))
        acc_x = tl.maximum(acc_x, abs_bits(x))
    tl.atomic_max(amax_ptr, tl.max(tl.max(acc_r, axis=1), axis=0))
    tl.atomic_max(amax_ptr + 1, tl.max(tl.max(acc_x, axis=1), axis=0))


@triton.jit
def _rht_amax_tiled_cols_kernel(x_ptr, m_ptr, amax_ptr, M, N, stride_m, size_bucket,
                                D: tl.constexpr, IS_FP32: tl.constexpr, BLOCK_E: tl.constexpr, TILES: tl.constexpr):
    # axis=0, x: (M, N) with unit column stride. Program (i, j): TILES consecutive blocks of D rows
    # from row i * TILES * D, columns j * BLOCK_I..; each [D, BLOCK_I] tile as in the rht columns
    # kernel (y = R^T @ x), no store; one atomic max per output at the end. BLOCK_E: elements per
    # tile (BLOCK_I = BLOCK_E / D columns).
    BLOCK_I: tl.constexpr = BLOCK_E // D
    k = tl.arange(0, D)
    mt = tl.load(m_ptr + k[None, :] * D + k[:, None])  # mt[j, i] = R[i, j]
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    col_ok = cols[None, :] < N
    acc_r = tl.zeros([D, BLOCK_I], dtype=tl.int32)
    acc_x = tl.zeros([D, BLOCK_I], dtype=tl.int32)
    for t in tl.range(0, TILES):
        rows = (tl.program_id(0).to(tl.int64) * TILES + t) * D + k
        x = tl.load(x_ptr + rows[:, None] * stride_m + cols[None, :], mask=(rows[:, None] < M) & col_ok, other=0.0)
        y = block_dot(mt, x, D, IS_FP32)
        acc_r = tl.maximum(acc_r, abs_bits(y.to(x_ptr.dtype.element_ty)))
        acc_x = tl.maximum(acc_x, abs_bits(x))
    tl.atomic_max(amax_ptr, tl.max(tl.max(acc_r, axis=1), axis=0))
    tl.atomic_max(amax_ptr + 1, tl.max(tl.max(acc_x, axis=1), axis=0))


# -------------------------------------------------------------------------------------------------
# Autotune configs: plain lists, easy to edit after a GPU run. The first entry is what the
# interpreter runs (when it fits d; otherwise the launcher takes the first that does). The
# WARP_SPECIALIZE=True entries are the ones whose compilation on Hopper with triton 3.6 the GPU test
# ``test_every_amax_config_compiles`` decides; drop any that fail there.
# -------------------------------------------------------------------------------------------------

def _cols_cfg(groups, bn, ws, stages, warps):
    return triton.Config({"GROUPS": groups, "BLOCK_N": bn, "WARP_SPECIALIZE": ws, "LOOP_STAGES": stages},
                         num_warps=warps, num_stages=1)


def _rows_cfg(bm, bn, ws, stages, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "WARP_SPECIALIZE": ws, "LOOP_STAGES": stages},
                         num_warps=warps, num_stages=1)


# Six per list (each new autotune key compiles every config that survives the prune). Per d the prune
# keeps: axis 0, d = 16: all; d = 128: entries 1, 2, 4 (64 / 128 columns); d = 256: entry 1. axis 1,
# d = 16: all; d = 128: entries 2-6 (BLOCK_N >= d). Warp-specialized and plain configs alike keep at
# least one entry for d = 16 and d = 128 (warp specialization with tl.dot in the loop compiles on an
# H200 with triton 3.6 for the listed configs).
AMAX_COLS_CONFIGS = [
    _cols_cfg(1, 64, False, 2, 8),  # first: the interpreter's config; the only one that fits d = 256
    _cols_cfg(2, 128, False, 3, 8),
    _cols_cfg(4, 256, False, 3, 8),
    _cols_cfg(2, 128, True, 3, 8),
    _cols_cfg(4, 256, True, 3, 8),
    _cols_cfg(2, 256, True, 3, 4),
]
AMAX_ROWS_CONFIGS = [
    _rows_cfg(16, 64, False, 2, 4),  # first: the interpreter's config for d <= 64
    _rows_cfg(64, 128, False, 3, 4),
    _rows_cfg(64, 256, False, 3, 8),
    # Measured on an H200 (triton 3.6): warp-specialized row configs with tl.dot and 4 warps abort
    # in the compiler ("PassManager::run failed"); only 8-warp ones are listed.
    _rows_cfg(64, 128, True, 3, 8),
    _rows_cfg(128, 128, True, 3, 8),
    _rows_cfg(32, 256, True, 3, 8),
]


# The tiled (non-persistent) kernels: BLOCK_E elements per [BLOCK_R, D] / [D, BLOCK_I] tile, TILES
# tiles per program (few programs, so few atomics: 1024 at 8192^2 with 8192 x 8). The prune keeps
# tiles of >= 16 rows / columns (tl.dot) and, for d < 16, a [.., d, d] product of <= 64 fp32 values
# per thread.
def _tiled_cfg(elems, tiles, warps, stages):
    return triton.Config({"BLOCK_E": elems, "TILES": tiles}, num_warps=warps, num_stages=stages)


AMAX_TILED_CONFIGS = [
    _tiled_cfg(4096, 1, 4, 1),  # first: the interpreter's config
    _tiled_cfg(4096, 8, 4, 3),
    _tiled_cfg(8192, 8, 8, 3),
    _tiled_cfg(8192, 16, 8, 3),
    _tiled_cfg(16384, 4, 16, 2),
    _tiled_cfg(16384, 8, 16, 3),
    _tiled_cfg(1024, 16, 4, 3),  # d = 4, 8: the register product [.., d, d, ..] of a larger tile spills
]


def _fits_tiled(c: triton.Config, d: int) -> bool:
    e = c.kwargs["BLOCK_E"]
    return e // d >= 16 and (d >= 16 or e * d <= 64 * 32 * c.num_warps)


def _prune_tiled(configs, named_args, **kwargs):
    d = kwargs.get("D", named_args.get("D"))
    kept = [c for c in configs if _fits_tiled(c, d)]
    if not kept:
        raise ValueError(f"no tiled rht_amax config fits hadamard_dimension={d}")
    return kept


def _fits(c: triton.Config, d: int, axis: int) -> bool:
    kw = c.kwargs
    if axis == 1 and (kw["BLOCK_N"] % d or kw["BLOCK_N"] < d):
        return False
    tile_bytes = (kw["GROUPS"] * d * kw["BLOCK_N"] if axis == 0 else kw["BLOCK_M"] * kw["BLOCK_N"]) * 2
    if tile_bytes > 64 * 1024:  # one stage of a tile in shared memory
        return False
    # the two element-wise accumulators live in registers: at most 64 int32 each per thread
    regs = 64 * 32 * c.num_warps
    if (d * kw["BLOCK_N"] if axis == 0 else kw["BLOCK_M"] * kw["BLOCK_N"]) > regs:
        return False
    # d < 16, register path: the [.., d, d, ..] fp32 product lives in registers (<= 64 per thread)
    prod = d * d * kw["BLOCK_N"] if axis == 0 else kw["BLOCK_M"] * kw["BLOCK_N"] * d
    return d >= 16 or prod <= regs


def _prune(axis: int):
    def prune(configs, named_args, **kwargs):
        d = kwargs.get("D", named_args.get("D"))
        kept = [c for c in configs if _fits(c, d, axis)]
        if not kept:
            raise ValueError(f"no rht_amax config fits hadamard_dimension={d} (axis={axis})")
        return kept
    return prune


def amax_configs(axis: int, d: int) -> list:
    """Every listed config of the ``axis`` kernel that fits d (what the full autotuner tries)."""
    return _prune(axis)(AMAX_COLS_CONFIGS if axis == 0 else AMAX_ROWS_CONFIGS, {"D": d})


# Autotuning re-runs the kernel several times on the same outputs. That is safe twice over: the
# atomics are max (idempotent: re-running on the same input cannot change the result), and
# reset_to_zero zeroes both output slots before every timed run and again before the real launch.
_KEY = ["D", "IS_FP32", "USE_TMA", "size_bucket"]
_rht_amax_cols = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(AMAX_COLS_CONFIGS), key=_KEY,
                                 prune_configs_by={"early_config_prune": _prune(0)},
                                 reset_to_zero=["amax_ptr"])(_rht_amax_cols_kernel)
_rht_amax_rows = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(AMAX_ROWS_CONFIGS), key=_KEY,
                                 prune_configs_by={"early_config_prune": _prune(1)},
                                 reset_to_zero=["amax_ptr"])(_rht_amax_rows_kernel)

_TILED_KEY = ["D", "IS_FP32", "size_bucket"]
_rht_amax_tiled_rows = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(AMAX_TILED_CONFIGS),
                                       key=_TILED_KEY, prune_configs_by={"early_config_prune": _prune_tiled},
                                       reset_to_zero=["amax_ptr"])(_rht_amax_tiled_rows_kernel)
_rht_amax_tiled_cols = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(AMAX_TILED_CONFIGS),
                                       key=_TILED_KEY, prune_configs_by={"early_config_prune": _prune_tiled},
                                       reset_to_zero=["amax_ptr"])(_rht_amax_tiled_cols_kernel)

# -------------------------------------------------------------------------------------------------
# Validation and launcher (the seam)
# -------------------------------------------------------------------------------------------------

def _validate(x, d: int, axis, scaling) -> int:
    """Cheap checks (no device work); returns the axis as 0 or 1."""
    if scaling not in SUPPORTED_SCALING:
        raise ValueError(f"rht_amax: scaling={scaling!r} is not supported; supported: {SUPPORTED_SCALING}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"rht_amax expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"rht_amax supports bfloat16, float16 and float32 inputs, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"rht_amax expects a 2-D (M, N) tensor, got shape {tuple(x.shape)}")
    if isinstance(axis, bool) or axis not in (0, 1, -1, -2):
        raise ValueError(f"rht_amax: axis must be 0 or 1 (or -2/-1), got {axis!r}")
    axis = axis % 2
    if x.shape[axis] % d:
        raise ValueError(f"rht_amax: size {x.shape[axis]} of axis {axis} (shape {tuple(x.shape)}) is not a "
                         f"multiple of hadamard_dimension={d}")
    if x.requires_grad and torch.is_grad_enabled():  # the gradient policy: refuse, before any launch
        raise ValueError("rht_amax: x requires grad, but rht_amax has no backward (an amax for FP8/NVFP4 "
                         "scaling is not differentiated): call it under torch.no_grad() or .detach() the inputs")
    return axis


def _tma_ok(x: torch.Tensor) -> bool:
    es = x.element_size()
    return (uses_tma(x.device) and x.stride(1) == 1 and (x.stride(0) * es) % 16 == 0
            and x.data_ptr() % 16 == 0 and x.shape[1] * es >= 16)


_TMA_MIN_NUMEL = 1 << 24
# "auto" takes the tiled kernel up to this size: on the H200 it measured 16-30 us against 19-45 us
# for the persistent one at 2048 x 4096 and 20-24 us against 23-26 us at 4096^2 (d = 16 and 128,
# both axes); at 8192^2 the persistent one was as fast or faster (54 vs 65 us, d = 16 axis 0), and
# at 16384^2 faster on every case (by 4-44%).
_TILED_MAX_NUMEL = 1 << 25


@functools.lru_cache(maxsize=None)
def _config_if_none_fits(axis: int, d: int) -> "triton.Config | None":
    kernel = _rht_amax_cols if axis == 0 else _rht_amax_rows
    return None if any(_fits(c, d, axis) for c in kernel.configs) else amax_configs(axis, d)[0]


@functools.lru_cache(maxsize=None)
def _tiled_config_if_none_fits(d: int) -> "triton.Config | None":
    # Triton skips the prune when the autotuner holds one config (interpreter, LOWPREC_AUTOTUNE=first)
    if any(_fits_tiled(c, d) for c in _rht_amax_tiled_rows.configs):
        return None
    return _prune_tiled(AMAX_TILED_CONFIGS, {"D": d})[0]


def _tiled_ok(x: torch.Tensor, axis: int) -> bool:
    """The tiled kernels read x through one row stride: axis 0 needs unit column stride, axis 1 a
    contiguous x (rows of d back to back)."""
    return x.stride(1) == 1 and (axis == 0 or x.stride(0) == x.shape[1] or x.shape[0] == 1)


def _rht_amax_launch(x: torch.Tensor, sv: SignVector, axis: int, config: "triton.Config | None" = None,
                     use_tma: "bool | None" = None, traced: bool = False, kernel: str = "auto"):
    """The seam: (max |RHT(x)|, max |x|) of a validated 2-D x along ``axis`` (0 or 1), d = len(sv).

    ``kernel``: "persistent" (one program per SM, TMA or pointer loads, the warp-specialized
    configs), "tiled" (a grid over the input, pointer loads; x with unit column stride, and
    contiguous for axis 1) or "auto": tiled where it applies and x has <= ``_TILED_MAX_NUMEL``
    elements (with ``use_tma`` None), else persistent. A config from
    ``AMAX_TILED_CONFIGS`` selects the tiled kernel, one from ``AMAX_COLS_CONFIGS`` /
    ``AMAX_ROWS_CONFIGS`` the persistent one.
    ``config=None`` autotunes; a ``triton.Config`` of the kernel's list launches exactly that config.
    ``use_tma`` (persistent kernel): None picks TMA loads where they work (SM90+, unit last stride, 16-byte aligned
    rows) and the input has at least ``_TMA_MIN_NUMEL`` elements, False forces pointer loads, True requires TMA (ValueError where it does not work).
    ``traced`` (the op body): launch through ``wrap_triton`` with pointer loads, see the op."""
    if kernel not in ("auto", "persistent", "tiled"):
        raise ValueError(f"kernel must be 'auto', 'persistent' or 'tiled', got {kernel!r}")
    if config is not None:
        picked = "tiled" if "BLOCK_E" in config.kwargs else "persistent"
        if kernel not in ("auto", picked):
            raise ValueError(f"config {config} is a {picked} config, but kernel={kernel!r}")
        kernel = picked
    if kernel == "tiled" and use_tma:
        raise ValueError("use_tma applies to the persistent kernel; the tiled kernel uses pointer loads")
    d = len(sv)
    # two int32 slots (|.| bits, max = 0.0): max |RHT(x)|, max |x|; one allocation, two 0-d views
    out = torch.zeros(2, dtype=torch.int32, device=x.device)
    if x.numel() == 0:
        return out.view(torch.float32).unbind(0)
    M, N = x.shape
    tiled_ok = _tiled_ok(x, axis)
    if kernel == "tiled" and not tiled_ok:
        raise ValueError(f"the tiled rht_amax kernel needs a unit column stride (and, for axis 1, a contiguous x); "
                         f"got strides {tuple(x.stride())}")
    if kernel == "auto":
        kernel = "tiled" if tiled_ok and use_tma is None and x.numel() <= _TILED_MAX_NUMEL else "persistent"
    if traced:
        m = graph_constant(lambda: sv.rht_matrix(x.device, x.dtype))
    else:
        m = sv.rht_matrix(x.device, x.dtype)  # cached on sv, never handed to callers
    consts = dict(D=d, IS_FP32=x.dtype == torch.float32)
    sb = bucket(x.numel()).bit_length()
    run = traced_launch if traced else launch
    if kernel == "tiled":
        if config is None:
            config = _tiled_config_if_none_fits(d)
        if axis == 1:
            n_rows = M * N // d
            grid = lambda meta: ((n_rows * d - 1) // (meta["BLOCK_E"] * meta["TILES"]) + 1,)  # noqa: E731
            run(_rht_amax_tiled_rows, grid, (x, m, out, n_rows, sb), consts, config)
        else:
            n_blocks = M // d
            grid = lambda meta: ((n_blocks - 1) // meta["TILES"] + 1,  # noqa: E731
                                 (N * d - 1) // meta["BLOCK_E"] + 1)
            run(_rht_amax_tiled_cols, grid, (x, m, out, M, N, x.stride(0), sb), consts, config)
    else:
        tma_ok = False if traced else _tma_ok(x)
        if use_tma and not tma_ok:
            raise ValueError("use_tma=True needs TMA (compiled SM90+, unit last stride, 16-byte aligned rows)")
        # None: TMA only from _TMA_MIN_NUMEL elements on. Below it pointer loads are as fast on the device
        # and cheaper on the host (no scratch allocation, no allocator scope): measured on the H200,
        # 64x4096 9.4 vs 10.8-14.9 us device, 2048x4096 16-19 us either way, 8192^2 TMA 52-54 vs 56-72 us.
        use_tma = (tma_ok and x.numel() >= _TMA_MIN_NUMEL) if use_tma is None else use_tma
        pkernel = _rht_amax_cols if axis == 0 else _rht_amax_rows
        if config is None:
            # None, or the first listed config that fits d where the interpreter's (or
            # LOWPREC_AUTOTUNE=first's) single config does not (e.g. rows, d = 128)
            config = _config_if_none_fits(axis, d)
        n_progs = num_sms(x.device)
        args = (x, m, out, M, N, x.stride(0), x.stride(1), n_progs, sb)
        consts["USE_TMA"] = use_tma
        if traced:
            traced_launch(pkernel, (n_progs,), args, consts, config)
        elif use_tma:
            with tma_allocator():
                launch(pkernel, (n_progs,), args, consts, config)
        else:
            launch(pkernel, (n_progs,), args, consts, config)
    rotated, plain = out.view(torch.float32).unbind(0)
    # a registered op returns fresh tensors (no aliasing between outputs, offset 0, like its fake)
    return (rotated.clone(), plain.clone()) if traced else (rotated, plain)


# -------------------------------------------------------------------------------------------------
# Op (torch.compile, autograd recording, torch.ops.hadamard_kernels.rht_amax): a triton_op whose
# body Inductor traces, a custom_op with this fake under the interpreter (hadamard_kernels.triton_ops).
# The traced body uses pointer loads (USE_TMA=False, same result bit for bit): whether TMA works
# depends on the input's address (``_tma_ok`` reads ``data_ptr()``, which a traced tensor does not
# have), and device-side descriptors need ``triton.set_allocator`` around the launch, which a launch
# in Inductor's generated code would not get from ``tma_allocator()``.
# -------------------------------------------------------------------------------------------------

def _rht_amax_fake(x, signs, axis):
    _validate(x, len(signs), axis, "tensorwise")
    return x.new_empty((), dtype=torch.float32), x.new_empty((), dtype=torch.float32)


@triton_library_op("hadamard_kernels::rht_amax", _rht_amax_fake)
def _rht_amax_op(x: torch.Tensor, signs: list[int], axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    sv = as_sign_vector(signs, name="signs")  # a list: checked in Python, cached per tuple
    axis = _validate(x, len(sv), axis, "tensorwise")  # the op is callable directly
    return _rht_amax_launch(x, sv, axis, traced=True)


# -------------------------------------------------------------------------------------------------
# Public function
# -------------------------------------------------------------------------------------------------

def rht_amax(x: torch.Tensor, sign_vector=DEFAULT_SIGN_VECTOR, hadamard_dimension: int = 16, axis: int = 0,
             scaling: str = "tensorwise") -> tuple[torch.Tensor, torch.Tensor]:
    """(max |RHT(x)|, max |x|) as float32 0-d tensors on x's device, in one pass, RHT(x) never written.

    x: 2-D (M, N) bf16 (fp16/fp32 too); axis=0 transforms blocks of d consecutive rows of each column
    (M % d == 0), axis=1 blocks of d consecutive elements of each row (N % d == 0); no other
    divisibility needed. For bf16 the result is bit for bit the module docstring's contract. NaN in x
    gives NaN in both outputs, +-Inf gives inf, all zeros give 0. Only ``scaling="tensorwise"``.
    ``sign_vector``: a ``SignVector``, tensor, list or tuple of d entries, each +1 or -1 (ValueError
    otherwise); defaults to ``DEFAULT_SIGN_VECTOR`` (d = 16).

    Why axis=0 by default (``rht`` defaults to axis=-1): this is the amax of the *columnwise* RHT that
    NVFP4 training recipes (Transformer Engine's, whose contract the module docstring states) take for
    the weight-gradient GEMM. wgrad = dY^T @ X contracts over the token dim M, the rows of a row-major
    (M, N) activation or gradient, so the 16-element RHT blocks run down each column (axis 0), and this
    amax sets the per-tensor scale of that columnwise quantized copy. ``rht`` is a general transform
    of the contiguous last dim (head dims, hidden features), hence its axis=-1. Pass ``axis``
    explicitly when mixing the two.

    Not differentiable (the library's gradient policy: differentiable only where the backward is
    another call of our kernels): with grad mode on and ``x.requires_grad``, ValueError before any
    launch; call it under ``torch.no_grad()`` or pass ``x.detach()``.

    >>> x = torch.randn(64, 32, dtype=torch.bfloat16)
    >>> rotated_amax, amax = rht_amax(x)  # blocks of 16 rows of each column, DEFAULT_SIGN_VECTOR
    >>> rotated_amax.dtype, rotated_amax.shape, bool(amax == x.abs().max().float())
    (torch.float32, torch.Size([]), True)
    """
    if scaling not in SUPPORTED_SCALING:
        raise ValueError(f"rht_amax: scaling={scaling!r} is not supported; supported: {SUPPORTED_SCALING}")
    sv = _resolve_signs(sign_vector, hadamard_dimension)
    axis = _validate(x, len(sv), axis, scaling)  # also refuses inputs that require grad (grad mode on)
    if torch.compiler.is_compiling():
        return _rht_amax_op(x, list(sv.values), axis)
    return _rht_amax_launch(x, sv, axis)
