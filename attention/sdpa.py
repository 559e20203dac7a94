"""FP8 scaled-dot-product attention: quantize with ``fp8_quant``, run an FP8 forward kernel (FA3, FA4, the
library's Triton kernel FP8_TRITON, or the float32 reference), rotate the output back when a Hadamard
mode is on, add V's mean back when ``smooth_v`` is on (``attention.smoothing``).

Data flow of ``fp8_sdpa`` (BHSD in, BHSD out, as ``F.scaled_dot_product_attention``):

    .transpose(1, 2) views (no copy)      -> BSHD views of the BHSD inputs
    quantize_qkv(layout="BSHD")           -> e4m3 payloads (B, S, H, D) contiguous + (B, H_kv) descales
                                             (the quantizer reads any strides; FA gets dense BSHD)
    attention::fp8_attention_fwd          -> bf16 output (B, S_q, H_q, D), contiguous BSHD
    inverse_rht(O')                       -> only with a Hadamard mode (undoes V's rotation; Q K^T is
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

No FP8 backward exists: with grad mode on and an input that requires grad, calls are refused before
any launch (call under ``torch.no_grad()`` or ``.detach()`` the inputs).

Masks: FP8_TRITON and FP8_REFERENCE take ``attn_mask`` (boolean or additive, broadcastable to
(B, H_q, S_q, S_kv)); FA3 / FA4 refuse it with a ValueError.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from attention.backends import (
    AttentionBackend,
    fa3_forward,
    fa4_forward,
    resolve_backend,
)
from attention.smoothing import add_v_mean, check_smooth
from attention.triton_fp8 import _triton_fp8_launch, broadcast_mask
from attention.validation import _as_mode, _ones, _resolve_sign, unsupported_reason
from fp8_quant import HadamardMode, QuantizedQKV, quantize_qkv
from fp8_quant.kernels import quantize_launch
from fp8_quant.quantize import QuantSpec
from hadamard_kernels.rht import inverse_rht
from hadamard_kernels.signs import SignVector

_LOG2E = 1.4426950408889634
# FA3's FP8 softmax subtracts (row max - 8) before exp2 so that P lies in [0, 256] and uses more of
# the e4m3 range (flash-attention hopper/softmax.h, Max_offset = 8 for FP8).
_FA3_FP8_MAX_OFFSET = 8.0
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


def _reference_fwd(q, k, v, qd, kd, vd, scale: float, causal: bool, attn_mask=None) -> torch.Tensor:
    """FP8_REFERENCE: what FA3's FP8 forward computes, in float32 with plain PyTorch.

    S = (q8 @ k8^T) * (scale * q_descale * k_descale) (fp8 products are exact in fp32);
    P = exp2((S - rowmax) * log2(e) + 8) in fp32, row sum l from the fp32 P; P rounded to e4m3 (RN,
    P <= 256 never saturates) for the P @ V product, as FA3 does; O = (P8 @ v8) * v_descale / l,
    rounded to bf16. Emulated exactly except for one thing: FA3 subtracts the *running* row max of
    the key blocks seen so far, we subtract the final one. e4m3 rounding is relative, so this only
    differs where P falls into e4m3's subnormal range (P < 2^-6, i.e. probabilities below ~2^-14 of
    the row max), which barely contributes to O. ``attn_mask`` (broadcastable to (B, H_q, S_q, S_kv)):
    bool (True attends) or added to S; a row with no visible key returns 0, as torch's SDPA does.
    """
    b, s_q, h_q, d = q.shape
    s_kv, h_kv, d_v = k.shape[1], k.shape[2], v.shape[3]
    m4 = None if attn_mask is None else broadcast_mask(attn_mask, b, h_q, s_q, s_kv)
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
            if m4 is not None:
                mb = m4[bi, :, r0:r1]
                s = s.masked_fill(~mb, float("-inf")) if mb.dtype == torch.bool else s + mb.float()
            m = s.amax(dim=-1, keepdim=True)
            if m4 is not None:  # a row with no visible key: P = 0 (not NaN)
                m = m.masked_fill(m == float("-inf"), 0.0)
            p = torch.exp2((s - m) * _LOG2E + _FA3_FP8_MAX_OFFSET)
            l_sum = p.sum(dim=-1, keepdim=True)
            p8 = p.to(torch.float8_e4m3fn).to(torch.float32)
            o = torch.matmul(p8, vf) * (v_scale / l_sum)
            if m4 is not None:
                o = torch.where(l_sum > 0, o, 0.0)
            out[bi, r0:r1] = o.transpose(0, 1).to(torch.bfloat16)
    return out


def _attention_fwd(q, k, v, qd, kd, vd, scale: float, causal: bool, backend: AttentionBackend,
                   attn_mask=None) -> torch.Tensor:
    """The FP8 forward on ``backend`` (what the op below runs; eager ``fp8_sdpa`` calls it directly).
    ``attn_mask``: FP8_TRITON and FP8_REFERENCE only (validation refuses it for FA3/FA4 first)."""
    if backend is AttentionBackend.FP8_TRITON:
        return _triton_fp8_launch(q, k, v, qd, kd, vd, scale, causal, attn_mask)
    if backend is AttentionBackend.FP8_REFERENCE:
        return _reference_fwd(q, k, v, qd, kd, vd, scale, causal, attn_mask)
    if attn_mask is not None:
        raise ValueError(f"{backend.name} takes no attn_mask (FP8_TRITON and FP8_REFERENCE do)")
    # FA3: the provider's C++ op directly where its schema allows (attention.backends.fa3_forward)
    call = fa3_forward() if backend is AttentionBackend.FP8_FA3 else _fa4_call
    if causal and q.shape[1] != k.shape[1]:
        out = _flash_top_left(call, q, k, v, qd, kd, vd, scale, causal)
    else:
        out = call(q, k, v, qd, kd, vd, scale, causal)
    # The fake says dense BSHD; an FA build that allocates its output like a strided q would differ.
    return out if out.is_contiguous() else out.contiguous()


@torch.library.custom_op("attention::fp8_attention_fwd", mutates_args=())
def _fp8_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: Optional[torch.Tensor],
                          k_descale: torch.Tensor, v_descale: torch.Tensor, scale: float, causal: bool,
                          backend: str, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q (B, S_q, H_q, D), k (B, S_kv, H_kv, D), v (B, S_kv, H_kv, D_v): e4m3, last dim contiguous
    (BSHD views of BHSD tensors are fine); descales (B, H_kv) float32 (q_descale None: q is bf16/fp16,
    quantized inside the FP8_TRITON kernel, one scale per tile of query rows); attn_mask broadcastable to
    (B, H_q, S_q, S_kv) or None. Returns bf16 (B, S_q, H_q, D_v), causal top-left."""
    return _attention_fwd(q, k, v, q_descale, k_descale, v_descale, scale, causal, AttentionBackend(backend),
                          attn_mask)


