"""Which FP8 attention kernel runs a call: the backend enum, provider lookup, head-dim tables.

- FA3 (Hopper, SM90): the first provider that imports, in this order: ``flash_attn_interface`` (the
  official ``flash_attn_3`` built from flash-attention's ``hopper/``), then ``fa3_fwd_interface`` (PyPI
  ``fa3-fwd``, a forward-only repackaging of the same kernels). Both wrap one C++ op,
  ``torch.ops.flash_attn_3.fwd`` / ``torch.ops.fa3_fwd.fwd``, in ``flash_attn_func`` -> an autograd
  Function -> a ``torch.library.custom_op`` -> the C++ op: ~86-96 us of Python per call on the H200
  host. ``fa3_forward()`` calls the C++ op directly with the arguments ``flash_attn_func`` would pass,
  when the op's schema (argument names and types, checked once at lookup) is ``FA3_FWD_SCHEMA``, and
  ``flash_attn_func`` otherwise; ``fa3_call_path()`` says which.
- FA4 (Blackwell, SM100): ``flash_attn.cute.interface._flash_attn_fwd`` (``flash-attn-4``).
- FP8_TRITON: the library's own Triton kernel (``attention.triton_fp8``): SM89 and newer (FP8
  tensor-core dots), or the CPU interpreter; takes attention masks. Only when asked for.
- FP8_REFERENCE: runs anywhere (CPU included); the accuracy reference, not fast.

Imports are lazy and cached (one attempt per process); nothing process-global is changed to make a
call. ``backend=None`` picks FA4 on SM100 when flash-attn-4 imports, FA3 on SM90 when an FA3 provider
imports, and otherwise raises a RuntimeError that says what is missing and how to get it: there is
never a silent fallback to bf16 attention. FP8_TRITON is never picked automatically.
"""

from __future__ import annotations

import enum
import functools
import importlib
from typing import Any, Callable, Optional

import torch

from hadamard_kernels.runtime import device_capability, is_interpreter


class AttentionBackend(str, enum.Enum):
    """The FP8 forward kernel of a call: ``FP8_FA3`` (Hopper), ``FP8_FA4`` (Blackwell), ``FP8_TRITON``
    (the library's Triton kernel, SM89+, masks) or ``FP8_REFERENCE`` (float32 PyTorch, anywhere). Given as
    the enum or a string in any case (``"fp8_fa3"``, ``"FP8_FA3"``: torchao's spelling works unchanged).

    >>> AttentionBackend("FP8_FA3") is AttentionBackend.FP8_FA3
    True
    """

    FP8_FA3 = "fp8_fa3"
    FP8_FA4 = "fp8_fa4"
    FP8_TRITON = "fp8_triton"
    FP8_REFERENCE = "fp8_reference"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


# Head dims each backend's FP8 forward kernel is built for. FA3 compiles FP8 kernels for
# 64/96/128/192/256; FP8_REFERENCE mirrors FA3 so that it can stand in for it in CI. FA4's FP8 path
# (SM100) is built for 64/96/128 here: conservative, it was never run (no Blackwell available).
# FP8_TRITON runs 96/192 as 128/256 with masked columns.
HEAD_DIMS = {
    AttentionBackend.FP8_FA3: (64, 96, 128, 192, 256),
    AttentionBackend.FP8_FA4: (64, 96, 128),
    AttentionBackend.FP8_TRITON: (64, 96, 128, 192, 256),
    AttentionBackend.FP8_REFERENCE: (64, 96, 128, 192, 256),
}

FA3_PROVIDERS = ("flash_attn_interface", "fa3_fwd_interface")
FA4_MODULE = "flash_attn.cute.interface"
# The module attribute that holds the provider's op namespace (torch.ops.flash_attn_3 / torch.ops.fa3_fwd).
FA3_OP_NAMESPACE_ATTRS = ("flash_attn_3_gpu", "fa3_fwd_cuda")
# ``fwd``'s schema in fa3-fwd 0.0.3 (fa3_fwd/_C.abi3.so) and in flash-attention's hopper/flash_api_stable.cpp
# (flash_attn_3): the same 34 arguments. The direct call below passes them positionally.
FA3_FWD_SCHEMA = (
    "fwd(Tensor q, Tensor k, Tensor v, Tensor(k_new!)? k_new=None, Tensor(v_new!)? v_new=None, Tensor? q_v=None, "
    "Tensor(out!)? out=None, Tensor? cu_seqlens_q=None, Tensor? cu_seqlens_k=None, Tensor? cu_seqlens_k_new=None, "
    "Tensor? seqused_q=None, Tensor? seqused_k=None, int? max_seqlen_q=None, int? max_seqlen_k=None, "
    "Tensor? page_table=None, Tensor? kv_batch_idx=None, Tensor? leftpad_k=None, Tensor? rotary_cos=None, "
    "Tensor? rotary_sin=None, Tensor? seqlens_rotary=None, Tensor? q_descale=None, Tensor? k_descale=None, "
    "Tensor? v_descale=None, float? softmax_scale=None, bool is_causal=False, int window_size_left=-1, "
    "int window_size_right=-1, int attention_chunk=0, float softcap=0.0, bool is_rotary_interleaved=False, "
    "Tensor? scheduler_metadata=None, int num_splits=0, bool? pack_gqa=None, int sm_margin=0) "
    "-> (Tensor(out!), Tensor, Tensor, Tensor)")
