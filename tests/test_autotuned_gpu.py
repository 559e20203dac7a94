"""The kernels with the FULL autotuner on a GPU (the rest of the GPU suite runs one config per shape,
see tests/conftest.py). Runs in a subprocess without LOWPREC_AUTOTUNE so every config competes, and
checks the winners' results against the references."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.cuda
def test_full_autotune_results_match_references():
    env = {k: v for k, v in os.environ.items() if k != "LOWPREC_AUTOTUNE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "tests.test_autotuned_gpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("OK ") >= 8, proc.stdout


def _main():  # runs in the subprocess
    import torch

    import fp8_quant
    import hadamard_kernels as hk
    from fp8_quant import reference as qref
    from hadamard_kernels import reference as href

    assert "LOWPREC_AUTOTUNE" not in os.environ
    torch.manual_seed(0)
    dev = "cuda"

    def check_transform(name, out, ref, dtype):
        err, bound = href.rel_rms(out, ref), href.rounding_bound(ref, dtype)
        assert err <= 1.1 * bound, f"{name}: rel rms {err:.3e} > 1.1 x {bound:.3e}"
        print(f"OK {name}: rel rms {err:.3e} (one rounding {bound:.3e})")

    for rows, n in ((512, 4096), (40, 32768), (333, 256)):
        x = torch.randn(rows, n, device=dev).to(torch.bfloat16)
        ref = href.hadamard_transform_ref(x, 0.5)
        check_transform(f"hadamard_transform {rows}x{n}", hk.hadamard_transform(x, 0.5), ref, torch.bfloat16)
        check_transform(f"butterfly {rows}x{n}", hk.butterfly_hadamard(x, 0.5), ref, torch.bfloat16)
        check_transform(f"matmul {rows}x{n}", hk.matmul_hadamard(x, 0.5), ref, torch.bfloat16)
    x = torch.randn(77, 28 * 512, device=dev).to(torch.bfloat16)
    check_transform("hadamard_transform_28N 77x14336", hk.hadamard_transform_28N(x),
                    href.hadamard_transform_ref(x, k=28), torch.bfloat16)

    s = hk.random_sign_vector(16, seed=3)
    for axis in (-1, 0):
        x = torch.randn(4096, 2048, device=dev).to(torch.bfloat16)
        check_transform(f"rht axis={axis}", hk.rht(x, s, 16, axis=axis), href.rht_ref(x, s, 16, axis=axis),
                        torch.bfloat16)
    for axis, shape in ((0, (2048, 4096)), (1, (1000, 3008)), (0, (4096, 1000))):
        x = torch.randn(*shape, device=dev).to(torch.bfloat16) * 3
        got = hk.rht_amax(x, s, 16, axis=axis)
        want = href.rht_amax_contract(x, s, 16, axis=axis)
        assert torch.equal(got[0].cpu(), want[0].float().cpu()), (axis, shape, got, want)
        assert torch.equal(got[1].cpu(), x.abs().max().float().cpu())
        print(f"OK rht_amax axis={axis} {shape}: bit exact")

    q = torch.randn(1, 8, 1000, 128, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 777, 128, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, 2, 777, 128, device=dev, dtype=torch.bfloat16)
    got = fp8_quant.quantize_qkv(q, k, v)
    want = qref.quantize_qkv_reference(q, k, v)
    for g, w, name in zip(got, want, ("q", "k", "v", "q_descale", "k_descale", "v_descale")):
        gb = g.view(torch.uint8) if g.dtype == torch.float8_e4m3fn else g
        wb = w.to(g.dtype).view(torch.uint8) if g.dtype == torch.float8_e4m3fn else w.to(g.dtype)
        assert torch.equal(gb, wb), f"quantize_qkv {name} differs from the reference"
    print("OK quantize_qkv GQA 8/2, S_q != S_kv: bit exact")


if __name__ == "__main__":
    _main()
