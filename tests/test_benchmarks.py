"""The benchmark harness: byte formulas, result rows, the runner end to end on a synthetic suite."""

import json
import sys
import types

import pytest
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


# ---------------------------------------------------------------------------------------------
# The host suite and --processes (issue 11)
# ---------------------------------------------------------------------------------------------

def test_loop_ms_counts_calls_and_times_per_call():
    calls = []
    ms = harness.loop_ms(lambda: calls.append(1), "cpu", calls=5, reps=3, warmup=2)
    assert len(calls) == 2 + 5 * 3
    assert 0 < ms < 50
    slow = harness.loop_ms(lambda: sum(range(20000)), "cpu", calls=4, reps=3, warmup=1)
    assert slow > ms  # per call, not per loop: a heavier call costs more


def test_target_evaluate():
    assert harness.Target(3.5).evaluate(1.0, 3.4, {}) == ("<= 3.5x", True)
    assert harness.Target(3.5).evaluate(1.0, 3.6, {})[1] is False
    assert harness.Target(5, unit="us").evaluate(0.0049, None, {})[1] is True
    assert harness.Target(5, unit="us").evaluate(0.0051, None, {})[1] is False
    plus = harness.Target(6, plus_ratio_of="host/fa3")
    assert plus.evaluate(1.0, 15.0, {"host/fa3": 9.5})[1] is True
    assert plus.evaluate(1.0, 16.0, {"host/fa3": 9.5})[1] is False
    assert plus.evaluate(1.0, 1.0, {})[1] is None  # reference row missing: undecided, not "met"


def test_host_suite_rows_carry_ratios_and_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    from benchmarks import __main__ as tour
    from benchmarks import bench_host, report

    assert tour.run(["host"], harness.Context(device=DEVICE, quick=True), "unit") == 0
    rows = [r for r in json.loads((tmp_path / "unit.json").read_text()) if r["suite"] == "host"]
    by = {(r["op"], r["impl"]): r for r in rows}
    assert not [r for r in rows if r.get("error")]
    add = by[("torch.add", "torch")]
    assert harness.row_key(add) == bench_host.ADD_KEY and add["ratio"] == 1.0 and add["timing"] == "host"
    for op, impl in [("triton.jit", "bare-4args"), ("triton.jit", "autotuned-4args"), ("triton.jit", "bare-32args"),
                     ("hadamard_transform", "eager"), ("rht", "eager"), ("inverse_rht", "eager"),
                     ("quantize_qkv", "plain"), ("quantize_qkv", "rope"), ("quantize_qkv", "hadamard"),
                     ("quantize_qkv", "rope+hadamard"), ("F.scaled_dot_product_attention", "torch-bf16"),
                     ("rht_amax", "eager-wall")]:
        r = by[(op, impl)]
        assert r["ms"] > 0 and abs(r["ratio"] - r["ms"] / add["ms"]) < 1e-9 * r["ratio"], (op, impl)
    amax = [r for r in rows if r["op"] == "rht_amax" and r["impl"] == "eager"]
    assert len(amax) == 2 and {r["target"] for r in amax} == {"<= 3.5x", "<= 5x"}
    assert by[("quantize_qkv", "plain")]["target"] == "<= 6x"
    assert by[("rht_amax", "eager-wall")]["timing"] == "wall"
    for r in rows:
        if "target" in r:
            assert r["target_met"] in (True, False), r
    if DEVICE == "cuda":
        graph = by[("hadamard_transform", "graph-replay")]
        assert graph["timing"] == "device" and "ratio" not in graph and graph["target"] == "<= 5 us"
    assert "ratio" in (tmp_path / "unit.csv").read_text().splitlines()[0].split(",")
    md = report.tables(json.loads((tmp_path / "unit.json").read_text()))
    assert "| x torch.add |" in md and "<= 6x" in md


def _row(key_impl, ms, **kw):
    return {"suite": "s", "op": "op", "impl": key_impl, "shape": "1", "dtype": "bf16", "ms": ms,
            "gpu": "g", "torch": "t", "triton": "tr", "commit": "c", "time": "now", **kw}


