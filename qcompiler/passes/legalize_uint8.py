"""Store int8 activations as uint8 (zero point + 128) for the x86 integer kernels.

VNNI's ``vpdpbusd`` multiplies *unsigned* bytes by signed bytes, so activations must be uint8.
Relay's x86 QNN legalization shifted int8 activations by +128 at every conv/dense; here the shift
happens once, where the activation is produced: ``quantize(x, s, z, int8)`` and
``quantize(x, s, z + 128, uint8)`` hold the same real values (clamp ranges shift together), so every
consumer ``dequantize`` just gets zero point z + 128. Only activations whose every consumer is a
dequantize are moved; one that leaves the function or feeds anything else keeps int8.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import tvm
from tvm import relax

from .binding_util import emit_replacing, rewrite_relax_functions


def _is_op(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def _movable_quantize_vars(func: relax.Function) -> set:
    """int8 quantize results with constant zero points whose every use is a dequantize."""
    consumers = defaultdict(list)
    candidates = set()
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            for var in relax.analysis.free_vars(value):
                consumers[var].append(value)
            if (_is_op(value, "relax.quantize") and value.attrs.out_dtype == "int8"
                    and isinstance(value.args[2], tvm.ir.GenericConst)):
                candidates.add(binding.var)
    for var in relax.analysis.free_vars(func.body.body):
        consumers[var].append(None)
    return {v for v in candidates
            if consumers[v] and all(_is_op(c, "relax.dequantize") and isinstance(c.args[2], tvm.ir.GenericConst)
                                    and c.args[0].same_as(v) for c in consumers[v])}


def _shifted_zero_point(zp: tvm.ir.GenericConst) -> tvm.ir.GenericConst:
    return relax.const(zp.value.numpy().astype(np.int16) + 128, "uint8")


@relax.expr_functor.mutator
class _Legalizer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, moved: set):
        super().__init__(mod)
        self.moved = moved

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if binding.var in self.moved:
            new = relax.op.quantize(self.visit_expr(value.args[0]), value.args[1], _shifted_zero_point(value.args[2]),
                                    axis=int(value.attrs.axis), out_dtype="uint8")
        elif _is_op(value, "relax.dequantize") and value.args[0] in self.moved:
            new = relax.op.dequantize(self.visit_expr(value.args[0]), value.args[1],
                                      _shifted_zero_point(value.args[2]), axis=int(value.attrs.axis),
                                      out_dtype=str(value.attrs.out_dtype))
        else:
            return super().visit_var_binding_(binding)
        emit_replacing(self, binding.var, new)


@tvm.transform.module_pass(opt_level=0, name="qcompiler.LegalizeActivationsToUInt8")
def legalize_activations_to_uint8(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """See the module docstring."""
    moved = set()
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            moved |= _movable_quantize_vars(func)
    if not moved:
        return mod
    return rewrite_relax_functions(mod, _Legalizer(mod, moved))
