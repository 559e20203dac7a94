"""RHT + amax in one pass: ``rht_amax(x, s, d, axis)`` -> (max |RHT(x)|, max |x|), never writing RHT(x).

Contract (2-D bf16 (M, N), axis=0, bit for bit):

    rht_amax == (x.t().reshape(N * M // d, d) @ get_rht_matrix(s, dev, torch.bfloat16, d))
                .to(torch.bfloat16).abs().max().float()

i.e. each column is cut into blocks of d consecutive rows, each block is multiplied by the bf16 RHT
matrix (entries +-1/sqrt(d) rounded to bf16) with fp32 accumulation, the product is rounded to bf16,
then |.| and the max. axis=1 is the same along rows (``x.reshape(M * N // d, d) @ R``). Matrix dtype
for other inputs: fp16 inputs use the fp16 matrix and round the product to fp16; fp32 inputs use the
fp32 matrix (tf32x3 dots on GPU, ~fp32 accurate, not bit for bit) and no rounding.

Kernel: a persistent grid (one program per SM). Program p handles tiles p, p + P, p + 2P, ... (the
loop runs from 0 over its own tile count: triton 3.6's interpreter rejects a tensor loop start).
Tiles come through TMA tensor descriptors on SM90+ (pointer loads elsewhere / under the interpreter),
the d x d RHT is a ``tl.dot`` (fp32 register math for d < 16, and in the ``REG_MATH`` configs for
d = 16, which keep ``tl.dot`` out of a warp-specialized loop), and two element-wise max accumulators
stay in registers. They hold |value| as int32 bit patterns: for non-negative floats the bit pattern is
monotone in the value, +inf (0x7F800000) sorts above every finite value and a NaN with its sign bit
cleared (>= 0x7F800001) above +inf, so NaN propagates through plain integer max and one integer
``atomic_max`` per program and output merges the programs into zero-initialized int32 buffers that
are then viewed as float32.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from hadamard_kernels._triton_utils import bucket, is_interpreter, num_sms, tma_allocator, uses_tma
from hadamard_kernels.rht import DEFAULT_SIGN_VECTOR, _check_dimension, _signs_for, get_rht_matrix

SUPPORTED_SCALING = ("tensorwise",)
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# -------------------------------------------------------------------------------------------------
# Kernels
# -------------------------------------------------------------------------------------------------

@triton.jit
def _abs_bits(v):
    # |v| as an int32 bit pattern (sign bit cleared): monotone for >= 0, NaN above +inf.
    return v.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _cols_step(i, acc_r, acc_x, x_ptr, desc, mt, mt32, k, cols0, pid, n_progs, n_tiles, n_col_tiles, n_row_tiles,
               M, N, stride_m, stride_n, D: tl.constexpr, IS_FP32: tl.constexpr, USE_TMA: tl.constexpr,
               GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, REG_MATH: tl.constexpr):
    # One loop iteration of the columns kernel: tile i of this program -> updated accumulators.
    t = pid + i * n_progs
    tm = tl.where(t < n_tiles, t // n_col_tiles, n_row_tiles)
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
        if D >= 16 and not REG_MATH:
            if IS_FP32:
                y = tl.dot(mt, x, input_precision="tf32x3")
            else:
                y = tl.dot(mt, x)
        else:
            y = tl.sum(mt32[:, :, None] * x.to(tl.float32)[None, :, :], axis=1)
        acc_r = tl.maximum(acc_r, _abs_bits(y.to(x_ptr.dtype.element_ty)))
        acc_x = tl.maximum(acc_x, _abs_bits(x))
    return acc_r, acc_x


@triton.jit
def _rows_step(i, acc_r, acc_x, x_ptr, desc, m, m32, rows0, cols0, pid, n_progs, n_tiles, n_col_tiles, n_row_tiles,
               M, N, stride_m, stride_n, D: tl.constexpr, IS_FP32: tl.constexpr, USE_TMA: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, R_ROWS: tl.constexpr, REG_MATH: tl.constexpr):
    # One loop iteration of the rows kernel: tile i of this program -> updated accumulators.
    t = pid + i * n_progs
    tm = tl.where(t < n_tiles, t // n_col_tiles, n_row_tiles)
    tn = t % n_col_tiles
    if USE_TMA:
        x = desc.load([tm * BLOCK_M, tn * BLOCK_N])
    else:
        rows = tm * BLOCK_M + rows0
        cols = tn * BLOCK_N + cols0
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offs = rows[:, None].to(tl.int64) * stride_m + cols[None, :].to(tl.int64) * stride_n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    xr = tl.reshape(x, (R_ROWS, D))
    if D >= 16 and not REG_MATH:
        if IS_FP32:
            y = tl.dot(xr, m, input_precision="tf32x3")
        else:
            y = tl.dot(xr, m)
    else:
        y = tl.sum(xr.to(tl.float32)[:, :, None] * m32[None, :, :], axis=1)
    acc_r = tl.maximum(acc_r, _abs_bits(y.to(x_ptr.dtype.element_ty)))
    acc_x = tl.maximum(acc_x, _abs_bits(x))
    return acc_r, acc_x


@triton.jit
def _rht_amax_cols_kernel(x_ptr, m_ptr, rht_amax_ptr, amax_ptr, M, N, stride_m, stride_n, n_progs, size_bucket,
                          D: tl.constexpr, IS_FP32: tl.constexpr, USE_TMA: tl.constexpr,
                          GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                          LOOP_STAGES: tl.constexpr, REG_MATH: tl.constexpr, INTERP_TRIP_COUNT: tl.constexpr):
    # axis=0. x: (M, N), M % D == 0. A tile is GROUPS blocks of D consecutive rows x BLOCK_N columns;
    # each block [D, BLOCK_N] is transformed as R^T @ block (column j of the block is one RHT input
    # vector), rounded to x's dtype, and folded into the running |.| max. The persistent program
    # walks tiles pid, pid + P, ...; at the end one atomic max per output.
    pid = tl.program_id(0)
    n_row_tiles = tl.cdiv(M // D, GROUPS)
    n_col_tiles = tl.cdiv(N, BLOCK_N)
    n_tiles = n_row_tiles * n_col_tiles
    # Same trip count in every program (a bound computed from scalar arguments only: triton 3.6's
    # interpreter accepts neither a program_id-derived start nor end); tiles past the end are
    # pushed out of bounds (zero-filled / masked: |0| never raises a max).
    # INTERP_TRIP_COUNT is 0 on GPUs (one specialization for all sizes); only under the interpreter
    # (whose range() cannot take a runtime bound with numpy >= 2.4) the host passes the count.

    k = tl.arange(0, D)
    mt = tl.load(m_ptr + k[None, :] * D + k[:, None])  # mt[j, i] = R[i, j]
    mt32 = mt.to(tl.float32)  # register path only (d < 16 or REG_MATH): dead code otherwise
    cols0 = tl.arange(0, BLOCK_N)
    if USE_TMA:
        desc = tl.make_tensor_descriptor(x_ptr, shape=[M, N], strides=[stride_m, 1], block_shape=[D, BLOCK_N])
    else:
        desc = x_ptr  # unused placeholder

    acc_r = tl.zeros([D, BLOCK_N], dtype=tl.int32)
    acc_x = tl.zeros([D, BLOCK_N], dtype=tl.int32)
    if INTERP_TRIP_COUNT > 0:
        for i in tl.range(0, INTERP_TRIP_COUNT):
            acc_r, acc_x = _cols_step(i, acc_r, acc_x, x_ptr, desc, mt, mt32, k, cols0, pid, n_progs, n_tiles,
                                      n_col_tiles, n_row_tiles, M, N, stride_m, stride_n, D, IS_FP32, USE_TMA,
                                      GROUPS, BLOCK_N, REG_MATH)
    else:
        for i in tl.range(0, tl.cdiv(n_tiles, n_progs), num_stages=LOOP_STAGES, warp_specialize=WARP_SPECIALIZE):
            acc_r, acc_x = _cols_step(i, acc_r, acc_x, x_ptr, desc, mt, mt32, k, cols0, pid, n_progs, n_tiles,
                                      n_col_tiles, n_row_tiles, M, N, stride_m, stride_n, D, IS_FP32, USE_TMA,
                                      GROUPS, BLOCK_N, REG_MATH)
    tl.atomic_max(rht_amax_ptr, tl.max(tl.max(acc_r, axis=1), axis=0))
    tl.atomic_max(amax_ptr, tl.max(tl.max(acc_x, axis=1), axis=0))


@triton.jit
def _rht_amax_rows_kernel(x_ptr, m_ptr, rht_amax_ptr, amax_ptr, M, N, stride_m, stride_n, n_progs, size_bucket,
                          D: tl.constexpr, IS_FP32: tl.constexpr, USE_TMA: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                          LOOP_STAGES: tl.constexpr, REG_MATH: tl.constexpr, INTERP_TRIP_COUNT: tl.constexpr):
    # axis=1. x: (M, N), N % D == 0, BLOCK_N % D == 0. A tile [BLOCK_M, BLOCK_N] is reshaped (row
    # major, no data movement in memory) to [BLOCK_M * BLOCK_N / D, D] rows of one RHT input each,
    # multiplied by R, rounded to x's dtype and folded into the running |.| max. Persistent loop and
    # one atomic max per output as in the columns kernel.
    pid = tl.program_id(0)
    n_row_tiles = tl.cdiv(M, BLOCK_M)
    n_col_tiles = tl.cdiv(N, BLOCK_N)
    n_tiles = n_row_tiles * n_col_tiles
    # Trip count and INTERP_TRIP_COUNT: as in the columns kernel.
    R_ROWS: tl.constexpr = BLOCK_M * BLOCK_N // D

    k = tl.arange(0, D)
    m = tl.load(m_ptr + k[:, None] * D + k[None, :])
    m32 = m.to(tl.float32)  # register path only (d < 16 or REG_MATH): dead code otherwise
    rows0 = tl.arange(0, BLOCK_M)
    cols0 = tl.arange(0, BLOCK_N)
    if USE_TMA:
        desc = tl.make_tensor_descriptor(x_ptr, shape=[M, N], strides=[stride_m, 1], block_shape=[BLOCK_M, BLOCK_N])
    else:
        desc = x_ptr  # unused placeholder

    acc_r = tl.zeros([R_ROWS, D], dtype=tl.int32)
    acc_x = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    if INTERP_TRIP_COUNT > 0:
        for i in tl.range(0, INTERP_TRIP_COUNT):
            acc_r, acc_x = _rows_step(i, acc_r, acc_x, x_ptr, desc, m, m32, rows0, cols0, pid, n_progs, n_tiles,
                                      n_col_tiles, n_row_tiles, M, N, stride_m, stride_n, D, IS_FP32, USE_TMA,
                                      BLOCK_M, BLOCK_N, R_ROWS, REG_MATH)
    else:
        for i in tl.range(0, tl.cdiv(n_tiles, n_progs), num_stages=LOOP_STAGES, warp_specialize=WARP_SPECIALIZE):
            acc_r, acc_x = _rows_step(i, acc_r, acc_x, x_ptr, desc, m, m32, rows0, cols0, pid, n_progs, n_tiles,
                                      n_col_tiles, n_row_tiles, M, N, stride_m, stride_n, D, IS_FP32, USE_TMA,
                                      BLOCK_M, BLOCK_N, R_ROWS, REG_MATH)
    tl.atomic_max(rht_amax_ptr, tl.max(tl.max(acc_r, axis=1), axis=0))
    tl.atomic_max(amax_ptr, tl.max(tl.max(acc_x, axis=1), axis=0))


# -------------------------------------------------------------------------------------------------
# Autotune configs: plain lists, easy to edit after a GPU run. The first entry is what the
# interpreter runs. WARP_SPECIALIZE=True entries are the ones whose compilation on Hopper with
# triton 3.6 the GPU test ``test_every_amax_config_compiles`` decides; drop any that fail there.
# -------------------------------------------------------------------------------------------------

def _cols_cfg(groups, bn, ws, stages, warps, reg=False):
    return triton.Config({"GROUPS": groups, "BLOCK_N": bn, "WARP_SPECIALIZE": ws, "LOOP_STAGES": stages,
                          "REG_MATH": reg}, num_warps=warps, num_stages=1)


def _rows_cfg(bm, bn, ws, stages, warps, reg=False):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "WARP_SPECIALIZE": ws, "LOOP_STAGES": stages,
                          "REG_MATH": reg}, num_warps=warps, num_stages=1)


# Six per list (each new autotune key compiles every config that survives the prune). Per d the prune
# keeps: axis 0, d = 16: all; d = 128: entries 1, 2, 4 (64 / 128 columns); d = 256: entry 1. axis 1,
# d = 16: all; d = 128: entries 2-6 (BLOCK_N >= d). Every variant ("tma-ws", "tma", "ptr") keeps at least one entry
# for d = 16 and d = 128. REG_MATH (fp32 register math instead of tl.dot, d = 16 only) is kept in the
# kernels but not in the lists: it only existed as a fallback for warp specialization with tl.dot,
# which compiles (axis 0 all configs, H200, triton 3.6).
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


def _tile_bytes(c, d: int, axis: int) -> int:
    if axis == 0:
        return c.kwargs["GROUPS"] * d * c.kwargs["BLOCK_N"] * 2
    return c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * 2


def _prune(axis: int):
    def prune(configs, named_args, **kwargs):
        d = kwargs.get("D", named_args.get("D"))
        kept = []
        for c in configs:
            if axis == 1 and c.kwargs["BLOCK_N"] % d:
                continue
            if axis == 1 and c.kwargs["BLOCK_N"] < d:
                continue
            if _tile_bytes(c, d, axis) > 64 * 1024:  # one stage of a tile in shared memory
                continue
            # the two element-wise accumulators live in registers: at most 64 int32 each per thread
            acc_elems = d * c.kwargs["BLOCK_N"] if axis == 0 else c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]
            if acc_elems > 64 * 32 * c.num_warps:
                continue
            reg = d < 16 or c.kwargs["REG_MATH"]
            if c.kwargs["REG_MATH"] and not 16 <= d <= 32:
                continue
            # register path: the [.., d, d, ..] fp32 product lives in registers (<= 64 per thread)
            prod = d * d * c.kwargs["BLOCK_N"] if axis == 0 else c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * d
            if reg and prod > 64 * 32 * c.num_warps:
                continue
            kept.append(c)
        if not kept:
            raise ValueError(f"no rht_amax config fits hadamard_dimension={d} (axis={axis})")
        return kept
    return prune


def variant_configs(variant: str, axis: int):
    """The config subset a benchmark variant forces: "tma-ws" (warp-specialized, tl.dot), "tma-ws-reg"
    (warp-specialized, register math instead of tl.dot; d = 16 only; empty while the lists hold no
    REG_MATH entry), "tma" (not specialized, tl.dot),
    "ptr" (pointer loads, not specialized), "auto" (everything)."""
    configs = AMAX_COLS_CONFIGS if axis == 0 else AMAX_ROWS_CONFIGS
    if variant == "tma-ws":
        return [c for c in configs if c.kwargs["WARP_SPECIALIZE"] and not c.kwargs["REG_MATH"]]
    if variant == "tma-ws-reg":
        return [c for c in configs if c.kwargs["WARP_SPECIALIZE"] and c.kwargs["REG_MATH"]]
    if variant in ("tma", "ptr"):
        return [c for c in configs if not c.kwargs["WARP_SPECIALIZE"] and not c.kwargs["REG_MATH"]]
    if variant == "auto":
        return list(configs)
    raise ValueError(f"unknown variant {variant!r}")


# Autotuning re-runs the kernel several times on the same outputs. That is safe twice over: the
# atomics are max (idempotent: re-running on the same input cannot change the result), and
# reset_to_zero zeroes both outputs before every timed run and again before the real launch.
_KEY = ["D", "IS_FP32", "USE_TMA", "size_bucket"]


@functools.lru_cache(maxsize=None)
def _tuned(axis: int, variant: str, d: int):
    kernel = _rht_amax_cols_kernel if axis == 0 else _rht_amax_rows_kernel
    configs = variant_configs(variant, axis)
    if is_interpreter():
        # The interpreter cannot time configs (no driver): one autotuner per d holding the first
        # config that fits d.
        configs = _prune(axis)(configs, {"D": d})[:1]
    return triton.autotune(configs=configs, key=_KEY,
                           prune_configs_by={"early_config_prune": _prune(axis)},
                           reset_to_zero=["rht_amax_ptr", "amax_ptr"])(kernel)


# -------------------------------------------------------------------------------------------------
# Launcher
# -------------------------------------------------------------------------------------------------

def _validate(x, d: int, axis, scaling) -> int:
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
    return axis


def _tma_ok(x: torch.Tensor) -> bool:
    es = x.element_size()
    return (uses_tma(x.device) and x.stride(1) == 1 and (x.stride(0) * es) % 16 == 0
            and x.data_ptr() % 16 == 0 and x.shape[1] * es >= 16)


def _interp_trip_count(cfg, M: int, N: int, d: int, axis: int, n_progs: int) -> int:
    if axis == 0:
        n_tiles = triton.cdiv(M // d, cfg.kwargs["GROUPS"]) * triton.cdiv(N, cfg.kwargs["BLOCK_N"])
    else:
        n_tiles = triton.cdiv(M, cfg.kwargs["BLOCK_M"]) * triton.cdiv(N, cfg.kwargs["BLOCK_N"])
    return max(1, triton.cdiv(n_tiles, n_progs))


def _rht_amax_launch(x: torch.Tensor, signs: tuple[int, ...], axis: int, variant: str = "auto"):
    d = len(signs)
    axis = _validate(x, d, axis, "tensorwise")
    out_r = torch.zeros((), dtype=torch.int32, device=x.device)
    out_x = torch.zeros((), dtype=torch.int32, device=x.device)
    if x.numel() == 0:
        return out_r.view(torch.float32), out_x.view(torch.float32)
    m = get_rht_matrix(signs, x.device, x.dtype, d)
    M, N = x.shape
    use_tma = variant != "ptr" and _tma_ok(x)
    if variant in ("tma", "tma-ws", "tma-ws-reg") and not use_tma and not is_interpreter():
        raise ValueError(f"variant {variant!r} needs TMA (SM90+, unit last stride, 16-byte aligned rows)")
    n_progs = num_sms(x.device)
    grid = (n_progs,)
    kernel = _tuned(axis, variant, d if is_interpreter() else 0)
    args = (x, m, out_r, out_x, M, N, x.stride(0), x.stride(1), n_progs, bucket(x.numel()).bit_length())
    kwargs = dict(D=d, IS_FP32=x.dtype == torch.float32, USE_TMA=use_tma, INTERP_TRIP_COUNT=0)
    if is_interpreter():
        (cfg,) = kernel.configs
        kwargs["INTERP_TRIP_COUNT"] = _interp_trip_count(cfg, M, N, d, axis, n_progs)
    if use_tma:
        with tma_allocator():
            kernel[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)
    return out_r.view(torch.float32), out_x.view(torch.float32)


def _run_config(x: torch.Tensor, signs, axis: int, config: triton.Config, use_tma: bool):
    """Launch the raw (un-autotuned) kernel with one config: for the test that compiles every config."""
    d = len(signs)
    out_r = torch.zeros((), dtype=torch.int32, device=x.device)
    out_x = torch.zeros((), dtype=torch.int32, device=x.device)
    m = get_rht_matrix(signs, x.device, x.dtype, d)
    kernel = _rht_amax_cols_kernel if axis == 0 else _rht_amax_rows_kernel
    args = (x, m, out_r, out_x, x.shape[0], x.shape[1], x.stride(0), x.stride(1), num_sms(x.device),
            bucket(x.numel()).bit_length())
    n_progs = num_sms(x.device)
    trip = _interp_trip_count(config, x.shape[0], x.shape[1], d, axis, n_progs) if is_interpreter() else 0
    kwargs = dict(D=d, IS_FP32=x.dtype == torch.float32, USE_TMA=use_tma, INTERP_TRIP_COUNT=trip,
                  **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    grid = (n_progs,)
    if use_tma:
        with tma_allocator():
            kernel[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)
    return out_r.view(torch.float32), out_x.view(torch.float32)


def _check_configs(axis: int, d: int, use_tma: bool, start: int = 0) -> None:
    """GPU test helper, run in a subprocess by the test that compiles every config (a compiler abort
    then kills only the subprocess): runs each config from ``start`` on, printing ``START i`` before
    and ``OK i`` / ``FAIL i <reason>`` after it, flushed, so the parent can tell which one crashed."""
    import sys

    from hadamard_kernels.reference import rht_amax_contract
    from hadamard_kernels.rht import random_sign_vector

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2048, 4096, generator=g, device="cuda").to(torch.bfloat16)
    signs = tuple(int(v) for v in random_sign_vector(d, seed=d).tolist())
    rr, aa = rht_amax_contract(x, signs, d, axis)
    configs = _prune(axis)(AMAX_COLS_CONFIGS if axis == 0 else AMAX_ROWS_CONFIGS, {"D": d})
    for i, cfg in enumerate(configs):
        if i < start:
            continue
        print(f"START {i} {cfg}", flush=True)
        try:
            r, a = _run_config(x, signs, axis, cfg, use_tma)
            torch.cuda.synchronize()
            ok = int(r.view(torch.int32).item()) == int(rr.view(torch.int32).item()) and \
                int(a.view(torch.int32).item()) == int(aa.view(torch.int32).item())
            print(f"OK {i}" if ok else f"FAIL {i} wrong result {r.item()} vs {rr.item()}", flush=True)
        except Exception as e:  # reported to the parent test, which fails on any FAIL line
            msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
            print(f"FAIL {i} {msg}", flush=True)
    print("DONE", flush=True)
    sys.stdout.flush()


# -------------------------------------------------------------------------------------------------
# Custom op
# -------------------------------------------------------------------------------------------------

@torch.library.custom_op("hadamard_kernels::rht_amax", mutates_args=())
def _rht_amax_op(x: torch.Tensor, signs: list[int], axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    r, a = _rht_amax_launch(x, tuple(signs), axis)
    return r, a


@_rht_amax_op.register_fake
def _(x, signs, axis):
    _validate(x, len(signs), axis, "tensorwise")
    return x.new_empty((), dtype=torch.float32), x.new_empty((), dtype=torch.float32)


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
    ``sign_vector`` defaults to ``DEFAULT_SIGN_VECTOR`` (d = 16).
    """
    if scaling not in SUPPORTED_SCALING:
        raise ValueError(f"rht_amax: scaling={scaling!r} is not supported; supported: {SUPPORTED_SCALING}")
    d = _check_dimension(hadamard_dimension)
    signs = _signs_for(sign_vector, d)
    _validate(x, d, axis, scaling)
    return _rht_amax_op(x, list(signs), axis % 2)
