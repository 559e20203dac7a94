"""Hadamard transform kernels (butterfly and matmul) against the float64 reference.

Accuracy metric: relative RMS error against float64 F.linear(x, M) * scale. 16-bit outputs: at most 1.1x the
error of rounding the exact result once to the output dtype, on the same data. fp32 outputs: every
addition on an element's path may round once (log2(P) butterfly adds, K - 1 adds of the K mix, the
final scale), independent errors add in quadrature, so the bound is 1.1 x sqrt(1 + log2(P) + K - 1)
x one rounding. The tensor-core kernel refuses fp32 (``refuses_fp32``): its accumulation measured up to
1.19x that bound on an H200.
"""

import math

import pytest
import torch

import hadamard_kernels as hk_pkg
import hadamard_kernels.hadamard as H
from hadamard_kernels.matrices import hadamard_k_matrix
from hadamard_kernels.reference import hadamard_transform_ref, rel_rms, rounding_bound

HAS_CUDA = torch.cuda.is_available()

KERNELS = {"butterfly": H.butterfly_hadamard, "matmul": H.matmul_hadamard}
K_FUNCS = {12: H.hadamard_transform_12N, 20: H.hadamard_transform_20N, 28: H.hadamard_transform_28N,
           40: H.hadamard_transform_40N}
POW2 = [2 ** i for i in range(1, 16)]
# CPU (interpreter): a few rows; big n gets fewer. GPU: real batches.
# GPU: every (n, dtype, kernel) compiles one kernel (LOWPREC_AUTOTUNE=first), so the GPU grid stays
# small: P = 2 (butterfly stages inside the matmul kernel) and P = 1024 (the largest, two dot factors);
# the benchmark suite checks the accuracy of 12*1024, 20*1024, 28*512, 28*1024 and 40*512 in bf16.
K_P = [1, 2, 8, 16, 64, 512, 1024] if not HAS_CUDA else [2, 1024]


