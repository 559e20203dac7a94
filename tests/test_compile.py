"""torch.compile of every public kernel op: fullgraph, 20 calls at one shape with
``error_on_recompile``, exactly one more graph for a second shape, results bit-equal to eager.

CPU: the interpreter, backend ``aot_eager`` through a ``CompileCounterWithBackend`` (Inductor cannot
run Triton kernels on CPU; under the interpreter the ops are custom_ops, see
``hadamard_kernels/triton_ops.py``). ``test_triton_ops_trace_to_the_kernel_launch`` checks, in a
process without the interpreter, that the triton_ops trace into the Triton launch itself.
GPU (``cuda``): default Inductor and ``mode="reduce-overhead"`` (CUDA graphs), and the generated code
holds the Triton kernel itself, or, where a Gluon kernel takes the call on sm90, the opaque
``hadamard_kernels.fwht_gluon`` op that runs it (the eager call's kernel: same bits).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import fp8_quant
import hadamard_kernels as hk_pkg
from hadamard_kernels import hadamard as H
from hadamard_kernels.rht import DEFAULT_SIGN_VECTOR, inverse_rht, rht
from hadamard_kernels.rht_amax import rht_amax
from hadamard_kernels.signs import SignVector

HAS_CUDA = torch.cuda.is_available()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SV = SignVector(DEFAULT_SIGN_VECTOR)
S64 = tuple(1 if (i * 7) % 3 else -1 for i in range(64))


def _t(shape, gen, device, dtype=torch.bfloat16):
    return torch.randn(shape, generator=gen, device=device).to(dtype)


def _qkv(s, gen, device):
    return _t((1, 2, s, 64), gen, device), _t((1, 1, s, 64), gen, device), _t((1, 1, s, 64), gen, device)


# name -> (function of tensors, inputs(shape index, gen, device)); the second shape recompiles once.
CASES = {
    "hadamard_transform": (lambda x: hk_pkg.hadamard_transform(x, 0.5),
                           lambda i, g, d: (_t([(4, 128), (6, 256)][i], g, d),)),
    "hadamard_transform_12N": (lambda x: H.hadamard_transform_12N(x, 0.25),
                               lambda i, g, d: (_t([(3, 192), (5, 192)][i], g, d, torch.float32),)),
    "hadamard_transform_28N": (lambda x: H.hadamard_transform_28N(x, 0.25),  # sm90: the Gluon K-mix kernel
                               lambda i, g, d: (_t([(3, 28 * 64), (2, 28 * 64)][i], g, d),)),
    "butterfly_hadamard": (lambda x: H.butterfly_hadamard(x, 1.0),
                           lambda i, g, d: (_t([(4, 64), (2, 128)][i], g, d),)),
    "matmul_hadamard": (lambda x: H.matmul_hadamard(x, 0.5),
                        lambda i, g, d: (_t([(4, 128), (8, 128)][i], g, d),)),
    "rht": (lambda x: rht(x, SV, 16, -1), lambda i, g, d: (_t([(32, 64), (16, 128)][i], g, d),)),
    "inverse_rht": (lambda x: inverse_rht(x, DEFAULT_SIGN_VECTOR, 16, 0),
                    lambda i, g, d: (_t([(32, 64), (48, 32)][i], g, d),)),
    "rht_amax": (lambda x: rht_amax(x, DEFAULT_SIGN_VECTOR, 16, 0),
                 lambda i, g, d: (_t([(32, 48), (64, 32)][i], g, d),)),
    "quantize_qkv": (lambda q, k, v: tuple(fp8_quant.quantize_qkv(q, k, v, hadamard="qkv", sign_vector=S64))[:6],
                     lambda i, g, d: _qkv([33, 40][i], g, d)),  # [:6]: the seventh field, v_mean, is None
    "quantize_per_head": (lambda q, k, v: fp8_quant.quantize_per_head(q, 2, hadamard=True, sign_vector=list(S64)),
                          lambda i, g, d: _qkv([33, 40][i], g, d)),
    "quantize_qkv_smooth": (lambda q, k, v: tuple(fp8_quant.quantize_qkv(q, k, v, hadamard="v_only", sign_vector=S64,
                                                                         smooth_k=True, smooth_v=True)),
                            lambda i, g, d: _qkv([33, 70][i], g, d)),
}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def _assert_same(got, want, what: str) -> None:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: output {i} {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        assert torch.equal(_bits(a), _bits(b)), f"{what}: output {i} differs from the eager call"


def _compile_20_calls(name: str, fn, make, gen, device, backend, graph_count, **kw) -> None:
    """20 calls at shape 0 (no recompile), one recompile for shape 1, then both shapes cached."""
    a, b = make(0, gen, device), make(1, gen, device)
    want_a, want_b = fn(*a), fn(*b)  # eager (also warms the autotuner)
    torch._dynamo.reset()
    counters.clear()
    f = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend, **kw)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(20):
            _assert_same(f(*a), want_a, f"{name} call {i}")
    assert graph_count() == 1, f"{name}: {graph_count()} graphs after 20 calls at one shape"
    _assert_same(f(*b), want_b, f"{name} second shape")  # the one allowed recompile
    assert graph_count() == 2, f"{name}: {graph_count()} graphs after a second shape (expected 2)"
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(5):
            _assert_same(f(*b), want_b, f"{name} second shape call {i}")
            _assert_same(f(*a), want_a, f"{name} first shape again, call {i}")
    assert graph_count() == 2
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(CASES))
def test_compile_aot_eager_no_recompile(name, gen, device):
    fn, make = CASES[name]
    cnt = CompileCounterWithBackend("aot_eager")
    _compile_20_calls(name, fn, make, gen, device, cnt, lambda: cnt.frame_count)


def _unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("name", list(CASES))
def test_compile_inductor_no_recompile(name, mode, gen):
    fn, make = CASES[name]
    _compile_20_calls(name, fn, make, gen, "cuda", "inductor", _unique_graphs, mode=mode)


# The Triton kernel Inductor must have compiled into its own code (triton_op), per public op; the
# fp8 ops stay opaque custom_ops (fp8_quant/quantize.py says why): their op name is in the code.
KERNEL_IN_CODE = {
    "hadamard_transform": None,  # butterfly or matmul per the dispatch table: either kernel name
    "butterfly_hadamard": "_fwht_butterfly_kernel",
    "matmul_hadamard": "_fwht_matmul_kernel",
    "hadamard_transform_12N": None,
    "hadamard_transform_28N": None,
    "rht": "_rht_rows_kernel",
    "inverse_rht": "_rht_cols_kernel",
    "rht_amax": "_rht_amax_tiled_cols_kernel",  # inputs <= 2^25 elements: the tiled kernel
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(KERNEL_IN_CODE))
def test_inductor_compiles_the_triton_kernel(name, gen):
    from torch._inductor.utils import run_and_get_code

    fn, make = CASES[name]
    args = make(0, gen, "cuda")
    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(fn, fullgraph=True, dynamic=False), *args)
    code = "\n".join(codes)
    k = {"hadamard_transform": 1, "butterfly_hadamard": 1, "hadamard_transform_12N": 12, "hadamard_transform_28N": 28}
    if name in k and H._takes_gluon(args[0], args[0].shape[-1], k[name]):  # sm90: the eager call's Gluon kernel
        assert "torch.ops.hadamard_kernels.fwht_gluon" in code, f"{name}: no fwht_gluon call:\n{code[:4000]}"
        assert "_fwht_butterfly_kernel" not in code and "_fwht_matmul_kernel" not in code, code[:4000]
        torch._dynamo.reset()
        return
    names = [KERNEL_IN_CODE[name]] if KERNEL_IN_CODE[name] else ["_fwht_butterfly_kernel", "_fwht_matmul_kernel"]
    assert any(n in code for n in names), (
        f"{name}: Inductor's code does not contain {names}: the op was not traced into its Triton launch "
        f"(triton_op/wrap_triton); generated code:\n{code[:4000]}")
    assert "torch.ops.hadamard_kernels" not in code, (
        f"{name}: Inductor's code still calls the op opaquely:\n{code[:4000]}")
    torch._dynamo.reset()


@pytest.mark.cuda
def test_fp8_ops_stay_opaque_custom_ops(gen):
    from torch._inductor.utils import run_and_get_code

    fn, make = CASES["quantize_qkv"]
    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(fn, fullgraph=True, dynamic=False), *make(0, gen, "cuda"))
    assert "fp8_quant.quantize_qkv" in "\n".join(codes), "\n".join(codes)[:4000]
    torch._dynamo.reset()


def test_hadamard_transform_backward_under_compile(gen, device):
    x = _t((4, 64), gen, device, torch.float32).requires_grad_(True)
    g = _t((4, 64), gen, device, torch.float32)
    x0 = x.detach().clone().requires_grad_(True)
    H.hadamard_transform(x0, 0.5).backward(g)
    torch._dynamo.reset()
    backend = "inductor" if HAS_CUDA else "aot_eager"
    f = torch.compile(lambda t: H.hadamard_transform(t, 0.5), fullgraph=True, dynamic=False, backend=backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            x.grad = None
            f(x).backward(g)
            assert torch.equal(x.grad, x0.grad)
    torch._dynamo.reset()


_TRACE_SCRIPT = r"""
import torch, torch._dynamo
from torch._dynamo.backends.common import aot_autograd
from torch._subclasses.fake_tensor import FakeTensor
from hadamard_kernels import hadamard as H
from hadamard_kernels.rht import rht, inverse_rht, DEFAULT_SIGN_VECTOR
from hadamard_kernels.rht_amax import rht_amax
from hadamard_kernels.signs import SignVector
import fp8_quant

