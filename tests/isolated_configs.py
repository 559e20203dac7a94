"""Run every autotune config of a kernel in child processes, so that a compiler abort kills only the
child: ``check_configs`` is the child side, ``run_configs`` the parent side of one small protocol.

The child prints ``START i`` before config i and ``OK i`` or ``FAIL i <reason>`` after it, flushed,
then ``DONE``. A child that dies after ``START i`` without a verdict crashed on config i: the parent
records that and starts a new child at config i + 1. Used by the GPU tests that compile every config
of the warp-specialized kernels (``test_rht_amax``, ``test_triton_fp8``); ``test_isolated_configs``
checks the protocol on any machine.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_configs(configs: Sequence, start: int, check: Callable[[object], Optional[str]]) -> None:
    """Child side: ``check(config)`` for each config from ``start`` on; it returns None when the
    config is right, else the reason (an exception is a reason too)."""
    for i, cfg in enumerate(configs):
        if i < start:
            continue
        print(f"START {i} {cfg}", flush=True)
        try:
            problem = check(cfg)
        except Exception as e:  # reported to the parent, which fails on any FAIL line
            problem = f"{type(e).__name__}: {e}"
        verdict = f"OK {i}" if problem is None else f"FAIL {i} {problem}".replace("\n", " ")[:400]
        print(verdict, flush=True)
    print("DONE", flush=True)


def run_configs(command: Callable[[int], list[str]], configs: Sequence, timeout: float) -> list[str]:
    """Parent side: runs ``command(start)`` (a child that calls ``check_configs``) from the repository
    root until some child prints DONE; returns one line per failed or crashed config, naming it."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    failures: list[str] = []
    start = 0
    while start < len(configs):
        proc = subprocess.run(command(start), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        lines = proc.stdout.splitlines()
        failures += [f"{configs[int(ln.split()[1])]}: {ln}" for ln in lines if ln.startswith("FAIL")]
        if "DONE" in lines:
            break
        started = [int(ln.split()[1]) for ln in lines if ln.startswith("START")]
        crashed = started[-1] if started else start
        failures.append(f"{configs[crashed]}: process died (rc={proc.returncode}): {proc.stderr[-400:]}")
        start = crashed + 1
    return failures
