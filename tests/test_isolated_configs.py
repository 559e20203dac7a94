"""The child-process protocol the GPU tests use to compile every autotune config (``isolated_configs``):
a failing config, a crashing one, and the restart after the crash, on any machine."""

import sys

from tests.isolated_configs import run_configs

_CHILD = r"""
import os, sys
from tests.isolated_configs import check_configs

def check(cfg):
    if cfg == "crashes":
        os._exit(3)  # like a compiler abort: no verdict, no DONE
    if cfg == "raises":
        raise RuntimeError("no\nluck")
    return None if cfg == "fine" else "wrong result"

check_configs(["fine", "crashes", "wrong", "raises", "fine"], int(sys.argv[1]), check)
"""


def test_failures_crashes_and_restart():
    configs = ["fine", "crashes", "wrong", "raises", "fine"]
    starts = []

    def command(start):
        starts.append(start)
        return [sys.executable, "-c", _CHILD, str(start)]

    failures = run_configs(command, configs, timeout=60)
    assert starts == [0, 2]  # restarted after the crashed config
    assert len(failures) == 3, failures
    assert failures[0].startswith("crashes: process died (rc=3)")
    assert failures[1] == "wrong: FAIL 2 wrong result"
    assert failures[2] == "raises: FAIL 3 RuntimeError: no luck"


def test_all_fine():
    command = lambda start: [sys.executable, "-c", _CHILD.replace('"crashes", "wrong", "raises", ', ""), str(start)]  # noqa: E731
    assert run_configs(command, ["fine", "fine"], timeout=60) == []
