"""Which ops of a lowered model run in integer kernels and which stayed float (fp32 islands)."""
from __future__ import annotations

from collections import Counter

import tvm
from tvm import relax

from .kernels import KERNEL_ATTR

_BOUNDARY = {"relax.quantize": "quantize", "relax.dequantize": "dequantize"}


def _short(op_name: str) -> str:
    return op_name.rsplit(".", 1)[-1]


def summarize_ops(mod: tvm.IRModule) -> dict:
    """Counts per op type: ``int8`` (integer kernels and integer layout ops), ``fp32`` (float ops),
    ``boundary`` (quantize/dequantize at the edges of integer regions)."""
    int8, fp32, boundary = Counter(), Counter(), Counter()
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if not isinstance(call, relax.Call):
                    continue
                if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir":
                    prim = mod[call.args[0]]
                    kind = prim.attrs.get(KERNEL_ATTR) if prim.attrs is not None else None
                    (int8 if kind is not None else fp32)[str(kind or call.args[0].name_hint)] += 1
                elif isinstance(call.op, tvm.ir.Op):
                    if call.op.name in _BOUNDARY:
                        boundary[_BOUNDARY[call.op.name]] += 1
                        continue
                    ty = binding.var.ty
                    dtype = str(ty.dtype) if isinstance(ty, relax.TensorType) else ""
                    (fp32 if dtype.startswith("float") else int8)[_short(call.op.name)] += 1
    return {"int8": dict(sorted(int8.items())), "fp32": dict(sorted(fp32.items())),
            "boundary": dict(sorted(boundary.items()))}


def format_summary(summary: dict) -> str:
    def part(counts):
        return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"
    return (f"int8 kernels: {part(summary['int8'])}\n"
            f"fp32 islands: {part(summary['fp32'])}\n"
            f"quantize/dequantize: {part(summary['boundary'])}")
