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


def quantize_per_head_reference(x: torch.Tensor, group_size: int = 1, *, layout: str = "BHSD", cos=None,
                                sin=None, rope_interleaved: bool = False, hadamard: bool = False,
                                sign_vector=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(payload in ``layout``, descale (B, H / group_size) float32)."""
    xt = transformed_reference(x, layout=layout, cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                               hadamard=hadamard, sign_vector=sign_vector)
    payload, descale, _ = quantize_values_reference(xt, group_size)
    return from_bhsd(payload, layout), descale


def quantize_qkv_reference(q, k, v, *, layout="BHSD", cos=None, sin=None, rope_interleaved=False,
                           hadamard="none", sign_vector=None):
    """(q, k, v, q_descale, k_descale, v_descale) like ``fp8_quant.quantize_qkv``."""
    hadamard = getattr(hadamard, "value", hadamard)
    h_axis = 1 if layout == "BHSD" else 2
    group = q.shape[h_axis] // k.shape[h_axis]
    had_qk = hadamard == "qkv"
    had_v = hadamard in ("qkv", "v_only")
    kw = dict(layout=layout, sign_vector=sign_vector)
    q8, qd = quantize_per_head_reference(q, group, cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                                         hadamard=had_qk, **kw)
    k8, kd = quantize_per_head_reference(k, 1, cos=cos, sin=sin, rope_interleaved=rope_interleaved,
                                         hadamard=had_qk, **kw)
    v8, vd = quantize_per_head_reference(v, 1, hadamard=had_v, **kw)
    return q8, k8, v8, qd, kd, vd


def dequantize_reference(x_fp8: torch.Tensor, descale: torch.Tensor, *, layout: str = "BHSD",
                         group_size: int = 1) -> torch.Tensor:
    x = to_bhsd(x_fp8, layout).to(torch.float64)
    d = descale.to(torch.float64).repeat_interleave(group_size, dim=1)[:, :, None, None]
    return from_bhsd(x * d, layout)
