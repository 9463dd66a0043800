"""x86 VNNI templates: int8 kernels tensorized with vpdpbusd (AVX-512 VNNI zmm, or AVX-VNNI ymm).

Dense (``qdense_packed``): a register-blocked micro-kernel of MR rows x NR 16-lane accumulators,
the whole K reduction inside it when the K x NR*64-byte weight panel fits about an L1, loop order
``jo, io, ko, ii, jb, ji, ki`` with ``parallel(fuse(jo, io))``, ``vpdpbusd`` on (ji, ki), and the
requantize epilogue computed per finished tile while it is still in registers (DESIGN.md §2).
For longer K the reduction is blocked (``jo, ib, kb, io, kin, ...``) over L1-sized row blocks.

Knobs (MR, NR, K block, row block, outer loop order) are MetaSchedule sampling instructions when ``tunable`` and
fixed per-shape defaults otherwise, so the default schedule and the tuner's search space are the
same function. Only valid candidates are offered: MR divides M, NR divides N/16, and the tile
(MR x NR x 64 bytes) stays under 1 KiB so LLVM keeps it on the stack/in registers instead of a
per-tile workspace allocation (LowerTVMBuiltin's stack limit).
"""
from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import codegen

from . import intrin_x86
from .cpu_common import find_block, fuse_epilogue, kernel_key, loop_extent, parallel_vectorize_spatial

MAX_TILE_BYTES = 1024  # LowerTVMBuiltin keeps constant allocations below this on the stack


def has_vnni(target) -> bool:
    """AVX-512 VNNI (zmm) or AVX-VNNI (VEX ymm): either runs the packed micro-kernels."""
    return vnni_intrinsic(target) is not None


def vnni_intrinsic(target) -> tuple[str, int] | None:
    """(tensor intrinsic, lanes) for the target: 16-lane zmm vpdpbusd, 8-lane ymm, or None."""
    if codegen.llvm_cpu_has_features(["avx512vnni"], target):
        return intrin_x86.VNNI_16x4, 16
    if codegen.llvm_cpu_has_features(["avxvnni"], target):
        return intrin_x86.AVXVNNI_8x4, 8
    return None


def _tensorize_block16(sch: s_tir.Schedule, lanes16, target) -> None:
    """Tensorize a 16-output-lane loop: one zmm vpdpbusd, or two ymm ones on AVX-VNNI."""
    intrinsic, lanes = vnni_intrinsic(target)
    if lanes == 16:
        sch.tensorize(lanes16, intrinsic)
    else:
        halves, inner = sch.split(lanes16, [None, lanes])
        sch.unroll(halves)
        sch.tensorize(inner, intrinsic)


def _knob(sch: s_tir.Schedule, candidates: list[int], default: int, tunable: bool):
    """A tile decision: a sampling instruction over ``candidates`` when tunable, else ``default``."""
    if tunable and len(candidates) > 1:
        return sch.sample_categorical(candidates, [1.0 / len(candidates)] * len(candidates))
    return default


def dense_tile_candidates(m_dim: int, n_blocks: int, max_tile_bytes: int = MAX_TILE_BYTES) -> list[tuple[int, int]]:
    """(MR, NR) pairs that tile exactly and fit ``max_tile_bytes``, best first by loads per vpdpbusd."""
    pairs = [(mr, nr) for mr in range(1, 9) for nr in range(1, 5)
             if m_dim % mr == 0 and n_blocks % nr == 0 and mr * nr * 64 < max_tile_bytes]
    # vpdpbusd latency 4 x 2/cycle: prefer >= 8 independent accumulators, then fewest loads per dot,
    # then more rows (a narrower weight panel)
    return sorted(pairs, key=lambda p: (p[0] * p[1] < 8, (p[0] + p[1]) / (p[0] * p[1]), -p[0] * p[1], p[1]))


#: A weight panel (K x NR*16 bytes) up to this size is used whole, K not blocked: L1 is 32 KiB on
#: Zen 4 and a slightly larger panel still streams from L2 in time. Measured (2 threads, bare
#: kernel): whole-K 4x2 tiles beat K blocks of 64-96 steps by 5-8% at 512^3, 1024^3, 128x768x768.
FULL_K_PANEL_BYTES = 36 * 1024
#: Panel bytes of one K block when K must be blocked (L1 room left for A rows and accumulators).
K_BLOCK_PANEL_BYTES = 24 * 1024
#: Partial sums of one row block x column block, kept between K blocks: about one L1.
ROW_BLOCK_ACC_BYTES = 32 * 1024


