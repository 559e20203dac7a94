"""The Walsh-Hadamard transform of contiguous rows of n = 2^m elements (16 <= n <= 32768) on Hopper (sm90),
written in Gluon (``triton.experimental.gluon``), where a kernel states its register layouts.

Why a second butterfly. In plain Triton (``hadamard._fwht_butterfly_kernel``) the compiler picks a
layout for every radix-2 stage, and each stage whose two elements sit in different threads moves the
tile through shared memory or warp shuffles: 8 layout conversions at n = 256, 9 at n = 4096, which
held it at 70-84% of the copy ceiling from n = 128 to 8192 on an H200. Here the stages are grouped:

- A program owns T = 2^LOG_T consecutive elements of the flat input (T / n whole rows; the last
  program's tail masked). Bit b of an element's index in the tile (row bits above the m column bits)
  is mapped by a linear layout to one register, lane or warp bit of the program.
- ``plan`` builds a chain of such layouts. L0, the load/store layout, puts bits 0..V-1 in registers
  (16-byte vector loads), the next five on lanes (a warp reads 512 contiguous bytes), then warps
  (row bits first) and registers. Each later layout holds the lowest column bits not yet transformed
  in its registers.
- Stages run in ascending bit order, the plain kernel's: each layout transforms the run of next
  column bits it holds in registers (reshape, permute, split, join: register renaming, no data
  movement); ``gl.convert_layout`` moves the fp32 tile to the next layout through shared memory, and
  a last conversion returns to L0, where the highest column bits (L0's own register bits) are
  transformed before the coalesced store. n <= 4096 with <= 64 values per thread: two conversions in
  all; the configs kept for n >= 8192 take three.

Same arithmetic as the plain kernel, in the same order: fp32 adds and subtracts with half-sizes 1, 2,
..., n/2, ``scale`` applied once, one rounding to the output dtype, so both kernels give the same bits
(tested on the GPU). Gluon kernels do not run under Triton's CPU interpreter: there, and for other
sizes, strided rows, padded rows and the K * 2^m transforms, the plain-Triton kernel runs (the same
function, ``hadamard.butterfly_hadamard``).

``chain``, ``chain_layout``, ``stage_mask`` and ``radix2_stages`` are the layout chain as Gluon helpers;
``fp8_quant.gluon_kernels`` builds its D-point transform from them.

The RHT (``hadamard_kernels.rht``) runs the same kernel with its signs fused (``SIGNS``: one fp32
multiply by +-1 after the load, or before the store for the inverse), and a column-tile twin,
``_fwht_cols_gluon_kernel``, for blocks of d rows along a strided axis: ``plan_at`` puts the
transformed bits above the contiguous column bits, so loads and stores stay 16-byte vectors along
the columns (the offsets carry ``multiple_of`` / ``max_contiguous`` hints: the compiler cannot see
the runs through the mask and shift).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from hadamard_kernels.runtime import autotune_configs, autotune_do_bench, bucket, device_capability, is_interpreter, launch

MIN_N = 16
MAX_N = 32768
MAX_REG_BITS = 7  # at most 128 fp32 values of the tile per thread


@gluon.constexpr_function  # called by the kernel's layout functions, and from Python (prune, tests)
def plan_at(log_n, col_lo, log_t, warp_bits, vec_bits):  # no annotations: Triton hashes this body
    """The layout chain of a program of 2^log_t elements whose transformed bits are the tile-index
    bits col_lo .. col_lo + log_n - 1 (0 for rows of 2^log_n; the row bits of a column tile), with
    2^warp_bits warps and loads of 2^vec_bits elements: a list of (reg, lane, warp, stages), each a
    list of tile-index bits (reg: the register bits, in order; stages: the transformed bits handled in
    that layout, ascending over the chain; the last entry is L0 again, the store layout), or None when
    the tile does not fit (fewer than 2^vec_bits or more than 2^MAX_REG_BITS values per thread, a
    tile smaller than the transform, or a chain that cannot place every transformed bit in registers)."""
    n_reg = log_t - 5 - warp_bits
    if n_reg < max(vec_bits, 1) or n_reg > MAX_REG_BITS or log_t < col_lo + log_n or log_t < vec_bits + 5:
        return None
    cols = set(range(col_lo, col_lo + log_n))
    rest = list(range(vec_bits + 5, log_t))
    warp0 = ([b for b in rest if b not in cols] + [b for b in rest if b in cols])[:warp_bits]
    chain = [(list(range(vec_bits)) + [b for b in rest if b not in warp0], list(range(vec_bits, vec_bits + 5)), warp0)]
    covered = cols & set(chain[0][0])
    while covered != cols:
        reg_prev, lane_prev, warp_prev = chain[-1]
        reg = sorted(cols - covered)[:n_reg]
        for b in reg_prev + lane_prev:  # fill with bits that need no more stages, not warp bits
            if len(reg) < n_reg and b not in reg and (b not in cols or b in covered):
                reg.append(b)
        if len(reg) < n_reg:
            return None
        warp = [b for b in warp_prev if b not in reg]
        free = [b for b in range(log_t) if b not in reg and b not in warp]
        warp += free[:warp_bits - len(warp)]
        lane = [b for b in range(log_t) if b not in reg and b not in warp]
        chain.append((sorted(reg), lane, warp))
        covered |= set(reg) & cols
    # Stages in ascending bit order (the plain kernel's order, so both give the same bits): each layout
    # takes the run of next transformed bits it holds in registers; L0's high transformed bits wait
    # for the final return to L0, appended as the chain's last entry.
    out = []
    done = col_lo
    for reg, lane, warp in chain + chain[:1]:
        stages = []
        while done < col_lo + log_n and done in reg:
            stages.append(done)
            done += 1
        out.append((reg, lane, warp, stages))
    return out if done == col_lo + log_n else None


@gluon.constexpr_function
def plan(log_n, log_t, warp_bits, vec_bits):
    """``plan_at`` for rows of 2^log_n (the transformed bits are the low ones)."""
    return plan_at(log_n, 0, log_t, warp_bits, vec_bits)


@gluon.constexpr_function
def chain(log_n, log_t, num_warps, vec_bits):
    return plan(log_n, log_t, num_warps.bit_length() - 1, vec_bits)


@gluon.constexpr_function
def chain_length(log_n, log_t, num_warps, vec_bits):
    return len(chain(log_n, log_t, num_warps, vec_bits))


@gluon.constexpr_function
def entry_layout(entry, log_t):
    """The linear layout of one chain entry (reg, lane, warp, stages) over a tile of 2^log_t."""
    reg, lane, warp, _ = entry
    return gl.DistributedLinearLayout([[1 << b] for b in reg], [[1 << b] for b in lane],
                                      [[1 << b] for b in warp], [], [1 << log_t])


@gluon.constexpr_function
def entry_mask(entry):
    """The tile bits one chain entry transforms, as a bit mask (``radix2_stages``' MASK)."""
    return sum(1 << s for s in entry[3])


@gluon.constexpr_function
def chain_layout(log_n, log_t, num_warps, vec_bits, i):
    return entry_layout(chain(log_n, log_t, num_warps, vec_bits)[i], log_t)


@gluon.constexpr_function
def stage_mask(log_n, log_t, num_warps, vec_bits, i):
    return entry_mask(chain(log_n, log_t, num_warps, vec_bits)[i])


@gluon.jit
def radix2_stages(y, T: gl.constexpr, LOG_N: gl.constexpr, MASK: gl.constexpr):
    # Radix-2 stages on the tile bits set in MASK (each a register bit of y's layout): stage s pairs
    # element q*2h + r with q*2h + h + r (h = 2^s) as (a + b, a - b).
    for s in gl.static_range(LOG_N):
        if (MASK >> s) & 1:
            y = y.reshape([T >> (s + 1), 2, 1 << s]).permute((0, 2, 1))
            a, b = y.split()
            y = gl.join(a + b, a - b).permute((0, 2, 1)).reshape([T])
    return y


@gluon.constexpr_function
def chain_at(log_n, col_lo, log_t, num_warps, vec_bits):
    return plan_at(log_n, col_lo, log_t, num_warps.bit_length() - 1, vec_bits)


@gluon.constexpr_function
def length_at(log_n, col_lo, log_t, num_warps, vec_bits):
    return len(chain_at(log_n, col_lo, log_t, num_warps, vec_bits))


@gluon.constexpr_function
def layout_at(log_n, col_lo, log_t, num_warps, vec_bits, i):
    return entry_layout(chain_at(log_n, col_lo, log_t, num_warps, vec_bits)[i], log_t)


@gluon.constexpr_function
def mask_at(log_n, col_lo, log_t, num_warps, vec_bits, i):
    return entry_mask(chain_at(log_n, col_lo, log_t, num_warps, vec_bits)[i])


@gluon.jit
def chain_transform(y, s, scale, LOG_T: gl.constexpr, LOG_N: gl.constexpr, COL_LO: gl.constexpr,
                    VEC_BITS: gl.constexpr, SIGNS: gl.constexpr):
    # The transform of the fp32 tile y of 2^LOG_T (in the chain's first layout, L0) over the tile
    # bits COL_LO .. COL_LO + LOG_N - 1: stages in each layout of ``plan_at``, ending in L0 again;
    # then * scale. SIGNS 1: y * s first (the RHT), 2: * s last (its inverse), 0: s unused.
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    if SIGNS == 1:
        y = y * s
    y = radix2_stages(y, T, LOG_T, mask_at(LOG_N, COL_LO, LOG_T, NW, VEC_BITS, 0))
    for i in gl.static_range(1, length_at(LOG_N, COL_LO, LOG_T, NW, VEC_BITS)):
        y = gl.convert_layout(y, layout_at(LOG_N, COL_LO, LOG_T, NW, VEC_BITS, i))
        y = radix2_stages(y, T, LOG_T, mask_at(LOG_N, COL_LO, LOG_T, NW, VEC_BITS, i))  # the last layout is L0
    y = y * scale
    if SIGNS == 2:
        y = y * s
    return y


@gluon.jit
def _fwht_gluon_kernel(x_ptr, out_ptr, s_ptr, M, scale, M_BUCKET,
                       LOG_N: gl.constexpr, VEC_BITS: gl.constexpr, SIGNS: gl.constexpr, LOG_T: gl.constexpr):
    # x, out: M contiguous rows of N = 2^LOG_N elements. One program: the T = 2^LOG_T elements
    # pid * T.. (T / N whole rows) as a 1-d fp32 tile (T / (32 * num_warps) values per thread);
    # stages in the layouts of ``plan``; out = (x H_N) * scale, one rounding. SIGNS (the RHT): 1
    # multiplies each row by the N fp32 signs at s_ptr before the transform (x diag(s) H_N), 2 after
    # it (x H_N diag(s)); 0 reads no signs. A sign is +-1: exact either way.
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    L0: gl.constexpr = chain_layout(LOG_N, LOG_T, NW, VEC_BITS, 0)
    idx = gl.arange(0, T, layout=L0)
    offs = gl.program_id(0).to(gl.int64) * T + idx.to(gl.int64)
    mask = offs < gl.to_tensor(M).to(gl.int64) * (1 << LOG_N)  # M == 1 arrives as a Python int
    y = gl.load(x_ptr + offs, mask=mask, other=0.0).to(gl.float32)
    s = y  # no signs: unused
    if SIGNS != 0:
        s = gl.load(s_ptr + (idx & ((1 << LOG_N) - 1)))  # N values, cached: no DRAM traffic per tile
    y = chain_transform(y, s, scale, LOG_T, LOG_N, 0, VEC_BITS, SIGNS)
    gl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@gluon.jit
def _fwht_cols_gluon_kernel(x_ptr, out_ptr, s_ptr, n_inner, scale, SIZE_BUCKET,
                            LOG_D: gl.constexpr, VEC_BITS: gl.constexpr, SIGNS: gl.constexpr, LOG_T: gl.constexpr):
    # x, out: contiguous (n_blocks, D, n_inner) with D = 2^LOG_D: the transform runs along the middle
    # (strided) axis. Program (b, j): the [D, BI] tile of block b, inner columns j * BI.. (BI =
    # T / D), as a 1-d tile whose low LOG_I bits are the contiguous column and whose high LOG_D bits
    # (the transformed ones) the row: ``plan_at(LOG_D, LOG_I, ...)`` puts the columns on registers and
    # lanes for the load and store, the rows in registers for the stages. Signs as in
    # ``_fwht_gluon_kernel`` (one per row); out = scale * H_D x per column, one rounding.
    NW: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 1 << LOG_T
    LOG_I: gl.constexpr = LOG_T - LOG_D
    L0: gl.constexpr = layout_at(LOG_D, LOG_I, LOG_T, NW, VEC_BITS, 0)
    idx = gl.arange(0, T, layout=L0)
    row = idx >> LOG_I
    # runs of 2^VEC_BITS contiguous columns starting at multiples of it (the compiler cannot see that
    # through the mask and shift): 16-byte vector loads and stores, n_inner a multiple of 16
    col = gl.program_id(1) * (1 << LOG_I) + (idx & ((1 << LOG_I) - 1))
    offs = (gl.program_id(0).to(gl.int64) * (1 << LOG_D) + row.to(gl.int64)) * n_inner + col.to(gl.int64)
    offs = gl.max_contiguous(gl.multiple_of(offs, 1 << VEC_BITS), 1 << VEC_BITS)
    mask = gl.max_constancy(col < n_inner, 1 << VEC_BITS)
    y = gl.load(x_ptr + offs, mask=mask, other=0.0).to(gl.float32)
    s = y  # no signs: unused
    if SIGNS != 0:
        s = gl.load(s_ptr + row)  # D values, cached
    y = chain_transform(y, s, scale, LOG_T, LOG_D, LOG_I, VEC_BITS, SIGNS)
    gl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


# --- Autotune: LOG_T (log2 tile) and warps, listed as (log2 values per thread, warps). Measured on
# an H200 (bf16, 256 MiB), the best tiles held 32-64 values per thread: n = 128..1024 T = 1-2K (1-2
# warps), 2048 T = 4K, 4096 and 8192 T = 8K. The prune keeps the configs whose plan exists with T
# between n and max(4n, 2048) (<= 5 per size); none left (LOWPREC_AUTOTUNE=first keeps one config):
# the first feasible one of the full list.
_CONFIGS = [
    triton.Config({"LOG_T": r + 5 + w.bit_length() - 1}, num_warps=w, num_stages=1)
    for r, w in ((5, 2), (5, 1), (6, 2), (6, 4), (5, 8), (6, 8), (5, 16), (6, 16), (7, 8))
]


def _fits(config, log_n: int, vec_bits: int) -> bool:
    log_t = config.kwargs["LOG_T"]
    return log_t <= max(log_n + 2, 11) and plan(log_n, log_t, config.num_warps.bit_length() - 1, vec_bits) is not None


def _pruner(all_configs, fits, size_key: str):
    """The autotune prune of a Gluon kernel: the first five configs that ``fits(config, log2 size,
    vec_bits)``; none (the autotuner may hold one config that does not fit, LOWPREC_AUTOTUNE=first):
    the first fitting one of ``all_configs``."""
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        log_n, vec_bits = args[size_key], args["VEC_BITS"]
        kept = [c for c in configs if fits(c, log_n, vec_bits)][:5]
        return kept or [next(c for c in all_configs if fits(c, log_n, vec_bits))]
    return prune


_prune = _pruner(_CONFIGS, _fits, "LOG_N")


@functools.lru_cache(maxsize=64)
def _first_fit(log_n: int, vec_bits: int) -> triton.Config:
    return _prune(_CONFIGS[:1], {"LOG_N": log_n, "VEC_BITS": vec_bits})[0]


_gluon_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(_CONFIGS),
                               key=["LOG_N", "VEC_BITS", "SIGNS", "M_BUCKET"],
                               prune_configs_by={"early_config_prune": _prune})(_fwht_gluon_kernel)


