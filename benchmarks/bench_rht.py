"""RHT + amax and RHT / inverse RHT: GB/s against the torch.clone ceiling of the same run.

Lean on purpose (few distinct autotune keys, each kernel list <= 8 configs) so the whole suite runs
in a few minutes on a GPU including compiles.

rht_amax (bf16, bytes = 2 per element, read only), d=16, axis=0, at 8192x8192 one row per kernel
variant, so one GPU run answers the design questions:

- ``auto``: what ``rht_amax`` runs (the tiled kernel up to 2^25 elements, the persistent one above,
  each with its full autotune list);
- ``tma-ws``: only the persistent kernel's warp-specialized TMA configs (``tl.dot`` in the loop);
- ``tma``: only its non-specialized configs, TMA loads;
- ``ptr``: its non-specialized configs with plain pointer loads;
- ``tiled``: the tiled kernel (``AMAX_TILED_CONFIGS``);
- ``torch-ref``: the peer contract expression in torch (transpose + bf16 matmul + abs + max).

The variants go through the launcher's seam (``_rht_amax_launch(x, sv, axis, config=..., use_tma=...)``):
on the first (untimed) call a variant times each of its configs (best of two ``bench_ms`` medians) and
keeps the fastest, as the autotuner does for ``auto`` (the interpreter takes the first).

plus ``auto`` at 2048x4096 (launch/latency bound) and 16384x16384, and ``auto`` at 8192x8192 and
16384x16384 for (d, axis) = (16, 1), (128, 0), (128, 1). rht and inverse_rht: bf16 (16384, 8192) =
256 MiB, bytes = 2 + 2 per element, d = 16, 32, 64, 128, 256, each along the last axis and axis 0;
one ``torch-ref`` (bf16 matmul) at d=128 axis -1. ``ctx.quick``: tiny shapes (interpreter smoke).

``ctx.sizes`` (``SIZES``; the tour refuses others before any work, ``size_problem``): rht_amax on
N x N squares, every variant, for each N; the axis=1 and d=128 rht_amax rows and the rht /
inverse_rht rows on the middle N. A square whose input and reference would not fit the memory
available gets rows "skipped: needs X GiB ...". Plots: GB/s as % of clone against the input's
element count (M x N), one line per op / impl / (d, axis).
"""

from __future__ import annotations

import importlib
import re
from typing import Iterable

import torch

from benchmarks import harness
from benchmarks.harness import Case, Context, bench_ms
from hadamard_kernels import DEFAULT_SIGN_VECTOR, SignVector, get_rht_matrix, inverse_rht, random_sign_vector, rht
from hadamard_kernels.reference import rel_rms, rht_amax_contract, rht_ref, rounding_bound

# the package exports the function ``rht_amax``, which shadows the module of the same name
_ra = importlib.import_module("hadamard_kernels.rht_amax")

SUITE = "rht"
SIZE_STEP = 128  # N of the N x N squares: a multiple of the largest d (128) so every block is whole
CPU_MAX_N = 1024  # the interpreter takes minutes per variant above this
SIZES = (f"N of N x N squares (bf16), N a multiple of {SIZE_STEP} (whole d = 128 blocks along both axes); "
         f"N <= {CPU_MAX_N} on the CPU interpreter")
PLOT = harness.Plot("input elements M x N (log2 axis; d = RHT block size, ax = axis)",
                    series=lambda r: f"{r['op']} / {r['impl']} / {_block_axis(str(r['shape']))}")
AMAX_OTHER = ((16, 1), (128, 0), (128, 1))  # (d, axis) beside d = 16 axis 0, at 8192^2 and 16384^2
RHT_D = (16, 32, 64, 128, 256)  # rht and inverse_rht, each along the last axis and axis 0
BYTES_PER_ELEMENT = 4 + 2 + 3 * 2  # float32 randn, its bf16 copy, the torch reference's three bf16 temporaries


def _block_axis(shape: str) -> str:
    """"d=16 ax=0" of a row's shape ("64x128 d=16 ax=0", "(256, 128) d=128 ax=-1")."""
    m = re.search(r"d=\S+ ax=\S+", shape)
    return m.group(0) if m else shape


