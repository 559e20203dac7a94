"""The K * 2^m transforms (``hadamard_transform_12N`` ... ``_40N``) on Hopper (sm90) in Gluon: the K mix
on tensor cores, the 2^m butterfly split between two register layouts.

A row of n = K * P elements (P = 2^m) read as a K x P matrix X becomes Y = H_K X H_P. The two factors
commute, and the K mix goes first, on the input itself: bf16 and fp16 values times +-1 are exact, so
one ``mma_v2`` against H_K^T (zero-padded to KP x KP, KP = K rounded up to a power of two, >= 16)
computes H_K X with exact products and fp32 accumulation, no operand split. The fp32 result then runs
the radix-2 stages of H_P and is rounded once at the store.

One program owns T = 2^LOG_T elements of the padded tile: T / (KP * P) whole rows (every output of a
row depends on every input of it), their k >= K rows and the columns past a short row masked (read as
zero, never stored). The tile is the [MT, KP] matrix A[m, k] (MT = T / KP), and the order of its rows
m is ours to choose: the mix is the same for any order. ``kmix_design`` picks it so that the H_P
stages need a single fp32 layout change:

- the mma accumulator's register bits of m stand for the j bits just above a 16-byte vector (and,
  when there are more, the highest j bits): those stages run in the accumulator's own layout;
- its lane and warp bits of m stand for the vector's j bits and the remaining j bits (then the row
  bits): ``fin``, the load and store layout, holds those in registers (the vector first, lanes along
  the next j bits, so a warp reads and writes runs of contiguous memory) and runs their stages.

Shared-memory round trips: one of the 16-bit input (into the mma operand layout) and one of the fp32
tile (accumulator to ``fin``). Which stages run in which layout depends on the config, and fp32 adds in
another order can round differently, so the prune keeps only configs with the preferred config's
stage order (``stage_order``): one size gives the same bits whichever config the autotuner picks.
The plain-Triton kernels of ``hadamard`` run everywhere else (fp32, strided rows, n not a multiple of
8, P outside 64..1024, K = 40 with P = 1024, the interpreter, the explicit ``butterfly_hadamard`` /
``matmul_hadamard``). Compiled and autograd-recorded calls reach this kernel through the opaque
``hadamard_kernels::fwht_gluon`` custom op.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from hadamard_kernels.gluon_butterfly import _COMPILED, hopper, radix2_stages
from hadamard_kernels.matrices import hadamard_k_matrix
from hadamard_kernels.runtime import autotune_configs, autotune_do_bench, bucket, launch

MIN_P = 64  # smaller P (rows of <= 40 * 32 elements) not measured: the plain kernels run
MAX_P = 1024
MAX_ROW = 32768  # KP * P: one padded row per program at <= 64 fp32 values per thread and 16 warps


@gluon.constexpr_function
def mma_acc_layout(log_mt, log_kp, wm_bits, wn_bits):
    """The linear layout of an ``mma_v2`` accumulator [2^log_mt, 2^log_kp] (instr_shape [16, 8],
    warps_per_cta [2^wm_bits, 2^wn_bits]) as Triton lays it out: the 16 x 8 tile (registers: column
    1, row 8; lanes: columns 2, 4, rows 1, 2, 4), warps along columns then rows, the repeats in
    registers, columns first. The kernel checks it against ``gl.to_linear_layout``."""
    reg = [[0, 1], [8, 0]] + [[0, 8 << (wn_bits + q)] for q in range(log_kp - 3 - wn_bits)]
    reg += [[16 << (wm_bits + q), 0] for q in range(log_mt - 4 - wm_bits)]
    warp = [[0, 8 << q] for q in range(wn_bits)] + [[16 << q, 0] for q in range(wm_bits)]
    return gl.DistributedLinearLayout(reg, [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]], warp, [], [1 << log_mt, 1 << log_kp])


@gluon.constexpr_function
def kmix_design(acc, log_p, log_kp, log_t, vec_bits):
    """The two fp32 layouts of a program of 2^log_t padded elements, given the accumulator layout
    ``acc`` of the [MT, KP] matrix view (MT = 2^(log_t - log_kp) rows (r, j), KP columns i): a dict,
    or None where the design does not fit.

    The rows' order is ours to choose (the mix is the same for any order), so M bit b of the matrix
    view stands for memory bit ``tgt[b]`` of the tile (j bits 0..log_p-1, then row bits), picked so
    that the j stages split between two layouts with one conversion between them:
    - the M bits in ``acc``'s registers stand for the j bits just above the vector (j_V, j_V+1, ...,
      the final layout's lane bits, so a warp's stores run along contiguous memory) and, when more
      are left, the highest j bits: their stages run in the accumulator's layout ("mask_acc");
    - the M bits in ``acc``'s lanes and warps stand for j_0 .. j_V-1 (the 16-byte vector) and the
      remaining j bits, then the row bits: ``fin``, the load / store layout, holds those j bits in
      its registers (the vector first) and runs their stages ("mask_fin").
    Flat bit of the 1-d view (row-major [MT, KP]): M bit b is bit b + log_kp, column bit c is bit c.
    ``packed``: tgt[b] in 5-bit fields, for the kernel's address arithmetic."""
    mt = log_t - log_kp

    def kind(vec):
        for name, bases in (("reg", acc.reg_bases), ("lane", acc.lane_bases), ("warp", acc.warp_bases)):
            if vec in [list(b) for b in bases]:
                return name
        return None

    kinds = [kind([1 << b, 0]) for b in range(mt)]
    if None in kinds or log_p <= vec_bits:
        return None
    a_reg = [b for b in range(mt) if kinds[b] == "reg"]
    a_oth = [b for b in range(mt) if kinds[b] != "reg"]
    n_reg, n_lane = len(acc.reg_bases), len(acc.lane_bases)
    n_lane_j = min(len(a_reg), n_lane, log_p - vec_bits)
    tgt = {a_reg[q]: vec_bits + q for q in range(n_lane_j)}
    rest_j = list(range(vec_bits + n_lane_j, log_p))
    extra = a_reg[n_lane_j:]
    done_acc = list(a_reg[:n_lane_j])
    while extra and rest_j:  # spare accumulator register bits take the highest j bits left
        b = extra.pop(0)
        tgt[b] = rest_j.pop()
        done_acc.append(b)
    fin_targets = list(range(vec_bits)) + rest_j
    if len(fin_targets) > min(n_reg, len(a_oth)):
        return None
    fin_j = a_oth[:len(fin_targets)]
    for b, t in zip(fin_j, fin_targets):
        tgt[b] = t
    r_bits = extra + a_oth[len(fin_targets):]
    for q, b in enumerate(r_bits):
        tgt[b] = log_p + q
    reg = [b + log_kp for b in fin_j]
    lane = [b + log_kp for b in a_reg[:n_lane_j]]
    rest = list(range(log_kp)) + [b + log_kp for b in r_bits] + [b + log_kp for b in done_acc[n_lane_j:]]
    fill = n_reg - len(reg)  # the other register and lane slots: column bits first, then row bits
    reg, rest = reg + rest[:fill], rest[fill:]
    fill = n_lane - len(lane)
    lane, warp = lane + rest[:fill], rest[fill:]
    if sorted(reg + lane + warp) != list(range(log_t)) or len(warp) != len(acc.warp_bases):
        return None

    def flat(v):
        return [(v[0] << log_kp) | v[1]]

    return dict(
        acc=gl.DistributedLinearLayout([flat(v) for v in acc.reg_bases], [flat(v) for v in acc.lane_bases],
                                       [flat(v) for v in acc.warp_bases], [], [1 << log_t]),
        fin=gl.DistributedLinearLayout([[1 << b] for b in reg], [[1 << b] for b in lane],
                                       [[1 << b] for b in warp], [], [1 << log_t]),
        mask_acc=sum(1 << (b + log_kp) for b in done_acc),
        mask_fin=sum(1 << (b + log_kp) for b in fin_j),
        packed=sum(tgt[b] << (5 * b) for b in range(mt)),
    )


