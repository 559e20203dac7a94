"""torch.library registration for ops whose body is a Triton launch (what torch.compile sees).

- ``triton_library_op(name, fake)``: registers ``fn`` as ``torch.library.triton_op`` on a GPU, so
  that AOTAutograd decomposes the op into ``triton_kernel_wrapper_functional`` and Inductor compiles
  and launches the Triton kernel itself (no opaque custom-op call in the compiled code). Under the
  CPU interpreter (``TRITON_INTERPRET=1``) it registers a ``torch.library.custom_op`` with ``fake``
  instead: torch's ``wrap_triton`` hands an interpreted kernel back unwrapped (it has none of the JIT
  metadata the tracing needs), so a ``triton_op`` body would launch the interpreter on fake tensors.
  Eager calls never go through either: the public functions call the launchers directly.
- ``traced_launch(kernel, grid, args, consts, config=None)``: ``runtime.launch`` through
  ``torch.library.wrap_triton`` (a traced HOP under torch.compile; the plain launch when called
  eagerly or under the interpreter). A fixed ``config`` passes only its kwargs, ``num_warps`` and
  ``num_stages`` (Inductor refuses ``num_ctas`` as a launch argument).
- ``graph_constant(make)``: a library-cached tensor (a sign matrix) used inside a traced op body:
  ``make`` runs with every dispatch mode off (the cache only ever holds real tensors, never a fake
  one), and ``aten.lift_fresh`` turns the result into a constant of the traced graph.

Inductor autotunes a ``triton.autotune`` kernel itself: it keeps ``configs``, ``key`` and
``prune_configs_by`` (run at trace time) and ignores the library's ``do_bench`` (its own timing).
"""

from __future__ import annotations

from typing import Callable

import torch

from hadamard_kernels.runtime import is_interpreter


def triton_library_op(name: str, fake: Callable) -> Callable:
    """Decorator: ``fn`` as ``triton_op`` (GPU) or ``custom_op`` + ``fake`` (interpreter); no
    mutated arguments."""
    def register(fn):
        if is_interpreter():
            op = torch.library.custom_op(name, fn, mutates_args=())
            op.register_fake(fake)
            return op
        return torch.library.triton_op(name, fn, mutates_args=())
    return register


def traced_launch(kernel, grid, args, consts: dict, config=None) -> None:
    """Launch an autotuned ``kernel`` (or exactly ``config`` of it) through ``wrap_triton``."""
    if config is None:
        torch.library.wrap_triton(kernel)[grid](*args, **consts)
    else:
        torch.library.wrap_triton(kernel.fn)[grid](*args, **consts, **config.kwargs,
                                                  num_warps=config.num_warps, num_stages=config.num_stages)


def graph_constant(make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()`` computed outside any tracing mode, as a constant of the graph being traced."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        t = make()
    return torch.ops.aten.lift_fresh(t)
