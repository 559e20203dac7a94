"""FP8 scaled-dot-product attention: quantize with ``fp8_quant``, run an FP8 forward kernel (FA3, FA4
or the float32 reference), rotate the output back when a Hadamard mode is on.

Data flow of ``fp8_sdpa`` (BHSD in, BHSD out, as ``F.scaled_dot_product_attention``):

    .transpose(1, 2) views (no copy)      -> BSHD views of the BHSD inputs
    quantize_qkv(layout="BSHD")           -> e4m3 payloads (B, S, H, D) contiguous + (B, H_kv) descales
                                             (the quantizer reads any strides; FA gets dense BSHD)
    attention::fp8_attention_fwd          -> bf16 output (B, S_q, H_q, D), contiguous BSHD
    hadamard_transform(O', 1/sqrt(D)) * s -> only with a Hadamard mode (undoes V's rotation; Q K^T is
                                             invariant under the shared rotation of Q and K)
    .transpose(1, 2)                      -> a BHSD view of the BSHD buffer (as torch's flash SDPA
                                             returns; ``.transpose(1, 2).reshape(B, S, H * D)`` after it
                                             is then free)

``fp8_rope_sdpa`` takes BSHD pre-RoPE inputs and quantizes with ``layout="BSHD"`` and RoPE fused, so the
payloads are already in FA's layout.

Causal alignment. ``is_causal`` follows SDPA's top-left convention (query i sees keys j <= i) for every
S_q, S_kv. FA3/FA4 align their causal mask bottom-right, so when S_q != S_kv the FA call is rewritten
to be exactly top-left: S_q < S_kv slices K/V to their first S_q rows (keys past S_q are never seen);
S_q > S_kv runs queries [0, S_kv) causal and queries [S_kv, S_q) non-causal (they see every key) and
concatenates. FP8_REFERENCE applies the top-left mask directly.

No FP8 backward exists: calls with autograd recording and an input that requires grad are refused
(use ``torch.no_grad()`` / ``torch.inference_mode()``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from attention.backends import (
    HEAD_DIMS,
    AttentionBackend,
    fa3_forward,
    fa4_forward,
    resolve_backend,
)
from fp8_quant import HadamardMode, quantize_qkv
from hadamard_kernels.rht import inverse_rht
from hadamard_kernels.signs import SignVector, as_sign_vector

_LOG2E = 1.4426950408889634
# FA3's FP8 softmax subtracts (row max - 8) before exp2 so that P lies in [0, 256] and uses more of
# the e4m3 range (flash-attention hopper/softmax.h, Max_offset = 8 for FP8).
_FA3_FP8_MAX_OFFSET = 8.0
_DTYPES = (torch.bfloat16, torch.float16)
# Rows of scores the reference materialises at once (elements): bounds its memory on a GPU.
_REF_BLOCK_ELEMS = 1 << 26


# ---------------------------------------------------------------------------------------------
# The FP8 forward backends (BSHD e4m3 in, bf16 BSHD out)
# ---------------------------------------------------------------------------------------------

def _fa4_call(q, k, v, qd, kd, vd, scale: float, causal: bool) -> torch.Tensor:
    fn = fa4_forward()
    out = fn(q, k, v, softmax_scale=scale, causal=causal, q_descale=qd, k_descale=kd, v_descale=vd)
    return out[0] if isinstance(out, (tuple, list)) else out


def _flash_top_left(call, q, k, v, qd, kd, vd, scale: float, causal: bool) -> torch.Tensor:
    """Run a bottom-right-causal FA kernel with SDPA's top-left causal semantics (module docstring)."""
    s_q, s_kv = q.shape[1], k.shape[1]
    if not causal or s_q == s_kv:
        return call(q, k, v, qd, kd, vd, scale, causal)
    if s_q < s_kv:
        return call(q, k[:, :s_q], v[:, :s_q], qd, kd, vd, scale, True)
    head = call(q[:, :s_kv], k, v, qd, kd, vd, scale, True)
    tail = call(q[:, s_kv:], k, v, qd, kd, vd, scale, False)
    return torch.cat([head, tail], dim=1)


