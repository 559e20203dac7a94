"""Per-head FP8 (e4m3) quantization of Q, K and V with RoPE and the Hadamard transform fused in.

Semantics (see the package docstring for the public API):
- Values quantized = RoPE (Q, K only, when cos/sin are given) then Hadamard (by ``HadamardMode``), in fp32.
  The Hadamard transform is the library's RHT, x @ diag(s) H_D / sqrt(D) (``hadamard_kernels.signs``).
- One scale per (batch, KV head); for Q the max over the GQA group of H_q / H_kv query heads.
  scale = 448 / amax, descale = amax / 448 (both correctly rounded fp32), amax < 1e-12 -> scale 1,
  descale 1. Payload = cast_e4m3(x * scale), saturating at +-448, round to nearest even.
- Non-finite policy: a NaN anywhere in a (batch, group) makes amax NaN: descale NaN and the whole
  group's payload NaN. An Inf (and no NaN) makes amax inf: descale inf, scale NaN, payload NaN. We never
  clamp a non-finite amax to a finite scale, so the caller (and FA3, whose output will be NaN) sees it.
- Smoothing (``smooth_k`` / ``smooth_v``): K and/or V are quantized as y - c, c the per-(batch, KV head,
  channel) fp32 mean over S of the values above (after RoPE/Hadamard), with amax = max |fl(y - c)|
  (the non-finite policy unchanged). For attention this is exact: K's c shifts every score of a query
  row by the same q.c (softmax unchanged, so c is dropped); V's mean m is returned (``v_mean``) and the
  consumer adds it to the output, since attention rows sum to one: softmax(.)(V - m) + m = softmax(.)V.

Call path: the public functions validate once and resolve the options into a ``QuantSpec``, then call
the launcher (``fp8_quant.kernels.quantize_launch``, the two-pass kernels) directly in eager mode, and
the registered ``torch.library`` op under ``torch.compile`` (the op's dispatcher round trip costs
~0.1-0.3 ms of host time per eager call, more than the kernels take at S = 4096).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple, Optional

import torch

from fp8_quant.kernels import bhsd_dims, quantize_launch
from hadamard_kernels.signs import SignVector, as_sign_vector

MAX_HADAMARD_DIM = 256
MAX_HEAD_DIM = 256
_LAYOUTS = ("BHSD", "BSHD")


class HadamardMode(str, enum.Enum):
    """Which of Q, K, V are rotated by diag(s) H_D / sqrt(D) before quantization: ``NONE``, ``QKV``
    (Q K^T is unchanged; the output is rotated back) or ``V_ONLY`` (the output is rotated back).
    Given as the enum or a string in any case: ``"qkv"``, ``"QKV"`` and ``HadamardMode.QKV`` are the
    same mode (torchao's spellings work unchanged).

    >>> HadamardMode("V_ONLY") is HadamardMode.V_ONLY
    True
    """

    NONE = "none"
    QKV = "qkv"
    V_ONLY = "v_only"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


class QuantizedQKV(NamedTuple):
    """What ``quantize_qkv`` returns: e4m3 payloads ``q``, ``k``, ``v`` (the call's layout), float32
    descales ``q_descale``, ``k_descale``, ``v_descale`` of shape (B, H_kv): x ~ payload * descale, and
    ``v_mean``: with ``smooth_v``, the float32 (B, H_kv, D) mean subtracted from V (in the rotated
    space if V was rotated: v ~ payload * descale + v_mean), else None. Seven fields: unpack the first
    six with ``[:6]`` (or read them by name).

    >>> q = k = v = torch.randn(1, 2, 16, 64, dtype=torch.bfloat16)
    >>> q8, k8, v8, q_descale, k_descale, v_descale = quantize_qkv(q, k, v)[:6]
    >>> q8.dtype, tuple(q_descale.shape), quantize_qkv(q, k, v).v_mean
    (torch.float8_e4m3fn, (1, 2), None)
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_descale: torch.Tensor
    k_descale: torch.Tensor
    v_descale: torch.Tensor
    v_mean: Optional[torch.Tensor] = None


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """What the kernels do besides quantizing, resolved once by the public function.

    layout: "BHSD" or "BSHD" (inputs and payloads); rope: cos/sin given (Q and K); interleaved: RoPE
    pairs (2i, 2i+1) instead of NeoX halves; compact_cs: cos/sin have D/2 columns; had_qk / had_v: the
    Hadamard transform on Q and K / on V; signs: its sign vector (None: ones); smooth_k / smooth_v:
    subtract the per-channel mean of K / V before quantizing (``quantize_qkv`` only)."""

    layout: str = "BHSD"
    rope: bool = False
    interleaved: bool = False
    compact_cs: bool = False
    had_qk: bool = False
    had_v: bool = False
    signs: Optional[SignVector] = None
    smooth_k: bool = False
    smooth_v: bool = False


# ---------------------------------------------------------------------------------------------
# Validation (once, in the public functions)
# ---------------------------------------------------------------------------------------------

def _mode(hadamard) -> HadamardMode:
    try:
        return HadamardMode(getattr(hadamard, "value", hadamard))
    except ValueError:
        raise ValueError(f"hadamard must be one of {[m.value for m in HadamardMode]}, got {hadamard!r}") from None


def _check_layout(layout) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")


def _check_tensor(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be bfloat16 or float16, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, H, S, D) or (B, S, H, D), got shape {tuple(x.shape)}")


def _check_rope(cos, sin, d: int, s_needed: int, device) -> None:
    if (cos is None) != (sin is None):
        raise ValueError("give both cos and sin, or neither")
    if cos is None:
        return
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, the inputs on {device}")
        if t.dim() != 2 or t.shape[1] not in (d, d // 2) or t.shape[0] < s_needed:
            raise ValueError(f"{name} must have shape (S, D) = (>= {s_needed}, {d}) or (S, D/2) = "
                             f"(>= {s_needed}, {d // 2}), got {tuple(t.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin shapes differ: {tuple(cos.shape)} vs {tuple(sin.shape)}")
    if d % 2:
        raise ValueError(f"RoPE needs an even head dim, got D={d}")


def _signs(sign_vector, d: int) -> Optional[SignVector]:
    """The validated sign vector (ValueError for entries other than +-1 or a length other than D)."""
    if sign_vector is None:
        return None
    return as_sign_vector(sign_vector, d, "sign_vector")


def _check_smooth(smooth_k, smooth_v) -> None:
    for name, flag in (("smooth_k", smooth_k), ("smooth_v", smooth_v)):
        if type(flag) is not bool:
            raise TypeError(f"{name} must be a bool, got {flag!r}")


def _spec(layout: str, d: int, cos, rope_interleaved: bool, had_qk: bool, had_v: bool, sign_vector,
          smooth_k: bool = False, smooth_v: bool = False) -> QuantSpec:
    """The spec of validated arguments (also checks the Hadamard head dim and the sign vector)."""
    if (had_qk or had_v) and (d > MAX_HADAMARD_DIM or d & (d - 1)):
        raise ValueError(f"the Hadamard transform needs a head dim that is a power of two <= "
                         f"{MAX_HADAMARD_DIM}, got D={d}")
    signs = _signs(sign_vector, d) if (had_qk or had_v) else None  # as before: ignored without a rotation
    rope = cos is not None
    return QuantSpec(layout=layout, rope=rope, interleaved=bool(rope_interleaved) and rope,
                     compact_cs=rope and cos.shape[1] != d, had_qk=bool(had_qk), had_v=bool(had_v),
                     signs=signs, smooth_k=smooth_k, smooth_v=smooth_v)


def _validate_qkv(q, k, v, layout, cos, sin) -> int:
    """Checks q, k, v, layout and cos/sin; returns the GQA group size H_q / H_kv."""
    _check_layout(layout)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    bq, hq, sq, dq = bhsd_dims(q, layout)
    bk, hk, sk, dk = bhsd_dims(k, layout)
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if bq != bk or dq != dk:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} ({layout}) must share batch and head dim")
    if dq > MAX_HEAD_DIM:
        raise ValueError(f"head dim must be <= {MAX_HEAD_DIM}, got D={dq}")
    if hk == 0 and hq != 0 or (hk and hq % hk):
        raise ValueError(f"H_q={hq} must be a multiple of H_kv={hk} (GQA)")
    _check_rope(cos, sin, dq, max(sq, sk), q.device)
    # the gradient policy (cheap, every eager call): no backward, so refuse before any launch rather
    # than return payloads that silently drop the gradient
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                    or (cos is not None and (cos.requires_grad or sin.requires_grad))):
        name = next(n for n, t in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin)) if t.requires_grad)
        raise ValueError(f"quantize_qkv: {name} requires grad, but quantize_qkv has no backward (FP8 quantization "
                         f"has no backward): call it under torch.no_grad() or .detach() the inputs")
    return hq // hk if hk else 1