def size_problem(n: int, ctx: Context) -> str | None:
    """Why this suite cannot run N x N squares (None: it can)."""
    if n % SIZE_STEP:
        return f"N={n} is not a multiple of {SIZE_STEP} (rht_amax blocks of d = 128 rows or columns)"
    if not ctx.on_gpu and n > CPU_MAX_N:
        return f"N={n} is above {CPU_MAX_N}: the CPU interpreter would take hours on a {n} x {n} square"
    return None


def _bits(t: torch.Tensor) -> int:
    return int(t.view(torch.int32).item())


def _variant(impl: str, axis: int, d: int, on_gpu: bool):
    """(configs, use_tma) of a benchmark variant; configs None: the autotuner's full list."""
    if impl == "auto":
        return None, None
    if impl == "tiled":
        return [c for c in _ra.AMAX_TILED_CONFIGS if _ra._fits_tiled(c, d)], None
    configs = [c for c in _ra.amax_configs(axis, d) if c.kwargs["WARP_SPECIALIZE"] == (impl == "tma-ws")]
    if impl == "ptr":
        return configs, False
    return configs, (True if on_gpu else None)  # TMA required on the GPU; the interpreter has none


def _seam_fn(ctx: Context, x: torch.Tensor, sv: SignVector, axis: int, impl: str):
    configs, use_tma = _variant(impl, axis, len(sv), ctx.on_gpu)
    if configs is None:
        return lambda: _ra._rht_amax_launch(x, sv, axis)
    if not configs:
        raise ValueError(f"variant {impl!r} has no config for d={len(sv)} axis={axis}")
    picked = []

    def run():
        if not picked:  # first (untimed) call: the variant's own "autotune"
            if ctx.on_gpu and len(configs) > 1:
                # best of two medians per config: some persistent TMA configs time bimodally
                times = [min(bench_ms(lambda c=c: _ra._rht_amax_launch(x, sv, axis, config=c, use_tma=use_tma),
                                      ctx.device, warmup_ms=10, rep_ms=100) for _ in range(2)) for c in configs]
                picked.append(configs[times.index(min(times))])
            else:
                picked.append(configs[0])
        return _ra._rht_amax_launch(x, sv, axis, config=picked[0], use_tma=use_tma)
    return run


def _amax_cases(ctx: Context, x: torch.Tensor, signs, d: int, axis: int, impls, tag: str = "") -> Iterable[Case]:
    M, N = x.shape
    shape = f"{M}x{N} d={d} ax={axis}"
    sv = SignVector(signs)
    expect = rht_amax_contract(x, sv, d, axis)

    def check(fn):
        def run():
            r, a = fn()
            ok = _bits(r) == _bits(expect[0]) and _bits(a) == _bits(expect[1])
            return "bit_exact", float(ok), ok
        return run

    for impl in impls:
        if impl == "torch-ref":
            fn = (lambda: rht_amax_contract(x, sv, d, axis))
        else:
            fn = _seam_fn(ctx, x, sv, axis, impl)
        yield Case(SUITE, "rht_amax", impl, shape, "bf16", fn, nbytes=2 * x.numel(), check=check(fn),
                   baseline=f"{SUITE}/rht_amax/torch-ref/{shape}/bf16", size=x.numel(), note=tag)


def _rht_cases(ctx: Context, x: torch.Tensor, d: int, axis: int, ops=("rht",),
               with_ref: bool = False) -> Iterable[Case]:
    s = SignVector(random_sign_vector(d, seed=d))
    shape = f"{tuple(x.shape)} d={d} ax={axis}"
    # accuracy checked on a slice (the float64 reference of 256 MiB of bf16 would be 1 GiB)
    sl = x[: 4 * d] if axis % x.dim() == 0 else x[:64]
    if with_ref:
        m = get_rht_matrix(s, x.device, torch.bfloat16, d)
        if axis % x.dim() == x.dim() - 1:
            ref_fn = (lambda: (x.reshape(-1, d) @ m).reshape(x.shape))
        else:
            ref_fn = (lambda: (x.t().reshape(-1, d) @ m).reshape(x.shape[1], x.shape[0]).t().contiguous())
        yield Case(SUITE, "rht", "torch-ref", shape, "bf16", ref_fn, nbytes=4 * x.numel(), size=x.numel(),
                   note="bf16 matmul (+ transpose copy for axis 0)")
    for op in ops:
        f, inverse = (inverse_rht, True) if op == "inverse_rht" else (rht, False)

        def check(f=f, inverse=inverse):
            ref = rht_ref(sl, s, d, axis, inverse=inverse)
            err = rel_rms(f(sl, s, d, axis), ref)
            one = rounding_bound(ref, torch.bfloat16)
            return "rel_rms/1rounding", err / one, err <= 1.1 * one
        yield Case(SUITE, op, "triton", shape, "bf16", (lambda f=f: f(x, s, d, axis)), nbytes=4 * x.numel(),
                   check=check, baseline=f"{SUITE}/rht/torch-ref/{shape}/bf16", size=x.numel())


