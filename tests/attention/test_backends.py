"""Backend selection and the FA3 / FA4 call contracts, with stand-in provider modules on CPU.

The stand-ins check what the real kernels require (BSHD layout with a contiguous last dim, e4m3
payloads, float32 (B, H_kv) descales) and compute attention from the dequantized payloads with FA's
*bottom-right* causal alignment, so the tests also prove that fp8_sdpa turns it into SDPA's top-left.
"""

import sys
import types

import pytest
import torch

import attention.backends as backends
from attention import AttentionBackend, HadamardMode, fp8_fa3_sdpa, fp8_fa4_rope_sdpa, fp8_fa4_sdpa, fp8_sdpa
from attention.reference import sdpa_reference, sqnr_db
from tests.attention.conftest import randn
from tests.conftest import DEVICE


def _bottom_right_attention(q, k, v, qd, kd, vd, scale, causal):
    b, s_q, h_q, d = q.shape
    s_kv, h_kv = k.shape[1], k.shape[2]
    g = h_q // h_kv
    qf = q.double().transpose(1, 2) * qd.double().repeat_interleave(g, 1)[:, :, None, None]
    kf = (k.double().transpose(1, 2) * kd.double()[:, :, None, None]).repeat_interleave(g, 1)
    vf = (v.double().transpose(1, 2) * vd.double()[:, :, None, None]).repeat_interleave(g, 1)
    s = qf @ kf.transpose(-1, -2) * scale
    if causal:
        i = torch.arange(s_q, device=q.device)[:, None]
        j = torch.arange(s_kv, device=q.device)[None, :]
        s = s.masked_fill(j > i + (s_kv - s_q), float("-inf"))
    return (torch.softmax(s, -1) @ vf).transpose(1, 2).to(torch.bfloat16).contiguous()


class StandIn:
    def __init__(self, return_tuple: bool):
        self.calls = []
        self.return_tuple = return_tuple

    def __call__(self, q, k, v, softmax_scale=None, causal=False, q_descale=None, k_descale=None,
                 v_descale=None, **unexpected):
        assert not unexpected, unexpected
        b, s_q, h_q, d = q.shape
        s_kv, h_kv = k.shape[1], k.shape[2]
        for t in (q, k, v):
            assert t.dtype == torch.float8_e4m3fn and t.dim() == 4 and t.stride(-1) == 1
        assert k.shape == v.shape and k.shape[0] == b and h_q % h_kv == 0
        for ds in (q_descale, k_descale, v_descale):
            assert ds.dtype == torch.float32 and tuple(ds.shape) == (b, h_kv)
        assert isinstance(softmax_scale, float) and isinstance(causal, bool)
        self.calls.append(dict(shape_q=tuple(q.shape), shape_k=tuple(k.shape), causal=causal))
        out = _bottom_right_attention(q, k, v, q_descale, k_descale, v_descale, softmax_scale, causal)
        if self.return_tuple:
            return out, torch.zeros(b, h_q, s_q, device=q.device)
        return out


