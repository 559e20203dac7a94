"""Markdown tables from a results file: ``python -m benchmarks.report benchmarks/results/<tag>.json``."""

from __future__ import annotations

import json
import sys


def _f(v, spec):
    return "" if v is None else format(v, spec)


def tables(rows: list[dict]) -> str:
    head = rows[0]
    out = [f"GPU: {head.get('gpu')} | torch {head.get('torch')} | triton {head.get('triton')} | "
           f"commit {head.get('commit')} | {head.get('time')}", ""]
    ceiling = next((r for r in rows if r.get("suite") == "ceiling"), None)
    if ceiling:
        out += [f"Ceiling: torch.clone {ceiling['gbps']:.0f} GB/s (bytes read + written), same run.", ""]
    suites: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("suite") != "ceiling":
            suites.setdefault(r["suite"], []).append(r)
    for suite, rs in suites.items():
        out += [f"### {suite}", "", "| op | impl | shape | dtype | us | GB/s | % clone | TFLOP/s | speedup | check |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rs:
            check = "" if "check_ok" not in r else f"{'ok' if r['check_ok'] else 'FAIL'} {r['check_metric']}={r['check_value']:.3g}"
            if r.get("error"):
                check = "ERROR " + r["error"][:80]
            us = None if r.get("ms") is None else r["ms"] * 1e3
            out.append(f"| {r['op']} | {r['impl']} | {r['shape']} | {r['dtype']} | {_f(us, '.1f')} | "
                       f"{_f(r.get('gbps'), '.0f')} | {_f(r.get('pct_ceiling'), '.1f')} | {_f(r.get('tflops'), '.0f')} | "
                       f"{_f(r.get('speedup'), '.3f')} | {check} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(tables(json.loads(open(path).read())))
