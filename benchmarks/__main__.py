"""The microbenchmark tour: ``python -m benchmarks [--suite NAME ...] [--sizes N ...] [--quick]``.

Every kernel of the library against its reference (correctness) and the ``torch.clone`` copy ceiling
measured in the same run. Prints a table and writes JSON/CSV (and a PNG per suite when matplotlib is
installed) under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import traceback

import torch

if not torch.cuda.is_available():  # must happen before any kernel module is imported
    os.environ["TRITON_INTERPRET"] = "1"

from benchmarks import harness  # noqa: E402

# suite name -> module under benchmarks/ defining cases(ctx)
SUITES = {
    "hadamard": "benchmarks.bench_hadamard",
    "rht": "benchmarks.bench_rht",
    "fp8_quant": "benchmarks.bench_fp8_quant",
    "attention": "benchmarks.bench_attention",
}


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def run(suites: list[str], ctx: harness.Context, tag: str | None) -> int:
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
        suite_rows = []
        for case in cases:
            row = {"suite": case.suite, "op": case.op, "impl": case.impl, "shape": case.shape,
                   "dtype": case.dtype, "size": case.size, "note": case.note}
            try:
                if case.check is not None:
                    metric, value, ok = case.check()
                    row.update(check_metric=metric, check_value=value, check_ok=bool(ok))
                    failures += 0 if ok else 1
                ms = harness.bench_ms(case.fn, ctx.device)
            except Exception as e:
                failures += 1
                row.update(error=f"{type(e).__name__}: {e}")
                print(f"{case.suite:10} {case.op:24} {case.impl:22} {case.shape:22} {case.dtype:5} ERROR {row['error'][:200]}")
                rows.append({**row, **env})
                continue
            times[case.key] = ms
            row["ms"] = ms
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
                  + (f"  [{case.note}]" if case.note else ""))
            suite_rows.append({**row, **env})
        rows += suite_rows
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
            print(f"# wrote {p.relative_to(harness.RESULTS_DIR.parent.parent)}")
    print(f"# {len(rows) - 1} rows, {failures} failure(s)")
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="suites to run (default: all)")
    p.add_argument("--sizes", type=int, nargs="+", help="sizes to run (n for Hadamard/RHT, S for QKV/attention)")
    p.add_argument("--quick", action="store_true", help="tiny shapes even on a GPU")
    p.add_argument("--tag", default=None, help="results file stem (default: <gpu>_<date>, 'cpu-smoke' on CPU)")
    p.add_argument("--no-write", action="store_true", help="print only; write no result files")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = harness.Context(device=device, quick=args.quick or device != "cuda", sizes=args.sizes)
    tag = None
    if not args.no_write:
        if args.tag:
            tag = args.tag
        elif device == "cuda":
            gpu = torch.cuda.get_device_name().replace("NVIDIA ", "").replace(" ", "-")
            tag = f"{gpu}_{harness.environment(device)['time'][:10]}" + ("_quick" if ctx.quick else "")
        else:
            tag = "cpu-smoke"
    return run(args.suite or list(SUITES), ctx, tag)


if __name__ == "__main__":
    sys.exit(main())