# --- Column tiles: (LOG_T, warps). A tile holds D rows of T / D contiguous columns; the prune keeps
# those with a plan, at least one 16-byte vector of columns per row and <= 64 values per thread.
_COLS_CONFIGS = [
    triton.Config({"LOG_T": t}, num_warps=w, num_stages=1)
    for t, w in ((12, 4), (13, 8), (13, 4), (14, 8), (14, 16), (12, 2))
]


def _fits_cols(config, log_d: int, vec_bits: int) -> bool:
    log_t, wb = config.kwargs["LOG_T"], config.num_warps.bit_length() - 1
    return (log_t - log_d >= vec_bits and log_t - 5 - wb <= 6
            and plan_at(log_d, log_t - log_d, log_t, wb, vec_bits) is not None)


_prune_cols = _pruner(_COLS_CONFIGS, _fits_cols, "LOG_D")


@functools.lru_cache(maxsize=64)
def _first_fit_cols(log_d: int, vec_bits: int) -> triton.Config:
    return _prune_cols(_COLS_CONFIGS[:1], {"LOG_D": log_d, "VEC_BITS": vec_bits})[0]


_gluon_cols_tuned = triton.autotune(do_bench=autotune_do_bench, configs=autotune_configs(_COLS_CONFIGS),
                                    key=["LOG_D", "VEC_BITS", "SIGNS", "SIZE_BUCKET"],
                                    prune_configs_by={"early_config_prune": _prune_cols})(_fwht_cols_gluon_kernel)


