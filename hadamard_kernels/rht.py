"""The Randomized Hadamard Transform (RHT): sign vectors, the RHT matrix, and ``rht`` / ``inverse_rht``.

Convention (shared by every package): for a block x of d consecutive elements (a 1 x d row),

    RHT(x) = x @ R,   R = diag(s) @ H_d / sqrt(d)          (``get_rht_matrix``)
    inverse: y @ R^T = ((y @ H_d) / sqrt(d)) * s

with H_d the Sylvester Hadamard matrix (``scipy.linalg.hadamard`` order, symmetric) and s a vector of
+-1 signs. R is orthogonal, so ``inverse_rht(rht(x)) == x`` up to rounding.

``rht``/``inverse_rht`` transform each consecutive block of d elements along ``axis``; the other dims
may have any size. The tensor is viewed as (outer, L, inner) with L the transformed axis:

- inner == 1 (the last axis): "rows" kernel, tiles of [BLOCK_R, d] contiguous elements, y = x @ M;
- inner > 1 (e.g. axis=0 of a 2-D tensor): "columns" kernel, tiles of [d, BLOCK_I] read along the
  contiguous inner dim, y = M^T @ x, so no transpose is ever materialized.

Precision: the kernels multiply by the +-1 matrix diag(s) @ H_d (inverse: H_d @ diag(s)), which is
exact in every dtype, accumulate in fp32, scale the fp32 result by 1/sqrt(d) in fp32 and round once
to the output dtype. For bf16/fp16 inputs that is ONE tensor-core dot with exact operands (the only
errors are fp32 accumulation and the fp32 scale, far below the output rounding); fp32 inputs use a
``tf32x3`` dot (the +-1 matrix is exact in tf32, x is split in three). d < 16 (2, 4, 8) is below
``tl.dot``'s minimum: those use fp32 register math (broadcast multiply + sum).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import torch
import triton
import triton.language as tl

from hadamard_kernels._triton_utils import autotune_configs, bucket
from hadamard_kernels.matrices import is_power_of_two, sylvester_matrix

# -------------------------------------------------------------------------------------------------
# Constants: sign vectors
# -------------------------------------------------------------------------------------------------

#: The 16-entry sign vector that NVFP4/FP8 training recipes use by default.
DEFAULT_SIGN_VECTOR: tuple[int, ...] = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)

MIN_HADAMARD_DIMENSION = 2
MAX_HADAMARD_DIMENSION = 256
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

SignVector = Union[Sequence[int], Sequence[float], torch.Tensor]


def random_sign_vector(n: int, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                       device=None) -> torch.Tensor:
    """A float32 tensor of n random +-1 entries on ``device``.

    Reproducible: the same ``seed`` (or a generator in the same state) gives the same vector on every
    device, because the draw always happens on a CPU generator (``generator`` must be a CPU generator).
    With neither, torch's global CPU RNG is used.

    Storing it with a checkpoint: the vector IS the transform, so save it, not the seed (the seed ->
    vector mapping depends on torch's RNG). E.g. ``state["rht_signs"] = s.to(torch.int8).cpu()`` or,
    for a JSON config, ``[int(v) for v in s]``; load it back and pass the tensor/list/tuple to
    ``rht``/``rht_amax`` unchanged.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"random_sign_vector needs a positive int length, got {n!r}")
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(seed))
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"random_sign_vector draws on a CPU generator, got one on {generator.device}")
    bits = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64)
    return (1 - 2 * bits).to(dtype=torch.float32, device=device)


