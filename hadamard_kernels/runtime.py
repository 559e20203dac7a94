"""The library's shared layer: runtime helpers every kernel of every package uses.

- ``is_interpreter()``: True when Triton runs kernels through its CPU interpreter
  (``TRITON_INTERPRET=1``).
- ``autotune_configs(configs)``: the config list handed to ``@triton.autotune``: every config on a
  GPU, only the first under the interpreter (autotuning there would have to time configs without a
  GPU driver, which fails; we never fake timings). ``LOWPREC_AUTOTUNE=first`` in the environment
  (read when a kernel module is imported) also keeps only the first config on a GPU: the GPU test
  suite uses it so that each shape compiles one kernel, not every config
  (``tests/test_autotuned_gpu.py`` runs the full autotuner separately).
- ``autotune_do_bench``: the timing every ``@triton.autotune`` of the library uses (``do_bench=``):
  three separate ``triton.testing.do_bench`` trials per config, each quantile the median of the three,
  so one unlucky trial (a clock ramp, a slow placement of a persistent grid) cannot decide the pick.
- ``num_sms(device)``: the multiprocessor count, cached per device.
- ``launch(kernel, grid, args, consts, config=None)``: the one way library code launches an
  autotuned kernel. ``config=None`` runs the autotuner's choice; a ``triton.Config`` launches the
  underlying ``@triton.jit`` function with exactly that config (the seam tests and benchmarks use to
  pick a config; public functions never take it).
- ``tma_allocator()``: a context manager that makes a scratch allocator for TMA tensor descriptors
  visible to Triton for the duration of one call only (see its docstring).

``fp8_quant`` and ``attention`` import from here (a public module of the shared layer, with
``interpreter_fixes``, ``triton_helpers`` and ``signs``); this module imports nothing else of the library.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence, TypeVar

import torch
import triton
from triton import knobs
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend

T = TypeVar("T")


def is_interpreter() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def autotune_configs(configs: Sequence[T]) -> list[T]:
    """All configs on a GPU; the first one only under the interpreter."""
    configs = list(configs)
    if not configs:
        raise ValueError("autotune_configs needs at least one config")
    first_only = is_interpreter() or os.environ.get("LOWPREC_AUTOTUNE", "").lower() == "first"
    return configs[:1] if first_only else configs


def _device_index(device: torch.device | str | int | None) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def _num_sms_cached(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device | str | int | None = None) -> int:
    """Multiprocessor count of a CUDA device (cached); a small fixed number for CPU tensors,
    which only ever run under the interpreter."""
    if device is not None and torch.device(device).type != "cuda":
        return 4
    return _num_sms_cached(_device_index(device))


@functools.lru_cache(maxsize=None)
def _capability_cached(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_capability(device: torch.device | str | int | None = None) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device, cached; (0, 0) for CPU tensors."""
    if device is not None and torch.device(device).type != "cuda":
        return (0, 0)
    return _capability_cached(_device_index(device))


def uses_tma(device: torch.device | str) -> bool:
    """TMA tensor descriptors: compiled kernels on SM90 or newer."""
    return (not is_interpreter()) and device_capability(device)[0] >= 9


AUTOTUNE_TRIALS = 3