@functools.lru_cache(maxsize=8)
def hopper(index: int) -> bool:
    """CUDA device ``index`` is an NVIDIA sm90 GPU: where the Gluon kernels (this one and
    ``fp8_quant.gluon_kernels``) were measured (32-lane warps; not ROCm, not sm100/sm120)."""
    return torch.version.hip is None and device_capability(index)[0] == 9


_SIZES = frozenset(1 << i for i in range(MIN_N.bit_length() - 1, MAX_N.bit_length()))
_COMPILED = not is_interpreter()  # decided at import, like @triton.jit itself


def eligible(x: torch.Tensor, n: int, flat: bool) -> bool:
    """True when this kernel runs the K = 1 transform of x: a CUDA tensor on an NVIDIA sm90 GPU (Hopper,
    where it was measured; other GPUs run the plain-Triton kernel), not under the interpreter, rows
    contiguous and n apart (``flat``), n a power of two in [16, 32768]. A few hundred nanoseconds: it
    runs on every eager call."""
    return flat and n in _SIZES and _COMPILED and x.is_cuda and hopper(x.get_device())


_VEC_BITS = {torch.float32: 2, torch.float16: 3, torch.bfloat16: 3}  # 16-byte loads


def gluon_launch(x: torch.Tensor, out: torch.Tensor, m: int, scale: float,
                 config: Optional[triton.Config] = None, n: Optional[int] = None,
                 signs: Optional[torch.Tensor] = None, signs_after: bool = False) -> None:
    """out = (x H_n) * scale for m contiguous rows of n (``eligible``; n defaults to x's last dim),
    autotuned (or ``config``). ``signs`` (n fp32 +-1 values on x's device): the RHT,
    (x diag(s) H_n) * scale, or (x H_n) * scale diag(s) with ``signs_after``."""
    n = x.shape[-1] if n is None else n
    consts = {"LOG_N": n.bit_length() - 1, "VEC_BITS": _VEC_BITS[x.dtype],
              "SIGNS": 0 if signs is None else 2 if signs_after else 1}
    if config is None and len(_gluon_tuned.configs) == 1:  # Triton skips the prune for one config
        config = _first_fit(consts["LOG_N"], consts["VEC_BITS"])

    def grid(meta):
        t = 1 << meta["LOG_T"]
        return ((m * n + t - 1) // t,)

    launch(_gluon_tuned, grid, (x, out, x if signs is None else signs, m, float(scale), bucket(m)), consts, config)


def eligible_cols(x: torch.Tensor, d: int, inner: int) -> bool:
    """True when ``gluon_cols_launch`` runs the transform of x (contiguous) along a middle axis of d
    rows with ``inner`` contiguous elements after it: as ``eligible``, d in [16, 256], and ``inner``
    at least 64 and a multiple of 16 (what the vector loads need; other widths go to the plain-Triton
    kernel)."""
    return 16 <= d <= 256 and inner >= 64 and inner % 16 == 0 and _COMPILED and x.is_cuda and hopper(x.get_device())


def gluon_cols_launch(x: torch.Tensor, out: torch.Tensor, n_blocks: int, d: int, inner: int, scale: float,
                      config: Optional[triton.Config] = None, signs: Optional[torch.Tensor] = None,
                      signs_after: bool = False) -> None:
    """out = scale * H_d x along the middle axis of contiguous (n_blocks, d, inner) x and out
    (``eligible_cols``); ``signs`` / ``signs_after`` as in ``gluon_launch`` (one per row of d)."""
    consts = {"LOG_D": d.bit_length() - 1, "VEC_BITS": _VEC_BITS[x.dtype],
              "SIGNS": 0 if signs is None else 2 if signs_after else 1}
    if config is None and len(_gluon_cols_tuned.configs) == 1:  # Triton skips the prune for one config
        config = _first_fit_cols(consts["LOG_D"], consts["VEC_BITS"])

    def grid(meta):
        bi = (1 << meta["LOG_T"]) // d
        return (n_blocks, (inner + bi - 1) // bi)

    launch(_gluon_cols_tuned, grid, (x, out, x if signs is None else signs, inner, float(scale),
                                     bucket(x.numel())), consts, config)
