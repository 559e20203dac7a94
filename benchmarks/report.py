"""Markdown tables from a results file: ``python -m benchmarks.report benchmarks/results/<tag>.json``.

A results file (``<tag>.json``) gives one table per suite; rows of the ``host`` suite (they carry a
``ratio`` to ``torch.add``) get the host table instead. A spread file (``<tag>_spread.json``, written
by ``python -m benchmarks --processes N``) gives the spread table. The tour prints its tables as
aligned text (``aligned``: column widths from the content): the results table with ``tour_columns``,
the host and spread tables with the same columns as here.
"""

from __future__ import annotations

import json
import sys
from typing import Callable, Optional


def _f(v, spec):
    return "" if v is None else format(v, spec)


def _yes_no(v: Optional[bool]) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _us(key: str) -> Callable[[dict], str]:
    return lambda r: _f(None if r.get(key) is None else r[key] * 1e3, ".1f")


# (header, cell) per column; the cell function formats one row
HOST_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("op", lambda r: str(r.get("op"))),
    ("impl", lambda r: str(r.get("impl"))),
    ("shape", lambda r: str(r.get("shape"))),
    ("dtype", lambda r: str(r.get("dtype"))),
    ("timing", lambda r: str(r.get("timing") or "")),
    ("us/call", lambda r: "ERROR " + str(r["error"])[:60] if r.get("error") else _us("ms")(r)),
    ("x torch.add", lambda r: _f(r.get("ratio"), ".2f")),
    ("target", lambda r: str(r.get("target") or "")),
    ("met", lambda r: "" if "target_met" not in r else _yes_no(r["target_met"])),
]

def _dash(v, spec):
    return "-" if v is None or v != v else format(v, spec)  # v != v: NaN


def check_text(r: dict) -> str:
    """The check cell of a result row: ERROR, skipped (and why), ok/FAIL with the metric, or "-"."""
    if r.get("error"):
        return "ERROR " + str(r["error"])[:200]
    if r.get("skipped"):
        return "skipped: " + str(r["skipped"])
    if "check_ok" not in r:
        return "-"
    return f"{'ok' if r['check_ok'] else 'FAIL'} {r['check_metric']}={r['check_value']:.3g}"


TOUR_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("suite", lambda r: str(r.get("suite"))),
    ("op", lambda r: str(r.get("op"))),
    ("impl", lambda r: str(r.get("impl"))),
    ("shape", lambda r: str(r.get("shape"))),
    ("dtype", lambda r: str(r.get("dtype"))),
    ("us", lambda r: _dash(None if r.get("ms") is None else r["ms"] * 1e3, ".1f")),
    ("GB/s", lambda r: _dash(r.get("gbps"), ".1f")),
    ("%clone", lambda r: _dash(r.get("pct_ceiling"), ".1f")),
    ("TFLOP/s", lambda r: _dash(r.get("tflops"), ".1f")),
    ("speedup", lambda r: _dash(r.get("speedup"), ".3f")),
    ("check", check_text),
]
# the host suite's extra columns, shown where some row of the table has them
TOUR_EXTRA_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("x torch.add", lambda r: _dash(r.get("ratio"), ".2f")),
    ("target", lambda r: str(r.get("target") or "-")),
    ("met", lambda r: "-" if "target_met" not in r else _yes_no(r["target_met"])),
]


TOUR_NUMERIC = ("us", "GB/s", "%clone", "TFLOP/s", "speedup", "x torch.add")


def tour_columns(rows: list[dict]) -> list[tuple[str, Callable[[dict], str]]]:
    """The tour's results columns for ``rows``: ``TOUR_COLUMNS``, the host columns where a row has a
    ratio or a target, and ``note`` last where a row has one."""
    cols = list(TOUR_COLUMNS)
    if any("ratio" in r or "target" in r for r in rows):
        cols += TOUR_EXTRA_COLUMNS
    if any(r.get("note") for r in rows):
        cols.append(("note", lambda r: str(r.get("note") or "")))
    return cols


SPREAD_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("key", lambda r: str(r.get("key"))),
    ("ok/N", lambda r: f"{r.get('ok')}/{r.get('processes')}"),
    ("median us", _us("median_ms")),
    ("min us", _us("min_ms")),
    ("max us", _us("max_ms")),
    ("spread %", lambda r: _f(r.get("spread_pct"), ".1f")),
    ("within +-10%", lambda r: _yes_no(r.get("within_10pct"))),
    ("status", lambda r: str(r.get("status"))),
]