def _module(name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


@pytest.fixture
def providers(monkeypatch):
    """Clears the cached provider lookups around the test; returns a helper that installs modules."""
    backends.clear_provider_cache()

    def install(**mods):
        for name, mod in mods.items():
            monkeypatch.setitem(sys.modules, name, mod)
        backends.clear_provider_cache()

    yield install
    backends.clear_provider_cache()


def test_fa3_provider_order(providers):
    official, pypi = StandIn(True), StandIn(False)
    providers(flash_attn_interface=_module("flash_attn_interface", flash_attn_func=official),
              fa3_fwd_interface=_module("fa3_fwd_interface", flash_attn_func=pypi))
    assert backends.fa3_provider() == ("flash_attn_interface", official)
    providers(flash_attn_interface=None)  # None in sys.modules: the import raises ImportError
    assert backends.fa3_provider() == ("fa3_fwd_interface", pypi)
    providers(fa3_fwd_interface=None)
    with pytest.raises(RuntimeError, match="fa3-fwd"):
        backends.fa3_provider()


@pytest.mark.parametrize("return_tuple", [True, False])
@pytest.mark.parametrize("s_q,s_kv", [(32, 32), (16, 48), (48, 16)])
def test_fa3_contract_and_top_left(providers, monkeypatch, fast_quant, gen, return_tuple, s_q, s_kv):
    fn = StandIn(return_tuple)
    providers(flash_attn_interface=_module("flash_attn_interface", flash_attn_func=fn))
    monkeypatch.setattr(backends, "_major", lambda device: 9)  # pretend SM90
    q = randn(gen, 2, 4, s_q, 64)
    k, v = randn(gen, 2, 2, s_kv, 64), randn(gen, 2, 2, s_kv, 64)
    out = fp8_sdpa(q, k, v, is_causal=True, enable_gqa=True)  # backend=None -> FA3 on "SM90"
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert sqnr_db(out, sdpa_reference(q, k, v, True)) >= 24.0
    expect = 1 if s_q == s_kv or s_q < s_kv else 2
    assert len(fn.calls) == expect
    if s_q < s_kv:
        assert fn.calls[0]["shape_k"][1] == s_q and fn.calls[0]["causal"]
    if s_q > s_kv:
        assert [c["causal"] for c in fn.calls] == [True, False]
    out2 = fp8_fa3_sdpa(q.half(), k.half(), v.half(), enable_gqa=True)
    assert out2.dtype == torch.float16 and not fn.calls[-1]["causal"]


def test_fa4_contract(providers, monkeypatch, fast_quant, gen):
    fn = StandIn(True)
    providers(**{"flash_attn": _module("flash_attn"), "flash_attn.cute": _module("flash_attn.cute"),
                 "flash_attn.cute.interface": _module("flash_attn.cute.interface", _flash_attn_fwd=fn)})
    q, k, v = (randn(gen, 1, 2, 40, 128) for _ in range(3))
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="SM100"):
            fp8_fa4_sdpa(q, k, v)
    monkeypatch.setattr(backends, "_major", lambda device: 10)  # pretend SM100
    assert backends.resolve_backend(None, q.device) == AttentionBackend.FP8_FA4
    out = fp8_fa4_sdpa(q, k, v, is_causal=True)
    assert sqnr_db(out, sdpa_reference(q, k, v, True)) >= 24.0 and fn.calls[-1]["shape_q"] == (1, 40, 2, 128)
    cos, sin = torch.ones(40, 64, device=DEVICE), torch.zeros(40, 64, device=DEVICE)  # identity RoPE
    out = fp8_fa4_rope_sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cos, sin)
    assert out.shape == (1, 2, 40, 128) and sqnr_db(out, sdpa_reference(q, k, v)) >= 24.0
    with pytest.raises(ValueError, match="D=256"):
        fp8_fa4_sdpa(*(randn(gen, 1, 2, 8, 256) for _ in range(3)))


def test_missing_provider_messages(providers, monkeypatch):
    providers(flash_attn_interface=None, fa3_fwd_interface=None)
    monkeypatch.setattr(backends, "_major", lambda device: 9)
    q = torch.randn(1, 2, 8, 64, device=DEVICE, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="flash_attn_3.*fa3-fwd"):
        fp8_sdpa(q, q, q)


def test_fa3_path_compiles_fullgraph(providers, monkeypatch, fast_quant, gen):
    """The provider lookup and the hardware check trace under dynamo (the FA call is a custom op)."""
    fn = StandIn(True)
    providers(flash_attn_interface=_module("flash_attn_interface", flash_attn_func=fn))
    monkeypatch.setattr(backends, "_major", lambda device: 9)
    q, k, v = (randn(gen, 1, 2, 32, 64) for _ in range(3))
    eager = fp8_sdpa(q, k, v, is_causal=True)
    compiled = torch.compile(lambda a, b, c: fp8_sdpa(a, b, c, is_causal=True), fullgraph=True,
                             backend="aot_eager")(q, k, v)
    assert torch.equal(eager, compiled)


# ---------------------------------------------------------------------------------------------
# The FA3 C++ op called directly (bypassing flash_attn_func's Python) when its schema matches
# ---------------------------------------------------------------------------------------------

_OP_CALLS = []


_SCHEMA_ARGS = torch._C.parse_schema(backends.FA3_FWD_SCHEMA).arguments


