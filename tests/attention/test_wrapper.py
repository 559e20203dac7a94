"""apply_low_precision_attention: a small causal transformer (GQA in some layers, a padding mask in
one call), routing scope (threads, unwrapped model, exceptions), counters, torch.compile."""

import threading
import warnings

import pytest
import torch
import torch.nn.functional as F

from attention import AttentionBackend, HadamardMode, apply_low_precision_attention
from attention.reference import sqnr_db
from tests.conftest import DEVICE

REF = AttentionBackend.FP8_REFERENCE


class Layer(torch.nn.Module):
    def __init__(self, dim, heads, kv_heads, masked=False):
        super().__init__()
        self.h, self.hk, self.d = heads, kv_heads, dim // heads
        self.q = torch.nn.Linear(dim, dim, bias=False)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * self.d, bias=False)
        self.o = torch.nn.Linear(dim, dim, bias=False)
        self.masked = masked

    def forward(self, x, pad_mask):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.h, self.d).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2, self.hk, self.d).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if self.masked:  # padding + causal as an explicit boolean mask
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=causal & pad_mask[:, None, None, :],
                                               enable_gqa=self.h != self.hk)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.h != self.hk)
        return x + self.o(a.transpose(1, 2).reshape(b, s, -1))


class Tiny(torch.nn.Module):
    def __init__(self, dim=256, layers=((4, 4, False), (4, 1, False), (4, 4, True), (4, 2, False)), hook=None):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer(dim, h, hk, m) for h, hk, m in layers)
        self.hook = hook

    def forward(self, x, pad_mask):
        for i, layer in enumerate(self.layers):
            x = layer(x, pad_mask)
            if i == 0 and self.hook is not None:
                self.hook()
        return x


def _model(gen, **kw):
    torch.manual_seed(0)
    m = Tiny(**kw).to(device=DEVICE, dtype=torch.bfloat16).eval()
    x = torch.randn(2, 128, 256, generator=gen, device=DEVICE).to(torch.bfloat16)
    pad = torch.ones(2, 128, dtype=torch.bool, device=DEVICE)
    pad[1, 100:] = False
    return m, x, pad


@pytest.mark.parametrize("hadamard", [HadamardMode.NONE, HadamardMode.QKV])
def test_model_fp8_reference(gen, hadamard):
    """Real quantizer; head dim 64; 3 of the 4 layers run in FP8, the masked one falls back."""
    model, x, pad = _model(gen)
    wrapped = apply_low_precision_attention(model, backend=REF, hadamard=hadamard)
    with torch.no_grad():
        want = model(x, pad)
        with pytest.warns(RuntimeWarning, match="attn_mask"):
            got = wrapped(x, pad)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per wrapper only
            wrapped(x, pad)
        again = model(x, pad)
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (6, 2)
    assert torch.equal(again, want)  # the unwrapped model is untouched
    assert sqnr_db(got, want) >= 20.0, sqnr_db(got, want)


@pytest.mark.fa3
def test_model_fa3(gen):
    model, x, pad = _model(gen)
    wrapped = apply_low_precision_attention(model)  # backend=None -> FA3
    with torch.no_grad():
        want, got = model(x, pad), wrapped(x, pad)
        ref = apply_low_precision_attention(model, backend=REF)(x, pad)
    print(f"\nRECORD model fa3 vs bf16 {sqnr_db(got, want):.2f} dB, fa3 vs FP8_REFERENCE {sqnr_db(got, ref):.2f} dB")
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (3, 1)
    assert sqnr_db(got, want) >= 20.0


def test_raise_mode_and_state_after_errors(gen, fast_quant):
    model, x, pad = _model(gen)
    wrapped = apply_low_precision_attention(model, backend=REF, unsupported="raise")
    with torch.no_grad():
        with pytest.raises(ValueError, match="attn_mask"):
            wrapped(x, pad)
        assert not torch._C._is_torch_function_mode_enabled()  # the router is gone after the error
        q = torch.randn(1, 2, 8, 64, device=DEVICE, dtype=torch.bfloat16)
        before = wrapped.fp8_calls
        F.scaled_dot_product_attention(q, q, q)
        assert wrapped.fp8_calls == before  # a call outside the wrapper is not routed
    with pytest.raises(ValueError, match="unsupported"):
        apply_low_precision_attention(model, unsupported="ignore")


def test_grad_and_dropout_fall_back(gen, fast_quant):
    model, x, pad = _model(gen, layers=((4, 4, False),))
    wrapped = apply_low_precision_attention(model, backend=REF)
    with pytest.warns(RuntimeWarning, match="no backward"):
        wrapped(x, pad)  # grad enabled and weights require grad: FP8 cannot serve it
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (0, 1)


