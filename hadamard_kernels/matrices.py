"""Hadamard matrices the kernels implement (built once, cached, handed out as fresh tensors), and the
size rule of the transforms (``padded_size``: which K * 2^m a last dim of n elements is padded to)."""

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
# H_K are fast-hadamard-transform's (Dao-AILab, csrc/code_gen.py, the matrices its generated
# fast_hadamard_transform_special.h multiplies by), copied row by row ('+' = 1, '-' = -1):
# - H_12: Paley construction II with q = 5 (``had_12_paley``; symmetric);
# - H_20, H_28: Williamson-type (``had_20_will``, ``had_28_will``, from Sloane's library; not symmetric);
# - H_40: ``had_40_tpal`` (the transpose of H_2 (x) Paley I(q = 19); not symmetric).
# The transforms compute, for a row of n = K * 2^m elements read as a K x 2^m matrix X (row-major:
# element k * 2^m + j is X[k, j]), Y = H_K X H_{2^m}: out = x @ kron(H_K, H_{2^m}).T =
# F.linear(x, kron(H_K, H_{2^m})), as fast-hadamard-transform does. Any other Hadamard matrix of the
# same order can be passed as ``h_k``; it is applied the same way (h_k X H_{2^m}).

HADAMARD_K = (12, 20, 28, 40)

_DAO_K = {
    12: """
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
""",
    20: """
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
""",
    28: """
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
""",
    40: """
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
""",
}


def _from_signs(rows: str) -> torch.Tensor:
    return torch.tensor([[1.0 if c == "+" else -1.0 for c in row] for row in rows.split()], dtype=torch.float64)


@functools.lru_cache(maxsize=8)
def _hadamard_k_f64(k: int) -> torch.Tensor:
    if k == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if k not in _DAO_K:
        raise ValueError(f"no built-in Hadamard matrix of order K={k}; supported K: {HADAMARD_K}")
    return _from_signs(_DAO_K[k])


def hadamard_k_matrix(k: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """fast-hadamard-transform's K x K Hadamard matrix H_K for K in {12, 20, 28, 40} (see the comment
    above), the default of ``hadamard_transform_<K>N``: passing it as ``h_k`` changes nothing. A fresh
    tensor on every call.

    >>> hadamard_k_matrix(12)[0, :4].tolist()
    [1.0, -1.0, 1.0, 1.0]
    """
    return _hadamard_k_f64(k).to(dtype=dtype, device=device, copy=True)


def is_hadamard(h: torch.Tensor) -> bool:
    """True when ``h`` is square with entries +-1 and h @ h.T == K * I (exactly, in float64).
    TypeError for anything but a tensor (convert a list with ``torch.tensor``).

    >>> is_hadamard(sylvester_matrix(8)), is_hadamard(hadamard_k_matrix(12)), is_hadamard(torch.ones(2, 2))
    (True, True, False)
    """
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


# fast-hadamard-transform pads a K-function input to a multiple of 4K, then to K * 2^ceil(log2(dim / K)):
# a padded K * 2^m always has 2^m >= 4.
MIN_PADDED_P_K = 4


def padded_size(n: int, k: int = 1) -> int:
    """P = 2^m such that the transform of a last dim of n elements with a K x K matrix (K = 1: the
    Sylvester transform alone) works on K * P elements: P = n / K when n = K * 2^m (no padding, n >= 2
    for K = 1); otherwise x is zero-padded to K * P and the first n outputs are returned, with
    K = 1: P the next power of two (2 for n = 1: H_2 (x, 0) = (x, x), so n = 1 multiplies by scale);
    K > 1: P the smallest power of two >= 4 with K * P >= n (fast-hadamard-transform's rule).

    >>> padded_size(1000), padded_size(12 * 8, 12), padded_size(100, 12), padded_size(13, 12)
    (1024, 8, 16, 4)
    """
    if k == 1:
        return 2 if n <= 2 else 1 << (n - 1).bit_length()
    if n % k == 0 and is_power_of_two(n // k):
        return n // k
    return max(MIN_PADDED_P_K, 1 << (-(-n // k) - 1).bit_length())


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device=None, *, k: int | None = None,
                    h_k: torch.Tensor | None = None) -> torch.Tensor:
    """The n x n matrix M of the transform: out = F.linear(x, M) * scale = (x @ M.T) * scale (the
    form of fast-hadamard-transform's docstring); for powers of two M is symmetric and x @ M the same.

    Powers of two: the Sylvester matrix. n = K * 2^m: torch.kron(H_K, H_{2^m}) with the default H_K
    (``hadamard_k_matrix``) or the user's ``h_k``. ``k`` picks K where n is ambiguous (n = 40 * 2^m
    is 20 * 2^(m+1) by default; pass k=40 for the H_40 variant). Sizes that the transforms pad
    (``padded_size``): out = F.linear(pad(x), hadamard_matrix(K * P))[..., :n] * scale.

    >>> hadamard_matrix(4)[1].tolist()
    [1.0, -1.0, 1.0, -1.0]
    >>> x = torch.randn(2, 48)
    >>> torch.allclose(hadamard_transform_12N(x), x @ hadamard_matrix(48, k=12).T, atol=1e-4)
    True
    """
    if h_k is not None:
        k = int(h_k.shape[0])
    k, p = split_size(n, k)
    hk = _hadamard_k_f64(k) if h_k is None else h_k.detach().to("cpu", torch.float64)
    return torch.kron(hk, _sylvester_f64(p)).to(dtype=dtype, device=device)
