"""Plain float64 PyTorch references for the package's ops (tests and benchmarks use them; the library
never falls back to them)."""

from __future__ import annotations

from typing import Optional

import torch

from hadamard_kernels.matrices import hadamard_k_matrix, hadamard_matrix, padded_size, split_size
from hadamard_kernels.signs import as_sign_vector, rht_matrix_f64

# --- Hadamard transform references ---


def hadamard_transform_ref(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None,
                           k: Optional[int] = None) -> torch.Tensor:
    """F.linear(x, M) * scale in float64, M = hadamard_matrix(n, k=k, h_k=h_k) (Sylvester for powers
    of two, kron(H_K, H_P) for n = K * P), computed in factored form so n = 32768 needs no dense
    matrix: a row is a K x P matrix X and the result vec(H_K X H_P); H_P by radix-2 steps. Other n:
    x zero-padded to K * padded_size(n, K) (``k=None``: K = 1 unless n = K * 2^m) and the first n
    outputs returned. Returns float64."""
    n = x.shape[-1]
    if h_k is not None:
        k = int(h_k.shape[0])
    if k is None:
        try:
            k = split_size(n)[0]
        except ValueError:
            k = 1
    p = padded_size(n, k)
    lead = x.shape[:-1]
    y = torch.nn.functional.pad(x.to(torch.float64), (0, k * p - n)).reshape(*lead, k, p)
    h = 1
    while h < p:  # y @ H_P: pair element j with j + h inside each block of 2h
        y = y.reshape(*lead, k, p // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack([a + b, a - b], dim=-2).reshape(*lead, k, p)
        h *= 2
    if k > 1:
        hk = hadamard_k_matrix(k, torch.float64, x.device) if h_k is None else h_k.to(x.device, torch.float64)
        y = torch.einsum("ij,...jp->...ip", hk, y)  # H_K X
    return y.reshape(*lead, k * p)[..., :n] * scale


def hadamard_transform_dense_ref(x: torch.Tensor, scale: float = 1.0, h_k: Optional[torch.Tensor] = None,
                                 k: Optional[int] = None) -> torch.Tensor:
    """The same as a dense float64 F.linear(x, hadamard_matrix(n)) * scale (n = K * 2^m, small n only)."""
    m = hadamard_matrix(x.shape[-1], torch.float64, x.device, k=k, h_k=h_k)
    return (x.to(torch.float64) @ m.T) * scale


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_2 / ||ref||_2 over all elements, in float64."""
    ref = ref.to(torch.float64)
    return float((out.to(torch.float64) - ref).norm() / ref.norm().clamp_min(1e-300))


def rounding_bound(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """The relative RMS error of rounding the exact result ``ref`` once to ``dtype``."""
    return rel_rms(ref.to(dtype), ref)


# --- RHT references ---

def rht_ref(x: torch.Tensor, sign_vector, hadamard_dimension: int = 16, axis: int = -1,
            inverse: bool = False) -> torch.Tensor:
    """Float64 RHT of each block of d elements along ``axis``: block @ diag(s) H_d / sqrt(d)
    (inverse: block @ H_d diag(s) / sqrt(d)). ``sign_vector``: SignVector, tensor, list or tuple.
    Returns float64."""
    d = hadamard_dimension
    r = rht_matrix_f64(as_sign_vector(sign_vector, d))
    if inverse:
        r = r.t()
    xm = x.to(torch.float64).movedim(axis, -1)
    shape = xm.shape
    y = xm.reshape(-1, d) @ r.to(xm.device)
    return y.reshape(shape).movedim(-1, axis)


def _rht_matrix_in(sign_vector, d: int, x: torch.Tensor) -> torch.Tensor:
    # == hadamard_kernels.get_rht_matrix(s, x.device, x.dtype, d): float64 rounded once to x's dtype
    return rht_matrix_f64(as_sign_vector(sign_vector, d)).to(device=x.device, dtype=x.dtype)


def rht_amax_contract(x: torch.Tensor, sign_vector, hadamard_dimension: int = 16, axis: int = 0):
    """The peer kernel's contract for a 2-D (M, N) tensor, in torch: blocks of d consecutive rows of
    each column (axis=0) or of each row (axis=1), times the RHT matrix in x's dtype (matmul in x's
    dtype, fp32 accumulation), rounded to x's dtype, |.|, max. Returns (rht_amax, amax) as float32."""
    d = hadamard_dimension
    m, n = x.shape
    xt = x.t() if axis % 2 == 0 else x
    r = _rht_matrix_in(sign_vector, d, x)
    y = xt.reshape(n * m // d, d) @ r
    return y.to(x.dtype).abs().max().float(), x.abs().max().float()


def rht_amax_exact(x: torch.Tensor, sign_vector, hadamard_dimension: int = 16, axis: int = 0):
    """Same as ``rht_amax_contract`` with the products summed exactly (float64) before the one
    rounding to x's dtype: equal to the contract unless fp32 accumulation rounding crosses a
    rounding boundary of x's dtype."""
    d = hadamard_dimension
    m, n = x.shape
    xt = (x.t() if axis % 2 == 0 else x).to(torch.float64)
    r = _rht_matrix_in(sign_vector, d, x).to(torch.float64)
    y = xt.reshape(n * m // d, d) @ r
    return y.to(x.dtype).abs().max().float(), x.abs().max().float()
