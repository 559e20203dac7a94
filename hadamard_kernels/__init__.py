"""Walsh-Hadamard transforms, the Randomized Hadamard Transform and RHT + amax, in Triton.

Also the library's shared layer, which ``fp8_quant`` and ``attention`` build on: ``runtime``
(interpreter detection, autotune configs, the config seam, device properties, TMA allocator scope),
``interpreter_fixes``, ``triton_helpers`` (shared ``@triton.jit`` helpers) and ``signs`` (the one
sign-vector type and RHT convention).
"""

from hadamard_kernels.hadamard import (
    butterfly_hadamard,
    hadamard_transform,
    hadamard_transform_12N,
    hadamard_transform_20N,
    hadamard_transform_28N,
    hadamard_transform_40N,
    matmul_hadamard,
)
from hadamard_kernels.matrices import hadamard_k_matrix, hadamard_matrix, is_hadamard, sylvester_matrix
from hadamard_kernels.rht import get_rht_matrix, inverse_rht, rht
from hadamard_kernels.rht_amax import rht_amax
from hadamard_kernels.signs import DEFAULT_SIGN_VECTOR, SignVector, as_sign_vector, random_sign_vector

__all__ = [
    "hadamard_transform", "hadamard_transform_12N", "hadamard_transform_20N", "hadamard_transform_28N",
    "hadamard_transform_40N", "butterfly_hadamard", "matmul_hadamard",
    "sylvester_matrix", "hadamard_matrix", "hadamard_k_matrix", "is_hadamard",
    "rht", "inverse_rht", "get_rht_matrix", "rht_amax",
    "SignVector", "as_sign_vector", "DEFAULT_SIGN_VECTOR", "random_sign_vector",
]
