"""x86 packed-kernel templates: int8 kernels tensorized with vpdpbusd (AVX-512 VNNI zmm, or AVX-VNNI
ymm) and, on CPUs without VNNI, with exact vpmaddwd on int16 operands (AVX2 ymm, AVX-512BW zmm).
Which one is the kernel's layout (``DOT_KERNELS``); the templates are the same code for all of them.

Dense (``qdense_packed``): a register-blocked micro-kernel of MR rows x NR 16-lane accumulators,
the whole K reduction inside it when the K x NR*64-byte weight panel fits about an L1, loop order
``jo, io, ko, ii, jb, ji, ki`` with ``parallel(fuse(jo, io))``, ``vpdpbusd`` on (ji, ki), and the
requantize epilogue computed per finished tile while it is still in registers (DESIGN.md §2).
For longer K the reduction is blocked (``jo, ib, kb, io, kin, ...``) over L1-sized row blocks.

Knobs (MR, NR, K block, row block, outer loop order) are MetaSchedule sampling instructions when ``tunable`` and
fixed per-shape defaults otherwise, so the default schedule and the tuner's search space are the
same function. Only valid candidates are offered: MR divides M, NR divides N/16, and the tile
(MR x NR x 64 bytes) stays under 1 KiB so LLVM keeps it on the stack/in registers instead of a
per-tile workspace allocation (LowerTVMBuiltin's stack limit). The vpmaddwd dense kernel's operands
are packed per register tile, so its MR x NR is the layout's and the other knobs are sampled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import codegen

from qcompiler.kernels import GROUPS_ATTR  # the contract between lowering and templates

from . import intrin_x86
from .cpu_common import (find_block, fuse_epilogue, kernel_key, loop_extent, parallel_vectorize_spatial,
                         vectorize_epilogue)

MAX_TILE_BYTES = 1024  # LowerTVMBuiltin keeps constant allocations below this on the stack


@dataclass(frozen=True)
class DotKernel:
    """The int8 dot-product instruction a packed template is built around: the contract between the
    lowering's weight packing ([N/lanes, K/k_group, lanes, k_group]) and the micro-kernel."""

    lanes: int  # int32 outputs of one instruction (16 for VNNI: AVX-VNNI issues two ymm halves)
    k_group: int  # reduction steps one instruction covers per output lane
    registers: int  # vector registers: bounds the accumulator tile with its operands
    scratch: int  # registers besides accumulators and weight vectors: the broadcast operand, and for
    #               vpmaddwd its product (it cannot accumulate in place; vpdpbusd does)
    intrinsic: str | None  # None: VNNI (picked per target by _tensorize_block16)


VNNI = DotKernel(16, 4, 32, 1, None)
PAIRS_YMM = DotKernel(8, 2, 16, 2, intrin_x86.PMADDWD_8x2)  # AVX2 vpmaddwd on int16 operands
PAIRS_ZMM = DotKernel(16, 2, 32, 2, intrin_x86.PMADDWD_16x2)  # AVX-512BW vpmaddwd
#: the weight layout (qcompiler.layout) of each packed dense kernel
DOT_KERNELS = {"packed16x4": VNNI, "pairs8x2": PAIRS_YMM, "pairs16x2": PAIRS_ZMM}


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