def _validate_per_head(x, group_size, layout, cos, sin) -> None:
    _check_layout(layout)
    _check_tensor("x", x)
    b, h, s, d = bhsd_dims(x, layout)
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim must be <= {MAX_HEAD_DIM}, got D={d}")
    if group_size < 1 or h % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the head count H={h}")
    _check_rope(cos, sin, d, s, x.device)
    if torch.is_grad_enabled() and (x.requires_grad or (cos is not None and (cos.requires_grad or sin.requires_grad))):
        name = next(n for n, t in (("x", x), ("cos", cos), ("sin", sin)) if t.requires_grad)
        raise ValueError(f"quantize_per_head: {name} requires grad, but quantize_per_head has no backward (FP8 "
                         f"quantization has no backward): call it under torch.no_grad() or .detach() the inputs")


# ---------------------------------------------------------------------------------------------
# Custom ops (what torch.compile sees; eager calls go to quantize_launch directly)
# ---------------------------------------------------------------------------------------------
# These two stay opaque ``custom_op``s, not ``triton_op``s (unlike hadamard_kernels' ops): the
# kernels take each tensor as a tuple (ptr, strides...) and wrap_triton's tracing (torch 2.13) keeps a
# tuple argument as a constant of the launch, tensors inside it included, so Inductor would launch
# with the tensors seen at trace time. Flattening the tuples would give the kernels ~40 parameters
# (the limit is 24), and a traced body could not validate a sign tensor (that needs its values).

