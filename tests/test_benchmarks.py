"""The benchmark harness: byte formulas, result rows, the runner end to end on a synthetic suite."""

import json
import sys
import types

import torch

from benchmarks import harness
from tests.conftest import DEVICE


def test_bytes_and_flops():
    a = torch.empty(10, 4, dtype=torch.bfloat16)
    b = torch.empty(10, 4, dtype=torch.float8_e4m3fn)
    assert harness.bytes_read_write(a, written=[b]) == 80 + 40
    assert harness.attention_flops(1, 2, 8, 8, 4, causal=False) == 4 * 2 * 8 * 8 * 4
    assert harness.attention_flops(1, 2, 8, 8, 4, causal=True) == 2 * 2 * 8 * 8 * 4


def test_rotation_count():
    assert harness.rotation_count(1 << 20, "cpu") == 1
    assert harness.rotation_count(1 << 20, "cuda") == 64
    assert harness.rotation_count(1 << 30, "cuda") == 1


def test_runner_writes_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    x = torch.randn(1000, device=DEVICE)

    def cases(ctx):
        yield harness.Case(suite="demo", op="scale", impl="torch", shape="1000", dtype="fp32",
                           fn=lambda: x * 2, nbytes=8000, size=1000,
                           check=lambda: ("max_abs", 0.0, True))
        yield harness.Case(suite="demo", op="scale", impl="torch-again", shape="1000", dtype="fp32",
                           fn=lambda: x * 2, nbytes=8000, size=1000,
                           baseline="demo/scale/torch/1000/fp32")

    mod = types.ModuleType("benchmarks._demo_suite")
    mod.cases = cases
    monkeypatch.setitem(sys.modules, "benchmarks._demo_suite", mod)
    from benchmarks import __main__ as tour

    monkeypatch.setitem(tour.SUITES, "demo", "benchmarks._demo_suite")
    ctx = harness.Context(device=DEVICE, quick=True)
    assert tour.run(["demo"], ctx, "unit") == 0
    rows = json.loads((tmp_path / "unit.json").read_text())
    assert rows[0]["op"] == "torch.clone" and rows[0]["gbps"] > 0
    demo = [r for r in rows if r["suite"] == "demo"]
    assert len(demo) == 2 and all(r["gbps"] > 0 for r in demo)
    assert demo[0]["check_ok"] is True and "speedup" in demo[1]
    for key in ("gpu", "torch", "triton", "commit", "time"):
        assert key in demo[0]
    assert (tmp_path / "unit.csv").read_text().startswith("suite,")


def test_runner_counts_failed_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)

    def cases(ctx):
        yield harness.Case(suite="bad", op="wrong", impl="x", shape="1", dtype="fp32",
                           fn=lambda: None, check=lambda: ("rel_rms", 1.0, False))

    mod = types.ModuleType("benchmarks._bad_suite")
    mod.cases = cases
    monkeypatch.setitem(sys.modules, "benchmarks._bad_suite", mod)
    from benchmarks import __main__ as tour

    monkeypatch.setitem(tour.SUITES, "bad", "benchmarks._bad_suite")
    assert tour.run(["bad"], harness.Context(device=DEVICE, quick=True), None) == 1
