"""``hadamard_transform`` and ``hadamard_transform_<K>N`` against fast-hadamard-transform's contract.

The reference here does not use the library's matrices or size rule. It restates what
fast-hadamard-transform (Dao-AILab) computes:
- its H_12 / H_20 / H_28 / H_40 are the +/- strings of its ``csrc/code_gen.py`` (``had_12_paley``,
  ``had_20_will``, ``had_28_will``, ``had_40_tpal``), copied below row by row; the generated
  ``hadamard_mult_thread_K`` computes out[i] = sum_j H_K[i, j] x[j] (row i of the string);
- its kernel reads a row of K * P elements as K chunks of P (element k * P + j is X[k, j]), applies
  H_P (``scipy.linalg.hadamard``) inside each chunk, then H_K across the chunks: out = H_K X H_P,
  i.e. F.linear(x, kron(H_K, H_P));
- its ``csrc/fast_hadamard_transform.cpp`` pads the last dim n to a multiple of 8 (K = 1) or 4K,
  then runs the transform of K * 2^ceil(log2(dim / K)) elements (masked loads past dim read 0) and
  returns the first n outputs.
Outputs are compared in float64 by relative RMS error against one rounding to the output dtype (the
bound of ``test_hadamard.py``); gradients against float64 autograd through the same reference.
"""

import doctest
import math

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

import hadamard_kernels.hadamard as H
import hadamard_kernels.matrices as Mx
from hadamard_kernels.matrices import hadamard_k_matrix
from hadamard_kernels.reference import rel_rms, rounding_bound

HAS_CUDA = torch.cuda.is_available()

HAD_12_PALEY = """
+-++++++++++
--+-+-+-+-+-
+++-++----++
+---+--+-++-
+++++-++----
+-+---+--+-+
++--+++-++--
+--++---+--+
++----+++-++
+--+-++---+-
++++----+++-
+-+--+-++---
"""

HAD_20_WILL = """
+----+----++--++-++-
-+----+---+++---+-++
--+----+---+++-+-+-+
---+----+---+++++-+-
----+----++--++-++-+
-+++++-----+--+++--+
+-+++-+---+-+--+++--
++-++--+---+-+--+++-
+++-+---+---+-+--+++
++++-----++--+-+--++
--++-+-++-+-----++++
---++-+-++-+---+-+++
+---++-+-+--+--++-++
++---++-+----+-+++-+
-++---++-+----+++++-
-+--+--++-+----+----
+-+-----++-+----+---
-+-+-+---+--+----+--
--+-+++------+----+-
+--+--++------+----+
"""

HAD_28_WILL = """
+------++----++-+--+-+--++--
-+-----+++-----+-+--+-+--++-
--+-----+++---+-+-+----+--++
---+-----+++---+-+-+-+--+--+
----+-----+++---+-+-+++--+--
-----+-----++++--+-+--++--+-
------++----++-+--+-+--++--+
--++++-+-------++--+++-+--+-
---++++-+-----+-++--+-+-+--+
+---+++--+----++-++--+-+-+--
++---++---+----++-++--+-+-+-
+++---+----+----++-++--+-+-+
++++--------+-+--++-++--+-+-
-++++--------+++--++--+--+-+
-+-++-++--++--+--------++++-
+-+-++--+--++--+--------++++
-+-+-++--+--++--+----+---+++
+-+-+-++--+--+---+---++---++
++-+-+-++--+------+--+++---+
-++-+-+-++--+------+-++++---
+-++-+---++--+------+-++++--
-++--++-+-++-+++----++------
+-++--++-+-++-+++-----+-----
++-++---+-+-++-+++-----+----
-++-++-+-+-+-+--+++-----+---
--++-++++-+-+----+++-----+--
+--++-+-++-+-+----+++-----+-
++--++-+-++-+-+----++------+
"""

