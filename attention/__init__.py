"""FP8 attention over FlashAttention-3 / FlashAttention-4, and a module wrapper for models."""
