"""The Randomized Hadamard Transform (RHT): ``rht`` / ``inverse_rht`` and the public RHT matrix.

Convention (``hadamard_kernels.signs``, shared by every package): for a block x of d consecutive
elements (a 1 x d row),

    RHT(x) = x @ R,   R = diag(s) @ H_d / sqrt(d)          (``get_rht_matrix``)
    inverse: y @ R^T = ((y @ H_d) / sqrt(d)) * s

with H_d the Sylvester Hadamard matrix and s a vector of +-1 signs (a ``SignVector``, or a tensor,
list or tuple turned into one by ``as_sign_vector``). R is orthogonal, so ``inverse_rht(rht(x)) == x``
up to rounding.

``rht``/``inverse_rht`` transform each consecutive block of d elements along ``axis``; the other dims
may have any size. The tensor is viewed as (outer, L, inner) with L the transformed axis:

- inner == 1 (the last axis): "rows" kernel, tiles of [BLOCK_R, d] contiguous elements, y = x @ M;
- inner > 1 (e.g. axis=0 of a 2-D tensor): "columns" kernel, tiles of [d, BLOCK_I] read along the
  contiguous inner dim, y = M^T @ x, so no transpose is ever materialized.
- On Hopper (sm90), eager calls (and the op run eagerly, e.g. under autograd) with d >= 16 run the
  Gluon butterfly of ``gluon_butterfly`` instead where it measured faster: rows of d along the last
  axis, and column tiles for d = 256 when >= 64 contiguous elements (a multiple of 16) follow the
  axis (``GLUON_D``, ``GLUON_COLS_D``). The signs are fused into its load (RHT) or store (inverse).

Precision: the kernels multiply by the +-1 matrix diag(s) @ H_d (inverse: H_d @ diag(s)), which is
exact in every dtype, accumulate in fp32, scale the fp32 result by 1/sqrt(d) in fp32 and round once
to the output dtype. For bf16/fp16 inputs that is ONE tensor-core dot with exact operands (the only
errors are fp32 accumulation and the fp32 scale, far below the output rounding); fp32 inputs use a
``tf32x3`` dot (the +-1 matrix is exact in tf32, x is split in three). d < 16 (2, 4, 8) is below
``tl.dot``'s minimum: those use fp32 register math (broadcast multiply + sum). The Gluon butterfly
takes log2(d) rounds of IEEE fp32 adds instead of the dot's fp32 accumulation, then the same fp32
scale and one rounding: both are within one rounding of the exact result, and for bf16/fp16 (nearly)
every output equals the exact result rounded once, but the two kernels can differ in the last bit
(fp32: in the last bits). Under torch.compile the dot kernels run, so a compiled and an eager call
on Hopper can differ there too.

Gradients: R is orthogonal, so the backward of ``rht`` is ``inverse_rht`` of the incoming gradient
(grad @ R^T per block) and the backward of ``inverse_rht`` is ``rht`` (grad @ R), with the same sign
vector, axis and d: one more call of the same kernels, registered on the op with
``torch.library.register_autograd`` (so it also works under ``torch.compile``, and twice for double
backward). This is the library's gradient policy: differentiable where the backward is another call
of our kernels (``hadamard_transform*``, ``rht``, ``inverse_rht``); everything that quantizes or takes
an amax (``rht_amax``, ``fp8_quant``, ``attention``) raises a ValueError before any launch when grad
mode is on and an input requires grad.

Seam: ``_rht_launch(x, sv, axis, inverse, config=None)`` runs the autotuned kernel (``config=None``)
or exactly one ``triton.Config`` (tests, benchmarks). The public functions validate once and call it
directly in eager mode; under ``torch.compile`` and when autograd records a graph they go through
the registered op ``hadamard_kernels::rht`` (a ``triton_op``: Inductor compiles the launch). The eager
path is kept short (it runs on every call): one validation pass, the grid as plain integer ceil-divs
(``triton.cdiv`` is a JIT function in triton 3.6, costly to call from Python), no reshape of the input.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from hadamard_kernels.gluon_butterfly import eligible as gluon_eligible, eligible_cols as gluon_eligible_cols
from hadamard_kernels.gluon_butterfly import gluon_cols_launch, gluon_launch
from hadamard_kernels.matrices import is_power_of_two
from hadamard_kernels.runtime import autotune_do_bench, autotune_configs, launch
from hadamard_kernels.signs import DEFAULT_SIGN_VECTOR, SignVector, as_sign_vector, random_sign_vector
from hadamard_kernels.triton_ops import graph_constant, traced_launch, triton_library_op

__all__ = ["rht", "inverse_rht", "get_rht_matrix", "DEFAULT_SIGN_VECTOR", "random_sign_vector"]

MIN_HADAMARD_DIMENSION = 2
MAX_HADAMARD_DIMENSION = 256
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# the valid d (powers of two in [MIN, MAX]) and each one's fp32 output scale 1/sqrt(d)
_SCALES = {d: 1.0 / math.sqrt(d) for d in range(MIN_HADAMARD_DIMENSION, MAX_HADAMARD_DIMENSION + 1)
           if is_power_of_two(d)}


def _check_dimension(d) -> int:
    if type(d) is not int or d not in _SCALES:  # bool is not int here
        raise ValueError(f"hadamard_dimension must be a power of two from {MIN_HADAMARD_DIMENSION} to "
                         f"{MAX_HADAMARD_DIMENSION}, got {d!r}")
    return d


def _resolve_signs(sign_vector, hadamard_dimension) -> SignVector:
    """The validated ``SignVector`` of length d = ``hadamard_dimension`` (ValueError/TypeError)."""
    return as_sign_vector(sign_vector, _check_dimension(hadamard_dimension))


def _normalize_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def get_rht_matrix(sign_vector, device, dtype: torch.dtype = torch.bfloat16,
                   hadamard_dimension: int = 16) -> torch.Tensor:
    """The d x d RHT matrix ``diag(s) @ H_d / sqrt(d)`` in ``dtype`` on ``device`` (entries
    +-1/sqrt(d) rounded once from float64 to ``dtype``).

    A fresh tensor on every call (a copy of the matrix cached on the ``SignVector``): the caller may
    modify it without changing later results. ValueError when d is not a power of two in [2, 256],
    the sign vector length is not d, or an entry is not +-1.

    >>> r = get_rht_matrix(DEFAULT_SIGN_VECTOR, "cpu", torch.float64)  # diag(s) H_16 / 4
    >>> r[0, :4].tolist()
    [0.25, 0.25, 0.25, 0.25]
    >>> torch.allclose(r @ r.T, torch.eye(16, dtype=torch.float64))
    True
    >>> r *= 4  # a fresh copy: later calls, rht and rht_amax are unaffected
    >>> get_rht_matrix(DEFAULT_SIGN_VECTOR, "cpu", torch.float64)[0, 0].item()
    0.25
    """
    sv = _resolve_signs(sign_vector, hadamard_dimension)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"get_rht_matrix needs a floating dtype, got {dtype!r}")
    return sv.rht_matrix(_normalize_device(device), dtype).clone()


# -------------------------------------------------------------------------------------------------
# Kernels
# -------------------------------------------------------------------------------------------------

@triton.jit
def block_dot(a, b, D: tl.constexpr, IS_FP32: tl.constexpr):
    # a @ b in fp32 for the RHT kernels (here and in rht_amax), one operand the [D, D] RHT matrix.
    # bf16/fp16: one tl.dot with fp32 accumulation; fp32: tf32x3. Below D = 16 (tl.dot's minimum)
    # a broadcast multiply + sum in fp32 registers.
    if D >= 16:
        if IS_FP32:
            y = tl.dot(a, b, input_precision="tf32x3")
        else:
            y = tl.dot(a, b)
    else:
        y = tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    return y


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
        y = block_dot(x, m, D, IS_FP32) * scale
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
        y = block_dot(mt, x, D, IS_FP32) * scale
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# Plain lists, easy to edit after a GPU run. The prune hook keeps, per d, those whose fp32
# [BLOCK, D] tile fits 64 registers per thread: d = 16 tries all of them (tiles of 1-16K elements),
# d = 128 the first three, 64 fp32 values per thread (BLOCK 64 / 4 warps, 128 / 8 warps, 256 / 16
# warps). TILES > 1: one program loops over several tiles (the d x d matrix is loaded once per
# program, not once per tile, and the loop pipelines the loads: at d = 128 the bf16 matrix is 32 KiB,
# as large as a 128-row tile). The first entry is the interpreter's (and LOWPREC_AUTOTUNE=first's)
# config: the smallest in shared memory (one stage, one tile), because it is the only one such runs
# try; on an H200 the 3-stage 64-row tile overflowed shared memory at d = 256 (bf16 rows) and d = 128
# (columns). The full autotuner skips configs that run out of resources.
# ``tests/hadamard_kernels/test_rht.py`` runs the TILES > 1 loop through the seam.
RHT_ROWS_CONFIGS = [
    triton.Config({"BLOCK_R": br, "TILES": t}, num_warps=w, num_stages=s)
    for br, t, w, s in ((64, 1, 4, 1), (64, 4, 4, 3), (128, 4, 8, 3), (256, 2, 16, 2), (256, 1, 4, 3),
                        (512, 4, 4, 3), (1024, 1, 8, 2))
]
RHT_COLS_CONFIGS = [
    triton.Config({"BLOCK_I": bi, "TILES": t}, num_warps=w, num_stages=s)
    for bi, t, w, s in ((64, 1, 4, 1), (64, 4, 4, 3), (128, 4, 8, 3), (256, 2, 16, 2), (256, 1, 4, 3),
                        (512, 4, 4, 3), (512, 1, 8, 2), (128, 8, 8, 4))
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


_rht_rows = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(RHT_ROWS_CONFIGS), key=["D", "IS_FP32", "size_bucket"],
                            prune_configs_by={"early_config_prune": _prune_rows})(_rht_rows_kernel)
_rht_cols = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(RHT_COLS_CONFIGS), key=["D", "IS_FP32", "size_bucket"],
                            prune_configs_by={"early_config_prune": _prune_cols})(_rht_cols_kernel)


# -------------------------------------------------------------------------------------------------
# Validation and launcher (the seam)
# -------------------------------------------------------------------------------------------------

def _normalize_axis(axis, ndim: int) -> int:
    if type(axis) is not int and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-D tensor")
    return axis % ndim


def _validate(x: torch.Tensor, d: int, axis, name: str) -> int:
    """Cheap checks of x, d and axis (no device work); returns the normalized axis."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    dtype = x.dtype
    if dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name} supports bfloat16, float16 and float32 inputs, got {dtype}")
    shape = x.shape
    if not shape:
        raise ValueError(f"{name} needs at least 1 dim, got a 0-d tensor")
    _check_dimension(d)
    axis = _normalize_axis(axis, len(shape))
    if shape[axis] % d:
        raise ValueError(f"{name}: size {shape[axis]} of axis {axis} (shape {tuple(shape)}) is not a "
                         f"multiple of hadamard_dimension={d}")
    if d > 128 and dtype is torch.float32:
        raise ValueError(f"{name} of float32 input supports hadamard_dimension <= 128, got {d}: the float32 "
                         f"{d}x{d} matrix does not fit in shared memory (use bf16/fp16 input for d = 256)")
    return axis


