"""The library-wide policies, checked across packages.

Gradient policy: differentiable where the backward is another call of our kernels (``rht`` and
``inverse_rht``, each the other's backward; ``hadamard_transform``), a ValueError before any launch
everywhere else (``rht_amax``, ``quantize_qkv``, ``quantize_per_head``, ``fp8_sdpa``,
``fp8_rope_sdpa``) when grad mode is on and a floating input requires grad, with one message that
says what to do.

Non-finite policy of ``quantize_qkv`` and ``fp8_sdpa`` (by design, not contained): a NaN or Inf
poisons the per-head (per-GQA-group) scale it falls in, so that whole group is NaN (descale NaN, or
+inf for an Inf), and nothing else changes, bit for bit. ``fp8_sdpa`` therefore returns NaN for every
element of every query head that reads a poisoned scale. Pinned on CPU with FP8_REFERENCE and the real
quantizer, against the bit-exact quantizer reference and the float64 attention reference, and on
Hopper with FA3.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import attention.sdpa as sdpa_mod
import fp8_quant.quantize as quantize_mod
from attention import AttentionBackend, fp8_rope_sdpa, fp8_sdpa
from attention.reference import sdpa_reference, sqnr_db
from fp8_quant import kernels as quant_kernels
from fp8_quant import quantize_per_head, quantize_qkv
from fp8_quant import reference as quant_ref
from fp8_quant.quantize import QuantSpec
from hadamard_kernels import DEFAULT_SIGN_VECTOR, hadamard_transform, inverse_rht, rht, rht_amax
from tests.conftest import DEVICE

rht_amax_mod = importlib.import_module("hadamard_kernels.rht_amax")
REF = AttentionBackend.FP8_REFERENCE
NAN, INF = float("nan"), float("inf")


def _randn(gen, *shape, dtype=torch.bfloat16):
    return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)


# ---------------------------------------------------------------------------------------------
# Gradient policy
# ---------------------------------------------------------------------------------------------

def _no_launch(*args, **kwargs):
    raise AssertionError("a kernel was launched for a call the gradient policy refuses")


@pytest.fixture
def refuse_launches(monkeypatch):
    """Every launch path of the refusing functions raises: a refusal must come before any launch."""
    monkeypatch.setattr(rht_amax_mod, "launch", _no_launch)
    monkeypatch.setattr(rht_amax_mod, "traced_launch", _no_launch)
    monkeypatch.setattr(quantize_mod, "quantize_launch", _no_launch)  # what quantize_qkv (fp8_rope_sdpa) runs
    monkeypatch.setattr(sdpa_mod, "quantize_launch", _no_launch, raising=False)  # fp8_sdpa's direct quantizer call
    monkeypatch.setattr(sdpa_mod, "_attention_fwd", _no_launch)


def _calls(gen):
    """name -> (function of the inputs, inputs, names of the floating inputs that may require grad)."""
    q, k, v = _randn(gen, 1, 4, 16, 64), _randn(gen, 1, 2, 16, 64), _randn(gen, 1, 2, 16, 64)
    qs, ks, vs = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    ang = torch.arange(16, device=DEVICE, dtype=torch.float32)[:, None] * torch.rand(32, generator=gen, device=DEVICE)
    cos, sin = ang.cos(), ang.sin()
    x = _randn(gen, 64, 32)
    return {
        "rht_amax": (lambda x: rht_amax(x), {"x": x}),
        "quantize_qkv": (lambda q, k, v, cos, sin: tuple(quantize_qkv(q, k, v, cos=cos, sin=sin)),
                         {"q": q, "k": k, "v": v, "cos": cos, "sin": sin}),
        "quantize_per_head": (lambda x, cos, sin: quantize_per_head(x, 2, cos=cos, sin=sin),
                              {"x": q, "cos": cos, "sin": sin}),
        "fp8_sdpa": (lambda query, key, value: fp8_sdpa(query, key, value, enable_gqa=True, backend=REF),
                     {"query": q, "key": k, "value": v}),
        "fp8_rope_sdpa": (lambda q, k, v, cos, sin: fp8_rope_sdpa(q, k, v, cos, sin, backend=REF),
                          {"q": qs, "k": ks, "v": vs, "cos": cos, "sin": sin}),
    }


REFUSING = [("rht_amax", "x"), ("quantize_qkv", "q"), ("quantize_qkv", "k"), ("quantize_qkv", "v"),
            ("quantize_qkv", "cos"), ("quantize_qkv", "sin"), ("quantize_per_head", "x"),
            ("quantize_per_head", "cos"), ("fp8_sdpa", "query"), ("fp8_sdpa", "key"), ("fp8_sdpa", "value"),
            ("fp8_rope_sdpa", "q"), ("fp8_rope_sdpa", "v"), ("fp8_rope_sdpa", "cos")]


@pytest.mark.parametrize("fn_name, arg", REFUSING, ids=[f"{f}-{a}" for f, a in REFUSING])
def test_grad_inputs_are_refused_before_any_launch(fn_name, arg, gen, refuse_launches):
    """One policy, one message: the function, the input, that there is no backward, and the fix."""
    fn, inputs = _calls(gen)[fn_name]
    inputs = dict(inputs)
    inputs[arg] = inputs[arg].clone().requires_grad_()
    with pytest.raises(ValueError) as info:
        fn(**inputs)
    msg = str(info.value)
    # fp8_rope_sdpa's RoPE tables reach the quantizer, which names itself
    who = "quantize_qkv" if (fn_name, arg) == ("fp8_rope_sdpa", "cos") else fn_name
    named = "query" if fn_name == "fp8_rope_sdpa" and arg == "q" else \
        "value" if fn_name == "fp8_rope_sdpa" and arg == "v" else arg
    assert msg.startswith(f"{who}: {named} requires grad, but "), msg
    assert "has no backward" in msg, msg
    if fn_name != "rht_amax":
        assert "(FP8 quantization has no backward)" in msg, msg
    assert msg.endswith("call it under torch.no_grad() or .detach() the inputs"), msg


@pytest.mark.parametrize("fn_name", ["rht_amax", "quantize_qkv", "quantize_per_head", "fp8_sdpa", "fp8_rope_sdpa"])
def test_no_grad_inference_mode_and_detach_run(fn_name, gen):
    """The three ways the message names all run, and give what plain inputs give, bit for bit."""
    fn, inputs = _calls(gen)[fn_name]
    want = fn(**inputs)
    grads = {k: t.clone().requires_grad_() for k, t in inputs.items()}
    with torch.no_grad():
        got_no_grad = fn(**grads)
    with torch.inference_mode():
        got_inference = fn(**grads)
    got_detached = fn(**{k: t.detach() for k, t in grads.items()})
    for got in (got_no_grad, got_inference, got_detached):
        got, w = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
        for a, b in zip(got, w):
            if a is None or b is None:  # an optional field of the result (QuantizedQKV.v_mean)
                assert a is None and b is None
                continue
            a = a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a
            b = b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b
            assert not a.requires_grad and torch.equal(a, b)


def test_grad_check_reads_grad_mode_not_only_requires_grad(gen):
    """Grad mode off (no_grad) and an input that requires grad: served; grad mode on and no input that
    requires grad: served. Only the combination is refused."""
    x = _randn(gen, 64, 32)
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        assert torch.equal(torch.stack(rht_amax(xg)), torch.stack(rht_amax(x)))
    assert torch.is_grad_enabled()
    rht_amax(x)  # grad mode on, nothing requires grad
    with pytest.raises(ValueError, match="no backward"):
        rht_amax(xg)


def test_differentiable_ops_record_their_backward(gen):
    """rht / inverse_rht / hadamard_transform: backward is a call of the same kernels."""
    d = 16
    x = _randn(gen, 8, 64, dtype=torch.float32).requires_grad_()
    g = _randn(gen, 8, 64, dtype=torch.float32)
    rht(x, DEFAULT_SIGN_VECTOR, d).backward(g)
    assert torch.equal(x.grad, inverse_rht(g, DEFAULT_SIGN_VECTOR, d))
    x.grad = None
    inverse_rht(x, DEFAULT_SIGN_VECTOR, d).backward(g)
    assert torch.equal(x.grad, rht(g, DEFAULT_SIGN_VECTOR, d))
    x.grad = None
    hadamard_transform(x, 0.125).backward(g)
    assert torch.equal(x.grad, hadamard_transform(g, 0.125))  # H is symmetric


def test_refusal_under_torch_compile(gen):
    """Compiled, the same check runs at trace time: the same ValueError (with fullgraph=True dynamo
    reports it as an uncaught exception of the traced function instead)."""
    import torch._dynamo

    xg = _randn(gen, 32, 16).requires_grad_()
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="rht_amax: x requires grad"):
        torch.compile(lambda t: rht_amax(t), backend="aot_eager")(xg)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Non-finite policy: quantize_qkv
# ---------------------------------------------------------------------------------------------

B, HQ, HKV, D = 2, 4, 2, 64
GROUP = HQ // HKV


def _qkv(gen, s_q, s_kv):
    return _randn(gen, B, HQ, s_q, D), _randn(gen, B, HKV, s_kv, D), _randn(gen, B, HKV, s_kv, D) * 3


def _poison(q, k, v, which: str, val: float, pos):
    q, k, v = q.clone(), k.clone(), v.clone()
    {"q": q, "k": k, "v": v}[which][pos] = val
    return q, k, v


def _bytes(t):
    return t.view(torch.uint8)


# every (tensor, value) without rotation; with the Hadamard rotation (which spreads the bad value
# over its row first) one value per tensor
QUANT_CASES = [(w, v, "none") for w in "qkv" for v in (NAN, INF, -INF)] + \
    [("q", NAN, "qkv"), ("k", INF, "qkv"), ("v", -INF, "qkv")]


@pytest.fixture(scope="module")
def clean_qkv():
    """Fixed inputs and their clean quantization per mode (computed once: the interpreter is slow)."""
    g = torch.Generator(device=DEVICE)
    g.manual_seed(12)
    q, k, v = _qkv(g, 72, 72)
    cache = {}

    def get(mode):
        if mode not in cache:
            spec = QuantSpec(had_qk=mode == "qkv", had_v=mode != "none")
            cache[mode] = quant_kernels.quantize_launch([q, k, v], GROUP, None, None, spec, chunk_s=32)
        return (q, k, v), cache[mode]
    return get


@pytest.mark.parametrize("which, val, mode", QUANT_CASES, ids=[f"{w}-{v}-{m}" for w, v, m in QUANT_CASES])
def test_quantize_qkv_non_finite_poisons_exactly_its_group(which, val, mode, clean_qkv):
    """One bad element at (batch 1, head 1 of its tensor, row 40, col 7), S = 72 in S-chunks of 32
    (the bad row is in the second of three chunks): the group's descale is NaN (NaN) or +inf (+-Inf),
    every payload element of the group, in every chunk, is NaN; every other group of every tensor is
    bit for bit the clean call's. The whole result equals the bit-exact reference."""
    (q, k, v), (clean_outs, clean_ds) = clean_qkv(mode)
    bq, bk, bv = _poison(q, k, v, which, val, (1, 1, 40, 7))
    spec = QuantSpec(had_qk=mode == "qkv", had_v=mode != "none")
    outs, ds = quant_kernels.quantize_launch([bq, bk, bv], GROUP, None, None, spec, chunk_s=32)
    public = quantize_qkv(bq, bk, bv, hadamard=mode)  # the public call (its own chunking) agrees
    for got, want in zip(list(public), outs + ds):
        if got.dtype == torch.float8_e4m3fn:
            assert torch.equal(_bytes(got), _bytes(want))
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    t = "qkv".index(which)
    heads = slice(0, GROUP) if which == "q" else slice(1, 2)  # q head 1 is in group 0 (heads 0, 1)
    slot = (1, 0) if which == "q" else (1, 1)
    descale = ds[t][slot].item()
    assert math.isnan(descale) if math.isnan(val) else descale == INF, descale
    assert torch.isnan(outs[t][1, heads].float()).all()
    # everything else: bit for bit the clean call
    for i in range(3):
        keep = torch.ones(ds[i].shape, dtype=torch.bool, device=DEVICE)
        if i == t:
            keep[slot] = False
        assert torch.equal(ds[i][keep], clean_ds[i][keep]) and torch.isfinite(ds[i][keep]).all()
        heads_kept = keep.repeat_interleave(GROUP if i == 0 else 1, dim=1)  # (B, H) of the payload
        assert torch.equal(_bytes(outs[i])[heads_kept], _bytes(clean_outs[i])[heads_kept])
        assert not torch.isnan(outs[i][heads_kept].float()).any()
    # and the bit-exact reference applies the same policy
    rq, rk, rv, rqd, rkd, rvd = quant_ref.quantize_qkv_reference(bq, bk, bv, hadamard=mode)
    for got, want in zip(outs + ds, (rq, rk, rv, rqd, rkd, rvd)):
        if got.dtype == torch.float8_e4m3fn:
            g, w = got.float(), want.float()
            assert torch.equal(g.isnan(), w.isnan()) and torch.equal(g[~g.isnan()], w[~w.isnan()])
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# Non-finite policy: fp8_sdpa (FP8_REFERENCE on CPU, the real quantizer)
# ---------------------------------------------------------------------------------------------

