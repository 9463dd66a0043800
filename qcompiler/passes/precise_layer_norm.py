"""fp32 islands: LayerNorm statistics in float64, so the quantized value after it is the exact one.

A LayerNormalization between int8 tensors is an fp32 island whose output is quantized again. TVM's
``layer_norm`` computes mean and variance in float32; on real weights (MiniLM-L6) its rounding put one
of 6,144 embedding outputs on the other side of a rounding tie, and attention amplified that single step
to a cosine of 0.967 against the exact result at the encoder's output. ONNX Runtime accumulates its
LayerNorm statistics in double and gives the exact answer there. So the normalization runs in float64
(inputs cast up, the result cast back to float32), as Relax ops in two passes (mean, then the variance of
the centered values): TOPI's ``layer_norm`` takes float32/float16 only. The reductions are memory-bound;
the cost is small against the int8 matmuls around them.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import expr_functor

from .binding_util import rewrite_relax_functions


@expr_functor.mutator
class _LayerNormInFloat64(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.layer_norm"):
            return call
        if str(call.ty.dtype) != "float32":
            return call
        x, gamma, beta = (self.builder_.emit(relax.op.astype(arg, "float64")) for arg in call.args)
        axes = [int(a) for a in call.attrs.axes]
        mean = self.builder_.emit(relax.op.mean(x, axes, keepdims=True))
        centered = self.builder_.emit(relax.op.subtract(x, mean))
        variance = self.builder_.emit(relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True))
        eps = relax.const(float(call.attrs.epsilon), "float64")
        normed = relax.op.divide(centered, relax.op.sqrt(relax.op.add(variance, eps)))
        if call.attrs.scale:
            normed = relax.op.multiply(normed, gamma)
        if call.attrs.center:
            normed = relax.op.add(normed, beta)
        return relax.op.astype(self.builder_.emit(normed), "float32")


@tvm.transform.module_pass(opt_level=0, name="PreciseLayerNorm")
def precise_layer_norm(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every float32 ``relax.nn.layer_norm`` of ``mod``'s Relax functions computed in float64."""
    return rewrite_relax_functions(mod, _LayerNormInFloat64(mod))
