"""Hadamard transforms: GB/s against the torch.clone ceiling of the same run, and decode latency.

Kept lean so the whole suite (compiles and autotuning included) runs in about two minutes on one GPU.
Bandwidth cases (bf16, rows so the input is >= 256 MiB; bytes = 2 * numel * itemsize), one row per
implementation so one GPU run answers the design questions; ``python -m benchmarks.dispatch`` writes
the kernel-choice tables (``hadamard_kernels/dispatch_table.py``) from its ``butterfly``/``matmul`` rows:

- powers of two 16..32768 and K * 2^m in {12*1024, 20*1024, 28*512, 28*1024, 40*512}:
  ``butterfly`` (the in-register butterfly: on Hopper the Gluon kernel for powers of two, its note
  says which), ``matmul`` (the tensor-core kernel, bf16 hi/lo
  split dots), ``auto`` (what ``hadamard_transform`` / ``hadamard_transform_<K>N`` run: the dispatch
  table; for K * 2^m in bf16 on Hopper the Gluon kernels of ``gluon_kmix`` / ``gluon_kmix_stream``, the
  row's note says which);
- n in ``COMPILED_SIZES``: ``compiled``, the public function under ``torch.compile(fullgraph=True,
  dynamic=False)`` (Inductor; ``aot_eager`` on CPU), what a compiled model's call runs;
- n in {256, 4096, 32768}: ``torch-matmul``, dense ``x @ H`` in bf16 (a peer: fp32 accumulate; at
  32768 compute-bound), the ``speedup`` baseline of those sizes;
- ``fast_hadamard_transform``: Dao's CUDA kernel when importable (powers of two only).

check = relative RMS error against the float64 reference on the first rows, divided by the error of
rounding the exact result once to bf16 (ok <= 1.1). Decode latency (op ``latency``, 1x4096, 16x4096,
128x4096 bf16; the ``us`` column is the number to read, aim <= 5 us): ``auto`` through the public
function (validation and kernel choice; eager calls skip the custom-op dispatcher) on rotating input
sets; ``launch`` the same kernel through the launcher seam ``H._launch`` (the difference is the public
function's host overhead); ``graph`` one captured call replayed from a CUDA graph (GPU only: the
kernel without host overhead).

``ctx.quick``: 4 rows, a few n <= 1024. ``ctx.sizes``: those n only (``SIZES``; the tour refuses
others before any work, ``size_problem``), the same impls as above for each.

The dense ``torch-matmul`` matrix is built on the device by doubling, in bf16 on a GPU and float32 on
CPU (no float64 copy), only after ``harness.require_memory`` found room for it (n^2 elements and the
doubling's previous step, plus the matmul's operands): where it does not fit (32768^2 float32 is
4 GiB) the row says "skipped: needs X GiB ..., machine has Y GiB available".
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from benchmarks import harness
from benchmarks.harness import Case, Context
from hadamard_kernels import gluon_kmix, gluon_kmix_stream, hadamard as H
from hadamard_kernels.gluon_butterfly import eligible as gluon_eligible
from hadamard_kernels.matrices import hadamard_k_matrix, is_power_of_two
from hadamard_kernels.reference import hadamard_transform_ref, rel_rms, rounding_bound

SUITE = "hadamard"
POW2 = [2 ** i for i in range(4, 16)]  # 16 .. 32768
K_SIZES = [(12, 1024), (20, 1024), (28, 512), (28, 1024), (40, 512)]
TORCH_MATMUL_N = (256, 4096, 32768)
# (K, 2^m) with a ``compiled`` row: one compiled function each, fewer than dynamo's 8 entries per code object
COMPILED_SIZES = ((1, 256), (1, 1024), (1, 4096), (12, 1024), (28, 512), (12, 16))
TARGET_BYTES = 256 << 20
CHECK_ROWS = 64

try:  # Dao's CUDA kernel, if installed
    import fast_hadamard_transform as _fht  # type: ignore
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _fht = None

SIZES = (f"n = 2^m from 2 to {H.MAX_POW2}, or n = K * 2^m with K in {{12, 20, 28}} and 2^m <= {H.MAX_P_FOR_K} "
         "(e.g. 48, 12288, 28672): the sizes the butterfly and matmul kernels run exactly")
PLOT = harness.Plot("n (transform size, elements per row; log2 axis)")
SPLIT_K = (12, 20, 28)  # n = 40 * 2^m is 20 * 2^(m+1); the 40N rows are listed in K_SIZES


def _split(n: int) -> tuple[int, int] | None:
    """(K, 2^m) with n = K * 2^m (K = 1 for powers of two), or None."""
    if is_power_of_two(n):
        return 1, n
    return next(((k, n // k) for k in SPLIT_K if n % k == 0 and is_power_of_two(n // k)), None)


def size_problem(n: int, ctx: Context) -> str | None:
    """Why this suite cannot run n (None: it can): the kernels run n = 2^m and K * 2^m only."""
    kp = _split(n)
    if kp is None:
        return f"n={n} is neither a power of two nor K * 2^m with K in {SPLIT_K}"
    k, p = kp
    if k == 1 and not 2 <= n <= H.MAX_POW2:
        return f"n={n} is outside the kernels' powers of two 2..{H.MAX_POW2}"
    if k > 1 and p > H.MAX_P_FOR_K:
        return f"n={n} = {k} * {p}, and the kernels take K * 2^m with 2^m <= {H.MAX_P_FOR_K} only"
    return None


_K_PUBLIC = {1: H.hadamard_transform, 12: H.hadamard_transform_12N, 20: H.hadamard_transform_20N,
             28: H.hadamard_transform_28N, 40: H.hadamard_transform_40N}


class _Input:
    """One input tensor per (n, k), built on first use; building the next one frees the previous
    (cases are listed up front, but run in order, so at most one large input lives at a time)."""

    current: dict = {}

    def __init__(self, rows: int, n: int, device: str, seed: int):
        self.rows, self.n, self.device, self.seed = rows, n, device, seed

    def get(self) -> torch.Tensor:
        key = (self.rows, self.n, self.seed)
        if key not in _Input.current:
            _Input.current.clear()
            if self.n not in _DENSE:
                _DENSE.clear()  # the previous size's dense matrix
            if self.device == "cuda":
                torch.cuda.empty_cache()
            g = torch.Generator(device=self.device).manual_seed(self.seed)
            _Input.current[key] = torch.randn(self.rows, self.n, generator=g, device=self.device).to(torch.bfloat16)
        return _Input.current[key]


_DENSE: dict = {}  # at most one dense matrix, that of the size being run


def dense_bytes(n: int, rows: int, device: str) -> int:
    """Peak bytes of the ``torch-matmul`` baseline at n: the n x n matrix and the previous doubling
    step (1.25 n^2 elements), plus the matmul's input copy and output (float32 on CPU)."""
    item = 2 if device == "cuda" else 4
    return int(1.25 * n * n * item) + rows * n * (2 * item + 2)


