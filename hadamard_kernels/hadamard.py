"""Walsh-Hadamard transforms along the last dim: an in-register butterfly kernel and a tensor-core
matmul kernel, for n = 2^m (2..32768) and n = K * 2^m (K in {12, 20, 28, 40}, 2^m <= 1024).

Contract (that of ``fast_hadamard_transform.hadamard_transform``): ``out = (x @ M) * scale`` along the
last dim, M = H_n (Sylvester, unnormalized) or M = kron(H_K, H_{2^m}); same dtype as ``x``; any number
of leading dims; unsupported sizes raise ValueError (no padding).

A row of n = K * P elements (P = 2^m) is read as a K x P matrix X (row-major), and x @ M is
H_K^T X H_P. Both kernels keep BLOCK_M whole rows per program in registers as a [BLOCK_M, KP, P] fp32
tile (KP = K rounded up to a power of two, masked), and round once at the store.

- Butterfly: H_P as log2(P) radix-2 stages, each a reshape/permute/split/join of the register tile
  (no scratch, no barrier); the K mix (K > 1) as a sum over the K axis per output slice.
- Matmul (HadaCore): H_P = H_F1 (x) H_F2 (x) H_F3 (each F a power of two in 16..128, generated in
  the kernel), each factor one ``tl.dot`` along one axis of the reshaped tile, permutes in between;
  the K mix one more dot against the zero-padded H_K. Operands are split into bf16 pieces
  (x = hi + lo for 16-bit outputs, hi + mid + lo for fp32) whose products with +-1 are exact, with
  fp32 accumulation: no intermediate is rounded to bf16. P < 16 (too small for a dot) uses butterfly
  stages for the power-of-two part.

``hadamard_transform`` and ``hadamard_transform_<K>N`` pick the kernel per (n, dtype) with ``_pick``
from the tables of ``hadamard_kernels.dispatch_table`` (written by ``python -m benchmarks.dispatch``
from the tour's measured rows, never by hand).

Call path: public functions validate once, then launch directly in eager mode (``_launch``, no
dispatcher), and go through the registered ``triton_op`` (Inductor compiles the launch itself) under
``torch.compile`` or when autograd records. ``_launch(x, scale, h_k, kernel, config=None)`` is the
seam tests and benchmarks use to force a kernel and a ``triton.Config``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from hadamard_kernels.dispatch_table import DEFAULT, DISPATCH, DISPATCH_K
from hadamard_kernels.matrices import HADAMARD_K, hadamard_k_matrix, is_hadamard, is_power_of_two
from hadamard_kernels.runtime import autotune_do_bench, autotune_configs, bucket, launch
from hadamard_kernels.triton_helpers import butterfly_stages
from hadamard_kernels.triton_ops import traced_launch, triton_library_op

# --- Constants -------------------------------------------------------------------------------

MAX_POW2 = 32768  # largest power-of-two n
MAX_P_FOR_K = 1024  # n = K * 2^m with 2^m <= 1024
# The matmul kernel's layout changes need shared memory ~4 bytes per padded row element: a padded
# row (KP * P) above 32768 (only K = 40 with 2^m = 1024: 64 * 1024) does not fit on Hopper.
MATMUL_MAX_ROW = 32768
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --- Kernels ---------------------------------------------------------------------------------


@triton.jit
def _row_offsets(pid, M, R1, stride_x0, stride_x1, BLOCK_M: tl.constexpr):
    # Row m of the flattened batch sits at (m // R1) * stride_x0 + (m % R1) * stride_x1 (int64):
    # a 3-d input with any leading strides is read in place.
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs = (rows // R1) * stride_x0 + (rows % R1) * stride_x1
    return rows, offs


@triton.jit
def _load_tile(x_ptr, offs_x, col, mask, pid, M, N: tl.constexpr, BLOCK_M: tl.constexpr,
               KP: tl.constexpr, P: tl.constexpr, FLAT: tl.constexpr):
    # [BLOCK_M, KP, P] fp32. FLAT (K == 1, rows contiguous, N apart): one contiguous 1-d load of
    # BLOCK_M * N elements (full-width vector loads even for tiny n), reshaped to rows.
    if FLAT:
        start = pid.to(tl.int64) * (BLOCK_M * N)
        offs = start + tl.arange(0, BLOCK_M * P).to(tl.int64)
        x = tl.load(x_ptr + offs, mask=(offs // N) < M, other=0.0)
        x = tl.reshape(x, [BLOCK_M, KP, P])
    else:
        x = tl.load(x_ptr + offs_x[:, None, None] + col[None, :, :], mask=mask, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _store_rows(out_ptr, y, rows, col, mask, pid, M, N: tl.constexpr, BLOCK_M: tl.constexpr,
                KP: tl.constexpr, P: tl.constexpr, FLAT: tl.constexpr):
    # y: [BLOCK_M, KP, P] fp32 -> out rows (contiguous, N apart), one rounding here.
    if FLAT:
        offs = pid.to(tl.int64) * (BLOCK_M * N) + tl.arange(0, BLOCK_M * P).to(tl.int64)
        tl.store(out_ptr + offs, tl.reshape(y, [BLOCK_M * P]).to(out_ptr.dtype.element_ty), mask=(offs // N) < M)
    else:
        tl.store(out_ptr + rows[:, None, None] * N + col[None, :, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwht_butterfly_kernel(
    x_ptr, out_ptr, hk_ptr,  # x: rows of N = K * P elements (last dim contiguous); out contiguous
    M, R1, stride_x0, stride_x1, scale,
    M_BUCKET,  # autotune key only
    N: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, P: tl.constexpr, LOG_P: tl.constexpr,
    FLAT: tl.constexpr, TILE: tl.constexpr,
):
    # One program: BLOCK_M = ceil(TILE / (KP * P)) whole rows, as a [BLOCK_M, KP, P] fp32 tile
    # (K axis padded to KP with zeros). H_P by in-register butterfly stages; for K > 1 each output
    # slice i (P columns) is sum_j H_K[j, i] * Y[:, j, :], with H_K read from hk_ptr ([K, K] fp32,
    # contiguous; rows >= K masked to zero). Output rows are contiguous, N apart.
    BLOCK_M: tl.constexpr = (TILE + KP * P - 1) // (KP * P)
    pid = tl.program_id(0)
    rows, offs_x = _row_offsets(pid, M, R1, stride_x0, stride_x1, BLOCK_M)
    offs_k = tl.arange(0, KP)
    offs_p = tl.arange(0, P)
    col = offs_k[:, None] * P + offs_p[None, :]  # [KP, P]
    row_ok = rows < M
    mask = row_ok[:, None, None] & (offs_k < K)[None, :, None]
    x = _load_tile(x_ptr, offs_x, col, mask, pid, M, N, BLOCK_M, KP, P, FLAT)
    y = butterfly_stages(tl.reshape(x, [BLOCK_M * KP, P]), BLOCK_M * KP, P, LOG_P)
    out_row = out_ptr + rows[:, None] * N
    if K == 1:
        y = tl.reshape(y, [BLOCK_M, KP, P]) * scale
        _store_rows(out_ptr, y, rows, col, mask, pid, M, N, BLOCK_M, KP, P, FLAT)
    else:
        y = tl.reshape(y, [BLOCK_M, KP, P])
        for i in range(K):
            h_col = tl.load(hk_ptr + offs_k * K + i, mask=offs_k < K, other=0.0)  # H_K[:, i]
            o = tl.sum(y * h_col[None, :, None], axis=1) * scale
            tl.store(out_row + i * P + offs_p[None, :], o.to(out_ptr.dtype.element_ty),
                     mask=row_ok[:, None])


@triton.jit
def _sylvester_factor(F: tl.constexpr, LOG_F: tl.constexpr):
    # The F x F Sylvester matrix in bf16 (exact): entry (i, j) = (-1) ** popcount(i & j).
    i = tl.arange(0, F)[:, None]
    j = tl.arange(0, F)[None, :]
    p = i & j
    par = p & 0
    for b in tl.static_range(LOG_F):
        par = par ^ ((p >> b) & 1)
    return (1 - 2 * par).to(tl.float32).to(tl.bfloat16)


@triton.jit
def _split_dot(a, h, SPLITS: tl.constexpr):
    # a @ h with fp32 a and an exact bf16 +-1/0 matrix h on tensor cores, no rounding of a:
    # a = hi + mid (+ lo), each a bf16, every product with h exact, accumulation in fp32.
    hi = a.to(tl.bfloat16)
    r = a - hi.to(tl.float32)
    mid = r.to(tl.bfloat16)
    acc = tl.dot(mid, h, out_dtype=tl.float32)
    if SPLITS == 3:
        lo = (r - mid.to(tl.float32)).to(tl.bfloat16)
        acc = tl.dot(lo, h, acc)
    acc = tl.dot(hi, h, acc)
    return acc


@triton.jit
def _fwht_matmul_kernel(
    x_ptr, out_ptr, hk_ptr,
    M, R1, stride_x0, stride_x1, scale,
    M_BUCKET,
    N: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, P: tl.constexpr, LOG_P: tl.constexpr,
    F1: tl.constexpr, LOG_F1: tl.constexpr, F2: tl.constexpr, LOG_F2: tl.constexpr,
    F3: tl.constexpr, LOG_F3: tl.constexpr, SPLITS: tl.constexpr,
    FLAT: tl.constexpr, TILE: tl.constexpr,
):
    # One program: BLOCK_M = ceil(TILE / (KP * P)) whole rows as a [BLOCK_M, KP, P] fp32 tile.
    # P = F1 * F2 * F3 (F3, F2 may be 1): H_P = H_F1 (x) H_F2 (x) H_F3, one tl.dot per factor along
    # its axis of the [R, F1, F2, F3] view (permutes bring that axis last). P < 16: butterfly stages.
    # K > 1: one more dot along the K axis against H_K (hk_ptr: [K, K] fp32 contiguous, loaded
    # zero-padded to [KP, KP] bf16 (exact), KP >= 16).
    BLOCK_M: tl.constexpr = (TILE + KP * P - 1) // (KP * P)
    R: tl.constexpr = BLOCK_M * KP
    pid = tl.program_id(0)
    rows, offs_x = _row_offsets(pid, M, R1, stride_x0, stride_x1, BLOCK_M)
    offs_k = tl.arange(0, KP)
    offs_p = tl.arange(0, P)
    col = offs_k[:, None] * P + offs_p[None, :]
    row_ok = rows < M
    mask = row_ok[:, None, None] & (offs_k < K)[None, :, None]
    x = _load_tile(x_ptr, offs_x, col, mask, pid, M, N, BLOCK_M, KP, P, FLAT)
    y = tl.reshape(x, [R, P])
    if P < 16:
        y = butterfly_stages(y, R, P, LOG_P)
    elif F2 == 1:
        y = _split_dot(y, _sylvester_factor(F1, LOG_F1), SPLITS)
    elif F3 == 1:
        y = _split_dot(tl.reshape(y, [R * F1, F2]), _sylvester_factor(F2, LOG_F2), SPLITS)
        y = tl.reshape(tl.permute(tl.reshape(y, [R, F1, F2]), (0, 2, 1)), [R * F2, F1])
        y = _split_dot(y, _sylvester_factor(F1, LOG_F1), SPLITS)
        y = tl.reshape(tl.permute(tl.reshape(y, [R, F2, F1]), (0, 2, 1)), [R, P])
    else:
        y = _split_dot(tl.reshape(y, [R * F1 * F2, F3]), _sylvester_factor(F3, LOG_F3), SPLITS)
        y = tl.reshape(tl.permute(tl.reshape(y, [R, F1, F2, F3]), (0, 1, 3, 2)), [R * F1 * F3, F2])
        y = _split_dot(y, _sylvester_factor(F2, LOG_F2), SPLITS)  # view [R, F1, F3, F2]
        y = tl.reshape(tl.permute(tl.reshape(y, [R, F1, F3, F2]), (0, 3, 2, 1)), [R * F2 * F3, F1])
        y = _split_dot(y, _sylvester_factor(F1, LOG_F1), SPLITS)  # view [R, F2, F3, F1]
        y = tl.reshape(tl.permute(tl.reshape(y, [R, F2, F3, F1]), (0, 3, 1, 2)), [R, P])
    if K > 1:
        # [BLOCK_M, KP, P] -> [BLOCK_M, P, KP]: out[:, :, i] = sum_j y[:, :, j] * H_K[j, i]
        y = tl.reshape(tl.permute(tl.reshape(y, [BLOCK_M, KP, P]), (0, 2, 1)), [BLOCK_M * P, KP])
        k_ok = offs_k < K
        hk = tl.load(hk_ptr + offs_k[:, None] * K + offs_k[None, :], mask=k_ok[:, None] & k_ok[None, :],
                     other=0.0).to(tl.bfloat16)
        y = _split_dot(y, hk, SPLITS)
        y = tl.reshape(tl.permute(tl.reshape(y, [BLOCK_M, P, KP]), (0, 2, 1)), [BLOCK_M, KP, P])
    y = tl.reshape(y, [BLOCK_M, KP, P]) * scale
    _store_rows(out_ptr, y, rows, col, mask, pid, M, N, BLOCK_M, KP, P, FLAT)


# --- Autotune: TILE = elements per program (BLOCK_M rows = ceil(TILE / (KP * P)), at least one
# whole row), so every config is valid for every n and the interpreter's single config runs everywhere.

# <= 5 configs per kernel (each autotune key compiles every config that survives the prune; GPU
# compile time dominates a tour). The first is the interpreter's and the only one under
# LOWPREC_AUTOTUNE=first: valid for every n (one row per program above 4096 elements).
# Memory-bound tiles want ~32-64 fp32 elements per thread (TRITON_NOTES: 128x128 tiles, 8 warps ran
# at 96% of the copy ceiling); the 16/32-warp configs are the only ones the prune keeps at n = 32768.
_BUTTERFLY_CONFIGS = [
    triton.Config({"TILE": tile}, num_warps=w, num_stages=1)
    for tile, w in ((4096, 4), (8192, 8), (16384, 8), (16384, 16), (8192, 32))
]
# tl.dot operands and the permutes between factors go through shared memory: at most 16 warps.
_MATMUL_CONFIGS = [
    triton.Config({"TILE": tile}, num_warps=w, num_stages=1)
    for tile, w in ((4096, 4), (4096, 8), (16384, 8), (16384, 16))
]


def _prune(configs, named_args, **kwargs):
    # TILE below one row (KP * P) means one row per program: all such TILEs are the same config,
    # keep one. Warps: 16..64 elements per thread (fewer wastes threads, more spills registers; the
    # narrow band also keeps autotuning to <= 4 compiles per size).
    args = {**named_args, **kwargs}  # constexprs arrive as kwargs
    row = args["KP"] * args["P"]
    kept, seen = [], set()
    for c in configs:
        tile = max(c.kwargs["TILE"], row)
        per_thread = tile // (32 * c.num_warps)
        if (tile, c.num_warps) in seen or not (16 <= per_thread <= 64):
            continue
        seen.add((tile, c.num_warps))
        kept.append(c)
    return kept or configs[:1]


_butterfly_tuned = triton.autotune(do_bench=autotune_do_bench, 
    configs=autotune_configs(_BUTTERFLY_CONFIGS), key=["N", "K", "M_BUCKET", "FLAT"],
    prune_configs_by={"early_config_prune": _prune},
)(_fwht_butterfly_kernel)
_matmul_tuned = triton.autotune(do_bench=autotune_do_bench, 
    configs=autotune_configs(_MATMUL_CONFIGS), key=["N", "K", "M_BUCKET", "SPLITS", "FLAT"],
    prune_configs_by={"early_config_prune": _prune},
)(_fwht_matmul_kernel)


# --- Launcher (the seam) ---------------------------------------------------------------------


def _factors(p: int) -> tuple[int, int, int]:
    """P = F1 * F2 * F3 with each used factor a power of two in 16..128 (F2 = F3 = 1 when unused)."""
    log_p = p.bit_length() - 1
    if p < 16 or log_p <= 7:
        return p, 1, 1
    if log_p <= 14:
        a = log_p // 2
        return 1 << a, 1 << (log_p - a), 1
    a = log_p // 3
    b = (log_p - a) // 2
    return 1 << a, 1 << b, 1 << (log_p - a - b)


def _padded_k(k: int) -> int:
    """KP: the K axis of the register tile (1 for powers of two, else K rounded up, at least 16 so
    the K mix is one tl.dot)."""
    return 1 if k == 1 else max(16, triton.next_power_of_2(k))


def _as_rows(x: torch.Tensor):
    """(tensor, M, R1, stride0, stride1): rows of x without a copy when the last dim is contiguous
    and the leading dims collapse into at most two strided dims; otherwise one copy."""
    n = x.shape[-1]
    if x.stride(-1) != 1 and n > 1:
        x = x.contiguous()
    m = math.prod(x.shape[:-1])
    if x.dim() == 1:
        return x, 1, 1, 0, 0
    try:
        x2 = x.view(m, n)
        return x2, m, 1, x2.stride(0), 0
    except RuntimeError:
        pass
    if x.dim() == 3:
        return x, m, x.shape[1], x.stride(0), x.stride(1)
    x2 = x.reshape(m, n)  # a copy: more than two non-collapsible leading dims
    return x2, m, 1, x2.stride(0), 0


def _launch(x: torch.Tensor, scale: float, h_k: Optional[torch.Tensor], kernel: str,
            config: Optional[triton.Config] = None, traced: bool = False) -> torch.Tensor:
    """The seam: ``(x @ M) * scale`` with ``kernel`` ("butterfly" or "matmul"); ``config=None``
    autotunes, a ``triton.Config`` launches exactly that config. Takes what the public functions
    validated: n = K * 2^m supported by the kernel, h_k None (K = 1) or a square K x K matrix on x's
    device (read as fp32 contiguous: a no-op for the public functions' H_K). ``traced``: launch
    through ``wrap_triton`` (the registered ops' bodies, see ``hadamard_kernels.triton_ops``)."""
    n = x.shape[-1]
    k = 1 if h_k is None else int(h_k.shape[0])
    p = n // k
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    kp = _padded_k(k)
    xr, m, r1, s0, s1 = _as_rows(x)
    # K == 1 hands x itself as the (never read) H_K pointer: no per-call allocation.
    hk = xr if h_k is None else h_k.to(torch.float32).contiguous()

    def grid(meta):
        return (triton.cdiv(m, -(-meta["TILE"] // (kp * p))),)

    # FLAT: K == 1 and contiguous rows (N apart): one 1-d load/store per program.
    flat = k == 1 and r1 == 1 and (m == 1 or s0 == n)
    args = (xr, out, hk, m, r1, s0, s1, float(scale), bucket(m))
    consts = dict(N=n, K=k, KP=kp, P=p, LOG_P=p.bit_length() - 1, FLAT=flat)
    run = traced_launch if traced else launch
    if kernel == "butterfly":
        run(_butterfly_tuned, grid, args, consts, config)
    elif kernel == "matmul":
        f1, f2, f3 = _factors(p)
        consts.update(F1=f1, LOG_F1=f1.bit_length() - 1, F2=f2, LOG_F2=f2.bit_length() - 1,
                      F3=f3, LOG_F3=f3.bit_length() - 1, SPLITS=3 if x.dtype == torch.float32 else 2)
        run(_matmul_tuned, grid, args, consts, config)
    else:
        raise ValueError(f"kernel must be 'butterfly' or 'matmul', got {kernel!r}")
    return out


# --- Ops (triton_op: Inductor compiles the launch; custom_op + fake under the interpreter) and
# autograd: torch.compile and autograd go through these ---


def _fake(x, scale, h_k):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@triton_library_op("hadamard_kernels::fwht_butterfly", _fake)
def _fwht_butterfly_op(x: torch.Tensor, scale: float, h_k: Optional[torch.Tensor]) -> torch.Tensor:
    return _launch(x, scale, h_k, "butterfly", traced=True)


@triton_library_op("hadamard_kernels::fwht_matmul", _fake)
def _fwht_matmul_op(x: torch.Tensor, scale: float, h_k: Optional[torch.Tensor]) -> torch.Tensor:
    return _launch(x, scale, h_k, "matmul", traced=True)


def _setup_context(ctx, inputs, output):
    _, scale, h_k = inputs
    ctx.scale = scale
    # out = x @ kron(H_K, H_P) * scale, so grad_x = grad @ kron(H_K^T, H_P) * scale (H_P symmetric).
    ctx.save_for_backward(h_k)


def _make_backward(op):
    def backward(ctx, grad):
        (h_k,) = ctx.saved_tensors
        h_t = None if h_k is None else h_k.t().contiguous()
        return op(grad.contiguous() if grad.stride(-1) != 1 else grad, ctx.scale, h_t), None, None

    return backward


torch.library.register_autograd("hadamard_kernels::fwht_butterfly", _make_backward(_fwht_butterfly_op),
                                setup_context=_setup_context)
torch.library.register_autograd("hadamard_kernels::fwht_matmul", _make_backward(_fwht_matmul_op),
                                setup_context=_setup_context)

_OPS = {"butterfly": _fwht_butterfly_op, "matmul": _fwht_matmul_op}


def _run(kernel: str, x: torch.Tensor, scale: float, h_k: Optional[torch.Tensor]) -> torch.Tensor:
    """Validated arguments -> the custom op under torch.compile or when autograd records a graph
    through x (so the backward is registered), else the launcher directly (no dispatcher)."""
    if torch.compiler.is_compiling() or (x.requires_grad and torch.is_grad_enabled()):
        return _OPS[kernel](x, scale, h_k)
    return _launch(x, scale, h_k, kernel)

# --- Validation, kernel choice, public functions ---------------------------------------------


def _check_x(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: dtype {x.dtype} not supported (float32, float16, bfloat16); "
                        f"x.shape={tuple(x.shape)}")
    if x.dim() == 0:
        raise ValueError(f"{name}: x must have at least one dim, got a scalar")


def _check_size(n: int, k: int, name: str) -> int:
    """Validates n = k * 2^m for the kernels; returns P = n // k."""
    if k == 1:
        if not is_power_of_two(n) or n < 2 or n > MAX_POW2:
            raise ValueError(f"{name}: last dim n={n} must be a power of two in 2..{MAX_POW2}")
        return n
    if n % k != 0 or not is_power_of_two(n // k) or n // k > MAX_P_FOR_K:
        raise ValueError(f"{name}: last dim n={n} must be {k} * 2^m with 2^m <= {MAX_P_FOR_K}")
    return n // k


def _pick(n: int, k: int, dtype: torch.dtype) -> str:
    """The kernel for (n, K, dtype): the dispatch table's entry, else DEFAULT; never the matmul
    kernel above its row limit."""
    kernel = DISPATCH.get((n, dtype), DEFAULT) if k == 1 else DISPATCH_K.get((k, n, dtype), DEFAULT)
    if kernel == "matmul" and _padded_k(k) * (n // k) > MATMUL_MAX_ROW:
        kernel = "butterfly"
    return kernel


def _kernel_call(kernel: str, x: torch.Tensor, scale: float, h_k: Optional[torch.Tensor]) -> torch.Tensor:
    name = f"{kernel}_hadamard"
    _check_x(x, name)
    k = 1
    if h_k is not None:
        if not isinstance(h_k, torch.Tensor):
            raise TypeError(f"{name}: h_k must be a tensor, got {type(h_k).__name__}")
        if h_k.dim() != 2 or h_k.shape[0] != h_k.shape[1]:
            raise ValueError(f"{name}: h_k must be a square K x K matrix, got shape {tuple(h_k.shape)}")
        if h_k.device != x.device:
            raise ValueError(f"{name}: h_k is on {h_k.device}, x on {x.device}")
        k = int(h_k.shape[0])
    n = x.shape[-1]
    p = _check_size(n, k, name)
    if kernel == "matmul" and _padded_k(k) * p > MATMUL_MAX_ROW:
        raise ValueError(f"{name}: n={n} (K={k}, padded row {_padded_k(k) * p}) exceeds the matmul "
                         f"kernel's {MATMUL_MAX_ROW}-element row; use butterfly_hadamard")
    return _run(kernel, x, float(scale), h_k)


def butterfly_hadamard(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(x @ M) * scale with the in-register butterfly kernel. M = H_n for h_k=None (n a power of two,
    2..32768), else kron(h_k, H_{n/K}) with the K x K matrix h_k (shape checked, entries not)."""
    return _kernel_call("butterfly", x, scale, h_k)


def matmul_hadamard(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(x @ M) * scale with the tensor-core (tl.dot) kernel; same contract as ``butterfly_hadamard``
    (padded rows KP * P up to 32768: not K = 40 with 2^m = 1024)."""
    return _kernel_call("matmul", x, scale, h_k)


def hadamard_transform(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``(x @ H_n) * scale`` along the last dim, H_n the unnormalized Sylvester matrix
    (``scipy.linalg.hadamard`` order), n a power of two in 2..32768 (else ValueError: no padding).
    Output dtype = input dtype (float32, float16, bfloat16; others TypeError, float64 included).
    Differentiable: the backward is the same transform times ``scale``."""
    _check_x(x, "hadamard_transform")
    n = x.shape[-1]
    _check_size(n, 1, "hadamard_transform")
    return _run(_pick(n, 1, x.dtype), x, float(scale), None)


# Under torch.compile dynamo traces through this cache: the compiled graph rebuilds H_K on every
# call (a known cost of the K * 2^m transforms under compile; see benchmarks/NOTES.md).
@functools.lru_cache(maxsize=None)
def _default_hk(k: int, device: torch.device) -> torch.Tensor:
    return hadamard_k_matrix(k, torch.float32, device)


def _resolve_hk(k: int, h_k: Optional[torch.Tensor], device: torch.device, name: str) -> torch.Tensor:
    if h_k is None:
        return _default_hk(k, torch.device(device))
    if not isinstance(h_k, torch.Tensor):
        raise TypeError(f"{name}: h_k must be a tensor, got {type(h_k).__name__}")
    if tuple(h_k.shape) != (k, k):
        raise ValueError(f"{name}: h_k must have shape ({k}, {k}), got {tuple(h_k.shape)}")
    if not is_hadamard(h_k):  # host check (one sync): entries +-1 and H H^T = K I
        raise ValueError(f"{name}: h_k is not a Hadamard matrix (entries +-1, h_k @ h_k.T == {k} * I)")
    return h_k.to(device=device, dtype=torch.float32).contiguous()


def _transform_k(k: int, x: torch.Tensor, scale: float, h_k: Optional[torch.Tensor]) -> torch.Tensor:
    name = f"hadamard_transform_{k}N"
    _check_x(x, name)
    n = x.shape[-1]
    _check_size(n, k, name)
    hk = _resolve_hk(k, h_k, x.device, name)
    return _run(_pick(n, k, x.dtype), x, float(scale), hk)


def hadamard_transform_12N(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x @ kron(H_12, H_{n/12})) * scale``, n = 12 * 2^m, 2^m <= 1024. H_12: Paley I (q = 11),
    see ``hadamard_kernels.matrices``; pass another Hadamard matrix as ``h_k`` (validated)."""
    return _transform_k(12, x, scale, h_k)


def hadamard_transform_20N(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x @ kron(H_20, H_{n/20})) * scale``, n = 20 * 2^m, 2^m <= 1024. H_20: Paley I (q = 19)."""
    return _transform_k(20, x, scale, h_k)


def hadamard_transform_28N(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x @ kron(H_28, H_{n/28})) * scale``, n = 28 * 2^m, 2^m <= 1024. H_28: Paley II (q = 13)."""
    return _transform_k(28, x, scale, h_k)


def hadamard_transform_40N(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x @ kron(H_40, H_{n/40})) * scale``, n = 40 * 2^m, 2^m <= 1024. H_40 = kron(H_2, H_20)."""
    return _transform_k(40, x, scale, h_k)


__all__ = [
    "hadamard_transform", "hadamard_transform_12N", "hadamard_transform_20N", "hadamard_transform_28N",
    "hadamard_transform_40N", "butterfly_hadamard", "matmul_hadamard", "DISPATCH", "DISPATCH_K",
    "HADAMARD_K",
]
