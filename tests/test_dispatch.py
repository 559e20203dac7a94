"""The Hadamard kernel-choice tables: written by ``python -m benchmarks.dispatch`` from measured rows."""

import json

import pytest
import torch

import hadamard_kernels.dispatch_table as T
import hadamard_kernels.hadamard as H
from benchmarks import dispatch


def _table(source: str) -> dict:
    ns: dict = {}
    exec(compile(source, "dispatch_table.py", "exec"), ns)
    return ns


def test_committed_table_is_generated():
    # a hand edit of hadamard_kernels/dispatch_table.py (or new results without a rerun) fails here
    paths = dispatch.default_results()
    assert paths, "no committed benchmarks/results/*_hadamard.json"
    assert dispatch.TABLE_PATH.read_text() == dispatch.render(paths, dispatch.load(paths))
    assert dispatch.main(["--check"]) == 0


def test_hadamard_uses_the_generated_tables():
    assert H.DISPATCH is T.DISPATCH and H.DISPATCH_K is T.DISPATCH_K and H.DEFAULT == T.DEFAULT == "butterfly"
    assert set(T.DISPATCH.values()) | set(T.DISPATCH_K.values()) <= {"butterfly", "matmul"}


@pytest.mark.parametrize("k, p", [(28, 512), (28, 1024), (40, 512)])
def test_stale_rows_pick_matmul(k, p):
    # H200 at c894e0a: matmul 27/28/20% of the copy ceiling against the butterfly's 21/18/11%
    n = k * p
    assert T.DISPATCH_K[(k, n, torch.bfloat16)] == "matmul"
    assert H._pick(n, k, torch.bfloat16) == "matmul"


def test_pick_returns_the_table():
    for (n, dtype), kernel in T.DISPATCH.items():
        assert H._pick(n, 1, dtype) == kernel
    for (k, n, dtype), kernel in T.DISPATCH_K.items():
        assert H._pick(n, k, dtype) == kernel
    for n in (16, 2048, 32768):
        assert (n, torch.bfloat16) not in T.DISPATCH and H._pick(n, 1, torch.bfloat16) == T.DEFAULT
    assert H._pick(1024, 1, torch.float32) == T.DEFAULT  # fp32 never measured faster: not in the table
    assert (12, 12 * 1024, torch.bfloat16) not in T.DISPATCH_K and H._pick(12 * 1024, 12, torch.bfloat16) == T.DEFAULT


