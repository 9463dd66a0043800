"""Small scheduling helpers shared by the CPU templates."""
from __future__ import annotations

from tvm import s_tir, tirx

from qcompiler.kernels import KERNEL_ATTR, LAYOUT_ATTR  # the contract between lowering and templates


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


def parallel_vectorize_spatial(sch: s_tir.Schedule, block, lanes_hint: int = 16, min_parallel: int = 2,
                               parallel_chunks: int = 64) -> None:
    """Parallelize a few outer spatial loops and vectorize the innermost one, if clean.

    Only as many outer loops are fused as it takes to give the threads ``parallel_chunks`` chunks:
    fusing every loop into one parallel loop of tiny bodies costs div/mod index math per element
    (measured 4x slower than serial on a padding copy). The innermost loop stays whole; it is
    vectorized when a lane count divides it, else left to LLVM. Reduction loops (if any) stay inside.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    spatial = []
    for loop, iv in zip(loops, sch.get(block).iter_vars):
        if iv.iter_type != tirx.IterVar.DataPar:
            break
        spatial.append(loop)
    if not spatial:
        return
    inner = None
    if len(spatial) == len(loops) and len(spatial) > 1:  # purely spatial: the innermost loop is the vector
        inner = spatial.pop()
    parallelize_outer(sch, spatial, min_parallel, parallel_chunks)
    if inner is not None:
        extent = loop_extent(sch, inner)
        lanes = vector_lanes(extent, 32, 32 * lanes_hint) if extent else 1
        if lanes >= 4:
            if lanes < extent:
                _, vec = sch.split(inner, [None, lanes])
                sch.vectorize(vec)
            else:
                sch.vectorize(inner)


def parallelize_outer(sch: s_tir.Schedule, loops: list, min_parallel: int = 2, parallel_chunks: int = 64) -> None:
    """Fuse just enough of the outermost ``loops`` to give the threads ``parallel_chunks`` chunks and
    run them in parallel (nothing if fewer than ``min_parallel`` chunks exist)."""
    outer, chunks = [], 1
    for loop in loops:
        outer.append(loop)
        chunks *= loop_extent(sch, loop) or parallel_chunks
        if chunks >= parallel_chunks:
            break
    if outer and chunks >= min_parallel:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


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


def kernel_key(func) -> tuple[str, str] | None:
    """(kernel, layout) of a PrimFunc the QDQ lowering emitted, or None for any other PrimFunc."""
    if not isinstance(func, tirx.PrimFunc) or func.attrs is None or KERNEL_ATTR not in func.attrs:
        return None
    return str(func.attrs[KERNEL_ATTR]), str(func.attrs.get(LAYOUT_ATTR, "plain"))

