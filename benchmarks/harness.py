"""Shared benchmark machinery: timing, the copy ceiling, byte formulas, result rows, plots.

A benchmark module (``benchmarks/bench_*.py``) defines ``cases(ctx) -> Iterable[Case]``. The runner
(``python -m benchmarks``) measures the ``torch.clone`` ceiling once per run, times every case, checks
it against its reference, and writes rows with GPU name, versions, git commit and time.

On a CPU machine everything runs under Triton's interpreter on tiny shapes: a correctness smoke whose
timings mean nothing, and the runner says so (and draws no plots).

A case that cannot run on this machine raises ``Skipped`` (from its ``fn`` or ``check``): the runner
prints and records a row that says why (field ``skipped``), not a failure. ``require_memory`` raises it
before a large allocation (e.g. a dense baseline matrix) that would not fit ``MEMORY_SHARE`` of the
memory available now (``available_memory``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Context:
    device: str  # "cuda" or "cpu"
    quick: bool  # tiny shapes (CPU/interpreter smoke, or --quick on a GPU)
    sizes: Optional[list[int]] = None  # user-picked sizes (meaning is per benchmark), or None

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"


@dataclasses.dataclass
class Case:
    """One timed call.

    ``fn`` runs the op once (inputs already built). ``nbytes``: bytes the op must move (each input
    read once, each output written once), for GB/s. ``flops``: for TFLOP/s (attention: halved when
    causal). ``check``: returns ``(metric_name, value, ok)`` against the reference, run once before
    timing. ``baseline``: the ``key`` of another case of the same run to report a speedup against.
    """

    suite: str
    op: str
    impl: str
    shape: str
    dtype: str
    fn: Callable[[], Any]
    nbytes: Optional[int] = None
    flops: Optional[float] = None
    check: Optional[Callable[[], tuple[str, float, bool]]] = None
    baseline: Optional[str] = None
    size: Optional[int] = None  # x-axis for plots (e.g. n, or S)
    note: str = ""
    # How ``ms`` is measured: ``timer(fn, device) -> ms`` (default ``bench_ms``); ``timing`` names it in
    # the row ("host", "wall", "device"). ``ratio_to``: the key of a case of the same suite (it may be
    # the case itself) whose time divides this one (row field ``ratio``). ``target``: a bound checked
    # on the row (fields ``target``, ``target_met``); a missed target is reported, not a failure.
    timer: Optional[Callable[[Callable[[], Any], str], float]] = None
    timing: str = ""
    ratio_to: Optional[str] = None
    target: Optional["Target"] = None

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.op}/{self.impl}/{self.shape}/{self.dtype}"


@dataclasses.dataclass(frozen=True)
class Target:
    """A target bound on a row: on its ``ratio`` (``unit="x"``) or on its time (``unit="us"``).
    ``plus_ratio_of``: the bound is that row's ratio plus ``bound`` (e.g. "the FA3 call's ratio + 6")."""

    bound: float
    unit: str = "x"
    plus_ratio_of: Optional[str] = None

    def evaluate(self, ms: float, ratio: Optional[float], ratios: dict) -> tuple[str, Optional[bool]]:
        """(the bound as text, met); met is None when it cannot be decided (reference row missing)."""
        if self.unit == "us":
            return f"<= {self.bound:g} us", ms * 1e3 <= self.bound
        if self.plus_ratio_of is not None:
            ref = ratios.get(self.plus_ratio_of)
            if ref is None:
                return f"<= ratio({self.plus_ratio_of}) + {self.bound:g}x (reference row missing)", None
            limit = ref + self.bound
            return f"<= {ref:.2f}x + {self.bound:g}x = {limit:.2f}x", None if ratio is None else ratio <= limit
        return f"<= {self.bound:g}x", None if ratio is None else ratio <= self.bound


