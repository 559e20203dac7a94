"""RHT + amax and RHT / inverse RHT: GB/s against the torch.clone ceiling of the same run.

rht_amax (bf16, bytes = 2 per element, read only) at 2048x4096, 8192x8192 and 16384x16384, d=16,
axis=0, one row per kernel variant so one GPU run answers the design questions:

- ``auto``: the full autotune list (what ``rht_amax`` runs);
- ``tma-ws``: only the warp-specialized TMA configs with ``tl.dot`` in the loop (does that compile
  and pay?);
- ``tma-ws-reg``: warp-specialized, the 16 x 16 product as fp32 register math (no ``tl.dot`` in the
  specialized loop: the structure known to compile on Hopper);
- ``tma``: only the non-specialized configs, TMA loads;
- ``ptr``: the non-specialized configs with plain pointer loads;
- ``torch-ref``: the peer contract expression in torch (transpose + bf16 matmul + abs + max).

Plus ``auto`` for axis=1 and d=128. rht / inverse_rht: bf16 (16384, 8192) = 256 MiB, bytes = 2 + 2
per element, axis -1 and 0, d 16 and 128, against a torch matmul reference (``torch-ref``).
``ctx.quick``: tiny shapes (interpreter smoke).
"""

from __future__ import annotations

import importlib
from typing import Iterable

import torch

from benchmarks.harness import Case, Context
from hadamard_kernels import DEFAULT_SIGN_VECTOR, get_rht_matrix, inverse_rht, random_sign_vector, rht
from hadamard_kernels.reference import rel_rms, rht_amax_contract, rht_ref, rounding_bound

# the package exports the function ``rht_amax``, which shadows the module of the same name
_ra = importlib.import_module("hadamard_kernels.rht_amax")

SUITE = "rht"


def _bits(t: torch.Tensor) -> int:
    return int(t.view(torch.int32).item())


def _amax_cases(ctx: Context, x: torch.Tensor, signs, d: int, axis: int, impls, tag: str = "") -> Iterable[Case]:
    M, N = x.shape
    shape = f"{M}x{N} d={d} ax={axis}"
    expect = rht_amax_contract(x, signs, d, axis)

    def check(fn):
        def run():
            r, a = fn()
            ok = _bits(r) == _bits(expect[0]) and _bits(a) == _bits(expect[1])
            return "bit_exact", float(ok), ok
        return run

    for impl in impls:
        if impl == "torch-ref":
            fn = (lambda: rht_amax_contract(x, signs, d, axis))
        else:
            fn = (lambda impl=impl: _ra._rht_amax_launch(x, tuple(signs), axis, impl))
        yield Case(SUITE, "rht_amax", impl, shape, "bf16", fn, nbytes=2 * x.numel(), check=check(fn),
                   baseline=f"{SUITE}/rht_amax/torch-ref/{shape}/bf16", size=x.numel(), note=tag)


def _rht_cases(ctx: Context, x: torch.Tensor, d: int, axis: int) -> Iterable[Case]:
    s = random_sign_vector(d, seed=d)
    shape = f"{tuple(x.shape)} d={d} ax={axis}"
    # accuracy checked on a slice (the float64 reference of 256 MiB of bf16 would be 1 GiB)
    sl = x[: 4 * d] if axis % x.dim() == 0 else x[:64]
    m = get_rht_matrix(s, x.device, torch.bfloat16, d)
    for op, mat in (("rht", m), ("inverse_rht", m.t().contiguous())):
        if axis % x.dim() == x.dim() - 1:
            ref_fn = (lambda mat=mat: (x.reshape(-1, d) @ mat).reshape(x.shape))
        else:
            ref_fn = (lambda mat=mat: (x.t().reshape(-1, d) @ mat).reshape(x.shape[1], x.shape[0]).t().contiguous())
        yield Case(SUITE, op, "torch-ref", shape, "bf16", ref_fn, nbytes=4 * x.numel(), size=x.numel(),
                   note="bf16 matmul (+ transpose copy for axis 0)")
    for op, f, inverse in (("rht", rht, False), ("inverse_rht", inverse_rht, True)):
        def check(f=f, inverse=inverse):
            ref = rht_ref(sl, s, d, axis, inverse=inverse)
            err = rel_rms(f(sl, s, d, axis), ref)
            return "rel_rms/1rounding", err / rounding_bound(ref, torch.bfloat16), err <= 1.1 * rounding_bound(ref, torch.bfloat16)
        yield Case(SUITE, op, "triton", shape, "bf16", (lambda f=f: f(x, s, d, axis)), nbytes=4 * x.numel(),
                   check=check, baseline=f"{SUITE}/{op}/torch-ref/{shape}/bf16", size=x.numel())


def cases(ctx: Context) -> Iterable[Case]:
    dev = ctx.device
    g = torch.Generator(device=dev).manual_seed(0)
    variants = ["torch-ref", "auto", "tma-ws", "tma-ws-reg", "tma", "ptr"]
    if ctx.quick:
        amax_shapes = [(128, 256)]
        rht_shape = (256, 128)
    else:
        amax_shapes = [(2048, 4096), (8192, 8192), (16384, 16384)]
        rht_shape = (16384, 8192)  # 256 MiB of bf16
    if ctx.sizes:  # --sizes N ...: square N x N amax shapes
        amax_shapes = [(n, n) for n in ctx.sizes]
    for M, N in amax_shapes:
        x = torch.randn(M, N, generator=g, device=dev).to(torch.bfloat16)
        yield from _amax_cases(ctx, x, DEFAULT_SIGN_VECTOR, 16, 0, variants)
    M, N = amax_shapes[len(amax_shapes) // 2]
    x = torch.randn(M, N, generator=g, device=dev).to(torch.bfloat16)
    yield from _amax_cases(ctx, x, DEFAULT_SIGN_VECTOR, 16, 1, variants)
    s128 = tuple(int(v) for v in random_sign_vector(128, seed=128).tolist())
    yield from _amax_cases(ctx, x, s128, 128, 0, ["torch-ref", "auto", "tma-ws"])
    yield from _amax_cases(ctx, x, s128, 128, 1, ["torch-ref", "auto", "tma-ws"])
    del x
    xr = torch.randn(rht_shape, generator=g, device=dev).to(torch.bfloat16)
    for d in (16, 128):
        for axis in (-1, 0):
            yield from _rht_cases(ctx, xr, d, axis)
