"""The K * 2^m Gluon kernel (``hadamard_kernels.gluon_kmix``): on CPU its designs (valid layouts, every
j bit transformed once, in registers) and a float64 emulation of the kernel's arithmetic that follows
the design's address map and stage masks exactly as the kernel does, checked against the reference;
the prune (one stage order per size) and the routing rules. On a Hopper GPU the kernel against the
float64 reference for every eligible (K, P), bf16 and fp16, odd row counts and padded rows (the
autotuner's config; NaN-poisoned outputs: conftest), every kept config bit for bit at six sizes, and the
public functions' routing.

Accuracy bound as in test_hadamard.py: within 1.1x one rounding of the exact result (relative RMS).
"""

import math

import pytest
import torch

import hadamard_kernels.gluon_kmix as GK
import hadamard_kernels.hadamard as H
from hadamard_kernels.matrices import hadamard_k_matrix
from hadamard_kernels.reference import hadamard_transform_ref, rel_rms, rounding_bound

KS = (12, 20, 28, 40)
LOG_PS = range(6, 11)  # P = 64 .. 1024


def _kp_bits(k):
    return H._padded_k(k).bit_length() - 1


def _cases():
    """(k, log_p, log_kp, config, design) for every config that fits an eligible size."""
    for k in KS:
        log_kp = _kp_bits(k)
        for log_p in LOG_PS:
            if (1 << (log_p + log_kp)) > GK.MAX_ROW:
                continue
            for c in GK._CONFIGS:
                if GK._fits(c, log_p, log_kp, 3):
                    log_t, nw = c.kwargs["LOG_T"], c.num_warps
                    wn = GK.warps_n_bits(nw, log_p, log_kp, log_t, 3)
                    acc = GK.mma_acc_layout(log_t - log_kp, log_kp, nw.bit_length() - 1 - wn, wn)
                    yield k, log_p, log_kp, c, acc, GK.kmix_design(acc, log_p, log_kp, log_t, 3)


def _bits(bases):
    out = []
    for (v,) in bases:
        assert v > 0 and v & (v - 1) == 0, bases  # a single tile bit
        out.append(v.bit_length() - 1)
    return out


def test_designs_are_valid():
    count = 0
    for k, log_p, log_kp, c, acc, d in _cases():
        count += 1
        log_t, nw = c.kwargs["LOG_T"], c.num_warps
        where = (k, log_p, log_t, nw)
        mt = log_t - log_kp
        tgt = [(d["packed"] >> (5 * b)) & 31 for b in range(mt)]
        assert sorted(tgt) == list(range(mt)), where  # a permutation of the memory bits (j, then rows)
        assert tgt[:3] == [0, 1, 2], where  # the kernel's contiguity hints: M bits 0..2 are j0..j2
        for name in ("acc", "fin"):
            lay = d[name]
            reg, lane, warp = _bits(lay.reg_bases), _bits(lay.lane_bases), _bits(lay.warp_bases)
            assert sorted(reg + lane + warp) == list(range(log_t)), (where, name)
            assert len(lane) == 5 and len(warp) == nw.bit_length() - 1 and len(reg) <= 6, (where, name)
            mask = d["mask_" + name]
            assert all(b in reg for b in range(log_t) if (mask >> b) & 1), (where, name)  # in-thread stages
        # each j bit transformed exactly once; no row or column bit transformed
        staged = [f for f in range(log_t) if ((d["mask_acc"] | d["mask_fin"]) >> f) & 1]
        assert d["mask_acc"] & d["mask_fin"] == 0, where
        assert sorted(tgt[f - log_kp] for f in staged) == list(range(log_p)), where
        # fin: 16-byte vectors (its first registers are j0..j2) and lanes along the next j bits
        fin_reg, fin_lane = _bits(d["fin"].reg_bases), _bits(d["fin"].lane_bases)
        assert [tgt[f - log_kp] if f >= log_kp else None for f in fin_reg[:3]] == [0, 1, 2], where
        lane_j = [tgt[f - log_kp] for f in fin_lane if f >= log_kp and tgt[f - log_kp] < log_p]
        assert lane_j and lane_j == list(range(3, 3 + len(lane_j))), where  # contiguous runs per warp
        # the accumulator's 1-d view is its own layout, flattened row-major
        flat = lambda v: (v[0] << log_kp) | v[1]  # noqa: E731
        assert [[flat(v)] for v in acc.reg_bases] == d["acc"].reg_bases, where
    assert count > 60