def _row(op, impl, n, ms, dtype="bf16", **extra):
    rows = -(-(1 << 20) // n)
    return {"suite": "hadamard", "op": op, "impl": impl, "shape": f"{rows}x{n}", "dtype": dtype,
            "size": n, "ms": ms, "check_ok": True, "gpu": "Test GPU", "commit": "abc1234",
            "interpreter": False, **extra}


def _synthetic():
    return [
        {"suite": "ceiling", "op": "torch.clone", "impl": "torch", "shape": "1", "dtype": "bf16", "ms": 1.0,
         "gpu": "Test GPU", "commit": "abc1234"},
        # matmul 10% faster: entry
        _row("hadamard", "butterfly", 256, 1.10), _row("hadamard", "matmul", 256, 1.00),
        _row("hadamard", "auto", 256, 1.00, note="dispatch: matmul"),
        # matmul 0.5% faster (inside the margin): no entry
        _row("hadamard", "butterfly", 512, 1.005), _row("hadamard", "matmul", 512, 1.00),
        # butterfly faster: no entry
        _row("hadamard", "butterfly", 4096, 1.00), _row("hadamard", "matmul", 4096, 1.30),
        # fp16 win: entry; fp32 win: never (tensor-core accumulation below fp32 precision)
        _row("hadamard", "butterfly", 1024, 1.50, dtype="fp16"), _row("hadamard", "matmul", 1024, 1.00, dtype="fp16"),
        _row("hadamard", "butterfly", 1024, 1.50, dtype="fp32"), _row("hadamard", "matmul", 1024, 1.00, dtype="fp32"),
        # matmul failed its accuracy check / errored / interpreter: ignored
        _row("hadamard", "butterfly", 2048, 1.50), _row("hadamard", "matmul", 2048, 1.00, check_ok=False),
        _row("hadamard", "butterfly", 8192, 1.50), _row("hadamard", "matmul", 8192, None, error="boom"),
        _row("hadamard", "butterfly", 16384, 1.50), _row("hadamard", "matmul", 16384, 1.00, interpreter=True),
        # only one kernel measured: no entry
        _row("hadamard", "butterfly", 128, 1.50),
        # K * 2^m: 20 * 1024 and 40 * 512 are both n = 20480, told apart by the op
        _row("hadamard_20N", "butterfly", 20480, 1.00), _row("hadamard_20N", "matmul", 20480, 1.20),
        _row("hadamard_40N", "butterfly", 20480, 2.00), _row("hadamard_40N", "matmul", 20480, 1.00),
        _row("hadamard_28N", "butterfly", 28 * 512, 1.30), _row("hadamard_28N", "matmul", 28 * 512, 1.00),
        # above the matmul kernel's row limit (K = 40, 2^m = 1024: padded row 65536): never
        _row("hadamard_40N", "butterfly", 40 * 1024, 2.00), _row("hadamard_40N", "matmul", 40 * 1024, 1.00),
        # other suites are not read
        {"suite": "rht", "op": "rht", "impl": "matmul", "shape": "1x256", "dtype": "bf16", "size": 256, "ms": 0.1},
    ]


def test_synthetic_results(tmp_path):
    path = tmp_path / "Test_hadamard.json"
    path.write_text(json.dumps(_synthetic()))
    out = tmp_path / "dispatch_table.py"
    assert dispatch.main(["--results", str(path), "--out", str(out)]) == 0
    source = out.read_text()
    ns = _table(source)
    assert ns["DEFAULT"] == "butterfly"
    assert ns["DISPATCH"] == {(256, torch.bfloat16): "matmul", (1024, torch.float16): "matmul"}
    assert ns["DISPATCH_K"] == {(40, 20480, torch.bfloat16): "matmul", (28, 28 * 512, torch.bfloat16): "matmul"}
    assert "GENERATED by ``python -m benchmarks.dispatch``" in source
    assert str(path.as_posix()) in source and "Test GPU" in source and "abc1234" in source
    # --check: up to date, then a hand edit fails
    assert dispatch.main(["--results", str(path), "--out", str(out), "--check"]) == 0
    out.write_text(source.replace('(28, 14336, torch.bfloat16): "matmul"', '(12, 12288, torch.bfloat16): "matmul"'))
    assert dispatch.main(["--results", str(path), "--out", str(out), "--check"]) == 1


def test_margin_and_later_files_win(tmp_path):
    rows = _synthetic()
    assert (1, 512, "bf16") not in dispatch.choose(rows)
    assert (1, 512, "bf16") in dispatch.choose(rows, margin=0.001)
    first, second = tmp_path / "a_hadamard.json", tmp_path / "b_hadamard.json"
    first.write_text(json.dumps(rows))
    second.write_text(json.dumps([_row("hadamard", "matmul", 256, 2.0)]))  # a later, slower matmul row
    picks = dispatch.choose(dispatch.load([first, second]))
    assert (1, 256, "bf16") not in picks and (1, 1024, "fp16") in picks


def test_several_gpus_refused(tmp_path):
    first, second = tmp_path / "a_hadamard.json", tmp_path / "b_hadamard.json"
    first.write_text(json.dumps(_synthetic()))
    second.write_text(json.dumps([_row("hadamard", "matmul", 256, 1.0, gpu="Other GPU")]))
    with pytest.raises(ValueError, match="several GPUs"):
        dispatch.load([first, second])
