"""The streaming K * 2^m kernels (``hadamard_kernels.gluon_kmix_stream``). On CPU: their shared-memory
layouts (the cp.async buffer: a bijection whose 16-byte vectors are fin's, with conflict-free slots for
the copies of 8 lanes and the operand reads of 8 k rows; the TMA view: the box's 128-byte swizzle read
back as the tile ``kmix_design`` wants), the prune (``gluon_kmix``'s stage order, shared memory) and
the routing between the two modules. On a Hopper GPU: both kernels, every kept config, bit for bit
equal to ``gluon_kmix``'s kernel (whose accuracy ``test_gluon_kmix`` checks against float64) on 1, 3
and more rows than programs, whole and padded rows, bf16 and fp16, NaN-poisoned outputs (conftest).
"""

import pytest
import torch

import hadamard_kernels.gluon_kmix as GK
import hadamard_kernels.gluon_kmix_stream as GS
import hadamard_kernels.hadamard as H
from hadamard_kernels.reference import hadamard_transform_ref, rel_rms, rounding_bound

# (K, log2 P) whose padded rows are 16K or 32K elements: the sizes this module runs
SIZES = [(k, lp) for k in (12, 20, 28, 40) for lp in range(6, 11)
         if GS.MIN_ROW <= H._padded_k(k) << lp <= GK.MAX_ROW]


def _key(k, log_p):
    return {"LOG_P": log_p, "LOG_KP": H._padded_k(k).bit_length() - 1, "VEC_BITS": 3}


def _flat(layout, off):
    """The [m, k] element at offset ``off`` of a shared linear layout (XOR of the set bits' bases)."""
    mk = [0, 0]
    for b, base in enumerate(layout.offset_bases):
        if (off >> b) & 1:
            mk = [mk[0] ^ base[0], mk[1] ^ base[1]]
    return tuple(mk)


def _design(k, log_p, config):
    key = _key(k, log_p)
    return GS.stream_design(config.num_warps, log_p, key["LOG_KP"], 3, config.kwargs["LOG_T"])


def test_sizes_and_prune():
    assert SIZES == [(12, 10), (20, 9), (20, 10), (28, 9), (28, 10), (40, 8), (40, 9)]
    for k, log_p in SIZES:
        key = _key(k, log_p)
        kept = GS._prune(GS._CONFIGS, key)
        assert kept, (k, log_p)
        order = GK.stage_order(GK._first_fit(*key.values()), *key.values())
        for c in kept:  # gluon_kmix's stage order (the same bits), within shared memory
            assert GK.stage_order(c, *key.values()) == order
            log_t = c.kwargs["LOG_T"]
            assert (c.kwargs["NBUF"] * 2 + 4) << log_t <= GS._SMEM and log_t <= log_p + key["LOG_KP"] + 1
        if H._padded_k(k) << log_p == 32768:
            assert GS._prune(GS._TMA_CONFIGS, key), (k, log_p)
    # a row of 16K elements keeps the two-programs-per-SM config that measured fastest
    assert GS._prune(GS._CONFIGS, _key(12, 10))[0] is GS._CONFIGS[0]


