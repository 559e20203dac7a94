"""Write the Hadamard kernel-choice tables from measured rows:
``python -m benchmarks.dispatch [--results FILE ...] [--check]``.

Reads the hadamard suite's rows of the tour (``python -m benchmarks --suite hadamard`` on a GPU;
default: every ``benchmarks/results/*_hadamard.json`` except quick and CPU-smoke runs) and writes
``hadamard_kernels/dispatch_table.py``: ``DISPATCH[(n, dtype)]`` for ``hadamard_transform`` and
``DISPATCH_K[(K, n, dtype)]`` for ``hadamard_transform_<K>N``, ``DEFAULT`` elsewhere.

Rules (one entry per size/dtype with both a ``butterfly`` and a ``matmul`` row):
- The size comes from the row's ``op`` and ``size``: op ``hadamard`` is K = 1, op ``hadamard_<K>N``
  is K (n = 40 * 512 and n = 20 * 1024 are the same n = 20480, told apart by the op only).
- Rows that failed their accuracy check, errored, or ran under the interpreter are ignored.
- ``matmul`` gets an entry only when the butterfly took more than ``MARGIN`` (1%) longer than the
  matmul kernel. 1%: in the committed H200 run, the same kernel timed twice (its own row and the
  ``auto`` row that dispatched to it) differs by at most 0.5% (``python -m benchmarks.dispatch
  --spread`` prints it); smaller differences are not a measured win.
- Never fp32 (Hopper's tensor cores accumulate the bf16-split products with less than IEEE fp32
  precision: tests/hadamard_kernels/test_hadamard.py), never where the matmul kernel's padded row
  exceeds ``MATMUL_MAX_ROW``.
- ``DEFAULT = "butterfly"``: it runs every size and dtype.
- Several files: rows must come from one GPU; a later file's row replaces an earlier one's.

``--check``: exit 1 when the committed module differs from what the command would write (CI: a
hand edit of the table fails).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
TABLE_PATH = ROOT / "hadamard_kernels" / "dispatch_table.py"
MARGIN = 0.01
DEFAULT = "butterfly"
KERNELS = ("butterfly", "matmul")
# result-row dtype name -> torch attribute
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_OP = re.compile(r"^hadamard(?:_(\d+)N)?$")


def default_results() -> list[Path]:
    return [p for p in sorted(RESULTS_DIR.glob("*_hadamard.json"))
            if "quick" not in p.name and "cpu-smoke" not in p.name]


def _matmul_max_row() -> int:
    from hadamard_kernels.hadamard import MATMUL_MAX_ROW

    return MATMUL_MAX_ROW


def _padded_row(k: int, p: int) -> int:
    kp = 1 if k == 1 else max(16, 1 << (k - 1).bit_length())
    return kp * p


def _size(row: dict) -> Optional[tuple[int, int]]:
    """(K, n) of a bandwidth row of the hadamard suite, None for other rows."""
    m = _OP.match(str(row.get("op", "")))
    if row.get("suite") != "hadamard" or m is None:
        return None
    k = int(m.group(1) or 1)
    n = int(row["size"]) if row.get("size") is not None else int(str(row["shape"]).split("x")[-1])
    p = n // k
    if n % k or p < 1 or p & (p - 1):
        raise ValueError(f"row {row.get('op')} {row.get('shape')}: n={n} is not {k} * 2^m")
    return k, n


def measured(rows: Iterable[dict]) -> dict[tuple[int, int, str], dict[str, dict]]:
    """{(K, n, dtype): {kernel: row}} for the usable butterfly/matmul rows (later rows win)."""
    out: dict[tuple[int, int, str], dict[str, dict]] = {}
    for row in rows:
        if row.get("impl") not in KERNELS or row.get("error") or row.get("ms") is None:
            continue
        if row.get("check_ok") is False or row.get("interpreter"):
            continue
        size = _size(row)
        if size is None:
            continue
        if row.get("dtype") not in DTYPES:
            raise ValueError(f"row {row.get('op')} {row.get('shape')}: unknown dtype {row.get('dtype')!r}")
        out.setdefault((*size, row["dtype"]), {})[row["impl"]] = row
    return out


def choose(rows: Iterable[dict], margin: float = MARGIN,
           max_row: Optional[int] = None) -> dict[tuple[int, int, str], tuple[str, dict, dict]]:
    """{(K, n, dtype): ("matmul", butterfly_row, matmul_row)} where the rules above pick matmul."""
    max_row = _matmul_max_row() if max_row is None else max_row
    picks = {}
    for (k, n, dtype), by in sorted(measured(rows).items()):
        if set(by) != set(KERNELS) or dtype == "fp32" or _padded_row(k, n // k) > max_row:
            continue
        if by["butterfly"]["ms"] > by["matmul"]["ms"] * (1.0 + margin):
            picks[(k, n, dtype)] = ("matmul", by["butterfly"], by["matmul"])
    return picks


def load(paths: Sequence[Path]) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        rows += [r for r in data if isinstance(r, dict)]
    gpus = sorted({r["gpu"] for r in rows if r.get("suite") == "hadamard" and r.get("gpu")})
    if len(gpus) > 1:
        raise ValueError(f"rows from several GPUs ({', '.join(gpus)}): pass --results for one GPU")
    return rows


def _display(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def _comment(b: dict, m: dict) -> str:
    faster = 100.0 * (b["ms"] / m["ms"] - 1.0)
    text = f"matmul {faster:.1f}% faster"
    if b.get("pct_ceiling") is not None and m.get("pct_ceiling") is not None:
        text += f" ({m['pct_ceiling']:.1f}% vs {b['pct_ceiling']:.1f}% of clone)"
    return text


def render(paths: Sequence[Path], rows: list[dict], margin: float = MARGIN,
           max_row: Optional[int] = None) -> str:
    """The source of ``hadamard_kernels/dispatch_table.py`` for these files and rows."""
    picks = choose(rows, margin, max_row)
    hrows = [r for r in rows if r.get("suite") == "hadamard"]
    gpus = sorted({str(r["gpu"]) for r in hrows if r.get("gpu")}) or ["unknown GPU"]
    commits = sorted({str(r["commit"]) for r in hrows if r.get("commit")}) or ["unknown commit"]
    files = ", ".join(_display(p) for p in paths) or "(no files)"
    lines = [
        '"""Kernel choice per size for ``hadamard_transform`` (``DISPATCH``, keyed by (n, dtype)) and',
        '``hadamard_transform_<K>N`` (``DISPATCH_K``, keyed by (K, n, dtype)); other sizes use ``DEFAULT``.',
        "",
        "GENERATED by ``python -m benchmarks.dispatch``: do not edit (``--check`` fails CI on a hand edit).",
        f"Source: {files}",
        f"GPU: {', '.join(gpus)}; measured at commit {', '.join(commits)}.",
        f"An entry means the matmul kernel measured more than {100 * margin:g}% faster than the butterfly",
        "(never fp32, never above the matmul kernel's row limit); the rules are in benchmarks/dispatch.py.",
        '"""',
        "",
        "import torch",
        "",
        f'DEFAULT = "{DEFAULT}"',
        "",
    ]

    def table(name: str, annotation: str, items) -> None:
        lines.append(f"{name}: {annotation} = {{")
        for key, (kernel, b, m) in items:
            lines.append(f'    {key}: "{kernel}",  # {_comment(b, m)}')
        lines.append("}")

    def key_text(k: int, n: int, dtype: str, with_k: bool) -> str:
        torch_dtype = f"torch.{DTYPES[dtype]}"
        return f"({k}, {n}, {torch_dtype})" if with_k else f"({n}, {torch_dtype})"

    table("DISPATCH", "dict[tuple[int, torch.dtype], str]",
          [(key_text(k, n, d, False), v) for (k, n, d), v in picks.items() if k == 1])
    table("DISPATCH_K", "dict[tuple[int, int, torch.dtype], str]",
          [(key_text(k, n, d, True), v) for (k, n, d), v in picks.items() if k != 1])
    return "\n".join(lines) + "\n"


