"""Plain PyTorch references for ``fp8_quant`` (tests and benchmarks import them; the library never
falls back to them).

The kernels compute in fp32 and the references below compute the *same fp32 operations in the same
order*, so that FP8 payloads and descales can be compared bit for bit:

- RoPE: ``y = x * cos + (+-partner) * sin`` in fp32 (partner = the other element of the pair, negated
  for the first element of a pair). The kernels are compiled with FMA contraction off so that the GPU
  rounds each product and the sum separately, as torch does here.
- Hadamard: ``x * s`` (sign vector), then the radix-2 butterfly with half-sizes 1, 2, 4, ..., D/2
  (pairs (a, b) -> (a + b, a - b)), then ``* fp32(1/sqrt(D))``. Mathematically this is
  ``x @ (diag(s) @ H_D / sqrt(D))``; ``hadamard_matrix_f64`` gives that matrix for float64 checks.
- amax over the quantized values (NaN propagates), scale = fp32(448 / amax), descale = fp32(amax / 448),
  amax < 1e-12 -> scale 1, descale 1; amax = +inf -> scale NaN (the group's payload is NaN) and
  descale inf; amax NaN -> scale and descale NaN. Values are clamped to +-448 (NaN kept) and cast
  with torch, which rounds to nearest even.
- Smoothing: given the per-(batch, head, channel) fp32 mean c, the quantized values are fl(y - c) and
  amax = max |fl(y - c)| (the plain amax max |y| where that is NaN/Inf). The kernels' c is an fp32
  sum in their own (fixed, config-dependent) order divided by S, so the tests pass the kernels' c in
  (``smoothed_values_reference``) and check c against the float64 mean (``mean_f64``) with a bound
  of the fp32 summation error; ``shifted_amax_reference`` is the kernels' amax formula,
  max over channels of max(fl(max y - c), fl(c - min y)), which equals max |fl(y - c)|.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from hadamard_kernels.matrices import sylvester_matrix

E4M3_MAX = 448.0
AMAX_EPS = 1e-12


def to_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "BHSD" else x.transpose(1, 2)


def from_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return (x if layout == "BHSD" else x.transpose(1, 2)).contiguous()


def expand_cos_sin(c: torch.Tensor, d: int, interleaved: bool) -> torch.Tensor:
    """(S, D) or compact (S, D/2) -> (S, D) float32, one angle per output column."""
    c = c.float()
    if c.shape[-1] == d:
        return c
    return c.repeat_interleave(2, dim=-1) if interleaved else torch.cat([c, c], dim=-1)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """RoPE of a (B, H, S, D) tensor in fp32. NeoX pairs (j, j + D/2); interleaved pairs (2i, 2i + 1)."""
    x = x.float()
    s, d = x.shape[-2], x.shape[-1]
    c = expand_cos_sin(cos, d, interleaved)[:s]
    sn = expand_cos_sin(sin, d, interleaved)[:s]
    j = torch.arange(d, device=x.device)
    if interleaved:
        partner, neg = j ^ 1, (j % 2) == 0
    else:
        partner, neg = (j + d // 2) % d, j < d // 2
    p = x[..., partner]
    p = torch.where(neg, -p, p)
    return x * c + p * sn


def hadamard_reference(x: torch.Tensor, sign_vector: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x @ (diag(s) H_D / sqrt(D)) along the last dim in fp32, in the kernels' butterfly order."""
    x = x.float()
    d = x.shape[-1]
    if sign_vector is not None:
        x = x * sign_vector.float()
    lead = x.shape[:-1]
    h = 1
    while h < d:
        y = x.reshape(*lead, d // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack([a + b, a - b], dim=-2).reshape(*lead, d)
        h *= 2
    return x * torch.tensor(1.0 / math.sqrt(d), dtype=torch.float32)


def hadamard_matrix_f64(d: int, sign_vector: Optional[torch.Tensor] = None, device=None) -> torch.Tensor:
    """diag(s) @ H_D / sqrt(D) in float64 (the orthonormal transform the kernels apply)."""
    h = sylvester_matrix(d, torch.float64, device) / math.sqrt(d)
    if sign_vector is not None:
        h = sign_vector.to(torch.float64).to(h.device)[:, None] * h
    return h


def transformed_reference(x: torch.Tensor, *, layout: str = "BHSD", cos=None, sin=None,
                          rope_interleaved: bool = False, hadamard: bool = False,
                          sign_vector=None) -> torch.Tensor:
    """The fp32 (B, H, S, D) values the kernels quantize: RoPE (if cos/sin) then Hadamard."""
    x = to_bhsd(x, layout).float()
    if cos is not None:
        x = rope_reference(x, cos, sin, rope_interleaved)
    if hadamard:
        x = hadamard_reference(x, sign_vector)
    return x


def scales_from_amax(amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, descale) in fp32 from a float32 amax, with the tiny/non-finite policy."""
    amax = amax.float()
    tiny = amax < AMAX_EPS
    # Divide in float64 and round once to fp32: that is the correctly rounded fp32 quotient (53 >= 2*24+2
    # bits, so the double rounding is innocuous). torch's fp32 ``scalar / tensor`` is not correctly
    # rounded on every backend (it may multiply by a reciprocal).
    a64 = amax.double()
    scale = torch.where(tiny, torch.ones_like(amax), (E4M3_MAX / a64).float())
    scale = torch.where(torch.isposinf(amax), torch.full_like(amax, float("nan")), scale)
    descale = torch.where(tiny, torch.ones_like(amax), (a64 / E4M3_MAX).float())
    return scale, descale


def quantize_values_reference(xt: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize fp32 (B, H, S, D) values per (batch, head group). Returns (payload, descale, scaled)
    where ``scaled`` is the fp32 value before the clamp and the FP8 cast (for rounding diagnostics)."""
    b, h, s, d = xt.shape
    g = group_size
    if b * h == 0:
        return xt.to(torch.float8_e4m3fn), torch.ones(b, h // g if g else 0, dtype=torch.float32,
                                                       device=xt.device), xt
    if s * d == 0:
        amax = torch.zeros(b, h // g, dtype=torch.float32, device=xt.device)
    else:
        amax = xt.abs().reshape(b, h // g, g * s * d).amax(-1)  # amax propagates NaN
    scale, descale = scales_from_amax(amax)
    # fp32 x fp32 is exact in float64: one rounding to fp32, the correctly rounded product
    scaled = (xt.double() * scale.double().repeat_interleave(g, dim=1)[:, :, None, None]).float()
    payload = scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)  # clamp keeps NaN
    return payload, descale, scaled


def mean_f64(xt: torch.Tensor) -> torch.Tensor:
    """The float64 mean over S of (B, H, S, D) values: (B, H, D); 0 where S = 0."""
    x = xt.double()
    return x.mean(dim=2) if x.shape[2] else x.new_zeros(x.shape[:2] + x.shape[3:])


def shifted_amax_reference(xt: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The kernels' formula for max |fl(y - c)| per (batch, head): max over channels of
    max(fl(max_s y - c), fl(c - min_s y)) in fp32. (B, H, S, D) fp32 values, (B, H, D) fp32 means."""
    c = mean.float()
    hi = xt.amax(dim=2) - c
    lo = c - xt.amin(dim=2)
    return torch.maximum(hi, lo).amax(dim=-1)


def smoothed_values_reference(xt: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize fp32 (B, H, S, D) values per (batch, head) after subtracting ``mean`` ((B, H, D), cast
    to fp32): z = fl(y - c), amax = max |z|, or the plain max |y| where that is non-finite (a NaN or
    Inf in the head: the non-finite policy). Returns (payload, descale, scaled) as
    ``quantize_values_reference``."""
    b, h, s, d = xt.shape
    z = xt - mean.float()[:, :, None, :]
    if b * h == 0 or s * d == 0:
        amax = torch.zeros(b, h, dtype=torch.float32, device=xt.device)
    else:
        plain = xt.abs().reshape(b, h, s * d).amax(-1)  # amax propagates NaN
        amax = torch.where(torch.isfinite(plain), z.abs().reshape(b, h, s * d).amax(-1), plain)
    scale, descale = scales_from_amax(amax)
    scaled = (z.double() * scale.double()[:, :, None, None]).float()
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), descale, scaled


def quantize_per_head_reference(x: torch.Tensor, group_size: int = 1, *, layout: str = "BHSD", cos=None,
                                sin=None, rope_interleaved: bool = False, hadamard: bool = False,
                                sign_vector=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(payload in ``layout``, descale (B, H / group_size) float32)."""
    xt = transformed_reference(x, layout=layout, cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                               hadamard=hadamard, sign_vector=sign_vector)
    payload, descale, _ = quantize_values_reference(xt, group_size)
    return from_bhsd(payload, layout), descale


def quantize_qkv_reference(q, k, v, *, layout="BHSD", cos=None, sin=None, rope_interleaved=False,
                           hadamard="none", sign_vector=None, smooth_k=False, smooth_v=False, k_mean=None,
                           v_mean=None):
    """(q, k, v, q_descale, k_descale, v_descale) like ``fp8_quant.quantize_qkv``; with ``smooth_v``
    a seventh item, V's mean (B, H_kv, D) float32. ``smooth_k`` / ``smooth_v`` subtract ``k_mean`` /
    ``v_mean`` (the kernels' means, for bit-exact checks) or, if None, the float64 mean rounded to
    fp32."""
    hadamard = getattr(hadamard, "value", hadamard)
    h_axis = 1 if layout == "BHSD" else 2
    group = q.shape[h_axis] // k.shape[h_axis]
    had_qk = hadamard == "qkv"
    had_v = hadamard in ("qkv", "v_only")
    kw = dict(layout=layout, sign_vector=sign_vector)
    q8, qd = quantize_per_head_reference(q, group, cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                                         hadamard=had_qk, **kw)
    if not (smooth_k or smooth_v):
        k8, kd = quantize_per_head_reference(k, 1, cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                                             hadamard=had_qk, **kw)
        v8, vd = quantize_per_head_reference(v, 1, hadamard=had_v, **kw)
        return q8, k8, v8, qd, kd, vd
    kt = transformed_reference(k, cos=cos, sin=sin, rope_interleaved=rope_interleaved, hadamard=had_qk, **kw)
    vt = transformed_reference(v, hadamard=had_v, **kw)
    out = []
    for xt, on, mean in ((kt, smooth_k, k_mean), (vt, smooth_v, v_mean)):
        if on:
            mean = (mean_f64(xt).float() if mean is None else mean.float())
            x8, xd, _ = smoothed_values_reference(xt, mean)
        else:
            x8, xd, _ = quantize_values_reference(xt, 1)
        out.append((from_bhsd(x8, layout), xd, mean))
    (k8, kd, _), (v8, vd, vm) = out
    return (q8, k8, v8, qd, kd, vd, vm) if smooth_v else (q8, k8, v8, qd, kd, vd)


def dequantize_reference(x_fp8: torch.Tensor, descale: torch.Tensor, *, layout: str = "BHSD",
                         group_size: int = 1) -> torch.Tensor:
    x = to_bhsd(x_fp8, layout).to(torch.float64)
    d = descale.to(torch.float64).repeat_interleave(group_size, dim=1)[:, :, None, None]
    return from_bhsd(x * d, layout)