@gluon.constexpr_function
def warps_n_bits(num_warps, log_p, log_kp, log_t, vec_bits):
    """log2 of the accumulator's warps along its KP columns: the fewest that give a design, or -1."""
    wb = num_warps.bit_length() - 1
    for wn in range(0, min(wb, log_kp - 3) + 1):
        if log_t - log_kp - 4 - (wb - wn) < 0:
            continue
        if kmix_design(mma_acc_layout(log_t - log_kp, log_kp, wb - wn, wn), log_p, log_kp, log_t, vec_bits) is not None:
            return wn
    return -1


@gluon.constexpr_function
def _mma(num_warps, wn):
    return gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps >> wn, 1 << wn], instr_shape=[16, 8])


@gluon.constexpr_function
def _get(d, key):
    return d[key]


@gluon.constexpr_function
def _same(a, b):
    return [list(v) for v in a.reg_bases] == [list(v) for v in b.reg_bases] and \
        [list(v) for v in a.lane_bases] == [list(v) for v in b.lane_bases] and \
        [list(v) for v in a.warp_bases] == [list(v) for v in b.warp_bases]


@gluon.jit
def _fwht_kmix_gluon_kernel(x_ptr, out_ptr, ht_ptr, M, N, scale, M_BUCKET,
                            LOG_P: gl.constexpr, LOG_KP: gl.constexpr, VEC_BITS: gl.constexpr,
                            LOG_T: gl.constexpr):
    # x, out: M contiguous rows of N <= K * P elements (N a multiple of 2^VEC_BITS); ht: [KP, KP] in
    # x's dtype, ht[k, i] = H_K[i, k], zero past K. One program: rows pid * R.. (R = T / (KP * P))
    # as the [MT, KP] matrix view (M bit b = memory bit tgt[b], see ``kmix_design``): load in
    # ``fin``, one conversion to the mma operand, the K mix, the j stages held in the accumulator's
    # registers, one conversion to ``fin``, the other j stages, * scale, one rounding at the store.
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    KP: gl.constexpr = 1 << LOG_KP
    P: gl.constexpr = 1 << LOG_P
    MT_BITS: gl.constexpr = LOG_T - LOG_KP
    MT: gl.constexpr = 1 << MT_BITS
    WN: gl.constexpr = warps_n_bits(NW, LOG_P, LOG_KP, LOG_T, VEC_BITS)
    gl.static_assert(WN >= 0, "no kmix design for this tile: the prune should have dropped the config")
    MMA: gl.constexpr = _mma(NW, WN)
    ACC: gl.constexpr = mma_acc_layout(MT_BITS, LOG_KP, NW.bit_length() - 1 - WN, WN)
    gl.static_assert(_same(ACC, gl.to_linear_layout(MMA, [MT, KP])), "mma_acc_layout differs from Triton's")
    D: gl.constexpr = kmix_design(ACC, LOG_P, LOG_KP, LOG_T, VEC_BITS)
    FIN: gl.constexpr = _get(D, "fin")
    PACKED: gl.constexpr = _get(D, "packed")
    LB: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)

    f = gl.arange(0, T, layout=FIN)
    mm = f & 0  # the memory index r * P + j of flat element f (its M bits permuted by tgt)
    for b in gl.static_range(MT_BITS):
        mm |= ((f >> (b + LOG_KP)) & 1) << ((PACKED >> (5 * b)) & 31)
    c = (f & (KP - 1)) * P + (mm & (P - 1))  # k * P + j: the padded column
    row = gl.program_id(0).to(gl.int64) * (MT >> LOG_P) + (mm >> LOG_P).to(gl.int64)
    # [MT, KP] views: fin's first register bits are M bits standing for j_0..j_V-1, so loads and
    # stores are 16-byte vectors along dim 0 (hinted: the compiler cannot see it through the bits)
    offs = (row * N + c.to(gl.int64)).reshape([MT, KP])
    offs = gl.max_contiguous(gl.multiple_of(offs, [1 << VEC_BITS, 1]), [1 << VEC_BITS, 1])
    mask = gl.max_constancy(((c < N) & (row < M)).reshape([MT, KP]), [1 << VEC_BITS, 1])
    x = gl.load(x_ptr + offs, mask=mask, other=0.0)

    # The K mix: A[m, k] @ ht[k, i] on tensor cores, exact products, fp32 accumulation.
    kk = gl.arange(0, KP, layout=gl.SliceLayout(1, LB))
    ii = gl.arange(0, KP, layout=gl.SliceLayout(0, LB))
    b = gl.load(ht_ptr + kk[:, None] * KP + ii[None, :])
    a = gl.convert_layout(x, gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2))
    acc = mma_v2(a, b, gl.zeros([MT, KP], gl.float32, layout=MMA))

    # H_P: the stages in the accumulator's registers, one conversion, the rest, one rounding.
    y = gl.convert_layout(gl.convert_layout(acc, ACC).reshape([T]), _get(D, "acc"))  # relabellings
    y = radix2_stages(y, T, LOG_T, _get(D, "mask_acc"))
    y = gl.convert_layout(y, FIN)
    y = radix2_stages(y, T, LOG_T, _get(D, "mask_fin")) * scale
    gl.store(out_ptr + offs, y.reshape([MT, KP]).to(out_ptr.dtype.element_ty), mask=mask)