def test_copy_buffer_layout():
    for k, log_p in SIZES:
        log_kp = H._padded_k(k).bit_length() - 1
        for c in GS._prune(GS._CONFIGS, _key(k, log_p)):
            log_t = c.kwargs["LOG_T"]
            d = _design(k, log_p, c)["d"]
            fin = d["fin"]
            lay = GS.copy_smem_layout(fin, log_kp, log_t)
            where = (k, log_p, c.kwargs)
            # a bijection between offsets and [m, k]
            assert len({_flat(lay, o) for o in range(1 << log_t)}) == 1 << log_t, where
            # offsets 0..7 (16 bytes) are fin's register bits 0..2: one cp.async vector of 8 elements
            for b in range(3):
                (v,) = fin.reg_bases[b]
                assert _flat(lay, 1 << b) == (v >> log_kp, v & ((1 << log_kp) - 1)), where
            pos = {_flat(lay, o): o for o in range(1 << log_t)}
            # the copies of lanes 0..7 (register 0, warp 0) land in 8 distinct 16-byte slots of a line
            lanes = [0]
            for (v,) in fin.lane_bases[:3]:
                lanes += [x ^ v for x in lanes]
            slots = {(pos[(f >> log_kp, f & ((1 << log_kp) - 1))] >> 3) % 8 for f in lanes}
            assert len(slots) == 8, where
            # the operand reads 8 k rows of one 8-m run (ldmatrix.trans): 8 distinct slots
            for m0 in (0, 8, 1 << (log_t - log_kp - 1)):
                assert len({(pos[(m0, kk)] >> 3) % 8 for kk in range(8)}) == 8, where


def test_tma_view_layout():
    # the box [1, P/64, KP, 64] in row-major order, 128-byte swizzle: element offset
    # o = j_lo + 64 * (k + KP * j_hi), stored at o ^ (((o >> 6) & 7) << 3); the view must read it back
    # as the tile element [m, k] whose M bits stand for the j bits tgt[b] (one row per tile)
    for k, log_p in SIZES:
        log_kp = H._padded_k(k).bit_length() - 1
        if log_p + log_kp != 15:
            continue
        (c,) = GS._prune(GS._TMA_CONFIGS, _key(k, log_p))
        d = _design(k, log_p, c)["d"]
        lay = GS.tma_view_layout(log_p, log_kp, 15, d["packed"])
        tgt = [(d["packed"] >> (5 * b)) & 31 for b in range(15 - log_kp)]
        for m in range(0, 1 << (15 - log_kp), 7):
            j = sum(((m >> b) & 1) << tgt[b] for b in range(len(tgt)))
            for kk in range(1 << log_kp):
                o = (j & 63) + 64 * (kk + (1 << log_kp) * (j >> 6))
                assert _flat(lay, o ^ (((o >> 6) & 7) << 3)) == (m, kk), (k, log_p, m, kk)


def test_routing_between_the_modules(monkeypatch):
    calls = []
    monkeypatch.setattr(GS, "stream_launch", lambda *a: calls.append(("stream", a[-1])))
    monkeypatch.setattr(GK, "gluon_kmix_launch", lambda *a: calls.append(("tile", a[-1])))
    x = torch.zeros(1)
    for kp, p in ((16, 1024), (32, 512), (64, 512), (16, 512), (64, 128)):
        GS.kmix_launch(x, x, 1, 12 * p, 12, torch.zeros(kp, kp), p, 1.0)
    assert [c[0] for c in calls] == ["stream", "stream", "stream", "tile", "tile"]
    calls.clear()
    tile_config = GK._first_fit(10, 4, 3)
    GS.kmix_launch(x, x, 1, 12 * 1024, 12, torch.zeros(16, 16), 1024, 1.0, tile_config)  # gluon_kmix's config
    GS.kmix_launch(x, x, 1, 12 * 1024, 12, torch.zeros(16, 16), 1024, 1.0, GS._CONFIGS[0])
    assert calls == [("tile", tile_config), ("stream", GS._CONFIGS[0])]
    with pytest.raises(ValueError, match="padded row"):
        GS.kmix_launch(x, x, 1, 12 * 512, 12, torch.zeros(16, 16), 512, 1.0, GS._CONFIGS[0])
    # rows that do not start 16-byte aligned: the tile kernel (cp.async and TMA need the alignment)
    calls.clear()
    odd = torch.zeros(12 * 1024 + 1, dtype=torch.bfloat16)[1:]
    GS.kmix_launch(odd, odd, 1, 12 * 1024, 12, torch.zeros(16, 16), 1024, 1.0)
    assert calls == [("tile", None)]
    with pytest.raises(ValueError, match="aligned"):
        GS.kmix_launch(odd, odd, 1, 12 * 1024, 12, torch.zeros(16, 16), 1024, 1.0, GS._CONFIGS[0])
    # TMA: unpadded rows of 32K elements only
    assert GS.uses_tma(20 * 1024, 20, 32, 1024) and GS.uses_tma(40 * 512, 40, 64, 512)
    assert not GS.uses_tma(20 * 1024 - 8, 20, 32, 1024) and not GS.uses_tma(12 * 1024, 12, 16, 1024)


