"""The shared runtime layer (hadamard_kernels.runtime): autotune config selection, size buckets, device
properties, the config seam and the scoped TMA allocator."""

import os
import threading

import pytest
import torch
import triton
from triton.runtime import _allocation

from hadamard_kernels import runtime as tu


def test_autotune_configs_first_only_under_interpreter():
    configs = [triton.Config({"B": 1}), triton.Config({"B": 2}), triton.Config({"B": 4})]
    got = tu.autotune_configs(configs)
    first_only = tu.is_interpreter() or os.environ.get("LOWPREC_AUTOTUNE") == "first"
    assert got == (configs[:1] if first_only else configs)
    with pytest.raises(ValueError):
        tu.autotune_configs([])


def test_first_only_knob(monkeypatch):
    configs = [triton.Config({"B": 1}), triton.Config({"B": 2})]
    monkeypatch.setenv("LOWPREC_AUTOTUNE", "first")
    assert tu.autotune_configs(configs) == configs[:1]
    monkeypatch.setenv("LOWPREC_AUTOTUNE", "")
    assert tu.autotune_configs(configs) == (configs[:1] if tu.is_interpreter() else configs)


def test_interpreter_detection(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tu.is_interpreter()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not tu.is_interpreter()


@pytest.mark.parametrize("n,b", [(0, 1), (1, 1), (2, 2), (3, 4), (4096, 4096), (4097, 8192)])
def test_bucket(n, b):
    assert tu.bucket(n) == b


def test_cpu_device_properties():
    assert tu.num_sms("cpu") >= 1
    assert tu.device_capability("cpu") == (0, 0)
    assert not tu.uses_tma("cpu")


@pytest.mark.cuda
def test_cuda_device_properties_cached():
    assert tu.num_sms("cuda") == torch.cuda.get_device_properties(0).multi_processor_count
    assert tu.device_capability("cuda:0") == torch.cuda.get_device_capability(0)


def _current_allocator():
    return _allocation._allocator.get()


def test_tma_allocator_is_scoped_and_restores_previous():
    sentinel = lambda size, alignment, stream: None  # noqa: E731 - another library's allocator
    token = _allocation._allocator.set(sentinel)
    try:
        with tu.tma_allocator():
            assert _current_allocator() is tu._torch_scratch
        assert _current_allocator() is sentinel
        with pytest.raises(RuntimeError):
            with tu.tma_allocator():
                raise RuntimeError("kernel failed")
        assert _current_allocator() is sentinel
    finally:
        _allocation._allocator.reset(token)


def test_tma_allocator_invisible_to_other_threads():
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait(5)
        seen["other"] = _current_allocator()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with tu.tma_allocator():
        inside.set()
        done.wait(5)
    t.join()
    assert seen["other"] is not tu._torch_scratch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU machine without the interpreter")
def test_cpu_without_interpreter_names_the_fix():
    """Importing and calling a kernel on a CPU machine without TRITON_INTERPRET gives one clear
    error before any launch, not Triton's 68-line '0 active drivers' traceback."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch, hadamard_kernels as hk\n"
            "try:\n    hk.hadamard_transform(torch.randn(2, 16))\n"
            "except RuntimeError as e:\n    print('MSG', e)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**env, "PYTHONPATH": root},
                         capture_output=True, text=True, timeout=300)
    assert "MSG no CUDA GPU" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr
    assert "active drivers" not in out.stdout + out.stderr