def _rows(n: int) -> int:
    if HAS_CUDA:
        return max(4, (1 << 22) // n) + 3
    return max(7, 4096 // n) if n <= 1024 else 3  # >= 4096 elements: a stable error estimate


def _bound(ref, dtype, p: int, k: int = 1) -> float:
    one = rounding_bound(ref, dtype)
    if dtype == torch.float32:
        return 1.1 * math.sqrt(1 + math.log2(p) + (k - 1)) * one
    return 1.1 * one


def _randn(shape, dtype, gen, device):
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def refuses_fp32(impl: str, x: torch.Tensor, h_k=None) -> bool:
    """True when x is float32 for the matmul kernel, after checking that the public function and the
    seam refuse it (ValueError, before any launch): the test then has nothing else to run."""
    if impl != "matmul" or x.dtype != torch.float32:
        return False
    for call in (lambda: H.matmul_hadamard(x, 0.5, h_k), lambda: H._launch(x, 0.5, h_k, "matmul")):
        with pytest.raises(ValueError, match="float32"):
            call()
    return True


def _dtype(impl: str) -> torch.dtype:
    """fp32 (the tightest bound) where the kernel takes it, else bf16."""
    return torch.bfloat16 if impl == "matmul" else torch.float32


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
@pytest.mark.parametrize("n", POW2)
def test_pow2_accuracy(impl, n, float_dtype, gen, device):
    x = _randn((_rows(n), n), float_dtype, gen, device)
    if refuses_fp32(impl, x):
        return
    scale = 1.0 / math.sqrt(n) * 1.37
    out = KERNELS[impl](x, scale)
    assert out.dtype == float_dtype and out.shape == x.shape
    ref = hadamard_transform_ref(x, scale)
    assert torch.isfinite(out).all()
    err, bound = rel_rms(out, ref), _bound(ref, float_dtype, n)
    assert err <= bound, f"{impl} n={n} {float_dtype}: rel rms {err:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
@pytest.mark.parametrize("k", [12, 20, 28, 40])
@pytest.mark.parametrize("p", K_P)
def test_k_accuracy(impl, k, p, float_dtype, gen, device, monkeypatch):
    n = k * p
    x = _randn((_rows(n), n), float_dtype, gen, device)
    if refuses_fp32(impl, x, hadamard_k_matrix(k, device=device)):
        return
    if impl == "matmul" and k == 40 and p == 1024:
        with pytest.raises(ValueError, match="matmul kernel"):
            H.matmul_hadamard(x, 0.5, hadamard_k_matrix(40, device=device))
        # the public function falls back to the butterfly there, whatever the table says
        monkeypatch.setitem(H.DISPATCH_K, (k, n, float_dtype), "matmul")
        assert H._pick(n, k, float_dtype) == "butterfly"
        out = K_FUNCS[k](x, 0.5)
    else:
        out = H._launch(x, 0.5, hadamard_k_matrix(k, device=device), impl)  # the seam forces the kernel
        if H.gluon_kmix.eligible(x, n, k, p, True):  # Hopper, 16-bit: the public function runs gluon_kmix
            assert torch.equal(K_FUNCS[k](x, 0.5), H._launch(x, 0.5, hadamard_k_matrix(k, device=device), "gluon"))
        elif impl == H._pick(n, k, float_dtype):  # the public function runs the same kernel
            assert torch.equal(K_FUNCS[k](x, 0.5), out)
    ref = hadamard_transform_ref(x, 0.5, k=k)
    err, bound = rel_rms(out, ref), _bound(ref, float_dtype, p, k)
    assert err <= bound, f"{impl} K={k} n={n} {float_dtype}: rel rms {err:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
def test_user_hk(impl, gen, device):
    hk = -hadamard_k_matrix(12, device=device).flip(1)  # another Hadamard matrix of order 12 (not symmetric)
    dt = _dtype(impl)
    x = _randn((5, 12 * 16), dt, gen, device)
    out = KERNELS[impl](x, 1.0, hk.to(device))
    ref = hadamard_transform_ref(x, 1.0, h_k=hk)
    assert rel_rms(out, ref) <= _bound(ref, dt, 16, 12)
    # through the public function (validated)
    out2 = H.hadamard_transform_12N(x, 1.0, h_k=hk)
    assert rel_rms(out2, ref) <= _bound(ref, dt, 16, 12)
    # a transposed (non-contiguous) H_K view and a float64 one are read correctly
    hk_t = hk.to(device).t()
    ref_t = hadamard_transform_ref(x, 1.0, h_k=hk_t)
    assert rel_rms(KERNELS[impl](x, 1.0, hk_t), ref_t) <= _bound(ref_t, dt, 16, 12)
    assert torch.equal(KERNELS[impl](x, 1.0, hk.to(device, torch.float64)), out)
    with pytest.raises(ValueError, match="square"):
        KERNELS[impl](x, 1.0, hk[:, :11].to(device))


def test_user_hk_rejected(device):
    x = torch.zeros(2, 48, device=device)
    bad = hadamard_k_matrix(12, device=device).clone()
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="Hadamard"):
        H.hadamard_transform_12N(x, h_k=bad)
    with pytest.raises(ValueError, match="shape"):
        H.hadamard_transform_12N(x, h_k=hadamard_k_matrix(20, device=device))


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
@pytest.mark.parametrize("n", [8, 256, 4096])
def test_involution(impl, n, gen, device):
    x = _randn((5, n), _dtype(impl), gen, device)
    scale = 1.0 / math.sqrt(n)
    y = KERNELS[impl](KERNELS[impl](x, scale), scale)
    if x.dtype == torch.float32:
        torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
    else:  # two roundings of an orthogonal map's outputs (each within the 1.1x one-rounding bound)
        one = rounding_bound(hadamard_transform_ref(x, scale), x.dtype)
        assert 0 < rel_rms(y, x.double()) <= 2 * 1.1 * one


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
def test_one_row_and_odd_rows(impl, gen, device):
    for rows, n in [(1, 2), (1, 32768 if HAS_CUDA else 4096), (37, 64), (3, 2), (513, 16)]:
        x = _randn((rows, n), torch.bfloat16, gen, device)
        ref = hadamard_transform_ref(x)
        assert rel_rms(KERNELS[impl](x), ref) <= _bound(ref, torch.bfloat16, n)


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
def test_strided_leading_dims_no_copy(impl, gen, device):
    base = _randn((4, 6, 128), torch.bfloat16, gen, device)
    x = base[:, 1:4, :]  # 3-d, leading dims that do not collapse into one stride, last dim contiguous
    with pytest.raises(RuntimeError):
        x.view(-1, 128)
    out = KERNELS[impl](x, 0.25)
    ref = hadamard_transform_ref(x, 0.25)
    assert out.shape == x.shape and out.is_contiguous()
    assert rel_rms(out, ref) <= _bound(ref, torch.bfloat16, 128)
    # rows read in place: the launcher hands the kernel x's own storage
    xr, m, r1, s0, s1 = H._as_rows(x)
    assert xr.data_ptr() == x.data_ptr() and (m, r1, s0, s1) == (12, 3, 768, 128)
    # 4-d with collapsible leading dims: a view, no copy
    y = _randn((2, 3, 5, 64), torch.float16, gen, device)[:, :, 1:4]
    assert rel_rms(KERNELS[impl](y), hadamard_transform_ref(y)) <= _bound(hadamard_transform_ref(y), torch.float16, 64)
    # last dim not contiguous: works (one copy)
    z = _randn((64, 5), _dtype(impl), gen, device).t()
    assert rel_rms(KERNELS[impl](z), hadamard_transform_ref(z)) <= _bound(hadamard_transform_ref(z), z.dtype, 64)


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
def test_nan_inf_propagate(impl, device):
    x = torch.zeros(4, 32, device=device, dtype=_dtype(impl))
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    x[2, 0] = 1.0
    out = KERNELS[impl](x)
    assert torch.isnan(out[0]).all()
    assert (~torch.isfinite(out[1])).all()
    assert torch.equal(out[2], torch.ones(32, device=device, dtype=x.dtype))
    assert torch.equal(out[3], torch.zeros(32, device=device, dtype=x.dtype))  # all-zero row stays zero


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
def test_empty(impl, device):
    for shape in [(0, 64), (3, 0, 16)]:
        x = torch.randn(shape, device=device).to(torch.bfloat16)
        out = KERNELS[impl](x)
        assert out.shape == x.shape and out.dtype == x.dtype
    assert H.hadamard_transform_20N(torch.empty(0, 40, device=device)).shape == (0, 40)


def test_errors(device, monkeypatch):
    with pytest.raises(TypeError, match="dtype"):
        H.hadamard_transform(torch.ones(2, 8, dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match="float64"):
        H.hadamard_transform(torch.ones(2, 8, dtype=torch.float64, device=device))
    # every n >= 1 up to the largest transform is accepted (zero-padded): only larger ones fail
    for n in (32769, 65536):
        with pytest.raises(ValueError, match=f"n={n}"):
            H.hadamard_transform(torch.ones(2, n, device=device))
    for fn, n in ((H.hadamard_transform_12N, 12 * 1024 + 1), (H.hadamard_transform_28N, 28 * 2048)):
        with pytest.raises(ValueError, match=f"n={n}"):
            fn(torch.ones(2, n, device=device))
    with pytest.raises(ValueError, match="matmul kernel"):  # padded row 64 * 1024 > 32768
        H.matmul_hadamard(torch.ones(2, 40 * 1000, device=device, dtype=torch.bfloat16), 1.0,
                          hadamard_k_matrix(40, device=device))
    assert refuses_fp32("matmul", torch.ones(2, 8, device=device))
    # the table never sends fp32 (or a row past the limit) to the matmul kernel, whatever it says
    monkeypatch.setitem(H.DISPATCH, (256, torch.float32), "matmul")
    monkeypatch.setitem(H.DISPATCH, (256, torch.bfloat16), "matmul")
    assert H._pick(256, 1, torch.float32) == "butterfly" and H._pick(256, 1, torch.bfloat16) == "matmul"
    monkeypatch.setitem(H.DISPATCH_K, (40, 40 * 1024, torch.bfloat16), "matmul")  # padded row 64 * 1024
    assert H._pick(40 * 1024, 40, torch.bfloat16) == "butterfly"
    # a 1 x 1 h_k is refused (it would be ignored): its sign belongs in scale
    with pytest.raises(ValueError, match="K >= 2"):
        H.butterfly_hadamard(torch.ones(1, 4, device=device), 1.0, -torch.ones(1, 1, device=device))
    with pytest.raises(TypeError):
        H.hadamard_transform([1.0, 2.0])


def test_public_dispatch_matches_kernels(gen, device, monkeypatch):
    x = _randn((3, 2048), torch.bfloat16, gen, device)
    b = H.butterfly_hadamard(x, 0.1)
    m = H.matmul_hadamard(x, 0.1)
    assert (2048, torch.bfloat16) not in H.DISPATCH
    assert torch.equal(hk_pkg.hadamard_transform(x, 0.1), b)  # not in the table: the default
    monkeypatch.setitem(H.DISPATCH, (2048, torch.bfloat16), "matmul")
    assert torch.equal(hk_pkg.hadamard_transform(x, 0.1), m)


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
@pytest.mark.parametrize("k", [1, 12])
def test_backward(impl, k, gen, device, monkeypatch):
    monkeypatch.setattr(H, "_pick", lambda n, k, dtype: impl)  # the public function's kernel choice
    n = 64 if k == 1 else 12 * 8
    hk = None if k == 1 else -hadamard_k_matrix(12, device=device).flip(1)  # non-symmetric: backward uses H_K^T
    x = _randn((3, 2, n), _dtype(impl), gen, device).requires_grad_(True)
    g = _randn((3, 2, n), _dtype(impl), gen, device)
    fn = (lambda t: H.hadamard_transform(t, 0.3)) if k == 1 else (lambda t: H.hadamard_transform_12N(t, 0.3, h_k=hk))
    fn(x).backward(g)
    xr = x.detach().double().requires_grad_(True)
    hadamard_transform_ref(xr, 0.3, h_k=hk).backward(g.double())
    if x.dtype == torch.float32:
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
    else:
        assert rel_rms(x.grad, xr.grad) <= _bound(xr.grad, x.dtype, 64 if k == 1 else 8, k)


def test_torch_compile_fullgraph(gen, device):
    x = _randn((4, 128), torch.bfloat16, gen, device)
    x40 = _randn((2, 80), torch.float32, gen, device)

    @torch.compile(fullgraph=True, backend="eager" if not HAS_CUDA else "inductor")
    def f(a, b):
        return (hk_pkg.hadamard_transform(a, 0.5), H.matmul_hadamard(a, 0.5), H.butterfly_hadamard(a, 0.5),
                H.hadamard_transform_40N(b), H.hadamard_transform_20N(b))

    outs = f(x, x40)
    assert torch.equal(outs[0], H.hadamard_transform(x, 0.5))
    assert torch.equal(outs[1], H.matmul_hadamard(x, 0.5))
    assert torch.equal(outs[3], H.hadamard_transform_40N(x40))
    assert torch.equal(outs[4], H.hadamard_transform_20N(x40))


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
def test_cuda_graph_capture(impl, gen):
    x = _randn((64, 4096), torch.bfloat16, gen, "cuda")
    x28 = _randn((16, 28 * 512), torch.bfloat16, gen, "cuda")
    fn = KERNELS[impl]
    hk = hadamard_k_matrix(28, device="cuda")
    fn(x, 0.5), fn(x28, 1.0, hk)  # compile + autotune outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fn(x, 0.5)
        y28 = fn(x28, 1.0, hk)
    x.copy_(_randn((64, 4096), torch.bfloat16, gen, "cuda"))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, fn(x, 0.5))
    assert torch.equal(y28, fn(x28, 1.0, hk))


@pytest.mark.cuda
def test_public_graph_capture(gen):
    x = _randn((16, 4096), torch.bfloat16, gen, "cuda")
    x12 = _randn((16, 12 * 256), torch.bfloat16, gen, "cuda")
    H.hadamard_transform(x), H.hadamard_transform_12N(x12)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = H.hadamard_transform(x)
        y12 = H.hadamard_transform_12N(x12)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, H.hadamard_transform(x)) and torch.equal(y12, H.hadamard_transform_12N(x12))


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
@pytest.mark.parametrize("n", [2, 16, 1024])
def test_row_pointer_variant(impl, n, gen, device):
    # contiguous rows take the flat 1-d load/store path; rows that are not N apart (last dim
    # contiguous) take the row-pointer path, read in place: both must agree
    base = _randn((9, 2 * n), torch.bfloat16, gen, device)
    x = base[:, n:]
    xr, m, r1, s0, s1 = H._as_rows(x)
    assert xr.data_ptr() == x.data_ptr() and (m, r1, s0) == (9, 1, 2 * n)
    ref = hadamard_transform_ref(x, 0.5)
    out = H._launch(x, 0.5, None, impl)
    assert rel_rms(out, ref) <= _bound(ref, torch.bfloat16, n)
    assert torch.equal(out, KERNELS[impl](x.contiguous(), 0.5))