def _reference_fwd(q, k, v, qd, kd, vd, scale: float, causal: bool) -> torch.Tensor:
    """FP8_REFERENCE: what FA3's FP8 forward computes, in float32 with plain PyTorch.

    S = (q8 @ k8^T) * (scale * q_descale * k_descale) (fp8 products are exact in fp32);
    P = exp2((S - rowmax) * log2(e) + 8) in fp32, row sum l from the fp32 P; P rounded to e4m3 (RN,
    P <= 256 never saturates) for the P @ V product, as FA3 does; O = (P8 @ v8) * v_descale / l,
    rounded to bf16. Emulated exactly except for one thing: FA3 subtracts the *running* row max of
    the key blocks seen so far, we subtract the final one. e4m3 rounding is relative, so this only
    differs where P falls into e4m3's subnormal range (P < 2^-6, i.e. probabilities below ~2^-14 of
    the row max), which barely contributes to O.
    """
    b, s_q, h_q, d = q.shape
    s_kv, h_kv, d_v = k.shape[1], k.shape[2], v.shape[3]
    group = h_q // h_kv
    out = torch.empty((b, s_q, h_q, d_v), dtype=torch.bfloat16, device=q.device)
    heads = torch.arange(h_q, device=q.device) // group
    rows = max(1, min(s_q, _REF_BLOCK_ELEMS // max(1, h_q * s_kv)))
    for bi in range(b):
        kf = k[bi].to(torch.float32).transpose(0, 1)[heads]  # (H_q, S_kv, D)
        vf = v[bi].to(torch.float32).transpose(0, 1)[heads]  # (H_q, S_kv, D_v)
        qk_scale = (scale * qd[bi] * kd[bi])[heads].view(h_q, 1, 1)
        v_scale = vd[bi][heads].view(h_q, 1, 1)
        for r0 in range(0, s_q, rows):
            r1 = min(s_q, r0 + rows)
            qf = q[bi, r0:r1].to(torch.float32).transpose(0, 1)  # (H_q, rows, D)
            s = torch.matmul(qf, kf.transpose(1, 2)) * qk_scale
            if causal:  # top-left: query i sees keys j <= i
                i = torch.arange(r0, r1, device=q.device).view(-1, 1)
                j = torch.arange(s_kv, device=q.device).view(1, -1)
                s = s.masked_fill(j > i, float("-inf"))
            m = s.amax(dim=-1, keepdim=True)
            p = torch.exp2((s - m) * _LOG2E + _FA3_FP8_MAX_OFFSET)
            l_sum = p.sum(dim=-1, keepdim=True)
            p8 = p.to(torch.float8_e4m3fn).to(torch.float32)
            o = torch.matmul(p8, vf) * (v_scale / l_sum)
            out[bi, r0:r1] = o.transpose(0, 1).to(torch.bfloat16)
    return out


def _attention_fwd(q, k, v, qd, kd, vd, scale: float, causal: bool, backend: AttentionBackend) -> torch.Tensor:
    """The FP8 forward on ``backend`` (what the op below runs; eager ``fp8_sdpa`` calls it directly)."""
    if backend is AttentionBackend.FP8_REFERENCE:
        return _reference_fwd(q, k, v, qd, kd, vd, scale, causal)
    # FA3: the provider's C++ op directly where its schema allows (attention.backends.fa3_forward)
    call = fa3_forward() if backend is AttentionBackend.FP8_FA3 else _fa4_call
    if causal and q.shape[1] != k.shape[1]:
        out = _flash_top_left(call, q, k, v, qd, kd, vd, scale, causal)
    else:
        out = call(q, k, v, qd, kd, vd, scale, causal)
    # The fake says dense BSHD; an FA build that allocates its output like a strided q would differ.
    return out if out.is_contiguous() else out.contiguous()


@torch.library.custom_op("attention::fp8_attention_fwd", mutates_args=())
def _fp8_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor,
                          k_descale: torch.Tensor, v_descale: torch.Tensor, scale: float, causal: bool,
                          backend: str) -> torch.Tensor:
    """q (B, S_q, H_q, D), k (B, S_kv, H_kv, D), v (B, S_kv, H_kv, D_v): e4m3, last dim contiguous
    (BSHD views of BHSD tensors are fine); descales (B, H_kv) float32. Returns bf16 (B, S_q, H_q, D_v),
    causal top-left."""
    return _attention_fwd(q, k, v, q_descale, k_descale, v_descale, scale, causal, AttentionBackend(backend))


@_fp8_attention_fwd_op.register_fake
def _(q, k, v, q_descale, k_descale, v_descale, scale, causal, backend):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]), dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Validation (shared with the module wrapper, which turns a reason into a fallback)
# ---------------------------------------------------------------------------------------------