def test_threads_see_their_own_routing(gen, fast_quant):
    """Thread A runs the wrapped model and parks inside its forward (router active); thread B then
    runs the unwrapped model to completion. B must get plain bf16 SDPA, bit for bit."""
    inside, b_done = threading.Event(), threading.Event()

    def park():
        if threading.current_thread().name == "wrapped":
            inside.set()
            assert b_done.wait(60)

    model, x, pad = _model(gen, hook=park)
    with torch.no_grad():
        want = model(x, pad)
    wrapped = apply_low_precision_attention(model, backend=REF)
    results, errors = {}, []

    def run_wrapped():
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results["a"] = wrapped(x, pad)
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)
            inside.set()

    def run_plain():
        try:
            assert inside.wait(60)
            with torch.no_grad():
                results["b"] = model(x, pad)
        except Exception as e:
            errors.append(e)
        finally:
            b_done.set()

    ta = threading.Thread(target=run_wrapped, name="wrapped")
    tb = threading.Thread(target=run_plain, name="plain")
    ta.start(), tb.start()
    ta.join(120), tb.join(120)
    assert not errors, errors
    assert torch.equal(results["b"], want)
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (3, 1)
    assert sqnr_db(results["a"], want) >= 20.0


def test_compile_fullgraph_wrapper(gen):
    model, x, pad = _model(gen, layers=((4, 2, False),))
    x = x[:, :64]
    wrapped = apply_low_precision_attention(model, backend=REF, hadamard=HadamardMode.QKV)
    with torch.no_grad():
        eager = wrapped(x, pad[:, :64])
        compiled = torch.compile(wrapped, fullgraph=True, backend="aot_eager")(x, pad[:, :64])
        want = model(x, pad[:, :64])
    assert sqnr_db(compiled, eager) >= 40.0
    assert sqnr_db(compiled, want) >= 20.0


