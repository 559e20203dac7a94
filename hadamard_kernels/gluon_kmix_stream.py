"""The K * 2^m transforms of long rows (KP * P = 16384 or 32768 padded elements) on Hopper (sm90), in
Gluon: ``gluon_kmix``'s tile math in persistent programs whose next input tiles stream into shared
memory while the current tile is transformed.

Why. ``gluon_kmix`` loads a whole padded row into registers, transforms it and stores it: a 16K-element
row is 64 KB of fp32 registers and 64 KB of conversion scratch, so two programs share an SM (one for a
32K-element row), and while a program transforms nothing else is read: 34-65% of the copy ceiling on
an H200. Here a program owns tiles pid, pid + G, ... (G programs: ``PER_SM`` per SM) and a ring of
``NBUF`` 16-bit [MT, KP] tiles in shared memory. Tile t + NBUF * G is copied there as soon as tile t's
buffer has been read into the mma operand, so those loads are in flight during the mma, the H_P stages,
the fp32 conversion and the stores; the operand is read straight from the buffer (``ldmatrix``), so
the input never passes through registers before the mix.

- ``_kmix_cp_kernel``: the copy by ``cp.async`` (16-byte vectors, zero-filled where masked: short
  rows and the tail), the buffer in ``copy_smem_layout`` (an XOR-swizzled linear layout: the copies
  of 8 lanes and the operand reads of 8 k rows hit distinct banks). Any n of ``gluon_kmix.eligible``.
- ``_kmix_tma_kernel``: the copy by TMA (one thread issues it, an mbarrier completes it, no address
  registers: what lets the 32K-element rows keep their registers), for n == K * P only: x is read as
  [M, P / 64, K, 64], the box [1, P / 64, KP, 64] zero-fills k >= K; ``tma_view_layout`` reads the box's
  128-byte swizzle back as the [MT, KP] operand.

The tile math is ``gluon_kmix``'s (``kmix_design``, the same stages in the same order), and the prune
keeps only configs whose stage order is ``gluon_kmix``'s preferred config's: the output bits equal
``gluon_kmix``'s whichever kernel and config run (tested on the GPU). ``gluon_kmix`` itself runs the
shorter rows (KP * P <= 8192, where it measured 90-93%).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp, mma_v2
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from hadamard_kernels.gluon_butterfly import radix2_stages
from hadamard_kernels import gluon_kmix
from hadamard_kernels.gluon_kmix import _VEC_BITS, _first_fit, _fits, _get, _mma, _same
from hadamard_kernels.gluon_kmix import kmix_design, mma_acc_layout, stage_order, warps_n_bits
from hadamard_kernels.runtime import autotune_configs, autotune_do_bench, bucket, launch, num_sms

MIN_ROW = 16384  # KP * P: shorter rows run gluon_kmix


@gluon.constexpr_function
def invert_gf2(fwd, n):
    """The inverse of an invertible linear map on n-bit ints over GF(2): fwd[i] is the image of bit i;
    returns inv with inv[o] the int whose image is bit o."""
    mat = [[fwd[i], 1 << i] for i in range(n)]
    for o in range(n):
        piv = next(q for q in range(o, n) if (mat[q][0] >> o) & 1)  # StopIteration: not invertible
        mat[o], mat[piv] = mat[piv], mat[o]
        for q in range(n):
            if q != o and (mat[q][0] >> o) & 1:
                mat[q] = [mat[q][0] ^ mat[o][0], mat[q][1] ^ mat[o][1]]
    return [mat[o][1] for o in range(n)]


@gluon.constexpr_function
def copy_smem_layout(fin, log_kp, log_t):
    """The shared layout of a [MT, KP] 16-bit tile buffer written by ``cp.async`` from ``fin`` (the
    load layout) and read as the mma's A operand. Byte offset bits 0..3 (a 16-byte vector) hold fin's
    register bits 0..2 (m bits: the vector along j), offset bits 4..6 (the vector's slot in a 128-byte
    line) fin's first three lane bits that are not vector bits, XOR-ed with the k bits 0..2 that are not
    among them (each on a slot no k bit holds), the other flat bits above in ascending order: 8 lanes
    write 8 distinct slots, and the operand's 8 k rows of one m run land in 8 distinct slots."""
    def flat_bit(basis):
        return basis[0].bit_length() - 1  # fin's bases are single flat bits

    vec = [flat_bit(b) for b in fin.reg_bases[:3]]
    first = [b for b in (flat_bit(b) for b in fin.lane_bases) if b not in vec][:3]
    order = vec + first + [b for b in range(log_t) if b not in vec and b not in first]
    fwd = [0] * log_t  # flat bit -> offset bits (element offsets)
    for o, b in enumerate(order):
        fwd[b] = 1 << o
    # the swizzle: k bits 0..2 that are not slot bits themselves each flip a slot bit no k bit holds
    free = [s for s in range(3) if first[s] >= 3]
    for i in range(min(3, log_kp)):
        if i not in vec and i not in first:
            fwd[i] |= 1 << (3 + free.pop(0))
    # offset bit o holds the flat index inv[o]: its bits below log_kp are k, the rest m
    return gl.SharedLinearLayout([[v >> log_kp, v & ((1 << log_kp) - 1)] for v in invert_gf2(fwd, log_t)], [], 16)


