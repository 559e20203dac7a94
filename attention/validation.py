"""Validation of FP8 attention calls: why the FP8 path cannot serve a call (a sentence naming the
offending value), shared by ``fp8_sdpa`` / ``fp8_rope_sdpa`` (which raise it as a ValueError) and the
module wrapper (which turns it into a fallback to the original SDPA), and the option helpers both use
(Hadamard mode, sign vector)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from attention.backends import HEAD_DIMS, AttentionBackend
from attention.triton_fp8 import mask_reason
from fp8_quant import HadamardMode
from hadamard_kernels.signs import SignVector, as_sign_vector

_DTYPES = (torch.bfloat16, torch.float16)


def _as_mode(hadamard) -> HadamardMode:
    if type(hadamard) is HadamardMode:  # the common case, without the enum's lookup
        return hadamard
    try:
        return HadamardMode(getattr(hadamard, "value", hadamard))
    except ValueError:
        raise ValueError(f"unknown hadamard mode {hadamard!r}; one of {[m.value for m in HadamardMode]}") from None


def unsupported_reason(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False, *, backend: AttentionBackend, hadamard=HadamardMode.NONE,
                       layout: str = "BHSD") -> Optional[str]:
    """Why the FP8 path cannot serve this call (a sentence naming the offending value), or None.

    A fast check accepts the calls that are fine (every condition of ``_unsupported_reason`` in one
    expression, each attribute read once); anything else gets the full check, which names the reason."""
    tensor = torch.Tensor
    if (attn_mask is None and dropout_p == 0.0 and isinstance(query, tensor) and isinstance(key, tensor)
            and isinstance(value, tensor)):
        qs, ks, dt = query.shape, key.shape, query.dtype
        if (len(qs) == 4 and len(ks) == 4 and ks == value.shape and (dt is torch.bfloat16 or dt is torch.float16)
                and key.dtype is dt and value.dtype is dt):
            h = 1 if layout == "BHSD" else 2
            h_q, h_kv, d = qs[h], ks[h], qs[3]
            mode = _as_mode(hadamard)
            if (ks[0] == qs[0] and ks[3] == d and h_kv > 0 and h_q % h_kv == 0 and (enable_gqa or h_q == h_kv)
                    and d in HEAD_DIMS[backend] and (mode is HadamardMode.NONE or not d & (d - 1))
                    and (ks[3 - h] > 0 or qs[3 - h] == 0)
                    and (scale is None or (isinstance(scale, (int, float)) and math.isfinite(scale)))
                    and not (torch.is_grad_enabled()
                             and (query.requires_grad or key.requires_grad or value.requires_grad))
                    and query.device == key.device == value.device):
                return None
    return _unsupported_reason(query, key, value, attn_mask, dropout_p, scale, enable_gqa, backend, hadamard,
                               layout)


def _unsupported_reason(query, key, value, attn_mask, dropout_p, scale, enable_gqa, backend, hadamard,
                        layout) -> Optional[str]:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            return f"{name} must be a torch.Tensor, got {type(t).__name__}"
        if t.dim() != 4:
            return f"{name} must be 4-D ({layout}), got shape {tuple(t.shape)}"
        if t.dtype not in _DTYPES:
            return f"{name} dtype {t.dtype} is not supported by FP8 attention (bfloat16 or float16 only)"
    if not (query.dtype == key.dtype == value.dtype):
        return f"query/key/value dtypes differ: {query.dtype}, {key.dtype}, {value.dtype}"
    if not (query.device == key.device == value.device):
        return f"query/key/value devices differ: {query.device}, {key.device}, {value.device}"
    if attn_mask is not None:
        why = mask_reason(attn_mask, query, key, backend, layout)
        if why is not None:
            return why
    if dropout_p != 0.0:
        return f"dropout_p={dropout_p} is not supported (FP8 attention is inference-only)"
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        name = "query" if query.requires_grad else "key" if key.requires_grad else "value"
        return (f"{name} requires grad, but FP8 attention has no backward (FP8 quantization has no backward): "
                f"call it under torch.no_grad() or .detach() the inputs")
    hd = 1 if layout == "BHSD" else 2
    sd = 2 if layout == "BHSD" else 1
    b, h_q, s_q, d = query.shape[0], query.shape[hd], query.shape[sd], query.shape[3]
    h_kv, s_kv = key.shape[hd], key.shape[sd]
    if key.shape != value.shape:
        return f"key {tuple(key.shape)} and value {tuple(value.shape)} shapes differ ({layout})"
    if key.shape[0] != b:
        return f"batch sizes differ: query {tuple(query.shape)}, key {tuple(key.shape)} ({layout})"
    if key.shape[3] != d:
        return f"head dims differ: query D={d}, key/value D={key.shape[3]}"
    if h_kv == 0 or h_q % h_kv:
        # Name the layout the shapes were read in: tensors of the other layout (BHSD handed to
        # fp8_rope_sdpa, which takes BSHD) land here with S read as H; say so when the other reading fits.
        other, oq, ok = ("BSHD", query.shape[2], key.shape[2]) if layout == "BHSD" else \
            ("BHSD", query.shape[1], key.shape[1])
        dims = {"BHSD": "(B, H, S, D)", "BSHD": "(B, S, H, D)"}
        hint = (f"; if these are {other} {dims[other]} tensors (read that way H_q={oq}, H_kv={ok}, which "
                f"fits), note that this function takes {layout}: pass each one's .transpose(1, 2)"
                ) if ok and oq % ok == 0 else ""
        return (f"H_q={h_q} must be a multiple of H_kv={h_kv} (GQA), reading query {tuple(query.shape)} and key "
                f"{tuple(key.shape)} as {layout} {dims[layout]}{hint}")
    if h_q != h_kv and not enable_gqa:
        return f"H_q={h_q} != H_kv={h_kv} needs enable_gqa=True (as in F.scaled_dot_product_attention)"
    if d not in HEAD_DIMS[backend]:
        return f"head dim D={d} is not supported by {backend.name} (its FP8 kernel has {HEAD_DIMS[backend]})"
    mode = _as_mode(hadamard)
    if mode != HadamardMode.NONE and d & (d - 1):
        return f"hadamard={mode.value} needs a power-of-two head dim, got D={d}"
    if s_kv == 0 and s_q > 0:
        return f"S_kv=0 with S_q={s_q}: attention over no keys is undefined"
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        return f"scale must be a finite number or None, got {scale!r}"
    return None


def _resolve_sign(sign_vector, d: Optional[int], mode: HadamardMode) -> Optional[SignVector]:
    """The validated sign vector (+-1 entries, length D unless d is None) or None; ValueError otherwise."""
    if sign_vector is None:
        return None
    if mode == HadamardMode.NONE:
        raise ValueError("sign_vector given but hadamard=NONE: it only applies to a Hadamard mode")
    return as_sign_vector(sign_vector, d, "sign_vector")


_ONES: dict[int, SignVector] = {}


def _ones(d: int) -> SignVector:
    sv = _ONES.get(d)
    if sv is None:
        sv = _ONES[d] = SignVector((1,) * d)
    return sv