def _on_hopper():
    return GK.eligible(torch.zeros(8, device="cuda", dtype=torch.bfloat16), 12 * 64, 12, 64, True)


@pytest.mark.cuda
@pytest.mark.parametrize("k, log_p", SIZES)
def test_stream_kernels_equal_gluon_kmix(k, log_p, gen):
    if not _on_hopper():
        pytest.skip("the Gluon K * 2^m kernels run on sm90")
    p = 1 << log_p
    hk = H._default_hk(k, torch.device("cuda"))
    key = _key(k, log_p)
    tile_config = GK._first_fit(*key.values())
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dtypes = (torch.bfloat16, torch.float16) if (k, log_p) in ((12, 10), (20, 10)) else (torch.bfloat16,)
    for dtype in dtypes:
        for n, rows in ((k * p, 1), (k * p, 3), (k * p, 2 * sms + 5), (k * p - 8, 2 * sms + 3)):
            x = torch.randn((rows, n), generator=gen, device="cuda", dtype=torch.float32).to(dtype)
            want = H._launch(x, 0.75, hk, "gluon", tile_config)  # gluon_kmix's kernel
            tma = GS.uses_tma(n, k, H._padded_k(k), p)
            configs = [None] + GS._prune(GS._TMA_CONFIGS if tma else GS._CONFIGS, key)
            for config in configs:  # the autotuned call (the public route), then every kept config
                out = H._launch(x, 0.75, hk, "gluon", config)
                assert torch.equal(out, want), (k, p, dtype, n, rows, config, tma)
            ref = hadamard_transform_ref(x[:3], 0.75, k=k)
            assert rel_rms(want[:3], ref) <= 1.1 * rounding_bound(ref, dtype)
    # the public function takes this route (same bits either way: a spy says which kernel ran)
    x = torch.randn((5, k * p), generator=gen, device="cuda", dtype=torch.float32).to(torch.bfloat16)
    want = H._launch(x, 0.75, hk, "gluon", tile_config)
    calls, real = [], GS.stream_launch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GS, "stream_launch", lambda *a: calls.append(a[2]) or real(*a))
        assert torch.equal(getattr(H, f"hadamard_transform_{k}N")(x, 0.75), want)
    assert calls == [5]


@pytest.mark.cuda
@pytest.mark.parametrize("k, log_p", [(20, 6), (20, 10), (40, 9)])
def test_gluon_backward_is_the_true_gradient(k, log_p, gen):
    # autograd records: the fwht_gluon op forward and backward (H_K^T for H_20 / H_40, not symmetric)
    if not _on_hopper():
        pytest.skip("the Gluon K * 2^m kernels run on sm90")
    n = k << log_p
    x = torch.randn((3, n), generator=gen, device="cuda", dtype=torch.float32).to(torch.bfloat16).requires_grad_(True)
    g = torch.randn((3, n), generator=gen, device="cuda", dtype=torch.float32).to(torch.bfloat16)
    calls, real = [], H._OPS["gluon"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(H._OPS, "gluon", lambda *a: calls.append(1) or real(*a))
        getattr(H, f"hadamard_transform_{k}N")(x, 0.5).backward(g)
    assert calls == [1]
    xr = x.detach().double().requires_grad_(True)
    hadamard_transform_ref(xr, 0.5, k=k).backward(g.double())
    assert rel_rms(x.grad, xr.grad) <= 1.1 * rounding_bound(xr.grad, torch.bfloat16), (k, log_p)