@gluon.constexpr_function
def tma_view_layout(log_p, log_kp, log_t, packed):
    """The TMA box [1, P / 64, KP, 64] (row-major, 128-byte swizzle: the 16-byte slot within each
    128-byte line XOR-ed with the line index mod 8) read as the [MT, KP] tile of ``kmix_design``,
    whose M bit b stands for memory bit tgt[b] (``packed``) of the row (j bits, then row bits)."""
    tgt = [(packed >> (5 * b)) & 31 for b in range(log_t - log_kp)]

    def coord(o):  # element offset bit o of the box (j bits 0..5, k bits, j bits 6.., rows) -> [m, k]
        if 6 <= o < 6 + log_kp:
            return [0, 1 << (o - 6)]
        q = o if o < 6 else o - log_kp  # the memory bit of the row (j, then row bits)
        return [1 << tgt.index(q), 0]

    logical = [coord(o) for o in range(log_t)]
    fwd = [1 << o for o in range(log_t)]  # logical offset -> physical: line bits 0..2 flip slot bits
    for i in range(3):
        if 6 + i < log_t:
            fwd[6 + i] |= 1 << (3 + i)
    bases = []
    for v in invert_gf2(fwd, log_t):  # physical offset bit -> the logical offset holding it
        mk = [0, 0]
        for q in range(log_t):
            if (v >> q) & 1:
                mk = [mk[0] ^ logical[q][0], mk[1] ^ logical[q][1]]
        bases.append(mk)
    return gl.SharedLinearLayout(bases, [], 128)


@gluon.constexpr_function
def stream_design(num_warps, log_p, log_kp, vec_bits, log_t):
    """``gluon_kmix``'s tile design for a config: the mma layout, its accumulator as a linear layout
    (the kernels check it against Triton's) and ``kmix_design``'s dict, or None where none fits."""
    wn = warps_n_bits(num_warps, log_p, log_kp, log_t, vec_bits)
    if wn < 0:
        return None
    acc = mma_acc_layout(log_t - log_kp, log_kp, num_warps.bit_length() - 1 - wn, wn)
    return dict(mma=_mma(num_warps, wn), acc=acc, d=kmix_design(acc, log_p, log_kp, log_t, vec_bits))


