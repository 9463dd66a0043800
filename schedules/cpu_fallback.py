"""Fallback CPU schedule for everything that is not an integer kernel.

fp32 islands (softmax, layer norm, GELU, ...), quantize/dequantize at the graph edges and integer
layout ops (reshape, transpose, max-pool) get a plain but real schedule: injective producers are
inlined, the outer spatial loops run in parallel and a clean innermost spatial loop is vectorized.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base.common_schedules import try_inline_contiguous_spatial

from .cpu_common import parallel_vectorize_spatial


class CPUFallback(dlight.ScheduleRule):
    def apply(self, func: tirx.PrimFunc, target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        if not blocks:
            return None
        # dlight's inlining takes a reduction whose reduction loops all have extent 1 (a mean or average
        # pool of a 1x1 map) for an elementwise block and folds the next stage (quantize, requantize) into
        # its update: that stage then runs on partial sums (wrong values, or a float32/float64 mix LLVM
        # rejects). Such functions keep their stages.
        infos = None if _has_unit_reduction(sch, blocks) else dlight.analysis.normalize_prim_func(sch)
        if infos is not None:
            infos = try_inline_contiguous_spatial(sch, infos)
            blocks = [info.block_rv for info in infos]
        for block in blocks:
            try:
                parallel_vectorize_spatial(sch, block)
            except s_tir.ScheduleError:  # an odd block keeps its plain loops
                continue
        return sch


def _has_unit_reduction(sch: s_tir.Schedule, blocks) -> bool:
    """Whether a block reduces over loops that all have extent 1."""
    for block in blocks:
        reduce = [iv for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
        if reduce and all(isinstance(iv.dom.extent, tirx.IntImm) and int(iv.dom.extent) == 1 for iv in reduce):
            return True
    return False
