"""Arguments of the Hadamard transforms' public functions (``hadamard``): the checks (each raises a
``TypeError`` / ``ValueError`` that names the function and the problem, before any launch) and the
rows view the kernels read (``as_rows``; ``flat_rows`` predicts it without copying)."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import torch

from hadamard_kernels.matrices import hadamard_k_matrix, is_hadamard, padded_size

MAX_POW2 = 32768  # largest power-of-two n
MAX_P_FOR_K = 1024  # n = K * 2^m with 2^m <= 1024


def check_x(x: torch.Tensor, name: str, dtypes: tuple) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: dtype {x.dtype} not supported ({names}); x.shape={tuple(x.shape)}")
    if x.dim() == 0:
        raise ValueError(f"{name}: x must have at least one dim, got a scalar")


def as_scale(scale, name: str) -> float:
    if type(scale) in (float, int) or isinstance(scale, numbers.Real) or (isinstance(scale, torch.Tensor) and scale.numel() == 1):
        return float(scale)
    raise TypeError(f"{name}: scale must be a real number, got {type(scale).__name__} {scale!r}")


def check_hk(h_k, k: Optional[int], device: torch.device, name: str) -> int:
    """K of a square K x K ``h_k`` on ``device`` (of order ``k`` when given); entries are not checked."""
    if not isinstance(h_k, torch.Tensor):
        raise TypeError(f"{name}: h_k must be a tensor, got {type(h_k).__name__}")
    if h_k.dim() != 2 or h_k.shape[0] != h_k.shape[1] or (k is not None and h_k.shape[0] != k):
        want = "a square K x K matrix" if k is None else f"of shape ({k}, {k})"
        raise ValueError(f"{name}: h_k must be {want}, got shape {tuple(h_k.shape)}")
    if h_k.shape[0] < 2:
        raise ValueError(f"{name}: h_k must be K x K with K >= 2, got shape {tuple(h_k.shape)} (for K = 1 "
                         f"pass h_k=None and its sign in scale)")
    if h_k.device != device:
        raise ValueError(f"{name}: h_k is on {h_k.device}, x on {device}; move h_k to x's device")
    return int(h_k.shape[0])


def check_size(n: int, k: int, name: str) -> int:
    """P of the last dim n (``padded_size``), validated against the kernels' largest sizes."""
    p = padded_size(n, k)
    if p > (MAX_POW2 if k == 1 else MAX_P_FOR_K):
        top = MAX_POW2 if k == 1 else f"{k} * {MAX_P_FOR_K}"
        raise ValueError(f"{name}: last dim n={n} is larger than the largest transform, {top}")
    return p


# Under torch.compile the graph rebuilds H_K from this cache on every call (benchmarks/NOTES.md).
@functools.lru_cache(maxsize=16)
def default_hk(k: int, device: torch.device) -> torch.Tensor:
    return hadamard_k_matrix(k, torch.float32, device)


def resolve_hk(k: int, h_k: Optional[torch.Tensor], device: torch.device, name: str) -> torch.Tensor:
    """The fp32 contiguous H_K of a call: the library's (cached) for None, else ``h_k`` validated."""
    if h_k is None:
        return default_hk(k, torch.device(device))
    check_hk(h_k, k, device, name)
    if not is_hadamard(h_k):  # host check (one sync): entries +-1 and H H^T = K I
        raise ValueError(f"{name}: h_k is not a Hadamard matrix (entries +-1, h_k @ h_k.T == {k} * I)")
    return h_k.to(dtype=torch.float32).contiguous()


def as_rows(x: torch.Tensor):
    """(tensor, M, R1, stride0, stride1): the rows of x for the kernels. A contiguous x as it is (M =
    numel / n rows, n apart: no view); with a contiguous last dim, in place where the leading dims
    collapse into at most two strided dims; otherwise one copy."""
    n = x.shape[-1]
    if not x.is_contiguous():
        if x.stride(-1) == 1:
            m = math.prod(x.shape[:-1])
            try:
                x2 = x.view(m, n)
                return x2, m, 1, x2.stride(0), 0
            except RuntimeError:
                if x.dim() == 3:
                    return x, m, x.shape[1], x.stride(0), x.stride(1)
        x = x.contiguous()
    return x, x.numel() // n, 1, n, 0


def flat_rows(x: torch.Tensor) -> bool:
    """``as_rows`` hands the kernels contiguous rows, n apart (x itself, a view or its copy): predicted
    without the copy (a traced call decides before any data exists)."""
    if x.is_contiguous() or x.stride(-1) != 1:
        return True  # x as it is, or copied
    try:
        x2 = x.view(math.prod(x.shape[:-1]), x.shape[-1])
    except RuntimeError:
        return x.dim() != 3  # 3-d: read in place, strided; otherwise copied
    return x2.shape[0] == 1 or x2.stride(0) == x.shape[-1]