S_Q, S_KV = 16, 24
POS = {"q": (1, 1, 5, 7), "k": (1, 1, 20, 3), "v": (1, 1, 20, 3)}  # k/v row 20 > every causal-visible row < 16


def _poisoned_heads(which: str) -> torch.Tensor:
    """(B, H_q) mask of the outputs the policy makes NaN: batch 1, the query heads that read the bad
    scale (q head 1's GQA group 0 = heads 0, 1; KV head 1 -> query heads 2, 3)."""
    m = torch.zeros(B, HQ, dtype=torch.bool, device=DEVICE)
    m[1, 0:2] = which == "q"
    m[1, 2:4] = which != "q"
    return m


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("val", [NAN, INF, -INF], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("causal, mode", [(False, "none"), (True, "qkv")], ids=["full", "causal-qkv"])
def test_fp8_sdpa_non_finite_makes_exactly_the_reading_heads_nan(which, val, causal, mode, gen):
    """Every element of every query head that reads the poisoned scale is NaN (with causal=True even
    rows that never see the bad key: k/v row 20 lies past every query row), no Inf anywhere, and
    every other (batch, head) is bit for bit the clean call's and as accurate as ever against the
    float64 reference."""
    q, k, v = _qkv(gen, S_Q, S_KV)
    bq, bk, bv = _poison(q, k, v, which, val, POS[which])
    out = fp8_sdpa(bq, bk, bv, is_causal=causal, enable_gqa=True, hadamard=mode, backend=REF)
    clean = fp8_sdpa(q, k, v, is_causal=causal, enable_gqa=True, hadamard=mode, backend=REF)
    bad = _poisoned_heads(which)
    assert torch.isnan(out[bad].float()).all()
    assert torch.isfinite(out[~bad].float()).all()
    assert torch.equal(out[~bad], clean[~bad])
    ref = sdpa_reference(q, k, v, causal)
    assert sqnr_db(out[~bad], ref[~bad]) >= 24.0


def test_torch_sdpa_confines_what_fp8_sdpa_spreads(gen):
    """The contrast the docstring states, on the float64 reference (torch's SDPA math): a NaN in q
    spoils one output row, an Inf in v one output column; fp8_sdpa spoils the heads (above)."""
    q, k, v = _qkv(gen, S_Q, S_KV)
    bq, _, _ = _poison(q, k, v, "q", NAN, POS["q"])
    ref = sdpa_reference(bq, k, v)
    rows = torch.isnan(ref).any(-1)
    assert rows.sum().item() == 1 and rows[1, 1, 5]
    _, _, bv = _poison(q, k, v, "v", INF, POS["v"])
    ref = sdpa_reference(q, k, bv)
    bad = ~torch.isfinite(ref)
    assert bad.any() and not bad[..., :3].any() and not bad[..., 4:].any()  # column 3 only
    out = fp8_sdpa(q, k, bv, enable_gqa=True, backend=REF)
    assert torch.isnan(out[1, 2:4].float()).all()


@pytest.mark.fa3
@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("val", [NAN, INF], ids=["nan", "inf"])
def test_fa3_non_finite_matches_the_reference_policy(which, val, gen):
    """FA3 on Hopper: the same heads are NaN, the others are bit for bit FA3's clean output."""
    q, k, v = _qkv(gen, 256, 384)
    pos = {"q": (1, 1, 100, 7), "k": (1, 1, 300, 3), "v": (1, 1, 300, 3)}[which]
    bq, bk, bv = _poison(q, k, v, which, val, pos)
    fa3 = AttentionBackend.FP8_FA3
    for causal in (False, True):
        out = fp8_sdpa(bq, bk, bv, is_causal=causal, enable_gqa=True, backend=fa3)
        clean = fp8_sdpa(q, k, v, is_causal=causal, enable_gqa=True, backend=fa3)
        bad = _poisoned_heads(which)
        assert torch.isnan(out[bad].float()).all(), (which, val, causal)
        assert torch.isfinite(out[~bad].float()).all()
        assert torch.equal(out[~bad], clean[~bad])