_FA3_NONES = (None,) * 17  # k_new .. seqlens_rotary

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


def _signature(schema) -> list[tuple[str, str]]:
    return [(a.name, str(a.type)) for a in schema.arguments]


def _fa3_direct_op(module_name: str) -> tuple[Optional[Any], str]:
    """The provider's C++ ``fwd`` overload when its schema is ``FA3_FWD_SCHEMA`` (else None), and why."""
    mod = importlib.import_module(module_name)
    for attr in FA3_OP_NAMESPACE_ATTRS:
        op = getattr(getattr(getattr(mod, attr, None), "fwd", None), "default", None)
        schema = getattr(op, "_schema", None)
        if schema is None:
            continue
        if _signature(schema) != _signature(torch._C.parse_schema(FA3_FWD_SCHEMA)):
            return None, f"{module_name}.{attr}.fwd has another schema ({schema}): flash_attn_func"
        return op, f"direct: {module_name}.{attr}.fwd ({schema.name})"
    return None, f"{module_name} exposes no fwd op ({'/'.join(FA3_OP_NAMESPACE_ATTRS)}): flash_attn_func"


def _fa3_via_op(op: Any) -> Callable:
    def call(q, k, v, q_descale, k_descale, v_descale, scale: float, causal: bool) -> torch.Tensor:
        # Exactly what fa3's flash_attn_func -> FlashAttnFunc -> _flash_attn_forward passes (window
        # (-1, -1), attention_chunk 0, softcap 0, rotary_interleaved True, num_splits 1, pack_gqa None,
        # sm_margin 0); its maybe_contiguous() calls are no-ops here: every payload has a unit last stride.
        return op(q, k, v, *_FA3_NONES, q_descale, k_descale, v_descale, scale, causal,
                  -1, -1, 0, 0.0, True, None, 1, None, 0)[0]
    return call


def _fa3_via_func(fn: Callable) -> Callable:
    def call(q, k, v, q_descale, k_descale, v_descale, scale: float, causal: bool) -> torch.Tensor:
        out = fn(q, k, v, softmax_scale=scale, causal=causal, q_descale=q_descale, k_descale=k_descale,
                 v_descale=v_descale)
        # Some FA3 builds return (out, softmax_lse); others the output alone.
        return out[0] if isinstance(out, (tuple, list)) else out
    return call


@functools.lru_cache(maxsize=None)
def _fa3_forward_lookup() -> tuple[Callable, str]:
    name, fn = fa3_provider()
    try:
        op, path = _fa3_direct_op(name)
    except Exception as e:  # a provider whose namespace cannot be inspected: use its Python wrapper
        op, path = None, f"{name}: {type(e).__name__}: {e}: flash_attn_func"
    return (_fa3_via_op(op), path) if op is not None else (_fa3_via_func(fn), f"{name}.flash_attn_func ({path})")


def fa3_forward() -> Callable:
    """``call(q, k, v, q_descale, k_descale, v_descale, scale, causal) -> out`` (BSHD e4m3 in, bf16 BSHD
    out, FA's bottom-right causal) through the FA3 provider: its C++ op directly where the schema
    matches, else its ``flash_attn_func``. RuntimeError when no provider imports."""
    return _fa3_forward_lookup()[0]


def fa3_call_path() -> str:
    """How FA3 is called: ``"direct: <module>.<attr>.fwd (...)"`` or ``"<module>.flash_attn_func (why)"``."""
    return _fa3_forward_lookup()[1]


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
    _fa3_forward_lookup.cache_clear()
    _fa4_lookup.cache_clear()
    _RESOLVED.clear()


def _major(device: torch.device) -> int:
    return device_capability(device)[0] if device.type == "cuda" else 0


def check_hardware(backend: AttentionBackend, device: torch.device) -> None:
    """RuntimeError when ``backend`` cannot run on ``device`` (wrong device or architecture)."""
    if backend == AttentionBackend.FP8_REFERENCE:
        return
    if backend == AttentionBackend.FP8_TRITON:
        if device.type == "cuda":
            cap = device_capability(device)
            if cap < (8, 9):
                raise RuntimeError(f"FP8_TRITON needs FP8 tensor-core dots (SM89 or newer); tensors are on {device} "
                                   f"(compute capability {cap[0]}.{cap[1]})")
        elif not (device.type == "cpu" and is_interpreter()):
            raise RuntimeError(f"FP8_TRITON runs on CUDA GPUs of SM89 or newer, or on CPU tensors under Triton's "
                               f"interpreter (TRITON_INTERPRET=1 before importing the library); tensors are on "
                               f"{device}")
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
    automatic choice for ``backend=None`` (FA4 on SM100, FA3 on SM90); RuntimeError otherwise.
    Eager calls hit a per-(backend, device) cache (successes only; ``clear_provider_cache`` empties it)."""
    if not torch.compiler.is_compiling():
        try:
            return _RESOLVED[(backend, device)]
        except (KeyError, TypeError):  # TypeError: an unhashable backend argument (as_backend rejects it)
            pass
    b = None if backend is None else as_backend(backend)
    resolved = _BY_VALUE[_resolve(None if b is None else b.value, device)]
    if not torch.compiler.is_compiling():
        _RESOLVED[(backend, device)] = resolved
    return resolved


_RESOLVED: dict = {}

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