HAD_40_TPAL = """
+-------------------+-------------------
++-++----+-+-++++--+++-++----+-+-++++--+
+++-++----+-+-++++--+++-++----+-+-++++--
+-++-++----+-+-++++-+-++-++----+-+-++++-
+--++-++----+-+-+++++--++-++----+-+-++++
++--++-++----+-+-+++++--++-++----+-+-+++
+++--++-++----+-+-+++++--++-++----+-+-++
++++--++-++----+-+-+++++--++-++----+-+-+
+++++--++-++----+-+-+++++--++-++----+-+-
+-++++--++-++----+-++-++++--++-++----+-+
++-++++--++-++----+-++-++++--++-++----+-
+-+-++++--++-++----++-+-++++--++-++----+
++-+-++++--++-++----++-+-++++--++-++----
+-+-+-++++--++-++---+-+-+-++++--++-++---
+--+-+-++++--++-++--+--+-+-++++--++-++--
+---+-+-++++--++-++-+---+-+-++++--++-++-
+----+-+-++++--++-+++----+-+-++++--++-++
++----+-+-++++--++-+++----+-+-++++--++-+
+++----+-+-++++--++-+++----+-+-++++--++-
+-++----+-+-++++--+++-++----+-+-++++--++
+--------------------+++++++++++++++++++
++-++----+-+-++++--+--+--++++-+-+----++-
+++-++----+-+-++++-----+--++++-+-+----++
+-++-++----+-+-++++--+--+--++++-+-+----+
+--++-++----+-+-++++-++--+--++++-+-+----
++--++-++----+-+-+++--++--+--++++-+-+---
+++--++-++----+-+-++---++--+--++++-+-+--
++++--++-++----+-+-+----++--+--++++-+-+-
+++++--++-++----+-+------++--+--++++-+-+
+-++++--++-++----+-+-+----++--+--++++-+-
++-++++--++-++----+---+----++--+--++++-+
+-+-++++--++-++----+-+-+----++--+--++++-
++-+-++++--++-++------+-+----++--+--++++
+-+-+-++++--++-++----+-+-+----++--+--+++
+--+-+-++++--++-++---++-+-+----++--+--++
+---+-+-++++--++-++--+++-+-+----++--+--+
+----+-+-++++--++-++-++++-+-+----++--+--
++----+-+-++++--++-+--++++-+-+----++--+-
+++----+-+-++++--++----++++-+-+----++--+
+-++----+-+-++++--++-+--++++-+-+----++--
"""


def _signs(text: str) -> torch.Tensor:
    return torch.tensor([[1.0 if c == "+" else -1.0 for c in row] for row in text.split()], dtype=torch.float64)


DAO_H = {12: _signs(HAD_12_PALEY), 20: _signs(HAD_20_WILL), 28: _signs(HAD_28_WILL), 40: _signs(HAD_40_TPAL)}
K_FUNCS = {12: H.hadamard_transform_12N, 20: H.hadamard_transform_20N, 28: H.hadamard_transform_28N,
           40: H.hadamard_transform_40N}
IMPLS = ["butterfly", "matmul"]
# P = 2^m of the K functions' tests: CPU (interpreter) small, GPU up to the largest.
K_P = [4, 32] if not HAS_CUDA else [4, 32, 256, 1024]


def dao_p(n: int, k: int) -> int:
    """The 2^m fast-hadamard-transform launches for a last dim of n (its .cpp: pad to a multiple of 8
    or 4K, log_N = ceil(log2(dim / K)))."""
    mult = 8 if k == 1 else 4 * k
    dim = n if n % mult == 0 else n + mult - n % mult
    return 2 ** math.ceil(math.log2(dim / k))


def dao_ref(x: torch.Tensor, k: int, scale: float, h_k: torch.Tensor = None, p: int = None) -> torch.Tensor:
    """float64 F.linear(pad(x), kron(H_K, H_P))[..., :n] * scale in factored form (H_K X H_P, H_P
    symmetric), H_K Dao's (or ``h_k``), P Dao's (or ``p``). Differentiable in x."""
    n = x.shape[-1]
    p = dao_p(n, k) if p is None else p
    hp = torch.from_numpy(scipy.linalg.hadamard(p)).to(torch.float64)
    xp = F.pad(x.to(torch.float64), (0, k * p - n)).reshape(*x.shape[:-1], k, p)
    if k > 1:
        hk = (DAO_H[k] if h_k is None else h_k.to(torch.float64).cpu()).to(x.device)
        xp = torch.einsum("ij,...jp->...ip", hk, xp)
    return (xp @ hp.to(x.device)).reshape(*x.shape[:-1], k * p)[..., :n] * scale


