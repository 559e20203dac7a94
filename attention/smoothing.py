"""Exact K/V smoothing, the attention side: the options' check and V's mean added back to the output.

``fp8_quant.quantize_qkv(..., smooth_k=True, smooth_v=True)`` quantizes K - c and V - m, c and m the
per-(batch, KV head, channel) means over S_kv of the values it quantizes (after RoPE/Hadamard). K's
shift changes every score of a query row by the same q.c, which softmax ignores (over any subset of
keys, so masks and causal too): c is dropped. Attention rows sum to one, so softmax(.)(V - m) + m =
softmax(.)V: ``add_v_mean`` adds m to the FP8 kernel's output for each query head (m of KV head
h // group). Rows that see no key (a mask) keep SDPA's 0.

Precision: m is added in fp32 and the sum rounded once to the output dtype. When V was rotated, m is
in the rotated space and the output has already been rotated back: (O' + m) R^T = O' R^T + m R^T, so
m alone is rotated back (m @ H / sqrt(D) * s, fp32). The mean, much larger than the varying part when
V carries a bias, is therefore rounded only once, in the final cast.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from attention.triton_fp8 import broadcast_mask
from fp8_quant import HadamardMode
from hadamard_kernels.hadamard import hadamard_transform
from hadamard_kernels.signs import SignVector


def check_smooth(fn: str, smooth_k, smooth_v) -> None:
    """TypeError naming ``fn`` unless both options are bools."""
    for name, flag in (("smooth_k", smooth_k), ("smooth_v", smooth_v)):
        if type(flag) is not bool:
            raise TypeError(f"{fn}: {name} must be a bool, got {flag!r}")


def _rows_with_keys(attn_mask: torch.Tensor, causal: bool, s_q: int, device) -> torch.Tensor:
    """(B or 1, S_q, H_q or 1, 1) fp32: 1 where a query row sees a key (mask and top-left causal
    together), else 0."""
    b, h = (attn_mask.shape[0] if attn_mask.dim() == 4 else 1), (attn_mask.shape[-3] if attn_mask.dim() >= 3 else 1)
    m4 = broadcast_mask(attn_mask, b, h, s_q, attn_mask.shape[-1])
    seen = m4 if m4.dtype == torch.bool else m4 > float("-inf")
    if causal:  # query i sees keys j <= i
        seen = seen & torch.ones(s_q, attn_mask.shape[-1], dtype=torch.bool, device=device).tril()
    return seen.any(-1).transpose(1, 2)[..., None].to(torch.float32)


def add_v_mean(out: torch.Tensor, v_mean: torch.Tensor, mode: HadamardMode, signs: Optional[SignVector],
               dtype: torch.dtype, attn_mask: Optional[torch.Tensor] = None, causal: bool = False) -> torch.Tensor:
    """out (B, S_q, H_q, D), the FP8 kernel's output (rotated back if V was rotated), plus V's mean
    ``v_mean`` (B, H_kv, D) fp32 for each query head, in fp32, rounded once to ``dtype``. ``mode`` and
    ``signs``: V's rotation (``v_mean`` is rotated back first); ``attn_mask`` (validated, broadcastable
    to (B, H_q, S_q, S_kv)) and ``causal``: rows with no visible key stay 0."""
    m = v_mean
    if mode is not HadamardMode.NONE:
        m = hadamard_transform(m, 1.0 / math.sqrt(m.shape[-1]))  # m @ H_D / sqrt(D), fp32
        if signs is not None:  # then * s: m @ R^T
            m = m * (torch.tensor(signs.values, dtype=torch.float32, device=m.device)
                     if torch.compiler.is_compiling() else signs.tensor(m.device))
    s_q, h_q, h_kv = out.shape[1], out.shape[2], m.shape[1]
    g = h_q // h_kv
    out = out.unflatten(2, (h_kv, g))  # (B, S_q, H_kv, G, D): query head h = KV head h // G, no copy of m
    m = m[:, None, :, None]  # (B, 1, H_kv, 1, D)
    if attn_mask is not None:
        rows = _rows_with_keys(attn_mask, causal, s_q, out.device)  # (B or 1, S_q, H_q or 1, 1)
        per_head = rows.shape[2] == h_q
        m = m * rows.view(rows.shape[0], s_q, h_kv if per_head else 1, g if per_head else 1, 1)
    if torch.compiler.is_compiling():
        return (out.float() + m).to(dtype).flatten(2, 3)
    res = torch.add(out, m, out=torch.empty(out.shape, dtype=dtype, device=out.device))  # fp32 math, one rounding
    return res.flatten(2, 3)