def test_merge_processes_picks_the_median_and_measures_the_spread():
    runs = [
        [_row("steady", 1.00, gbps=10), _row("noisy", 1.0), _row("flaky", 1.0), _row("gone", 1.0),
         _row("twice", 1.0), _row("twice", 5.0), _row("host", 2.0, ratio=2.0)],
        [_row("steady", 1.05, gbps=11), _row("noisy", 2.0), _row("flaky", None, error="RuntimeError: boom"),
         _row("gone", 1.0), _row("twice", 1.1), _row("twice", 5.1), _row("host", 2.2, ratio=2.2)],
        [_row("steady", 0.97, gbps=12), _row("noisy", 1.0), _row("flaky", 1.0, check_ok=False),
         _row("twice", 0.9), _row("twice", 4.9), _row("host", 2.1, ratio=2.1)],
    ]
    merged, spread = harness.merge_processes(runs)
    s = {r["key"].split("/")[2]: r for r in spread if "#" not in r["key"]}
    m = {r["impl"] + ("#2" if i == 5 else ""): r for i, r in enumerate(merged)}
    assert len(merged) == len(spread) == 7
    st = s["steady"]
    assert (st["ok"], st["processes"], st["median_ms"], st["min_ms"], st["max_ms"]) == (3, 3, 1.0, 0.97, 1.05)
    assert abs(st["spread_pct"] - 8.0) < 1e-9 and st["within_10pct"] is True and st["status"] == "ok"
    assert m["steady"]["process"] == 1 and m["steady"]["gbps"] == 10 and m["steady"]["processes"] == 3
    assert s["noisy"]["within_10pct"] is False and abs(s["noisy"]["spread_pct"] - 100.0) < 1e-9
    assert s["flaky"]["ok"] == 2 and s["flaky"]["within_10pct"] is False
    assert "failed in process 2: RuntimeError: boom" in s["flaky"]["status"]
    assert "check failed in process 3" in s["flaky"]["status"]
    assert s["gone"]["status"] == "missing in process 3" and s["gone"]["within_10pct"] is False
    assert [r["key"] for r in spread if "twice" in r["key"]] == ["s/op/twice/1/bf16", "s/op/twice/1/bf16#2"]
    assert s["twice"]["median_ms"] == 1.0 and spread[5]["median_ms"] == 5.0
    assert abs(s["host"]["median_ratio"] - 2.1) < 1e-12 and m["host"]["ratio"] == 2.1
    for key in ("gpu", "torch", "triton", "commit", "time"):
        assert key in spread[0]
    # an even count picks the lower median's row; one success cannot say whether it is steady
    merged2, spread2 = harness.merge_processes([[_row("a", 2.0)], [_row("a", 1.0)]])
    assert merged2[0]["process"] == 2 and spread2[0]["median_ms"] == 1.5
    _, spread3 = harness.merge_processes([[_row("a", 2.0)], [_row("a", None, error="x")]])
    assert spread3[0]["within_10pct"] is None and spread3[0]["ok"] == 1


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU plumbing test of --processes; the GPU round runs the tour itself")
def test_processes_runs_fresh_processes_and_writes_the_spread_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    from benchmarks import __main__ as tour
    from benchmarks import report

    assert tour.main(["--suite", "host", "--quick", "--processes", "2", "--tag", "unit"]) == 0
    out = capsys.readouterr().out
    assert out.count("# --processes: suite host, process") == 2
    assert "# spread table" in out and "within +-10%" in out
    spread = json.loads((tmp_path / "unit_spread.json").read_text())
    header = (tmp_path / "unit_spread.csv").read_text().splitlines()[0].split(",")
    for col in ("key", "processes", "ok", "median_ms", "min_ms", "max_ms", "spread_pct", "within_10pct", "status"):
        assert col in header
    host = [r for r in spread if r["suite"] == "host"]
    assert len(host) >= 10 and all(r["processes"] == 2 and r["ok"] == 2 and r["status"] == "ok" for r in host)
    for r in host:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert abs(r["spread_pct"] - 100 * (r["max_ms"] - r["min_ms"]) / r["median_ms"]) < 1e-9
    rows = json.loads((tmp_path / "unit.json").read_text())
    assert [r for r in rows if r["suite"] == "ceiling"] and all(r["process"] in (1, 2) for r in rows)
    assert all("ratio" in r for r in rows if r["suite"] == "host" and r["impl"] != "graph-replay")
    assert "### spread over 2 fresh processes" in report.tables(spread)


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_processes_must_be_positive(bad, capsys):
    from benchmarks import __main__ as tour

    with pytest.raises(SystemExit) as e:
        tour.main(["--processes", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--processes" in err and "whole number >= 1" in err and repr(bad) in err
