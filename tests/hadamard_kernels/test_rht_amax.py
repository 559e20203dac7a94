"""rht_amax: bit for bit against the peer kernel's contract (the torch matmul expression)."""

from __future__ import annotations

import random

import pytest
import torch

from hadamard_kernels import DEFAULT_SIGN_VECTOR, random_sign_vector, rht_amax
from hadamard_kernels.reference import rht_amax_contract, rht_amax_exact

import importlib

# the package exports the function ``rht_amax``, which shadows the module of the same name
ra = importlib.import_module("hadamard_kernels.rht_amax")


def _bits(t: torch.Tensor) -> int:
    return int(t.view(torch.int32).item())


def _check(x, s, d, axis):
    r, a = rht_amax(x, s, d, axis)
    rr, aa = rht_amax_contract(x, s, d, axis)
    assert r.dtype == torch.float32 and r.shape == () and a.shape == () and r.device == x.device
    assert _bits(a) == _bits(aa), (a.item(), aa.item())
    assert _bits(r) == _bits(rr), (tuple(x.shape), d, axis, r.item(), rr.item())
    return r, a


def _random_cases(n, seed, large=False):
    rnd = random.Random(seed)
    cases = []
    for i in range(n):
        d = rnd.choice([16, 32, 64, 128]) if i % 5 else rnd.choice([2, 4, 8, 256])
        axis = rnd.choice([0, 1])
        blocks = rnd.randint(1, 3 if not large else 64)
        other = rnd.randint(1, 70 if not large else 3000)
        shape = (blocks * d, other) if axis == 0 else (other, blocks * d)
        cases.append((shape, d, axis, rnd.randint(0, 2**31)))
    return cases


@pytest.mark.parametrize("shape, d, axis, seed", _random_cases(24, seed=4))
def test_bit_exact_against_contract(shape, d, axis, seed, device):
    g = torch.Generator(device=device).manual_seed(seed)
    scale = 10.0 ** (seed % 5 - 2)
    x = (torch.randn(shape, generator=g, device=device) * scale).to(torch.bfloat16)
    s = random_sign_vector(d, seed=seed)
    _check(x, s, d, axis)


@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_contract_equals_exact_sum_rounded_once(d, device, gen):
    # the kernel's fp32 accumulation order differs from torch's; both equal the exactly summed,
    # once-rounded product unless an fp32 rounding crosses a bf16 rounding boundary.
    x = torch.randn(4 * d, 96, generator=gen, device=device).to(torch.bfloat16)
    s = random_sign_vector(d, seed=d)
    for axis in (0, 1):
        xs = x if axis == 0 else x.t().contiguous()
        r, _ = rht_amax(xs, s, d, axis)
        assert _bits(r) == _bits(rht_amax_exact(xs, s, d, axis)[0])


@pytest.mark.parametrize("sv", [DEFAULT_SIGN_VECTOR, (1,) * 16, (-1,) * 16, tuple(random_sign_vector(16, seed=9).int().tolist())])
def test_sign_vectors(sv, device, gen):
    x = torch.randn(64, 40, generator=gen, device=device).to(torch.bfloat16)
    _check(x, sv, 16, 0)
    _check(x.t().contiguous(), sv, 16, 1)


def test_default_arguments(device, gen):
    x = torch.randn(32, 24, generator=gen, device=device).to(torch.bfloat16)
    r, a = rht_amax(x, DEFAULT_SIGN_VECTOR)
    rr, aa = rht_amax_contract(x, DEFAULT_SIGN_VECTOR, 16, 0)
    assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa)


def test_outlier_is_spread(device):
    x = torch.zeros(16, 8, device=device, dtype=torch.bfloat16)
    x[3, 5] = 64.0
    r, a = rht_amax(x, DEFAULT_SIGN_VECTOR, 16, 0)
    assert a.item() == 64.0 and r.item() == 16.0  # 64 / sqrt(16)


