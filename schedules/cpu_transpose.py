"""Cache-blocked transposes (NCHW <-> NHWC at the edges of channels-last integer regions, attention
head splits) on CPU.

The generic schedule vectorizes the output's innermost loop, which reads the input with a stride of a
whole row: an NHWC -> NCHW uint8 transpose of 56x56x256 ran at 2.7 GB/s (294 us, slower than the 1x1
conv before it). Here the two axes that are contiguous on either side are tiled together, so a tile
(TILE_READ x TILE_WRITE elements, a few KiB) is read and written while it sits in L1; the other loops
and the tile rows run in parallel, the write axis is vectorized.
"""
from __future__ import annotations

from tvm import ir, s_tir, tirx
from tvm.s_tir import dlight

from .cpu_common import loop_extent, parallelize_outer

TILE_WRITE = 64   # output-contiguous elements per tile (one 64-byte line of uint8)
TILE_READ = 32    # input-contiguous elements per tile


def permutation(sch: s_tir.Schedule, block) -> list[int | None] | None:
    """For a permutation copy ``out[v0..vn] = in[v_p0..v_pn]``: p, the block-var position read by
    each input axis (the block's loops are in output order), None where the input is read at a
    constant index (a Gather with a scalar index fused in, e.g. the q/k/v split of
    ``nn.MultiheadAttention``: ``out[a, b, c] = in[1, c, a, b]``). None for any other block."""
    stmt = sch.get(block)
    body = stmt.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, ir.TensorLoad):
        return None
    if stmt.init is not None or len(sch.get_loops(block)) != len(stmt.iter_vars):
        return None
    block_vars = [iv.var for iv in stmt.iter_vars]
    if not block_vars:
        return None

    def position(index):
        return next((pos for pos, var in enumerate(block_vars) if index.same_as(var)), None)
    out_pos = [position(i) for i in body.indices]
    in_pos = [position(i) for i in body.value.indices]
    constants_only = all(isinstance(i, tirx.IntImm) for i, p in zip(body.value.indices, in_pos) if p is None)
    if out_pos != list(range(len(block_vars))) or sorted(p for p in in_pos if p is not None) != out_pos \
            or not constants_only:
        return None
    return in_pos


def contiguous_runs(in_pos: list[int | None]) -> list[list[int]]:
    """Output axes grouped into runs that are adjacent, in the same order, on both sides (NHWC ->
    NCHW: [n], [c], [h, w]); each run can be one loop, the usual dimension collapsing of transposes.
    A constant input index (None) between two axes separates them."""
    runs = [[0]]
    for axis in range(1, sum(p is not None for p in in_pos)):
        prev = runs[-1][-1]
        if in_pos.index(axis) == in_pos.index(prev) + 1:
            runs[-1].append(axis)
        else:
            runs.append([axis])
    return runs


def tile_size(extent: int, preferred: int) -> int:
    """``preferred`` if it divides ``extent``; else the largest divisor below it that is a multiple of
    16 (whole vectors), else the whole extent when it is short, else ``preferred`` (with a tail)."""
    if extent <= preferred or extent % preferred == 0:
        return min(extent, preferred)
    for tile in range(preferred - 16, 15, -16):
        if extent % tile == 0:
            return tile
    return preferred


class CPUTranspose(dlight.ScheduleRule):
    """Tiles a single-block permutation copy so both its read and its write stay cache friendly."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) != 1:
            return None
        block = blocks[0]
        in_pos = permutation(sch, block)
        if in_pos is None:
            return None
        runs = contiguous_runs(in_pos)
        innermost_read = next(p for p in reversed(in_pos) if p is not None)
        read_run = next(i for i, run in enumerate(runs) if innermost_read in run)
        if read_run == len(runs) - 1:
            return None  # innermost axes agree: the generic vectorized copy is already contiguous
        loops = sch.get_loops(block)
        loops = [sch.fuse(*[loops[a] for a in run]) if len(run) > 1 else loops[run[0]] for run in runs]
        read_axis, write_axis = loops[read_run], loops[-1]
        read_extent, write_extent = loop_extent(sch, read_axis), loop_extent(sch, write_axis)
        if read_extent is None or write_extent is None:
            return None
        write_tile = tile_size(write_extent, TILE_WRITE)
        r_out, r_in = sch.split(read_axis, [None, tile_size(read_extent, TILE_READ)])
        w_out, w_in = sch.split(write_axis, [None, write_tile])
        others = [loop for pos, loop in enumerate(loops[:-1]) if pos != read_run]
        sch.reorder(*others, r_out, w_out, r_in, w_in)
        parallelize_outer(sch, [*others, r_out, w_out])
        if write_extent % write_tile == 0 and write_tile % 16 == 0:
            sch.vectorize(w_in)
        return sch
