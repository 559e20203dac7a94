"""RHT + amax and RHT / inverse RHT: GB/s against the torch.clone ceiling of the same run.

Lean on purpose (15 timed cases, few distinct autotune keys, each kernel list <= 6 configs) so the
whole suite runs in about two minutes on a GPU including compiles.

rht_amax (bf16, bytes = 2 per element, read only), d=16, axis=0, at 8192x8192 one row per kernel
variant, so one GPU run answers the design questions:

- ``auto``: the full autotune list (what ``rht_amax`` runs);
- ``tma-ws``: only the warp-specialized TMA configs (``tl.dot`` in the specialized loop);
- ``tma``: only the non-specialized configs, TMA loads;
- ``ptr``: the non-specialized configs with plain pointer loads;
- ``torch-ref``: the peer contract expression in torch (transpose + bf16 matmul + abs + max).

The variants go through the launcher's seam (``_rht_amax_launch(x, sv, axis, config=..., use_tma=...)``):
on the first (untimed) call a variant times each of its configs (best of two ``bench_ms`` medians) and
keeps the fastest, as the autotuner does for ``auto`` (the interpreter takes the first).

plus ``auto`` at 2048x4096 (launch/latency bound) and 16384x16384, and ``auto`` at 8192x8192 for
axis=1 (d=16) and d=128 (axis 0). rht: bf16 (16384, 8192) = 256 MiB, bytes = 2 + 2 per element,
d 16 and 128, axis -1 and 0; inverse_rht d=128 axis -1; one ``torch-ref`` (bf16 matmul) at d=128
axis -1. ``ctx.quick``: tiny shapes (interpreter smoke).
"""

from __future__ import annotations

import importlib
from typing import Iterable

import torch

from benchmarks.harness import Case, Context, bench_ms
from hadamard_kernels import DEFAULT_SIGN_VECTOR, SignVector, get_rht_matrix, inverse_rht, random_sign_vector, rht
from hadamard_kernels.reference import rel_rms, rht_amax_contract, rht_ref, rounding_bound

# the package exports the function ``rht_amax``, which shadows the module of the same name
_ra = importlib.import_module("hadamard_kernels.rht_amax")

SUITE = "rht"


def _bits(t: torch.Tensor) -> int:
    return int(t.view(torch.int32).item())


def _variant(impl: str, axis: int, d: int, on_gpu: bool):
    """(configs, use_tma) of a benchmark variant; configs None: the autotuner's full list."""
    if impl == "auto":
        return None, None
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
    variants = ["torch-ref", "auto", "tma-ws", "tma", "ptr"]
    if ctx.quick:
        small, mid, big = (64, 128), (128, 256), (256, 256)
        rht_shape = (256, 128)
    else:
        small, mid, big = (2048, 4096), (8192, 8192), (16384, 16384)
        rht_shape = (16384, 8192)  # 256 MiB of bf16
    plan = [(small, ["auto"]), (mid, variants), (big, ["auto"])]
    if ctx.sizes:  # --sizes N ...: square N x N shapes, every variant
        plan = [((n, n), variants) for n in ctx.sizes]
        mid = plan[len(plan) // 2][0]
    for (M, N), impls in plan:
        x = torch.randn(M, N, generator=g, device=dev).to(torch.bfloat16)
        yield from _amax_cases(ctx, x, DEFAULT_SIGN_VECTOR, 16, 0, impls)
        del x
    x = torch.randn(*mid, generator=g, device=dev).to(torch.bfloat16)
    yield from _amax_cases(ctx, x, DEFAULT_SIGN_VECTOR, 16, 1, ["auto"])
    s128 = SignVector(random_sign_vector(128, seed=128))
    yield from _amax_cases(ctx, x, s128, 128, 0, ["auto"])
    del x
    xr = torch.randn(rht_shape, generator=g, device=dev).to(torch.bfloat16)
    yield from _rht_cases(ctx, xr, 16, -1)
    yield from _rht_cases(ctx, xr, 16, 0)
    yield from _rht_cases(ctx, xr, 128, -1, ops=("rht", "inverse_rht"), with_ref=True)
    yield from _rht_cases(ctx, xr, 128, 0)
