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

Counters. ``fp8_calls`` / ``fallback_calls`` live in a small object outside the module (``_COUNTS``,
reached through an integer key that never changes), so dynamo never guards on them (before, the traced
``self.fp8_calls += 1`` made dynamo guard on the counter's value: one recompile per call, and
FailOnRecompileLimitHit on the ninth with ``fullgraph=True``). Eager calls bump them in ``_route``, one
per routed SDPA call. Under torch.compile the router tallies the routes of the traced forward in a list
created inside the trace (constants at trace time), and ``forward`` hands the tallies to ``_count``, a
function registered in ``torch._dynamo.config.reorderable_logging_functions``: dynamo neither traces it
nor guards on what it touches, it replays the call after every run of the compiled graph (Python after
the graph, so also with ``mode="reduce-overhead"``'s CUDA graphs). Counts are therefore exact per call in
both modes, provided the wrapper is the object handed to ``torch.compile``: dynamo replays such calls
only from the frame it compiles, so a wrapper compiled as a submodule of a larger compiled model, or
under ``torch.export``, does not count its compiled calls. The registration adds one function of this
module to that set at import; it changes nothing else.

Masked calls (an ``attn_mask``) run in FP8 only where the user chose a backend for them,
``masked_backend=AttentionBackend.FP8_TRITON`` (or FP8_REFERENCE, the slow reference): they go to
``fp8_sdpa(..., backend=masked_backend)`` and are counted in ``masked_fp8_calls``. Without it, or when
that backend cannot serve the call, they fall back like any other call. Calls the FP8 path cannot
serve (a mask without ``masked_backend``, dropout, an unsupported head dim or dtype, inputs requiring
grad) go to the original SDPA with ``unsupported="fallback"`` (counted, warned once per wrapper) or
raise ValueError with ``unsupported="raise"``. A mask is never dropped or replaced. A missing backend
(no FA3/FA4 for the device and no explicit ``FP8_REFERENCE``) is an error, never a bf16 fallback.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attention.backends import AttentionBackend, as_backend, resolve_backend
from attention.sdpa import fp8_sdpa
from attention.validation import _as_mode, _resolve_sign, unsupported_reason
from attention.smoothing import check_smooth
from attention.triton_fp8 import MASK_BACKENDS
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


class _Counts:
    __slots__ = ("fp8", "fallback", "masked")

    def __init__(self):
        self.fp8 = 0
        self.fallback = 0
        self.masked = 0


_COUNTS: dict[int, _Counts] = {}  # wrapper key -> its counts (the entry goes with its wrapper)
_KEYS = itertools.count()


def _count(key: int, fp8: int, fallback: int, masked: int = 0) -> None:
    """Add one compiled forward's routed calls to wrapper ``key``'s counters (replayed after the graph)."""
    counts = _COUNTS.get(key)
    if counts is not None:
        counts.fp8 += fp8
        counts.fallback += fallback
        counts.masked += masked


torch._dynamo.config.reorderable_logging_functions.add(_count)


class _SDPARouter(TorchFunctionMode):
    def __init__(self, owner: "LowPrecisionAttention", tally: list):
        super().__init__()
        self.owner = owner
        self.tally = tally  # [fp8, fallback, masked fp8] of this forward (used under torch.compile)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            return self.owner._route(args, kwargs, self.tally)
        return func(*args, **kwargs)


class LowPrecisionAttention(torch.nn.Module):
    """Runs ``model`` with every ``F.scaled_dot_product_attention`` call in FP8 where possible.

    Counters, one per path: ``fp8_calls`` (unmasked calls served by ``fp8_sdpa``), ``masked_fp8_calls``
    (calls with an ``attn_mask`` served by ``fp8_sdpa`` on ``masked_backend``), ``fallback_calls``
    (handed to the original SDPA); ``reset_counters()`` zeroes them. Exact per call in eager mode and
    under torch.compile (each run of the compiled wrapper counts its routed calls, tracing itself counts
    nothing); they are never guarded on, so they cause no recompiles (module docstring). Not counted
    under torch.export.

    >>> class Attention(torch.nn.Module):
    ...     def forward(self, q, k, v):
    ...         return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    >>> model = LowPrecisionAttention(Attention(), backend="FP8_REFERENCE")
    >>> q = k = v = torch.randn(1, 2, 16, 64, dtype=torch.bfloat16)
    >>> _ = model(q, k, v)
    >>> _ = model(q.float(), k.float(), v.float())  # float32: the original SDPA (warned once)
    >>> model.fp8_calls, model.fallback_calls
    (1, 1)
    >>> model.reset_counters()
    """

    def __init__(self, model: torch.nn.Module, backend=None, hadamard=HadamardMode.NONE,
                 unsupported: str = "fallback", sign_vector=None, masked_backend=None, smooth_k: bool = False,
                 smooth_v: bool = False):
        super().__init__()
        if unsupported not in ("fallback", "raise"):
            raise ValueError(f"unsupported must be 'fallback' or 'raise', got {unsupported!r}")
        check_smooth("apply_low_precision_attention", smooth_k, smooth_v)
        self.smooth_k, self.smooth_v = smooth_k, smooth_v  # fp8_sdpa's exact K/V smoothing, every routed call
        self.model = model
        self.backend = None if backend is None else as_backend(backend)
        self.masked_backend = None if masked_backend is None else as_backend(masked_backend)
        if self.masked_backend is not None and self.masked_backend not in MASK_BACKENDS:
            raise ValueError(f"masked_backend must be one of {[b.value for b in MASK_BACKENDS]} (the kernels that "
                             f"take attn_mask), got {self.masked_backend.value}")
        self.hadamard = _as_mode(hadamard)
        self.unsupported = unsupported
        # validated once here (+-1 entries; the length is checked against each call's head dim)
        self.sign_vector = None if sign_vector is None else _resolve_sign(sign_vector, None, self.hadamard)
        self._counts = _Counts()
        self._count_key = next(_KEYS)  # a constant int: what the traced code passes to _count
        _COUNTS[self._count_key] = self._counts
        weakref.finalize(self, _COUNTS.pop, self._count_key, None)
        self._warned = False

    @property
    def fp8_calls(self) -> int:
        return self._counts.fp8

    @property
    def fallback_calls(self) -> int:
        return self._counts.fallback

    @property
    def masked_fp8_calls(self) -> int:
        return self._counts.masked

    def reset_counters(self) -> None:
        self._counts.fp8 = 0
        self._counts.fallback = 0
        self._counts.masked = 0

    def forward(self, *args, **kwargs):
        tally = [0, 0, 0]
        with _SDPARouter(self, tally):
            out = self.model(*args, **kwargs)
        if torch.compiler.is_compiling():
            _count(self._count_key, tally[0], tally[1], tally[2])
        return out

    def _tally(self, tally: list, path: int) -> None:
        """path: 0 FP8, 1 fallback, 2 masked FP8."""
        if torch.compiler.is_compiling():
            tally[path] += 1
        elif path == 0:
            self._counts.fp8 += 1
        elif path == 1:
            self._counts.fallback += 1
        else:
            self._counts.masked += 1

    def _route(self, args, kwargs, tally):
        bound = _bind(args, kwargs)
        if bound is None:  # let SDPA raise its own error for a malformed call
            return _SDPA(*args, **kwargs)
        query = bound["query"]
        backend = resolve_backend(self.backend, query.device)  # RuntimeError: no backend (never bf16)
        masked = bound["attn_mask"] is not None
        if masked and self.masked_backend is None:
            why = ("attn_mask is given and masked_backend is not set (masked calls run in FP8 only with "
                   "masked_backend=AttentionBackend.FP8_TRITON)")
        else:
            if masked:
                backend = resolve_backend(self.masked_backend, query.device)
            why = unsupported_reason(**bound, backend=backend, hadamard=self.hadamard)
        if why is None:
            self._tally(tally, 2 if masked else 0)
            return fp8_sdpa(**bound, hadamard=self.hadamard, backend=backend, sign_vector=self.sign_vector,
                            smooth_k=self.smooth_k, smooth_v=self.smooth_v)
        if self.unsupported == "raise":
            raise ValueError(f"apply_low_precision_attention: SDPA call cannot run in FP8: {why}")
        self._tally(tally, 1)
        if not torch.compiler.is_compiling() and not self._warned:  # is_compiling first: no guard on _warned
            self._warned = True
            warnings.warn(f"apply_low_precision_attention: an SDPA call runs in the original precision "
                          f"({why}); further fallbacks of this module are counted in fallback_calls, not "
                          f"warned", RuntimeWarning, stacklevel=3)
        return _SDPA(*args, **kwargs)


def apply_low_precision_attention(model: torch.nn.Module, backend: AttentionBackend | str | None = None,
                                  hadamard: HadamardMode | str = HadamardMode.NONE,
                                  unsupported: str = "fallback",
                                  sign_vector=None,
                                  masked_backend: AttentionBackend | str | None = None, smooth_k: bool = False,
                                  smooth_v: bool = False) -> LowPrecisionAttention:
    """A module whose forward runs ``model`` with SDPA calls routed to ``fp8_sdpa`` (see the module
    docstring). ``model`` itself is not modified; calling it directly still runs plain SDPA.
    ``masked_backend`` (FP8_TRITON, or FP8_REFERENCE): serve calls with an ``attn_mask`` in FP8 on it
    (counted in ``masked_fp8_calls``) instead of the original SDPA. ``smooth_k`` / ``smooth_v``:
    ``fp8_sdpa``'s exact K/V smoothing on every routed call.

    >>> class Attention(torch.nn.Module):
    ...     def forward(self, q, k, v):
    ...         return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> model = apply_low_precision_attention(Attention(), backend="FP8_REFERENCE", hadamard="QKV")
    >>> q, k, v = torch.randn(3, 1, 2, 32, 64, dtype=torch.bfloat16)
    >>> out = model(q, k, v)
    >>> out.shape, model.fp8_calls, model.fallback_calls
    (torch.Size([1, 2, 32, 64]), 1, 0)
    """
    return LowPrecisionAttention(model, backend=backend, hadamard=hadamard, unsupported=unsupported,
                                 sign_vector=sign_vector, masked_backend=masked_backend, smooth_k=smooth_k,
                                 smooth_v=smooth_v)