@pytest.mark.parametrize("impl", ["butterfly", "matmul"])
def test_launch_with_config(impl, gen, device):
    # the seam launches exactly the config it is given, for every config of the kernel's list
    configs = H._BUTTERFLY_CONFIGS if impl == "butterfly" else H._MATMUL_CONFIGS
    x = _randn((37, 256), torch.bfloat16, gen, device)
    x12 = _randn((5, 12 * 16), _dtype(impl), gen, device)
    hk = hadamard_k_matrix(12, device=device)
    ref, ref12 = hadamard_transform_ref(x, 0.5), hadamard_transform_ref(x12, 0.5, k=12)
    want, want12 = KERNELS[impl](x, 0.5), KERNELS[impl](x12, 0.5, hk)
    for config in configs:
        out, out12 = H._launch(x, 0.5, None, impl, config=config), H._launch(x12, 0.5, hk, impl, config=config)
        assert rel_rms(out, ref) <= _bound(ref, torch.bfloat16, 256)
        assert rel_rms(out12, ref12) <= _bound(ref12, x12.dtype, 16, 12)
        if impl == "butterfly":  # the butterfly stages add in the same order whatever the tile (a dot's,
            # and the K-mix reduction over the K axis, may add in another order on a GPU: bound only)
            assert torch.equal(out, want)
    with pytest.raises(ValueError, match="kernel"):
        H._launch(x, 0.5, None, "dense")