@pytest.mark.parametrize("axis", [0, 1])
def test_nan_inf_zero(axis, device, gen):
    d = 16
    x = torch.randn(64, 48, generator=gen, device=device).to(torch.bfloat16)
    z = torch.zeros_like(x)
    r, a = rht_amax(z, DEFAULT_SIGN_VECTOR, d, axis)
    assert _bits(r) == 0 and _bits(a) == 0
    for val, check in [(float("nan"), torch.isnan), (float("inf"), torch.isposinf), (float("-inf"), torch.isposinf)]:
        y = x.clone()
        y[37, 29] = val
        r, a = rht_amax(y, DEFAULT_SIGN_VECTOR, d, axis)
        assert check(r) and check(a), (val, r, a)
        rr, aa = rht_amax_contract(y, DEFAULT_SIGN_VECTOR, d, axis)
        assert check(rr) and check(aa)
    # NaN beats Inf
    y = x.clone()
    y[0, 0] = float("inf")
    y[63, 47] = float("nan")
    r, a = rht_amax(y, DEFAULT_SIGN_VECTOR, d, axis)
    assert torch.isnan(r) and torch.isnan(a)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_other_dtypes(dtype, device, gen):
    x = torch.randn(64, 40, generator=gen, device=device).to(dtype)
    s = random_sign_vector(32, seed=1)
    r, a = rht_amax(x, s, 32, 0)
    rr, aa = rht_amax_contract(x, s, 32, 0)
    assert _bits(a) == _bits(aa)
    if dtype == torch.float16:  # fp16 matrix, fp32 accumulation, product rounded to fp16
        assert _bits(r) == _bits(rr)
    else:  # fp32 matrix, tf32x3 dots on GPU: fp32-accurate, not bit for bit
        torch.testing.assert_close(r, rr, rtol=1e-6, atol=0)


def test_non_contiguous_and_empty(device, gen):
    base = torch.randn(40, 64, generator=gen, device=device).to(torch.bfloat16)
    x = base.t()  # (64, 40), strides (1, 64)
    _check(x, DEFAULT_SIGN_VECTOR, 16, 0)
    _check(x, random_sign_vector(32, seed=2), 32, 0)
    xs = base[:, ::2]  # (40, 32) row stride 64, column stride 2
    _check(xs, DEFAULT_SIGN_VECTOR, 16, 1)
    r, a = rht_amax(torch.empty(0, 16, device=device, dtype=torch.bfloat16), DEFAULT_SIGN_VECTOR, 16, 1)
    assert r.item() == 0 and a.item() == 0


def test_errors(device):
    x = torch.randn(32, 24, device=device).to(torch.bfloat16)
    with pytest.raises(ValueError, match="tensorwise"):
        rht_amax(x, DEFAULT_SIGN_VECTOR, 16, 0, scaling="rowwise")
    with pytest.raises(ValueError, match="multiple"):
        rht_amax(x, DEFAULT_SIGN_VECTOR, 16, 1)
    with pytest.raises(ValueError, match="2-D"):
        rht_amax(x[None], DEFAULT_SIGN_VECTOR, 16, 0)
    with pytest.raises(TypeError, match="int8"):
        rht_amax(torch.zeros(32, 16, dtype=torch.int8, device=device), DEFAULT_SIGN_VECTOR)
    with pytest.raises(ValueError, match="entries"):
        rht_amax(x, (1,) * 8, 16, 0)
    with pytest.raises(ValueError, match="axis"):
        rht_amax(x, DEFAULT_SIGN_VECTOR, 16, 2)
    with pytest.raises(ValueError, match="power of two"):
        rht_amax(x, (1,) * 24, 24, 0)