def _emulate(x, h_k, log_p, log_kp, config, scale):
    """The kernel's arithmetic in float64 on CPU, program by program, with its own address map
    (``packed``), padding masks, K mix and stage masks."""
    log_t, nw = config.kwargs["LOG_T"], config.num_warps
    wn = GK.warps_n_bits(nw, log_p, log_kp, log_t, 3)
    d = GK.kmix_design(GK.mma_acc_layout(log_t - log_kp, log_kp, nw.bit_length() - 1 - wn, wn), log_p, log_kp, log_t, 3)
    kp, p, t = 1 << log_kp, 1 << log_p, 1 << log_t
    m_rows, n = x.shape
    ht = GK.padded_ht(h_k.double(), kp, torch.float64)
    f = torch.arange(t)
    mm = torch.zeros_like(f)
    for b in range(log_t - log_kp):
        mm |= ((f >> (b + log_kp)) & 1) << ((d["packed"] >> (5 * b)) & 31)
    c = (f & (kp - 1)) * p + (mm & (p - 1))
    rows_per = t >> (log_p + log_kp)
    out = torch.full_like(x, float("nan"), dtype=torch.float64)
    for pid in range((m_rows + rows_per - 1) // rows_per):
        row = pid * rows_per + (mm >> log_p)
        ok = (c < n) & (row < m_rows)
        tile = torch.zeros(t, dtype=torch.float64)
        tile[ok] = x[row[ok], c[ok]].double()
        y = (tile.reshape(-1, kp) @ ht).reshape(t)  # A[m, k] @ ht[k, i]
        for mask in (d["mask_acc"], d["mask_fin"]):
            for s in range(log_t):
                if (mask >> s) & 1:
                    y = y.reshape(-1, 2, 1 << s)
                    y = torch.stack([y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]], 1).reshape(t)
        out[row[ok], c[ok]] = y[ok] * scale
    return out


@pytest.mark.parametrize("k", KS)
def test_emulated_kernel_computes_the_transform(k):
    gen = torch.Generator().manual_seed(k)  # CPU, also on a GPU machine
    log_kp = _kp_bits(k)
    seen = 0
    for kk, log_p, _, c, _, _ in _cases():
        if kk != k or log_p not in (6, 8, 10):
            continue
        p = 1 << log_p
        for n, rows in ((k * p, 3), (k * p - 8, 2)):  # whole and padded rows, a partial last tile
            x = torch.randn((rows, n), generator=gen, dtype=torch.float64)
            out = _emulate(x, hadamard_k_matrix(k), log_p, log_kp, c, 0.25)
            ref = hadamard_transform_ref(x, 0.25, k=k)
            assert torch.allclose(out, ref, rtol=1e-12, atol=1e-9), (k, p, n, c)
            seen += 1
    assert seen >= 4


ELIGIBLE = [(k, lp) for k in KS for lp in LOG_PS if (1 << (lp + _kp_bits(k))) <= GK.MAX_ROW]  # not 40 x 1024


@pytest.mark.parametrize("k, log_p", ELIGIBLE)
def test_prune_keeps_one_stage_order(k, log_p):
    log_kp = _kp_bits(k)
    kept = GK._prune(GK._CONFIGS, {"LOG_P": log_p, "LOG_KP": log_kp, "VEC_BITS": 3})
    assert 1 <= len(kept) <= 5 and all(GK._fits(c, log_p, log_kp, 3) for c in kept)
    assert len({GK.stage_order(c, log_p, log_kp, 3) for c in kept}) == 1
    # the single-config path (LOWPREC_AUTOTUNE=first): the launcher passes the preferred config
    assert GK._first_fit(log_p, log_kp, 3) is kept[0]