def _panel_bytes(k_steps: int, nr: int) -> int:
    return k_steps * 4 * nr * 16


def prefer_whole_k(candidates: list[tuple[int, int]], k_steps: int) -> list[tuple[int, int]]:
    """The tile candidates reordered so that, among equally many-accumulator classes, tiles whose
    whole-K weight panel fits ``FULL_K_PANEL_BYTES`` come first (stable otherwise)."""
    return sorted(candidates, key=lambda p: (p[0] * p[1] < 8, _panel_bytes(k_steps, p[1]) > FULL_K_PANEL_BYTES))


def k_block_candidates(k_steps: int, nr: int) -> list[int]:
    """K-block sizes (in 4-byte steps): the whole K when its panel fits, then the largest divisors of K
    whose panel fits ``K_BLOCK_PANEL_BYTES``."""
    whole = [k_steps] if _panel_bytes(k_steps, nr) <= FULL_K_PANEL_BYTES else []
    blocked = [d for d in range(k_steps - 1, 0, -1)
               if k_steps % d == 0 and _panel_bytes(d, nr) <= K_BLOCK_PANEL_BYTES][:3]
    return whole + blocked or [k_steps]


def row_block_candidates(m_dim: int, mr_options: list[int], nr: int) -> list[int]:
    """Rows per row block when K is blocked: multiples of every MR option dividing M, largest first
    among those whose partial sums (rows x NR*16 int32) fit ``ROW_BLOCK_ACC_BYTES``."""
    step = math.lcm(*mr_options)
    fitting = [r for r in range(m_dim, 0, -step) if m_dim % r == 0 and r % step == 0
               and r * nr * 64 <= ROW_BLOCK_ACC_BYTES]
    return fitting[:3] or [step]


def _tile_knobs(sch: s_tir.Schedule, candidates: list[tuple[int, int]], tunable: bool):
    """(MR, NR) decisions from the valid pairs; NR's options follow a fixed MR."""
    mr_default, nr_default = candidates[0]
    mr = _knob(sch, sorted({p[0] for p in candidates}), mr_default, tunable)
    nr_options = sorted({p[1] for p in candidates if not isinstance(mr, int) or p[0] == mr})
    nr = _knob(sch, nr_options, nr_default if nr_default in nr_options else nr_options[-1], tunable)
    return mr, nr, nr_default


def _finish_micro_kernel(sch: s_tir.Schedule, init, rows, blocks, lanes16, target) -> None:
    """Unroll the register tile, tensorize its 16-lane loop, vectorize the accumulator init."""
    sch.unroll(rows)
    sch.unroll(blocks)
    _tensorize_block16(sch, lanes16, target)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    sch.unroll(init_loops[-2])
    sch.unroll(init_loops[-3])


#: Structural alternatives of the dense template: each is its own design space when tuning (a
#: categorical sample cannot change loop structure through trace replay). "columns": N blocks
#: outer, a weight panel reused by consecutive row tiles; "rows": row tiles outer, A rows reused.
DENSE_LOOP_ORDERS = ("columns", "rows")