def aligned(rows: list[dict], columns, right: tuple[str, ...] = ()) -> str:
    """Rows as an aligned plain-text table, column widths from the content: numbers right-aligned, and
    the columns named in ``right`` (numeric columns that may hold only "-")."""
    cells = [[cell(r) for _, cell in columns] for r in rows]
    widths = [max([len(h)] + [len(c[j]) for c in cells]) for j, (h, _) in enumerate(columns)]

    def numeric(j):
        vals = [c[j] for c in cells if c[j] not in ("", "-")]
        return bool(vals) and all(v.replace(".", "", 1).replace("-", "", 1).isdigit() for v in vals)

    rjust = [numeric(j) or columns[j][0] in right for j in range(len(columns))]
    fmt = lambda vals: "  ".join(v.rjust(w) if rj else v.ljust(w) for v, w, rj in zip(vals, widths, rjust))  # noqa: E731
    lines = [fmt([h for h, _ in columns]), "  ".join("-" * w for w in widths), *(fmt(c) for c in cells)]
    return "\n".join(line.rstrip() for line in lines)


def markdown(rows: list[dict], columns) -> str:
    out = ["| " + " | ".join(h for h, _ in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    out += ["| " + " | ".join(cell(r).replace("|", "/") for _, cell in columns) + " |" for r in rows]
    return "\n".join(out)


def _header(head: dict) -> str:
    return (f"GPU: {head.get('gpu')} | torch {head.get('torch')} | triton {head.get('triton')} | "
            f"commit {head.get('commit')} | {head.get('time')}")


def spread_tables(rows: list[dict]) -> str:
    n = rows[0].get("processes") if rows else 0
    return "\n".join([_header(rows[0]), "", f"### spread over {n} fresh processes", "",
                      "Per row: its time in each process; spread = (max - min) / median; within +-10%: every "
                      "process ran it and each time lies within 10% of the median.", "",
                      markdown(rows, SPREAD_COLUMNS), ""])


def tables(rows: list[dict]) -> str:
    if rows and "spread_pct" in rows[0] and "key" in rows[0]:
        return spread_tables(rows)
    head = rows[0]
    out = [_header(head), ""]
    ceiling = next((r for r in rows if r.get("suite") == "ceiling"), None)
    if ceiling:
        out += [f"Ceiling: torch.clone {ceiling['gbps']:.0f} GB/s (bytes read + written), same run.", ""]
    suites: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("suite") != "ceiling":
            suites.setdefault(r["suite"], []).append(r)
    for suite, rs in suites.items():
        if any("timing" in r for r in rs):  # host-cost rows (the host suite)
            out += [f"### {suite}", "", "Host time per eager call (enqueue only, tiny inputs), as a ratio to "
                    "`torch.add` timed in the same process; `device`: time per CUDA-graph replay; `wall`: "
                    "until the GPU finished.", "", markdown(rs, HOST_COLUMNS), ""]
            continue
        out += [f"### {suite}", "", "| op | impl | shape | dtype | us | GB/s | % clone | TFLOP/s | speedup | check |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rs:
            check = "ERROR " + str(r["error"])[:80] if r.get("error") else check_text(r)
            check = "" if check == "-" else check
            if r.get("ratio") is not None:  # a time ratio to another row of the run, and its target
                met = ("" if r.get("target") is None
                       else f", target {r['target']}: {'met' if r.get('target_met') else 'MISSED'}")
                check = (check + "; " if check else "") + f"time ratio {r['ratio']:.3f}{met}"
            us = None if r.get("ms") is None else r["ms"] * 1e3
            out.append(f"| {r['op']} | {r['impl']} | {r['shape']} | {r['dtype']} | {_f(us, '.1f')} | "
                       f"{_f(r.get('gbps'), '.0f')} | {_f(r.get('pct_ceiling'), '.1f')} | {_f(r.get('tflops'), '.0f')} | "
                       f"{_f(r.get('speedup'), '.3f')} | {check} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(tables(json.loads(open(path).read())))
