"""Fused FP8 QKV quantization: GB/s against the torch.clone ceiling.

Cases (GPU), D=128, bf16, kept few (each new autotune key compiles every config). impl ``auto`` is the
public ``quantize_qkv`` call (one design since issue 10, the two-pass kernels; the label is kept so rows
compare with earlier tours, where ``auto`` picked among designs):
- plain, B=1, H_q=H_kv=32, S in {4096, 16384, 65536} (``--sizes`` overrides S);
- ``auto-graph`` (GPU): each ``auto`` call replayed from a CUDA graph, i.e. the kernels alone; where it
  is much faster than ``auto``, the eager call is bound by the host's launch cost;
- rope at S=16384, rope+hadamard at every S; B=8 S=4096 plain; GQA H_q=32, H_kv=8, S=16384
  rope+hadamard;
- hadamard (QKV) at S=16384 and 65536.
bytes = 2 per input element read + 1 per FP8 element written (Q, K and V together). check = fraction
of payload bytes equal to the reference (``fp8_quant.reference``) on the first ``_CHECK_ROWS`` rows of
every head (all rows in quick mode) and descales exactly (ok needs equal descales and a rate >= 0.9999:
only rounding-midpoint flips may differ). On a GPU the check also prints the host time of one call
(``# fp8_quant host``: launches enqueued without waiting): where it exceeds the kernel time, the timing
measures the host, not the GPU. Peer: torchao's FP8 SDPA quantizer when importable.
ctx.quick: B=1, H=2, S=64 and 100, D=64. ``ctx.sizes``: S (``SIZES``; the tour refuses others before
any work, ``size_problem``); a shape whose inputs would not fit the memory available gets rows
"skipped: needs X GiB ...". Plots: GB/s as % of clone against S, one line per variant / impl / B, H.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from benchmarks import harness
from benchmarks.harness import Case, Context, GraphReplay, rotation_count, Rotating

_CHECK_ROWS = 2048
CPU_MAX_S = 1024  # the interpreter takes minutes per variant above this (S = 2048: ~6 min in all)
SIZES = f"S (sequence length) >= 1; S <= {CPU_MAX_S} on the CPU interpreter"
PLOT = harness.Plot("sequence length S (tokens; log2 axis)",
                    series=lambda r: f"{r['op']} / {r['impl']} / "
                                     + " ".join(t for t in str(r["shape"]).split() if not t.startswith("S")))
BYTES_PER_ELEMENT = 4 + 2 + 1 + 8  # float32 randn, bf16 input, e4m3 payload, the check's float64 reference


def size_problem(n: int, ctx: Context) -> str | None:
    """Why this suite cannot run S = n (None: it can)."""
    if not ctx.on_gpu and n > CPU_MAX_S:
        return f"S={n} is above {CPU_MAX_S}: the CPU interpreter would take very long"
    return None


def _quantize(q, k, v, **kw):
    from fp8_quant import quantize_qkv

    return quantize_qkv(q, k, v, **kw)


def _inputs(b, hq, hkv, s, d, device, gen):
    q = torch.randn(b, hq, s, d, device=device, generator=gen).to(torch.bfloat16)
    k = torch.randn(b, hkv, s, d, device=device, generator=gen).to(torch.bfloat16)
    v = torch.randn(b, hkv, s, d, device=device, generator=gen).to(torch.bfloat16)
    k[:, :, :, 3] *= 20  # a channel outlier, as in real K
    return q, k, v


def _rope(s, d, device):
    pos = torch.arange(s, device=device, dtype=torch.float32)[:, None]
    inv = 10000.0 ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    ang = pos * inv[None, :]
    return ang.cos(), ang.sin()  # compact (S, D/2)


def _check(q, k, v, kw, impl: str, full: bool):
    """Descales exactly, payload bytes on the first _CHECK_ROWS rows (all rows when ``full``); the
    reference amax is taken head by head over all rows (float32, same order as the kernels)."""
    from fp8_quant import reference as R

    def run():
        res = _quantize(q, k, v, **kw)
        rows = q.shape[2] if full else min(_CHECK_ROWS, q.shape[2])
        equal = total = 0
        ok_ds = True
        mode = kw.get("hadamard", "none")
        for x, y8, ds, grp, rope, had in (
            (q, res.q, res.q_descale, q.shape[1] // k.shape[1], "cos" in kw, mode == "qkv"),
            (k, res.k, res.k_descale, 1, "cos" in kw, mode == "qkv"),
            (v, res.v, res.v_descale, 1, False, mode != "none"),
        ):
            tkw = dict(cos=kw.get("cos") if rope else None, sin=kw.get("sin") if rope else None, hadamard=had,
                       sign_vector=kw.get("sign_vector"))
            b, h = x.shape[0], x.shape[1]
            head_amax = torch.stack([torch.stack([
                R.transformed_reference(x[bi:bi + 1, hi:hi + 1], **tkw).abs().amax() for hi in range(h)])
                for bi in range(b)])  # (B, H); NaN propagates
            amax = head_amax.reshape(b, h // grp, grp).amax(-1)
            scale, want_ds = R.scales_from_amax(amax)
            ok_ds &= torch.equal(ds, want_ds)
            xt = R.transformed_reference(x[:, :, :rows], **tkw)
            scaled = (xt.double() * scale.double().repeat_interleave(grp, 1)[:, :, None, None]).float()
            want = scaled.clamp(-448, 448).to(torch.float8_e4m3fn)
            got = y8[:, :, :rows].contiguous()
            equal += int((got.view(torch.uint8) == want.view(torch.uint8)).sum())
            total += got.numel()
        rate = equal / total
        if q.is_cuda:
            _print_host_time(lambda: _quantize(q, k, v, **kw), impl, q.shape, k.shape, kw)
        return "bitexact", rate, bool(ok_ds and rate >= 0.9999)

    return run


def _print_host_time(call, impl, qshape, kshape, kw, n: int = 20):
    """Host microseconds per call (launches enqueued, no waiting; compiled + tuned already)."""
    import time

    call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    host_us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    print(f"# fp8_quant host: {impl} q{tuple(qshape)} k{tuple(kshape)} {sorted(kw)}: {host_us:.1f} us/call")


def _peer_case(ctx, q, k, v, shape, nbytes, size):
    try:  # torchao's FP8 SDPA input quantizer (three passes, bf16 intermediate)
        from torchao.prototype.attention.quantization import quantize_qkv_fp8 as peer  # type: ignore
    except Exception:
        return None
    return Case(suite="fp8_quant", op="quantize_qkv/plain", impl="torchao", shape=shape, dtype="bf16",
                fn=lambda: peer(q, k, v), nbytes=nbytes, size=size, note="peer")


def cases(ctx: Context) -> Iterable[Case]:
    from fp8_quant import HadamardMode

    device = ctx.device
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    d = 64 if ctx.quick else 128
    impls = ["auto"]
    if ctx.sizes:
        bad = [f"{n}: {size_problem(n, ctx)}" for n in ctx.sizes if size_problem(n, ctx)]
        if bad:  # the tour refuses these before any work; a direct caller gets the same reasons
            raise ValueError(f"fp8_quant: sizes it cannot run: {'; '.join(bad)}")
    if ctx.quick:
        sizes = ctx.sizes or [64, 100]
        plan = [((1, 2, 2, s_), v_, impls) for s_ in sizes for v_ in ("plain", "rope+hadamard")]
        plan += [((1, 2, 2, s_), "hadamard", ["auto"]) for s_ in sizes]
    else:
        sizes = ctx.sizes or [4096, 16384, 65536]
        plan = []
        for s_ in sizes:
            plan.append(((1, 32, 32, s_), "plain", impls))
            if s_ == 16384:
                plan += [((1, 32, 32, s_), "rope", ["auto"])]
            if s_ in (16384, 65536):
                plan.append(((1, 32, 32, s_), "hadamard", ["auto"]))
            plan.append(((1, 32, 32, s_), "rope+hadamard", ["auto"]))
        if not ctx.sizes:
            plan += [((8, 32, 32, 4096), "plain", ["auto"]), ((1, 32, 8, 16384), "rope+hadamard", ["auto"])]
    peer_note_done = False
    for b, hq, hkv, s in dict.fromkeys(cfg for cfg, _, _ in plan):
        shape = f"B{b} Hq{hq} Hkv{hkv} S{s} D{d}"
        try:
            harness.require_memory(BYTES_PER_ELEMENT * b * (hq + 2 * hkv) * s * d, device,
                                   f"q, k, v of {shape}, payloads and reference")
        except harness.Skipped as e:
            for cfg, vname, case_impls in plan:
                if cfg == (b, hq, hkv, s):
                    yield from (harness.skip_case("fp8_quant", f"quantize_qkv/{vname}", impl, shape, "bf16", str(e),
                                                  size=s) for impl in case_impls)
            continue
        q, k, v = _inputs(b, hq, hkv, s, d, device, gen)
        cos, sin = _rope(s, d, device)
        sign = (torch.randint(0, 2, (d,), device=device, generator=gen) * 2 - 1).float()
        n_in = q.numel() + k.numel() + v.numel()
        nbytes = 3 * n_in  # 2 bytes read + 1 byte written per element
        variants = {
            "plain": {},
            "rope": dict(cos=cos, sin=sin),
            "hadamard": dict(hadamard=HadamardMode.QKV.value, sign_vector=sign),
            "rope+hadamard": dict(cos=cos, sin=sin, hadamard=HadamardMode.QKV.value, sign_vector=sign),
        }
        full = ctx.quick
        # rotate input sets only when one set is small enough to sit in L2
        if 2 * n_in > (256 << 20) or not ctx.on_gpu:
            rot = Rotating(lambda qkv=(q, k, v): qkv, 1)
        else:
            rot = Rotating(lambda b=b, hq=hq, hkv=hkv, s=s: _inputs(b, hq, hkv, s, d, device, gen),
                           rotation_count(2 * n_in, device))
        for cfg, vname, case_impls in plan:
            if cfg != (b, hq, hkv, s):
                continue
            kw = variants[vname]
            for impl in case_impls:
                def fn(kw=kw, rot=rot):
                    qq, kk, vv = rot.next()
                    return _quantize(qq, kk, vv, **kw)

                yield Case(suite="fp8_quant", op=f"quantize_qkv/{vname}", impl=impl, shape=shape, dtype="bf16",
                           fn=fn, nbytes=nbytes, check=_check(q, k, v, kw, impl, full), size=s,
                           baseline=f"fp8_quant/quantize_qkv/plain/{impl}/{shape}/bf16" if vname != "plain" else None,
                           note="" if full else f"check on the first {_CHECK_ROWS} rows")
                if impl == "auto" and ctx.on_gpu:
                    # the same call replayed from a CUDA graph: the kernels without the host's launch cost
                    yield Case(suite="fp8_quant", op=f"quantize_qkv/{vname}", impl="auto-graph", shape=shape,
                               dtype="bf16", fn=GraphReplay(lambda kw=kw, q=q, k=k, v=v: _quantize(q, k, v, **kw)),
                               nbytes=nbytes, size=s,
                               baseline=(f"fp8_quant/quantize_qkv/plain/auto-graph/{shape}/bf16"
                                         if vname != "plain" else None),
                               note="CUDA graph replay of the auto row's call (kernel time, no host launch cost)")
        peer = _peer_case(ctx, q, k, v, shape, nbytes, s)
        if peer is not None:
            yield peer
        elif not peer_note_done:
            peer_note_done = True
            print("# fp8_quant: peer (torchao FP8 SDPA quantizer) not importable: skipped")
