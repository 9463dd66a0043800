"""fp32 islands: ``x ** 2`` and ``x ** 3`` as multiplications instead of ``pow`` calls.

GPT-2's GELU (``gelu_new``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``) exports ``Pow(x, 3.0)``;
LLVM lowers TIR's ``pow`` to one scalar libm ``powf`` call per element, which does not vectorize (and TVM
warns that pow with y >= 3 misbehaves for x < 0). A constant integer exponent of 2 or 3 is the product
``x * x (* x)``: exact to float32 rounding (one or two roundings, where powf rounds once), and it
vectorizes. Other exponents stay ``pow``.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import expr_functor

from .binding_util import rewrite_relax_functions
from .qdq_analysis import constant_array


def _constant_exponent(expr: relax.Expr) -> float | None:
    value = constant_array(expr)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


@expr_functor.mutator
class _SmallPowersToProducts(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.power"):
            return call
        exponent = _constant_exponent(call.args[1])
        base = call.args[0]
        if exponent not in (2.0, 3.0) or not str(base.ty.dtype).startswith("float"):
            return call
        if tuple(int(d) for d in call.ty.shape.values) != tuple(int(d) for d in base.ty.shape.values):
            return call  # the exponent broadcasts the result to another shape: leave it to pow
        square = self.builder_.emit(relax.op.multiply(base, base))
        return square if exponent == 2.0 else relax.op.multiply(square, base)


@tvm.transform.module_pass(opt_level=0, name="SmallPowers")
def small_powers(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every float ``relax.power(x, 2 or 3)`` with a constant exponent of ``mod``'s Relax functions as products."""
    return rewrite_relax_functions(mod, _SmallPowersToProducts(mod))