def _as_mode(hadamard) -> HadamardMode:
    if hadamard.__class__ is HadamardMode:  # the common case, without the enum's lookup
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
        return ("attn_mask is not supported by the FP8 attention kernels (a mask is never dropped or "
                "replaced by a causal mask)")
    if dropout_p != 0.0:
        return f"dropout_p={dropout_p} is not supported (FP8 attention is inference-only)"
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return ("an input requires grad but FP8 attention has no backward; run under torch.no_grad() "
                "or torch.inference_mode()")
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
        return f"H_q={h_q} must be a multiple of H_kv={h_kv} (GQA)"
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


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

def _undo_rotation(out: torch.Tensor, mode: HadamardMode, signs: Optional[SignVector]) -> torch.Tensor:
    """O = O' @ R^T with R = diag(s) H_D / sqrt(D): the library's inverse RHT over the head dim, one
    kernel, one rounding (``hadamard_kernels.inverse_rht``; s = ones when no sign vector is given)."""
    if mode == HadamardMode.NONE:
        return out
    d = out.shape[-1]
    return inverse_rht(out, signs if signs is not None else _ones(d), d, axis=-1)


def _run(qkv, scale: float, is_causal: bool, backend: AttentionBackend, mode: HadamardMode,
         signs: Optional[SignVector], dtype: torch.dtype, layout: str) -> torch.Tensor:
    q, k, v = qkv.q, qkv.k, qkv.v
    if layout == "BHSD":  # BSHD views: FA3/FA4 need only a contiguous last dim
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if torch.compiler.is_compiling():  # the op (with its fake) for dynamo; eager calls skip the dispatcher
        out = _fp8_attention_fwd_op(q, k, v, qkv.q_descale, qkv.k_descale, qkv.v_descale, float(scale),
                                    bool(is_causal), backend.value)
    else:
        out = _attention_fwd(q, k, v, qkv.q_descale, qkv.k_descale, qkv.v_descale, scale, bool(is_causal), backend)
    if mode is not HadamardMode.NONE:
        out = _undo_rotation(out, mode, signs)
    if out.dtype != dtype:
        out = out.to(dtype)
    return out.transpose(1, 2)  # BHSD view of the BSHD result