def _op_spec(x: torch.Tensor, layout: str, cos, rope_interleaved: bool, had_qk: bool, had_v: bool,
             sign: Optional[torch.Tensor], sign_values: Optional[list[float]], smooth_k: bool = False,
             smooth_v: bool = False) -> QuantSpec:
    # The public function validated the rest. The sign vector comes as the caller's tensor (validated
    # here once per tensor version, then a cache hit: tracing cannot read a tensor's values) or as the
    # values of a list/tuple/SignVector (baked into the graph; validated here through a cache, no sync).
    sv = sign if sign is not None else (tuple(sign_values) if sign_values is not None else None)
    return _spec(layout, x.shape[-1], cos, rope_interleaved, had_qk, had_v, sv, smooth_k, smooth_v)


@torch.library.custom_op("fp8_quant::quantize_qkv", mutates_args=())
def _quantize_qkv_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, cos: Optional[torch.Tensor],
                     sin: Optional[torch.Tensor], rope_interleaved: bool, had_qk: bool, had_v: bool,
                     sign: Optional[torch.Tensor], sign_values: Optional[list[float]], smooth_k: bool = False,
                     smooth_v: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor, torch.Tensor, torch.Tensor]:
    # The seventh output: V's mean (B, H_kv, D) with smooth_v, else an empty tensor (ops return tensors).
    h_axis = 1 if layout == "BHSD" else 2
    group = q.shape[h_axis] // k.shape[h_axis] if k.shape[h_axis] else 1
    spec = _op_spec(q, layout, cos, rope_interleaved, had_qk, had_v, sign, sign_values, smooth_k, smooth_v)
    res = quantize_launch([q, k, v], group, cos, sin, spec)
    outs, ds = res[0], res[1]
    v_mean = res[2][1].clone() if smooth_v else q.new_empty((0,), dtype=torch.float32)
    return outs[0], outs[1], outs[2], ds[0].clone(), ds[1].clone(), ds[2].clone(), v_mean  # ops return no aliases


