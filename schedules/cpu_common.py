"""Small scheduling helpers shared by the CPU templates."""
from __future__ import annotations

from tvm import s_tir, tirx


def loop_extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def largest_divisor(n: int, candidates) -> int:
    """The first candidate that divides ``n`` (candidates in preference order; 1 always works)."""
    for c in candidates:
        if c <= n and n % c == 0:
            return c
    return 1


def vector_lanes(n: int, dtype_bits: int = 32, register_bits: int = 512) -> int:
    """Widest power-of-two lane count dividing ``n`` that fits one register."""
    lanes = register_bits // dtype_bits
    while lanes > 1 and n % lanes:
        lanes //= 2
    return lanes


def parallel_vectorize_spatial(sch: s_tir.Schedule, block, lanes_hint: int = 16, min_parallel: int = 2) -> None:
    """Parallelize the fused outer spatial loops and vectorize the innermost one, if clean.

    Works for any block whose leading loops are spatial; reduction loops (if any) are left inside.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    kinds = sch.get(block).iter_vars
    spatial = []
    for loop, iv in zip(loops, kinds):
        if iv.iter_type != tirx.IterVar.DataPar:
            break
        spatial.append(loop)
    if not spatial:
        return
    inner = None
    if len(spatial) == len(loops):  # purely spatial: vectorize the innermost loop
        extent = loop_extent(sch, spatial[-1])
        if extent is not None and extent > 1:
            lanes = vector_lanes(extent, 32, 32 * lanes_hint)
            if lanes > 1:
                if lanes < extent:
                    outer_part, inner = sch.split(spatial[-1], [None, lanes])
                    spatial = spatial[:-1] + [outer_part]
                else:
                    inner = spatial.pop()
    if spatial:
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        extent = loop_extent(sch, fused)
        if extent is None or extent >= min_parallel:
            sch.parallel(fused)
    if inner is not None:
        sch.vectorize(inner)


def find_block(sch: s_tir.Schedule, name: str):
    """The block called ``name`` at the root of the function, or None (optional kernel stages)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint == name:
            return block
    return None


def vectorize_epilogue(sch: s_tir.Schedule, block, anchor) -> None:
    """Vectorize the innermost loop of an epilogue computed at ``anchor``, if it has a loop of its own
    (a loop shared with the producer must not be touched) and its extent allows."""
    loops = sch.get_loops(block)
    if sch.get(loops[-1]).same_as(sch.get(anchor)):
        return
    extent = loop_extent(sch, loops[-1])
    if extent is None:
        return
    lanes = vector_lanes(extent)
    if lanes == 1:
        return
    if lanes < extent:
        outer, inner = sch.split(loops[-1], [None, lanes])
        sch.unroll(outer)
        sch.vectorize(inner)
    else:
        sch.vectorize(loops[-1])


def fuse_epilogue(sch: s_tir.Schedule, out, loop, zero_point_stage: str) -> None:
    """Requantize each output tile right after it is accumulated (the int32 tile stays hot).

    With weight zero points (uint8 weights, rare) the epilogue also reads a second reduction (row or
    window sums of the input); that stage and the epilogue then run as their own parallel loops.
    """
    extra = find_block(sch, zero_point_stage)
    if extra is None:
        sch.reverse_compute_at(out, loop)
        vectorize_epilogue(sch, out, loop)
    else:
        parallel_vectorize_spatial(sch, extra)
        parallel_vectorize_spatial(sch, out)