def _as_sign_tuple(sign_vector: SignVector) -> tuple[int, ...]:
    if isinstance(sign_vector, torch.Tensor):
        if sign_vector.dim() != 1:
            raise ValueError(f"sign vector must be 1-D, got shape {tuple(sign_vector.shape)}")
        values = sign_vector.detach().cpu().tolist()
    elif isinstance(sign_vector, (tuple, list)):
        values = list(sign_vector)
    else:
        raise TypeError(f"sign vector must be a tuple, list or 1-D tensor, got {type(sign_vector).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or v not in (1, -1):
            raise ValueError(f"sign vector entries must be +1 or -1, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _check_dimension(d) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or not is_power_of_two(d) or not (
            MIN_HADAMARD_DIMENSION <= d <= MAX_HADAMARD_DIMENSION):
        raise ValueError(f"hadamard_dimension must be a power of two from {MIN_HADAMARD_DIMENSION} to "
                         f"{MAX_HADAMARD_DIMENSION}, got {d!r}")
    return d


def _signs_for(sign_vector: SignVector, d: int) -> tuple[int, ...]:
    signs = _as_sign_tuple(sign_vector)
    if len(signs) != d:
        raise ValueError(f"sign vector has {len(signs)} entries but hadamard_dimension is {d}")
    return signs


@functools.lru_cache(maxsize=None)
def _rht_matrix_f64(signs: tuple[int, ...]) -> torch.Tensor:
    d = len(signs)
    s = torch.tensor(signs, dtype=torch.float64)
    return s[:, None] * sylvester_matrix(d, torch.float64) / math.sqrt(d)


@functools.lru_cache(maxsize=None)
def _rht_matrix_cached(signs: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _rht_matrix_f64(signs).to(dtype=dtype, device=device)


def get_rht_matrix(sign_vector: SignVector, device, dtype: torch.dtype = torch.bfloat16,
                   hadamard_dimension: int = 16) -> torch.Tensor:
    """The d x d RHT matrix ``diag(s) @ H_d / sqrt(d)`` in ``dtype`` on ``device`` (entries
    +-1/sqrt(d) rounded once from float64 to ``dtype``).

    Cached (``functools.lru_cache``) on the sign tuple, device and dtype; lists and tensors are
    converted to a tuple of ints first. The returned tensor is shared between callers: do not modify
    it in place. ValueError when d is not a power of two in [2, 256], the sign vector length is not
    d, or an entry is not +-1.
    """
    d = _check_dimension(hadamard_dimension)
    signs = _signs_for(sign_vector, d)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"get_rht_matrix needs a floating dtype, got {dtype!r}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _rht_matrix_cached(signs, device, dtype)


@functools.lru_cache(maxsize=None)
def _pm1_cached(signs: tuple[int, ...], inverse: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The unscaled +-1 (inverse) RHT matrix, diag(s) @ H_d (inverse: H_d @ diag(s)), in ``dtype``
    (exact). The kernels multiply the fp32 product by 1/sqrt(d)."""
    d = len(signs)
    s = torch.tensor(signs, dtype=torch.float64)
    h = sylvester_matrix(d, torch.float64)
    m = h * s[None, :] if inverse else s[:, None] * h
    return m.to(dtype=dtype, device=device).contiguous()


# -------------------------------------------------------------------------------------------------
# Kernels
# -------------------------------------------------------------------------------------------------

@triton.jit
def _pm_matmul(a, b, scale, D: tl.constexpr, IS_FP32: tl.constexpr):
    # (a @ b) * scale in fp32, one operand the [D, D] +-1 matrix (exact in the other's dtype, so one
    # dot with fp32 accumulation is exact up to fp32 accumulation). Rows: a = x [R, D], b = M;
    # columns: a = M^T, b = x [D, C]. Below D = 16 (tl.dot's minimum) a broadcast sum.
    if D >= 16:
        if IS_FP32:
            y = tl.dot(a, b, input_precision="tf32x3")
        else:
            y = tl.dot(a, b)
    else:
        y = tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    return y * scale


@triton.jit
def _rht_rows_kernel(x_ptr, y_ptr, m_ptr, scale, n_rows, size_bucket,
                     D: tl.constexpr, IS_FP32: tl.constexpr, BLOCK_R: tl.constexpr, TILES: tl.constexpr):
    # x, y: contiguous (n_rows, D) views (blocks along the last, contiguous axis). One program loads
    # the [D, D] +-1 matrix once, then transforms TILES consecutive tiles of BLOCK_R rows: load
    # [BLOCK_R, D], y = (x @ M) * scale (fp32), store in y's dtype (the loop is software-pipelined
    # with the config's num_stages; tiles past n_rows are masked).
    pid = tl.program_id(0)
    cols = tl.arange(0, D)
    m = tl.load(m_ptr + cols[:, None] * D + cols[None, :])
    for t in tl.range(0, TILES):
        rows = (pid.to(tl.int64) * TILES + t) * BLOCK_R + tl.arange(0, BLOCK_R)
        offs = rows[:, None] * D + cols[None, :]
        mask = rows[:, None] < n_rows
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        y = _pm_matmul(x, m, scale, D, IS_FP32)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rht_cols_kernel(x_ptr, y_ptr, m_ptr, scale, n_inner, size_bucket,
                     D: tl.constexpr, IS_FP32: tl.constexpr, BLOCK_I: tl.constexpr, TILES: tl.constexpr):
    # x, y: contiguous (n_blocks, D, n_inner) views (blocks along a middle axis). Program (b, j)
    # loads M^T once, then transforms block b for TILES consecutive tiles of BLOCK_I inner columns,
    # starting at column j*TILES*BLOCK_I: load [D, BLOCK_I] (rows strided by n_inner, columns
    # contiguous), y = (M^T @ x) * scale (fp32), store in y's dtype.
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, D)
    mt = tl.load(m_ptr + k[None, :] * D + k[:, None])  # mt[j, i] = M[i, j]
    for t in tl.range(0, TILES):
        cols = (tl.program_id(1) * TILES + t) * BLOCK_I + tl.arange(0, BLOCK_I)
        offs = b * D * n_inner + k[:, None].to(tl.int64) * n_inner + cols[None, :]
        mask = cols[None, :] < n_inner
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        y = _pm_matmul(mt, x, scale, D, IS_FP32)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# Plain lists, easy to edit after a GPU run. Six each, so a new autotune key stays cheap to compile.
# The prune hook keeps, per d, those whose fp32 [BLOCK, D] tile fits 64 registers per thread: d = 16
# tries all six (tiles of 1-16K elements), d = 128 the first three, 64 fp32 values per thread
# (BLOCK 64 / 4 warps, 128 / 8 warps, 256 / 16 warps). TILES > 1: one program loops over several
# tiles (the d x d matrix is loaded once per program, not once per tile, and the loop pipelines the
# loads: at d = 128 the bf16 matrix is 32 KiB, as large as a 128-row tile). The first entry is the
# interpreter's (and LOWPREC_AUTOTUNE=first's) config: the smallest in shared memory (one stage, one
# tile), because it is the only one such runs try; on an H200 the 3-stage 64-row tile overflowed
# shared memory at d = 256 (bf16 rows) and d = 128 (columns). The full autotuner skips configs that
# run out of resources. ``tests/hadamard_kernels/test_rht.py`` runs the TILES > 1 loop explicitly.
RHT_ROWS_CONFIGS = [
    triton.Config({"BLOCK_R": br, "TILES": t}, num_warps=w, num_stages=s)
    for br, t, w, s in ((64, 1, 4, 1), (64, 4, 4, 3), (128, 4, 8, 3), (256, 2, 16, 2), (256, 1, 4, 3),
                        (512, 4, 4, 3), (1024, 1, 8, 2))
]
RHT_COLS_CONFIGS = [
    triton.Config({"BLOCK_I": bi, "TILES": t}, num_warps=w, num_stages=s)
    for bi, t, w, s in ((64, 1, 4, 1), (64, 4, 4, 3), (128, 4, 8, 3), (256, 2, 16, 2), (256, 1, 4, 3),
                        (512, 4, 4, 3), (512, 1, 8, 2))
]


def _fits(configs, block: str, d: int):
    # registers: the fp32 [BLOCK, D] result (and, for d < 16, the [BLOCK, D, D] product) at most 64
    # values per thread
    limit = lambda c: 64 * 32 * c.num_warps  # noqa: E731
    kept = [c for c in configs if c.kwargs[block] * d <= limit(c) and (d >= 16 or c.kwargs[block] * d * d <= limit(c))]
    return kept or [min(configs, key=lambda c: (c.kwargs[block], -c.num_warps))]


def _prune_rows(configs, named_args, **kwargs):
    d = named_args["D"] if "D" in named_args else kwargs["D"]
    return _fits(configs, "BLOCK_R", d)


def _prune_cols(configs, named_args, **kwargs):
    d = named_args["D"] if "D" in named_args else kwargs["D"]
    return _fits(configs, "BLOCK_I", d)


_rht_rows = triton.autotune(configs=autotune_configs(RHT_ROWS_CONFIGS), key=["D", "IS_FP32", "size_bucket"],
                            prune_configs_by={"early_config_prune": _prune_rows})(_rht_rows_kernel)
_rht_cols = triton.autotune(configs=autotune_configs(RHT_COLS_CONFIGS), key=["D", "IS_FP32", "size_bucket"],
                            prune_configs_by={"early_config_prune": _prune_cols})(_rht_cols_kernel)


# -------------------------------------------------------------------------------------------------
# Launcher
# -------------------------------------------------------------------------------------------------

def _normalize_axis(axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-D tensor")
    return axis % ndim


def _validate(x: torch.Tensor, d: int, axis: int, name: str) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name} supports bfloat16, float16 and float32 inputs, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} needs at least 1 dim, got a 0-d tensor")
    _check_dimension(d)
    axis = _normalize_axis(axis, x.dim())
    if x.shape[axis] % d:
        raise ValueError(f"{name}: size {x.shape[axis]} of axis {axis} (shape {tuple(x.shape)}) is not a "
                         f"multiple of hadamard_dimension={d}")
    return axis


def _size_bucket(numel: int) -> int:
    return bucket(numel).bit_length()


def _rht_launch(x: torch.Tensor, signs: tuple[int, ...], d: int, axis: int, inverse: bool) -> torch.Tensor:
    axis = _validate(x, d, axis, "inverse_rht" if inverse else "rht")
    if x.dtype == torch.float32 and d > 128:
        raise ValueError(f"rht of float32 input supports hadamard_dimension <= 128, got {d}: the float32 "
                         f"{d}x{d} matrix does not fit in shared memory (use bf16/fp16 input for d = 256)")
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return y
    xc = x.contiguous()
    inner = math.prod(x.shape[axis + 1:])
    m = _pm1_cached(signs, inverse, x.device, x.dtype)
    scale = 1.0 / math.sqrt(d)
    is_fp32 = x.dtype == torch.float32
    sb = _size_bucket(x.numel())
    if inner == 1:
        n_rows = x.numel() // d
        grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_R"] * meta["TILES"]),)  # noqa: E731
        _rht_rows[grid](xc, y, m, scale, n_rows, sb, D=d, IS_FP32=is_fp32)
    else:
        n_blocks = x.numel() // (d * inner)
        grid = lambda meta: (n_blocks, triton.cdiv(inner, meta["BLOCK_I"] * meta["TILES"]))  # noqa: E731
        _rht_cols[grid](xc, y, m, scale, inner, sb, D=d, IS_FP32=is_fp32)
    return y


# -------------------------------------------------------------------------------------------------
# Custom ops
# -------------------------------------------------------------------------------------------------

@torch.library.custom_op("hadamard_kernels::rht", mutates_args=())
def _rht_op(x: torch.Tensor, signs: list[int], axis: int, inverse: bool) -> torch.Tensor:
    return _rht_launch(x, tuple(signs), len(signs), axis, inverse)


@_rht_op.register_fake
def _(x, signs, axis, inverse):
    _validate(x, len(signs), axis, "inverse_rht" if inverse else "rht")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# -------------------------------------------------------------------------------------------------
# Public functions
# -------------------------------------------------------------------------------------------------

def rht(x: torch.Tensor, sign_vector: SignVector = DEFAULT_SIGN_VECTOR, hadamard_dimension: int = 16,
        axis: int = -1) -> torch.Tensor:
    """RHT of each consecutive block of d = ``hadamard_dimension`` elements along ``axis``:
    block @ diag(s) @ H_d / sqrt(d), computed in fp32 and rounded once to x's dtype.

    x: bf16, fp16 or fp32, any shape; ``x.shape[axis]`` a multiple of d. The output is contiguous
    (a non-contiguous x is copied to a contiguous one first).
    """
    d = _check_dimension(hadamard_dimension)
    signs = _signs_for(sign_vector, d)
    _validate(x, d, axis, "rht")
    return _rht_op(x, list(signs), axis, False)


def inverse_rht(x: torch.Tensor, sign_vector: SignVector = DEFAULT_SIGN_VECTOR, hadamard_dimension: int = 16,
                axis: int = -1) -> torch.Tensor:
    """Inverse of ``rht``: each block y -> y @ H_d @ diag(s) / sqrt(d) (fp32 math, one rounding)."""
    d = _check_dimension(hadamard_dimension)
    signs = _signs_for(sign_vector, d)
    _validate(x, d, axis, "inverse_rht")
    return _rht_op(x, list(signs), axis, True)