def test_eligible_rules(monkeypatch):
    x = torch.zeros(2, 12 * 64, dtype=torch.bfloat16)
    assert not GK.eligible(x, 12 * 64, 12, 64, True)  # CPU (and the interpreter): plain Triton

    class Hopper:  # what eligible reads of a CUDA tensor on an sm90 GPU
        is_cuda = True

        def __init__(self, dtype):
            self.dtype = dtype

        def get_device(self):
            return 0

    monkeypatch.setattr(GK, "_COMPILED", True)
    monkeypatch.setattr(GK, "hopper", lambda index: True)
    bf16 = Hopper(torch.bfloat16)
    assert GK.eligible(bf16, 12 * 64, 12, 64, True) and GK.eligible(Hopper(torch.float16), 28 * 512, 28, 512, True)
    assert GK.eligible(bf16, 12 * 1024 - 8, 12, 1024, True)  # a padded row, n a multiple of 8
    assert not GK.eligible(Hopper(torch.float32), 12 * 64, 12, 64, True)  # fp32: plain Triton
    assert not GK.eligible(bf16, 12 * 64 - 4, 12, 64, True)  # n not a multiple of 8: no 16-byte vectors
    assert not GK.eligible(bf16, 12 * 32, 12, 32, True)  # P < 64
    assert not GK.eligible(bf16, 40 * 1024, 40, 1024, True)  # KP * P = 65536: larger than a program
    assert not GK.eligible(bf16, 12 * 64, 1, 64, True)  # K = 1: gluon_butterfly's
    assert not GK.eligible(bf16, 12 * 64, 12, 64, False)  # rows not contiguous n apart
    for k in KS:  # every eligible size has a config that fits
        for log_p in LOG_PS:
            if GK.eligible(bf16, k << log_p, k, 1 << log_p, True):
                assert GK._first_fit(log_p, _kp_bits(k), 3) is not None


def test_seam_refuses_a_config_that_does_not_fit():
    import triton

    x = torch.zeros(2, 12 * 1024, dtype=torch.bfloat16)
    ht = GK.padded_ht(hadamard_k_matrix(12), 16, torch.bfloat16)
    small = triton.Config({"LOG_T": 12}, num_warps=2, num_stages=1)  # 4096 < one padded row of 16384
    with pytest.raises(ValueError, match="does not fit"):
        GK.gluon_kmix_launch(x, torch.empty_like(x), 2, 12 * 1024, ht, 1024, 1.0, small)


@pytest.mark.parametrize("k", KS)
def test_padded_ht(k):
    ht = GK.padded_ht(hadamard_k_matrix(k), H._padded_k(k), torch.bfloat16)
    assert ht.shape == (H._padded_k(k),) * 2 and ht.dtype == torch.bfloat16
    assert torch.equal(ht[:k, :k].float(), hadamard_k_matrix(k).t()) and not ht[k:].any() and not ht[:, k:].any()


# --- GPU ------------------------------------------------------------------------------------------