@_fp8_attention_fwd_op.register_fake
def _(q, k, v, q_descale, k_descale, v_descale, scale, causal, backend, attn_mask=None):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]), dtype=torch.bfloat16)


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
         signs: Optional[SignVector], dtype: torch.dtype, layout: str, attn_mask=None) -> torch.Tensor:
    q, k, v = qkv.q, qkv.k, qkv.v
    if layout == "BHSD":  # BSHD views: FA3/FA4 need only a contiguous last dim
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if torch.compiler.is_compiling():  # the op (with its fake) for dynamo; eager calls skip the dispatcher
        out = _fp8_attention_fwd_op(q, k, v, qkv.q_descale, qkv.k_descale, qkv.v_descale, float(scale),
                                    bool(is_causal), backend.value, attn_mask)
    else:
        out = _attention_fwd(q, k, v, qkv.q_descale, qkv.k_descale, qkv.v_descale, scale, bool(is_causal), backend,
                             attn_mask)
    if mode is not HadamardMode.NONE:
        out = _undo_rotation(out, mode, signs)
    if qkv.v_mean is not None:  # smooth_v: the mean V's payload lacks, in fp32, one rounding to dtype
        out = add_v_mean(out, qkv.v_mean, mode, signs, dtype, attn_mask, is_causal)
    if out.dtype != dtype:
        out = out.to(dtype)
    return out.transpose(1, 2)  # BHSD view of the BSHD result