@_quantize_qkv_op.register_fake
def _(q, k, v, layout, cos, sin, rope_interleaved, had_qk, had_v, sign, sign_values, smooth_k=False,
      smooth_v=False):
    b = q.shape[0]
    hk = k.shape[1] if layout == "BHSD" else k.shape[2]
    f8 = torch.float8_e4m3fn
    ds = [q.new_empty((b, hk), dtype=torch.float32) for _ in range(3)]
    v_mean = q.new_empty((b, hk, v.shape[-1]) if smooth_v else (0,), dtype=torch.float32)
    return (q.new_empty(q.shape, dtype=f8), k.new_empty(k.shape, dtype=f8), v.new_empty(v.shape, dtype=f8), *ds,
            v_mean)


@torch.library.custom_op("fp8_quant::quantize_per_head", mutates_args=())
def _quantize_per_head_op(x: torch.Tensor, group_size: int, layout: str, cos: Optional[torch.Tensor],
                          sin: Optional[torch.Tensor], rope_interleaved: bool, hadamard: bool,
                          sign: Optional[torch.Tensor], sign_values: Optional[list[float]]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    spec = _op_spec(x, layout, cos, rope_interleaved, hadamard, False, sign, sign_values)
    outs, ds = quantize_launch([x], group_size, cos, sin, spec)
    return outs[0], ds[0]


@_quantize_per_head_op.register_fake
def _(x, group_size, layout, cos, sin, rope_interleaved, hadamard, sign, sign_values):
    h = x.shape[1] if layout == "BHSD" else x.shape[2]
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], h // group_size),
                                                                        dtype=torch.float32)


