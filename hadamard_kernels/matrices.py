"""Hadamard matrices the kernels implement (built once, cached)."""

from __future__ import annotations

import functools

import torch


def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


@functools.lru_cache(maxsize=None)
def _sylvester_f64(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def sylvester_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The unnormalized n x n Sylvester Hadamard matrix (``scipy.linalg.hadamard`` order),
    n a power of two. Entry (i, j) = (-1) ** popcount(i & j)."""
    if not is_power_of_two(n):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of two only, got n={n}")
    return _sylvester_f64(n).to(dtype=dtype, device=device)