def test_traced_calls_run_the_eager_kernel(device, monkeypatch):
    # under torch.compile / autograd, a call that a Gluon kernel takes eagerly goes through the opaque
    # fwht_gluon op (the same kernel, the same bits); every other call through its kernel's triton_op
    calls = []
    for name in list(H._OPS):
        monkeypatch.setitem(H._OPS, name, lambda x, s, hk, name=name: calls.append(name) or torch.zeros_like(x))
    monkeypatch.setattr(H, "gluon_eligible", lambda x, n, rows: rows and n == 64)  # "sm90" for n = 64
    monkeypatch.setattr(H.gluon_kmix, "eligible", lambda x, n, k, p, rows: rows and k == 12)
    x = torch.randn(3, 64, device=device, requires_grad=True)  # autograd records: the traced path
    x12 = torch.randn(2, 48, device=device, requires_grad=True)
    wide = torch.randn(3, 128, device=device, requires_grad=True)[:, :64]  # rows read in place: not Gluon
    hk12 = hadamard_k_matrix(12, device=device)
    H.hadamard_transform(x), H.butterfly_hadamard(x), H.hadamard_transform(x.t().contiguous().t())
    H.hadamard_transform(wide), H.hadamard_transform(x[:, :32].contiguous())
    H.hadamard_transform_12N(x12), H.hadamard_transform_20N(torch.randn(2, 80, device=device, requires_grad=True))
    H.butterfly_hadamard(x12, 1.0, hk12), H.matmul_hadamard(x.bfloat16(), 1.0)
    four = torch.randn(2, 3, 5, 64, device=device, requires_grad=True)[:, :, 1:4]  # copied by _as_rows
    H.hadamard_transform(four)
    assert calls == ["gluon", "gluon", "gluon", "butterfly", "butterfly", "gluon", "butterfly", "butterfly", "matmul",
                     "gluon"]


