"""Host time per eager call: the host table (issue 11), each call as a ratio to ``torch.add``.

Tiny inputs, so the GPU is never the bottleneck: what is measured is the host's cost of one call.
Timer (``harness.loop_ms``): warm-up calls first (compilation and autotuning happen there), then the
median over repetitions of a timed loop of back-to-back calls with no synchronisation inside it (one
``synchronize`` before and one after): enqueue-only host time per call. Every ratio divides by the
``torch.add`` row timed the same way in the same process (host times differ between hosts and runs;
ratios in one process compare). Rows (GPU shapes):

- ``torch.add`` 1x1024 fp32, the 1.0x reference;
- ``triton.jit``: a bare ``@triton.jit`` launch with 4 arguments, the same kernel ``@triton.autotune``d
  with one config, that autotuned kernel through the library's ``runtime.launch`` (its launch plan:
  the compiled kernel launched directly from the second call on), and a kernel with 32 arguments
  (benchmarks may exceed the library's 24);
- ``hadamard_transform`` 1x4096 bf16; ``rht`` and ``inverse_rht`` 1x4096 d=16; ``rht_amax`` 64x4096
  d=16 (axis 0): target <= 3.5x;
- ``quantize_qkv`` plain / rope / hadamard / rope+hadamard on (1, 8, 64, 128) bf16 BHSD: target <= 6x;
- ``flash_attn_func`` of the FA3 provider, bf16 and FP8 with descales (BSHD (1, 64, 8, 128)), then
  ``fp8_sdpa`` with the FA3 backend: target <= the FA3 FP8 call's ratio + 6; FA3 rows only where an
  FA3 provider imports and the GPU is SM90 (else skipped with a printed note);
- ``F.scaled_dot_product_attention`` bf16 (BHSD (1, 8, 64, 128));
- ``hadamard_transform`` 1x4096 replayed from a CUDA graph: a DEVICE time per replay (``timing``
  "device", ``harness.bench_ms`` of ``harness.GraphReplay``), no ratio: target <= 5 us;
- ``rht_amax`` 2048x4096 d=16 eager: its host time (``timing`` "host") and its wall time per call
  (``timing`` "wall": the same loop timed up to the end of the closing synchronize, so device time
  counts), both against the target <= 5x.

A missed target is reported (``target_met`` False), not counted as a failure. ``ctx.quick`` on a GPU:
the same shapes, fewer repetitions. On CPU (interpreter): tiny shapes, one call per loop, no FA3 and
no CUDA graph; a plumbing smoke whose numbers mean nothing.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from benchmarks.harness import Case, Context, GraphReplay, Target, loop_timer
from fp8_quant import HadamardMode, quantize_qkv
from hadamard_kernels import hadamard_transform, inverse_rht, rht, rht_amax
from hadamard_kernels.runtime import launch

SUITE = "host"
ADD_KEY = f"{SUITE}/torch.add/torch/1x1024/fp32"  # the reference row every ratio divides by
HOST_X = 3.5  # hadamard_transform, rht, inverse_rht, rht_amax
QUANT_X = 6.0  # quantize_qkv, any variant
SDPA_PLUS_X = 6.0  # fp8_sdpa: at most this much more than the FA3 FP8 call it makes
LARGE_AMAX_X = 5.0  # rht_amax 2048x4096 eager
GRAPH_US = 5.0  # hadamard_transform 1x4096 replayed from a CUDA graph


@triton.jit
def _scale4_kernel(x_ptr, y_ptr, n, alpha, BLOCK: tl.constexpr):
    # x, y: n contiguous fp32; one program scales BLOCK elements. 4 runtime arguments.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * alpha, mask=mask)


_scale4_autotuned = triton.autotune(configs=[triton.Config({"BLOCK": 1024})], key=["n"])(_scale4_kernel)


@triton.jit
def _scale32_kernel(x_ptr, y_ptr, n, alpha, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13,
                    s14, s15, s16, s17, s18, s19, s20, s21, s22, s23, s24, s25, s26, s27, BLOCK: tl.constexpr):
    # As _scale4_kernel, plus 28 integer arguments added to the result: 32 runtime arguments.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    extra = (s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11 + s12 + s13 + s14 + s15 + s16 + s17
             + s18 + s19 + s20 + s21 + s22 + s23 + s24 + s25 + s26 + s27)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * alpha + extra, mask=mask)


# odd values other than 1: Triton specializes integer arguments equal to 1 (and tracks divisibility
# by 16), which would take them out of the launch
_EXTRA = tuple(2 * i + 3 for i in range(28))


def cases(ctx: Context) -> Iterable[Case]:
    dev, gpu = ctx.device, ctx.on_gpu
    if gpu:
        calls, reps = (20, 5) if ctx.quick else (100, 21)
        n, n_amax, big, (b, h, s, d) = 4096, (64, 4096), (2048, 4096), (1, 8, 64, 128)
        warmup = 3
    else:
        print("# host: CPU interpreter: tiny shapes, one call per loop; these host times and ratios mean NOTHING")
        calls, reps = 1, 2
        n, n_amax, big, (b, h, s, d) = 64, (16, 64), (32, 64), (1, 1, 16, 32)
        warmup = 1
    host = loop_timer(calls, reps, warmup=warmup)
    wall = loop_timer(calls, reps, warmup=warmup, wall=True)
    note = "" if gpu else "CPU interpreter: meaningless"

    def row(op, impl, shape, dtype, fn, target=None, timer=host, timing="host", ratio=True, note=note):
        return Case(suite=SUITE, op=op, impl=impl, shape=shape, dtype=dtype, fn=fn, timer=timer, timing=timing,
                    ratio_to=ADD_KEY if ratio else None, target=target, note=note)

    g = torch.Generator(device=dev).manual_seed(0)
    bf16 = lambda *shape: torch.randn(*shape, generator=g, device=dev).to(torch.bfloat16)  # noqa: E731

    a, c = torch.randn(1, 1024, generator=g, device=dev), torch.randn(1, 1024, generator=g, device=dev)
    add = row("torch.add", "torch", "1x1024", "fp32", lambda: torch.add(a, c))
    assert add.key == ADD_KEY, (add.key, ADD_KEY)
    yield add

    xs, ys = torch.randn(1024, generator=g, device=dev), torch.empty(1024, device=dev)
    yield row("triton.jit", "bare-4args", "1024", "fp32", lambda: _scale4_kernel[(1,)](xs, ys, 1024, 2.0, BLOCK=1024))
    yield row("triton.jit", "autotuned-4args", "1024", "fp32", lambda: _scale4_autotuned[(1,)](xs, ys, 1024, 2.0))
    yield row("triton.jit", "launch-plan-4args", "1024", "fp32",
              lambda: launch(_scale4_autotuned, (1,), (xs, ys, 1024, 2.0), {}))
    yield row("triton.jit", "bare-32args", "1024", "fp32",
              lambda: _scale32_kernel[(1,)](xs, ys, 1024, 2.0, *_EXTRA, BLOCK=1024))

    x1 = bf16(1, n)
    tx = Target(HOST_X)
    yield row("hadamard_transform", "eager", f"1x{n}", "bf16", lambda: hadamard_transform(x1), tx)
    yield row("rht", "eager", f"1x{n} d=16", "bf16", lambda: rht(x1), tx)
    yield row("inverse_rht", "eager", f"1x{n} d=16", "bf16", lambda: inverse_rht(x1), tx)
    xa = bf16(*n_amax)
    yield row("rht_amax", "eager", f"{n_amax[0]}x{n_amax[1]} d=16 ax=0", "bf16", lambda: rht_amax(xa), tx)

    q, k, v = bf16(b, h, s, d), bf16(b, h, s, d), bf16(b, h, s, d)
    ang = torch.arange(s, device=dev)[:, None] * (10000 ** (-torch.arange(d // 2, device=dev) / (d // 2)))
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
    qshape = "x".join(map(str, (b, h, s, d)))
    variants = {"plain": {}, "rope": {"cos": cos, "sin": sin}, "hadamard": {"hadamard": HadamardMode.QKV},
                "rope+hadamard": {"cos": cos, "sin": sin, "hadamard": HadamardMode.QKV}}
    for vname, kw in variants.items():
        yield row("quantize_qkv", vname, qshape, "bf16", lambda kw=kw: quantize_qkv(q, k, v, **kw), Target(QUANT_X))

    yield from _fa3_rows(ctx, row, q, k, v)
    yield row("F.scaled_dot_product_attention", "torch-bf16", qshape, "bf16",
              lambda: F.scaled_dot_product_attention(q, k, v))

    if gpu:
        yield row("hadamard_transform", "graph-replay", f"1x{n}", "bf16", GraphReplay(lambda: hadamard_transform(x1)),
                  Target(GRAPH_US, unit="us"), timer=None, timing="device", ratio=False,
                  note="DEVICE time per CUDA-graph replay (do_bench), not host time")
    else:
        print("# host: no CUDA graph on CPU: the graph-replay row is skipped")

    xb = bf16(*big)
    shape = f"{big[0]}x{big[1]} d=16 ax=0"
    yield row("rht_amax", "eager", shape, "bf16", lambda: rht_amax(xb), Target(LARGE_AMAX_X))
    yield row("rht_amax", "eager-wall", shape, "bf16", lambda: rht_amax(xb), Target(LARGE_AMAX_X), timer=wall,
              timing="wall", note=note or "wall time per call: calls back to back, timed to the end of the closing sync")


def _fa3_rows(ctx: Context, row, q, k, v) -> Iterable[Case]:
    """The FA3 provider's own calls (bf16; FP8 with descales), then ``fp8_sdpa`` through FA3."""
    if not ctx.on_gpu:
        print("# host: no GPU: the FA3 and fp8_sdpa rows are skipped")
        return
    from attention import AttentionBackend, fp8_sdpa
    from attention.backends import fa3_provider, has_fa3

    if not (has_fa3() and torch.cuda.get_device_capability()[0] == 9):
        print("# host: no FA3 provider imports on this machine (or not SM90): FA3 and fp8_sdpa rows skipped")
        return
    provider, fa3 = fa3_provider()
    print(f"# host: FA3 provider {provider}")
    b, h, s, d = q.shape
    qb, kb, vb = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # BSHD, as the provider takes them
    pre = quantize_qkv(qb, kb, vb, layout="BSHD")
    scale = 1.0 / math.sqrt(d)
    bshd = f"{b}x{s}x{h}x{d}"
    yield row("flash_attn_func", "fa3-bf16", bshd, "bf16", lambda: fa3(qb, kb, vb, softmax_scale=scale, causal=False))
    fa3_fp8 = row("flash_attn_func", "fa3-fp8-descale", bshd, "e4m3",
                  lambda: fa3(pre.q, pre.k, pre.v, softmax_scale=scale, causal=False, q_descale=pre.q_descale,
                              k_descale=pre.k_descale, v_descale=pre.v_descale))
    yield fa3_fp8
    yield row("fp8_sdpa", "fa3", "x".join(map(str, (b, h, s, d))), "bf16",
              lambda: fp8_sdpa(q, k, v, backend=AttentionBackend.FP8_FA3),
              Target(SDPA_PLUS_X, plus_ratio_of=fa3_fp8.key))
