"""Chunked per-head FP8 (e4m3) quantization of Q, K and V with RoPE and Hadamard fused in.

Public API: ``HadamardMode``, ``QuantizedQKV``, ``quantize_qkv``, ``quantize_per_head``,
``dequantize_per_head``. Modules: ``quantize`` (public API, validation, ``QuantSpec``, custom ops),
``kernels`` (the two-pass Triton kernels and their launcher, ``quantize_launch``), ``gluon_kernels``
(the same two passes in Gluon for Hopper, used for the Hadamard variants), ``reference`` (plain
PyTorch references).
"""

from fp8_quant.quantize import (
    HadamardMode,
    QuantizedQKV,
    dequantize_per_head,
    quantize_per_head,
    quantize_qkv,
)

__all__ = ["HadamardMode", "QuantizedQKV", "quantize_qkv", "quantize_per_head", "dequantize_per_head"]
