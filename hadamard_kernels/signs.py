"""The library's shared layer: sign vectors and the one RHT convention of every package.

Convention (``rht``, ``rht_amax``, ``fp8_quant``'s Hadamard modes and ``attention``'s output rotation):
a block x of d consecutive elements (a 1 x d row) is rotated as

    RHT(x) = x @ R,   R = diag(s) @ H_d / sqrt(d),   inverse: y @ R^T = (y @ H_d) * s / sqrt(d)

with H_d the Sylvester Hadamard matrix (``scipy.linalg.hadamard`` order, symmetric) and s a vector of
+-1 signs. R is orthogonal.

``SignVector`` is the one sign-vector type. Every public function that takes a sign vector accepts a
``SignVector``, a tensor (any device, any real dtype), a list or a tuple, and turns it into a
``SignVector`` with ``as_sign_vector``:
- entries must be exactly +1 or -1 (ValueError otherwise, naming the first bad entry);
- a list or tuple is checked in Python (no device work);
- a tensor is checked once per tensor *version*: the first call reads it to the host (one device
  synchronisation for a CUDA tensor), later calls with the same, unmodified tensor reuse the result
  (an in-place change bumps the tensor's version and is checked again). Pass a ``SignVector`` (or a
  list/tuple) to never synchronise at all.
Device copies (float32 for the kernels) and the +-1 RHT matrices are cached on the ``SignVector``
and handed only to kernels, never to callers, so no caller can corrupt them.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Optional, Sequence, Union

import torch

from hadamard_kernels.matrices import sylvester_matrix

#: The 16-entry sign vector that NVFP4/FP8 training recipes use by default.
DEFAULT_SIGN_VECTOR: tuple[int, ...] = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


class SignVector:
    """An immutable vector of +-1 entries (validated at construction), hashable, with cached
    device copies. ``SignVector([1, -1, ...])``; ``tuple(sv)``, ``len(sv)``, ``sv.tensor(device)``.

    >>> sv = SignVector([1, -1, -1, 1])
    >>> len(sv), tuple(sv)
    (4, (1, -1, -1, 1))
    >>> rht(torch.ones(1, 4), sv, 4).tolist()  # ones @ diag(s) H_4 / 2
    [[0.0, 0.0, 0.0, 2.0]]
    """

    __slots__ = ("values", "_device_cache", "__weakref__")

    def __init__(self, values: Union[Sequence[int], Sequence[float], torch.Tensor, "SignVector"]):
        if isinstance(values, SignVector):
            values = values.values
        elif isinstance(values, torch.Tensor):
            if values.dim() != 1:
                raise ValueError(f"sign vector must be 1-D, got shape {tuple(values.shape)}")
            if values.dtype.is_complex:
                raise TypeError(f"sign vector must be real, got {values.dtype}")
            values = values.detach().cpu().tolist()
        elif not isinstance(values, (tuple, list)):
            raise TypeError(f"sign vector must be a SignVector, tuple, list or 1-D tensor, got "
                            f"{type(values).__name__}")
        out = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (1, -1):
                raise ValueError(f"sign vector entries must be +1 or -1, got {v!r} at index {i}")
            out.append(int(v))
        if not out:
            raise ValueError("sign vector is empty")
        self.values: tuple[int, ...] = tuple(out)
        self._device_cache: dict = {}

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self):
        return iter(self.values)

    def __eq__(self, other) -> bool:
        return isinstance(other, SignVector) and other.values == self.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return f"SignVector({list(self.values)})"

    def tensor(self, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A fresh tensor of the signs (callers may modify it; the kernels use a private copy)."""
        return self._cached(device, dtype).clone()

    def _cached(self, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The cached device copy the kernels read. Library-internal: never handed to callers."""
        key = (torch.device(device), dtype)
        t = self._device_cache.get(key)
        if t is None:
            t = torch.tensor(self.values, dtype=dtype, device=key[0])
            self._device_cache[key] = t
            _remember(t, self)
        return t

    def pm1_matrix(self, inverse: bool, device, dtype: torch.dtype) -> torch.Tensor:
        """The unscaled +-1 RHT matrix diag(s) @ H_d (inverse: H_d @ diag(s)), exact in ``dtype``,
        contiguous, cached. Library-internal: kernels read it, callers never receive it."""
        key = ("pm1", inverse, torch.device(device), dtype)
        m = self._device_cache.get(key)
        if m is None:
            d = len(self.values)
            s = torch.tensor(self.values, dtype=torch.float64)
            h = sylvester_matrix(d, torch.float64)
            m64 = h * s[None, :] if inverse else s[:, None] * h
            m = m64.to(dtype=dtype, device=key[2]).contiguous()
            self._device_cache[key] = m
        return m

    def rht_matrix(self, device, dtype: torch.dtype) -> torch.Tensor:
        """diag(s) @ H_d / sqrt(d) rounded once from float64 to ``dtype`` (cached; library-internal)."""
        key = ("rht", torch.device(device), dtype)
        m = self._device_cache.get(key)
        if m is None:
            m = rht_matrix_f64(self).to(dtype=dtype, device=key[1]).contiguous()
            self._device_cache[key] = m
        return m


# Tensors already validated, keyed by id: (weak reference, version at validation, SignVector).
# Bounded: the oldest entries are dropped past _TENSOR_CACHE_MAX.
_TENSOR_CACHE: dict[int, tuple] = {}
_TENSOR_CACHE_MAX = 256


def _remember(t: torch.Tensor, sv: SignVector) -> None:
    if len(_TENSOR_CACHE) >= _TENSOR_CACHE_MAX:
        _TENSOR_CACHE.pop(next(iter(_TENSOR_CACHE)))
    _TENSOR_CACHE[id(t)] = (weakref.ref(t), t._version, sv)


def _from_tensor(t: torch.Tensor) -> SignVector:
    hit = _TENSOR_CACHE.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    sv = SignVector(t)
    _remember(t, sv)
    return sv


@functools.lru_cache(maxsize=1024)
def _from_tuple(values: tuple) -> SignVector:
    return SignVector(values)


def as_sign_vector(sign_vector, d: Optional[int] = None, name: str = "sign_vector") -> SignVector:
    """``sign_vector`` (SignVector, tensor, list or tuple) as a validated ``SignVector`` of length d
    (when d is given). ValueError for entries other than +-1 or a wrong length; TypeError for other
    types. See the module docstring for what is checked when.

    >>> as_sign_vector([1, -1, 1, 1])
    SignVector([1, -1, 1, 1])
    >>> as_sign_vector(torch.tensor([1.0, -1.0]), d=2) == SignVector([1, -1])
    True
    >>> as_sign_vector([1, 0])
    Traceback (most recent call last):
        ...
    ValueError: sign vector entries must be +1 or -1, got 0 at index 1
    """
    if isinstance(sign_vector, SignVector):
        sv = sign_vector
    elif isinstance(sign_vector, torch.Tensor):
        sv = _from_tensor(sign_vector)
    elif isinstance(sign_vector, (tuple, list)):
        try:
            sv = _from_tuple(tuple(sign_vector))
        except TypeError:  # unhashable entries: validate without the cache (raises for them)
            sv = SignVector(list(sign_vector))
    else:
        raise TypeError(f"{name} must be a SignVector, tuple, list or 1-D tensor, got {type(sign_vector).__name__}")
    if d is not None and len(sv) != d:
        raise ValueError(f"{name} has {len(sv)} entries but the transform size is {d}")
    return sv


def random_sign_vector(n: int, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                       device=None) -> torch.Tensor:
    """A float32 tensor of n random +-1 entries on ``device``.

    Reproducible: the same ``seed`` (or a generator in the same state) gives the same vector on every
    device, because the draw always happens on a CPU generator (``generator`` must be a CPU generator).
    With neither, torch's global CPU RNG is used.

    Storing it with a checkpoint: the vector IS the transform, so save it, not the seed (the seed ->
    vector mapping depends on torch's RNG). E.g. ``state["rht_signs"] = s.to(torch.int8).cpu()`` or,
    for a JSON config, ``[int(v) for v in s]``; load it back and pass the tensor/list/tuple to
    ``rht``/``rht_amax``/``quantize_qkv``/``fp8_sdpa`` unchanged.

    >>> s = random_sign_vector(16, seed=0)
    >>> sorted(set(s.tolist()))
    [-1.0, 1.0]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"random_sign_vector needs a positive int length, got {n!r}")
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(seed))
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"random_sign_vector draws on a CPU generator, got one on {generator.device}")
    bits = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64)
    out = (1 - 2 * bits).to(dtype=torch.float32, device=device)
    _remember(out, SignVector(tuple(int(v) for v in (1 - 2 * bits).tolist())))  # known valid: no sync later
    return out


def rht_matrix_f64(sign_vector) -> torch.Tensor:
    """diag(s) @ H_d / sqrt(d) in float64 on the CPU (a fresh tensor), d = len(s)."""
    sv = as_sign_vector(sign_vector)
    d = len(sv)
    s = torch.tensor(sv.values, dtype=torch.float64)
    return s[:, None] * sylvester_matrix(d, torch.float64) / math.sqrt(d)
