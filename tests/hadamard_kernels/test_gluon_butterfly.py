"""The Gluon butterfly (``hadamard_kernels.gluon_butterfly``): its layout plans on CPU (every plan a
valid layout chain that transforms each column bit once, in registers), the routing rules, and on a
Hopper GPU the kernel itself against the float64 reference for every power of two from 16 to 32768,
every dtype, odd row counts, every config the prune keeps (NaN-poisoned outputs: conftest).

Accuracy bound as in test_hadamard.py: 16-bit outputs within 1.1x one rounding of the exact result;
fp32 1.1 x sqrt(1 + log2 n) x one rounding (one possible rounding per addition on an element's path)
on samples of >= 65536 elements (a statistical bound), and on every sample the worst case per element.
"""

import math

import numpy as np
import pytest
import torch

import hadamard_kernels.gluon_butterfly as G
import hadamard_kernels.hadamard as H
from hadamard_kernels.reference import hadamard_transform_ref, rel_rms, rounding_bound

LOG_NS = range(4, 16)  # n = 16 .. 32768


def _all_plans():
    for log_n in LOG_NS:
        for vec_bits in (2, 3):
            for warp_bits in range(0, 5):
                for log_t in range(log_n, log_n + 12):  # plan refuses > 128 values per thread
                    p = G.plan(log_n, log_t, warp_bits, vec_bits)
                    if p is not None:
                        yield log_n, log_t, warp_bits, vec_bits, p


def test_plans_are_valid_layout_chains():
    count = 0
    for log_n, log_t, warp_bits, vec_bits, chain in _all_plans():
        count += 1
        where = (log_n, log_t, warp_bits, vec_bits)
        staged = []
        for i, (reg, lane, warp, stages) in enumerate(chain):
            # a linear layout of the tile: every index bit exactly once, 32 lanes, 2^warp_bits warps
            assert sorted(reg + lane + warp) == list(range(log_t)), where
            assert len(lane) == 5 and len(warp) == warp_bits, where
            assert vec_bits <= len(reg) <= G.MAX_REG_BITS, where
            assert set(stages) <= set(reg) and all(s < log_n for s in stages), where  # in-thread stages
            staged += stages
        reg0, lane0, _, _ = chain[0]
        assert reg0[:vec_bits] == list(range(vec_bits)), where  # 16-byte vector loads
        assert lane0 == list(range(vec_bits, vec_bits + 5)), where  # a warp reads contiguous bytes
        assert chain[-1][:3] == chain[0][:3], where  # back to L0 for the store
        # each column bit transformed exactly once, in ascending order: the plain kernel's order
        assert staged == list(range(log_n)), where
    assert count > 100


@pytest.mark.parametrize("vec_bits", [2, 3])
def test_two_layouts_up_to_4096(vec_bits):
    # the design's claim: for n <= 4096 the autotuner's configs include one with <= 64 values per
    # thread and one layout change out and one back (a chain of L0, L1, L0); above, every kept config
    # takes two out
    for log_n in LOG_NS:
        chains = [(c, G.plan(log_n, c.kwargs["LOG_T"], c.num_warps.bit_length() - 1, vec_bits))
                  for c in G._prune(G._CONFIGS, {"LOG_N": log_n, "VEC_BITS": vec_bits})]
        two = [c for c, p in chains if len(p) == 3 and c.kwargs["LOG_T"] - 5 - (c.num_warps.bit_length() - 1) <= 6]
        assert bool(two) == (log_n <= 12), (log_n, [(c.kwargs, c.num_warps, len(p)) for c, p in chains])
        assert all(len(p) <= 4 for _, p in chains)