def schedule_dense_packed(sch: s_tir.Schedule, target, tunable: bool = False, order: str = "columns") -> None:
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    i, j, k = sch.get_loops(acc)
    m_dim, n_pad, k_pad = loop_extent(sch, i), loop_extent(sch, j), loop_extent(sch, k)
    candidates = prefer_whole_k(dense_tile_candidates(m_dim, n_pad // 16), k_pad // 4)
    mr, nr, nr_default = _tile_knobs(sch, candidates, tunable)
    k_blocks = k_block_candidates(k_pad // 4, nr_default)
    kb_steps = _knob(sch, k_blocks, k_blocks[0], tunable)
    jo, jb, ji = sch.split(j, [None, nr, 16])
    ko, ki = sch.split(k, [None, 4])
    if isinstance(kb_steps, int) and kb_steps == k_pad // 4:
        # the whole K in one panel: one tile = one finished output tile, epilogue right behind it
        io, ii = sch.split(i, [None, mr])
        outer = (jo, io) if order == "columns" else (io, jo)
        sch.reorder(*outer, ko, ii, jb, ji, ki)
        tile = sch.fuse(*outer)
        reduce_from = ko
    else:
        # K blocked: a K block's weight panel is reused by every row tile of a row block, whose
        # partial sums stay in the accumulator (L1-sized) between K blocks
        mr_options = sorted({p[0] for p in candidates}) if not isinstance(mr, int) else [mr]
        row_blocks = row_block_candidates(m_dim, mr_options, nr_default)
        rows = _knob(sch, row_blocks, row_blocks[0], tunable)
        ib, irows = sch.split(i, [None, rows])
        io, ii = sch.split(irows, [None, mr])
        kb, kin = sch.split(ko, [None, kb_steps])
        sch.reorder(jo, ib, kb, io, kin, ii, jb, ji, ki)
        tile = sch.fuse(jo, ib)
        reduce_from = kb
    sch.parallel(tile)
    fuse_epilogue(sch, out, tile, "rowsum")
    init = sch.decompose_reduction(acc, reduce_from)
    _finish_micro_kernel(sch, init, ii, jb, ji, target)
    pad = find_block(sch, "pad")
    if pad is not None:
        parallel_vectorize_spatial(sch, pad)


def conv_tile_candidates(out_width: int, k_blocks: int) -> list[tuple[int, int]]:
    """(MR output pixels along OW, NR 16-channel blocks): exact tiles under the stack limit."""
    return dense_tile_candidates(out_width, k_blocks)


def schedule_conv2d_packed(sch: s_tir.Schedule, target, tunable: bool = False) -> None:
    """NHWC micro-kernel: MR output pixels x NR*16 output channels, (r, s, C/4) inside the tile."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    n, h, w, k, r, s, c = sch.get_loops(acc)
    mr, nr, _ = _tile_knobs(sch, conv_tile_candidates(loop_extent(sch, w), loop_extent(sch, k) // 16), tunable)
    wo, wi = sch.split(w, [None, mr])
    ko, kb, ki = sch.split(k, [None, nr, 16])
    co, ci = sch.split(c, [None, 4])
    sch.reorder(n, ko, h, wo, r, s, co, wi, kb, ki, ci)
    tile = sch.fuse(n, ko, h, wo)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile)
    init = sch.decompose_reduction(acc, r)
    _finish_micro_kernel(sch, init, wi, kb, ki, target)
    _vectorize_channels_epilogue(sch, out)
    pad = find_block(sch, "pad")
    if pad is not None:
        parallel_vectorize_spatial(sch, pad)


def _vectorize_channels_epilogue(sch: s_tir.Schedule, out) -> None:
    """The NHWC epilogue under the tile loop: pixels unrolled, 16 contiguous channels per vector."""
    own = sch.get_loops(out)[1:]  # below the (single, fused) tile loop; unit loops are gone
    if not own:
        return
    channels = own[-1]
    extent = loop_extent(sch, channels)
    if extent and extent % 16 == 0:
        blocks, lanes = sch.split(channels, [None, 16])
        sch.unroll(blocks)
        sch.vectorize(lanes)
    for loop in own[:-1]:
        sch.unroll(loop)


def schedule_batch_matmul_packed(sch: s_tir.Schedule, target, tunable: bool = False) -> None:
    """Per batch, the dense micro-kernel over a B packed at run time; the epilogue needs the row and
    column sums (zero points of both activations), so it runs as its own vectorized parallel stage."""
    acc = sch.get_sblock("acc")
    b, i, j, k = sch.get_loops(acc)
    mr, nr, _ = _tile_knobs(sch, dense_tile_candidates(loop_extent(sch, i), loop_extent(sch, j) // 16), tunable)
    io, ii = sch.split(i, [None, mr])
    jo, jb, ji = sch.split(j, [None, nr, 16])
    ko, ki = sch.split(k, [None, 4])
    sch.reorder(b, jo, io, ko, ii, jb, ji, ki)
    sch.parallel(sch.fuse(b, jo, io))
    init = sch.decompose_reduction(acc, ko)
    _finish_micro_kernel(sch, init, ii, jb, ji, target)
    for name in ("pack_b", "pad", "rowsum_a", "colsum_b", "requant"):
        block = find_block(sch, name)
        if block is not None:
            parallel_vectorize_spatial(sch, block)


def depthwise_tile_candidates(out_width: int, channels: int) -> list[tuple[int, int]]:
    """(MR output pixels, CB 16-channel vectors) for the depthwise register tile, under the stack
    limit, most accumulators first."""
    pairs = [(mr, cb) for mr in (8, 7, 6, 5, 4, 3, 2, 1) for cb in (2, 1)
             if out_width % mr == 0 and channels % (16 * cb) == 0 and mr * cb * 64 < MAX_TILE_BYTES]
    return sorted(pairs, key=lambda p: -p[0] * p[1])


def schedule_depthwise_nhwc(sch: s_tir.Schedule, target, tunable: bool = False) -> None:
    """MR output pixels x CB*16 channels of int32 accumulators, the R x S taps unrolled inside."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    n, h, w, c, r, s = sch.get_loops(acc)
    candidates = depthwise_tile_candidates(loop_extent(sch, w), loop_extent(sch, c)) or [(1, 1)]
    mr, cb, _ = _tile_knobs(sch, candidates, tunable)
    wo, wi = sch.split(w, [None, mr])
    lanes = 16 if loop_extent(sch, c) % 16 == 0 else 1
    co, cbl, cv = sch.split(c, [None, cb, lanes])
    sch.reorder(n, h, wo, co, r, s, wi, cbl, cv)
    tile = sch.fuse(n, h, wo, co)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile)
    sch.unroll(r)
    sch.unroll(s)
    sch.unroll(wi)
    sch.unroll(cbl)
    if lanes > 1:
        sch.vectorize(cv)  # before decompose_reduction (the update must still be a reduction block)
    sch.decompose_reduction(acc, r)
    _vectorize_channels_epilogue(sch, out)
    pad = find_block(sch, "pad")
    if pad is not None:
        parallel_vectorize_spatial(sch, pad)


def schedule_dense_pairs(sch: s_tir.Schedule, target, tunable: bool = False) -> None:
    """The packed dense micro-kernel with vpmaddwd (no VNNI): two int32 partial sums per output lane
    (two zmm per 16 outputs), the pair added once by the inlined "pair_sum" in the epilogue."""
    acc, out, pair_sum = sch.get_sblock("acc"), sch.get_sblock("requant"), sch.get_sblock("pair_sum")
    i, j, p, kq, q = sch.get_loops(acc)
    m_dim, n_pad = loop_extent(sch, i), loop_extent(sch, j)
    # a 16-lane block holds 2 x 16 int32 partial sums: half as many blocks fit the stack limit
    mr, nr, _ = _tile_knobs(sch, dense_tile_candidates(m_dim, n_pad // 16, MAX_TILE_BYTES // 2), tunable)
    io, ii = sch.split(i, [None, mr])
    jo, jb, ji = sch.split(j, [None, nr, 16])
    sch.reorder(jo, io, kq, ii, jb, ji, p, q)
    tile = sch.fuse(jo, io)
    sch.parallel(tile)
    if find_block(sch, "rowsum") is None:
        sch.reverse_compute_at(pair_sum, tile)
        pair_loops = sch.get_loops(pair_sum)[1:]
        sch.reorder(*pair_loops[:-2], pair_loops[-1], pair_loops[-2])  # pair index outside the 16 lanes
    else:
        parallel_vectorize_spatial(sch, pair_sum)
    fuse_epilogue(sch, out, tile, "rowsum")
    init = sch.decompose_reduction(acc, kq)
    sch.unroll(ii)
    sch.unroll(jb)
    sch.tensorize(ji, intrin_x86.PMADDWD_16x2x2)
    init_loops = sch.get_loops(init)
    sch.vectorize(sch.fuse(init_loops[-2], init_loops[-1]))
    sch.unroll(init_loops[-3])
    sch.unroll(init_loops[-4])
    pad = find_block(sch, "pad")
    if pad is not None:
        parallel_vectorize_spatial(sch, pad)


TEMPLATES = {("dense", "packed16x4"): schedule_dense_packed, ("dense", "pairs16x4"): schedule_dense_pairs, ("conv2d", "packed16x4"): schedule_conv2d_packed,
             ("batch_matmul", "packed16x4"): schedule_batch_matmul_packed,
             ("conv2d", "depthwise_nhwc"): schedule_depthwise_nhwc}


class X86VNNIKernels(dlight.ScheduleRule):
    """Schedules the packed integer kernels with vpdpbusd templates on AVX-512 VNNI targets."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):
        key = kernel_key(func)
        template = TEMPLATES.get(key)
        if template is None or (key[1] != "pairs16x4" and not has_vnni(target)):
            return None
        if tunable and template is schedule_dense_packed:
            spaces = []
            for order in DENSE_LOOP_ORDERS:
                sch = s_tir.Schedule(func)
                template(sch, target, tunable, order=order)
                spaces.append(sch)
            return spaces
        sch = s_tir.Schedule(func)
        template(sch, target, tunable)
        return sch
