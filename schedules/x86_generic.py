"""x86 templates for the integer kernels: register-tiled, vectorized, parallel (no tensorization).

Every integer kernel the QDQ lowering emits is scheduled here, so none runs on TVM's unscheduled
default. The dense and conv templates register-block the int32 accumulator (rows x 16-lane
vectors, kept in zmm registers across the reduction) and fuse the requantize epilogue into the
output tile. Tile choices are functions of the shape, so a tuner can later replace them.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight

from .cpu_common import find_block, fuse_epilogue, kernel_key, largest_divisor, loop_extent, parallel_vectorize_spatial, vector_lanes,\
    vectorize_epilogue

def schedule_dense(sch: s_tir.Schedule) -> None:
    """acc[M, N] += x[M, K] * w[K, N]: MR rows x NB*16 lanes register tile, K innermost outside the tile."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    i, j, k = sch.get_loops(acc)
    m_dim, n_dim = loop_extent(sch, i), loop_extent(sch, j)
    lanes = vector_lanes(n_dim)
    nb = largest_divisor(n_dim // lanes, (4, 2, 1))
    mr = largest_divisor(m_dim, (4, 3, 2, 1))
    io, ii = sch.split(i, [None, mr])
    jo, jb, jv = sch.split(j, [None, nb, lanes])
    sch.reorder(jo, io, k, ii, jb, jv)
    tile = sch.fuse(jo, io)
    sch.parallel(tile)
    fuse_epilogue(sch, out, tile, "rowsum")
    sch.unroll(ii)
    sch.unroll(jb)
    if lanes > 1:  # before decompose_reduction: the update block must still be a reduction block
        sch.vectorize(jv)
    sch.decompose_reduction(acc, k)  # the init block inherits the unrolled/vectorized tile loops


def schedule_conv2d(sch: s_tir.Schedule) -> None:
    """acc[n, o, h, w]: OB output channels x (output-width vector) register tile, (c, r, s) inside."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    n, o, h, w, c, r, s = sch.get_loops(acc)
    o_dim, w_dim = loop_extent(sch, o), loop_extent(sch, w)
    lanes = vector_lanes(w_dim) if w_dim >= 4 else 1
    ob = largest_divisor(o_dim, (4, 2, 1))
    oo, oi = sch.split(o, [None, ob])
    wo, wv = sch.split(w, [None, lanes])
    sch.reorder(n, oo, h, wo, c, r, s, oi, wv)
    tile = sch.fuse(n, oo, h)
    sch.parallel(tile)
    fuse_epilogue(sch, out, wo, "window_sum")
    sch.unroll(oi)
    if lanes > 1:
        sch.vectorize(wv)
    sch.decompose_reduction(acc, c)
    pad = find_block(sch, "pad")
    if pad is not None:
        parallel_vectorize_spatial(sch, pad)


def schedule_batch_matmul(sch: s_tir.Schedule) -> None:
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    b, i, j, k = sch.get_loops(acc)
    m_dim, n_dim = loop_extent(sch, i), loop_extent(sch, j)
    lanes = vector_lanes(n_dim)
    mr = largest_divisor(m_dim, (4, 2, 1))
    io, ii = sch.split(i, [None, mr])
    jo, jv = sch.split(j, [None, lanes])
    sch.reorder(b, io, jo, k, ii, jv)
    tile = sch.fuse(b, io, jo)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile)
    vectorize_epilogue(sch, out, tile)
    sch.unroll(ii)
    if lanes > 1:
        sch.vectorize(jv)
    sch.decompose_reduction(acc, k)


def schedule_pool(sch: s_tir.Schedule) -> None:
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    n, c, h, w, r, s = sch.get_loops(acc)
    channels = sch.fuse(n, c)
    sch.parallel(channels)
    sch.reverse_compute_at(out, channels)
    vectorize_epilogue(sch, out, channels)


def schedule_pool_nhwc(sch: s_tir.Schedule) -> None:
    """NHWC average pooling: pixels in parallel, the window reduced over 16-channel vectors."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("requant")
    n, h, w, c, r, s = sch.get_loops(acc)
    lanes = vector_lanes(loop_extent(sch, c))
    co, cv = sch.split(c, [None, lanes])
    sch.reorder(n, h, w, co, r, s, cv)
    pixels = sch.fuse(n, h, w, co)
    sch.parallel(pixels)
    sch.reverse_compute_at(out, pixels)
    if lanes > 1:
        sch.vectorize(cv)
    sch.decompose_reduction(acc, r)
    vectorize_epilogue(sch, out, pixels)


def schedule_elementwise(sch: s_tir.Schedule) -> None:
    parallel_vectorize_spatial(sch, sch.get_sblock("requant"))


TEMPLATES = {  # (kernel, layout) -> template
    ("dense", "plain"): schedule_dense,
    ("conv2d", "plain"): schedule_conv2d,
    ("batch_matmul", "plain"): schedule_batch_matmul,
    ("avg_pool2d", "plain"): schedule_pool,
    ("avg_pool2d", "nhwc"): schedule_pool_nhwc,
    ("requantize", "plain"): schedule_elementwise,
    ("add", "plain"): schedule_elementwise,
    ("mul", "plain"): schedule_elementwise,
}


class X86IntegerKernels(dlight.ScheduleRule):
    """Schedules PrimFuncs tagged ``qcompiler.kernel`` with the template of their kind."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):
        template = TEMPLATES.get(kernel_key(func))
        if template is None:
            return None
        sch = s_tir.Schedule(func)
        template(sch)
        return sch
