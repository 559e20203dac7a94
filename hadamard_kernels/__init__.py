"""Walsh-Hadamard transforms, the Randomized Hadamard Transform and RHT + amax, in Triton."""

from hadamard_kernels.matrices import sylvester_matrix

# --- Hadamard transforms (butterfly + matmul kernels) -------------------------------------------
from hadamard_kernels.hadamard import (  # noqa: E402
    butterfly_hadamard,
    hadamard_transform,
    hadamard_transform_12N,
    hadamard_transform_20N,
    hadamard_transform_28N,
    hadamard_transform_40N,
    matmul_hadamard,
)
from hadamard_kernels.matrices import hadamard_k_matrix, hadamard_matrix, is_hadamard  # noqa: E402

# --- Randomized Hadamard Transform and RHT + amax ------------------------------------------------
from hadamard_kernels.rht import (  # noqa: E402
    DEFAULT_SIGN_VECTOR,
    get_rht_matrix,
    inverse_rht,
    random_sign_vector,
    rht,
)
from hadamard_kernels.rht_amax import rht_amax  # noqa: E402