def _op_sign(sign_vector, d: int) -> tuple[Optional[torch.Tensor], Optional[list[float]]]:
    """The (sign, sign_values) arguments of the custom ops under torch.compile: a tensor is passed on
    as is (the op validates it once, on real data), the values of a list/tuple/SignVector as a list
    (the op validates them through a cache). Shape and type are checked here, at trace time."""
    if sign_vector is None:
        return None, None
    if isinstance(sign_vector, torch.Tensor):
        if tuple(sign_vector.shape) != (d,):
            raise ValueError(f"sign_vector has shape {tuple(sign_vector.shape)}, expected ({d},)")
        return sign_vector, None
    if isinstance(sign_vector, SignVector):
        sign_vector = sign_vector.values
    if not isinstance(sign_vector, (tuple, list)):
        raise TypeError(f"sign_vector must be a SignVector, tuple, list or 1-D tensor, got {type(sign_vector).__name__}")
    if len(sign_vector) != d:
        raise ValueError(f"sign_vector has {len(sign_vector)} entries but the transform size is {d}")
    return None, [float(x) for x in sign_vector]


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "BHSD",
                 cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                 rope_interleaved: bool = False, hadamard: HadamardMode | str = HadamardMode.NONE,
                 sign_vector=None, smooth_k: bool = False, smooth_v: bool = False) -> QuantizedQKV:
    """Quantize Q, K, V to e4m3 with one float32 descale per (batch, KV head).

    q: (B, H_q, S_q, D), k and v: (B, H_kv, S_kv, D) in ``layout`` ("BHSD" or "BSHD"), bf16/fp16, any
    strides; H_q a multiple of H_kv. Q's scale is shared by each GQA group (max over its H_q/H_kv heads).
    RoPE (cos, sin of shape (S, D) or (S, D/2), S >= max(S_q, S_kv)) is applied to Q and K in fp32
    (NeoX half-split pairing, or interleaved pairs with ``rope_interleaved``); V is never RoPE'd.
    ``hadamard``: NONE, QKV (rotate Q, K, V by diag(s) H_D / sqrt(D)) or V_ONLY; D a power of two
    <= 256 then. ``sign_vector`` s: +-1 entries, length D, as a ``SignVector``, tensor, list or tuple
    (default ones; other entries raise ValueError). Payloads keep the layout (contiguous); descales
    (B, H_kv).

    Smoothing (bools, default off; costs no extra pass over memory): ``smooth_k`` quantizes
    K - c_K and ``smooth_v`` V - m, c_K and m the per-(batch, KV head, channel) float32 means over
    S_kv of the values quantized (after RoPE/Hadamard); the scale comes from the shifted values, so a
    per-channel bias no longer eats the e4m3 range. Attention with the smoothed payloads is exact:
    drop c_K (it shifts a whole score row), add ``v_mean`` (= m, (B, H_kv, D), returned only with
    ``smooth_v``; rotated like V) to the output of each query head of the KV head's group, before
    undoing a rotation of V (``attention.fp8_sdpa(..., smooth_k=True, smooth_v=True)`` does).
    A group whose fp32 sum overflows (values near 1e34 or larger) gets a NaN payload.

    Non-finite inputs (by design, not contained): each scale comes from the NaN-propagating amax of
    its group's quantized values (all S-chunks of a (batch, KV head) for K and V, of a (batch, GQA
    group of H_q/H_kv query heads) for Q, after RoPE/Hadamard). One NaN anywhere in a group makes its
    descale NaN and its *whole* payload NaN; one +-Inf (and no NaN) makes its descale +inf and its
    whole payload NaN (scale = 448/inf is never turned into 0 or a finite clamp, which would quantize
    every other value of the group to garbage without a sign). Every other group (other heads, other
    batches, the other tensors) is bit for bit what it would be without the bad value.

    Not differentiable (the library's gradient policy: differentiable only where the backward is
    another call of our kernels): with grad mode on and q, k, v, cos or sin requiring grad, ValueError
    before any launch; call it under ``torch.no_grad()`` or ``.detach()`` the inputs.

    >>> q = torch.randn(1, 4, 32, 64, dtype=torch.bfloat16)
    >>> k, v = torch.randn(2, 1, 2, 32, 64, dtype=torch.bfloat16)
    >>> r = quantize_qkv(q, k, v, hadamard="QKV")
    >>> r.q.dtype, tuple(r.q_descale.shape), tuple(r.v.shape)
    (torch.float8_e4m3fn, (1, 2), (1, 2, 32, 64))
    >>> tuple(quantize_qkv(q, k, v, smooth_k=True, smooth_v=True).v_mean.shape)  # (B, H_kv, D)
    (1, 2, 64)
    """
    mode = _mode(hadamard)
    group = _validate_qkv(q, k, v, layout, cos, sin)
    if type(smooth_k) is not bool or type(smooth_v) is not bool:
        _check_smooth(smooth_k, smooth_v)
    had_qk, had_v = mode == HadamardMode.QKV, mode != HadamardMode.NONE
    d = q.shape[-1]
    if torch.compiler.is_compiling():
        sign, values = _op_sign(sign_vector, d) if had_v else (None, None)
        res = _quantize_qkv_op(q, k, v, layout, cos, sin, bool(rope_interleaved) and cos is not None, had_qk, had_v,
                               sign, values, smooth_k, smooth_v)
        return QuantizedQKV(*res[:6], res[6] if smooth_v else None)
    spec = _spec(layout, d, cos, rope_interleaved, had_qk, had_v, sign_vector, smooth_k, smooth_v)
    res = quantize_launch([q, k, v], group, cos, sin, spec)
    return QuantizedQKV(*res[0], *res[1], res[2][1] if smooth_v else None)