def _compiled_calls(wrapped, x, pad, backend, mode=None):
    """Compile ``wrapped`` (fullgraph), call it 20 times at one shape with error_on_recompile, then at
    a second shape (one more compile), then both again. Returns (outputs at shape 1, at shape 2).
    Compiles are counted by dynamo's ``stats/unique_graphs`` counter (a counting backend cannot take ``mode``)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiles = lambda: counters["stats"]["unique_graphs"] - start  # noqa: E731
    start = counters["stats"]["unique_graphs"]
    compiled = torch.compile(wrapped, fullgraph=True, backend=backend, mode=mode, dynamic=False)
    x2, pad2 = x[:, :32].contiguous(), pad[:, :32].contiguous()
    with torch.no_grad():
        with torch._dynamo.config.patch(error_on_recompile=True):
            first = [compiled(x, pad).clone() for _ in range(20)]
        assert compiles() == 1, compiles()
        second = compiled(x2, pad2).clone()
        assert compiles() == 2, compiles()  # exactly one new compile
        with torch._dynamo.config.patch(error_on_recompile=True):
            first.append(compiled(x, pad).clone())
            second = [second, compiled(x2, pad2).clone()]
    assert compiles() == 2, compiles()
    return first, second


def test_compiled_wrapper_no_recompiles_counts_exact(gen, fast_quant):
    """torch.compile(wrapper, fullgraph=True) 20 times at a fixed shape: zero recompiles (before, every
    call recompiled because dynamo guarded on the counters, and the 9th failed); outputs equal eager;
    counters exact per call (FP8 layer and masked fallback layer), also across a second shape."""
    model, x, pad = _model(gen, layers=((4, 2, False), (4, 4, True)))
    x, pad = x[:, :64], pad[:, :64]
    wrapped = apply_low_precision_attention(model, backend=REF)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = wrapped(x, pad)
        eager2 = wrapped(x[:, :32].contiguous(), pad[:, :32].contiguous())
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (2, 2)
    wrapped.reset_counters()
    first, second = _compiled_calls(wrapped, x, pad, "aot_eager")
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (23, 23)  # 21 + 2 calls, one of each per call
    for out in first:
        assert torch.equal(out, eager)
    for out in second:
        assert torch.equal(out, eager2)
    wrapped.reset_counters()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped(x, pad)  # eager again after compiling: still exact
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (1, 1)


@pytest.mark.fa3
@pytest.mark.parametrize("mode", [None, "reduce-overhead"], ids=["default", "reduce-overhead"])
def test_compiled_wrapper_fa3_inductor(gen, mode):
    """FA3 under Inductor (default mode and CUDA graphs): zero recompiles over 20 calls, one for a second
    shape, counters exact, output close to the eager wrapper's."""
    model, x, pad = _model(gen, layers=((4, 2, False), (4, 4, True)))
    x, pad = x[:, :64].contiguous(), pad[:, :64].contiguous()
    wrapped = apply_low_precision_attention(model, backend=AttentionBackend.FP8_FA3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = wrapped(x, pad)
        eager2 = wrapped(x[:, :32].contiguous(), pad[:, :32].contiguous())
        want = model(x, pad)
    wrapped.reset_counters()
    first, second = _compiled_calls(wrapped, x, pad, "inductor", mode)
    assert (wrapped.fp8_calls, wrapped.fallback_calls) == (23, 23)
    worst = min(sqnr_db(out, eager) for out in first)
    print(f"\nRECORD compiled wrapper fa3 mode={mode}: worst SQNR vs eager wrapper {worst:.1f} dB, "
          f"vs bf16 model {sqnr_db(first[-1], want):.1f} dB")
    assert worst >= 40.0 and min(sqnr_db(out, eager2) for out in second) >= 40.0
    assert sqnr_db(first[-1], want) >= 20.0


TRITON = AttentionBackend.FP8_TRITON


def test_masked_backend_serves_masked_calls(gen, fast_quant):
    """masked_backend=FP8_TRITON: the masked layer (padding & causal as a bool mask) runs in FP8 too,
    counted apart; without it the same call falls back, as before."""
    model, x, pad = _model(gen)
    x, pad = x[:, :64], pad[:, :64].clone()
    pad[1, 40:] = False
    with torch.no_grad():
        want = model(x, pad)
        wrapped = apply_low_precision_attention(model, backend=REF, masked_backend=TRITON)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing falls back: no warning
            got = wrapped(x, pad)
        plain = apply_low_precision_attention(model, backend=REF)
        with pytest.warns(RuntimeWarning, match="masked_backend"):
            plain(x, pad)
    assert (wrapped.fp8_calls, wrapped.masked_fp8_calls, wrapped.fallback_calls) == (3, 1, 0)
    assert (plain.fp8_calls, plain.masked_fp8_calls, plain.fallback_calls) == (3, 0, 1)
    assert sqnr_db(got, want) >= 20.0, sqnr_db(got, want)
    wrapped.reset_counters()
    assert (wrapped.fp8_calls, wrapped.masked_fp8_calls, wrapped.fallback_calls) == (0, 0, 0)
    with pytest.raises(ValueError, match="masked_backend must be one of"):
        apply_low_precision_attention(model, masked_backend=AttentionBackend.FP8_FA3)


def test_masked_backend_compiled_no_recompiles_counts_exact(gen, fast_quant):
    model, x, pad = _model(gen, layers=((4, 2, False), (4, 4, True)))
    x, pad = x[:, :64], pad[:, :64]
    wrapped = apply_low_precision_attention(model, backend=REF, masked_backend=TRITON)
    with torch.no_grad():
        eager = wrapped(x, pad)
        eager2 = wrapped(x[:, :32].contiguous(), pad[:, :32].contiguous())
    assert (wrapped.fp8_calls, wrapped.masked_fp8_calls, wrapped.fallback_calls) == (2, 2, 0)
    wrapped.reset_counters()
    first, second = _compiled_calls(wrapped, x, pad, "aot_eager")
    assert (wrapped.fp8_calls, wrapped.masked_fp8_calls, wrapped.fallback_calls) == (23, 23, 0)
    for out in first:
        assert torch.equal(out, eager)
    for out in second:
        assert torch.equal(out, eager2)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"], ids=["default", "reduce-overhead"])
def test_masked_backend_gpu_inductor(gen, mode):
    """FP8_TRITON for every call (masked ones too) under Inductor: no recompiles, counts exact."""
    model, x, pad = _model(gen, layers=((4, 2, False), (4, 4, True)))
    x, pad = x[:, :64].contiguous(), pad[:, :64].contiguous()
    wrapped = apply_low_precision_attention(model, backend=TRITON, masked_backend=TRITON)
    with torch.no_grad():
        eager = wrapped(x, pad)
        want = model(x, pad)
    wrapped.reset_counters()
    first, _ = _compiled_calls(wrapped, x, pad, "inductor", mode)
    assert (wrapped.fp8_calls, wrapped.masked_fp8_calls, wrapped.fallback_calls) == (23, 23, 0)
    assert min(sqnr_db(out, eager) for out in first) >= 40.0
    assert sqnr_db(first[-1], want) >= 20.0