def _dense(n: int, rows: int, device: str) -> torch.Tensor:
    """The Sylvester matrix H_n (exact) in bf16 on a GPU, float32 on CPU, built on the device by
    doubling (no float64 host copy: 8 GiB at n = 32768), after ``harness.require_memory`` found room
    (else ``harness.Skipped``). The previous size's matrix is freed first."""
    if n not in _DENSE:
        _DENSE.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        harness.require_memory(dense_bytes(n, rows, device), device,
                               f"dense {n} x {n} {str(dtype).replace('torch.', '')} Hadamard matrix and the matmul")
        h = torch.ones(1, 1, dtype=dtype, device=device)
        h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype, device=device)
        while h.shape[0] < n:
            h = torch.kron(h2, h)  # [[H, H], [H, -H]]: scipy.linalg.hadamard order
        _DENSE[n] = h
    return _DENSE[n]


def _butterfly_note(k: int, n: int, device: str) -> str:
    """Which butterfly ran: the Gluon kernel (contiguous rows of 2^m on Hopper) or plain Triton."""
    probe = torch.empty(0, device=device)
    return "Gluon kernel" if k == 1 and gluon_eligible(probe, n, True) else "plain Triton"


def _auto_note(k: int, n: int, device: str) -> str:
    """What the public function ran: on Hopper the Gluon K * 2^m kernel (bf16 rows it takes), else
    the dispatch table's kernel."""
    probe = torch.empty(0, device=device, dtype=torch.bfloat16)
    if k > 1 and gluon_kmix.eligible(probe, n, k, n // k, True):
        kp = H._padded_k(k)
        if gluon_kmix_stream.eligible(kp, n // k):
            copy = "TMA" if gluon_kmix_stream.uses_tma(n, k, kp, n // k) else "cp.async"
            return f"Gluon K-mix kernel, streaming ({copy}: the next rows copied to shared memory)"
        return "Gluon K-mix kernel (tensor-core K mix)"
    return f"dispatch: {H._pick(n, k, torch.bfloat16)}"


def _compiled(k: int, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The public function of K under torch.compile, compiled on its first call."""
    fn = _K_PUBLIC[k]
    return torch.compile(lambda t: fn(t, 1.0), fullgraph=True, dynamic=False,
                         backend="inductor" if device == "cuda" else "aot_eager")


def _impls(k: int, n: int, rows: int, device: str,
           x: Callable[[], torch.Tensor]) -> list[tuple[str, Callable, str, bool]]:
    """(impl, fn, note, checkable) for one size."""
    hk = None if k == 1 else hadamard_k_matrix(k, torch.float32, device)
    out = [
        ("butterfly", lambda: H.butterfly_hadamard(x(), 1.0, hk), _butterfly_note(k, n, device), True),
        ("matmul", lambda: H.matmul_hadamard(x(), 1.0, hk), "", True),
        ("auto", lambda: _K_PUBLIC[k](x(), 1.0), _auto_note(k, n, device), True),
    ]
    if (k, n // k) in COMPILED_SIZES:
        compiled = _compiled(k, device)
        out.append(("compiled", lambda: compiled(x()), "torch.compile(fullgraph=True) of the public function", True))
    if k == 1 and n in TORCH_MATMUL_N:
        out.append(("torch-matmul", lambda: x() @ _dense(n, rows, device), "dense bf16 x @ H", True))
    if _fht is not None and device == "cuda" and k == 1:
        out.append(("fast_hadamard_transform", lambda: _fht.hadamard_transform(x(), 1.0), "", True))
    return out


def _check(fn: Callable[[], torch.Tensor], x: Callable[[], torch.Tensor], k: int):
    def run():
        xs = x()[:CHECK_ROWS]
        full = fn()
        ref = hadamard_transform_ref(xs, 1.0, k=k)
        ratio = rel_rms(full[:CHECK_ROWS], ref) / rounding_bound(ref, torch.bfloat16)
        return "rel_rms/1rounding", ratio, ratio <= 1.1

    return run


def _size_cases(ctx: Context, k: int, p: int, rows: Optional[int] = None) -> Iterable[Case]:
    n = k * p
    if rows is None:
        rows = 4 if ctx.quick else -(-TARGET_BYTES // (2 * n))
    inp = _Input(rows, n, ctx.device, seed=n)
    shape = f"{rows}x{n}"
    nbytes = 2 * rows * n * 2
    op = "hadamard" if k == 1 else f"hadamard_{k}N"
    impls = _impls(k, n, rows, ctx.device, inp.get)
    has_baseline = any(impl == "torch-matmul" for impl, *_ in impls)
    for impl, fn, note, checkable in impls:
        if not ctx.on_gpu and impl == "torch-matmul":
            note = note + " (CPU: fp32 matmul)"
            fn = (lambda: (inp.get().float() @ _dense(n, rows, ctx.device)).to(torch.bfloat16))
        if ctx.on_gpu and n >= 16384 and impl == "torch-matmul":
            note = note + " (compute-bound)"
        yield Case(SUITE, op, impl, shape, "bf16", fn, nbytes=nbytes,
                   check=_check(fn, inp.get, k) if checkable else None,
                   baseline=f"{SUITE}/{op}/torch-matmul/{shape}/bf16" if has_baseline else None,
                   size=n, note=note)


def _latency_cases(ctx: Context) -> Iterable[Case]:
    n = 4096
    for rows in (1, 16, 128):
        per_set = rows * n * 2
        count = harness.rotation_count(per_set, ctx.device)
        g = torch.Generator(device=ctx.device).manual_seed(rows)
        rot = harness.Rotating(lambda: torch.randn(rows, n, generator=g, device=ctx.device).to(torch.bfloat16), count)
        first = rot.items[0]
        impl_name = H._pick(n, 1, torch.bfloat16)
        # default arguments bind this iteration's inputs (cases run after the loop has finished)
        variants = [
            ("auto", H.hadamard_transform, lambda rot=rot: H.hadamard_transform(rot.next()),
             f"rotating {count} input sets"),
            ("launch", lambda t, i=impl_name: H._launch(t, 1.0, None, i),
             lambda rot=rot, i=impl_name: H._launch(rot.next(), 1.0, None, i),
             f"kernel {impl_name} launched through the seam H._launch; rotating {count} input sets"),
        ]
        if ctx.on_gpu:
            replay = harness.GraphReplay(lambda first=first: H.hadamard_transform(first))
            variants.append(("graph", lambda t, replay=replay: replay(), replay,
                             "CUDA graph replay, one static input"))
        for impl, f, timed, note in variants:
            def check(f=f, first=first):
                ref = hadamard_transform_ref(first)
                ratio = rel_rms(f(first), ref) / rounding_bound(ref, torch.bfloat16)
                return "rel_rms/1rounding", ratio, ratio <= 1.1

            yield Case(SUITE, "latency", impl, f"{rows}x{n}", "bf16", timed,
                       nbytes=2 * per_set, check=check, note=note)


def cases(ctx: Context) -> Iterable[Case]:
    if ctx.sizes:
        bad = [f"{n}: {size_problem(n, ctx)}" for n in ctx.sizes if size_problem(n, ctx)]
        if bad:  # the tour refuses these before any work; a direct caller gets the same reasons
            raise ValueError(f"{SUITE}: sizes it cannot run: {'; '.join(bad)}")
        sizes = [_split(n) for n in ctx.sizes]
    elif ctx.quick:
        sizes = [(1, 16), (1, 256), (1, 1024), (12, 16), (28, 32)]
    else:
        sizes = [(1, n) for n in POW2] + K_SIZES
    for k, p in sizes:
        yield from _size_cases(ctx, k, p)
    if not ctx.sizes:
        yield from _latency_cases(ctx)
