"""``apply_low_precision_attention``: run a model with its SDPA calls routed to ``fp8_sdpa``.

Routing design: a ``torch.overrides.TorchFunctionMode`` entered only inside the wrapper's ``forward``.
``F.scaled_dot_product_attention`` is a builtin that dispatches ``__torch_function__`` modes, so the
mode sees each call and either serves it in FP8 or hands it, unchanged, to the original function.
Why a mode rather than swapping ``F.scaled_dot_product_attention``:
- nothing process-global is modified: torch keeps the mode stack per thread, so other threads and the
  unwrapped model (even the same module object called directly) see plain SDPA;
- the ``with`` block pops the mode on exceptions, so no state survives an error;
- torch.compile (dynamo) traces function modes, so ``torch.compile(wrapped, fullgraph=True)`` captures
  the routing without graph breaks (a ContextVar-consulting patch does not trace: dynamo cannot call
  ``ContextVar.set``). The FP8 path is made of custom ops with fake implementations.
Cost: in eager mode every torch function called inside the wrapped forward passes through one Python
``__torch_function__`` call (a few microseconds each); under torch.compile it is traced away.

Calls the FP8 path cannot serve (a mask, dropout, an unsupported head dim or dtype, inputs requiring
grad) go to the original SDPA with ``unsupported="fallback"`` (counted, warned once per wrapper) or
raise ValueError with ``unsupported="raise"``. A mask is never dropped or replaced. A missing backend
(no FA3/FA4 for the device and no explicit ``FP8_REFERENCE``) is an error, never a bf16 fallback.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attention.backends import AttentionBackend, as_backend, resolve_backend
from attention.sdpa import _as_mode, _resolve_sign, fp8_sdpa, unsupported_reason
from fp8_quant import HadamardMode

_SDPA = F.scaled_dot_product_attention
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def _bind(args, kwargs) -> Optional[dict]:
    """SDPA's arguments by name, or None when the call has arguments SDPA itself would reject."""
    if len(args) > len(_SDPA_ARGS):
        return None
    bound = dict(_SDPA_DEFAULTS)
    bound.update(zip(_SDPA_ARGS, args))
    for name, val in kwargs.items():
        if name not in _SDPA_ARGS:
            return None
        bound[name] = val
    if any(name not in bound for name in _SDPA_ARGS[:3]):
        return None
    return bound


class _SDPARouter(TorchFunctionMode):
    def __init__(self, owner: "LowPrecisionAttention"):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            return self.owner._route(args, kwargs)
        return func(*args, **kwargs)


class LowPrecisionAttention(torch.nn.Module):
    """Runs ``model`` with every ``F.scaled_dot_product_attention`` call in FP8 where possible.

    Counters: ``fp8_calls`` (served by ``fp8_sdpa``), ``fallback_calls`` (handed to the original
    SDPA); ``reset_counters()`` zeroes them. Counts are exact in eager mode; under torch.compile they
    count the calls seen while tracing.
    """

    def __init__(self, model: torch.nn.Module, backend=None, hadamard=HadamardMode.NONE,
                 unsupported: str = "fallback", sign_vector=None):
        super().__init__()
        if unsupported not in ("fallback", "raise"):
            raise ValueError(f"unsupported must be 'fallback' or 'raise', got {unsupported!r}")
        self.model = model
        self.backend = None if backend is None else as_backend(backend)
        self.hadamard = _as_mode(hadamard)
        self.unsupported = unsupported
        # validated once here (+-1 entries; the length is checked against each call's head dim)
        self.sign_vector = None if sign_vector is None else _resolve_sign(sign_vector, None, self.hadamard)
        self.fp8_calls = 0
        self.fallback_calls = 0
        self._warned = False

    def reset_counters(self) -> None:
        self.fp8_calls = 0
        self.fallback_calls = 0

    def forward(self, *args, **kwargs):
        with _SDPARouter(self):
            return self.model(*args, **kwargs)

    def _route(self, args, kwargs):
        bound = _bind(args, kwargs)
        if bound is None:  # let SDPA raise its own error for a malformed call
            return _SDPA(*args, **kwargs)
        query = bound["query"]
        backend = resolve_backend(self.backend, query.device)  # RuntimeError: no backend (never bf16)
        why = unsupported_reason(**bound, backend=backend, hadamard=self.hadamard)
        if why is None:
            self.fp8_calls += 1
            return fp8_sdpa(**bound, hadamard=self.hadamard, backend=backend, sign_vector=self.sign_vector)
        if self.unsupported == "raise":
            raise ValueError(f"apply_low_precision_attention: SDPA call cannot run in FP8: {why}")
        self.fallback_calls += 1
        if not self._warned and not torch.compiler.is_compiling():
            self._warned = True
            warnings.warn(f"apply_low_precision_attention: an SDPA call runs in the original precision "
                          f"({why}); further fallbacks of this module are counted in fallback_calls, not "
                          f"warned", RuntimeWarning, stacklevel=3)
        return _SDPA(*args, **kwargs)


def apply_low_precision_attention(model: torch.nn.Module, backend: AttentionBackend | str | None = None,
                                  hadamard: HadamardMode | str = HadamardMode.NONE,
                                  unsupported: str = "fallback",
                                  sign_vector=None) -> LowPrecisionAttention:
    """A module whose forward runs ``model`` with SDPA calls routed to ``fp8_sdpa`` (see the module
    docstring). ``model`` itself is not modified; calling it directly still runs plain SDPA."""
    return LowPrecisionAttention(model, backend=backend, hadamard=hadamard, unsupported=unsupported,
                                 sign_vector=sign_vector)
