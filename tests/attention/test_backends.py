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
from attention import AttentionBackend, fp8_fa3_sdpa, fp8_fa4_rope_sdpa, fp8_fa4_sdpa, fp8_sdpa
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