def _standin_fwd(q, k, v, *rest):
    # The dispatcher drops trailing arguments equal to their defaults: put the schema's defaults back.
    rest = rest + tuple(a.default_value for a in _SCHEMA_ARGS[3 + len(rest):])
    assert len(rest) == 31, len(rest)
    assert all(r is None for r in rest[:17]), rest[:17]  # k_new .. seqlens_rotary
    qd, kd, vd, scale, causal = rest[17:22]
    _OP_CALLS.append(dict(tail=tuple(rest[22:]), causal=causal, scale=scale, shape_q=tuple(q.shape)))
    out = _bottom_right_attention(q, k, v, qd, kd, vd, scale, causal)
    b, s_q, h_q, _ = q.shape
    return out, torch.zeros(b, h_q, s_q, device=q.device), None, None


# What fa3-fwd's / flash_attn_3's C++ ``fwd`` declares (backends.FA3_FWD_SCHEMA), and one that differs.
_LIB_SAME = torch.library.Library("lowprec_test_fa3", "DEF")
_LIB_SAME.define(backends.FA3_FWD_SCHEMA)
_LIB_SAME.impl("fwd", _standin_fwd, "CompositeExplicitAutograd")
_LIB_OTHER = torch.library.Library("lowprec_test_fa3_other", "DEF")
_LIB_OTHER.define(backends.FA3_FWD_SCHEMA.replace(", int sm_margin=0)", ")"))
_LIB_OTHER.impl("fwd", _standin_fwd, "CompositeExplicitAutograd")  # never called: the test asserts it


@pytest.mark.parametrize("s_q,s_kv", [(32, 32), (16, 48), (48, 16)])
def test_fa3_direct_op_call(providers, monkeypatch, fast_quant, gen, s_q, s_kv):
    """A provider exposing a matching ``fwd`` op is called directly, with flash_attn_func's arguments
    (window -1/-1, chunk 0, softcap 0, rotary_interleaved True, no scheduler metadata, num_splits 1,
    pack_gqa None, sm_margin 0); flash_attn_func itself is never called; same output as through it."""
    fn = StandIn(True)
    providers(flash_attn_interface=None,
              fa3_fwd_interface=_module("fa3_fwd_interface", flash_attn_func=fn,
                                        fa3_fwd_cuda=torch.ops.lowprec_test_fa3))
    monkeypatch.setattr(backends, "_major", lambda device: 9)
    assert backends.fa3_call_path().startswith("direct: fa3_fwd_interface.fa3_fwd_cuda.fwd"), backends.fa3_call_path()
    q = randn(gen, 2, 4, s_q, 64)
    k, v = randn(gen, 2, 2, s_kv, 64), randn(gen, 2, 2, s_kv, 64)
    _OP_CALLS.clear()
    out = fp8_sdpa(q, k, v, is_causal=True, enable_gqa=True, scale=0.1)
    assert not fn.calls and len(_OP_CALLS) == (2 if s_q > s_kv else 1)
    assert all(c["tail"] == (-1, -1, 0, 0.0, True, None, 1, None, 0) and c["scale"] == 0.1 for c in _OP_CALLS)
    assert _OP_CALLS[0]["causal"] is True
    assert sqnr_db(out, sdpa_reference(q, k, v, True, scale=0.1)) >= 24.0
    providers(fa3_fwd_interface=_module("fa3_fwd_interface", flash_attn_func=fn))  # no op: flash_attn_func
    assert backends.fa3_call_path().startswith("fa3_fwd_interface.flash_attn_func")
    assert torch.equal(fp8_sdpa(q, k, v, is_causal=True, enable_gqa=True, scale=0.1), out) and fn.calls


def test_fa3_mismatching_schema_falls_back(providers, monkeypatch, fast_quant, gen):
    fn = StandIn(False)
    providers(flash_attn_interface=_module("flash_attn_interface", flash_attn_func=fn,
                                           flash_attn_3_gpu=torch.ops.lowprec_test_fa3_other))
    monkeypatch.setattr(backends, "_major", lambda device: 9)
    path = backends.fa3_call_path()
    assert path.startswith("flash_attn_interface.flash_attn_func") and "another schema" in path, path
    q, k, v = (randn(gen, 1, 2, 32, 64) for _ in range(3))
    _OP_CALLS.clear()
    out = fp8_sdpa(q, k, v)
    assert len(fn.calls) == 1 and not _OP_CALLS
    assert sqnr_db(out, sdpa_reference(q, k, v)) >= 24.0