def _bound(ref: torch.Tensor, dtype: torch.dtype, p: int, k: int = 1) -> float:
    one = rounding_bound(ref, dtype)
    if dtype == torch.float32:  # every addition on an element's path may round once (test_hadamard.py)
        return 1.1 * math.sqrt(1 + math.log2(p) + (k - 1)) * one
    return 1.1 * one


def _randn(shape, dtype, gen, device):
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def refuses_fp32(impl: str, dtype: torch.dtype, device) -> bool:
    """True for the matmul kernel and float32, after checking that matmul_hadamard refuses it
    (ValueError: its fp32 accumulation misses the bound, README): the test has nothing else to run."""
    if impl != "matmul" or dtype != torch.float32:
        return False
    with pytest.raises(ValueError, match="float32"):
        H.matmul_hadamard(torch.ones(3, 48, device=device), 1.0, hadamard_k_matrix(12, device=device))
    return True


def _odd_rows(n: int) -> int:
    return (max(5, 4096 // n) | 1) if not HAS_CUDA else 4097


def _forward_backward(fn, base, view, g, ref_fn):
    """(out, grad, ref_out, ref_grad): fn on x = view(base) (base a leaf that requires grad, so x may
    be a strided view) with out.backward(g); the float64 reference through autograd."""
    base = base.detach().clone().requires_grad_(True)
    out = fn(view(base))
    out.backward(g)
    b64 = base.detach().to(torch.float64).requires_grad_(True)
    ref = ref_fn(view(b64))
    ref.backward(g.to(torch.float64))
    return out.detach(), view(base.grad), ref.detach(), view(b64.grad)


# --- The matrices ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", sorted(DAO_H))
def test_default_matrices_are_daos(k, device):
    h = DAO_H[k]
    assert h.shape == (k, k) and torch.equal(h @ h.T, k * torch.eye(k, dtype=torch.float64))  # the copy
    assert torch.equal(hadamard_k_matrix(k, torch.float64), h)
    # the default of the K function is that matrix: passing it as h_k changes nothing
    x = torch.randn(3, 4 * k, device=device)
    assert torch.equal(K_FUNCS[k](x, 0.5), K_FUNCS[k](x, 0.5, h_k=hadamard_k_matrix(k, device=device)))


def test_reference_is_the_dense_dao_formula():
    # the factored reference equals fast-hadamard-transform's docstring formula on a small size
    for k, n in ((12, 48), (40, 163), (1, 100)):
        x = torch.randn(2, n, dtype=torch.float64)
        p = dao_p(n, k)
        m = torch.from_numpy(scipy.linalg.hadamard(p)).double()
        m = m if k == 1 else torch.kron(DAO_H[k], m)
        want = F.linear(F.pad(x, (0, k * p - n)), m)[..., :n] * 0.3
        torch.testing.assert_close(dao_ref(x, k, 0.3), want, rtol=1e-12, atol=1e-12)


# --- K functions: forward and backward at K * 2^m ------------------------------------------------


@pytest.mark.parametrize("impl", [*IMPLS, pytest.param("gluon", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("k", sorted(DAO_H))
@pytest.mark.parametrize("p", K_P)
def test_k_forward_matches_dao(impl, k, p, float_dtype, gen, device, monkeypatch):
    if impl == "matmul" and H._padded_k(k) * p > H.MATMUL_MAX_ROW:
        pytest.skip("the matmul kernel does not take K = 40, P = 1024 (the public function never picks it)")
    if refuses_fp32(impl, float_dtype, device):
        return
    monkeypatch.setattr(H, "_pick", lambda n, k, dtype: impl)  # the public function's kernel choice
    if impl != "gluon":  # plain Triton, also where the Gluon K-mix kernel would run
        monkeypatch.setattr(H.gluon_kmix, "eligible", lambda *args: False)
    n = k * p
    x = _randn((_odd_rows(n), n), float_dtype, gen, device)
    if impl == "gluon" and not H.gluon_kmix.eligible(x, n, k, p, True):
        pytest.skip("the Gluon K-mix kernel runs bf16 / fp16 on sm90")
    out = K_FUNCS[k](x, 0.125)
    assert out.dtype == float_dtype and out.shape == x.shape
    ref = dao_ref(x, k, 0.125)
    err, bound = rel_rms(out, ref), _bound(ref, float_dtype, p, k)
    assert err <= bound, f"{impl} {k}N n={n} {float_dtype}: rel rms {err:.3g} > {bound:.3g}"
    # the seam with Dao's matrix as h_k computes the same
    assert torch.equal(H._launch(x, 0.125, DAO_H[k].float().to(device), impl), out)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k", sorted(DAO_H))
def test_k_backward_is_the_true_gradient(impl, k, float_dtype, gen, device, monkeypatch):
    if refuses_fp32(impl, float_dtype, device):
        return
    monkeypatch.setattr(H, "_pick", lambda n, k, dtype: impl)
    p = 8  # fast-hadamard-transform launches no kernel at 2^m = 8 (its dispatch tests log_N == 2 twice)
    n = k * p
    x = _randn((3, 5, n), float_dtype, gen, device)
    g = _randn((3, 5, n), float_dtype, gen, device)
    out, grad, ref, ref_grad = _forward_backward(lambda t: K_FUNCS[k](t, 0.25), x, lambda t: t, g,
                                                 lambda t: dao_ref(t, k, 0.25))
    assert rel_rms(out, ref) <= _bound(ref, float_dtype, p, k)
    err, bound = rel_rms(grad, ref_grad), _bound(ref_grad, float_dtype, p, k)
    assert err <= bound, f"{impl} {k}N backward {float_dtype}: rel rms {err:.3g} > {bound:.3g}"
    # fast-hadamard-transform's backward applies the forward to the gradient: right only for a
    # symmetric H_K (its H_12), wrong for H_20, H_28, H_40 (what our docstrings say)
    its_backward = dao_ref(g, k, 0.25)
    if k == 12:
        torch.testing.assert_close(its_backward, ref_grad, rtol=1e-12, atol=1e-9)
    else:
        assert rel_rms(its_backward, ref_grad) > 0.5


@pytest.mark.parametrize("k", [20, 40])
def test_user_h_k_orientation(k, gen, device):
    # a caller's h_k stands where H_K stands: row = vec(h_k X H_P), whatever its symmetry
    hk = DAO_H[k].T.contiguous()  # a Hadamard matrix, not symmetric, not the default
    x32 = _randn((5, k * 16), torch.float32, gen, device)
    for fn, x in ((lambda t: K_FUNCS[k](t, 1.0, h_k=hk.float().to(device)), x32),
                  (lambda t: H.butterfly_hadamard(t, 1.0, hk.float().to(device)), x32),
                  (lambda t: H.matmul_hadamard(t, 1.0, hk.float().to(device)), x32.bfloat16())):
        out = fn(x)
        ref = dao_ref(x, k, 1.0, h_k=hk)
        assert rel_rms(out, ref) <= _bound(ref, x.dtype, 16, k)
        assert rel_rms(out, dao_ref(x, k, 1.0)) > 0.5  # not the default matrix's result


# --- Every n >= 1: zero padding ------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [1, 3, 5, 17, 100, 1000, 3000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_padded_pow2_matches_dao(impl, n, dtype, gen, device, monkeypatch):
    if refuses_fp32(impl, dtype, device):
        return
    monkeypatch.setattr(H, "_pick", lambda n, k, d: impl)
    rows = _odd_rows(n)  # >= 4096 elements: a stable error estimate
    base = _randn((rows, n + 5), dtype, gen, device)
    view = lambda t: t[:, 2:n + 2]  # noqa: E731  rows n + 5 apart, last dim contiguous: read in place
    x = view(base)
    g = _randn((rows, n), dtype, gen, device)
    out, grad, ref, ref_grad = _forward_backward(lambda t: H.hadamard_transform(t, 0.75), base, view, g,
                                                 lambda t: dao_ref(t, 1, 0.75))
    assert out.shape == x.shape and out.dtype == dtype
    p = max(2, 1 << (n - 1).bit_length())  # log2(p) butterfly stages in the fp32 bound
    err, bound = rel_rms(out, ref), _bound(ref, dtype, p)
    g_err, g_bound = rel_rms(grad, ref_grad), _bound(ref_grad, dtype, p)
    assert err <= bound, f"{impl} n={n} forward"
    assert g_err <= g_bound, f"{impl} n={n} backward"
    # the same without autograd (the launcher directly) and for a contiguous copy
    assert torch.equal(H.hadamard_transform(x, 0.75), out)
    assert torch.equal(H.hadamard_transform(x.contiguous(), 0.75), out)


@pytest.mark.parametrize("impl", IMPLS)
def test_n1_multiplies_by_scale(impl, float_dtype, gen, device):
    if refuses_fp32(impl, float_dtype, device):
        return
    x = _randn((9, 1), float_dtype, gen, device)
    want = (x.float() * 0.37).to(float_dtype)
    assert torch.equal(H.hadamard_transform(x, 0.37) if impl == "butterfly" else H.matmul_hadamard(x, 0.37), want)
    assert torch.equal(H.butterfly_hadamard(x[:, None, :], 0.37)[:, 0], want)


def _k_padded_sizes(k: int) -> list[int]:
    # not K * 2^m: below 4K (padded to 4K), K * 3, K * 5 + 1, K * 12 (2^m = 16)
    return [7, 2 * k + 1, 3 * k, 5 * k + 1, 12 * k]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k", sorted(DAO_H))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_padded_k_matches_dao(impl, k, dtype, gen, device, monkeypatch):
    if refuses_fp32(impl, dtype, device):
        return
    monkeypatch.setattr(H, "_pick", lambda n, k, d: impl)
    for n in _k_padded_sizes(k):
        assert Mx.padded_size(n, k) == dao_p(n, k)
        rows = max(3, 4096 // (3 * n)) | 1  # >= 4096 elements: a stable error estimate
        base = _randn((rows, 4, n + 3), dtype, gen, device)
        view = lambda t: t[:, 1:4, 1:n + 1]  # noqa: E731  3-d, leading dims that do not collapse
        g = _randn((rows, 3, n), dtype, gen, device)
        out, grad, ref, ref_grad = _forward_backward(lambda t: K_FUNCS[k](t, 0.5), base, view, g,
                                                     lambda t: dao_ref(t, k, 0.5))
        p = dao_p(n, k)
        assert rel_rms(out, ref) <= _bound(ref, dtype, p, k), f"{impl} {k}N n={n} forward"
        assert rel_rms(grad, ref_grad) <= _bound(ref_grad, dtype, p, k), f"{impl} {k}N n={n} backward"


def test_padded_size_is_daos_rule():
    # every n up to the largest K function: the library pads to fast-hadamard-transform's size except
    # at n = K and 2K, which it transforms unpadded (there fast-hadamard-transform's map, padded to
    # 4K and cut, is not orthogonal: its issue #9)
    for k in sorted(DAO_H):
        for n in range(1, k * 1024 + 1):
            want = n // k if n in (k, 2 * k) else dao_p(n, k)
            assert Mx.padded_size(n, k) == want, (k, n)
    # K = 1: any power of two >= n gives the same first n outputs (H_2^a is the leading block of
    # H_2^b); the library's is the smallest
    x = torch.randn(3, 5, dtype=torch.float64)
    for p in (8, 16, 64):
        torch.testing.assert_close(dao_ref(x, 1, 1.0, p=p), dao_ref(x, 1, 1.0, p=8), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", sorted(DAO_H))
def test_k_and_2k_are_hadamard_transforms(k, device):
    # documented difference: n = K, 2K give the Hadamard transform kron(H_K, H_{1 or 2}) (orthogonal);
    # fast-hadamard-transform zero-pads them to 4K and cuts: another map, not orthogonal at n = K
    for n in (k, 2 * k):
        eye = torch.eye(n, device=device)
        m = K_FUNCS[k](eye).double()  # row i: the transform of e_i
        assert torch.equal(m @ m.T, n * torch.eye(n, dtype=torch.float64, device=device))
        want = torch.kron(DAO_H[k], torch.from_numpy(scipy.linalg.hadamard(n // k)).double()).to(device)
        assert torch.equal(m, want.T)  # out = F.linear(x, M): e_i -> column i of M
        theirs = dao_ref(eye.double(), k, 1.0)
        assert not torch.equal(theirs, m)
        if n == k:
            assert not torch.equal(theirs @ theirs.T, n * torch.eye(n, dtype=torch.float64, device=device))


# --- Validation and host path -------------------------------------------------------------------


def test_h_k_on_another_device_is_refused(device):
    x = torch.randn(2, 48, device=device)
    hk = hadamard_k_matrix(12, device="meta")
    for fn in (H.butterfly_hadamard, H.matmul_hadamard, H.hadamard_transform_12N):
        with pytest.raises(ValueError, match="h_k is on meta"):
            fn(x, 1.0, hk)
    for k, fn in K_FUNCS.items():
        with pytest.raises(ValueError, match="h_k is on meta"):
            fn(torch.randn(2, 4 * k, device=device), 1.0, h_k=hadamard_k_matrix(k, device="meta"))


def test_scale_must_be_a_number(device):
    x = torch.randn(2, 48, device=device)
    for fn in (H.hadamard_transform, H.butterfly_hadamard, H.matmul_hadamard, *K_FUNCS.values()):
        with pytest.raises(TypeError, match="scale"):
            fn(x, "a")
        with pytest.raises(TypeError, match="scale"):
            fn(x, None)
    want = H.hadamard_transform(x, 2.0)
    import numpy as np

    for scale in (2, np.float32(2.0), torch.tensor(2.0)):
        assert torch.equal(H.hadamard_transform(x, scale), want)


def test_host_path_no_view_no_cdiv(device, monkeypatch):
    # a contiguous input reaches the kernel as it is (no view), and the grid is plain int arithmetic
    import triton

    for x in (torch.randn(5, 64, device=device), torch.randn(3, 5, 48, device=device)):
        xr, m, r1, s0, s1 = H._as_rows(x)
        assert xr is x and (m, r1, s0, s1) == (x.numel() // x.shape[-1], 1, x.shape[-1], 0)
    grids = []
    real_launch = H.launch

    def spy(kernel, grid, args, consts, config=None):
        grids.append(grid)
        return real_launch(kernel, grid, args, consts, config)

    monkeypatch.setattr(H, "launch", spy)
    x = torch.randn(37, 100, device=device)
    out = H.hadamard_transform(x)
    def no_cdiv(*args):
        raise AssertionError("the grid called triton.cdiv")

    monkeypatch.setattr(triton, "cdiv", no_cdiv)
    assert grids[0]({"TILE": 4096}) == (-(-37 // (4096 // 128)),)  # 128: n = 100 padded
    assert grids[0]({"TILE": 64}) == (37,)  # at least one row per program
    assert torch.equal(out, H.hadamard_transform(x))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the examples use CPU tensors, which run only under the interpreter: the CPU suite runs them")
def test_docstring_examples_run():
    # every example of the two modules, private helpers' included (``padded_size``), with the
    # package's convention: ``import torch`` and ``from hadamard_kernels import *``
    import hadamard_kernels

    names = {name: getattr(hadamard_kernels, name) for name in hadamard_kernels.__all__}
    for module in (H, Mx):
        result = doctest.testmod(module, extraglobs={"torch": torch, **names}, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, (module.__name__, result)