def spread(rows: list[dict]) -> float:
    """Largest relative difference between a kernel's own row and the ``auto`` row that ran it."""
    own = {(r["op"], r["shape"], r["dtype"], r["impl"]): r["ms"] for r in rows
           if r.get("suite") == "hadamard" and r.get("impl") in KERNELS and r.get("ms")}
    worst = 0.0
    for r in rows:
        note = str(r.get("note") or "")
        if r.get("suite") == "hadamard" and r.get("impl") == "auto" and r.get("ms") and note.startswith("dispatch: "):
            ms = own.get((r["op"], r["shape"], r["dtype"], note.split(": ", 1)[1]))
            if ms:
                worst = max(worst, abs(r["ms"] / ms - 1.0))
    return worst


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dispatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, nargs="+", help="hadamard results JSON files (default: "
                   "benchmarks/results/*_hadamard.json, quick and cpu-smoke runs excluded)")
    p.add_argument("--check", action="store_true", help="exit 1 if the committed table differs")
    p.add_argument("--spread", action="store_true", help="print the same-kernel timing spread and exit")
    p.add_argument("--out", type=Path, default=TABLE_PATH, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    paths = args.results or default_results()
    if not paths:
        print("no results files: run `python -m benchmarks --suite hadamard` on a GPU first", file=sys.stderr)
        return 2
    rows = load(paths)
    if args.spread:
        print(f"same-kernel spread: {100 * spread(rows):.2f}% (margin {100 * MARGIN:g}%)")
        return 0
    text = render(paths, rows)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{_display(args.out)} is not what `python -m benchmarks.dispatch` writes from "
                  f"{', '.join(_display(q) for q in paths)}: rerun the command", file=sys.stderr)
            return 1
        print(f"{_display(args.out)} is up to date")
        return 0
    args.out.write_text(text)
    print(f"wrote {_display(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
