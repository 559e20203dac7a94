"""Plain float64 PyTorch references for the attention tests and benchmarks (never used by the library).

``sdpa_reference``: softmax(Q K^T * scale) V in float64, GQA by head repetition, causal top-left
(query i sees keys j <= i, ``F.scaled_dot_product_attention``'s convention). ``rope_reference``:
RoPE in float64 (NeoX half-split or interleaved pairs), BSHD. ``sqnr_db``: signal-to-quantization-noise
ratio in dB of an approximation against a reference.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                   scale: Optional[float] = None) -> torch.Tensor:
    """q (B, H_q, S_q, D), k/v (B, H_kv, S_kv, D) -> (B, H_q, S_q, D) float64."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if is_causal:
        i = torch.arange(q.shape[2], device=q.device).view(-1, 1)
        j = torch.arange(k.shape[2], device=q.device).view(1, -1)
        s = s.masked_fill(j > i, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """x (B, S, H, D); cos/sin (S_max, D) or (S_max, D/2) (one angle per pair). float64 out."""
    x = x.double()
    s, d = x.shape[1], x.shape[-1]
    cos, sin = cos[:s].double(), sin[:s].double()
    if cos.shape[-1] == d:  # full-width tables repeat each pair's angle; take one per pair
        cos, sin = (cos[:, 0::2], sin[:, 0::2]) if interleaved else (cos[:, : d // 2], sin[:, : d // 2])
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def sqnr_db(approx: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(||ref||^2 / ||approx - ref||^2), in float64."""
    ref = ref.double()
    err = approx.double() - ref
    return float(10.0 * torch.log10(ref.pow(2).sum() / err.pow(2).sum().clamp_min(1e-300)))


def rmse(approx: torch.Tensor, ref: torch.Tensor) -> float:
    return float((approx.double() - ref.double()).pow(2).mean().sqrt())