def _quant_spec(layout: str, mode: HadamardMode, signs: Optional[SignVector], smooth_k: bool = False,
                smooth_v: bool = False) -> QuantSpec:
    """The quantizer's spec for a validated ``fp8_sdpa`` call (no RoPE), built once per combination."""
    return QuantSpec(layout=layout, had_qk=mode is HadamardMode.QKV, had_v=mode is not HadamardMode.NONE,
                     signs=signs, smooth_k=smooth_k, smooth_v=smooth_v)


def _fp8_sdpa_impl(query, key, value, is_causal: bool, scale: Optional[float], backend: AttentionBackend,
                   mode: HadamardMode, signs: Optional[SignVector], quant_layout: str = "BSHD",
                   attn_mask=None, smooth_k: bool = False, smooth_v: bool = False,
                   q_in_kernel: bool = False) -> torch.Tensor:
    """``fp8_sdpa`` after validation (the seam tests and benchmarks use). ``quant_layout``: the layout
    the quantizer writes; "BSHD" (what ``fp8_sdpa`` runs) hands FA contiguous BSHD payloads with no
    copy anywhere, "BHSD" hands it transposed views (a benchmark row). ``smooth_k`` / ``smooth_v``: the
    quantizer's smoothing (``_run`` adds V's mean back). ``q_in_kernel`` (FP8_TRITON, Q not rotated):
    the quantizer runs on K and V only (Q as zero rows: no Q programs) and the kernel quantizes Q."""
    d = query.shape[-1]
    if query.numel() == 0:
        return torch.empty(query.shape[:3] + (value.shape[-1],), dtype=query.dtype, device=query.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if quant_layout == "BSHD":  # quantize the BSHD views: contiguous BSHD payloads, what FA reads best
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    s_axis = 2 if quant_layout == "BHSD" else 1
    q_in = query.narrow(s_axis, 0, 0) if q_in_kernel else query
    if torch.compiler.is_compiling():  # the quantizer's registered op, for dynamo
        qkv = quantize_qkv(q_in, key, value, layout=quant_layout, hadamard=mode, sign_vector=signs,
                           smooth_k=smooth_k, smooth_v=smooth_v)
    else:  # validated above: the quantizer's launcher directly, without a second validation
        res = quantize_launch([q_in, key, value], query.shape[-3 if quant_layout == "BHSD" else -2]
                              // key.shape[-3 if quant_layout == "BHSD" else -2], None, None,
                              _quant_spec(quant_layout, mode, signs, smooth_k, smooth_v))
        qkv = QuantizedQKV(*res[0], *res[1], res[2][1] if smooth_v else None)
    if q_in_kernel:  # the kernel reads bf16/fp16 Q with a unit last stride
        qkv = qkv._replace(q=query if query.stride(-1) == 1 else query.contiguous(), q_descale=None)
    return _run(qkv, scale, is_causal, backend, mode, signs, query.dtype, quant_layout, attn_mask)


def fp8_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
             hadamard: HadamardMode | str = HadamardMode.NONE, backend: AttentionBackend | str | None = None,
             sign_vector=None, smooth_k: bool = False, smooth_v: bool = False,
             q_in_kernel: bool = False) -> torch.Tensor:
    """FP8 attention with the shapes and semantics of ``F.scaled_dot_product_attention``.

    query (B, H_q, S_q, D), key/value (B, H_kv, S_kv, D), bf16 or fp16; H_q a multiple of H_kv
    (``enable_gqa=True`` when they differ). Returns (B, H_q, S_q, D) in the input dtype: a BHSD *view*
    (``.transpose(1, 2)``) of the contiguous BSHD (B, S_q, H_q, D) buffer the FP8 kernel writes, as
    torch's flash SDPA returns, so ``out.is_contiguous()`` is False whenever H_q > 1 and S_q > 1.
    ``out.transpose(1, 2).reshape(B, S_q, H_q * D)`` (the usual next step) is then free; call
    ``.contiguous()`` if a BHSD-contiguous tensor is needed (a copy). ``is_causal`` is top-left aligned
    as in SDPA for any S_q, S_kv. ``hadamard``: NONE, QKV or V_ONLY (rotation by diag(s) H_D / sqrt(D)
    before quantization, undone on the output with ``inverse_rht``); ``sign_vector`` s: +-1 entries,
    length D, as a tensor, list, tuple or ``SignVector`` (default ones; other entries raise
    ValueError). ``backend``: an ``AttentionBackend`` or None (automatic: FA4 on SM100, FA3 on SM90,
    else RuntimeError). ``attn_mask`` (bool, True attends, or additive float; broadcastable to
    (B, H_q, S_q, S_kv); with ``is_causal`` both apply; a row with no visible key gives 0, as in
    torch): FP8_TRITON and FP8_REFERENCE only. Refused with ValueError: an ``attn_mask`` on FA3/FA4,
    ``dropout_p != 0``, head dims the backend lacks, other dtypes, inputs requiring grad; TypeError for
    inputs that are not tensors
    (a numpy array included).

    Gradients: none (the library's gradient policy: differentiable only where the backward is another
    call of our kernels). With grad mode on and an input requiring grad, ValueError before any launch:
    call it under ``torch.no_grad()`` or ``.detach()`` the inputs. (``apply_low_precision_attention``
    routes such calls to the original SDPA instead.)

    Non-finite inputs (by design): the per-head scales of ``fp8_quant.quantize_qkv`` are poisoned by a
    NaN or Inf, so the whole head is NaN rather than silently wrong. One NaN or +-Inf in q[b, h] makes
    every element of the output of batch b's query heads that share h's scale (h's GQA group,
    H_q/H_kv heads) NaN; one in k[b, j] or v[b, j] makes every element of every query head that reads
    KV head j NaN, even rows that a causal mask keeps from seeing the bad key. Every other (batch,
    head) is exactly what it would be without the bad value. torch's SDPA instead confines a NaN in q
    to its row and an Inf in v to one column. Check inputs with ``torch.isfinite`` upstream where
    that matters.

    Smoothing (bools, default off; exact on every backend, ``attention.smoothing``): ``smooth_k``
    quantizes K minus its per-(batch, KV head, channel) mean over S_kv, ``smooth_v`` V minus its mean
    m, added back to the output in fp32 before the one rounding to the output dtype. Each helps when K
    or V carries a per-channel bias that would otherwise set the FP8 scale.

    ``q_in_kernel`` (bool, default off; FP8_TRITON only, ``hadamard`` NONE or V_ONLY): the quantizer
    pass runs on K and V only, and the kernel reads bf16/fp16 Q and quantizes each tile of query rows
    it loads (64 or 128 rows of one head, the kernel's tile) with that tile's own scale (the
    quantizer's policy on the tile's amax): a third less quantizer traffic, and a NaN or Inf in Q
    poisons only its tile. Not the bits of the default path (there Q has one scale per (batch, GQA
    group)); as accurate (``tests/attention/test_sdpa.py``).

    >>> q, k, v = torch.randn(3, 1, 2, 64, 64, dtype=torch.bfloat16)
    >>> out = fp8_sdpa(q, k, v, is_causal=True, backend="FP8_REFERENCE")
    >>> out.shape, out.dtype, out.is_contiguous()
    (torch.Size([1, 2, 64, 64]), torch.bfloat16, False)
    >>> fp8_sdpa(q, k + 8, v + 8, backend="FP8_REFERENCE", smooth_k=True, smooth_v=True).shape
    torch.Size([1, 2, 64, 64])
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
    if type(smooth_k) is not bool or type(smooth_v) is not bool:
        check_smooth("fp8_sdpa", smooth_k, smooth_v)
    if q_in_kernel is not False:
        _check_q_in_kernel(q_in_kernel, b, mode)
    signs = None if sign_vector is None else _resolve_sign(sign_vector, query.shape[-1], mode)
    return _fp8_sdpa_impl(query, key, value, is_causal, scale, b, mode, signs, attn_mask=attn_mask, smooth_k=smooth_k,
                          smooth_v=smooth_v, q_in_kernel=q_in_kernel)


def _check_q_in_kernel(q_in_kernel, backend: AttentionBackend, mode: HadamardMode) -> None:
    if type(q_in_kernel) is not bool:
        raise TypeError(f"fp8_sdpa: q_in_kernel must be a bool, got {type(q_in_kernel).__name__}")
    if backend is not AttentionBackend.FP8_TRITON:
        raise ValueError(f"fp8_sdpa: q_in_kernel=True needs backend=FP8_TRITON (the kernel that quantizes Q), "
                         f"got {backend.name}")
    if mode is HadamardMode.QKV:
        raise ValueError("fp8_sdpa: q_in_kernel=True takes Q unrotated: hadamard must be NONE or V_ONLY, got QKV")


def fp8_rope_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                  rope_interleaved: bool = False, is_causal: bool = False, scale: Optional[float] = None,
                  hadamard: HadamardMode | str = HadamardMode.NONE, backend: AttentionBackend | str | None = None,
                  sign_vector=None, smooth_k: bool = False, smooth_v: bool = False) -> torch.Tensor:
    """FP8 attention on pre-RoPE BSHD inputs with RoPE fused into the quantization.

    q (B, S_q, H_q, D), k/v (B, S_kv, H_kv, D): BSHD, unlike ``fp8_sdpa``; bf16/fp16, H_q a multiple
    of H_kv (GQA implied); cos/sin (S, D) or (S, D/2) with S >= max(S_q, S_kv)
    (``fp8_quant.quantize_qkv``'s convention: NeoX half-split pairs, or interleaved pairs with
    ``rope_interleaved``). BHSD tensors are read with S as the head count: where that breaks the GQA
    rule the ValueError names the layout and says to pass ``.transpose(1, 2)``; where it does not
    (e.g. equal head counts and equal lengths) nothing can tell, so pass BSHD. Returns BHSD
    (B, H_q, S_q, D) in the input dtype, a non-contiguous view of a BSHD buffer as for ``fp8_sdpa``.
    Gradients and non-finite inputs as for ``fp8_sdpa`` (cos/sin requiring grad are refused too).
    Other arguments as ``fp8_sdpa`` (``smooth_k`` smooths K after RoPE, exact all the same).

    >>> q, k, v = torch.randn(3, 1, 64, 2, 64, dtype=torch.bfloat16)  # BSHD
    >>> ang = torch.arange(64.0)[:, None] * torch.rand(32)
    >>> out = fp8_rope_sdpa(q, k, v, ang.cos(), ang.sin(), is_causal=True, backend="FP8_REFERENCE")
    >>> out.shape  # BHSD
    torch.Size([1, 2, 64, 64])
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
    if type(smooth_k) is not bool or type(smooth_v) is not bool:
        check_smooth("fp8_rope_sdpa", smooth_k, smooth_v)
    if q.numel() == 0:
        return torch.empty((q.shape[0], q.shape[2], q.shape[1], v.shape[-1]), dtype=q.dtype, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qkv = quantize_qkv(q, k, v, layout="BSHD", cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                       hadamard=mode, sign_vector=signs, smooth_k=smooth_k, smooth_v=smooth_v)
    return _run(qkv, scale, is_causal, b, mode, signs, q.dtype, "BSHD")


def fp8_fa3_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 *, hadamard=HadamardMode.NONE, sign_vector=None, smooth_k=False, smooth_v=False) -> torch.Tensor:
    """``fp8_sdpa`` on FlashAttention-3 (SM90).

    >>> q = k = v = torch.randn(1, 8, 4096, 128, device="cuda").bfloat16()  # doctest: +SKIP
    >>> out = fp8_fa3_sdpa(q, k, v, is_causal=True, hadamard="qkv")  # (1, 8, 4096, 128)  # doctest: +SKIP
    """
    return fp8_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, hadamard=hadamard,
                    backend=AttentionBackend.FP8_FA3, sign_vector=sign_vector, smooth_k=smooth_k, smooth_v=smooth_v)


