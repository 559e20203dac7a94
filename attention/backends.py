"""Which FP8 attention kernel runs a call: the backend enum, provider lookup, head-dim tables.

- FA3 (Hopper, SM90): ``flash_attn_func`` from the first provider that imports, in this order:
  ``flash_attn_interface`` (the official ``flash_attn_3`` built from flash-attention's ``hopper/``),
  then ``fa3_fwd_interface`` (PyPI ``fa3-fwd``, a forward-only repackaging of the same kernels).
- FA4 (Blackwell, SM100): ``flash_attn.cute.interface._flash_attn_fwd`` (``flash-attn-4``).
- FP8_REFERENCE: runs anywhere (CPU included); the accuracy reference, not fast.

Imports are lazy and cached (one attempt per process); nothing process-global is changed to make a
call. ``backend=None`` picks FA4 on SM100 when flash-attn-4 imports, FA3 on SM90 when an FA3 provider
imports, and otherwise raises a RuntimeError that says what is missing and how to get it: there is
never a silent fallback to bf16 attention.
"""

from __future__ import annotations

import enum
import functools
import importlib
from typing import Any, Callable, Optional

import torch

from hadamard_kernels.runtime import device_capability


class AttentionBackend(str, enum.Enum):
    FP8_FA3 = "fp8_fa3"
    FP8_FA4 = "fp8_fa4"
    FP8_REFERENCE = "fp8_reference"


# Head dims each backend's FP8 forward kernel is built for. FA3 compiles FP8 kernels for
# 64/96/128/192/256; FP8_REFERENCE mirrors FA3 so that it can stand in for it in CI. FA4's FP8 path
# (SM100) is built for 64/96/128 here: conservative, it was never run (no Blackwell available).
HEAD_DIMS = {
    AttentionBackend.FP8_FA3: (64, 96, 128, 192, 256),
    AttentionBackend.FP8_FA4: (64, 96, 128),
    AttentionBackend.FP8_REFERENCE: (64, 96, 128, 192, 256),
}

FA3_PROVIDERS = ("flash_attn_interface", "fa3_fwd_interface")
FA4_MODULE = "flash_attn.cute.interface"

FA3_HOWTO = ("install an FA3 provider: the official flash_attn_3 (build flash-attention's hopper/ "
             "directory: `cd hopper && python setup.py install`, module flash_attn_interface) or the "
             "PyPI wheel `fa3-fwd` (module fa3_fwd_interface)")
FA4_HOWTO = "install flash-attn-4 (`pip install flash-attn-4`, module flash_attn.cute; needs SM100)"


def as_backend(backend: Any) -> AttentionBackend:
    if isinstance(backend, AttentionBackend):
        return backend
    try:
        return AttentionBackend(getattr(backend, "value", backend))
    except ValueError:
        raise ValueError(f"unknown attention backend {backend!r}; one of "
                         f"{[b.value for b in AttentionBackend]}") from None


@functools.lru_cache(maxsize=None)
def _fa3_lookup() -> tuple[Optional[str], Optional[Callable], str]:
    """(module name, flash_attn_func, '') of the first FA3 provider that imports, or
    (None, None, why-not) — tried once per process."""
    errors = []
    for name in FA3_PROVIDERS:
        try:
            mod = importlib.import_module(name)
            fn = getattr(mod, "flash_attn_func")
            return name, fn, ""
        except Exception as e:  # ImportError, or a broken build raising at import: report both
            errors.append(f"{name}: {type(e).__name__}: {e}")
    return None, None, "; ".join(errors)


def fa3_provider() -> tuple[str, Callable]:
    """(module name, flash_attn_func) of the FA3 provider, or RuntimeError saying how to get one."""
    name, fn, why = _fa3_lookup()
    if fn is None:
        raise RuntimeError(f"FP8_FA3: no FA3 provider imports ({why}); {FA3_HOWTO}")
    return name, fn


def has_fa3() -> bool:
    return _fa3_lookup()[1] is not None


