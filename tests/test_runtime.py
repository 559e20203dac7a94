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


# --- launch plans: the repeated-call fast path of ``launch`` ---

def test_spec_keys_what_triton_specialises_on():
    """Two calls share a plan only when Triton would compile them to the same kernel: the key
    separates dtypes, 16-byte alignment, integers equal to 1 or divisible by 16, 32- vs 64-bit,
    inside tuples too."""
    def spec(*args):
        return tu._spec(args)

    x = torch.zeros(64, dtype=torch.float32)
    assert spec(x) == spec(torch.ones(64))
    assert spec(x) != spec(x.half())
    assert spec(x) != spec(x[1:])  # 4 bytes off: not 16-byte aligned
    assert spec(x[4:]) == spec(x)  # 16 bytes off: aligned
    assert spec(3) == spec(5) and spec(3) != spec(1)
    assert spec(16) == spec(4096) and spec(16) != spec(17)
    assert spec(2 ** 31 + 16) != spec(16)
    assert spec(True) != spec(1)
    assert spec(None) == spec(None) and spec(0.5) == spec(2.0)
    assert spec((x, 3)) != spec((x, 1)) and spec((x, 3, 7)) == spec((x, 5, 9))
    assert spec(x, (x[1:], 16)) != spec(x, (x, 16))
    hash(spec(x, (x, 3), 0.5, None, True))


def test_key_positions_are_the_positional_autotune_keys():
    import triton.language as tl

    @triton.jit
    def k(x_ptr, n, bucket, BLOCK: tl.constexpr):
        pass

    tuned = triton.autotune(configs=[triton.Config({"BLOCK": 16})], key=["bucket", "BLOCK"])(k)
    assert tu._key_positions(tuned, 3) == (2,)
    assert tu._key_positions(k, 3) == ()


@pytest.mark.cuda
def test_launch_plan_reuses_the_compiled_kernel_and_matches_triton():
    """The second call of a (kernel, specialisation, key) launches the compiled kernel directly:
    same results as Triton's own launch, a new plan for a new specialisation (misaligned view, int
    equal to 1, other autotune key value, other constexpr), and a grid callable read per call."""
    import triton.language as tl

    @triton.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, alpha, bucket, BLOCK: tl.constexpr, NEG: tl.constexpr):
        # x, y, out: n contiguous elements; one program adds BLOCK of them.
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        r = tl.load(x_ptr + offs, mask=m) * alpha + tl.load(y_ptr + offs, mask=m)
        tl.store(out_ptr + offs, -r if NEG else r, mask=m)

    tuned = triton.autotune(configs=[triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 128})],
                            key=["bucket"])(add_kernel)
    tu._PLANS.clear()
    g = torch.Generator(device="cuda").manual_seed(1)
    base = torch.randn(4096 + 1, device="cuda", generator=g)
    y = torch.randn(4096 + 1, device="cuda", generator=g)

    def run(x, n, neg=False):
        out = torch.full_like(x, float("nan"))
        grid = lambda meta: ((n + meta["BLOCK"] - 1) // meta["BLOCK"],)  # noqa: E731
        tu.launch(tuned, grid, (x, y[:x.numel()], out, n, 0.5, tu.bucket(n)), {"NEG": neg})
        want = (x[:n] * 0.5 + y[:n]) * (-1 if neg else 1)
        torch.testing.assert_close(out[:n], want, rtol=0, atol=0)
        return out

    run(base[:4096], 4096)
    n_plans = len(tu._PLANS)
    assert n_plans == 1
    for n in (4096, 4000):  # 4000 % 16 == 0 and the same bucket: the plan is reused
        run(base[:4096], n)
    assert len(tu._PLANS) == n_plans
    run(base[:4096], 4001)  # not divisible by 16: another specialisation
    run(base[1:4097], 4096)  # a 4-byte-offset view: not 16-byte aligned
    run(base[:4096], 4096, neg=True)  # another constexpr
    run(base[:64], 1)  # n == 1 is a constexpr for Triton
    run(base[:2048], 2048)  # another autotune bucket
    assert len(tu._PLANS) == n_plans + 5
    for n, off in ((4001, 0), (4096, 1), (1, 0), (2048, 0)):  # each plan's second call: the fast path
        run(base[off:off + max(n, 64)], n)
    assert len(tu._PLANS) == n_plans + 5