def quantize_per_head(x: torch.Tensor, group_size: int = 1, *, layout: str = "BHSD",
                      cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                      rope_interleaved: bool = False, hadamard: bool | HadamardMode | str = False,
                      sign_vector=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one (B, H, S, D) / (B, S, H, D) tensor with one scale per (batch, group of
    ``group_size`` consecutive heads). Returns (payload e4m3 in ``layout``, descale (B, H/group_size) fp32).
    ``hadamard``: True (or HadamardMode.QKV / V_ONLY) rotates by diag(s) H_D / sqrt(D), s = ``sign_vector``
    (as for ``quantize_qkv``). Non-finite values and gradients as for ``quantize_qkv``: a NaN/Inf
    poisons its group (descale NaN / +inf, whole payload NaN), other groups are untouched; inputs
    requiring grad (grad mode on) raise ValueError before any launch.

    >>> x = torch.randn(2, 4, 16, 64, dtype=torch.bfloat16)
    >>> payload, descale = quantize_per_head(x, group_size=2)
    >>> payload.dtype, tuple(descale.shape)
    (torch.float8_e4m3fn, (2, 2))
    """
    if isinstance(hadamard, (HadamardMode, str)):
        hadamard = _mode(hadamard) != HadamardMode.NONE
    hadamard = bool(hadamard)
    group_size = int(group_size)
    _validate_per_head(x, group_size, layout, cos, sin)
    d = x.shape[-1]
    if torch.compiler.is_compiling():
        sign, values = _op_sign(sign_vector, d) if hadamard else (None, None)
        return _quantize_per_head_op(x, group_size, layout, cos, sin, bool(rope_interleaved) and cos is not None,
                                     hadamard, sign, values)
    spec = _spec(layout, d, cos, rope_interleaved, hadamard, False, sign_vector)
    outs, ds = quantize_launch([x], group_size, cos, sin, spec)
    return outs[0], ds[0]


def dequantize_per_head(x_fp8: torch.Tensor, descale: torch.Tensor, *, layout: str = "BHSD", group_size: int = 1,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_fp8 * descale (one per (batch, head group)), in ``dtype`` (default float32). The inverse
    Hadamard, if one was applied, is the caller's: multiply by (diag(s) H_D / sqrt(D))^T.

    >>> x = torch.randn(1, 2, 16, 64, dtype=torch.bfloat16)
    >>> payload, descale = quantize_per_head(x)
    >>> back = dequantize_per_head(payload, descale)  # float32
    >>> float((back - x.float()).norm() / x.float().norm()) < 0.05  # e4m3: 3 mantissa bits
    True
    """
    if not isinstance(x_fp8, torch.Tensor) or not isinstance(descale, torch.Tensor):
        raise TypeError("x_fp8 and descale must be torch.Tensors")
    if x_fp8.dtype != torch.float8_e4m3fn:
        raise TypeError(f"x_fp8 must be float8_e4m3fn, got {x_fp8.dtype}")
    if x_fp8.dim() != 4:
        raise ValueError(f"x_fp8 must be 4-D ({layout}), got shape {tuple(x_fp8.shape)}")
    _check_layout(layout)
    b, h, s, d = bhsd_dims(x_fp8, layout)
    if descale.shape != (b, h // max(group_size, 1)) or group_size < 1 or h % group_size:
        raise ValueError(f"descale must have shape (B, H / group_size) = ({b}, {h // max(group_size, 1)}), "
                         f"got {tuple(descale.shape)} for x {tuple(x_fp8.shape)} ({layout}), group_size={group_size}")
    ds = descale.to(torch.float32).repeat_interleave(group_size, dim=1)
    ds = ds[:, :, None, None] if layout == "BHSD" else ds[:, None, :, None]
    return (x_fp8.to(torch.float32) * ds).to(dtype)