@functools.lru_cache(maxsize=None)
def _fa4_lookup() -> tuple[Optional[Callable], str]:
    try:
        mod = importlib.import_module(FA4_MODULE)
        return getattr(mod, "_flash_attn_fwd"), ""
    except Exception as e:
        return None, f"{FA4_MODULE}: {type(e).__name__}: {e}"


def fa4_forward() -> Callable:
    fn, why = _fa4_lookup()
    if fn is None:
        raise RuntimeError(f"FP8_FA4: flash-attn-4 does not import ({why}); {FA4_HOWTO}")
    return fn


def has_fa4() -> bool:
    return _fa4_lookup()[0] is not None


def clear_provider_cache() -> None:
    """Forget the cached provider lookups (tests inject stand-in modules)."""
    _fa3_lookup.cache_clear()
    _fa4_lookup.cache_clear()


def _major(device: torch.device) -> int:
    return device_capability(device)[0] if device.type == "cuda" else 0


def check_hardware(backend: AttentionBackend, device: torch.device) -> None:
    """RuntimeError when ``backend`` cannot run on ``device`` (wrong device or architecture)."""
    if backend == AttentionBackend.FP8_REFERENCE:
        return
    major = _major(device)
    if backend == AttentionBackend.FP8_FA3 and major != 9:
        raise RuntimeError(f"FP8_FA3 runs on Hopper (SM90) only; tensors are on {device} "
                           f"(compute capability major {major}). Use FP8_FA4 on SM100, or "
                           f"FP8_REFERENCE (slow, for accuracy checks) elsewhere")
    if backend == AttentionBackend.FP8_FA4 and major != 10:
        raise RuntimeError(f"FP8_FA4 runs on Blackwell (SM100) only: flash-attn-4's FP8 forward asserts "
                           f"elsewhere; tensors are on {device} (compute capability major {major}). "
                           f"Use FP8_FA3 on SM90, or FP8_REFERENCE (slow) elsewhere")


def resolve_backend(backend: Any, device: torch.device) -> AttentionBackend:
    """The backend for a call on ``device``: the given one (checked against the hardware), or the
    automatic choice for ``backend=None`` (FA4 on SM100, FA3 on SM90); RuntimeError otherwise."""
    b = None if backend is None else as_backend(backend)
    return _BY_VALUE[_resolve(None if b is None else b.value, device)]


_BY_VALUE = {b.value: b for b in AttentionBackend}


# Depends only on the hardware and the importable providers, which do not change within a process:
# torch.compile evaluates it once while tracing and keeps the answer as a constant (dynamo cannot
# trace imports and device queries).
@torch.compiler.assume_constant_result
def _resolve(backend_value: Optional[str], device: torch.device) -> str:
    if backend_value is not None:
        b = AttentionBackend(backend_value)
        check_hardware(b, device)
        if b == AttentionBackend.FP8_FA3:
            fa3_provider()
        elif b == AttentionBackend.FP8_FA4:
            fa4_forward()
        return b.value
    major = _major(device)
    if major == 10:
        if has_fa4():
            return AttentionBackend.FP8_FA4.value
        raise RuntimeError(f"no FP8 attention backend on {device} (SM100): {_fa4_lookup()[1]}; {FA4_HOWTO}. "
                           f"Pass backend=AttentionBackend.FP8_REFERENCE for the slow reference")
    if major == 9:
        if has_fa3():
            return AttentionBackend.FP8_FA3.value
        raise RuntimeError(f"no FP8 attention backend on {device} (SM90): no FA3 provider imports "
                           f"({_fa3_lookup()[2]}); {FA3_HOWTO}. Pass backend=AttentionBackend.FP8_REFERENCE "
                           f"for the slow reference")
    raise RuntimeError(f"no FP8 attention backend for tensors on {device}"
                       + (f" (compute capability major {major})" if device.type == "cuda" else "")
                       + ": FP8_FA3 needs a Hopper GPU (SM90) and " + FA3_HOWTO + "; FP8_FA4 needs a "
                       "Blackwell GPU (SM100) and " + FA4_HOWTO + ". Pass backend=AttentionBackend."
                       "FP8_REFERENCE for the slow float32 reference (runs anywhere); there is no "
                       "silent bf16 fallback")
