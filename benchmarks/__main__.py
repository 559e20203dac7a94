"""The microbenchmark tour: ``python -m benchmarks [--suite NAME [NAME ...]] [--sizes N [N ...]] [--quick] [--processes N]``.

Every kernel of the library against its reference (correctness) and the ``torch.clone`` copy ceiling
measured in the same run. ``--suite`` takes one or more suite names (``--suite hadamard rht``; ``all``,
or no ``--suite``: every suite). ``--sizes`` are checked before any work: a size that is not a whole
number >= 1, or that a selected suite cannot run (each suite module's ``SIZES`` and ``size_problem``),
is an argparse error naming the size and the suite; a suite that takes no sizes (``host``) refuses them
when named and says so when it runs as one of all suites. A case that cannot run on this machine (a
dense baseline that would not fit the memory available) prints a row "skipped: <why>".

Prints one aligned table per suite (column widths from the content; a progress line per case goes to
stderr while the suite runs) and writes JSON/CSV and a PNG per suite under ``benchmarks/results/``
(``harness.plot_suite``: x labelled per suite, y in % of torch.clone or TFLOP/s). Plots need a GPU:
on CPU (the interpreter) the tour prints that plots are skipped, since those timings mean nothing.
The ``host`` suite prints the host table: host time per eager call as a ratio to ``torch.add`` in the
same process, with the issue's targets.

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


def _measure(case: harness.Case, ctx: harness.Context, ceiling: dict, times: dict, ratios: dict) -> tuple[dict, int]:
    """Run one case: its check, then its timing. Returns (row, failures); a ``harness.Skipped`` case
    gives a row with ``skipped`` (why), not a failure."""
    row = {"suite": case.suite, "op": case.op, "impl": case.impl, "shape": case.shape,
           "dtype": case.dtype, "size": case.size, "note": case.note}
    failures = 0
    try:
        if case.check is not None:
            metric, value, ok = case.check()
            row.update(check_metric=metric, check_value=value, check_ok=bool(ok))
            failures += 0 if ok else 1
        ms = (case.timer or harness.bench_ms)(case.fn, ctx.device)
    except harness.Skipped as e:
        row["skipped"] = str(e)
        return row, failures
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        return row, failures + 1
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
    return row, failures


def _progress(name: str, i: int, total: int, row: dict) -> None:
    """One line per case on stderr as it finishes (the aligned table follows at the end of the suite;
    a run cut short still shows what it measured)."""
    us = "-" if row.get("ms") is None else f"{row['ms'] * 1e3:.1f} us"
    print(f"# {name} {i}/{total} {harness.row_key(row)}: {us}, {report.check_text(row)}", file=sys.stderr,
          flush=True)


def _plots_skipped(ctx: harness.Context) -> bool:
    """No timing plots without a GPU or under the interpreter: those timings mean nothing."""
    return not ctx.on_gpu or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _plot(name: str, rows: list[dict], tag: str, title: str) -> None:
    """The suite's PNG (``harness.plot_suite`` with the suite module's ``PLOT``); a plot is a
    convenience: a failure is printed, never raised."""
    try:
        plot = getattr(importlib.import_module(SUITES[name]), "PLOT", harness.DEFAULT_PLOT)
        png = harness.plot_suite(rows, harness.RESULTS_DIR / f"{tag}_{name}.png", title, plot)
    except Exception as e:
        print(f"# {name}: plot failed: {type(e).__name__}: {e}")
        return
    if png is not None:
        print(f"# wrote {_shown(png)}")
    elif rows:
        print(f"# {name}: no plot (matplotlib missing, or no GB/s or TFLOP/s rows)")


def run(suites: list[str], ctx: harness.Context, tag: str | None, rows_json: str | None = None) -> int:
    """Run ``suites`` in this process; write results under ``tag`` (None: none) and, with
    ``rows_json``, every row to that file (a child of ``--processes``). Prints each suite's rows as an
    aligned table when the suite ends (and a progress line per case on stderr). Returns 1 on any
    failure (an error or a failed check; skipped rows are not failures)."""
    env = harness.environment(ctx.device)
    print(f"# device: {env['gpu']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    if not ctx.on_gpu:
        print("# NOTE: no CUDA GPU here. Kernels run under Triton's CPU interpreter on tiny shapes:")
        print("#       this is a correctness smoke; the timings and GB/s below mean NOTHING.")
    if _plots_skipped(ctx):
        print("# plots: skipped: CPU/interpreter timings mean nothing, so no timing plot is drawn")
    ceiling = harness.copy_ceiling(ctx.device, ctx.quick)
    print(f"# ceiling: torch.clone bf16 {ceiling['nbytes'] / 2**20:.0f} MiB: {ceiling['gbps']:.1f} GB/s "
          f"(bytes read + written)")
    rows: list[dict] = [{
        "suite": "ceiling", "op": "torch.clone", "impl": "torch", "shape": f"{ceiling['nbytes'] // 4}",
        "dtype": "bf16", "ms": ceiling["ms"], "gbps": ceiling["gbps"], "pct_ceiling": 100.0, **env,
    }]
    failures = 0
    for name in suites:
        try:
            module = importlib.import_module(SUITES[name])
            cases = list(module.cases(ctx))
        except Exception as e:  # a suite that cannot even build its cases is a failure, not a skip
            failures += 1
            print(f"\n## {name}: FAILED to build cases: {type(e).__name__}: {e}")
            traceback.print_exc()
            continue
        times: dict[str, float] = {}
        ratios: dict[str, float] = {}
        suite_rows = []
        for i, case in enumerate(cases, 1):
            row, failed = _measure(case, ctx, ceiling, times, ratios)
            failures += failed
            suite_rows.append({**row, **env})
            _progress(name, i, len(cases), row)
        rows += suite_rows
        skipped = sum(1 for r in suite_rows if r.get("skipped"))
        print(f"\n## {name}: {len(suite_rows)} rows" + (f", {skipped} skipped" if skipped else ""))
        print(report.aligned(suite_rows, report.tour_columns(suite_rows), right=report.TOUR_NUMERIC))
        if any("ratio" in r or "target" in r for r in suite_rows):
            print(f"\n# host table ({name}): us per call; 'x torch.add' is the ratio to torch.add in this process")
            print(report.aligned(suite_rows, report.HOST_COLUMNS))
        if tag is not None and not _plots_skipped(ctx):
            _plot(name, suite_rows, tag, f"{name}: {env['gpu']}")
    print()
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
        if _plots_skipped(ctx):
            print("# plots: skipped: CPU/interpreter timings mean nothing, so no timing plot is drawn")
        else:
            for name in suites:
                suite_rows = [r for r in merged if r.get("suite") == name]
                _plot(name, suite_rows, tag, f"{name}: {suite_rows[0]['gpu']}" if suite_rows else name)
    host_rows = [r for r in merged if "ratio" in r or "target" in r]
    if host_rows:
        print(f"\n# host table, median process per row ({n} processes)")
        print(report.aligned(host_rows, report.HOST_COLUMNS))
    print(f"\n# spread table: {n} fresh processes per suite; spread = (max - min) / median; "
          f"within +-{harness.WITHIN_PCT:g}%: every process within {harness.WITHIN_PCT:g}% of the median")
    print(report.aligned(spread, report.SPREAD_COLUMNS))
    bad = [s for s in spread if not harness.spread_ok(s)]
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


def _size(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def _suite_modules(names: list[str]) -> dict:
    """name -> imported suite module, for the suites that import (one that does not fails in ``run``,
    where its error is reported as the suite's failure)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.import_module(SUITES[name])
        except Exception:  # noqa: BLE001 - reported by run()
            pass
    return out


def size_problems(suites: list[str], sizes: list[int], ctx: harness.Context,
                  explicit: bool) -> tuple[list[str], list[str]]:
    """(errors, notes) for ``--sizes`` on ``suites``, before any work. A suite module that takes sizes
    defines ``SIZES`` (which sizes it accepts, in words) and ``size_problem(n, ctx)`` (why it cannot
    run n, or None); a suite without them takes no sizes: an error when named with ``--suite``
    (``explicit``), a printed note when it runs as one of all suites."""
    errors, notes = [], []
    for name, module in _suite_modules(suites).items():
        check = getattr(module, "size_problem", None)
        if check is None:
            (errors if explicit else notes).append(f"suite {name} takes no --sizes (it runs its own fixed shapes)")
            continue
        for n in sizes:
            why = check(n, ctx)
            if why is not None:
                errors.append(f"--sizes {n}: suite {name} cannot run it: {why}. Suite {name} accepts {module.SIZES}")
    return errors, notes


def _epilog() -> str:
    lines = ["sizes each suite accepts (--sizes):"]
    for name, module in _suite_modules(list(SUITES)).items():
        lines.append(f"  {name}: {getattr(module, 'SIZES', 'no sizes (fixed shapes)')}")
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parsed options, with ``args.suites``: the suites to run, in the order given, each once
    (no ``--suite``, or ``all`` among them: every suite)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", nargs="+", action="extend", choices=[*SUITES, "all"], metavar="SUITE",
                   help=f"one or more suites to run, e.g. --suite hadamard rht: {', '.join(SUITES)}, "
                        "or all (the default)")
    p.add_argument("--sizes", type=_size, nargs="+", metavar="N",
                   help="sizes to run, whole numbers >= 1: n for hadamard, N of N x N for rht, S for "
                        "fp8_quant and attention (see below); a size a selected suite cannot run is "
                        "refused before any work")
    p.add_argument("--quick", action="store_true", help="tiny shapes even on a GPU")
    p.add_argument("--tag", default=None, help="results file stem (default: <gpu>_<date>, 'cpu-smoke' on CPU)")
    p.add_argument("--no-write", action="store_true", help="print only; write no result files")
    p.add_argument("--processes", type=_processes, default=1, metavar="N",
                   help="run each suite in N fresh processes; results from the median process per row, "
                        "plus the spread table (<tag>_spread.json/.csv); default 1: in this process")
    p.add_argument("--rows-json", default=None, help=argparse.SUPPRESS)  # private: a --processes child's rows
    args = p.parse_args(argv)
    args.suites = list(SUITES) if not args.suite or "all" in args.suite else list(dict.fromkeys(args.suite))
    if args.sizes:
        args.sizes = list(dict.fromkeys(args.sizes))
    return p, args


def main(argv=None) -> int:
    p, args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = harness.Context(device=device, quick=args.quick or device != "cuda", sizes=args.sizes)
    if args.sizes:
        explicit = bool(args.suite) and "all" not in args.suite
        errors, notes = size_problems(args.suites, args.sizes, ctx, explicit)
        if errors:
            p.error("\n  ".join(errors))
        for note in notes:
            print(f"# {note}")
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
        return run_processes(args.suites, args, ctx, tag, args.processes)
    return run(args.suites, ctx, tag, rows_json=args.rows_json)


if __name__ == "__main__":
    sys.exit(main())