@gluon.jit
def _offsets(N, D, LOG_P: gl.constexpr, LOG_KP: gl.constexpr, VEC_BITS: gl.constexpr, LOG_T: gl.constexpr):
    # gluon_kmix's address map in fin: (element offsets within a tile's rows, the row of each
    # element within the tile, the column mask), [MT, KP] views, 16-byte vectors hinted.
    T: gl.constexpr = 1 << LOG_T
    KP: gl.constexpr = 1 << LOG_KP
    MT: gl.constexpr = T >> LOG_KP
    PACKED: gl.constexpr = _get(D, "packed")
    f = gl.arange(0, T, layout=_get(D, "fin"))
    mm = f & 0
    for b in gl.static_range(LOG_T - LOG_KP):
        mm |= ((f >> (b + LOG_KP)) & 1) << ((PACKED >> (5 * b)) & 31)
    c = (f & (KP - 1)) * (1 << LOG_P) + (mm & ((1 << LOG_P) - 1))
    offs = ((mm >> LOG_P) * N + c).reshape([MT, KP])  # int32: a tile's rows are < 2^31 elements
    offs = gl.max_contiguous(gl.multiple_of(offs, [1 << VEC_BITS, 1]), [1 << VEC_BITS, 1])
    rows = gl.max_constancy((mm >> LOG_P).reshape([MT, KP]), [1 << VEC_BITS, 1])
    cmask = gl.max_constancy((c < N).reshape([MT, KP]), [1 << VEC_BITS, 1])
    return offs, rows, cmask


@gluon.jit
def _operand_b(ht_ptr, MMA: gl.constexpr, LOG_KP: gl.constexpr):
    # ht ([KP, KP], x's dtype) as the mma's B operand: loaded once per program
    KP: gl.constexpr = 1 << LOG_KP
    LB: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    kk = gl.arange(0, KP, layout=gl.SliceLayout(1, LB))
    ii = gl.arange(0, KP, layout=gl.SliceLayout(0, LB))
    return gl.load(ht_ptr + kk[:, None] * KP + ii[None, :])


@gluon.jit
def _tile(a, b, out_ptr, row0, offs, rows, cmask, M, N, scale, MMA: gl.constexpr, ACC: gl.constexpr, D,
          LOG_KP: gl.constexpr, LOG_T: gl.constexpr):
    # gluon_kmix's math for one tile: the K mix (mma), the stages in the accumulator's layout, one
    # conversion to fin, the rest, * scale, one rounding at the store.
    T: gl.constexpr = 1 << LOG_T
    KP: gl.constexpr = 1 << LOG_KP
    acc = mma_v2(a, b, gl.zeros([T >> LOG_KP, KP], gl.float32, layout=MMA))
    y = gl.convert_layout(gl.convert_layout(acc, ACC).reshape([T]), _get(D, "acc"))  # relabellings
    y = radix2_stages(y, T, LOG_T, _get(D, "mask_acc"))
    y = gl.convert_layout(y, _get(D, "fin"))
    y = radix2_stages(y, T, LOG_T, _get(D, "mask_fin")) * scale
    gl.store(out_ptr + gl.multiple_of(row0 * N, 8) + offs, y.reshape([T >> LOG_KP, KP]).to(out_ptr.dtype.element_ty),
             mask=cmask & (rows < M - row0))