def test_torch_compile_and_fake(device, gen):
    x = torch.randn(32, 24, generator=gen, device=device).to(torch.bfloat16)
    backend = "inductor" if device == "cuda" else "aot_eager"
    f = torch.compile(lambda t: rht_amax(t, DEFAULT_SIGN_VECTOR, 16, 0), fullgraph=True, backend=backend)
    r, a = f(x)
    rr, aa = rht_amax_contract(x, DEFAULT_SIGN_VECTOR, 16, 0)
    assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa)
    torch.library.opcheck(torch.ops.hadamard_kernels.rht_amax.default, (x, list(DEFAULT_SIGN_VECTOR), 0),
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------- GPU only

@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(2048, 4096), (8192, 8192), (4096, 1000), (1040, 3000)])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("axis", [0, 1])
def test_bit_exact_gpu_sizes(shape, d, axis, gen):
    if shape[axis] % d:
        shape = (shape[0] // d * d, shape[1]) if axis == 0 else (shape[0], shape[1] // d * d)
    x = (torch.randn(shape, generator=gen, device="cuda") * 3).to(torch.bfloat16)
    _check(x, random_sign_vector(d, seed=d), d, axis)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, d, axis, seed", _random_cases(40, seed=11, large=True))
def test_bit_exact_gpu_random_shapes(shape, d, axis, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, generator=g, device="cuda").to(torch.bfloat16)
    _check(x, random_sign_vector(d, seed=seed), d, axis)


@pytest.mark.cuda
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("d, use_tma", [(16, True), (128, True), (16, False)], ids=["16-tma", "128-tma", "16-ptr"])
def test_every_amax_config_compiles(axis, d, use_tma):
    """Compile and run EVERY config of the autotune list (the warp-specialized ones included) with the
    raw kernel, in a subprocess so that a compiler abort kills only that process; a crashed config is
    recorded and the subprocess restarted after it. A failure names the config: drop it from
    AMAX_COLS_CONFIGS / AMAX_ROWS_CONFIGS."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    configs = ra._prune(axis)(ra.AMAX_COLS_CONFIGS if axis == 0 else ra.AMAX_ROWS_CONFIGS, {"D": d})
    failures, start = [], 0
    while start < len(configs):
        code = f"from hadamard_kernels.rht_amax import _check_configs; _check_configs({axis}, {d}, {use_tma}, {start})"
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
        lines = proc.stdout.splitlines()
        failures += [f"{configs[int(ln.split()[1])]}: {ln}" for ln in lines if ln.startswith("FAIL")]
        if "DONE" in lines:
            break
        started = [int(ln.split()[1]) for ln in lines if ln.startswith("START")]
        crashed = started[-1] if started else start
        failures.append(f"{configs[crashed]}: process died (rc={proc.returncode}): {proc.stderr[-400:]}")
        start = crashed + 1
    assert not failures, "\n".join(failures)


@pytest.mark.cuda
def test_cuda_graph_capture(gen):
    x = torch.randn(4096, 4096, generator=gen, device="cuda").to(torch.bfloat16)
    s = DEFAULT_SIGN_VECTOR
    rht_amax(x, s, 16, 0)  # compile + autotune outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        r, a = rht_amax(x, s, 16, 0)
    x.copy_(torch.randn(4096, 4096, generator=gen, device="cuda").to(torch.bfloat16) * 7)
    graph.replay()
    torch.cuda.synchronize()
    rr, aa = rht_amax_contract(x, s, 16, 0)
    assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa)


@pytest.mark.cuda
def test_tma_allocator_not_left_set(gen):
    from triton.runtime import _allocation

    before = _allocation._allocator.get()
    rht_amax(torch.randn(256, 256, generator=gen, device="cuda").to(torch.bfloat16), DEFAULT_SIGN_VECTOR)
    assert _allocation._allocator.get() is before


@pytest.mark.parametrize("axis", [0, 1])
def test_other_configs_interpreter(axis, device, gen):
    """A few non-default tile shapes (GROUPS > 1, big tiles that do not divide M or N, pointer loads)
    through the raw kernel: the interpreter only ever autotunes to the first config."""
    d = 16
    x = torch.randn(80, 176, generator=gen, device=device).to(torch.bfloat16)
    rr, aa = rht_amax_contract(x, DEFAULT_SIGN_VECTOR, d, axis)
    configs = ra._prune(axis)(ra.AMAX_COLS_CONFIGS if axis == 0 else ra.AMAX_ROWS_CONFIGS, {"D": d})
    # the listed non-default configs (GROUPS > 1 / BLOCK_M > 16) plus a REG_MATH one (the d = 16
    # register-math path, not in the lists but kept in the kernels)
    reg = (ra._cols_cfg(2, 64, True, 3, 8, reg=True) if axis == 0 else ra._rows_cfg(16, 64, True, 3, 8, reg=True))
    picked = [c for c in configs[1:] if not c.kwargs["WARP_SPECIALIZE"]][:2] + [reg]
    assert len(picked) == 3 and ra._prune(axis)([reg], {"D": d}) == [reg]
    for cfg in picked:
        r, a = ra._run_config(x, DEFAULT_SIGN_VECTOR, axis, cfg, use_tma=False)
        assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa), cfg
