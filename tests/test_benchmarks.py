"""The benchmark harness and the tour: byte formulas, result rows, the runner end to end on a synthetic suite,
the CLI (suites, sizes), aligned tables, plots and memory-bounded baselines."""

import json
import sys
import time
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


# ---------------------------------------------------------------------------------------------
# The tour's CLI, tables, plots and bounded baselines (issue 12)
# ---------------------------------------------------------------------------------------------

def _demo_module(monkeypatch, name, cases):
    """Register ``cases`` as the tour suite ``name`` (restored after the test)."""
    from benchmarks import __main__ as tour

    mod = types.ModuleType(f"benchmarks._{name}_suite")
    mod.cases = cases
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(tour.SUITES, name, mod.__name__)
    return mod


def _one_case(suite):
    def cases(ctx):
        yield harness.Case(suite=suite, op="scale", impl="torch", shape="4", dtype="fp32",
                           fn=lambda: torch.ones(4) * 2, nbytes=32, size=4)
    return cases


def test_suite_takes_several_names_and_all(monkeypatch, capsys):
    from benchmarks import __main__ as tour

    every = list(tour.SUITES)
    assert tour.parse_args(["--suite", "hadamard", "rht"])[1].suites == ["hadamard", "rht"]
    assert tour.parse_args(["--suite", "rht", "--suite", "hadamard", "rht"])[1].suites == ["rht", "hadamard"]
    assert tour.parse_args(["--suite", "all"])[1].suites == every
    assert tour.parse_args([])[1].suites == every
    parser = tour.parse_args([])[0]
    assert "--suite SUITE [SUITE ...]" in parser.format_usage()
    with pytest.raises(SystemExit) as e:
        tour.parse_args(["--suite", "hadamard", "nosuch"])
    assert e.value.code == 2 and "nosuch" in capsys.readouterr().err
    # end to end: one flag, two suites, both run
    _demo_module(monkeypatch, "demo_a", _one_case("demo_a"))
    _demo_module(monkeypatch, "demo_b", _one_case("demo_b"))
    monkeypatch.setattr(harness, "copy_ceiling", lambda device, quick: {"ms": 1.0, "nbytes": 1 << 20, "gbps": 1.0})
    assert tour.main(["--suite", "demo_a", "demo_b", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "## demo_a: 1 rows" in out and "## demo_b: 1 rows" in out and "# 2 rows, 0 failure(s)" in out


@pytest.mark.parametrize("argv, words", [
    (["--sizes", "0"], ["--sizes", "whole number >= 1", "'0'"]),
    (["--sizes", "-2"], ["--sizes", "whole number >= 1", "'-2'"]),
    (["--sizes", "1.5"], ["--sizes", "'1.5'"]),
    (["--sizes", "many"], ["--sizes", "'many'"]),
    (["--suite", "rht", "--sizes", "100"], ["--sizes 100", "suite rht", "multiple of 128"]),
    (["--suite", "rht", "hadamard", "--sizes", "256", "100"], ["--sizes 100", "suite rht", "suite hadamard"]),
    (["--suite", "hadamard", "--sizes", "65536"], ["--sizes 65536", "suite hadamard", "2..32768"]),
    (["--suite", "hadamard", "--sizes", "24576"], ["--sizes 24576", "suite hadamard", "12 * 2048"]),
    (["--suite", "host", "--sizes", "64"], ["suite host takes no --sizes"]),
])
def test_bad_sizes_are_refused_before_any_work(argv, words, monkeypatch, capsys):
    from benchmarks import __main__ as tour

    def no_work(*a, **k):
        raise AssertionError("the tour started work before refusing the sizes")

    monkeypatch.setattr(harness, "copy_ceiling", no_work)
    monkeypatch.setattr(tour, "run", no_work)
    with pytest.raises(SystemExit) as e:
        tour.main([*argv, "--no-write"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)


def test_each_suite_says_which_sizes_it_takes():
    from benchmarks import bench_attention, bench_fp8_quant, bench_hadamard, bench_rht

    cpu = harness.Context(device="cpu", quick=True)
    gpu = harness.Context(device="cuda", quick=False)  # only ctx.on_gpu is read: no GPU needed
    for n in (2, 16, 48, 12 * 1024, 20 * 1024, 28 * 1024, 32768):
        assert bench_hadamard.size_problem(n, cpu) is None, n
    for n in (1, 3, 100, 65536, 12 * 2048, 40 * 1024):
        assert bench_hadamard.size_problem(n, cpu), n
    for n in (128, 256, 1024):
        assert bench_rht.size_problem(n, cpu) is None and bench_rht.size_problem(n, gpu) is None
    assert bench_rht.size_problem(100, gpu) and bench_rht.size_problem(64, gpu)
    assert bench_rht.size_problem(2048, cpu) and bench_rht.size_problem(2048, gpu) is None
    for mod in (bench_fp8_quant, bench_attention):
        assert mod.size_problem(1, cpu) is None and mod.size_problem(100, cpu) is None
        assert mod.size_problem(65536, cpu) and mod.size_problem(65536, gpu) is None
    for mod in (bench_hadamard, bench_rht, bench_fp8_quant, bench_attention):
        assert mod.SIZES and isinstance(mod.PLOT, harness.Plot)
    # a direct caller of cases() gets the same refusal, not a torch error
    with pytest.raises(ValueError, match="100"):
        list(bench_rht.cases(harness.Context(device="cpu", quick=True, sizes=[100])))
    with pytest.raises(ValueError, match="100"):
        list(bench_hadamard.cases(harness.Context(device="cpu", quick=True, sizes=[100])))


def test_attention_lists_every_size():
    from benchmarks import bench_attention

    ctx = harness.Context(device="cpu", quick=True, sizes=[64, 128])
    cases = list(bench_attention.cases(ctx))
    assert sorted(c.size for c in cases) == [64, 128]
    assert {c.shape for c in cases} == {"1x2x64x64", "1x2x128x64"}


def _columns_of(table: list[str]) -> list[tuple[int, int]]:
    """(start, end) of each column, from the dashes line under the header."""
    spans, pos = [], 0
    for dashes in table[1].split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    return spans


def test_tour_tables_are_aligned_and_say_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    x = torch.randn(1000)

    def cases(ctx):
        yield harness.Case(suite="demo", op="a-rather-long-operation-name-indeed", impl="torch", shape="1000",
                           dtype="fp32", fn=lambda: x * 2, nbytes=8000, size=1000, check=lambda: ("max_abs", 0.0, True))
        yield harness.Case(suite="demo", op="op", impl="i", shape="1x2x3x4x5x6x7x8x9", dtype="bf16",
                           fn=lambda: x + 1, flops=1e3, note="a note", baseline="demo/op/i/1x2x3x4x5x6x7x8x9/bf16")
        yield harness.skip_case("demo", "dense", "torch-matmul", "4x32768", "bf16", "needs 5 GiB, machine has 1 GiB")
        yield harness.Case(suite="demo", op="op", impl="slow", shape="1", dtype="fp32", fn=lambda: time.sleep(0.02),
                           nbytes=8)

    _demo_module(monkeypatch, "demo", cases)
    from benchmarks import __main__ as tour
    from benchmarks import report

    assert tour.run(["demo"], harness.Context(device="cpu", quick=True), "unit") == 0  # a skip is no failure
    out = capsys.readouterr().out.splitlines()
    start = out.index("## demo: 4 rows, 1 skipped") + 1
    table = out[start:start + 6]
    assert table[0].startswith("suite") and set(table[1]) == {"-", " "}
    spans = _columns_of(table)
    assert len(spans) == len(report.tour_columns([{"note": "x"}]))
    for line in table:
        for start_, end in spans[:-1]:
            assert line[end:end + 2] in ("  ", " ", ""), (line, end)  # separators at the same offsets
            assert line[start_ - 1:start_] in ("", " "), (line, start_)
    header = table[0]
    for (start_, end), (name, _) in zip(spans, report.tour_columns([{"note": "x"}])):
        assert header[start_:end].strip() == name
    assert any("skipped: needs 5 GiB, machine has 1 GiB" in line for line in table)
    rows = json.loads((tmp_path / "unit.json").read_text())
    skipped = [r for r in rows if r.get("skipped")]
    assert len(skipped) == 1 and "ms" not in skipped[0] and skipped[0]["skipped"].startswith("needs 5 GiB")
    assert "skipped: needs 5 GiB" in report.tables(rows)
    numbers = report.aligned(rows[1:], report.tour_columns(rows[1:])).splitlines()
    us = _columns_of(numbers)[5]
    assert all(line[us[1] - 1] != " " for line in numbers[2:])  # the us column is right-aligned


def test_memory_estimate_reads_meminfo_or_sysconf(tmp_path, monkeypatch):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       25165824 kB\nMemFree:         1000 kB\nMemAvailable:    4194304 kB\n")
    monkeypatch.setattr(harness, "MEMINFO", info)
    assert harness.available_memory("cpu") == 4 << 30
    harness.require_memory(1 << 30, "cpu", "one GiB")
    with pytest.raises(harness.Skipped, match=r"needs 3 GiB \(three GiB\), machine has 4 GiB available"):
        harness.require_memory(3 << 30, "cpu", "three GiB")
    monkeypatch.setattr(harness, "MEMINFO", tmp_path / "absent")
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(harness.os, "sysconf", lambda name: pages[name])
    assert harness.available_memory("cpu") == 1000 * 4096


def test_dense_baseline_skipped_when_it_cannot_fit(tmp_path, monkeypatch):
    from benchmarks import bench_hadamard
    from hadamard_kernels.matrices import hadamard_matrix

    info = tmp_path / "meminfo"
    monkeypatch.setattr(harness, "MEMINFO", info)
    info.write_text("MemAvailable:   20971520 kB\n")  # a 24 GiB machine: about 20 GiB available
    # the README example, --suite hadamard --sizes 4096 32768 on CPU: 4 rows, float32 matrix of 4 GiB
    for n in (4096, 32768):
        harness.require_memory(bench_hadamard.dense_bytes(n, 4, "cpu"), "cpu", "dense")
    assert bench_hadamard.dense_bytes(32768, 4, "cpu") >= 5 << 30  # 1.25 x 4 GiB: the doubling's peak
    assert bench_hadamard.dense_bytes(32768, 4, "cuda") >= 2.5 * (1 << 30)
    info.write_text("MemAvailable:   8388608 kB\n")  # 8 GiB available: 32768 does not fit, 4096 does

    def no_alloc(*a, **k):
        raise AssertionError("the dense matrix was built although it cannot fit")

    bench_hadamard._DENSE.clear()
    with monkeypatch.context() as m:
        m.setattr(torch, "kron", no_alloc)
        with pytest.raises(harness.Skipped, match=r"needs 5 GiB .*dense 32768 x 32768 float32.* has 8 GiB"):
            bench_hadamard._dense(32768, 4, "cpu")
    h = bench_hadamard._dense(256, 4, "cpu")
    assert torch.equal(h, hadamard_matrix(256, torch.float32))
    # through the tour (on this machine's device): the torch-matmul row says why it was skipped, the
    # kernels' rows still run
    monkeypatch.setattr(harness, "available_memory", lambda device: 16 << 20)  # 16 MiB
    bench_hadamard._DENSE.clear()
    ctx = harness.Context(device=DEVICE, quick=True, sizes=[4096])
    listed = [c for c in bench_hadamard.cases(ctx) if c.impl in ("torch-matmul", "butterfly")]
    _demo_module(monkeypatch, "dense_demo", lambda ctx: iter(listed))
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    from benchmarks import __main__ as tour

    assert tour.run(["dense_demo"], ctx, "unit") == 0
    rows = {r["impl"]: r for r in json.loads((tmp_path / "unit.json").read_text()) if r["suite"] == "hadamard"}
    assert rows["butterfly"]["check_ok"] is True and rows["butterfly"]["ms"] > 0
    need = bench_hadamard.dense_bytes(4096, 4, DEVICE) / 2 ** 30
    dtype = "bfloat16" if DEVICE == "cuda" else "float32"
    assert rows["torch-matmul"]["skipped"].startswith(f"needs {need:.3g} GiB (dense 4096 x 4096 {dtype}")
    assert "has 0.0156 GiB available" in rows["torch-matmul"]["skipped"] and "ms" not in rows["torch-matmul"]


def test_rht_and_fp8_quant_list_skipped_rows_without_memory(monkeypatch):
    from benchmarks import bench_fp8_quant, bench_rht

    for mod, ctx in ((bench_rht, harness.Context(device="cpu", quick=True)),
                     (bench_fp8_quant, harness.Context(device="cpu", quick=True, sizes=[64]))):
        want = [c.key for c in mod.cases(ctx)]
        with monkeypatch.context() as m:
            m.setattr(harness, "available_memory", lambda device: 0)
            got = list(mod.cases(ctx))
        assert [c.key for c in got] == want, mod.__name__
        for c in got:
            with pytest.raises(harness.Skipped, match="needs .* GiB"):
                c.fn()


def _plot_rows(n_series, field="pct_ceiling", suite="hadamard"):
    rows = []
    for i in range(n_series):
        for size in (16, 256, 4096):
            rows.append({"suite": suite, "op": f"op{i}", "impl": "impl", "dtype": "bf16", "shape": f"4x{size}",
                         "size": size, field: 10.0 + i + size / 1000, "ceiling_gbps": 4000.0, "interpreter": False})
    return rows


def test_plots_label_axes_distinguish_series_and_keep_the_legend_off_the_data():
    pytest.importorskip("matplotlib")
    from benchmarks import bench_attention, bench_fp8_quant, bench_hadamard, bench_rht

    fig = harness.plot_figure(_plot_rows(17), "hadamard", bench_hadamard.PLOT)
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("n (transform size") and "% of torch.clone" in ax.get_ylabel()
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("op")]
    assert len(lines) == 17
    styles = {(ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in lines}
    assert len(styles) == 17  # 10 colours alone would repeat
    assert len({s["color"] for s in harness.series_styles(30)}) == 10
    assert len({tuple(s.values()) for s in harness.series_styles(80)}) == 80
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    data = ax.get_window_extent()
    assert legend.x0 >= data.x1 and legend.x1 <= fig.bbox.x1 + 1  # right of the data, inside the figure
    assert len(ax.get_legend().get_texts()) == 18  # 17 series + the 100% clone line
    import matplotlib.pyplot as plt

    plt.close(fig)
    both = _plot_rows(2, "tflops", "attention") + _plot_rows(1, "pct_ceiling", "attention")
    fig = harness.plot_figure(both, "attention", bench_attention.PLOT)
    assert [a.get_ylabel().split(" (")[0] for a in fig.axes] == ["% of torch.clone", "TFLOP/s"]
    assert all(a.get_xlabel().startswith("sequence length S") for a in fig.axes)
    plt.close(fig)
    assert bench_rht.PLOT.x_label.startswith("input elements") and bench_fp8_quant.PLOT.x_label.startswith("sequence")
    rht_row = {"op": "rht", "impl": "triton", "shape": "(256, 128) d=128 ax=-1"}
    assert bench_rht.PLOT.series(rht_row) == "rht / triton / d=128 ax=-1"
    fp8_row = {"op": "quantize_qkv/plain", "impl": "auto", "shape": "B1 Hq32 Hkv8 S4096 D128"}
    assert bench_fp8_quant.PLOT.series(fp8_row) == "quantize_qkv/plain / auto / B1 Hq32 Hkv8 D128"


def test_plots_written_on_gpu_rows_and_never_on_cpu(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    from benchmarks import __main__ as tour

    tour._plot("hadamard", _plot_rows(3), "unit", "hadamard: a GPU")
    assert (tmp_path / "unit_hadamard.png").stat().st_size > 0
    interp = [{**r, "interpreter": True} for r in _plot_rows(3)]
    assert harness.plot_suite(interp, tmp_path / "interp.png", "t") is None and not (tmp_path / "interp.png").exists()
    _demo_module(monkeypatch, "demo", _one_case("demo"))
    assert tour.run(["demo"], harness.Context(device="cpu", quick=True), "cpu") == 0
    out = capsys.readouterr().out
    assert "# plots: skipped: CPU/interpreter timings mean nothing" in out
    assert not list(tmp_path.glob("cpu_*.png"))


def test_merge_processes_tells_skips_from_failures():
    skip = dict(skipped="needs 5 GiB")
    merged, spread = harness.merge_processes([
        [_row("both", None, **skip), _row("one", None, **skip), _row("bad", None, error="boom")],
        [_row("both", None, **skip), _row("one", 1.0), _row("bad", 1.0)],
    ])
    s = {r["key"].split("/")[2]: r for r in spread}
    assert s["both"]["status"] == "skipped: needs 5 GiB" and harness.spread_ok(s["both"])
    assert s["one"]["status"] == "skipped in process 1: needs 5 GiB" and harness.spread_ok(s["one"])
    assert not harness.spread_ok(s["bad"])
    _, spread3 = harness.merge_processes([[_row("a", None, **skip)], [_row("a", 1.0)], [_row("a", 1.05)]])
    assert spread3[0]["ok"] == 2 and spread3[0]["within_10pct"] is True and harness.spread_ok(spread3[0])


def test_report_tour_rows_with_ratios_keep_their_throughput_columns():
    """Rows with a time ratio to another row (the attention suite's) render in the tour table, with
    TFLOP/s and the ratio and its target in the check cell; only rows with a ``timing`` (the host
    suite's) take the host table."""
    from benchmarks import report

    rows = [_row("a", 2.0, tflops=500.0), _row("b", 1.0, tflops=1000.0, ratio=0.5, target="<= 0.6x", target_met=True)]
    md = report.tables(rows)
    assert "| TFLOP/s |" in md and "| x torch.add |" not in md
    assert "time ratio 0.500, target <= 0.6x: met" in md and "| 1000 |" in md
    host = report.tables([_row("h", 0.01, ratio=2.0, timing="host", target="<= 3x", target_met=True)])
    assert "| x torch.add |" in host
