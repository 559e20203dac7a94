"""Fixtures of the attention tests.

``fast_quant``: replaces the quantizer inside ``attention.sdpa`` by ``fp8_quant``'s plain-PyTorch
reference (bit-identical by fp8_quant's own tests, and fast on CPU). Contract tests of this layer
(routing, layouts, causal alignment, counters, threads) use it so that the CPU suite stays inside its
time budget; accuracy tests use the real Triton quantizer (under the interpreter on CPU).
"""

import pytest
import torch

from tests.conftest import DEVICE


def randn(gen, *shape, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.float32) * scale).to(dtype)


@pytest.fixture
def fast_quant(monkeypatch):
    import attention.sdpa as sdpa
    from fp8_quant import QuantizedQKV
    from fp8_quant.reference import quantize_qkv_reference

    from hadamard_kernels.signs import SignVector

    def quantize(q, k, v, **kw):
        if isinstance(kw.get("sign_vector"), SignVector):  # the reference takes a tensor
            kw["sign_vector"] = kw["sign_vector"].tensor(q.device)
        return QuantizedQKV(*quantize_qkv_reference(q, k, v, **kw))

    monkeypatch.setattr(sdpa, "quantize_qkv", quantize)
    return quantize
