"""FP8 attention end to end against bf16 FlashAttention-3 from the same provider, in the same run.

GPU: B=1, H=32, D=128, S in {4096, 16384, 65536} (``--sizes`` overrides S), causal and not. Inputs are
bf16 (B, S, H, D) tensors, as a model's projections produce them; the SDPA-style calls get their
``.transpose(1, 2)`` BHSD views (no copy). Implementations (``impl``):

- ``bf16-fa3``           the baseline: the provider's ``flash_attn_func`` on the bf16 BSHD tensors;
- ``fp8-fa3``            ``fp8_sdpa`` end to end (quantization + FP8 FA3), HadamardMode.NONE;
- ``fp8-fa3-qkv``        the same with HadamardMode.QKV (rotation fused in the quantizer + inverse
                         rotation of the output);
- ``fp8-fa3-vonly``      the same with HadamardMode.V_ONLY;
- ``fp8-fa3-bhsdquant``  ``fp8-fa3`` with the quantizer writing BHSD payloads that FA3 reads as
                         transposed views (the default writes dense BSHD: which layout is faster);
- ``fp8-fa3-rope``       ``fp8_rope_sdpa`` on the BSHD tensors (RoPE fused into quantization; the
                         baseline does no RoPE, so its speedup is a lower bound);
- ``fp8-kernel-only``    the FP8 FA3 kernel on pre-quantized payloads (the overhead breakdown);
- ``quantize-only``      ``quantize_qkv`` of the BHSD views (GB/s against torch.clone);
- ``quantize-only-bshd`` ``quantize_qkv(layout="BSHD")`` of the BSHD tensors (which layout is cheaper);
- ``quantize-only-qkv``  ``quantize_qkv`` with the Hadamard rotation;
- ``rotate-back-only``   the inverse rotation of a bf16 (B, S, H, D) output (``hadamard_transform``).

Compiled two-layer causal attention block (op ``block-compiled-<mode>``, S in {4096, 16384}; 4096 only
with ``--quick``): per layer x + o(SDPA(qkv(x), is_causal=True)) with ``nn.Linear(4096, 3*4096)`` /
``nn.Linear(4096, 4096)`` (no bias), 32 heads of 128, bf16, B=1, compiled with ``fullgraph=True`` in
default mode and ``mode="reduce-overhead"``: ``bf16-block`` (plain) vs ``fp8-fa3-block``
(``apply_low_precision_attention(backend=FP8_FA3)``, same compile). The FP8 row's check is the SQNR (dB)
of its output against the bf16 block's, and its metric name carries the recompiles over 20 calls after
the first (dynamo's ``stats/unique_graphs`` counter; must be 0), e.g. ``sqnr_vs_bf16_db|recompiles_20=0``.

TFLOP/s via ``harness.attention_flops`` (halved when causal); ``speedup`` against ``bf16-fa3``. Without an
FA3 provider the FA3 cases are skipped with a printed note. On CPU (``ctx.quick``): one tiny
FP8_REFERENCE case per S (default S=128), a plumbing smoke whose timing means nothing.

``ctx.sizes``: S (``SIZES``; the tour refuses others before any work, ``size_problem``), every case
above at each S; the compiled-block rows at each given S too (without sizes: ``BLOCK_SIZES``, 4096
only with ``--quick``). Plots: TFLOP/s (and the quantize / rotate rows as % of clone) against S.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from benchmarks import harness
from benchmarks.harness import Case, Context, attention_flops, bytes_read_write

SUITE = "attention"
GPU_SIZES = [4096, 16384, 65536]
B, H, D = 1, 32, 128
BLOCK_SIZES = [4096, 16384]
CPU_MAX_S = 2048  # the float64 reference and the interpreter take minutes above this
SIZES = f"S (sequence length, S_q = S_kv) >= 1; S <= {CPU_MAX_S} on the CPU interpreter"
PLOT = harness.Plot("sequence length S (tokens, S_q = S_kv; log2 axis)",
                    series=lambda r: f"{r['op']} / {r['impl']}")


def size_problem(n: int, ctx: Context) -> str | None:
    """Why this suite cannot run S = n (None: it can)."""
    if not ctx.on_gpu and n > CPU_MAX_S:
        return f"S={n} is above {CPU_MAX_S}: the CPU interpreter and float64 reference would take very long"
    return None


class _Layer(torch.nn.Module):
    def __init__(self, dim: int = H * D, heads: int = H):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.o = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, s, dim = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, dim // self.heads).unbind(2)
        a = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                             v.transpose(1, 2), is_causal=True)
        return x + self.o(a.transpose(1, 2).reshape(b, s, dim))


class _Block(torch.nn.Module):
    """Two causal attention layers (QKV projection, SDPA, output projection, residual)."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Layer(), _Layer()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _block_cases(sizes) -> Iterable[Case]:
    """bf16 vs FP8 (FA3) compiled two-layer block rows; see the module docstring."""
    from attention import AttentionBackend, apply_low_precision_attention
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    block = _Block().to(device="cuda", dtype=torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(1)
    for s in sizes:
        x = torch.randn(B, s, H * D, generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
        flops = 2 * (attention_flops(B, H, s, s, D, True) + 2 * B * s * (H * D) * (4 * H * D))
        shape = f"{B}x{s}x{H * D}"
        for mode in ("default", "reduce-overhead"):
            op = f"block-compiled-{mode}"
            kw = {"dynamic": False} if mode == "default" else {"dynamic": False, "mode": mode}
            bf16 = torch.compile(block, fullgraph=True, **kw)
            fp8 = torch.compile(apply_low_precision_attention(block, backend=AttentionBackend.FP8_FA3),
                                fullgraph=True, **kw)

            def run(fn, x=x):
                with torch.no_grad():
                    return fn(x)

            def check(bf16=bf16, fp8=fp8, run=run):
                want = run(bf16).clone()  # clone: CUDA-graph outputs are overwritten by the next replay
                got = run(fp8).clone()
                before = counters["stats"]["unique_graphs"]
                for _ in range(20):
                    run(fp8)
                recompiles = counters["stats"]["unique_graphs"] - before
                val = _sqnr(got, want)
                return f"sqnr_vs_bf16_db|recompiles_20={recompiles}", val, val >= 20.0 and recompiles == 0

            base_key = f"{SUITE}/{op}/bf16-block/{shape}/bf16"
            yield Case(suite=SUITE, op=op, impl="bf16-block", shape=shape, dtype="bf16", size=s, flops=flops,
                       fn=lambda bf16=bf16, run=run: run(bf16), note="2 layers, fullgraph")
            yield Case(suite=SUITE, op=op, impl="fp8-fa3-block", shape=shape, dtype="bf16", size=s, flops=flops,
                       fn=lambda fp8=fp8, run=run: run(fp8), baseline=base_key, check=check,
                       note="apply_low_precision_attention(FP8_FA3), fullgraph")


def _sqnr(approx: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    err = approx.float() - ref
    return float(10 * torch.log10(ref.pow(2).sum() / err.pow(2).sum().clamp_min(1e-30)))


def _cpu_cases(ctx: Context) -> Iterable[Case]:
    from attention import AttentionBackend, fp8_sdpa
    from attention.reference import sdpa_reference, sqnr_db

    g = torch.Generator(device=ctx.device).manual_seed(0)
    for s in ctx.sizes or [128]:  # every S asked for (one case each)
        q, k, v = (torch.randn(1, 2, s, 64, generator=g, device=ctx.device).to(torch.bfloat16) for _ in range(3))

        def fn(q=q, k=k, v=v):
            return fp8_sdpa(q, k, v, is_causal=True, backend=AttentionBackend.FP8_REFERENCE)

        def check(fn=fn, q=q, k=k, v=v):
            val = sqnr_db(fn(), sdpa_reference(q, k, v, True))
            return "sqnr_db", val, val >= 24.0

        yield Case(suite=SUITE, op="sdpa-causal", impl="fp8-reference", shape=f"1x2x{s}x64", dtype="bf16", fn=fn,
                   flops=attention_flops(1, 2, s, s, 64, True), check=check, size=s,
                   note="CPU interpreter smoke: timing meaningless")


def cases(ctx: Context) -> Iterable[Case]:
    if ctx.sizes:
        bad = [f"{n}: {size_problem(n, ctx)}" for n in ctx.sizes if size_problem(n, ctx)]
        if bad:  # the tour refuses these before any work; a direct caller gets the same reasons
            raise ValueError(f"{SUITE}: sizes it cannot run: {'; '.join(bad)}")
    if not ctx.on_gpu:
        yield from _cpu_cases(ctx)
        return
    from attention import AttentionBackend, HadamardMode, fp8_rope_sdpa, fp8_sdpa
    from attention.sdpa import _fp8_sdpa_impl
    from attention.backends import has_fa3
    from fp8_quant import quantize_qkv

    try:
        from hadamard_kernels import hadamard_transform
    except ImportError:
        from hadamard_kernels.hadamard import hadamard_transform

    fa3 = None
    if has_fa3() and torch.cuda.get_device_capability()[0] == 9:
        from attention.backends import fa3_call_path, fa3_provider

        provider, fa3 = fa3_provider()
        print(f"# attention: FA3 provider {provider}; fp8_sdpa calls it via {fa3_call_path()}")
    else:
        print("# attention: no FA3 provider on this machine (or not SM90): FA3 cases skipped; "
              "only the quantization / rotation cases run")
    FA3 = AttentionBackend.FP8_FA3
    sizes = ctx.sizes or ([4096] if ctx.quick else GPU_SIZES)
    g = torch.Generator(device="cuda").manual_seed(0)
    for s in sizes:
        qb, kb, vb = (torch.randn(B, s, H, D, generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
                      for _ in range(3))
        qh, kh, vh = (t.transpose(1, 2) for t in (qb, kb, vb))  # BHSD views
        ang = torch.arange(s, device="cuda")[:, None] * (10000 ** (-torch.arange(D // 2, device="cuda") / (D // 2)))
        cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
        shape = f"{B}x{H}x{s}x{D}"
        qkv_bytes = bytes_read_write(qb, kb, vb) + 3 * qb.numel() + 3 * 4 * B * H  # bf16 in, e4m3 + scales out
        yield Case(suite=SUITE, op="quantize", impl="quantize-only", shape=shape, dtype="bf16", size=s,
                   fn=lambda qh=qh, kh=kh, vh=vh: quantize_qkv(qh, kh, vh), nbytes=qkv_bytes)
        yield Case(suite=SUITE, op="quantize", impl="quantize-only-bshd", shape=shape, dtype="bf16", size=s,
                   fn=lambda qb=qb, kb=kb, vb=vb: quantize_qkv(qb, kb, vb, layout="BSHD"), nbytes=qkv_bytes)
        yield Case(suite=SUITE, op="quantize", impl="quantize-only-qkv", shape=shape, dtype="bf16", size=s,
                   fn=lambda qh=qh, kh=kh, vh=vh: quantize_qkv(qh, kh, vh, hadamard=HadamardMode.QKV),
                   nbytes=qkv_bytes)
        yield Case(suite=SUITE, op="rotate-back", impl="rotate-back-only", shape=shape, dtype="bf16", size=s,
                   fn=lambda qb=qb: hadamard_transform(qb, 1.0 / math.sqrt(D)), nbytes=2 * qb.numel() * 2)
        if fa3 is None:
            continue
        pre = quantize_qkv(qb, kb, vb, layout="BSHD")  # what fp8_sdpa hands FA3: dense BSHD payloads
        p8 = [pre.q, pre.k, pre.v]
        for causal in (False, True):
            op = "sdpa-causal" if causal else "sdpa"
            flops = attention_flops(B, H, s, s, D, causal)
            base_key = f"{SUITE}/{op}/bf16-fa3/{shape}/bf16"

            def bf16(qb=qb, kb=kb, vb=vb, causal=causal):
                out = fa3(qb, kb, vb, causal=causal)
                return out[0] if isinstance(out, (tuple, list)) else out

            # Defaults bind per iteration: the runner builds every case before it runs any check.
            def ref_out(bf16=bf16, ref_holder={}):  # noqa: B006 - a fresh cache per (S, causal)
                if "o" not in ref_holder:
                    ref_holder["o"] = bf16().transpose(1, 2)
                return ref_holder["o"]

            def checker(fn, ref_out=ref_out):
                def check():
                    val = _sqnr(fn(), ref_out())
                    return "sqnr_vs_bf16_db", val, val >= 25.0
                return check

            yield Case(suite=SUITE, op=op, impl="bf16-fa3", shape=shape, dtype="bf16", fn=bf16, flops=flops, size=s)
            variants = {
                "fp8-fa3": lambda causal=causal, qh=qh, kh=kh, vh=vh: fp8_sdpa(qh, kh, vh, is_causal=causal,
                                                                              backend=FA3),
                "fp8-fa3-qkv": lambda causal=causal, qh=qh, kh=kh, vh=vh: fp8_sdpa(
                    qh, kh, vh, is_causal=causal, backend=FA3, hadamard=HadamardMode.QKV),
                "fp8-fa3-bhsdquant": lambda causal=causal, qh=qh, kh=kh, vh=vh: _fp8_sdpa_impl(
                    qh, kh, vh, causal, None, FA3, HadamardMode.NONE, None, quant_layout="BHSD"),
                "fp8-fa3-vonly": lambda causal=causal, qh=qh, kh=kh, vh=vh: fp8_sdpa(
                    qh, kh, vh, is_causal=causal, backend=FA3, hadamard=HadamardMode.V_ONLY),
            }
            for impl, fn in variants.items():
                yield Case(suite=SUITE, op=op, impl=impl, shape=shape, dtype="bf16", fn=fn, flops=flops,
                           baseline=base_key, check=checker(fn), size=s)
            yield Case(suite=SUITE, op=op, impl="fp8-fa3-rope", shape=shape, dtype="bf16", flops=flops,
                       baseline=base_key, size=s, note="includes RoPE; baseline has none",
                       fn=lambda causal=causal, qb=qb, kb=kb, vb=vb, cos=cos, sin=sin: fp8_rope_sdpa(
                           qb, kb, vb, cos, sin, is_causal=causal, backend=FA3))

            def kernel_only(causal=causal, p8=p8, pre=pre):
                out = fa3(*p8, softmax_scale=1.0 / math.sqrt(D), causal=causal, q_descale=pre.q_descale,
                          k_descale=pre.k_descale, v_descale=pre.v_descale)
                return out[0] if isinstance(out, (tuple, list)) else out

            yield Case(suite=SUITE, op=op, impl="fp8-kernel-only", shape=shape, dtype="bf16", fn=kernel_only,
                       flops=flops, baseline=base_key, size=s, note="pre-quantized")
    yield from _triton_cases(sizes, fa3)
    if fa3 is not None:
        yield from _block_cases(ctx.sizes or ([4096] if ctx.quick else BLOCK_SIZES))


TRITON_HEAD_DIMS = (64, 128, 256)


def _visible_pairs(s: int, s_valid: int, causal: bool) -> int:
    """(query, key) pairs a key-padding mask (keys >= s_valid masked) leaves, causal or not."""
    if not causal:
        return s * s_valid
    return s_valid * (s_valid + 1) // 2 + (s - s_valid) * s_valid


def _triton_cases(sizes, fa3) -> Iterable[Case]:
    """FP8_TRITON rows (ops ``triton-sdpa`` / ``triton-sdpa-causal``) with their own bf16 FA3 / FP8 FA3
    baselines from the same run. D = 128 at every size; D = 64 and 256 at S = 16384 only (or the
    first size given), to keep the suite's autotuning within its time. Impls: ``fp8-fa3-kernel`` and
    ``fp8-triton-kernel`` (pre-quantized payloads, V^T made beforehand), ``fp8-triton-launch`` (the
    launcher's V^T copy included), ``fp8-triton`` (``fp8_sdpa`` end to end), ``fp8-triton-qk``
    (``fp8_sdpa(q_in_kernel=True)``: the quantizer on K and V only), ``fp8-triton-keypad`` (a quarter
    of the keys masked by a (B, 1, 1, S) bool mask)."""
    from attention import AttentionBackend, fp8_sdpa
    from attention.transpose import transpose_v
    from attention.triton_fp8 import _triton_fp8_launch
    from fp8_quant import quantize_qkv

    if fa3 is None:
        print("# attention: FP8_TRITON rows need the FA3 provider for their baselines; skipped")
        return
    TRITON = AttentionBackend.FP8_TRITON
    g = torch.Generator(device="cuda").manual_seed(2)
    for d in TRITON_HEAD_DIMS:
        scale = d ** -0.5
        d_sizes = sizes if d == D else ([x for x in sizes if x == 16384] or list(sizes[:1]))
        for s in d_sizes:
            qb, kb, vb = (torch.randn(B, s, H, d, generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
                          for _ in range(3))
            qh, kh, vh = (t.transpose(1, 2) for t in (qb, kb, vb))
            pre = quantize_qkv(qb, kb, vb, layout="BSHD")
            p8 = (pre.q, pre.k, pre.v)
            ds = (pre.q_descale, pre.k_descale, pre.v_descale)
            vt = transpose_v(pre.v)
            s_valid = 3 * s // 4
            pad = (torch.arange(s, device="cuda") < s_valid)[None, None, None]
            shape = f"{B}x{H}x{s}x{d}"
            for causal in (False, True):
                op = "triton-sdpa-causal" if causal else "triton-sdpa"
                flops = attention_flops(B, H, s, s, d, causal)
                key = lambda impl, op=op, shape=shape: f"{SUITE}/{op}/{impl}/{shape}/bf16"  # noqa: E731

                def bf16(qb=qb, kb=kb, vb=vb, causal=causal):
                    out = fa3(qb, kb, vb, causal=causal)
                    return out[0] if isinstance(out, (tuple, list)) else out

                def fa3_fp8(p8=p8, ds=ds, causal=causal, scale=scale):
                    out = fa3(*p8, softmax_scale=scale, causal=causal, q_descale=ds[0], k_descale=ds[1],
                              v_descale=ds[2])
                    return out[0] if isinstance(out, (tuple, list)) else out

                def kernel(p8=p8, ds=ds, vt=vt, causal=causal, scale=scale):
                    return _triton_fp8_launch(p8[0], p8[1], vt, *ds, scale, causal, v_is_transposed=True)

                def launch_v(p8=p8, ds=ds, causal=causal, scale=scale):
                    return _triton_fp8_launch(*p8, *ds, scale, causal)

                def e2e(qh=qh, kh=kh, vh=vh, causal=causal):
                    return fp8_sdpa(qh, kh, vh, is_causal=causal, backend=TRITON)

                def e2e_qk(qh=qh, kh=kh, vh=vh, causal=causal):
                    return fp8_sdpa(qh, kh, vh, is_causal=causal, backend=TRITON, q_in_kernel=True)

                def keypad(p8=p8, ds=ds, vt=vt, causal=causal, scale=scale, pad=pad):
                    return _triton_fp8_launch(p8[0], p8[1], vt, *ds, scale, causal, pad, v_is_transposed=True)

                def check_vs(fn, ref_fn, bshd=True):
                    def check():
                        got = fn()
                        got = got if bshd else got.transpose(1, 2)
                        val = _sqnr(got, ref_fn())
                        return "sqnr_vs_bf16_fa3_db", val, val >= 25.0
                    return check

                yield Case(suite=SUITE, op=op, impl="bf16-fa3", shape=shape, dtype="bf16", fn=bf16, flops=flops, size=s)
                yield Case(suite=SUITE, op=op, impl="fp8-fa3-kernel", shape=shape, dtype="bf16", fn=fa3_fp8,
                           flops=flops, size=s, baseline=key("bf16-fa3"), check=check_vs(fa3_fp8, bf16),
                           note="pre-quantized")
                yield Case(suite=SUITE, op=op, impl="fp8-triton-kernel", shape=shape, dtype="bf16", fn=kernel,
                           flops=flops, size=s, baseline=key("bf16-fa3"), check=check_vs(kernel, bf16),
                           ratio_to=key("fp8-fa3-kernel"), target=harness.Target(1 / 0.85),
                           note="pre-quantized, V^T made beforehand; ratio = time / FA3 FP8 kernel")
                yield Case(suite=SUITE, op=op, impl="fp8-triton-launch", shape=shape, dtype="bf16", fn=launch_v,
                           flops=flops, size=s, baseline=key("bf16-fa3"), ratio_to=key("fp8-triton-kernel"),
                           note="pre-quantized, V^T copy in the launcher")
                yield Case(suite=SUITE, op=op, impl="fp8-triton", shape=shape, dtype="bf16", fn=e2e, flops=flops,
                           size=s, baseline=key("bf16-fa3"), check=check_vs(e2e, bf16, bshd=False),
                           ratio_to=key("bf16-fa3"), target=harness.Target(1 / 1.15) if s >= 16384 else None,
                           note="fp8_sdpa end to end; ratio = time / bf16 FA3")
                yield Case(suite=SUITE, op=op, impl="fp8-triton-qk", shape=shape, dtype="bf16", fn=e2e_qk, flops=flops,
                           size=s, baseline=key("bf16-fa3"), check=check_vs(e2e_qk, bf16, bshd=False),
                           ratio_to=key("bf16-fa3"), target=harness.Target(1 / 1.15) if s >= 16384 else None,
                           note="fp8_sdpa(q_in_kernel=True) end to end: K/V quantizer pass, Q quantized in the "
                                "kernel; ratio = time / bf16 FA3")
                visible = _visible_pairs(s, s_valid, causal)
                frac = visible / (s * s if not causal else s * (s + 1) / 2)

                def fa3_short(qb=qb, kb=kb, vb=vb, s_valid=s_valid):  # non-causal key padding = shorter keys
                    out = fa3(qb, kb[:, :s_valid], vb[:, :s_valid], causal=False)
                    return out[0] if isinstance(out, (tuple, list)) else out

                yield Case(suite=SUITE, op=op, impl="fp8-triton-keypad", shape=shape, dtype="bf16", fn=keypad,
                           flops=4.0 * B * H * d * visible, size=s, ratio_to=key("fp8-triton-kernel"),
                           target=harness.Target(frac / 0.9),
                           check=None if causal else check_vs(keypad, fa3_short),
                           note=f"(B,1,1,S) bool mask, keys >= {s_valid} masked; FLOPs of the unmasked work")