class Skipped(Exception):
    """Raised by a case's ``fn`` or ``check`` when the case cannot run on this machine; the message
    (e.g. ``"needs 5.0 GiB ..., machine has 2.0 GiB ..."``) becomes the row's ``skipped`` field."""


def skip_case(suite: str, op: str, impl: str, shape: str, dtype: str, reason: str,
              size: Optional[int] = None) -> "Case":
    """A row that says "skipped: <reason>" instead of a measurement (known before anything runs)."""
    def fn():
        raise Skipped(reason)
    return Case(suite, op, impl, shape, dtype, fn, size=size)


# ---------------------------------------------------------------------------------------------
# Memory: skip what cannot fit, before allocating it
# ---------------------------------------------------------------------------------------------

MEMORY_SHARE = 0.5  # a case may allocate at most this share of the memory available when it starts
MEMINFO = Path("/proc/meminfo")
GIB = float(1 << 30)


def available_memory(device: str) -> int:
    """Bytes a new allocation on ``device`` can use now. GPU: free device memory plus what torch's
    caching allocator holds unused. CPU: ``MemAvailable`` of /proc/meminfo where present, else free
    physical pages (``os.sysconf``): what the system can hand out without swapping."""
    if str(device).startswith("cuda"):
        free, _total = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                value, unit = line.split()[1:3]
                return int(value) * (1024 if unit == "kB" else 1)
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def require_memory(nbytes: int, device: str, what: str) -> None:
    """Raise ``Skipped`` when ``what`` (``nbytes``, an estimate of its peak) exceeds ``MEMORY_SHARE``
    of ``available_memory(device)``; call it before allocating."""
    avail = available_memory(device)
    if nbytes > MEMORY_SHARE * avail:
        where = "GPU" if str(device).startswith("cuda") else "machine"
        raise Skipped(f"needs {nbytes / GIB:.3g} GiB ({what}), {where} has {avail / GIB:.3g} GiB available "
                      f"(a case may use {MEMORY_SHARE:.0%})")


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def bench_ms(fn: Callable[[], Any], device: str, *, warmup_ms: float = 25, rep_ms: float = 200) -> float:
    """Median time of ``fn`` in milliseconds.

    GPU: ``triton.testing.do_bench`` (CUDA events, median) after one untimed call that triggers
    compilation and autotuning. CPU: median of a few wall-clock runs (meaningless under the
    interpreter, reported only so the tour's plumbing is exercised).
    """
    fn()  # warm-up: compile + autotune outside the timed region
    if device == "cuda":
        import triton.testing

        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def loop_ms(fn: Callable[[], Any], device: str, *, calls: int, reps: int, warmup: int = 3,
            wall: bool = False) -> float:
    """Time per call of ``fn`` called ``calls`` times back to back, in milliseconds: the median over
    ``reps`` repetitions of the timed loop. No synchronisation inside the loop; one ``synchronize``
    before it and one after. ``wall=False``: the loop's own time (the host's enqueue time per call;
    with tiny inputs the GPU never holds the host back). ``wall=True``: up to the end of the closing
    synchronize (the host time or the device time per call, whichever is longer, plus one sync over
    ``calls``). ``warmup`` untimed calls first (compilation and autotuning happen on the first calls).
    The garbage collector is paused while timing so that a collection does not land in one loop."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(max(1, warmup)):
        fn()
    sync()
    times = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t1 = time.perf_counter()
            sync()
            t2 = time.perf_counter()
            times.append(((t2 if wall else t1) - t0) * 1e3 / calls)
    finally:
        if was_enabled:
            gc.enable()
    return statistics.median(times)


def loop_timer(calls: int, reps: int, warmup: int = 3, wall: bool = False) -> Callable[[Callable[[], Any], str], float]:
    """A ``Case.timer`` that runs ``loop_ms`` with these settings."""
    def timer(fn: Callable[[], Any], device: str) -> float:
        return loop_ms(fn, device, calls=calls, reps=reps, warmup=warmup, wall=wall)
    return timer


class GraphReplay:
    """``fn()`` captured once in a CUDA graph (lazily, since cases are listed before any runs, after
    one warm-up call that compiles and autotunes outside the capture); each call replays it and
    returns the graph's static output: the kernels' time without the host's launch cost."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn, self.graph, self.out = fn, None, None

    def __call__(self) -> Any:
        if self.graph is None:
            self.fn()
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn()
        self.graph.replay()
        return self.out