# --- Autotune: (log2 values per thread, warps); a program holds one to four padded rows (KP * P
# elements). Preferred: the smallest tile that holds a row, then the fewest warps (64 values per
# thread where the list has it). Measured on an H200 (bf16, 256 MiB): it was the fastest config or
# within 4% of it for 9 of 10 sizes (40 x 256: 24.5% against 32.4% with 16 warps). The j stages run in an order that
# depends on the config (the accumulator's layout decides which run first), and fp32 adds in another
# order can round differently: the prune keeps only configs whose order is the preferred config's
# (``stage_order``), so whatever the autotuner picks, in any process, the output bits are the same.
_CONFIGS = [
    triton.Config({"LOG_T": r + 5 + w.bit_length() - 1}, num_warps=w, num_stages=1)
    for r, w in ((6, 2), (5, 4), (6, 4), (5, 8), (6, 8), (5, 16), (6, 16), (5, 2))
]


def _fits(config, log_p: int, log_kp: int, vec_bits: int) -> bool:
    log_t = config.kwargs["LOG_T"]
    return (log_p + log_kp <= log_t <= log_p + log_kp + 2
            and warps_n_bits(config.num_warps, log_p, log_kp, log_t, vec_bits) >= 0)


def stage_order(config, log_p: int, log_kp: int, vec_bits: int) -> tuple:
    """The j bits in the order the config's kernel runs their radix-2 stages (accumulator layout,
    then ``fin``; ascending tile bits within each): configs with the same order give the same bits."""
    log_t, nw = config.kwargs["LOG_T"], config.num_warps
    wn = warps_n_bits(nw, log_p, log_kp, log_t, vec_bits)
    d = kmix_design(mma_acc_layout(log_t - log_kp, log_kp, nw.bit_length() - 1 - wn, wn), log_p, log_kp, log_t, vec_bits)
    order = []
    for mask in (d["mask_acc"], d["mask_fin"]):
        order += [(d["packed"] >> (5 * (f - log_kp))) & 31 for f in range(log_t) if (mask >> f) & 1]
    return tuple(order)