class Stop(Exception):
    pass

graphs = []
def fw(gm, example_inputs):
    graphs.append(gm.code)
    raise Stop  # no driver here: look at the traced graph, never run it

sv = SignVector(DEFAULT_SIGN_VECTOR)
x = torch.randn(32, 64, dtype=torch.bfloat16)
cases = [
    ("fwht_butterfly", lambda t: H.butterfly_hadamard(t, 0.5)),
    ("fwht_matmul", lambda t: H.matmul_hadamard(t, 0.5)),
    ("fwht_k12", lambda t: H.hadamard_transform_12N(t.float()[:, :48])),
    ("rht", lambda t: rht(t, sv, 16, -1)),
    ("inverse_rht", lambda t: inverse_rht(t, sv, 16, 0)),
    ("rht_amax", lambda t: rht_amax(t, sv, 16, 0)),
    ("quantize_per_head", lambda t: fp8_quant.quantize_per_head(t.view(1, 2, 16, 64), 1)),
]
for name, fn in cases:
    graphs.clear()
    torch._dynamo.reset()
    try:
        torch.compile(fn, fullgraph=True, dynamic=False, backend=aot_autograd(fw_compiler=fw))(x)
    except Exception as e:
        if not isinstance(e, Stop) and "Stop" not in repr(e):
            raise
    print("GRAPH", name, "triton_kernel_wrapper_functional" in graphs[0],
          "torch.ops.hadamard_kernels" in graphs[0], "torch.ops.fp8_quant" in graphs[0])
from hadamard_kernels.signs import as_sign_vector
cached = list(as_sign_vector(list(DEFAULT_SIGN_VECTOR))._device_cache.values())  # what the op bodies use
print("CACHE_ENTRIES", len(cached))
print("CACHE_REAL", bool(cached) and not any(isinstance(t, FakeTensor) for t in cached))
"""


def test_triton_ops_trace_to_the_kernel_launch():
    """Without the interpreter (a subprocess, no GPU needed: the graph is traced, never run), every
    hadamard_kernels op decomposes into Triton's functional launch HOP, no opaque op call; the fp8
    ops stay custom ops; the sign-matrix caches hold only real tensors after tracing."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    lines = {ln.split()[1]: ln.split()[2:] for ln in r.stdout.splitlines() if ln.startswith("GRAPH")}
    for name in ("fwht_butterfly", "fwht_matmul", "fwht_k12", "rht", "inverse_rht", "rht_amax"):
        assert lines[name] == ["True", "False", "False"], (name, lines[name], r.stdout)
    assert lines["quantize_per_head"] == ["False", "False", "True"], (lines["quantize_per_head"], r.stdout)
    assert "CACHE_REAL True" in r.stdout, r.stdout

