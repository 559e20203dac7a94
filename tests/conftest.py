"""Test harness shared by every package's tests.

- On a machine without CUDA, switch Triton's interpreter on *before* any kernel module is imported
  (``@triton.jit`` decides at decoration time whether it compiles or interprets).
- Fixtures: ``device``, ``gen`` (a seeded ``torch.Generator`` on the test device, fresh per test).
- ``nan_empty``: outputs filled with NaN (or a sentinel for non-float dtypes) so unwritten
  elements fail; every ``torch.empty``/``torch.empty_like`` made during a test is poisoned the same
  way (autouse fixture), which covers the outputs the library allocates itself.
- On a GPU, ``LOWPREC_AUTOTUNE=first`` (see ``hadamard_kernels/runtime.py``).
- Markers ``cuda``, ``fa3``, ``fa4``: such tests skip with a reason where the hardware or the
  provider is missing.
"""

from __future__ import annotations

import importlib.util
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
else:
    # One config per kernel and shape in the test suite (compiling every autotune config for every
    # tested shape takes far longer than the tests); tests/test_autotuned_gpu.py runs the full
    # autotuner, and the benchmark tour always does.
    os.environ.setdefault("LOWPREC_AUTOTUNE", "first")

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is_sm(major: int) -> bool:
    return HAS_CUDA and torch.cuda.get_device_capability()[0] == major


HAS_FA3 = _is_sm(9) and (_has_module("flash_attn_interface") or _has_module("fa3_fwd_interface"))
HAS_FA4 = _is_sm(10) and _has_module("flash_attn.cute")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (compiled Triton kernels)")
    config.addinivalue_line("markers", "fa3: needs a Hopper GPU and an FA3 provider")
    config.addinivalue_line("markers", "fa4: needs a Blackwell GPU and flash-attn-4")
    config.addinivalue_line("markers", "no_poison: do not poison torch.empty allocations")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU; this machine runs the interpreter")
    skip_fa3 = pytest.mark.skip(reason="needs SM90 and flash_attn_interface or fa3_fwd_interface")
    skip_fa4 = pytest.mark.skip(reason="needs SM100 and flash-attn-4 (flash_attn.cute)")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "fa3" in item.keywords and not HAS_FA3:
            item.add_marker(skip_fa3)
        if "fa4" in item.keywords and not HAS_FA4:
            item.add_marker(skip_fa4)


def poison_value(dtype: torch.dtype):
    if dtype.is_floating_point:
        return float("nan")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).min


def fill_poison_(t: torch.Tensor) -> torch.Tensor:
    from torch._subclasses.fake_tensor import FakeTensor

    # A fake tensor (torch.compile tracing an op body) has no data to poison, and a traced fill
    # would add a mutation the compiled graph does not have in real use.
    if t.numel() and not isinstance(t, FakeTensor):
        with torch.no_grad():  # compilers allocate leaves that require grad with torch.empty too
            if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                t.view(torch.uint8).fill_(0x7F)  # NaN in both fp8 formats
            else:
                t.fill_(poison_value(t.dtype))
    return t


def nan_empty(*shape, dtype=torch.float32, device=DEVICE) -> torch.Tensor:
    """An output buffer whose every element is NaN (a sentinel for non-float dtypes)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    return fill_poison_(torch.empty(*shape, dtype=dtype, device=device))


@pytest.fixture(autouse=True)
def poison_allocations(request, monkeypatch):
    """Every torch.empty / torch.empty_like made during the test comes back poisoned."""
    if "no_poison" in request.keywords:
        yield
        return
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        return fill_poison_(real_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return fill_poison_(real_empty_like(*args, **kwargs))

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test's name: reproducible per test, different across tests."""
    import zlib

    g = torch.Generator(device=DEVICE)
    g.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    return g


@pytest.fixture(params=[torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def float_dtype(request) -> torch.dtype:
    return request.param