def cases(ctx: Context) -> Iterable[Case]:
    dev = ctx.device
    g = torch.Generator(device=dev).manual_seed(0)
    variants = ["torch-ref", "auto", "tma-ws", "tma", "ptr", "tiled"]
    if ctx.quick:
        small, mid, big = (64, 128), (128, 256), (256, 256)
        rht_shape = (256, 256)  # d = 256 along either axis
    else:
        small, mid, big = (2048, 4096), (8192, 8192), (16384, 16384)
        rht_shape = (16384, 8192)  # 256 MiB of bf16
    plan = [(small, ["auto"]), (mid, variants), (big, ["auto"])]
    if ctx.sizes:  # --sizes N ...: square N x N shapes, every variant
        bad = [f"{n}: {size_problem(n, ctx)}" for n in ctx.sizes if size_problem(n, ctx)]
        if bad:  # the tour refuses these before any work; a direct caller gets the same reasons
            raise ValueError(f"{SUITE}: sizes it cannot run: {'; '.join(bad)}")
        plan = [((n, n), variants) for n in ctx.sizes]
        mid = rht_shape = plan[len(plan) // 2][0]
    for (M, N), impls in plan:
        why = _no_room(M, N, dev)
        if why:
            yield from (harness.skip_case(SUITE, "rht_amax", impl, f"{M}x{N} d=16 ax=0", "bf16", why, size=M * N)
                        for impl in impls)
            continue
        x = torch.randn(M, N, generator=g, device=dev).to(torch.bfloat16)
        yield from _amax_cases(ctx, x, DEFAULT_SIGN_VECTOR, 16, 0, impls)
        del x
    s128 = SignVector(random_sign_vector(128, seed=128))
    for shape in ((mid, big) if not ctx.sizes else (mid,)):  # the other (d, axis) of #13's rht_amax rows
        why = _no_room(*shape, dev)
        if why:
            for d, axis in AMAX_OTHER:
                yield harness.skip_case(SUITE, "rht_amax", "auto", f"{shape[0]}x{shape[1]} d={d} ax={axis}", "bf16",
                                        why, size=shape[0] * shape[1])
            continue
        x = torch.randn(*shape, generator=g, device=dev).to(torch.bfloat16)
        for d, axis in AMAX_OTHER:
            yield from _amax_cases(ctx, x, DEFAULT_SIGN_VECTOR if d == 16 else s128, d, axis, ["auto"])
        del x
    why = _no_room(*rht_shape, dev)
    if why:
        for d in RHT_D:
            for axis in (-1, 0):
                rows = [("rht", "torch-ref")] * ((d, axis) == (128, -1)) + [("rht", "triton"), ("inverse_rht", "triton")]
                for op, impl in rows:
                    yield harness.skip_case(SUITE, op, impl, f"{tuple(rht_shape)} d={d} ax={axis}", "bf16", why,
                                            size=rht_shape[0] * rht_shape[1])
        return
    xr = torch.randn(rht_shape, generator=g, device=dev).to(torch.bfloat16)
    for d in RHT_D:
        for axis in (-1, 0):
            yield from _rht_cases(ctx, xr, d, axis, ops=("rht", "inverse_rht"), with_ref=(d, axis) == (128, -1))


def _no_room(m: int, n: int, device: str) -> str | None:
    """Why an m x n input and its reference do not fit the memory available (None: they do)."""
    try:
        harness.require_memory(BYTES_PER_ELEMENT * m * n, device, f"{m} x {n} bf16 input and its torch reference")
    except harness.Skipped as e:
        return str(e)
    return None
