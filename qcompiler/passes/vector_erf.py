"""fp32 islands: ``erf`` (GELU) as a vectorizable polynomial instead of per-lane libm calls.

LLVM lowers TIR's ``erf`` to one scalar ``erff`` call per vector lane: the zoo transformer's two GELU
islands (16 x 128 elements each) took 18-23 us, the most time any of its kernels lost against the
roofline. TOPI's ``fast_erf`` is a float32 rational approximation (Eigen's) that vectorizes; its error
is within float32 rounding of ``erff`` (the transformer's outputs still match ONNX Runtime to float
rounding, tests/test_models_vs_ort.py). Only ``erf`` is replaced: TVM's FastMathTransform would also
swap exp/softmax/tanh for coarser approximations.
"""
from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.relax import expr_functor

from .binding_util import rewrite_relax_functions


@expr_functor.mutator
class _ErfToPolynomial(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.erf":
            return self.builder_.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="erf")
        return call


@tvm.transform.module_pass(opt_level=0, name="VectorizableErf")
def vectorizable_erf(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Replace every float ``relax.erf`` of ``mod``'s Relax functions with ``topi.fast_erf``."""
    return rewrite_relax_functions(mod, _ErfToPolynomial(mod))
