"""FP8 attention over FlashAttention-3 / FlashAttention-4 or the library's own Triton kernel (FP8_TRITON,
with masks), exact K/V smoothing, and a module wrapper for models.

Public API: ``AttentionBackend``, ``HadamardMode`` (from ``fp8_quant``), ``fp8_sdpa``, ``fp8_rope_sdpa``,
``fp8_fa3_sdpa``, ``fp8_fa3_rope_sdpa``, ``fp8_fa4_sdpa``, ``fp8_fa4_rope_sdpa``,
``apply_low_precision_attention`` (returns a ``LowPrecisionAttention`` module). Plain float64
references live in ``attention.reference``.
"""

from attention.backends import AttentionBackend
from attention.sdpa import (
    fp8_fa3_rope_sdpa,
    fp8_fa3_sdpa,
    fp8_fa4_rope_sdpa,
    fp8_fa4_sdpa,
    fp8_rope_sdpa,
    fp8_sdpa,
)
from attention.wrapper import LowPrecisionAttention, apply_low_precision_attention
from fp8_quant import HadamardMode

__all__ = [
    "AttentionBackend", "HadamardMode", "fp8_sdpa", "fp8_rope_sdpa", "fp8_fa3_sdpa", "fp8_fa3_rope_sdpa",
    "fp8_fa4_sdpa", "fp8_fa4_rope_sdpa", "apply_low_precision_attention", "LowPrecisionAttention",
]
