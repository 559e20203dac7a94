"""Hadamard matrices the kernels implement (built once, cached)."""

from __future__ import annotations

import functools

import torch


def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


# Matrices up to this order are cached (float64: 8 MiB at 1024); larger ones are built on every call
# and never held (a cached 32768^2 float64 matrix would keep 8 GiB alive).
_CACHE_MAX_N = 1024


def _build_sylvester_f64(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.lru_cache(maxsize=16)
def _sylvester_small(n: int) -> torch.Tensor:
    return _build_sylvester_f64(n)


def _sylvester_f64(n: int) -> torch.Tensor:
    """Read-only inside the library: the cached tensor for small n."""
    return _sylvester_small(n) if n <= _CACHE_MAX_N else _build_sylvester_f64(n)


def sylvester_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The unnormalized n x n Sylvester Hadamard matrix (``scipy.linalg.hadamard`` order),
    n a power of two. Entry (i, j) = (-1) ** popcount(i & j). A fresh tensor on every call.

    >>> sylvester_matrix(2).tolist()
    [[1.0, 1.0], [1.0, -1.0]]
    """
    if not is_power_of_two(n):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of two only, got n={n}")
    return _sylvester_f64(n).to(dtype=dtype, device=device, copy=True)


# --- Hadamard matrices of order K in {12, 20, 28, 40} (for n = K * 2^m) ---------------------------
#
# Which H_K (documented choice; any other Hadamard matrix of the same order can be passed as ``h_k``):
# - H_12: Paley construction I with q = 11 (q = 3 mod 4): H = I + S, S = [[0, 1^T], [-1, Q]], Q the
#   Jacobsthal matrix Q[i, j] = chi(j - i) of GF(q) (chi the quadratic character).
# - H_20: Paley construction I with q = 19.
# - H_28: Paley construction II with q = 13 (q = 1 mod 4): the symmetric conference matrix
#   C = [[0, 1^T], [1, Q]] with 0 -> [[1, -1], [-1, -1]] and +-1 -> +-[[1, 1], [1, -1]].
# - H_40: H_2 (x) H_20 (torch.kron of the 2x2 Sylvester matrix and H_20 above).
# For n = K * 2^m the kernels implement M = H_K (x) H_{2^m} = torch.kron(H_K, H_{2^m}): element
# k * 2^m + j of a row is entry (k, j) of a K x 2^m matrix X, and x @ M = vec(H_K^T X H_{2^m}).

HADAMARD_K = (12, 20, 28, 40)


def _jacobsthal(q: int) -> torch.Tensor:
    squares = {(i * i) % q for i in range(1, q)}
    chi = [0] + [1 if a in squares else -1 for a in range(1, q)]
    return torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)


def _paley_1(q: int) -> torch.Tensor:
    n = q + 1
    s = torch.zeros(n, n, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return torch.eye(n, dtype=torch.float64) + s


def _paley_2(q: int) -> torch.Tensor:
    n = q + 1
    c = torch.zeros(n, n, dtype=torch.float64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    h = torch.kron(c, one)
    for i in range(n):
        h[2 * i:2 * i + 2, 2 * i:2 * i + 2] = zero
    return h


@functools.lru_cache(maxsize=None)
def _hadamard_k_f64(k: int) -> torch.Tensor:
    if k == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if k == 12:
        return _paley_1(11)
    if k == 20:
        return _paley_1(19)
    if k == 28:
        return _paley_2(13)
    if k == 40:
        return torch.kron(_sylvester_f64(2), _paley_1(19))
    raise ValueError(f"no built-in Hadamard matrix of order K={k}; supported K: {HADAMARD_K}")


def hadamard_k_matrix(k: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The documented K x K Hadamard matrix H_K for K in {12, 20, 28, 40} (see the module comment)."""
    return _hadamard_k_f64(k).to(dtype=dtype, device=device, copy=True)


def is_hadamard(h: torch.Tensor) -> bool:
    """True when ``h`` is square with entries +-1 and h @ h.T == K * I (exactly, in float64).
    TypeError for anything but a tensor (convert a list with ``torch.tensor``)."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"is_hadamard takes a torch.Tensor, got {type(h).__name__}")
    if h.dim() != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
        return False
    h64 = h.detach().to(device="cpu", dtype=torch.float64)
    if not bool(((h64 == 1) | (h64 == -1)).all()):
        return False
    k = h64.shape[0]
    return bool(torch.equal(h64 @ h64.T, k * torch.eye(k, dtype=torch.float64)))


def split_size(n: int, k: int | None = None) -> tuple[int, int]:
    """(K, 2^m) with n = K * 2^m. ``k=None``: K = 1 for powers of two, else the K in {12, 20, 28}
    whose quotient is a power of two (40 * 2^m = 20 * 2^(m+1): order 40 only when asked, k=40)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"Hadamard size must be a positive int, got n={n!r}")
    if k is None:
        if is_power_of_two(n):
            return 1, n
        for cand in (12, 20, 28):
            if n % cand == 0 and is_power_of_two(n // cand):
                return cand, n // cand
        raise ValueError(f"no Hadamard transform of size n={n}: need 2^m or K * 2^m with K in {HADAMARD_K}")
    if n % k != 0 or not is_power_of_two(n // k):
        raise ValueError(f"n={n} is not K * 2^m for K={k}")
    return k, n // k


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device=None, *, k: int | None = None,
                    h_k: torch.Tensor | None = None) -> torch.Tensor:
    """The n x n matrix M the kernels implement: out = (x @ M) * scale.

    Powers of two: the Sylvester matrix. n = K * 2^m: torch.kron(H_K, H_{2^m}) with the documented
    H_K (``hadamard_k_matrix``) or the user's ``h_k``. ``k`` picks K where n is ambiguous (n = 40 * 2^m
    is 20 * 2^(m+1) by default; pass k=40 for the H_40 variant)."""
    if h_k is not None:
        k = int(h_k.shape[0])
    k, p = split_size(n, k)
    hk = _hadamard_k_f64(k) if h_k is None else h_k.detach().to("cpu", torch.float64)
    return torch.kron(hk, _sylvester_f64(p)).to(dtype=dtype, device=device)