def _fp8_sdpa_impl(query, key, value, is_causal: bool, scale: Optional[float], backend: AttentionBackend,
                   mode: HadamardMode, signs: Optional[SignVector], quant_layout: str = "BSHD") -> torch.Tensor:
    """``fp8_sdpa`` after validation (the seam tests and benchmarks use). ``quant_layout``: the layout
    the quantizer writes; "BSHD" (what ``fp8_sdpa`` runs) hands FA contiguous BSHD payloads with no
    copy anywhere, "BHSD" hands it transposed views (a benchmark row)."""
    d = query.shape[-1]
    if query.numel() == 0:
        return torch.empty(query.shape[:3] + (value.shape[-1],), dtype=query.dtype, device=query.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if quant_layout == "BSHD":  # quantize the BSHD views: contiguous BSHD payloads, what FA reads best
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    qkv = quantize_qkv(query, key, value, layout=quant_layout, hadamard=mode, sign_vector=signs)
    return _run(qkv, scale, is_causal, backend, mode, signs, query.dtype, quant_layout)


def fp8_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
             hadamard: HadamardMode | str = HadamardMode.NONE, backend: AttentionBackend | str | None = None,
             sign_vector=None) -> torch.Tensor:
    """FP8 attention with the shapes and semantics of ``F.scaled_dot_product_attention``.

    query (B, H_q, S_q, D), key/value (B, H_kv, S_kv, D), bf16 or fp16; H_q a multiple of H_kv
    (``enable_gqa=True`` when they differ). Returns (B, H_q, S_q, D) in the input dtype (a BHSD view of
    a BSHD buffer). ``is_causal`` is top-left aligned as in SDPA for any S_q, S_kv. ``hadamard``:
    NONE, QKV or V_ONLY (rotation by diag(s) H_D / sqrt(D) before quantization, undone on the output
    with ``inverse_rht``); ``sign_vector`` s: +-1 entries, length D, as a tensor, list, tuple or
    ``SignVector`` (default ones; other entries raise ValueError). ``backend``: an ``AttentionBackend``
    or None (automatic: FA4 on SM100, FA3 on SM90, else RuntimeError). Refused with ValueError: any
    ``attn_mask``, ``dropout_p != 0``, head dims the backend lacks, other dtypes, inputs requiring grad;
    TypeError for inputs that are not tensors.
    """
    if not isinstance(query, torch.Tensor):
        raise TypeError(f"query must be a torch.Tensor, got {type(query).__name__}")
    for name, t in (("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    b = resolve_backend(backend, query.device)
    mode = _as_mode(hadamard)
    why = unsupported_reason(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                             backend=b, hadamard=mode)
    if why is not None:
        raise ValueError(f"fp8_sdpa: {why}")
    signs = None if sign_vector is None else _resolve_sign(sign_vector, query.shape[-1], mode)
    return _fp8_sdpa_impl(query, key, value, is_causal, scale, b, mode, signs)


def fp8_rope_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                  rope_interleaved: bool = False, is_causal: bool = False, scale: Optional[float] = None,
                  hadamard: HadamardMode | str = HadamardMode.NONE, backend: AttentionBackend | str | None = None,
                  sign_vector=None) -> torch.Tensor:
    """FP8 attention on pre-RoPE BSHD inputs with RoPE fused into the quantization.

    q (B, S_q, H_q, D), k/v (B, S_kv, H_kv, D), bf16/fp16, H_q a multiple of H_kv (GQA implied);
    cos/sin (S, D) or (S, D/2) with S >= max(S_q, S_kv) (``fp8_quant.quantize_qkv``'s convention:
    NeoX half-split pairs, or interleaved pairs with ``rope_interleaved``). Returns BHSD
    (B, H_q, S_q, D) in the input dtype. Other arguments as ``fp8_sdpa``.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    b = resolve_backend(backend, q.device)
    mode = _as_mode(hadamard)
    why = unsupported_reason(q, k, v, None, 0.0, is_causal, scale, True, backend=b, hadamard=mode, layout="BSHD")
    if why is not None:
        raise ValueError(f"fp8_rope_sdpa: {why}")
    d = q.shape[-1]
    signs = _resolve_sign(sign_vector, d, mode)
    if q.numel() == 0:
        return torch.empty((q.shape[0], q.shape[2], q.shape[1], v.shape[-1]), dtype=q.dtype, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qkv = quantize_qkv(q, k, v, layout="BSHD", cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                       hadamard=mode, sign_vector=signs)
    return _run(qkv, scale, is_causal, b, mode, signs, q.dtype, "BSHD")


def fp8_fa3_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 *, hadamard=HadamardMode.NONE, sign_vector=None) -> torch.Tensor:
    """``fp8_sdpa`` on FlashAttention-3 (SM90)."""
    return fp8_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, hadamard=hadamard,
                    backend=AttentionBackend.FP8_FA3, sign_vector=sign_vector)


def fp8_fa3_rope_sdpa(q, k, v, cos, sin, *, rope_interleaved=False, is_causal=False, scale=None,
                      hadamard=HadamardMode.NONE, sign_vector=None) -> torch.Tensor:
    """``fp8_rope_sdpa`` on FlashAttention-3 (SM90)."""
    return fp8_rope_sdpa(q, k, v, cos, sin, rope_interleaved=rope_interleaved, is_causal=is_causal, scale=scale,
                         hadamard=hadamard, backend=AttentionBackend.FP8_FA3, sign_vector=sign_vector)


def fp8_fa4_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 *, hadamard=HadamardMode.NONE, sign_vector=None) -> torch.Tensor:
    """``fp8_sdpa`` on FlashAttention-4 (SM100 only; refuses elsewhere)."""
    return fp8_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, hadamard=hadamard,
                    backend=AttentionBackend.FP8_FA4, sign_vector=sign_vector)


def fp8_fa4_rope_sdpa(q, k, v, cos, sin, *, rope_interleaved=False, is_causal=False, scale=None,
                      hadamard=HadamardMode.NONE, sign_vector=None) -> torch.Tensor:
    """``fp8_rope_sdpa`` on FlashAttention-4 (SM100 only; refuses elsewhere)."""
    return fp8_rope_sdpa(q, k, v, cos, sin, rope_interleaved=rope_interleaved, is_causal=is_causal, scale=scale,
                         hadamard=hadamard, backend=AttentionBackend.FP8_FA4, sign_vector=sign_vector)
