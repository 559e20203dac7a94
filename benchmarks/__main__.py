"""The microbenchmark tour: ``python -m benchmarks [--suite NAME ...] [--sizes N ...] [--quick] [--processes N]``.

Every kernel of the library against its reference (correctness) and the ``torch.clone`` copy ceiling
measured in the same run. Prints a table and writes JSON/CSV (and a PNG per suite when matplotlib is
installed) under ``benchmarks/results/``. The ``host`` suite prints the host table: host time per eager
call as a ratio to ``torch.add`` in the same process, with the issue's targets.

``--processes N`` (N >= 2) runs each selected suite in N fresh Python processes, one after another
(``python -m benchmarks`` with the same options, each writing its rows to a private temporary JSON),
then writes the usual results from the median process per row (``harness.merge_processes``: each row
is the one of the process whose time is the median for that row) and prints the spread table (per
row: median, min and max time, spread = (max - min) / median, and whether every process lies within
+-10% of the median), written to ``benchmarks/results/<tag>_spread.{json,csv}``. Both files are
rewritten after each process, so a run cut short keeps what it measured. ``--processes 1`` (the
default) runs in this process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must happen before any kernel module is imported
    os.environ["TRITON_INTERPRET"] = "1"

from benchmarks import harness, report  # noqa: E402

# suite name -> module under benchmarks/ defining cases(ctx)
SUITES = {
    "hadamard": "benchmarks.bench_hadamard",
    "rht": "benchmarks.bench_rht",
    "fp8_quant": "benchmarks.bench_fp8_quant",
    "attention": "benchmarks.bench_attention",
    "host": "benchmarks.bench_host",
}
ROOT = Path(__file__).resolve().parent.parent


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def run(suites: list[str], ctx: harness.Context, tag: str | None, rows_json: str | None = None) -> int:
    """Run ``suites`` in this process; write results under ``tag`` (None: none) and, with
    ``rows_json``, every row to that file (a child of ``--processes``). Returns 1 on any failure."""
    env = harness.environment(ctx.device)
    print(f"# device: {env['gpu']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    if not ctx.on_gpu:
        print("# NOTE: no CUDA GPU here. Kernels run under Triton's CPU interpreter on tiny shapes:")
        print("#       this is a correctness smoke; the timings and GB/s below mean NOTHING.")
    ceiling = harness.copy_ceiling(ctx.device, ctx.quick)
    print(f"# ceiling: torch.clone bf16 {ceiling['nbytes'] / 2**20:.0f} MiB: {ceiling['gbps']:.1f} GB/s "
          f"(bytes read + written)")
    rows: list[dict] = [{
        "suite": "ceiling", "op": "torch.clone", "impl": "torch", "shape": f"{ceiling['nbytes'] // 4}",
        "dtype": "bf16", "ms": ceiling["ms"], "gbps": ceiling["gbps"], "pct_ceiling": 100.0, **env,
    }]
    failures = 0
    header = f"{'suite':10} {'op':24} {'impl':22} {'shape':22} {'dtype':5} {'us':>10} {'GB/s':>8} {'%clone':>7} {'TFLOP/s':>8} {'speedup':>7}  check"
    print(header)
    print("-" * len(header))
    for name in suites:
        try:
            module = importlib.import_module(SUITES[name])
            cases = list(module.cases(ctx))
        except Exception as e:  # a suite that cannot even build its cases is a failure, not a skip
            failures += 1
            print(f"{name:10} FAILED to build cases: {type(e).__name__}: {e}")
            traceback.print_exc()
            continue
        times: dict[str, float] = {}
        ratios: dict[str, float] = {}
        suite_rows = []
        for case in cases:
            row = {"suite": case.suite, "op": case.op, "impl": case.impl, "shape": case.shape,
                   "dtype": case.dtype, "size": case.size, "note": case.note}
            try:
                if case.check is not None:
                    metric, value, ok = case.check()
                    row.update(check_metric=metric, check_value=value, check_ok=bool(ok))
                    failures += 0 if ok else 1
                ms = (case.timer or harness.bench_ms)(case.fn, ctx.device)
            except Exception as e:
                failures += 1
                row.update(error=f"{type(e).__name__}: {e}")
                print(f"{case.suite:10} {case.op:24} {case.impl:22} {case.shape:22} {case.dtype:5} ERROR {row['error'][:200]}")
                rows.append({**row, **env})
                continue
            times[case.key] = ms
            row["ms"] = ms
            if case.timing:
                row["timing"] = case.timing
            if case.ratio_to is not None:
                ref = times.get(case.ratio_to)
                row["ratio"] = ms / ref if ref else None
                if row["ratio"] is not None:
                    ratios[case.key] = row["ratio"]
            if case.target is not None:
                row["target"], row["target_met"] = case.target.evaluate(ms, row.get("ratio"), ratios)
            row["ceiling_gbps"] = ceiling["gbps"]
            if case.nbytes:
                row["gbps"] = case.nbytes / ms / 1e6
                row["pct_ceiling"] = 100.0 * row["gbps"] / ceiling["gbps"]
            if case.flops:
                row["tflops"] = case.flops / ms / 1e9
            if case.baseline and case.baseline in times:
                row["speedup"] = times[case.baseline] / ms
            check = "-" if "check_ok" not in row else (
                f"{'ok' if row['check_ok'] else 'FAIL'} {row['check_metric']}={row['check_value']:.3g}")
            print(f"{case.suite:10} {case.op:24} {case.impl:22} {case.shape:22} {case.dtype:5} "
                  f"{ms * 1e3:10.1f} {_fmt(row.get('gbps'), '8.1f')} {_fmt(row.get('pct_ceiling'), '7.1f')} "
                  f"{_fmt(row.get('tflops'), '8.1f')} {_fmt(row.get('speedup'), '7.3f')}  {check}"
                  + (f"  x{row['ratio']:.2f} torch.add" if row.get("ratio") is not None else "")
                  + (f"  target {row['target']}: {report._yes_no(row['target_met'])}" if "target" in row else "")
                  + (f"  [{case.note}]" if case.note else ""))
            suite_rows.append({**row, **env})
        rows += suite_rows
        host_rows = [r for r in rows if r.get("suite") == name and ("ratio" in r or "target" in r)]
        if host_rows:
            print(f"\n# host table ({name}): us per call; 'x torch.add' is the ratio to torch.add in this process")
            print(report.aligned([r for r in rows if r.get("suite") == name], report.HOST_COLUMNS) + "\n")
        if tag is not None:
            try:
                png = harness.plot_bandwidth(suite_rows, harness.RESULTS_DIR / f"{tag}_{name}.png",
                                             f"{name}: {env['gpu']}")
            except Exception as e:  # a plot is a convenience: never lose the measured rows to it
                png = None
                print(f"# {name}: plot failed: {type(e).__name__}: {e}")
            if png is None and suite_rows:
                print(f"# {name}: no plot (matplotlib missing, plot failed, or no GB/s rows)")
    if tag is not None:
        for p in harness.write_results(rows, tag):
            print(f"# wrote {_shown(p)}")
    if rows_json is not None:
        Path(rows_json).write_text(json.dumps(rows) + "\n")
    print(f"# {len(rows) - 1} rows, {failures} failure(s)")
    return 1 if failures else 0


def _shown(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def _child_args(args: argparse.Namespace) -> list[str]:
    """The options a ``--processes`` child repeats (all but suite, processes, tag, no-write)."""
    out = []
    if args.sizes:
        out += ["--sizes", *map(str, args.sizes)]
    if args.quick:
        out.append("--quick")
    return out


def run_processes(suites: list[str], args: argparse.Namespace, ctx: harness.Context, tag: str | None,
                  n: int) -> int:
    """Each suite in ``n`` fresh processes, one after another; results from the median process per row
    and the spread table (see the module docstring). Returns 1 if any process or row failed."""
    runs: list[list[dict]] = [[] for _ in range(n)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rc = 0
    merged: list[dict] = []
    spread: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="benchmarks_processes_") as tmp:
        for name in suites:
            for i in range(n):
                out = Path(tmp) / f"{name}_{i}.json"
                cmd = [sys.executable, "-m", "benchmarks", "--suite", name, *_child_args(args), "--rows-json", str(out)]
                print(f"# --processes: suite {name}, process {i + 1}/{n}", flush=True)
                proc = subprocess.run(cmd, cwd=ROOT, env=env)
                rc |= int(proc.returncode != 0)
                if not out.exists():
                    print(f"# --processes: suite {name}, process {i + 1}/{n} exited with {proc.returncode} "
                          "and wrote no rows: its rows count as failed", flush=True)
                    continue
                rows = json.loads(out.read_text())
                has_ceiling = any(r.get("suite") == "ceiling" for r in runs[i])
                runs[i] += [r for r in rows if not (has_ceiling and r.get("suite") == "ceiling")]
                merged, spread = harness.merge_processes(runs)
                if tag is not None:  # rewritten after every process: a run cut short keeps what it measured
                    harness.write_results(merged, tag)
                    harness.write_results(spread, f"{tag}_spread")
    if tag is not None:
        for p in (harness.RESULTS_DIR / f"{tag}.json", harness.RESULTS_DIR / f"{tag}.csv",
                  harness.RESULTS_DIR / f"{tag}_spread.json", harness.RESULTS_DIR / f"{tag}_spread.csv"):
            print(f"# wrote {_shown(p)}")
        for name in suites:
            suite_rows = [r for r in merged if r.get("suite") == name]
            try:
                harness.plot_bandwidth(suite_rows, harness.RESULTS_DIR / f"{tag}_{name}.png", f"{name}: {suite_rows[0]['gpu']}"
                                       if suite_rows else name)
            except Exception as e:  # a plot is a convenience
                print(f"# {name}: plot failed: {type(e).__name__}: {e}")
    host_rows = [r for r in merged if "ratio" in r or "target" in r]
    if host_rows:
        print(f"\n# host table, median process per row ({n} processes)")
        print(report.aligned(host_rows, report.HOST_COLUMNS))
    print(f"\n# spread table: {n} fresh processes per suite; spread = (max - min) / median; "
          f"within +-{harness.WITHIN_PCT:g}%: every process within {harness.WITHIN_PCT:g}% of the median")
    print(report.aligned(spread, report.SPREAD_COLUMNS))
    bad = [s for s in spread if s["status"] != "ok"]
    outside = [s for s in spread if s.get("within_10pct") is False]
    print(f"# {len(spread)} rows over {n} processes: {len(bad)} with failures, {len(outside)} outside +-10%")
    return 1 if (rc or bad) else 0


def _processes(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number >= 1 (how many fresh processes run each suite), got {text!r}")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="suites to run (default: all)")
    p.add_argument("--sizes", type=int, nargs="+", help="sizes to run (n for Hadamard/RHT, S for QKV/attention)")
    p.add_argument("--quick", action="store_true", help="tiny shapes even on a GPU")
    p.add_argument("--tag", default=None, help="results file stem (default: <gpu>_<date>, 'cpu-smoke' on CPU)")
    p.add_argument("--no-write", action="store_true", help="print only; write no result files")
    p.add_argument("--processes", type=_processes, default=1, metavar="N",
                   help="run each suite in N fresh processes; results from the median process per row, "
                        "plus the spread table (<tag>_spread.json/.csv); default 1: in this process")
    p.add_argument("--rows-json", default=None, help=argparse.SUPPRESS)  # private: a --processes child's rows
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = harness.Context(device=device, quick=args.quick or device != "cuda", sizes=args.sizes)
    tag = None
    if not args.no_write and args.rows_json is None:
        if args.tag:
            tag = args.tag
        elif device == "cuda":
            gpu = torch.cuda.get_device_name().replace("NVIDIA ", "").replace(" ", "-")
            tag = f"{gpu}_{harness.environment(device)['time'][:10]}" + ("_quick" if ctx.quick else "")
        else:
            tag = "cpu-smoke"
    if args.processes > 1:
        if args.rows_json is not None:
            p.error("--processes and --rows-json exclude each other")
        return run_processes(args.suite or list(SUITES), args, ctx, tag, args.processes)
    return run(args.suite or list(SUITES), ctx, tag, rows_json=args.rows_json)


if __name__ == "__main__":
    sys.exit(main())