def _on_hopper():
    return GK.eligible(torch.zeros(8, device="cuda", dtype=torch.bfloat16), 12 * 64, 12, 64, True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k, log_p", ELIGIBLE)
def test_kmix_accuracy(dtype, k, log_p, gen):
    if not _on_hopper():
        pytest.skip("the Gluon K * 2^m kernel runs on sm90")
    p = 1 << log_p
    hk = H._default_hk(k, torch.device("cuda"))
    for n, rows in ((k * p, 1), (k * p, 3), (k * p - 8, 5), (k * p, max(3, (1 << 21) // (k * p)) + 1)):
        x = torch.randn((rows, n), generator=gen, device="cuda", dtype=torch.float32).to(dtype)
        scale = 1.37 / math.sqrt(k * p)
        out = H._launch(x, scale, hk, "gluon")
        ref = hadamard_transform_ref(x, scale, k=k)
        assert torch.isfinite(out).all(), (k, p, n, rows)
        assert rel_rms(out, ref) <= 1.1 * rounding_bound(ref, dtype), (k, p, n, rows, rel_rms(out, ref))


@pytest.mark.cuda
@pytest.mark.parametrize("k, log_p", [(12, 6), (12, 10), (20, 8), (28, 9), (40, 7), (40, 9)])
def test_kmix_every_kept_config_same_bits(k, log_p, gen):
    if not _on_hopper():
        pytest.skip("the Gluon K * 2^m kernel runs on sm90")
    p, log_kp = 1 << log_p, _kp_bits(k)
    hk = H._default_hk(k, torch.device("cuda"))
    x = torch.randn((37, k * p), generator=gen, device="cuda", dtype=torch.bfloat16)
    ref = hadamard_transform_ref(x, 0.5, k=k)
    outs = []
    for config in GK._prune(GK._CONFIGS, {"LOG_P": log_p, "LOG_KP": log_kp, "VEC_BITS": 3}):
        out = H._launch(x, 0.5, hk, "gluon", config)
        assert rel_rms(out, ref) <= 1.1 * rounding_bound(ref, torch.bfloat16), (k, p, config)
        outs.append(out)
    assert all(torch.equal(o, outs[0]) for o in outs[1:]), (k, p)


@pytest.mark.cuda
def test_public_functions_route_to_kmix(gen, monkeypatch):
    if not _on_hopper():
        pytest.skip("the Gluon K * 2^m kernel runs on sm90")
    calls = []
    real = GK.gluon_kmix_launch
    monkeypatch.setattr(GK, "gluon_kmix_launch", lambda *a, **kw: calls.append(tuple(a[0].shape)) or real(*a, **kw))
    x = torch.randn((5, 12 * 256), generator=gen, device="cuda", dtype=torch.bfloat16)
    out = H.hadamard_transform_12N(x)
    assert calls == [tuple(x.shape)]
    H.hadamard_transform_12N(x.float())  # fp32: plain Triton
    wide = torch.randn((5, 2 * 12 * 256), generator=gen, device="cuda", dtype=torch.bfloat16)
    H.hadamard_transform_12N(wide[:, :12 * 256])  # rows read in place from a wider tensor: plain Triton
    H.butterfly_hadamard(x, 1.0, H._default_hk(12, x.device))  # an explicit kernel: plain Triton
    assert calls == [tuple(x.shape)]
    H.hadamard_transform_12N(wide[:, ::2])  # a strided last dim: copied to contiguous rows, then Gluon
    assert calls == [tuple(x.shape)] * 2
    y = x.clone().requires_grad_()
    assert torch.equal(H.hadamard_transform_12N(y), out)  # autograd records: the fwht_gluon op, same kernel
    assert calls == [tuple(x.shape)] * 3
    ref = hadamard_transform_ref(x, 1.0, k=12)
    assert rel_rms(out, ref) <= 1.1 * rounding_bound(ref, torch.bfloat16)
    # a caller's own Hadamard matrix of order 12 (another H_12): the same route, its matrix used
    h = hadamard_k_matrix(12, device="cuda")[torch.randperm(12, generator=torch.Generator().manual_seed(3))]
    out = H.hadamard_transform_12N(x, 1.0, h)
    assert calls == [tuple(x.shape)] * 4
    ref = hadamard_transform_ref(x, 1.0, h_k=h)
    assert rel_rms(out, ref) <= 1.1 * rounding_bound(ref, torch.bfloat16)


def test_operand_cached_for_the_default_matrix_only():
    hk = H._default_hk(20, torch.device("cpu"))
    first = GK.operand(hk, 32, torch.bfloat16, default=True)
    assert GK.operand(hk, 32, torch.bfloat16, default=True) is first  # built once per (K, dtype, device)
    assert torch.equal(first, GK.padded_ht(hk, 32, torch.bfloat16))
    mine = -hadamard_k_matrix(20)  # a caller's matrix: built on every call, from that matrix
    assert torch.equal(GK.operand(mine, 32, torch.bfloat16, default=False), -first)