@gluon.jit
def _kmix_cp_kernel(x_ptr, out_ptr, ht_ptr, M, N, scale, M_BUCKET,
                    LOG_P: gl.constexpr, LOG_KP: gl.constexpr, VEC_BITS: gl.constexpr,
                    LOG_T: gl.constexpr, NBUF: gl.constexpr, PER_SM: gl.constexpr):
    # x, out: M contiguous rows of N (a multiple of 8) <= K * P elements; ht: gluon_kmix's operand.
    # Tiles of R = T / (KP * P) rows; program pid owns tiles pid, pid + G, ...; NBUF tiles in flight.
    KP: gl.constexpr = 1 << LOG_KP
    MT: gl.constexpr = 1 << (LOG_T - LOG_KP)
    R: gl.constexpr = MT >> LOG_P
    L: gl.constexpr = stream_design(gl.num_warps(), LOG_P, LOG_KP, VEC_BITS, LOG_T)
    MMA: gl.constexpr = _get(L, "mma")
    ACC: gl.constexpr = _get(L, "acc")
    D: gl.constexpr = _get(L, "d")
    gl.static_assert(_same(ACC, gl.to_linear_layout(MMA, [MT, KP])), "mma_acc_layout differs from Triton's")
    LA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    bufs = gl.allocate_shared_memory(x_ptr.dtype.element_ty, [NBUF, MT, KP],
                                     copy_smem_layout(_get(D, "fin"), LOG_KP, LOG_T))
    offs, rows, cmask = _offsets(N, D, LOG_P, LOG_KP, VEC_BITS, LOG_T)
    pid = gl.program_id(0)
    G = gl.num_programs(0)
    for s in gl.static_range(NBUF):
        r0 = (pid + s * G).to(gl.int64) * R
        cp.async_copy_global_to_shared(bufs.index(s), x_ptr + gl.multiple_of(r0 * N, 8) + offs, mask=cmask & (rows < M - r0))
        cp.commit_group()
    b = _operand_b(ht_ptr, MMA, LOG_KP)
    i = 0
    for t in range(pid, (M + R - 1) // R, G):
        buf = bufs.index(i % NBUF)
        cp.wait_group(NBUF - 1)
        gl.thread_barrier()
        a = buf.load(LA)
        gl.thread_barrier()  # every warp has read the buffer: refill it with tile t + NBUF * G
        rn = (t + NBUF * G).to(gl.int64) * R
        cp.async_copy_global_to_shared(buf, x_ptr + gl.multiple_of(rn * N, 8) + offs, mask=cmask & (rows < M - rn))
        cp.commit_group()
        _tile(a, b, out_ptr, t.to(gl.int64) * R, offs, rows, cmask, M, N, scale, MMA, ACC, D, LOG_KP, LOG_T)
        i += 1
    cp.wait_group(0)


@gluon.jit
def _kmix_tma_kernel(x_desc, out_ptr, ht_ptr, M, N, scale, M_BUCKET,
                     LOG_P: gl.constexpr, LOG_KP: gl.constexpr, VEC_BITS: gl.constexpr,
                     LOG_T: gl.constexpr, NBUF: gl.constexpr, PER_SM: gl.constexpr):
    # x_desc: x (N == K * P) as [M, P / 64, K, 64] (strides N, 64, P, 1), box [1, P / 64, KP, 64],
    # 128-byte swizzle; one row per tile (LOG_T = log2(KP * P)). Otherwise as _kmix_cp_kernel.
    KP: gl.constexpr = 1 << LOG_KP
    MT: gl.constexpr = 1 << (LOG_T - LOG_KP)
    gl.static_assert(LOG_T == LOG_P + LOG_KP, "the TMA kernel takes one row per tile")
    L: gl.constexpr = stream_design(gl.num_warps(), LOG_P, LOG_KP, VEC_BITS, LOG_T)
    MMA: gl.constexpr = _get(L, "mma")
    ACC: gl.constexpr = _get(L, "acc")
    D: gl.constexpr = _get(L, "d")
    gl.static_assert(_same(ACC, gl.to_linear_layout(MMA, [MT, KP])), "mma_acc_layout differs from Triton's")
    LA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    VIEW: gl.constexpr = tma_view_layout(LOG_P, LOG_KP, LOG_T, _get(D, "packed"))
    bufs = gl.allocate_shared_memory(x_desc.dtype, [NBUF] + x_desc.block_type.shape, x_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(NBUF):
        mbarrier.init(bars.index(s), count=1)
    offs, rows, cmask = _offsets(N, D, LOG_P, LOG_KP, VEC_BITS, LOG_T)
    pid = gl.program_id(0)
    G = gl.num_programs(0)
    for s in gl.static_range(NBUF):
        if pid + s * G < M:
            mbarrier.expect(bars.index(s), x_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [pid + s * G, 0, 0, 0], bars.index(s), bufs.index(s))
    b = _operand_b(ht_ptr, MMA, LOG_KP)
    i = 0
    for t in range(pid, M, G):
        bar = bars.index(i % NBUF)
        mbarrier.wait(bar, (i // NBUF) & 1)
        buf = bufs.index(i % NBUF)
        a = buf._reinterpret(x_desc.dtype, [MT, KP], VIEW).load(LA)
        gl.thread_barrier()  # every warp has read the buffer: refill it with row t + NBUF * G
        if t + NBUF * G < M:
            mbarrier.expect(bar, x_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [t + NBUF * G, 0, 0, 0], bar, buf)
        _tile(a, b, out_ptr, t.to(gl.int64), offs, rows, cmask, M, N, scale, MMA, ACC, D, LOG_KP, LOG_T)
        i += 1
    for s in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(s))


# --- Autotune: (LOG_T, warps, NBUF, programs per SM). Measured on an H200 (bf16, 256 MiB, % of clone):
# 16K-element rows 12 x 1024 / 28 x 512: one row per tile, 8 warps, one buffer, two programs per SM
# at <= 128 registers: 89.4 / 90.8 (two buffers, one program: 76.8 / 84.3; 16 warps, two rows per
# tile: 74.7 / 77.4). 32K-element rows: 16 warps, one buffer, one program (the only config whose
# tile and buffer fit shared memory): cp.async 59.7 / 75.0 / 54.6, TMA 62.7 / 82.0 / 52.3 at
# 20 x 1024 / 28 x 1024 / 40 x 512. The prune keeps gluon_kmix's stage order (the same bits).
_CONFIGS = [
    triton.Config({"LOG_T": 14, "NBUF": 1, "PER_SM": 2}, num_warps=8, num_stages=1, maxnreg=128),
    triton.Config({"LOG_T": 14, "NBUF": 2, "PER_SM": 1}, num_warps=8, num_stages=1),
    triton.Config({"LOG_T": 15, "NBUF": 1, "PER_SM": 1}, num_warps=16, num_stages=1),
]
_SMEM = 227 * 1024


def _fits_stream(config, log_p: int, log_kp: int, vec_bits: int) -> bool:
    """One or two padded rows per tile, a tile design, and NBUF 16-bit buffers plus the fp32
    conversion scratch within shared memory."""
    log_t, nbuf = config.kwargs["LOG_T"], config.kwargs["NBUF"]
    return (log_p + log_kp <= log_t <= log_p + log_kp + 1 and _fits(config, log_p, log_kp, vec_bits)
            and nbuf * 2 * (1 << log_t) + 4 * (1 << log_t) <= _SMEM)


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    key = (args["LOG_P"], args["LOG_KP"], args["VEC_BITS"])
    order = stage_order(_first_fit(*key), *key)
    return [c for c in configs if _fits_stream(c, *key) and stage_order(c, *key) == order]


def _tuned(kernel):
    return triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(_CONFIGS),
                           key=["LOG_P", "LOG_KP", "VEC_BITS", "M_BUCKET"],
                           prune_configs_by={"early_config_prune": _prune})(kernel)


_cp_tuned = _tuned(_kmix_cp_kernel)
_TMA_CONFIGS = [c for c in _CONFIGS if c.kwargs["LOG_T"] == 15]  # one 32K-element row per tile
_tma_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(_TMA_CONFIGS),
                             key=["LOG_P", "LOG_KP", "VEC_BITS", "M_BUCKET"])(_kmix_tma_kernel)


def eligible(kp: int, p: int) -> bool:
    """True when a ``gluon_kmix.eligible`` call runs here: padded rows of 16K or 32K elements."""
    return kp * p >= MIN_ROW


def uses_tma(n: int, k: int, kp: int, p: int) -> bool:
    """The TMA kernel runs unpadded 32K-element rows (it measured 3-7 points above cp.async at
    20 x 1024 and 28 x 1024, 2 below at 40 x 512); cp.async runs the rest."""
    return n == k * p and kp * p == 32768


@functools.lru_cache(maxsize=64)
def _kept(tma_kernel: bool, log_p: int, log_kp: int, vec_bits: int) -> tuple:
    """The prune's configs of a size (cached: the prune's designs cost ~0.5 ms of Python)."""
    return tuple(_prune(_TMA_CONFIGS if tma_kernel else _CONFIGS, {"LOG_P": log_p, "LOG_KP": log_kp, "VEC_BITS": vec_bits}))


def stream_launch(x: torch.Tensor, out: torch.Tensor, m: int, n: int, k: int, ht: torch.Tensor, p: int,
                  scale: float, config: Optional[triton.Config] = None) -> None:
    """out = F.linear(x, kron(H_K, H_P))[:, :n] * scale for m contiguous rows of n (``gluon_kmix.eligible``
    and ``eligible``), ``ht`` from ``gluon_kmix.operand``; ``config``: exactly that one of ``_CONFIGS``."""
    kp = ht.shape[0]
    consts = {"LOG_P": p.bit_length() - 1, "LOG_KP": kp.bit_length() - 1, "VEC_BITS": _VEC_BITS[x.dtype]}
    tma_kernel = uses_tma(n, k, kp, p)
    fit = _kept(tma_kernel, *consts.values())
    if config is not None and config not in fit:
        raise ValueError(f"gluon_kmix_stream: config {config} does not fit K * P = {kp} (padded) * {p} "
                         f"({'TMA' if tma_kernel else 'cp.async'} kernel): one of {fit}")
    if config is None and len((_tma_tuned if tma_kernel else _cp_tuned).configs) == 1:
        config = fit[0]
    sms = num_sms(x.device)
    row_bits = consts["LOG_P"] + consts["LOG_KP"]

    def grid(meta):
        tiles = (m + (1 << (meta["LOG_T"] - row_bits)) - 1) >> (meta["LOG_T"] - row_bits)
        return (min(tiles, meta["PER_SM"] * sms),)

    if tma_kernel:
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        xv = x.view(m, k, p // 64, 64).permute(0, 2, 1, 3)  # [M, P / 64, K, 64]
        layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=4)
        desc = TensorDescriptor(xv, list(xv.shape), list(xv.stride()), [1, p // 64, kp, 64], layout)
        launch(_tma_tuned, grid, (desc, out, ht, m, n, float(scale), bucket(m)), consts, config)
    else:
        launch(_cp_tuned, grid, (x, out, ht, m, n, float(scale), bucket(m)), consts, config)


def kmix_launch(x: torch.Tensor, out: torch.Tensor, m: int, n: int, k: int, ht: torch.Tensor, p: int,
                scale: float, config: Optional[triton.Config] = None) -> None:
    """The Gluon K * P transform of a ``gluon_kmix.eligible`` call: ``stream_launch`` for padded rows of
    16K or 32K elements of a 16-byte aligned x, ``gluon_kmix.gluon_kmix_launch`` for the others; a config
    runs the kernel whose list holds it (an ``NBUF`` config: this module's, which needs such a call)."""
    kp = ht.shape[0]
    stream = eligible(kp, p) and x.data_ptr() % 16 == 0  # cp.async and TMA copy 16-byte aligned rows
    if config is not None and "NBUF" in config.kwargs and not stream:
        raise ValueError(f"gluon_kmix_stream: config {config} needs a padded row of >= {MIN_ROW} elements "
                         f"and a 16-byte aligned x, got K * P = {kp} (padded) * {p}, x at {x.data_ptr() % 16} mod 16")
    if stream and (config is None or "NBUF" in config.kwargs):
        stream_launch(x, out, m, n, k, ht, p, scale, config)
    else:
        gluon_kmix.gluon_kmix_launch(x, out, m, n, ht, p, scale, config)