def _preferred(configs, key):
    """The fitting configs, the preferred first: the smallest tile, then more values per thread."""
    fit = [c for c in configs if _fits(c, *key)]
    return sorted(fit, key=lambda c: (c.kwargs["LOG_T"], c.num_warps))


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    key = (args["LOG_P"], args["LOG_KP"], args["VEC_BITS"])
    fit = _preferred(configs, key) or _preferred(_CONFIGS, key)[:1]
    order = stage_order(fit[0], *key)
    return [c for c in fit if stage_order(c, *key) == order][:5]


@functools.lru_cache(maxsize=64)
def _first_fit(log_p: int, log_kp: int, vec_bits: int) -> triton.Config:
    return _preferred(_CONFIGS, (log_p, log_kp, vec_bits))[0]


_kmix_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(_CONFIGS),
                              key=["LOG_P", "LOG_KP", "VEC_BITS", "M_BUCKET"],
                              prune_configs_by={"early_config_prune": _prune})(_fwht_kmix_gluon_kernel)


_VEC_BITS = {torch.float16: 3, torch.bfloat16: 3}


def eligible(x: torch.Tensor, n: int, k: int, p: int, flat: bool) -> bool:
    """True when this kernel runs the K * P transform of x: bf16 or fp16 (exact +-1 products; fp32
    runs the plain kernels), contiguous rows n apart (``flat``), n a multiple of 8 (16-byte vectors),
    P in [64, 1024], KP * P <= 32768 (not K = 40 with P = 1024), K > 1, a CUDA tensor on sm90, not under the interpreter."""
    return (k > 1 and flat and MIN_P <= p <= MAX_P and max(16, triton.next_power_of_2(k)) * p <= MAX_ROW and n % 8 == 0 and x.dtype in _VEC_BITS and _COMPILED
            and x.is_cuda and hopper(x.get_device()))


