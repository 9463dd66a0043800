"""fp32 islands: softmax over the last axis one row at a time, its stages fused per row and vectorized.

Why: the fallback schedule runs each stage of TOPI's softmax (row max, exp, row sum, divide, and the
quantize behind it) as its own parallel sweep over the whole tensor, the exp through a temporary the
size of the input: ViT-B/16's 12 x 197 x 197 attention softmaxes took 750 us each (13% of the roof),
the TransformerEncoder's 8 x 128 x 128 ones 187 us (400 and 99 us with this schedule). Here the rows
run in parallel and every stage of a row is computed while the row is in L1: max, exp (written to a row buffer), sum, then the normalize and its epilogue;
the exp and the epilogue are vectorized across the row (a row of 197 is one wide vector that LLVM
splits into 16-lane pieces).

Taken: PrimFuncs holding TOPI's ``T_softmax_maxelem`` and ``T_softmax_expsum`` blocks (``fast_softmax``
after passes/vector_math.py, or ``softmax``) whose reductions run over the innermost axis.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight

from .cpu_common import loop_extent, parallelize_outer

_STAGES = ("T_softmax_maxelem", "T_softmax_expsum")
#: Rows up to this long are vectorized whole (LLVM splits the wide vector); longer ones in pieces.
WHOLE_ROW_LANES = 256


def _name(sch: s_tir.Schedule, block) -> str:
    return sch.get(block).name_hint


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _vectorize_row(sch: s_tir.Schedule, loop) -> None:
    extent = loop_extent(sch, loop)
    if not extent or extent < 4:
        return
    if extent <= WHOLE_ROW_LANES:
        sch.vectorize(loop)
        return
    # a longer row in pieces of its largest divisor that is still a whole-row vector (a prime stays scalar)
    piece = next((d for d in range(WHOLE_ROW_LANES, 15, -1) if extent % d == 0), None)
    if piece is not None:
        sch.vectorize(sch.split(loop, [None, piece])[1])


class CPUSoftmax(dlight.ScheduleRule):
    def apply(self, func: tirx.PrimFunc, target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [_name(sch, b) for b in blocks]
        if not all(any(n.startswith(stage) for n in names) for stage in _STAGES):
            return None
        reductions = [b for b in blocks if _is_reduction(sch, b)]
        if len(reductions) != 2 or any(
                sch.get(b).iter_vars[-1].iter_type != tirx.IterVar.CommReduce for b in reductions):
            return None  # a softmax over another axis: the fallback's plain schedule
        try:
            return self._schedule(sch, blocks)
        except s_tir.ScheduleError:
            return None

    @staticmethod
    def _schedule(sch: s_tir.Schedule, blocks) -> s_tir.Schedule:
        # elementwise stages other than the exp and the last one are inlined into their consumers
        # (the subtraction of the max into the exp, producers such as a mask add into max and exp),
        # or into their producer (normalize -> quantize -> cast chains into the last block)
        # (by name: block names are unique in a PrimFunc, and inlining replaces the blocks' nodes)
        keep = {_name(sch, b) for b in blocks if b is blocks[-1] or _is_reduction(sch, b)
                or _name(sch, b).startswith(("T_fast_exp", "T_softmax_exp"))}
        for block in blocks:
            if _name(sch, block) in keep:
                continue
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:
                sch.reverse_compute_inline(block)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        last = blocks[-1]
        *rows, row = sch.get_loops(last)
        row_loop = sch.fuse(*rows) if len(rows) > 1 else rows[0]
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, row_loop, preserve_unit_loops=True)
        parallelize_outer(sch, [row_loop])
        _vectorize_row(sch, row)
        for block in blocks[:-1]:
            if not _is_reduction(sch, block):
                _vectorize_row(sch, sch.get_loops(block)[-1])
        return sch
