"""fp32 islands: float matrix multiplications register-tiled and vectorized, with their epilogue fused.

Why: a quantized model can still hold float matmuls, where the quantizer left a weight float (torch's
``nn.TransformerEncoder`` exports its feed-forward weights behind a Transpose, which ORT's
``quantize_static`` does not quantize) or the user quantized only some ops. The fallback schedule runs
such a matmul as a parallel loop nest with no register tile: ~1 GFLOP/s, 2.9 s for the encoder
(ONNX Runtime fp32: 20 ms). This rule takes any PrimFunc whose one reduction is
``C[..., i, j] += A[..., i, k] * B[..., k, j]`` in float32: MR rows x NB vectors of C held in registers
across the whole k loop (``vfmadd`` with a broadcast of A), the (batch, column block, row block) tiles in
parallel, column blocks outside row blocks so a K x NB*lanes panel of B is reused from cache, and the
elementwise epilogue after it (bias, activation, quantize) computed per tile while it is hot.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import codegen

from .cpu_common import kernel_key, largest_divisor, loop_extent, parallel_vectorize_spatial, vector_lanes


def _index_var(region_min) -> tirx.Var | None:
    return region_min if isinstance(region_min, tirx.Var) else None


def _matmul_block(sch: s_tir.Schedule, blocks):
    """The one float32 reduction block of the form C[.., i, j] += A[.., i, k] * B[.., k, j], else None."""
    reductions = [b for b in blocks
                  if any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
    if len(reductions) != 1:
        return None
    block = sch.get(reductions[0])
    ivs = block.iter_vars
    if len(ivs) < 3 or ivs[-1].iter_type != tirx.IterVar.CommReduce \
            or any(iv.iter_type != tirx.IterVar.DataPar for iv in ivs[:-1]):
        return None
    # 0.27: a region's buffer is ``.source``, a Var whose ``.ty`` is the BufferType (dtype, shape)
    if len(block.writes) != 1 or str(block.writes[0].source.ty.dtype) != "float32":
        return None
    i, j, k = (iv.var for iv in ivs[-3:])
    out = block.writes[0]
    operands = [r for r in block.reads if not r.source.same_as(out.source)]
    if len(operands) != 2:
        return None
    last_two = [[_index_var(rng.min) for rng in r.region[-2:]] for r in operands]
    out_last = [_index_var(rng.min) for rng in out.region[-2:]]
    if out_last != [i, j] or not any(a == [i, k] and b == [k, j] for a, b in (last_two, last_two[::-1])):
        return None
    return reductions[0]


class CPUFloatMatmul(dlight.ScheduleRule):
    def apply(self, func: tirx.PrimFunc, target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm" or kernel_key(func) is not None:
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        matmul = _matmul_block(sch, blocks)
        if matmul is None:
            return None
        try:
            _schedule(sch, matmul, 512 if codegen.llvm_cpu_has_features(["avx512f"], target) else 256)
        except s_tir.ScheduleError:  # an unexpected shape of epilogue: leave it to the fallback
            return None
        return sch


def _schedule(sch: s_tir.Schedule, matmul, register_bits: int) -> None:
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    position = names.index(sch.get(matmul).name_hint)
    # the epilogue (bias, activation, quantize/dequantize, cast) as one block, computed per output tile
    consumers = [sch.get_sblock(n) for n in names[position + 1:]]
    for block in consumers[:-1]:
        try:
            sch.reverse_compute_inline(block)
        except s_tir.ScheduleError:
            sch.compute_inline(block)
    epilogue = consumers[-1] if consumers else None
    for name in names[:position]:  # producers (e.g. a dequantize of the activation) stay their own stage
        parallel_vectorize_spatial(sch, sch.get_sblock(name))

    *batch, i, j, k = sch.get_loops(matmul)
    m_dim, n_dim = loop_extent(sch, i), loop_extent(sch, j)
    lanes = vector_lanes(n_dim, 32, register_bits)
    # MR x NB accumulators + NB loads of B + a broadcast of A within 32 zmm (AVX-512) or 16 ymm registers
    nb = largest_divisor(n_dim // lanes, (4, 2, 1) if register_bits == 512 else (2, 1))
    mr = largest_divisor(m_dim, (4, 3, 2, 1))
    io, ii = sch.split(i, [None, mr])
    jo, jb, jv = sch.split(j, [None, nb, lanes])
    sch.reorder(*batch, jo, io, k, ii, jb, jv)
    tile = sch.fuse(*batch, jo, io)
    sch.parallel(tile)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, tile)
        loops = sch.get_loops(epilogue)
        inner = loops[-1]
        extent = loop_extent(sch, inner)
        if extent and extent % lanes == 0 and lanes > 1:
            _, vec = sch.split(inner, [None, lanes])
            sch.vectorize(vec)
    sch.unroll(ii)
    sch.unroll(jb)
    if lanes > 1:
        sch.vectorize(jv)
    sch.decompose_reduction(matmul, k)