def _emulate(x: np.ndarray, chain, log_n: int) -> np.ndarray:
    """The kernel's arithmetic on a float32 tile of whole rows: radix-2 stages in the chain's order."""
    y = x.astype(np.float32).reshape(-1)
    t = y.size
    for *_, stages in chain:
        for s in stages:
            v = y.reshape(t >> (s + 1), 2, 1 << s)
            a, b = v[:, 0, :].copy(), v[:, 1, :].copy()
            y = np.stack([a + b, a - b], axis=1).reshape(-1)
    return y.reshape(x.shape)


@pytest.mark.parametrize("log_n", [4, 7, 8, 10, 12, 13])
def test_plan_order_computes_the_transform(log_n):
    n = 1 << log_n
    x = np.random.default_rng(log_n).standard_normal((2, n))  # the stage order is the same for every row
    ref = hadamard_transform_ref(torch.from_numpy(x)).numpy()
    for ln, log_t, warp_bits, vec_bits, chain in _all_plans():
        if ln != log_n:
            continue
        got = _emulate(x, chain, log_n)
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err < 1.1 * math.sqrt(1 + log_n) * 2.0 ** -24 * 2, (log_n, log_t, warp_bits, vec_bits, err)


@pytest.mark.parametrize("log_n", LOG_NS)
@pytest.mark.parametrize("vec_bits", [2, 3])
def test_prune_always_leaves_a_config(log_n, vec_bits):
    kept = G._prune(G._CONFIGS, {"LOG_N": log_n, "VEC_BITS": vec_bits})
    assert 1 <= len(kept) <= 5
    for c in kept:
        assert G.plan(log_n, c.kwargs["LOG_T"], c.num_warps.bit_length() - 1, vec_bits) is not None
    # LOWPREC_AUTOTUNE=first hands the prune one config that may not fit: it still finds one
    assert len(G._prune(G._CONFIGS[:1], {"LOG_N": log_n, "VEC_BITS": vec_bits})) == 1
    # ...and with one config Triton's autotuner skips the prune: the launcher passes this one instead
    fit = G._first_fit(log_n, vec_bits)
    assert G.plan(log_n, fit.kwargs["LOG_T"], fit.num_warps.bit_length() - 1, vec_bits) is not None


def test_routing_rules(device):
    x = torch.zeros(4, 256, device=device)
    assert not G.eligible(x, 300, True)  # not a power of two
    assert not G.eligible(x, 8, True)  # below 16
    assert not G.eligible(x, 256, False)  # rows not contiguous
    if device == "cpu":
        assert not G.eligible(x, 256, True)  # the interpreter runs plain Triton
        with pytest.raises(ValueError, match="Gluon kernel"):
            H._launch(x, 1.0, None, "gluon")


def test_plan_refuses_tiles_without_registers():
    assert G.plan(4, 10, 5, 0) is None  # 32 lanes x 32 warps hold 1024 elements, none in registers
    assert G.plan(12, 12, 5, 3) is None  # 4 values per thread: below one 16-byte vector


def test_measured_gpus_only(monkeypatch):
    # NVIDIA sm90 only (where it was measured): not sm80, sm100/sm120, nor ROCm (64-lane warps)
    try:
        for cap, hip, want in (((9, 0), None, True), ((8, 0), None, False), ((10, 0), None, False),
                               ((12, 0), None, False), ((9, 4), "6.2", False)):
            G.hopper.cache_clear()
            monkeypatch.setattr(G, "device_capability", lambda index, cap=cap: cap)
            monkeypatch.setattr(torch.version, "hip", hip)
            assert G.hopper(0) is want, (cap, hip)
    finally:
        G.hopper.cache_clear()


@pytest.fixture
def gluon_calls(monkeypatch):
    """Pretend the Gluon kernel is eligible wherever rows are flat and record its launches (the rest of
    each call runs as usual): the routing rules, checked on any machine."""
    calls = []

    def fake_launch(x, out, m, scale, config=None):
        calls.append((tuple(x.shape), m, config))
        out.zero_()

    monkeypatch.setattr(H, "gluon_eligible", lambda x, n, flat: flat and n in G._SIZES)
    monkeypatch.setattr(H, "gluon_launch", fake_launch)
    return calls