def autotune_do_bench(kernel_call, quantiles):
    """Autotuner timing: ``AUTOTUNE_TRIALS`` trials of ``triton.testing.do_bench`` (25 ms warm-up,
    100 ms of runs, L2 flushed before each run), each quantile the median over the trials."""
    import triton.testing

    trials = [triton.testing.do_bench(kernel_call, warmup=25, rep=100, quantiles=quantiles)
              for _ in range(AUTOTUNE_TRIALS)]
    if quantiles is None:
        return sorted(trials)[len(trials) // 2]
    return [sorted(t[i] for t in trials)[len(trials) // 2] for i in range(len(quantiles))]


# Whether Triton's interpreter was on when the library was imported (``@triton.jit`` decides at
# decoration time whether a kernel is compiled or interpreted), and whether a CUDA GPU is there.
_INTERPRETED_AT_IMPORT = is_interpreter()
_CAN_LAUNCH: "bool | None" = None

NO_BACKEND_MESSAGE = (
    "no CUDA GPU is available and Triton's CPU interpreter was not switched on when the library was "
    "imported, so no kernel can run. On a CPU machine set TRITON_INTERPRET=1 in the environment before "
    "importing hadamard_kernels / fp8_quant / attention (e.g. `TRITON_INTERPRET=1 python ...`, or "
    "`os.environ['TRITON_INTERPRET'] = '1'` at the top of a notebook): kernels then run on small shapes "
    "through the interpreter. `make test` and `make bench` switch it on for you")


def _check_can_launch() -> None:
    global _CAN_LAUNCH
    if _CAN_LAUNCH is None:
        _CAN_LAUNCH = _INTERPRETED_AT_IMPORT or torch.cuda.is_available()
    if not _CAN_LAUNCH:
        raise RuntimeError(NO_BACKEND_MESSAGE)


def launch(kernel, grid, args: Sequence, consts: dict, config: "triton.Config | None" = None) -> None:
    """Launch ``kernel`` (a ``triton.autotune`` object) on ``grid`` with positional ``args`` and
    constexpr/keyword ``consts``: autotuned when ``config`` is None, else the raw kernel with exactly
    ``config`` (its kwargs, num_warps, num_stages, ...). RuntimeError naming the fix, before any
    launch, on a machine with neither a CUDA GPU nor the interpreter.

    ``grid`` is a tuple or a callable of one dict that holds ``consts`` and the config's kwargs
    (never the runtime ``args``: a grid reads block sizes, its sizes come from the caller's scope).

    On a GPU, a call whose arguments specialise like an earlier call of the same kernel (same
    dtypes, 16-byte alignment of pointers, integers equal to 1 / divisible by 16 / 32- or 64-bit,
    same autotune key values, same ``consts``) launches the compiled kernel that call used directly
    (``_LaunchPlan``), skipping Triton's argument binding, key hashing and the autotuner's dispatch:
    the same kernel binary, the same launcher, a few microseconds less host time per call."""
    if not _CAN_LAUNCH:
        _check_can_launch()
    if _INTERPRETED_AT_IMPORT or _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook):
        _slow_launch(kernel, grid, args, consts, config)
        return
    device = torch._C._cuda_getDevice()
    try:
        positions = _KEY_POSITIONS.get(id(kernel))
        if positions is None:
            positions = _KEY_POSITIONS[id(kernel)] = _key_positions(kernel, len(args))
        key = (id(kernel), device, None if config is None else _config_key(config), _spec(args),
               tuple(args[p] for p in positions), *consts.items())
        plan = _PLANS.get(key)
    except (TypeError, ValueError):  # an argument we cannot key (unhashable const, unknown type)
        _slow_launch(kernel, grid, args, consts, config)
        return
    if plan is None:
        plan = _make_plan(kernel, grid, args, consts, config, device)
        if plan is None:
            return  # launched by the slow path, not cacheable
        if len(_PLANS) >= _PLAN_LIMIT:
            _PLANS.clear()
        _PLANS[key] = plan
        return  # the first call launched through Triton itself
    plan.run(grid, args, device)


def _slow_launch(kernel, grid, args, consts, config):
    if config is None:
        return kernel[grid](*args, **consts)
    return kernel.fn[grid](*args, **consts, **config.all_kwargs())


def _hooked(hook) -> bool:
    """A launch hook is installed (a profiler's): plans pass no hooks, so such calls go through Triton."""
    return hook is not None and (not hasattr(hook, "calls") or bool(hook.calls))


_PLAN_LIMIT = 4096
_PLANS: dict = {}
_KEY_POSITIONS: dict = {}


def _key_positions(kernel, n_args: int) -> tuple:
    """Positions of the autotune-key arguments among the positional ``args``: their exact values
    join the plan key, as they select the autotuner's config."""
    keys = getattr(kernel, "keys", None)
    if not keys:
        return ()
    names = kernel.fn.arg_names
    return tuple(names.index(k) for k in keys if k in names and names.index(k) < n_args)


def _config_key(config) -> tuple:
    return (tuple(sorted(config.all_kwargs().items())),)


def _spec(args):
    """What Triton specialises a launch on, as a hashable key: Triton's own specialisation function
    (one C call over all arguments: dtype and 16-byte alignment of tensors, integer type and the
    ``== 1`` / ``% 16 == 0`` facts, recursively inside tuples). Autotune key values and constexprs
    join the plan key separately."""
    return native_specialize_impl(BaseBackend, tuple(args), False, True, True)


class _LaunchPlan:
    """One compiled kernel and everything its launch needs except the per-call arguments."""

    __slots__ = ("compiled", "meta", "tail")

    def __init__(self, compiled, meta, tail):
        self.compiled = compiled
        self.meta = meta  # consts + config kwargs: what a callable grid may read
        self.tail = tail  # constexpr values after the positional args, in signature order

    def run(self, grid, args, device):
        g = grid(self.meta) if callable(grid) else grid
        c = self.compiled
        launcher = c.run
        stream = torch._C._cuda_getCurrentRawStream(device)
        if launcher.global_scratch_size or launcher.profile_scratch_size:  # TMA descriptors' scratch
            launcher(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, stream, c.function,
                     c.packed_metadata, None, None, None, *args, *self.tail)
        else:  # the compiled launcher itself, without the scratch bookkeeping
            launcher.launch(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, stream, c.function,
                            launcher.launch_cooperative_grid, launcher.launch_pdl, None, None,
                            c.packed_metadata, None, None, None, *args, *self.tail)


def _make_plan(kernel, grid, args, consts, config, device):
    """Launch through Triton (compiling and autotuning as needed) and return the plan that repeats
    that launch, or None when it cannot be repeated directly (a config with a pre-hook)."""
    from triton.runtime.autotuner import Autotuner

    compiled = _slow_launch(kernel, grid, args, consts, config)
    tuned = isinstance(kernel, Autotuner)
    fn = kernel.fn if tuned else kernel
    if config is None and tuned:
        config = kernel.best_config
    if hasattr(compiled, "result"):  # a kernel compiled asynchronously
        compiled = compiled.result()
    if compiled is None or not hasattr(compiled, "packed_metadata") or (config is not None and config.pre_hook):
        return None
    kw = dict(consts, **(config.all_kwargs() if config is not None else {}))
    binder = fn.device_caches[device][-1]
    bound, _, _ = binder(*args, **kw)
    values = list(bound.values())
    meta = {k: v for k, v in kw.items() if k in bound}
    return _LaunchPlan(compiled, meta, tuple(values[len(args):]))


def _torch_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    # Triton asks for global scratch that holds TMA descriptors built on the device. Allocating
    # through torch's caching allocator keeps it stream-ordered and capturable in a CUDA graph.
    return torch.empty(size, dtype=torch.int8, device="cuda")


class tma_allocator:
    """Scope Triton's scratch allocator to one call: ``with tma_allocator(): launch(...)``.

    ``triton.set_allocator`` stores the allocator in a ``contextvars.ContextVar``. We set it for the
    duration of the ``with`` block and restore *whatever was there before* with the ContextVar token
    (never ``set_allocator(None)``), so another library's allocator survives, other threads never
    see ours, and an exception inside the block still restores the previous one. (A class, not a
    ``contextlib`` generator: it runs on every eager call of a TMA kernel, and costs less this way.)
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        from triton.runtime import _allocation

        self._token = _allocation._allocator.set(_torch_scratch)

    def __exit__(self, *exc) -> None:
        from triton.runtime import _allocation

        _allocation._allocator.reset(self._token)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def bucket(n: int) -> int:
    """Autotune key for sizes that change every call (sequence lengths, row counts): the next
    power of two, so the tuner runs once per bucket, not once per size."""
    return next_power_of_2(max(int(n), 1))


# Under the interpreter, fix its known numerical bugs before any kernel runs (see the module).
if is_interpreter():
    from hadamard_kernels import interpreter_fixes

    interpreter_fixes.apply()
