"""Hadamard transforms: GB/s against the torch.clone ceiling of the same run, and decode latency.

Bandwidth cases (bf16, rows so the input is >= 256 MiB; bytes = 2 * numel * itemsize): every power of
two 16..32768 and K * 2^m sizes up to 28672, one row per implementation so one GPU run answers the
design questions and fills ``hadamard_kernels.hadamard.DISPATCH``:

- ``butterfly``: the in-register butterfly kernel (all its autotune configs);
- ``matmul``: the tensor-core kernel (bf16 hi/lo split dots);
- ``butterfly-2d`` / ``matmul-2d`` (powers of two): the same kernels with row-pointer loads and stores
  instead of the flat 1-d ones used for contiguous rows (which layout wins, per n?);
- ``auto``: what ``hadamard_transform`` / ``hadamard_transform_<K>N`` run (the dispatch table);
- ``torch-matmul``: dense ``x @ H`` in bf16 (a peer: rounds H x in bf16 inputs, fp32 accumulate);
- ``fast_hadamard_transform``: Dao's CUDA kernel when importable (skipped with a note otherwise; its
  K * 2^m matrices differ from ours, so those rows carry no accuracy check).

check = relative RMS error against the float64 reference on the first rows, divided by the error of
rounding the exact result once to bf16 (ok <= 1.1). Decode latency (op ``latency``): 1x4096,
16x4096 and 128x4096 bf16 through ``harness.Rotating`` input sets so repeated calls miss L2; the
``us`` column is the number to read (aim: <= 5 us).

``ctx.quick``: 4 rows, a few n <= 1024. ``ctx.sizes``: those n only (powers of two or K * 2^m).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional

import torch

from benchmarks import harness
from benchmarks.harness import Case, Context
from hadamard_kernels import hadamard as H
from hadamard_kernels.matrices import hadamard_k_matrix, hadamard_matrix, split_size
from hadamard_kernels.reference import hadamard_transform_ref, rel_rms, rounding_bound

SUITE = "hadamard"
POW2 = [2 ** i for i in range(4, 16)]  # 16 .. 32768
K_SIZES = [(12, 256), (12, 1024), (20, 256), (20, 1024), (28, 128), (28, 512), (28, 1024), (40, 128), (40, 512)]
TARGET_BYTES = 256 << 20
CHECK_ROWS = 64

try:  # Dao's CUDA kernel, if installed
    import fast_hadamard_transform as _fht  # type: ignore
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _fht = None

_K_PUBLIC = {1: H.hadamard_transform, 12: H.hadamard_transform_12N, 20: H.hadamard_transform_20N,
             28: H.hadamard_transform_28N, 40: H.hadamard_transform_40N}


class _Input:
    """One input tensor per (n, k), built on first use; building the next one frees the previous
    (cases are listed up front, but run in order, so at most one large input lives at a time)."""

    current: dict = {}

    def __init__(self, rows: int, n: int, device: str, seed: int):
        self.rows, self.n, self.device, self.seed = rows, n, device, seed

    def get(self) -> torch.Tensor:
        key = (self.rows, self.n, self.seed)
        if key not in _Input.current:
            _Input.current.clear()
            if self.device == "cuda":
                torch.cuda.empty_cache()
            g = torch.Generator(device=self.device).manual_seed(self.seed)
            _Input.current[key] = torch.randn(self.rows, self.n, generator=g, device=self.device).to(torch.bfloat16)
        return _Input.current[key]


@functools.lru_cache(maxsize=4)
def _dense(n: int, k: int, device: str) -> torch.Tensor:
    return hadamard_matrix(n, torch.bfloat16, device, k=k)


def _impls(k: int, n: int, device: str, x: Callable[[], torch.Tensor]) -> list[tuple[str, Callable, str, bool]]:
    """(impl, fn, note, checkable) for one size."""
    hk = None if k == 1 else hadamard_k_matrix(k, torch.float32, device)
    out = [
        ("butterfly", lambda: H.butterfly_hadamard(x(), 1.0, hk), "", True),
        ("matmul", lambda: H.matmul_hadamard(x(), 1.0, hk), "", True),
        ("auto", lambda: _K_PUBLIC[k](x(), 1.0), f"dispatch: {H._pick(n, k, torch.bfloat16)}", True),
        ("torch-matmul", lambda: x() @ _dense(n, k, device), "dense bf16 x @ H", True),
    ]
    if k == 1:  # design variant: row-pointer 2-d loads/stores instead of flat 1-d ones
        out += [("butterfly-2d", lambda: H._launch(x(), 1.0, None, "butterfly", flat=False), "", True),
                ("matmul-2d", lambda: H._launch(x(), 1.0, None, "matmul", flat=False), "", True)]
    if _fht is not None and device == "cuda":
        f = _fht.hadamard_transform if k == 1 else getattr(_fht, f"hadamard_transform_{k}N", None)
        if f is not None:
            out.append(("fast_hadamard_transform", lambda: f(x(), 1.0),
                        "" if k == 1 else "its H_K differs: no check", k == 1))
    return out


def _check(fn: Callable[[], torch.Tensor], x: Callable[[], torch.Tensor], k: int):
    def run():
        xs = x()[:CHECK_ROWS]
        full = fn()
        ref = hadamard_transform_ref(xs, 1.0, k=k)
        ratio = rel_rms(full[:CHECK_ROWS], ref) / rounding_bound(ref, torch.bfloat16)
        return "rel_rms/1rounding", ratio, ratio <= 1.1

    return run


def _size_cases(ctx: Context, k: int, p: int, rows: Optional[int] = None) -> Iterable[Case]:
    n = k * p
    if rows is None:
        rows = 4 if ctx.quick else -(-TARGET_BYTES // (2 * n))
    inp = _Input(rows, n, ctx.device, seed=n)
    shape = f"{rows}x{n}"
    nbytes = 2 * rows * n * 2
    op = "hadamard" if k == 1 else f"hadamard_{k}N"
    for impl, fn, note, checkable in _impls(k, n, ctx.device, inp.get):
        if not ctx.on_gpu and impl == "torch-matmul":
            note = note + " (CPU: fp32 matmul)"
            fn = (lambda: (inp.get().float() @ _dense(n, k, ctx.device).float()).to(torch.bfloat16))
        if ctx.on_gpu and n >= 16384 and impl == "torch-matmul":
            note = note + " (compute-bound)"
        yield Case(SUITE, op, impl, shape, "bf16", fn, nbytes=nbytes,
                   check=_check(fn, inp.get, k) if checkable else None,
                   baseline=f"{SUITE}/{op}/torch-matmul/{shape}/bf16", size=n, note=note)


def _latency_cases(ctx: Context) -> Iterable[Case]:
    n = 4096
    for rows in (1, 16, 128):
        per_set = rows * n * 2
        count = harness.rotation_count(per_set, ctx.device)
        g = torch.Generator(device=ctx.device).manual_seed(rows)
        rot = harness.Rotating(lambda: torch.randn(rows, n, generator=g, device=ctx.device).to(torch.bfloat16), count)
        first = rot.items[0]
        for impl, f in (("butterfly", H.butterfly_hadamard), ("matmul", H.matmul_hadamard),
                        ("auto", H.hadamard_transform)):
            def check(f=f, first=first):
                ref = hadamard_transform_ref(first)
                ratio = rel_rms(f(first), ref) / rounding_bound(ref, torch.bfloat16)
                return "rel_rms/1rounding", ratio, ratio <= 1.1

            yield Case(SUITE, "latency", impl, f"{rows}x{n}", "bf16", (lambda f=f: f(rot.next())),
                       nbytes=2 * per_set, check=check, note=f"rotating {count} input sets")


def cases(ctx: Context) -> Iterable[Case]:
    if ctx.sizes:
        sizes = []
        for n in ctx.sizes:
            k, p = split_size(int(n))
            sizes.append((k, p))
    elif ctx.quick:
        sizes = [(1, 16), (1, 256), (1, 1024), (12, 16), (28, 32)]
    else:
        sizes = [(1, n) for n in POW2] + K_SIZES
    for k, p in sizes:
        yield from _size_cases(ctx, k, p)
    if not ctx.sizes:
        yield from _latency_cases(ctx)