def padded_rows(m_dim: int) -> int:
    """Rows a dense micro-kernel accumulates for an M-row input: M, or M rounded up to a multiple of 4
    when M >= 8 has no divisor from 4 to 8. Register tiles must divide the rows; ViT's 197 tokens
    (a prime) left only 1-row tiles (4 accumulators, 34% of the roof); 3 zero rows cost 1.5%."""
    if m_dim < 8 or any(m_dim % mr == 0 for mr in range(4, 9)):
        return m_dim
    return -(-m_dim // 4) * 4


def dense_tile_candidates(m_dim: int, n_blocks: int, max_tile_bytes: int = MAX_TILE_BYTES,
                          kernel: DotKernel = VNNI) -> list[tuple[int, int]]:
    """(MR, NR) pairs that tile exactly, fit ``max_tile_bytes`` and (with their NR weight vectors and
    the kernel's scratch registers) its register file, best first by loads per instruction. A 4x3
    vpmaddwd tile on AVX2 (12 + 3 + 2 = 17 ymm) spills an accumulator every k step: 114 vs 232 GOP/s."""
    vector_bytes = kernel.lanes * 4
    pairs = [(mr, nr) for mr in range(1, 9) for nr in range(1, 5)
             if m_dim % mr == 0 and n_blocks % nr == 0 and mr * nr * vector_bytes < max_tile_bytes
             and mr * nr + nr + kernel.scratch <= kernel.registers]
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


def _panel_bytes(k_steps: int, nr: int, lanes: int = 16) -> int:
    """Bytes of a weight panel: every k step holds 4 bytes per output lane (4 x int8 or 2 x int16)."""
    return k_steps * 4 * nr * lanes


def prefer_whole_k(candidates: list[tuple[int, int]], k_steps: int, lanes: int = 16) -> list[tuple[int, int]]:
    """The tile candidates reordered so that, among equally many-accumulator classes, tiles whose
    whole-K weight panel fits ``FULL_K_PANEL_BYTES`` come first (stable otherwise)."""
    return sorted(candidates, key=lambda p: (p[0] * p[1] < 8, _panel_bytes(k_steps, p[1], lanes) > FULL_K_PANEL_BYTES))


def k_block_candidates(k_steps: int, nr: int, lanes: int = 16) -> list[int]:
    """K-block sizes (in k steps): the whole K when its panel fits, then the largest divisors of K
    whose panel fits ``K_BLOCK_PANEL_BYTES``."""
    whole = [k_steps] if _panel_bytes(k_steps, nr, lanes) <= FULL_K_PANEL_BYTES else []
    blocked = [d for d in range(k_steps - 1, 0, -1)
               if k_steps % d == 0 and _panel_bytes(d, nr, lanes) <= K_BLOCK_PANEL_BYTES][:3]
    return whole + blocked or [k_steps]


def row_block_candidates(m_dim: int, mr_options: list[int], nr: int, lanes: int = 16) -> list[int]:
    """Rows per row block when K is blocked: multiples of every MR option dividing M, largest first
    among those whose partial sums (rows x NR*lanes int32) fit ``ROW_BLOCK_ACC_BYTES``."""
    step = math.lcm(*mr_options)
    fitting = [r for r in range(m_dim, 0, -step) if m_dim % r == 0 and r % step == 0
               and r * nr * lanes * 4 <= ROW_BLOCK_ACC_BYTES]
    return fitting[:3] or [step]


def _tile_knobs(sch: s_tir.Schedule, candidates: list[tuple[int, int]], tunable: bool):
    """(MR, NR) decisions from the valid pairs; NR's options follow a fixed MR."""
    mr_default, nr_default = candidates[0]
    mr = _knob(sch, sorted({p[0] for p in candidates}), mr_default, tunable)
    nr_options = sorted({p[1] for p in candidates if not isinstance(mr, int) or p[0] == mr})
    nr = _knob(sch, nr_options, nr_default if nr_default in nr_options else nr_options[-1], tunable)
    return mr, nr, nr_default


def _finish_micro_kernel(sch: s_tir.Schedule, init, rows, blocks, lanes16, target, kernel: DotKernel = VNNI) -> None:
    """Unroll the register tile, tensorize its vector loop, vectorize the accumulator init."""
    sch.unroll(rows)
    sch.unroll(blocks)
    if kernel.intrinsic is None:
        _tensorize_block16(sch, lanes16, target)
    else:
        sch.tensorize(lanes16, kernel.intrinsic)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    sch.unroll(init_loops[-2])
    sch.unroll(init_loops[-3])


#: Structural alternatives of the dense template: each is its own design space when tuning (a
#: categorical sample cannot change loop structure through trace replay). "columns": N blocks
#: outer, a weight panel reused by consecutive row tiles; "rows": row tiles outer, A rows reused.
DENSE_LOOP_ORDERS = ("columns", "rows")


def dense_tile(m_dim: int, n_dim: int, k_dim: int, kernel: DotKernel) -> tuple[int, int]:
    """The default (MR, NR) register tile of an M x K x N dense kernel: what the vpmaddwd kernels'
    packing is laid out for (their tile is fixed by it; the VNNI layout leaves it to the knobs)."""
    candidates = dense_tile_candidates(m_dim, -(-n_dim // kernel.lanes), kernel=kernel)
    return prefer_whole_k(candidates, -(-k_dim // kernel.k_group), kernel.lanes)[0]


def _packed_tile(sch: s_tir.Schedule) -> tuple[int, int] | None:
    """(MR, NR) a vpmaddwd dense kernel's operands are packed for (None: the VNNI layout)."""
    widen = find_block(sch, "widen")
    if widen is None:
        return None
    acc = sch.get(sch.get_sblock("acc"))
    a_packed, w_packed = (region.source for region in acc.reads[:2])  # 0.27: a TensorRegion's buffer Var
    return int(a_packed.shape[2]), int(w_packed.shape[2])


def schedule_dense_packed(sch: s_tir.Schedule, target, tunable: bool = False, order: str = "columns",
                          kernel: DotKernel = VNNI) -> None:
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    i, j, k = sch.get_loops(acc)
    lanes, group = kernel.lanes, kernel.k_group
    m_dim, n_pad, k_pad = loop_extent(sch, i), loop_extent(sch, j), loop_extent(sch, k)
    fixed = _packed_tile(sch)
    if fixed is None:
        candidates = prefer_whole_k(dense_tile_candidates(m_dim, n_pad // lanes, kernel=kernel), k_pad // group, lanes)
        mr, nr, nr_default = _tile_knobs(sch, candidates, tunable)
    else:  # operands packed per register tile: the tile is the layout's
        (mr, nr), candidates, nr_default = fixed, [fixed], fixed[1]
    k_blocks = k_block_candidates(k_pad // group, nr_default, lanes)
    kb_steps = _knob(sch, k_blocks, k_blocks[0], tunable)
    jo, jb, ji = sch.split(j, [None, nr, lanes])
    ko, ki = sch.split(k, [None, group])
    if isinstance(kb_steps, int) and kb_steps == k_pad // group:
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
        row_blocks = row_block_candidates(m_dim, mr_options, nr_default, lanes)
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
    _finish_micro_kernel(sch, init, ii, jb, ji, target, kernel)
    for name in ("pad", "widen"):
        stage = find_block(sch, name)
        if stage is not None:
            parallel_vectorize_spatial(sch, stage)


def conv_tile_candidates(out_width: int, k_blocks: int, kernel: DotKernel = VNNI) -> list[tuple[int, int]]:
    """(MR output pixels along OW, NR ``lanes``-channel blocks): exact tiles that fit registers and stack."""
    return dense_tile_candidates(out_width, k_blocks, kernel=kernel)


def schedule_conv2d_packed(sch: s_tir.Schedule, target, tunable: bool = False, kernel: DotKernel = VNNI) -> None:
    """NHWC micro-kernel: MR output pixels x NR*lanes output channels, (r, s, C/k_group) inside the tile."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    n, h, w, k, r, s, c = sch.get_loops(acc)
    # a grouped conv's tile stays inside one group: NR divides the channel blocks per group
    groups = int(sch.mod["main"].attrs.get(GROUPS_ATTR, 1))
    candidates = conv_tile_candidates(loop_extent(sch, w), loop_extent(sch, k) // kernel.lanes // groups, kernel)
    mr, nr, _ = _tile_knobs(sch, candidates, tunable)
    wo, wi = sch.split(w, [None, mr])
    ko, kb, ki = sch.split(k, [None, nr, kernel.lanes])
    co, ci = sch.split(c, [None, kernel.k_group])
    sch.reorder(n, ko, h, wo, r, s, co, wi, kb, ki, ci)
    tile = sch.fuse(n, ko, h, wo)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile)
    init = sch.decompose_reduction(acc, r)
    _finish_micro_kernel(sch, init, wi, kb, ki, target, kernel)
    _vectorize_channels_epilogue(sch, out)
    pad = find_block(sch, "pad")
    if pad is not None:
        parallel_vectorize_spatial(sch, pad)


def _vectorize_channels_epilogue(sch: s_tir.Schedule, out) -> None:
    """The NHWC epilogue under the tile loop: pixels unrolled, 16 (else 8) contiguous channels per vector."""
    own = sch.get_loops(out)[1:]  # below the (single, fused) tile loop; unit loops are gone
    if not own:
        return
    channels = own[-1]
    extent = loop_extent(sch, channels)
    width = next((v for v in (16, 8) if extent and extent % v == 0), None)
    if width:
        blocks, lanes = sch.split(channels, [None, width])
        sch.unroll(blocks)
        sch.vectorize(lanes)
    for loop in own[:-1]:
        sch.unroll(loop)


def schedule_batch_matmul_packed(sch: s_tir.Schedule, target, tunable: bool = False, kernel: DotKernel = VNNI) -> None:
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


def schedule_batch_matmul_pairs(sch: s_tir.Schedule, target, tunable: bool = False,
                                kernel: DotKernel = PAIRS_YMM) -> None:
    """Per batch, the vpmaddwd micro-kernel over operands widened (zero points subtracted) at run
    time; the accumulator is the exact sum, so the requantize epilogue runs on each finished tile."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    b, i, j, k = sch.get_loops(acc)
    candidates = dense_tile_candidates(loop_extent(sch, i), loop_extent(sch, j) // kernel.lanes, kernel=kernel)
    mr, nr, _ = _tile_knobs(sch, candidates or [(1, 1)], tunable)
    io, ii = sch.split(i, [None, mr])
    jo, jb, ji = sch.split(j, [None, nr, kernel.lanes])
    ko, ki = sch.split(k, [None, kernel.k_group])
    sch.reorder(b, jo, io, ko, ii, jb, ji, ki)
    tile = sch.fuse(b, jo, io)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile)
    vectorize_epilogue(sch, out, tile)
    init = sch.decompose_reduction(acc, ko)
    _finish_micro_kernel(sch, init, ii, jb, ji, target, kernel)
    for name in ("pack_b", "widen"):
        parallel_vectorize_spatial(sch, sch.get_sblock(name))


def depthwise_tile_candidates(out_width: int, channels: int, lanes: int = 16,
                              registers: int = 32) -> list[tuple[int, int]]:
    """(MR output pixels, CB ``lanes``-channel vectors) for the depthwise register tile: exact, under
    the stack limit, accumulators plus CB weight vectors and an input vector within the registers,
    most accumulators first."""
    pairs = [(mr, cb) for mr in (8, 7, 6, 5, 4, 3, 2, 1) for cb in (2, 1)
             if out_width % mr == 0 and channels % (lanes * cb) == 0 and mr * cb * lanes * 4 < MAX_TILE_BYTES
             and mr * cb + cb + 2 <= registers]
    return sorted(pairs, key=lambda p: -p[0] * p[1])


def schedule_depthwise_nhwc(sch: s_tir.Schedule, target, tunable: bool = False) -> None:
    """MR output pixels x CB vectors of channels (16 int32 lanes per zmm, 8 per ymm on AVX2) of
    int32 accumulators, the R x S taps unrolled inside."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    n, h, w, c, r, s = sch.get_loops(acc)
    width, registers = (16, 32) if codegen.llvm_cpu_has_features(["avx512f"], target) else (8, 16)
    lanes = width if loop_extent(sch, c) % width == 0 else 1
    candidates = depthwise_tile_candidates(loop_extent(sch, w), loop_extent(sch, c), width, registers) or [(1, 1)]
    mr, cb, _ = _tile_knobs(sch, candidates, tunable)
    wo, wi = sch.split(w, [None, mr])
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


TEMPLATES = {("dense", "packed16x4"): schedule_dense_packed, ("dense", "pairs8x2"): schedule_dense_packed,
             ("dense", "pairs16x2"): schedule_dense_packed, ("conv2d", "packed16x4"): schedule_conv2d_packed,
             ("conv2d", "pairs8x2"): schedule_conv2d_packed, ("conv2d", "pairs16x2"): schedule_conv2d_packed,
             ("batch_matmul", "packed16x4"): schedule_batch_matmul_packed,
             ("batch_matmul", "pairs8x2"): schedule_batch_matmul_pairs,
             ("batch_matmul", "pairs16x2"): schedule_batch_matmul_pairs,
             ("conv2d", "depthwise_nhwc"): schedule_depthwise_nhwc}


class X86VNNIKernels(dlight.ScheduleRule):
    """Schedules the packed integer kernels: vpdpbusd templates on VNNI targets, the vpmaddwd
    micro-kernels (``pairs*`` layouts) on AVX2 / AVX-512BW targets without VNNI, and the NHWC
    depthwise template on every AVX2 target."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):
        key = kernel_key(func)
        template = TEMPLATES.get(key)
        if template is None or not (has_vnni(target) or key[1].startswith("pairs") or (
                key[1] == "depthwise_nhwc" and codegen.llvm_cpu_has_features(["avx2"], target))):
            return None
        options = {"kernel": DOT_KERNELS[key[1]]} if key[1] in DOT_KERNELS else {}
        if tunable and template is schedule_dense_packed:
            spaces = []
            for order in DENSE_LOOP_ORDERS:
                sch = s_tir.Schedule(func)
                template(sch, target, tunable, order=order, **options)
                spaces.append(sch)
            return spaces
        sch = s_tir.Schedule(func)
        template(sch, target, tunable, **options)
        return sch
