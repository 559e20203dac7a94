"""rht_amax: bit for bit against the peer kernel's contract (the torch matmul expression)."""

from __future__ import annotations

import random

import pytest
import torch

from hadamard_kernels import DEFAULT_SIGN_VECTOR, random_sign_vector, rht_amax
from hadamard_kernels.reference import rht_amax_contract, rht_amax_exact
from hadamard_kernels.signs import SignVector

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
    import torch._dynamo

    x = torch.randn(32, 24, generator=gen, device=device).to(torch.bfloat16)
    backend = "inductor" if device == "cuda" else "aot_eager"
    torch._dynamo.reset()
    f = torch.compile(lambda t: rht_amax(t, DEFAULT_SIGN_VECTOR, 16, 0), fullgraph=True, backend=backend)
    rr, aa = rht_amax_contract(x, DEFAULT_SIGN_VECTOR, 16, 0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            r, a = f(x)
            assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa)
    torch.library.opcheck(torch.ops.hadamard_kernels.rht_amax.default, (x, list(DEFAULT_SIGN_VECTOR), 0),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("axis", [0, 1])
def test_d128_and_d256_interpreter_config(axis, device, gen):
    """d = 128 / 256 along rows do not fit the rows kernel's first (interpreter) config: the launcher
    takes the first listed config that does (on a GPU the autotuner's prune does the same)."""
    for d in (128, 256):
        shape = (2 * d, 40) if axis == 0 else (40, 2 * d)
        x = torch.randn(shape, generator=gen, device=device).to(torch.bfloat16)
        _check(x, random_sign_vector(d, seed=d), d, axis)


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
    s = random_sign_vector(d, seed=seed)
    _check(x, s, d, axis)
    rr, aa = rht_amax_contract(x, s, d, axis)
    for kernel in ("persistent", "tiled"):  # the public call runs one of them; both, autotuned
        r, a = ra._rht_amax_launch(x, SignVector(s), axis, kernel=kernel)
        assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa), kernel


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("d", [2, 8, 16, 128])
def test_tiled_every_config(axis, d, device, gen):
    """Every tiled config that fits d, through the seam, bit for bit: tiles that do not divide the
    input (masked rows / columns), TILES loops past the end, d = 2 / 8 on the register path."""
    blocks, other = 5, 600  # 5 blocks of d along the axis: several programs end past the input
    shape = (blocks * d, other) if axis == 0 else (other // 8 + 3, blocks * d)
    x = (torch.randn(shape, generator=gen, device=device) * 5).to(torch.bfloat16)
    x[shape[0] // 2, shape[1] - 1] = -40.0  # one outlier, late in the input
    sv = SignVector(random_sign_vector(d, seed=d + axis))
    rr, aa = rht_amax_contract(x, sv, d, axis)
    configs = [c for c in ra.AMAX_TILED_CONFIGS if ra._fits_tiled(c, d)]
    assert configs
    for cfg in configs:
        out = ra._rht_amax_launch(x, sv, axis, config=cfg)
        assert [_bits(t) for t in out] == [_bits(rr), _bits(aa)], (d, axis, cfg)


def test_kernel_choice_and_seam_errors(device, gen):
    x = torch.randn(64, 48, generator=gen, device=device).to(torch.bfloat16)
    assert ra._tiled_ok(x, 0) and ra._tiled_ok(x, 1)
    wide = torch.randn(64, 96, generator=gen, device=device).to(torch.bfloat16)[:, :48]  # rows 96 apart
    assert ra._tiled_ok(wide, 0) and not ra._tiled_ok(wide, 1)
    assert not ra._tiled_ok(x.t(), 0)
    sv = SignVector(DEFAULT_SIGN_VECTOR)
    rr, aa = rht_amax_contract(wide, sv, 16, 1)
    r, a = ra._rht_amax_launch(wide, sv, 1)  # auto: the persistent kernel reads the strided rows
    assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa)
    with pytest.raises(ValueError, match="tiled rht_amax kernel needs"):
        ra._rht_amax_launch(wide, sv, 1, kernel="tiled")
    with pytest.raises(ValueError, match="kernel must be"):
        ra._rht_amax_launch(x, sv, 0, kernel="fast")
    with pytest.raises(ValueError, match="is a tiled config"):
        ra._rht_amax_launch(x, sv, 0, config=ra.AMAX_TILED_CONFIGS[0], kernel="persistent")
    with pytest.raises(ValueError, match="use_tma applies"):
        ra._rht_amax_launch(x, sv, 0, kernel="tiled", use_tma=True)


@pytest.mark.cuda
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("d, use_tma", [(16, True), (128, True), (16, False)], ids=["16-tma", "128-tma", "16-ptr"])
def test_every_amax_config_compiles(axis, d, use_tma):
    """Compile and run EVERY config of the autotune list that fits d (the warp-specialized ones
    included) through the seam, in a subprocess (``_check_configs`` below, run as this file's
    ``__main__``) so that a compiler abort kills only that process; a crashed config is recorded and
    the subprocess restarted after it. A failure names the config: drop it from AMAX_COLS_CONFIGS /
    AMAX_ROWS_CONFIGS."""
    import os
    import sys

    from tests.isolated_configs import run_configs

    command = lambda start: [sys.executable, os.path.abspath(__file__), str(axis), str(d), str(int(use_tma)), str(start)]  # noqa: E731
    failures = run_configs(command, ra.amax_configs(axis, d), timeout=300)
    assert not failures, "\n".join(failures)


def _check_configs(axis: int, d: int, use_tma: bool, start: int = 0) -> None:
    """Subprocess side of ``test_every_amax_config_compiles``: runs each config that fits d from
    ``start`` on through the seam, printing ``START i`` before and ``OK i`` / ``FAIL i <reason>`` after
    it, flushed, so the parent can tell which one crashed."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2048, 4096, generator=g, device="cuda").to(torch.bfloat16)
    sv = SignVector(random_sign_vector(d, seed=d))
    rr, aa = rht_amax_contract(x, sv, d, axis)

    def check(cfg):
        r, a = ra._rht_amax_launch(x, sv, axis, config=cfg, use_tma=use_tma)
        torch.cuda.synchronize()
        return None if _bits(r) == _bits(rr) and _bits(a) == _bits(aa) else f"wrong result {r.item()} vs {rr.item()}"

    from tests.isolated_configs import check_configs

    check_configs(ra.amax_configs(axis, d), start, check)


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
    """Every listed config that fits d through the seam (GROUPS > 1, big tiles that do not divide M
    or N, warp-specialized loops, pointer loads): the interpreter only ever autotunes to the first
    config. d = 16 (tl.dot) and d = 8 (the register path)."""
    x = torch.randn(80, 176, generator=gen, device=device).to(torch.bfloat16)
    for d in (16, 8):
        sv = SignVector(random_sign_vector(d, seed=d))
        rr, aa = rht_amax_contract(x, sv, d, axis)
        configs = ra.amax_configs(axis, d)
        if d == 16:  # d = 8 (register path, [.., d, d] product in registers) fits fewer
            assert len(configs) == 6 and any(c.kwargs["WARP_SPECIALIZE"] for c in configs)
        for cfg in configs:
            r, a = ra._rht_amax_launch(x, sv, axis, config=cfg, use_tma=False)
            assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa), (d, cfg)


def test_sign_vector_forms(device, gen):
    x = torch.randn(64, 64, generator=gen, device=device).to(torch.bfloat16)
    t = random_sign_vector(16, seed=3)
    for axis in (0, 1):
        rr, aa = rht_amax_contract(x, t, 16, axis)
        for s in (t, t.tolist(), tuple(int(v) for v in t.tolist()), SignVector(t), t.to(torch.int32)):
            r, a = rht_amax(x, s, 16, axis)
            assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa)


@pytest.mark.parametrize("bad", [torch.zeros(16), torch.full((16,), 2.0), (1, -1) * 4, [1] * 32],
                         ids=["zeros", "twos", "short", "long"])
def test_bad_sign_vectors(bad, device):
    x = torch.randn(32, 32, device=device).to(torch.bfloat16)
    with pytest.raises(ValueError):
        rht_amax(x, bad.to(device) if isinstance(bad, torch.Tensor) else bad, 16, 0)


def test_default_axis_is_the_columnwise_amax(device, gen):
    """rht_amax defaults to axis=0 (the columnwise RHT amax of NVFP4 wgrad inputs), rht to axis=-1;
    the docstring says why, and the default is the axis-0 contract bit for bit."""
    import inspect

    from hadamard_kernels import rht

    assert inspect.signature(rht_amax).parameters["axis"].default == 0
    assert inspect.signature(rht).parameters["axis"].default == -1
    assert "columnwise" in rht_amax.__doc__ and "wgrad" in rht_amax.__doc__ and "axis=-1" in rht_amax.__doc__
    x = torch.randn(48, 40, generator=gen, device=device).to(torch.bfloat16)
    r, a = rht_amax(x)
    rr, aa = rht_amax_contract(x, DEFAULT_SIGN_VECTOR, 16, 0)
    assert _bits(r) == _bits(rr) and _bits(a) == _bits(aa)
    with pytest.raises(ValueError, match="multiple of hadamard_dimension"):
        rht_amax(torch.zeros(40, 48, device=device, dtype=torch.bfloat16))  # 40 rows: axis 0 by default


def test_grad_is_refused_before_any_launch(device, gen, monkeypatch):
    """The gradient policy: no backward, so ValueError (naming the fix) before any launch."""
    x = torch.randn(32, 16, generator=gen, device=device).to(torch.bfloat16)
    want = rht_amax(x)

    def no_launch(*a, **k):
        raise AssertionError("launched")

    monkeypatch.setattr(ra, "launch", no_launch)
    xg = x.clone().requires_grad_()
    with pytest.raises(ValueError, match=r"rht_amax: x requires grad.*torch\.no_grad\(\) or \.detach\(\)"):
        rht_amax(xg)
    monkeypatch.undo()
    with torch.no_grad():
        got = rht_amax(xg)
    assert _bits(got[0]) == _bits(want[0]) and _bits(got[1]) == _bits(want[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the examples use CPU tensors, which run only under the interpreter: the CPU suite runs them")
def test_docstring_example_runs():
    import doctest

    (t,) = doctest.DocTestFinder(recurse=False).find(rht_amax, "rht_amax", globs={"torch": torch, "rht_amax": rht_amax})
    result = doctest.DocTestRunner().run(t)
    assert result.failed == 0 and result.attempted >= 3, result


if __name__ == "__main__":  # the subprocess of test_every_amax_config_compiles
    import sys

    _check_configs(int(sys.argv[1]), int(sys.argv[2]), bool(int(sys.argv[3])), int(sys.argv[4]))