@pytest.mark.fa3
@pytest.mark.parametrize("causal", [False, True])
def test_fa3_direct_op_bit_identical(gen, causal):
    """On the real provider: the direct C++ call and flash_attn_func give the same bits."""
    from fp8_quant import quantize_qkv

    name, fn = backends.fa3_provider()
    op, why = backends._fa3_direct_op(name)
    print(f"\nRECORD fa3 call path: {backends.fa3_call_path()}")
    assert op is not None, why
    q, k, v = (randn(gen, 2, 1024, 8, 128) for _ in range(3))
    p = quantize_qkv(q, k, v, layout="BSHD")
    args = (p.q, p.k, p.v, p.q_descale, p.k_descale, p.v_descale, 128 ** -0.5, causal)
    direct, wrapped = backends._fa3_via_op(op)(*args), backends._fa3_via_func(fn)(*args)
    assert direct.dtype == torch.bfloat16 and direct.shape == wrapped.shape
    assert torch.equal(direct, wrapped)


@pytest.mark.parametrize("spelling", ["qkv", "QKV", "Qkv", HadamardMode.QKV])
def test_mode_and_backend_names_in_any_case(spelling, gen):
    """torchao's spellings (upper case) and ours (lower case) name the same mode and backend."""
    from attention import fp8_sdpa
    from attention.reference import sdpa_reference, sqnr_db

    assert HadamardMode(spelling) is HadamardMode.QKV
    assert AttentionBackend("FP8_FA3") is AttentionBackend.FP8_FA3
    assert AttentionBackend("fp8_reference") is AttentionBackend.FP8_REFERENCE
    assert HadamardMode("NONE") is HadamardMode.NONE and HadamardMode("V_ONLY") is HadamardMode.V_ONLY
    with pytest.raises(ValueError):
        HadamardMode("q-k-v")
    with pytest.raises(ValueError, match="unknown attention backend"):
        fp8_sdpa(*(torch.ones(1, 1, 4, 64, dtype=torch.bfloat16, device=DEVICE),) * 3, backend="FP8_FA5")
    q, k, v = (torch.randn(1, 2, 16, 64, generator=gen, device=DEVICE).to(torch.bfloat16) for _ in range(3))
    out = fp8_sdpa(q, k, v, backend="FP8_REFERENCE", hadamard=spelling)
    assert sqnr_db(out, sdpa_reference(q, k, v)) >= 24.0


def test_fp8_triton_backend_is_chosen_only_when_asked(providers):
    from attention.backends import HEAD_DIMS

    T = AttentionBackend.FP8_TRITON
    assert AttentionBackend("FP8_TRITON") is T and AttentionBackend("fp8_triton") is T
    assert HEAD_DIMS[T] == (64, 96, 128, 192, 256)
    if DEVICE == "cpu":  # the interpreter is on: FP8_TRITON runs, but backend=None never picks it
        assert backends.resolve_backend("fp8_triton", torch.device("cpu")) is T
        with pytest.raises(RuntimeError, match="FP8_REFERENCE"):
            backends.resolve_backend(None, torch.device("cpu"))


def test_fp8_triton_hardware_check(monkeypatch):
    T, cuda = AttentionBackend.FP8_TRITON, torch.device("cuda", 0)
    for cap, ok in (((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True), ((10, 0), True)):
        monkeypatch.setattr(backends, "device_capability", lambda device=None, cap=cap: cap)
        if ok:
            backends.check_hardware(T, cuda)
        else:
            with pytest.raises(RuntimeError, match="SM89"):
                backends.check_hardware(T, cuda)
    monkeypatch.setattr(backends, "is_interpreter", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backends.check_hardware(T, torch.device("cpu"))


def test_fa3_refuses_masks_triton_takes_them(providers, monkeypatch, fast_quant, gen):
    fn = StandIn(False)
    providers(flash_attn_interface=_module("flash_attn_interface", flash_attn_func=fn))
    monkeypatch.setattr(backends, "_major", lambda device: 9)  # pretend SM90
    q = randn(gen, 1, 2, 16, 64)
    mask = torch.ones(1, 1, 1, 16, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="not supported by FP8_FA3"):
        fp8_sdpa(q, q, q, attn_mask=mask)
    assert not fn.calls
    if DEVICE == "cpu":
        out = fp8_sdpa(q, q, q, attn_mask=mask, backend="fp8_triton")
        assert sqnr_db(out, sdpa_reference(q, q, q)) >= 24.0
