"""Chunked per-head FP8 (e4m3) quantization of Q, K and V with RoPE and Hadamard fused in.

Public API: ``HadamardMode``, ``QuantizedQKV``, ``quantize_qkv``, ``quantize_per_head``,
``dequantize_per_head``. Plain PyTorch references live in ``fp8_quant.reference``.
"""

from fp8_quant.quantize import (
    HadamardMode,
    QuantizedQKV,
    dequantize_per_head,
    quantize_per_head,
    quantize_qkv,
)

__all__ = ["HadamardMode", "QuantizedQKV", "quantize_qkv", "quantize_per_head", "dequantize_per_head"]