def _size_bucket(numel: int) -> int:
    """The ``size_bucket`` autotune key of a tensor of numel >= 1 elements: the bit length of
    ``runtime.bucket(numel)`` (the next power of two), computed without building that power."""
    return (numel - 1).bit_length() + 1


# d that run the Gluon butterfly on Hopper (eager calls, config None or LOG_T). Measured on an H200
# (bf16 (16384, 8192), % of clone): rows 99.4-100% for d = 16..128 and 95% at 256, against 96-100% /
# 88% / 38% for the dot kernel (d = 16..64 / 128 / 256). Columns (axis 0): Gluon 93-94% / 83% / 71%
# against the dot kernel's 92-94% / 89% / 35%, so with config None only d = 256 takes the Gluon
# column tiles there (a LOG_T config forces them for any d in GLUON_D).
GLUON_D = frozenset({16, 32, 64, 128, 256})
GLUON_COLS_D = frozenset({256})


def _rht_launch(x: torch.Tensor, sv: SignVector, axis: int, inverse: bool,
                config: "triton.Config | None" = None, traced: bool = False) -> torch.Tensor:
    """The seam: RHT (or inverse) of x along ``axis`` with d = len(sv). x, sv and axis are validated
    by the caller. ``config=None`` autotunes; a ``triton.Config`` (BLOCK_R or BLOCK_I, TILES, warps,
    stages) launches exactly that config on the rows (axis last) or columns kernel. ``traced``: the
    op body's launch through ``wrap_triton``, the cached matrix a graph constant."""
    d = len(sv)
    shape = x.shape
    ndim = len(shape)
    axis = axis % ndim
    dtype, device = x.dtype, x.device
    y = torch.empty(shape, dtype=dtype, device=device)  # contiguous
    numel = y.numel()
    if numel == 0:
        return y
    if not x.is_contiguous():
        x = x.contiguous()
    if traced:
        m = graph_constant(lambda: sv.pm1_matrix(inverse, device, dtype))
    else:
        m = sv.pm1_matrix(inverse, device, dtype)  # cached on sv, never handed to callers
    run = traced_launch if traced else launch
    consts = {"D": d, "IS_FP32": dtype is torch.float32}
    sb = _size_bucket(numel)
    # grids: plain integer ceil-divs, (n - 1) // b + 1 for n >= 1 (triton.cdiv is a JIT function in
    # triton 3.6, slow to call from Python)
    inner = 1 if axis == ndim - 1 else math.prod(shape[axis + 1:])
    gluon_ok = not traced and (config is None or "LOG_T" in config.kwargs) and d in GLUON_D
    if gluon_ok and inner == 1 and gluon_eligible(x, d, True):
        # contiguous rows of d on Hopper: the Gluon butterfly with the signs fused (before the
        # transform for the RHT, after it for the inverse)
        gluon_launch(x, y, numel // d, _SCALES[d], config, n=d, signs=sv._cached(device), signs_after=inverse)
    elif gluon_ok and inner > 1 and (config is not None or d in GLUON_COLS_D) and gluon_eligible_cols(x, d, inner):
        # blocks along a middle axis, rows of >= 64 contiguous elements: the Gluon column tiles
        gluon_cols_launch(x, y, numel // (d * inner), d, inner, _SCALES[d], config, signs=sv._cached(device),
                          signs_after=inverse)
    elif config is not None and "LOG_T" in config.kwargs:
        raise ValueError(f"a LOG_T (Gluon) config runs d >= {min(GLUON_D)} on a CUDA tensor on sm90 (eagerly), "
                         f"along the last axis or along one followed by >= 64 contiguous elements (a multiple "
                         f"of 16); got d={d}, axis={axis}, shape {tuple(shape)}")
    elif inner == 1:  # the last axis, or only size-1 dims after it: contiguous rows of d
        n_rows = numel // d
        grid = lambda meta: ((n_rows - 1) // (meta["BLOCK_R"] * meta["TILES"]) + 1,)  # noqa: E731
        run(_rht_rows, grid, (x, y, m, _SCALES[d], n_rows, sb), consts, config)
    else:
        n_blocks = numel // (d * inner)
        grid = lambda meta: (n_blocks, (inner - 1) // (meta["BLOCK_I"] * meta["TILES"]) + 1)  # noqa: E731
        run(_rht_cols, grid, (x, y, m, _SCALES[d], inner, sb), consts, config)
    return y


# -------------------------------------------------------------------------------------------------
# Op (torch.compile, autograd, torch.ops.hadamard_kernels.rht): a triton_op whose body Inductor
# traces (the signs are a constant list, the +-1 matrix a graph constant); a custom_op with this fake
# under the interpreter (hadamard_kernels.triton_ops). Its backward is the op in the other direction.
# -------------------------------------------------------------------------------------------------

def _tracing(x: torch.Tensor) -> bool:
    """True while the op body is traced (torch.compile, make_fx: a dispatch mode is active, x is a
    fake or functional tensor); False when it runs eagerly."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return bool(_get_current_dispatch_mode_stack()) or isinstance(x, (FakeTensor, FunctionalTensor))


def _rht_fake(x, signs, axis, inverse):
    _validate(x, len(signs), axis, "inverse_rht" if inverse else "rht")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@triton_library_op("hadamard_kernels::rht", _rht_fake)
def _rht_op(x: torch.Tensor, signs: list[int], axis: int, inverse: bool) -> torch.Tensor:
    sv = as_sign_vector(signs, name="signs")  # a list: checked in Python, cached per tuple
    axis = _validate(x, len(sv), axis, "inverse_rht" if inverse else "rht")  # the op is callable directly
    # run eagerly (autograd recording, a direct call), the op launches what an eager rht launches,
    # so forward and backward give the same bits as the eager functions
    return _rht_launch(x, sv, axis, inverse, traced=_tracing(x))


def _rht_setup_context(ctx, inputs, output):
    _, signs, axis, inverse = inputs
    ctx.signs, ctx.axis, ctx.inverse = signs, axis, inverse


def _rht_backward(ctx, grad):
    # y = x @ R per block (inverse: y = x @ R^T) with R orthogonal, so dL/dx = grad @ R^T (inverse:
    # grad @ R): the op in the other direction, same signs, axis and d. Through the op, so that a
    # double backward and torch.compile's traced backward see it too.
    return _rht_op(grad, ctx.signs, ctx.axis, not ctx.inverse), None, None, None


torch.library.register_autograd("hadamard_kernels::rht", _rht_backward, setup_context=_rht_setup_context)


# -------------------------------------------------------------------------------------------------
# Public functions
# -------------------------------------------------------------------------------------------------

def _rht_public(x, sign_vector, hadamard_dimension, axis, inverse: bool) -> torch.Tensor:
    sv = _resolve_signs(sign_vector, hadamard_dimension)
    axis = _validate(x, len(sv), axis, "inverse_rht" if inverse else "rht")
    if (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return _rht_op(x, list(sv.values), axis, inverse)  # autograd records the op's backward
    return _rht_launch(x, sv, axis, inverse)


def rht(x: torch.Tensor, sign_vector=DEFAULT_SIGN_VECTOR, hadamard_dimension: int = 16,
        axis: int = -1) -> torch.Tensor:
    """RHT of each consecutive block of d = ``hadamard_dimension`` elements along ``axis``:
    block @ diag(s) @ H_d / sqrt(d), computed in fp32 and rounded once to x's dtype.

    x: bf16, fp16 or fp32 (fp32: d <= 128), any shape; ``x.shape[axis]`` a multiple of d. The output
    is contiguous (a non-contiguous x is copied to a contiguous one first). ``sign_vector``: a
    ``SignVector``, tensor, list or tuple of d entries, each +1 or -1 (ValueError otherwise); a
    tensor is read to the host once per tensor version, a ``SignVector`` never.

    Differentiable: the gradient of ``rht(x, s, d, axis)`` with respect to x is
    ``inverse_rht(grad, s, d, axis)`` (R is orthogonal), computed by the same kernels, in x's dtype;
    double backward works too. Under ``torch.no_grad()`` / ``torch.inference_mode()`` or for inputs
    that do not require grad, nothing is recorded and the kernel is launched directly.

    >>> x = torch.randn(4, 64)
    >>> y = rht(x)  # blocks of 16 along the last axis, DEFAULT_SIGN_VECTOR
    >>> torch.allclose(inverse_rht(y), x, atol=1e-5)
    True
    """
    return _rht_public(x, sign_vector, hadamard_dimension, axis, False)


def inverse_rht(x: torch.Tensor, sign_vector=DEFAULT_SIGN_VECTOR, hadamard_dimension: int = 16,
                axis: int = -1) -> torch.Tensor:
    """Inverse of ``rht``: each block y -> y @ H_d @ diag(s) / sqrt(d) (fp32 math, one rounding).
    Same arguments as ``rht``. Differentiable: its gradient is ``rht(grad, s, d, axis)``.

    >>> x = torch.randn(32, 8, dtype=torch.bfloat16)
    >>> y = inverse_rht(rht(x, hadamard_dimension=16, axis=0), hadamard_dimension=16, axis=0)
    >>> y.shape, y.dtype
    (torch.Size([32, 8]), torch.bfloat16)
    """
    return _rht_public(x, sign_vector, hadamard_dimension, axis, True)