def test_flat_rows_predicts_as_rows(device):
    # the traced path's prediction (no copy) agrees with what the eager launcher reads
    base = torch.randn(4, 6, 5, 64, device=device)
    for x in (base, base[1], base[:, 2], base[:, :, 1:4], base[..., :32], base[:, 1:4, 2],
              base.transpose(-1, -2), base[0, 0, :1], base[:1, :1, :1], base.view(-1, 64)[::2]):
        xr, m, r1, s0, s1 = H._as_rows(x)
        n = x.shape[-1]
        assert H._flat_rows(x) == (r1 == 1 and (m == 1 or s0 == n)), tuple(x.shape)


def test_eager_skips_custom_op(gen, device, monkeypatch):
    # eager calls launch directly; autograd recording goes through the custom op (backward)
    x = _randn((3, 64), torch.bfloat16, gen, device)
    want = H.hadamard_transform(x, 0.5)
    calls = []
    for name, op in list(H._OPS.items()):
        monkeypatch.setitem(H._OPS, name, lambda *a, op=op: calls.append(1) or op(*a))
    for fn in (lambda t: H.hadamard_transform(t, 0.5), lambda t: H.butterfly_hadamard(t, 0.5),
               lambda t: H.matmul_hadamard(t, 0.5), lambda t: H.hadamard_transform_12N(t[:, :48], 0.5)):
        fn(x)
        with torch.no_grad():
            fn(x.clone().requires_grad_(True))
    assert calls == []
    y = H.hadamard_transform(x.clone().requires_grad_(True), 0.5)
    assert calls == [1] and y.grad_fn is not None
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=0)
