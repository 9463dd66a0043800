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
        infos = dlight.analysis.normalize_prim_func(sch)
        if infos is not None:
            infos = try_inline_contiguous_spatial(sch, infos)
            blocks = [info.block_rv for info in infos]
        for block in blocks:
            try:
                parallel_vectorize_spatial(sch, block)
            except s_tir.ScheduleError:  # an odd block keeps its plain loops
                continue
        return sch