class Rotating:
    """Cycles through several input sets so repeated calls do not hit L2 (use for small inputs).

    ``Rotating(make, count)`` calls ``make()`` ``count`` times; ``next()`` returns the next set.
    """

    def __init__(self, make: Callable[[], Any], count: int):
        self.items = [make() for _ in range(max(1, count))]
        self.i = 0

    def next(self):
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return item


def rotation_count(nbytes_per_set: int, device: str, target_bytes: int = 512 << 20) -> int:
    """How many input sets to rotate through so the rotation spans several L2s."""
    if device != "cuda":
        return 1
    return int(min(64, max(1, -(-target_bytes // max(1, nbytes_per_set)))))


def copy_ceiling(device: str, quick: bool) -> dict:
    """GB/s of ``torch.clone`` on a bf16 tensor (bytes read + written), measured now."""
    numel = (1 << 28) if (device == "cuda" and not quick) else (1 << 20)  # 512 MiB or 2 MiB
    x = torch.randn(numel, device=device, dtype=torch.float32).to(torch.bfloat16)
    ms = bench_ms(lambda: x.clone(), device)
    nbytes = 2 * x.numel() * x.element_size()
    del x
    return {"ms": ms, "nbytes": nbytes, "gbps": nbytes / ms / 1e6}


# ---------------------------------------------------------------------------------------------
# Byte formulas
# ---------------------------------------------------------------------------------------------

def bytes_read_write(*tensors_read: torch.Tensor, written: Iterable[torch.Tensor] = ()) -> int:
    """Each input read once plus each output written once."""
    return sum(t.numel() * t.element_size() for t in tensors_read) + sum(
        t.numel() * t.element_size() for t in written
    )


def attention_flops(b: int, h: int, s_q: int, s_kv: int, d: int, causal: bool) -> float:
    """Forward FLOPs of attention: 2 matmuls of 2*S_q*S_kv*D each per head; halved when causal."""
    f = 4.0 * b * h * s_q * s_kv * d
    return f / 2 if causal else f


# ---------------------------------------------------------------------------------------------
# Metadata, rows, writers
# ---------------------------------------------------------------------------------------------

def git_commit() -> str:
    """The checkout's commit; ``LOWPREC_COMMIT`` names it where the tree was copied without .git."""
    if os.environ.get("LOWPREC_COMMIT"):
        return os.environ["LOWPREC_COMMIT"]
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:  # not a git checkout (e.g. an sdist): say so rather than fail the tour
        return "unknown"


def environment(device: str) -> dict:
    import triton

    gpu = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()}), triton interpreter"
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": git_commit(),
        "time": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }


def row_key(row: dict) -> str:
    """The key of a result row: the ``Case.key`` it came from."""
    return f"{row.get('suite')}/{row.get('op')}/{row.get('impl')}/{row.get('shape')}/{row.get('dtype')}"


WITHIN_PCT = 10.0  # the target: every row within +-10% of its median over fresh processes


def merge_processes(runs: list[list[dict]]) -> tuple[list[dict], list[dict]]:
    """Merge the rows of N processes (``runs[i]``: process i's rows) into (results rows, spread rows).

    Rows are matched by ``row_key`` (a key repeated within one process gets ``#2``, ``#3``...). A row
    counts as failed in a process where it is missing, carries ``error``, or has no ``ms``.

    Results row per key: the whole row (its GB/s, ratio, check...) of the process whose time is the
    median among the processes where the row succeeded (the lower median for an even count), plus
    ``processes`` (N), ``process`` (which one, from 1) and ``spread_pct``; a row that failed in every
    process keeps the first process's row. Spread row per key: ``key``, suite/op/impl/shape/dtype,
    ``processes``, ``ok`` (processes where it succeeded), ``median_ms`` (``statistics.median``),
    ``min_ms``, ``max_ms``, ``spread_pct`` = (max - min) / median * 100, ``within_10pct`` (True when
    the row succeeded in every process that did not skip it and each time is within +-10% of the
    median; None with fewer than two successes), ``median_ratio`` / ``ratio_spread_pct`` where rows carry a ``ratio``,
    ``status`` ("ok"; "skipped: <why>" when every process skipped it; else which processes failed and why /
    failed their check / skipped it: ``spread_ok`` tells failures from skips), and the picked row's
    gpu/torch/triton/commit/time."""
    n = len(runs)
    order: list[str] = []
    slots: dict[str, list[Optional[dict]]] = {}
    for i, rows in enumerate(runs):
        seen: dict[str, int] = {}
        for r in rows:
            key = row_key(r)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key = f"{key}#{seen[key]}"
            if key not in slots:
                slots[key] = [None] * n
                order.append(key)
            slots[key][i] = r
    merged, spread = [], []
    for key in order:
        rs = slots[key]
        ok = [(i, r) for i, r in enumerate(rs) if r is not None and not r.get("error") and r.get("ms") is not None]
        problems, skips = [], []
        for i, r in enumerate(rs):
            if r is None:
                problems.append(f"missing in process {i + 1}")
            elif r.get("skipped"):
                skips.append(f"skipped in process {i + 1}: {str(r['skipped'])[:120]}")
            elif r.get("error"):
                problems.append(f"failed in process {i + 1}: {str(r['error'])[:120]}")
            elif r.get("ms") is None:
                problems.append(f"no time in process {i + 1}")
            elif r.get("check_ok") is False:
                problems.append(f"check failed in process {i + 1}")
        first = next(r for r in rs if r is not None)
        srow: dict[str, Any] = {"key": key, **{k: first.get(k) for k in ("suite", "op", "impl", "shape", "dtype")},
                                "processes": n, "ok": len(ok)}
        if ok:
            ms = [r["ms"] for _, r in ok]
            med = statistics.median(ms)
            pick_i, pick = sorted(ok, key=lambda t: t[1]["ms"])[(len(ok) - 1) // 2]
            spread_pct = 100.0 * (max(ms) - min(ms)) / med if med > 0 else None
            within = None
            if len(ok) >= 2:
                ran = n - sum(1 for r in rs if r is not None and r.get("skipped"))  # a skip is no run
                within = len(ok) == ran and all(abs(t - med) <= WITHIN_PCT / 100.0 * med for t in ms)
            srow.update(median_ms=med, min_ms=min(ms), max_ms=max(ms), spread_pct=spread_pct, within_10pct=within)
            ratios = [r["ratio"] for _, r in ok if r.get("ratio") is not None]
            if ratios:
                rmed = statistics.median(ratios)
                srow.update(median_ratio=rmed,
                            ratio_spread_pct=100.0 * (max(ratios) - min(ratios)) / rmed if rmed > 0 else None)
            merged.append({**pick, "processes": n, "process": pick_i + 1, "spread_pct": spread_pct})
        else:
            srow.update(median_ms=None, min_ms=None, max_ms=None, spread_pct=None, within_10pct=None)
            merged.append({**first, "processes": n, "process": rs.index(first) + 1, "spread_pct": None})
        if not problems and len(skips) == n:
            srow["status"] = f"skipped: {rs[0]['skipped']}"
        else:  # a skip is not a failure: "ok" or "skipped..." (``spread_ok``) unless a process failed
            srow["status"] = "; ".join(problems + skips) or "ok"
        src = merged[-1]
        srow.update({k: src.get(k) for k in ("gpu", "torch", "triton", "commit", "time")})
        spread.append(srow)
    return merged, spread


def spread_ok(srow: dict) -> bool:
    """A spread row without failures: every process measured it, or skipped it (and said why)."""
    return srow["status"] == "ok" or all(p.startswith("skipped") for p in srow["status"].split("; "))


def write_results(rows: list[dict], tag: str) -> list[Path]:
    """Write rows as JSON and CSV under benchmarks/results/ and return the paths."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS_DIR / f"{tag}.json", RESULTS_DIR / f"{tag}.csv"]
    paths[0].write_text(json.dumps(rows, indent=1) + "\n")
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return paths


@dataclasses.dataclass(frozen=True)
class Plot:
    """How a suite's rows are plotted (a suite module's ``PLOT``): the x quantity (the rows' ``size``)
    named with its unit, and the series a row belongs to (a line per series)."""

    x_label: str
    series: Callable[[dict], str] = lambda r: f"{r['op']} / {r['impl']} / {r['dtype']}"


DEFAULT_PLOT = Plot("size (per suite; see its module)")
# y panels: the row field and its axis label. Bandwidth rows as a share of the copy ceiling of the
# same run; attention rows (FLOPs, no bytes) in TFLOP/s. A suite with both gets two panels.
PANELS = (("pct_ceiling", "% of torch.clone (GB/s / clone GB/s)"), ("tflops", "TFLOP/s (causal: half the FLOPs)"))
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")  # matplotlib's tab10
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def series_styles(count: int) -> list[dict]:
    """A distinct (colour, marker, line style) per series: the ten colours cycle fastest, each block of
    ten series gets the next marker and line style (distinct up to 80 series)."""
    return [{"color": COLORS[i % len(COLORS)], "marker": MARKERS[(i // len(COLORS)) % len(MARKERS)],
             "linestyle": LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)]} for i in range(count)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_figure(rows: list[dict], title: str, plot: Plot = DEFAULT_PLOT):
    """The matplotlib figure of ``plot_suite`` (None when no row has a plottable value): one panel per
    field of ``PANELS`` that some row carries, x on a log2 axis labelled ``plot.x_label``, the legend
    to the right of the data."""
    plt = _pyplot()
    panels = []
    for field, ylabel in PANELS:
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r.get(field) is not None and r.get("size") is not None and not r.get("error"):
                series.setdefault(plot.series(r), []).append((r["size"], r[field]))
        if series:
            panels.append((field, ylabel, series))
    if not panels:
        return None
    ceiling = next((r["ceiling_gbps"] for r in rows if r.get("ceiling_gbps")), None)
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.8 * len(panels)), squeeze=False)
    for ax, (field, ylabel, series) in zip(axes[:, 0], panels):
        for (label, pts), style in zip(sorted(series.items()), series_styles(len(series))):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, markersize=5, **style)
        if field == "pct_ceiling":
            ax.axhline(100.0, color="k", linewidth=1, linestyle="--",
                       label="torch.clone = 100%" + (f" ({ceiling:.0f} GB/s)" if ceiling else ""))
        ax.set_xscale("log", base=2)
        ax.set_xlabel(plot.x_label)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=7)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig


def plot_suite(rows: list[dict], path: Path, title: str, plot: Plot = DEFAULT_PLOT) -> Optional[Path]:
    """Write ``plot_figure`` of a suite's rows to ``path``. Returns None, drawing nothing, when the rows
    ran under the CPU interpreter (their timings mean nothing), when no row has a plottable value, or
    when matplotlib is not installed (the tour says which)."""
    if any(r.get("interpreter") for r in rows):
        return None
    try:
        plt = _pyplot()
    except ImportError:
        return None
    fig = plot_figure(rows, title, plot)
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