def test_routing_to_gluon(gluon_calls, gen, device):
    x = torch.randn((4, 256), generator=gen, device=device).to(torch.bfloat16)
    H.butterfly_hadamard(x)
    assert len(gluon_calls) == 1  # eager, contiguous rows of 2^m
    H.butterfly_hadamard(torch.randn((256, 4), generator=gen, device=device).t())
    assert len(gluon_calls) == 2 and gluon_calls[-1][0] == (4, 256)  # copied to contiguous rows first
    H.hadamard_transform(x)  # the table's butterfly (the Gluon kernel measured fastest at every 2^m)
    assert H._pick(256, 1, torch.bfloat16) == "butterfly" and len(gluon_calls) == 3
    H.hadamard_transform(x[:1])  # one row
    assert len(gluon_calls) == 4 and gluon_calls[-1][1] == 1
    # autograd records (and torch.compile traces): the opaque fwht_gluon op, the same kernel
    H.butterfly_hadamard(x.float().requires_grad_())
    H.hadamard_transform(x.float().requires_grad_())
    assert len(gluon_calls) == 6
    # ...and never for: a plain-Triton config, the plain kernel's triton_op body, strided rows in
    # place, a K x 2^m transform, padded rows, n below 16
    H._launch(x, 1.0, None, "butterfly", H._BUTTERFLY_CONFIGS[0])
    H._launch(x, 1.0, None, "butterfly", traced=True)
    wide = torch.randn((4, 512), generator=gen, device=device)
    H.butterfly_hadamard(wide[:, :256])
    H.hadamard_transform_12N(torch.randn((2, 12 * 16), generator=gen, device=device))
    H.hadamard_transform(torch.randn((2, 200), generator=gen, device=device))
    H.hadamard_transform(torch.randn((2, 8), generator=gen, device=device))
    assert len(gluon_calls) == 6
    with pytest.raises(ValueError, match="LOG_T config"):
        H._launch(x, 1.0, None, "gluon", H._BUTTERFLY_CONFIGS[0])
    H._launch(x, 1.0, None, "gluon", G._first_fit(8, 3))
    assert gluon_calls[-1][2] is G._first_fit(8, 3)


