"""The library's shared layer: ``@triton.jit`` helpers that kernels of every package call (Triton and
Gluon kernels alike: ``fp8_quant.gluon_kernels`` calls ``abs_bits`` and ``e4m3_scales``).

- ``butterfly_stages(y, R, P, LOG_P)``: y @ H_P for an fp32 [R, P] register tile (unnormalized
  Sylvester H_P), as log2(P) radix-2 stages with half-sizes 1, 2, ..., P/2, each a
  reshape/permute/split/join of the tile (no scratch memory, no barrier). The order of the fp32
  additions is the one ``fp8_quant.reference.hadamard_reference`` reproduces bit for bit.
- ``abs_bits(v)``: |v| as an int32 bit pattern. For non-negative floats the bit pattern is monotone in
  the value, +inf (0x7F800000) sorts above every finite value, and a NaN with its sign bit cleared
  (>= 0x7F800001) above +inf: an integer max (``tl.maximum`` or ``tl.atomic_max`` into a
  zero-initialized int32 buffer) is a NaN-propagating max of |v|, read back with
  ``bits.to(tl.float32, bitcast=True)``. ``tl.max``/``tl.atomic_max`` on floats can drop a NaN; this
  encoding cannot. The one amax encoding of the library (``rht_amax`` and ``fp8_quant``).
- ``e4m3_scales(amax)``: (scale, descale) fp32 from a non-negative (or NaN) amax with the library's
  policy: scale = 448 / amax and descale = amax / 448, both correctly rounded (``div_rn``);
  amax < 1e-12 gives (1, 1); amax = +inf gives scale NaN (the payload becomes NaN) and descale inf;
  a NaN amax gives NaN for both. ``fp8_quant.reference.scales_from_amax`` is the PyTorch twin.
- ``to_e4m3(x, scale)``: ``(x * scale)`` cast to e4m3. Compiled on NVIDIA GPUs the cast saturates to
  +-448 and keeps NaN (``cvt.rn.satfinite``); under the interpreter ``interpreter_fixes`` makes the
  cast do the same.
"""

from __future__ import annotations

import triton
import triton.language as tl

E4M3_MAX = 448.0
AMAX_EPS = 1e-12
_E4M3_MAX_C = tl.constexpr(448.0)
_AMAX_EPS_C = tl.constexpr(1e-12)


@triton.jit
def butterfly_stages(y, R: tl.constexpr, P: tl.constexpr, LOG_P: tl.constexpr):
    # y: [R, P] fp32 -> y @ H_P. Stage s pairs element q*2h + r with q*2h + h + r (h = 2^s): view
    # [R, P/2h, 2, h], move the pair axis last, split, (a + b, a - b), join, move it back.
    for s in tl.static_range(LOG_P):
        y = tl.reshape(y, [R, P // (2 << s), 2, 1 << s])
        y = tl.permute(y, (0, 1, 3, 2))
        a, b = tl.split(y)
        y = tl.join(a + b, a - b)
        y = tl.permute(y, (0, 1, 3, 2))
        y = tl.reshape(y, [R, P])
    return y


@triton.jit
def abs_bits(v):
    # |v| as int32 bits (sign bit cleared): monotone for >= 0, NaN above +inf.
    return v.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def e4m3_scales(amax):
    tiny = amax < _AMAX_EPS_C
    big = tl.where(tiny, _E4M3_MAX_C, _E4M3_MAX_C)  # 448.0 as an fp32 tensor; Gluon has no layout-free tl.full
    scale = tl.where(tiny, 1.0, tl.math.div_rn(big, tl.where(tiny, 1.0, amax)))
    scale = tl.where(amax == float("inf"), float("nan"), scale)  # non-finite amax: payload NaN
    descale = tl.where(tiny, 1.0, tl.math.div_rn(amax, big))
    return scale, descale


@triton.jit
def to_e4m3(x, scale):
    return (x * scale).to(tl.float8e4nv)