def padded_ht(h_k: torch.Tensor, kp: int, dtype: torch.dtype) -> torch.Tensor:
    """H_K^T zero-padded to [kp, kp] in ``dtype`` (+-1 and 0: exact)."""
    ht = torch.zeros(kp, kp, dtype=dtype, device=h_k.device)
    ht[:h_k.shape[0], :h_k.shape[0]] = h_k.t().to(dtype)
    return ht


@functools.lru_cache(maxsize=32)
def _default_operand(k: int, kp: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return padded_ht(hadamard_k_matrix(k, torch.float32, device), kp, dtype)


def operand(h_k: torch.Tensor, kp: int, dtype: torch.dtype, default: bool) -> torch.Tensor:
    """The kernel's ``ht`` for ``h_k``: cached for the library's own H_K (``default``: h_k is the
    matrix ``hadamard_k_matrix`` gives), built per call for a caller's matrix."""
    if default:
        return _default_operand(int(h_k.shape[0]), kp, dtype, h_k.device)
    return padded_ht(h_k, kp, dtype)


def gluon_kmix_launch(x: torch.Tensor, out: torch.Tensor, m: int, n: int, ht: torch.Tensor, p: int,
                      scale: float, config: Optional[triton.Config] = None) -> None:
    """out = F.linear(x, kron(H_K, H_P))[:, :n] * scale for m contiguous rows of n (``eligible``);
    ``ht`` from ``padded_ht``."""
    kp = ht.shape[0]
    consts = {"LOG_P": p.bit_length() - 1, "LOG_KP": kp.bit_length() - 1, "VEC_BITS": _VEC_BITS[x.dtype]}
    if config is None and len(_kmix_tuned.configs) == 1:
        config = _first_fit(consts["LOG_P"], consts["LOG_KP"], consts["VEC_BITS"])
    elif config is not None and not _fits(config, consts["LOG_P"], consts["LOG_KP"], consts["VEC_BITS"]):
        raise ValueError(f"gluon_kmix: config {config} does not fit K * P = {kp} (padded) * {p}: LOG_T must hold "
                         f"one to four padded rows and have a tile design (gluon_kmix._fits)")
    row = kp * p

    def grid(meta):
        rows = (1 << meta["LOG_T"]) // row
        return ((m + rows - 1) // rows,)

    launch(_kmix_tuned, grid, (x, out, ht, m, n, float(scale), bucket(m)), consts, config)
