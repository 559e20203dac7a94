"""The matrices the kernels implement: Sylvester order, K x K Hadamard matrices, Kronecker layout."""

import pytest
import scipy.linalg
import torch

from hadamard_kernels.matrices import (
    HADAMARD_K,
    hadamard_k_matrix,
    hadamard_matrix,
    is_hadamard,
    split_size,
    sylvester_matrix,
)


@pytest.mark.parametrize("n", [1, 2, 4, 64, 1024])
def test_sylvester_matches_scipy(n):
    assert torch.equal(sylvester_matrix(n, torch.float64), torch.from_numpy(scipy.linalg.hadamard(n)).double())


@pytest.mark.parametrize("k", HADAMARD_K)
def test_hadamard_k_is_hadamard(k):
    h = hadamard_k_matrix(k, torch.float64)
    assert h.shape == (k, k)
    assert bool(((h == 1) | (h == -1)).all())
    assert torch.equal(h @ h.T, k * torch.eye(k, dtype=torch.float64))


@pytest.mark.parametrize("k", HADAMARD_K)
@pytest.mark.parametrize("p", [1, 2, 16, 64])
def test_kron_matrices_are_hadamard(k, p):
    n = k * p
    m = hadamard_matrix(n, torch.float64, k=k)
    assert bool(((m == 1) | (m == -1)).all())
    assert torch.equal(m @ m.T, n * torch.eye(n, dtype=torch.float64))
    assert torch.equal(m, torch.kron(hadamard_k_matrix(k, torch.float64), sylvester_matrix(p, torch.float64)))


def test_default_h_k_symmetry():
    # fast-hadamard-transform's H_12 (Paley II, q = 5) is symmetric; its H_20, H_28, H_40 are not, so
    # the K functions' backward (the transform with H_K^T) differs from the forward for those
    assert torch.equal(hadamard_k_matrix(12), hadamard_k_matrix(12).T)
    for k in (20, 28, 40):
        assert not torch.equal(hadamard_k_matrix(k), hadamard_k_matrix(k).T)


def test_split_size_and_ambiguity():
    assert split_size(1024) == (1, 1024)
    assert split_size(12 * 8) == (12, 8)
    assert split_size(28 * 1024) == (28, 1024)
    assert split_size(40 * 4) == (20, 8)  # 40 * 2^m is 20 * 2^(m+1) unless k=40 is asked
    assert split_size(40 * 4, 40) == (40, 4)
    for bad in (0, 3, 24 * 3, 36):
        with pytest.raises(ValueError):
            split_size(bad)
    with pytest.raises(ValueError):
        split_size(96, 20)


def test_is_hadamard_rejects():
    h = hadamard_k_matrix(12).clone()
    assert is_hadamard(h)
    h[3, 4] = -h[3, 4]
    assert not is_hadamard(h)
    assert not is_hadamard(torch.ones(3, 4))
    assert not is_hadamard(2 * hadamard_k_matrix(12))


def test_user_hk_in_hadamard_matrix():
    hk = -hadamard_k_matrix(12, torch.float64).flip(0)
    assert torch.equal(hadamard_matrix(48, torch.float64, h_k=hk), torch.kron(hk, sylvester_matrix(4, torch.float64)))


@pytest.mark.parametrize("n,k", [(2, None), (256, None), (48, None), (160, 40), (28 * 32, None)])
def test_factored_reference_matches_dense(n, k):
    from hadamard_kernels.reference import hadamard_transform_dense_ref, hadamard_transform_ref

    x = torch.randn(3, 2, n, dtype=torch.float64)
    torch.testing.assert_close(hadamard_transform_ref(x, 0.7, k=k), hadamard_transform_dense_ref(x, 0.7, k=k),
                               rtol=1e-12, atol=1e-10)
    hk = -hadamard_k_matrix(12, torch.float64).flip(1)
    y = torch.randn(2, 12 * 8, dtype=torch.float64)
    torch.testing.assert_close(hadamard_transform_ref(y, h_k=hk), hadamard_transform_dense_ref(y, h_k=hk))


def test_matrices_are_fresh_and_large_ones_not_held():
    """Callers get their own tensor (an in-place change never reaches the cache) and matrices past
    _CACHE_MAX_N are not kept alive by a cache (8 GiB at 32768 in float64 before)."""
    from hadamard_kernels import matrices as Mx

    a = sylvester_matrix(8, torch.float64)
    a.mul_(4)
    assert sylvester_matrix(8, torch.float64).abs().max().item() == 1.0
    k = hadamard_k_matrix(12, torch.float64)
    k.zero_()
    assert hadamard_k_matrix(12, torch.float64).abs().min().item() == 1.0
    before = Mx._sylvester_small.cache_info().currsize
    big = sylvester_matrix(2 * Mx._CACHE_MAX_N, torch.float32)
    assert big.shape == (2 * Mx._CACHE_MAX_N,) * 2
    assert Mx._sylvester_small.cache_info().currsize == before
    assert Mx._sylvester_small.cache_info().maxsize is not None


def test_is_hadamard_refuses_non_tensors():
    with pytest.raises(TypeError, match="torch.Tensor"):
        is_hadamard([[1, 1], [1, -1]])


def test_padded_size():
    from hadamard_kernels.matrices import padded_size

    # K = 1: the next power of two, at least 2 (n = 1 is H_2 on (x, 0))
    assert [padded_size(n) for n in (1, 2, 3, 4, 5, 17, 100, 1000, 1024, 3000)] == \
        [2, 2, 4, 4, 8, 32, 128, 1024, 1024, 4096]
    # K > 1: n = K * 2^m unpadded (2^m = 1, 2 included); otherwise the smallest K * 2^m, 2^m >= 4
    assert [padded_size(n, 12) for n in (12, 24, 48, 96, 1, 13, 36, 49, 60, 100, 144, 12 * 1000)] == \
        [1, 2, 4, 8, 4, 4, 4, 8, 8, 16, 16, 1024]
    for k in HADAMARD_K:
        for n in range(1, 4 * k + 50):
            p = padded_size(n, k)
            assert k * p >= n and (p & (p - 1)) == 0
