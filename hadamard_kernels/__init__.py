"""Walsh-Hadamard transforms, the Randomized Hadamard Transform and RHT + amax, in Triton."""

from hadamard_kernels.matrices import sylvester_matrix

# --- Hadamard transforms (butterfly + matmul kernels) -------------------------------------------

# --- Randomized Hadamard Transform and RHT + amax ------------------------------------------------