def test_gluon_launch_grid_and_single_config(monkeypatch):
    # the launcher's grid covers m * n elements in tiles of 2^LOG_T, and with one autotune config (the
    # interpreter, LOWPREC_AUTOTUNE=first) it hands launch a config that fits n
    seen = []
    monkeypatch.setattr(G, "launch", lambda kernel, grid, args, consts, config: seen.append((grid, args, consts, config)))
    monkeypatch.setattr(G._gluon_tuned, "configs", G._CONFIGS[:1])
    x = torch.zeros((37, 4096), dtype=torch.bfloat16)
    G.gluon_launch(x, torch.empty_like(x), 37, 0.5)
    grid, args, consts, config = seen[-1]
    assert consts == {"LOG_N": 12, "VEC_BITS": 3, "SIGNS": 0} and config is G._first_fit(12, 3)
    assert config.kwargs["LOG_T"] >= 12
    assert grid({"LOG_T": 13}) == ((37 * 4096 + 8191) // 8192,) and grid({"LOG_T": 12}) == (37,)
    assert args[2] is x and args[3:] == (37, 0.5, 64)  # no signs: x stands in for the unread pointer
    signs = torch.ones(16)
    G.gluon_launch(x, torch.empty_like(x), 37 * 256, 0.25, n=16, signs=signs, signs_after=True)
    grid, args, consts, _ = seen[-1]
    assert consts == {"LOG_N": 4, "VEC_BITS": 3, "SIGNS": 2} and args[2] is signs and args[3] == 37 * 256


def test_gluon_cols_launch_grid_and_single_config(monkeypatch):
    seen = []
    monkeypatch.setattr(G, "launch", lambda kernel, grid, args, consts, config: seen.append((grid, args, consts, config)))
    monkeypatch.setattr(G._gluon_cols_tuned, "configs", G._COLS_CONFIGS[:1])
    x = torch.zeros((3, 128, 200), dtype=torch.bfloat16)  # 3 blocks of d = 128 rows of 200 columns
    signs = torch.ones(128)
    G.gluon_cols_launch(x, torch.empty_like(x), 3, 128, 200, 0.5, signs=signs)
    grid, args, consts, config = seen[-1]
    assert consts == {"LOG_D": 7, "VEC_BITS": 3, "SIGNS": 1} and config is G._first_fit_cols(7, 3)
    assert grid({"LOG_T": 13}) == (3, 4) and grid({"LOG_T": 12}) == (3, 7)  # 64 / 32 columns per tile
    assert args[2] is signs and args[3:] == (200, 0.5, G.bucket(x.numel()))


def _all_col_plans():
    for log_d in range(4, 9):
        for vec_bits in (2, 3):
            for warp_bits in range(0, 5):
                for log_t in range(log_d + vec_bits, 16):
                    p = G.plan_at(log_d, log_t - log_d, log_t, warp_bits, vec_bits)
                    if p is not None:
                        yield log_d, log_t, warp_bits, vec_bits, p


def test_column_plans_are_valid_layout_chains():
    """Column tiles (the transformed bits are the high ones): each a valid chain that transforms
    every row bit once, ascending, in registers, loads and stores along the contiguous columns."""
    count = 0
    for log_d, log_t, warp_bits, vec_bits, chain in _all_col_plans():
        count += 1
        where = (log_d, log_t, warp_bits, vec_bits)
        lo = log_t - log_d
        staged = []
        for reg, lane, warp, stages in chain:
            assert sorted(reg + lane + warp) == list(range(log_t)), where
            assert len(lane) == 5 and len(warp) == warp_bits and vec_bits <= len(reg) <= G.MAX_REG_BITS, where
            assert set(stages) <= set(reg) and all(lo <= s < log_t for s in stages), where
            staged += stages
        assert chain[0][0][:vec_bits] == list(range(vec_bits)) and chain[-1][:3] == chain[0][:3], where
        assert staged == list(range(lo, log_t)), where
    assert count > 50


@pytest.mark.parametrize("log_d", [4, 7, 8])
def test_column_plan_order_computes_the_transform(log_d):
    # a [D, BI] tile (row-major: the high bits are the row): the chain's stages transform every column
    d = 1 << log_d
    for ld, log_t, warp_bits, vec_bits, chain in _all_col_plans():
        if ld != log_d:
            continue
        bi = 1 << (log_t - log_d)
        x = np.random.default_rng(log_t).standard_normal((d, bi))
        ref = hadamard_transform_ref(torch.from_numpy(x.T.copy())).numpy().T
        y = x.astype(np.float32).reshape(-1)
        for *_, stages in chain:
            for s in stages:
                v = y.reshape(y.size >> (s + 1), 2, 1 << s)
                y = np.stack([v[:, 0, :] + v[:, 1, :], v[:, 0, :] - v[:, 1, :]], axis=1).reshape(-1)
        err = np.linalg.norm(y.reshape(d, bi) - ref) / np.linalg.norm(ref)
        assert err < 1.1 * math.sqrt(1 + log_d) * 2.0 ** -24 * 2, (log_d, log_t, warp_bits, vec_bits, err)


@pytest.mark.parametrize("log_d", range(4, 9))
@pytest.mark.parametrize("vec_bits", [2, 3])
def test_column_prune_always_leaves_a_config(log_d, vec_bits):
    kept = G._prune_cols(G._COLS_CONFIGS, {"LOG_D": log_d, "VEC_BITS": vec_bits})
    assert 1 <= len(kept) <= 5 and all(G._fits_cols(c, log_d, vec_bits) for c in kept)
    assert G._fits_cols(G._first_fit_cols(log_d, vec_bits), log_d, vec_bits)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("log_n", LOG_NS)
def test_gluon_accuracy(dtype, log_n, gen):
    if not G.eligible(torch.zeros(1, device="cuda"), 1 << log_n, True):
        pytest.skip("the Gluon kernel runs on sm90")
    n = 1 << log_n
    for rows in (1, 3, max(5, (1 << 21) // n) + 1):  # one row, a partial tile, many tiles
        x = torch.randn((rows, n), generator=gen, device="cuda", dtype=torch.float32).to(dtype)
        scale = 1.37 / math.sqrt(n)
        out = H._launch(x, scale, None, "gluon")
        ref = hadamard_transform_ref(x, scale)
        assert torch.isfinite(out).all(), (n, rows)
        # the plain kernel's stage order: the same bits as the plain butterfly
        plain = H._launch(x, scale, None, "butterfly", H._prune(H._BUTTERFLY_CONFIGS, {"KP": 1, "P": n})[0])
        assert torch.equal(out, plain), (n, rows, dtype)
        if dtype == torch.float32:
            # worst case per element (log2 n rounded adds of values bounded by the row's L1 norm, the
            # scale): holds on any sample; the RMS bound below is statistical, so only on large ones
            l1 = x.double().abs().sum(-1, keepdim=True) * scale
            assert ((out.double() - ref).abs() <= (log_n + 2) * 2.0 ** -24 * l1).all(), (n, rows)
            if rows * n < 1 << 16:
                continue
        bound = 1.1 * rounding_bound(ref, dtype) * (math.sqrt(1 + log_n) if dtype == torch.float32 else 1.0)
        assert rel_rms(out, ref) <= bound, (n, rows, dtype, rel_rms(out, ref), bound)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("log_n", [4, 8, 11, 12, 13, 15])
def test_gluon_every_kept_config(log_n, dtype, gen):
    if not G.eligible(torch.zeros(1, device="cuda"), 1 << log_n, True):
        pytest.skip("the Gluon kernel runs on sm90")
    n = 1 << log_n
    x = torch.randn((37, n), generator=gen, device="cuda", dtype=dtype)
    ref = hadamard_transform_ref(x, 0.5)
    bound = 1.1 * rounding_bound(ref, dtype) * (math.sqrt(1 + log_n) if dtype == torch.float32 else 1.0)
    plain = H._launch(x, 0.5, None, "butterfly", H._prune(H._BUTTERFLY_CONFIGS, {"KP": 1, "P": n})[0])
    for config in G._prune(G._CONFIGS, {"LOG_N": log_n, "VEC_BITS": G._VEC_BITS[dtype]}):
        out = H._launch(x, 0.5, None, "gluon", config)
        assert rel_rms(out, ref) <= bound, (n, dtype, config)
        assert torch.equal(out, plain), (n, dtype, config)  # every config: the plain kernel's bits


@pytest.mark.cuda
def test_public_functions_route_to_gluon(gen, monkeypatch):
    if not G.eligible(torch.zeros(1, device="cuda"), 1024, True):
        pytest.skip("the Gluon kernel runs on sm90")
    calls = []
    real = G.gluon_launch
    monkeypatch.setattr(H, "gluon_launch", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    x = torch.randn((5, 1024), generator=gen, device="cuda", dtype=torch.bfloat16)
    H.butterfly_hadamard(x)
    H.butterfly_hadamard(x[:, :512])  # strided rows: plain Triton
    H.butterfly_hadamard(torch.randn((5, 1000), generator=gen, device="cuda"))  # padded: plain Triton
    assert calls == [x.shape]
    # the same bits from both kernels (the same fp32 stage order)
    plain = H._launch(x, 1.0, None, "butterfly", H._BUTTERFLY_CONFIGS[0])
    assert torch.equal(H.butterfly_hadamard(x), plain)