def fp8_fa3_rope_sdpa(q, k, v, cos, sin, *, rope_interleaved=False, is_causal=False, scale=None,
                      hadamard=HadamardMode.NONE, sign_vector=None, smooth_k=False, smooth_v=False) -> torch.Tensor:
    """``fp8_rope_sdpa`` on FlashAttention-3 (SM90).

    >>> q = k = v = torch.randn(1, 4096, 8, 128, device="cuda").bfloat16()  # BSHD  # doctest: +SKIP
    >>> ang = torch.outer(torch.arange(4096.0), 1e4 ** (-torch.arange(0, 128, 2) / 128)).cuda()  # doctest: +SKIP
    >>> out = fp8_fa3_rope_sdpa(q, k, v, ang.cos(), ang.sin(), is_causal=True)  # BHSD  # doctest: +SKIP
    """
    return fp8_rope_sdpa(q, k, v, cos, sin, rope_interleaved=rope_interleaved, is_causal=is_causal, scale=scale,
                         hadamard=hadamard, backend=AttentionBackend.FP8_FA3, sign_vector=sign_vector,
                         smooth_k=smooth_k, smooth_v=smooth_v)


def fp8_fa4_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 *, hadamard=HadamardMode.NONE, sign_vector=None, smooth_k=False, smooth_v=False) -> torch.Tensor:
    """``fp8_sdpa`` on FlashAttention-4 (SM100 only; refuses elsewhere).

    >>> q = k = v = torch.randn(1, 8, 4096, 128, device="cuda").bfloat16()  # doctest: +SKIP
    >>> out = fp8_fa4_sdpa(q, k, v, is_causal=True)  # (1, 8, 4096, 128)  # doctest: +SKIP
    """
    return fp8_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, hadamard=hadamard,
                    backend=AttentionBackend.FP8_FA4, sign_vector=sign_vector, smooth_k=smooth_k, smooth_v=smooth_v)


def fp8_fa4_rope_sdpa(q, k, v, cos, sin, *, rope_interleaved=False, is_causal=False, scale=None,
                      hadamard=HadamardMode.NONE, sign_vector=None, smooth_k=False, smooth_v=False) -> torch.Tensor:
    """``fp8_rope_sdpa`` on FlashAttention-4 (SM100 only; refuses elsewhere).

    >>> q = k = v = torch.randn(1, 4096, 8, 128, device="cuda").bfloat16()  # BSHD  # doctest: +SKIP
    >>> ang = torch.outer(torch.arange(4096.0), 1e4 ** (-torch.arange(0, 128, 2) / 128)).cuda()  # doctest: +SKIP
    >>> out = fp8_fa4_rope_sdpa(q, k, v, ang.cos(), ang.sin(), is_causal=True)  # BHSD  # doctest: +SKIP
    """
    return fp8_rope_sdpa(q, k, v, cos, sin, rope_interleaved=rope_interleaved, is_causal=is_causal, scale=scale,
                         hadamard=hadamard, backend=AttentionBackend.FP8_FA4, sign_vector=sign_vector,
                         smooth_k=smooth_k, smooth_v=smooth_v)
