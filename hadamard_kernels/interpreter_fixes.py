"""The library's shared layer: fixes for numerical bugs of Triton's CPU interpreter (``TRITON_INTERPRET=1``), triton 3.6.

Applied by ``hadamard_kernels.runtime`` only when the interpreter is on; compiled kernels never see this.
The interpreter stores bf16 as uint16 and fp8 as uint8 numpy arrays, and gets three things wrong:

1. ``tl.dot`` with bf16 operands multiplies the raw uint16 bit patterns.
2. fp32 -> bf16 casts (``create_fp_trunc``, also the implicit cast of ``tl.store``) truncate
   instead of rounding to nearest even.
3. Casts to ``tl.float8e4nv`` do not carry a mantissa overflow into the exponent, round ties up,
   and do not saturate; casts from it read the NaN encoding as 480, and so does ``tl.dot`` with
   e4m3 operands (a NaN payload gives finite products).
4. With numpy >= 2.4, a runtime scalar used as a loop bound (``for i in range(n)``,
   ``tl.range(0, n)``) fails: the interpreter's ``tensor.__index__`` calls ``int()`` on a
   1-element array, which numpy now refuses ("only 0-dimensional arrays can be converted").

Each fix does the conversion through torch, which rounds to nearest even; downcasts to e4m3 clamp
to +-448 first, as the GPU's ``cvt.rn.satfinite`` does (NaN stays NaN). ``tests/test_interpreter_fixes.py``
checks every fix bit for bit against torch and fails once upstream Triton no longer needs it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

_E4M3_MAX = 448.0
_applied = False


def _np_to_torch(data: np.ndarray, tl_dtype) -> torch.Tensor:
    import triton.language as tl

    t = torch.from_numpy(np.ascontiguousarray(data))
    if tl_dtype == tl.bfloat16:
        return t.view(torch.int16).view(torch.bfloat16) if t.dtype != torch.int16 else t.view(torch.bfloat16)
    if tl_dtype == tl.float8e4nv:
        return t.view(torch.uint8).view(torch.float8_e4m3fn)
    return t


def _torch_to_np(t: torch.Tensor, tl_dtype) -> np.ndarray:
    import triton.language as tl

    if tl_dtype == tl.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    if tl_dtype == tl.float8e4nv:
        return t.contiguous().view(torch.uint8).numpy()
    return t.numpy()


def _torch_dtype(tl_dtype):
    import triton.language as tl

    return {
        tl.float64: torch.float64,
        tl.float32: torch.float32,
        tl.float16: torch.float16,
        tl.bfloat16: torch.bfloat16,
        tl.float8e4nv: torch.float8_e4m3fn,
    }.get(tl_dtype)


def convert(data: np.ndarray, src_tl, dst_tl) -> np.ndarray:
    """Convert interpreter storage ``data`` from ``src_tl`` to ``dst_tl`` the way the GPU does."""
    import triton.language as tl

    src = _np_to_torch(data, src_tl)
    dst_dtype = _torch_dtype(dst_tl)
    if dst_tl == tl.float8e4nv:
        src = src.float().clamp(-_E4M3_MAX, _E4M3_MAX)  # satfinite; clamp keeps NaN
    out = src.to(dst_dtype)
    return _torch_to_np(out, dst_tl).reshape(data.shape)


def apply() -> None:
    """Patch the interpreter's builder (idempotent)."""
    global _applied
    if _applied:
        return
    import triton.language as tl
    from triton.runtime import interpreter as interp

    builder_cls = interp.InterpreterBuilder
    handled = (tl.float64, tl.float32, tl.float16, tl.bfloat16, tl.float8e4nv)
    orig_cast_impl = builder_cls.cast_impl
    orig_fp_to_fp = builder_cls.create_fp_to_fp
    orig_dot = builder_cls.create_dot

    def cast_impl(self, src, dst_type):
        s, d = src.dtype.scalar, dst_type.scalar
        if (s == tl.bfloat16 or d == tl.bfloat16) and s in handled and d in handled:
            return interp.TensorHandle(convert(src.data, s, d), d)
        return orig_cast_impl(self, src, dst_type)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        s, d = src.dtype.scalar, dst_type.scalar
        rtne = rounding_mode is None or rounding_mode == interp._ir.ROUNDING_MODE.RTNE
        if (s == tl.float8e4nv or d == tl.float8e4nv) and s in handled and d in handled and rtne:
            return interp.TensorHandle(convert(src.data, s, d), d)
        return orig_fp_to_fp(self, src, dst_type, rounding_mode)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar in (tl.bfloat16, tl.float8e4nv) or b.dtype.scalar in (tl.bfloat16, tl.float8e4nv):
            # both operands as exact fp32 values (e4m3 and bf16 widen exactly; NaN stays NaN)
            a_f = convert(a.data, a.dtype.scalar, tl.float32) if a.dtype.scalar in handled else a.data
            b_f = convert(b.data, b.dtype.scalar, tl.float32) if b.dtype.scalar in handled else b.data
            a = interp.TensorHandle(a_f.astype(np.float32), tl.float32)
            b = interp.TensorHandle(b_f.astype(np.float32), tl.float32)
        return orig_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    orig_patch_tensor = interp._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        orig_patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interp._patch_lang_tensor = _patch_lang_tensor
    _MODULE_ORIGINALS["_patch_lang_tensor"] = orig_patch_tensor
    _MODULE_FIXED["_patch_lang_tensor"] = _patch_lang_tensor
    _ORIGINALS.update(cast_impl=orig_cast_impl, create_fp_to_fp=orig_fp_to_fp, create_dot=orig_dot)
    _FIXED.update(cast_impl=cast_impl, create_fp_to_fp=create_fp_to_fp, create_dot=create_dot)
    _install(_FIXED)
    _applied = True


_ORIGINALS: dict = {}
_FIXED: dict = {}
_MODULE_ORIGINALS: dict = {}
_MODULE_FIXED: dict = {}


def _install(methods: dict, module_functions: dict | None = None) -> None:
    from triton.runtime import interpreter as interp

    for name, fn in methods.items():
        setattr(interp.InterpreterBuilder, name, fn)
    for name, fn in (module_functions or {}).items():
        setattr(interp, name, fn)


@contextlib.contextmanager
def unfixed():
    """Run a block with the interpreter's original (buggy) methods; used by the test that notices
    when upstream Triton fixes the bugs and the shim can go."""
    if not _applied:
        yield
        return
    _install(_ORIGINALS, _MODULE_ORIGINALS)
    try:
        yield
    finally:
        _install(_FIXED, _MODULE_FIXED)
