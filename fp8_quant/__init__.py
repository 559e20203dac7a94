"""Chunked per-head FP8 (e4m3) quantization of Q, K, V with RoPE and Hadamard fused in."""
