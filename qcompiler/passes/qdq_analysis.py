"""Forward analysis of a QDQ Relax function: which float values have an exact integer form.

One rule per Relax op, registered in ``RULES``; a rule gets the descriptions of its operands
(see qvalues.py) and returns the description of its result, or None (the op stays float). Rules
never emit IR: this pass only decides. ``lower_qdq`` then materializes the integer kernels at each
``quantize`` whose input has a description (the ``plans``).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from .qvalues import (Accumulator, Analysis, Concat, FloatConstant, LinearSum, OpSource, QActivation, QConstant,
                      QParams, VarSource)

RULES: dict[str, Callable] = {}

#: Ops that only move or select elements: they commute with per-tensor (de)quantization.
LAYOUT_OPS = ("relax.reshape", "relax.permute_dims", "relax.flatten", "relax.squeeze", "relax.expand_dims",
              "relax.strided_slice", "relax.nn.max_pool2d", "relax.broadcast_to")


def rule(*op_names: str):
    def register(fn):
        for name in op_names:
            RULES[name] = fn
        return fn
    return register


def constant_array(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def prim_value(expr) -> float | None:
    if isinstance(expr, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):  # 0.27: R.prim_value args are the imms
        return float(expr.value)
    return None


def static_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except TypeError:  # symbolic dimension
        return None


class _Context:
    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.bound: dict = {}  # var -> the value bound to it (to look at producers)

    def producer(self, expr, op_name: str):
        """The call that produced var ``expr`` if it is an ``op_name`` call, else None."""
        value = self.bound.get(expr) if isinstance(expr, relax.Var) else None
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == op_name:
            return value
        return None

    def describe(self, expr):
        if isinstance(expr, relax.Var):
            return self.analysis.values.get(expr)
        value = constant_array(expr)
        if value is not None and value.dtype.kind == "f":
            return FloatConstant(value.astype(np.float64))
        return None


def analyze(func: relax.Function) -> Analysis:
    analysis = Analysis()
    ctx = _Context(analysis)
    consumers: dict = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            for used in relax.analysis.free_vars(binding.value):
                consumers.setdefault(used, []).append(binding.var)
            if not isinstance(binding, relax.VarBinding):
                continue
            value = binding.value
            ctx.bound[binding.var] = value
            if isinstance(value, relax.Var) and value in analysis.values:
                analysis.values[binding.var] = analysis.values[value]
            elif isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in RULES:
                description = RULES[value.op.name](ctx, binding.var, value)
                if description is not None:
                    analysis.values[binding.var] = description
    for used in relax.analysis.free_vars(func.body.body):
        consumers.setdefault(used, []).append(None)
    _plan_float_outputs(analysis, consumers)
    return analysis


def _plan_float_outputs(analysis: Analysis, consumers: dict) -> None:
    """An integer dot product whose value is also used as a float (by an op without an integer rule,
    or as a model output) still runs as an integer kernel, with a dequantizing fp32 epilogue."""
    for var, description in analysis.values.items():
        if not (isinstance(description, Accumulator) and description.kind in ("dense", "conv2d")):
            continue
        uses = consumers.get(var, [])
        if any(use is None or (use not in analysis.values and use not in analysis.plans) for use in uses):
            analysis.plans[var] = (description, None)


# ---------------------------------------------------------------------------------------------- boundaries

@rule("relax.dequantize")
def _dequantize(ctx, var, call):
    scale, zero_point = constant_array(call.args[1]), constant_array(call.args[2])
    if scale is None or zero_point is None or call.attrs.out_dtype != "float32":
        return None
    data = call.args[0]
    q = constant_array(data)
    if q is not None:  # a quantized weight or bias
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[call.attrs.axis % q.ndim] = scale.size
        expand = lambda v, dt: np.broadcast_to(np.asarray(v, dt).reshape(shape if v.size > 1 else [1] * q.ndim),  # noqa: E731
                                               q.shape).copy()
        return QConstant(q, expand(scale.astype(np.float32).astype(np.float64), np.float64),
                         expand(zero_point, np.int64))
    if scale.size != 1 or zero_point.size != 1 or not isinstance(data, relax.Var):
        return None
    return QActivation(_integer_source(ctx, data), QParams(float(np.float32(scale.reshape(()))),
                                                           int(zero_point.reshape(())), str(data.ty.dtype)))


def _integer_source(ctx, data: relax.Var):
    """Where a dequantized integer tensor comes from: a transpose of another integer tensor (e.g. an
    NHWC graph input permuted to NCHW before its DequantizeLinear) stays visible as an OpSource, so
    the lowering can cancel it against the NCHW -> NHWC transpose of a channels-last region."""
    call = ctx.producer(data, "relax.permute_dims")
    if call is not None and isinstance(call.args[0], relax.Var) and call.args[0].ty.dtype == data.ty.dtype:
        return OpSource(call, _integer_source(ctx, call.args[0]))
    return VarSource(data)


@rule("relax.quantize")
def _quantize(ctx, var, call):
    scale, zero_point = constant_array(call.args[1]), constant_array(call.args[2])
    source = ctx.describe(call.args[0])
    if (scale is not None and zero_point is not None and scale.size == 1 and zero_point.size == 1
            and isinstance(source, (QActivation, Accumulator, LinearSum, Concat))):
        ctx.analysis.plans[var] = (source, call)
    return None


def _wrapping_cast_source(ctx, call):
    """x, if ``call`` is TVM 0.27's ONNX lowering of Cast(x: float -> int32).

    The importer emulates C wraparound: astype(where(x >= 2^31, x - 2^32, x), int32) with
    x = floor_mod(astype(where(!isfinite(f), 0, f), int64), 2^32). For an integer accumulator in
    int32 range (always finite) all of that is the identity, so the cast reads ``f`` directly.
    """
    wrapped = ctx.producer(call.args[0], "relax.where")
    modulo = ctx.producer(wrapped.args[2], "relax.floor_mod") if wrapped is not None else None
    if modulo is None or constant_array(modulo.args[1]) is None or int(constant_array(modulo.args[1])) != 2 ** 32:
        return None
    widened = ctx.producer(modulo.args[0], "relax.astype")
    sanitized = ctx.producer(widened.args[0], "relax.where") if widened is not None else None
    return sanitized.args[2] if sanitized is not None else None


@rule("relax.astype")
def _astype(ctx, var, call):
    """MatMulInteger/ConvInteger canonicalized to QDQ: an exact int32 accumulator with scale 1."""
    if call.attrs.dtype == "int32" and ctx.describe(call.args[0]) is None:
        source = ctx.describe(_wrapping_cast_source(ctx, call))
    else:
        source = ctx.describe(call.args[0])
    if (call.attrs.dtype == "int32" and isinstance(source, Accumulator) and source.kind in ("dense", "conv2d")
            and np.all(source.scale == 1.0) and source.bias is None and math.isinf(source.lo) and math.isinf(source.hi)):
        ctx.analysis.plans[var] = (source, call)
    return None


# ---------------------------------------------------------------------------------------------- layout

@rule(*LAYOUT_OPS)
def _layout(ctx, var, call):
    source = ctx.describe(call.args[0])
    if isinstance(source, QActivation):
        if call.op.name == "relax.nn.max_pool2d" and call.attrs.layout != "NCHW":
            return None
        return QActivation(OpSource(call, source.source), source.params)
    if isinstance(source, (QConstant, FloatConstant)):  # evaluate on the constant (e.g. a reshaped bias)
        out_shape = static_shape(var)
        if call.op.name == "relax.permute_dims":
            axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
            fn = lambda a: np.transpose(a, axes)  # noqa: E731
        elif call.op.name in ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims") and out_shape:
            fn = lambda a: np.reshape(a, out_shape)  # noqa: E731
        else:
            return None
        return source.transform(fn) if isinstance(source, QConstant) else FloatConstant(fn(source.value))
    return None


@rule("relax.concat")
def _concat(ctx, var, call):
    if not isinstance(call.args[0], relax.Tuple):
        return None
    terms = tuple(ctx.describe(field) for field in call.args[0].fields)
    if not all(isinstance(t, QActivation) for t in terms):
        return None
    if len({t.params for t in terms}) == 1:
        return QActivation(OpSource(call, tuple(t.source for t in terms)), terms[0].params)
    return Concat(terms, call)


# ---------------------------------------------------------------------------------------------- compute

@rule("relax.matmul")
def _matmul(ctx, var, call):
    a, b = ctx.describe(call.args[0]), ctx.describe(call.args[1])
    out_shape = static_shape(var)
    if not isinstance(a, QActivation) or out_shape is None or len(out_shape) < 2:
        return None
    if isinstance(b, QConstant) and b.q.ndim == 2:
        per_column = b.per_axis(1)
        if per_column is None:
            return None
        b_scale, b_zero_point = per_column
        return Accumulator("dense", (a, b), {"weight_zero_point": b_zero_point, "out_shape": out_shape},
                           a.params.scale * b_scale, channel_axis=len(out_shape) - 1)
    if isinstance(b, QActivation):
        a_shape, b_shape = static_shape(call.args[0]), static_shape(call.args[1])
        if a_shape is None or b_shape is None or len(a_shape) != len(b_shape) or a_shape[:-2] != b_shape[:-2]:
            return None
        return Accumulator("batch_matmul", (a, b), {"out_shape": out_shape},
                           np.array([a.params.scale * b.params.scale]), channel_axis=len(out_shape) - 1)
    return None


@rule("relax.nn.conv2d")
def _conv2d(ctx, var, call):
    x, w = ctx.describe(call.args[0]), ctx.describe(call.args[1])
    attrs = call.attrs
    if (not isinstance(x, QActivation) or not isinstance(w, QConstant) or attrs.data_layout != "NCHW"
            or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW" or static_shape(var) is None):
        return None
    per_channel = w.per_axis(0)
    if per_channel is None:
        return None
    w_scale, w_zero_point = per_channel
    return Accumulator("conv2d", (x, w), {
        "strides": tuple(int(v) for v in attrs.strides), "padding": tuple(int(v) for v in attrs.padding),
        "dilation": tuple(int(v) for v in attrs.dilation), "groups": int(attrs.groups),
        "weight_zero_point": w_zero_point, "out_shape": static_shape(var)}, x.params.scale * w_scale, channel_axis=1)


def _channel_vector(value: np.ndarray, out_ndim: int, channel_axis: int, channels: int) -> np.ndarray | None:
    """``value`` (broadcast against the output) as a per-channel vector, or None if it varies elsewhere."""
    if value.ndim > out_ndim:
        return None
    value = value.reshape((1,) * (out_ndim - value.ndim) + value.shape)
    axis = channel_axis % out_ndim
    for ax in range(out_ndim):
        if ax != axis and value.shape[ax] != 1:
            first = np.take(value, [0], axis=ax)
            if not np.array_equal(np.broadcast_to(first, value.shape), value):
                return None
            value = first
    vec = value.reshape(-1)
    if vec.size == 1:
        return np.full(channels, vec[0])
    return vec if vec.size == channels else None


@rule("relax.add", "relax.subtract")
def _add(ctx, var, call):
    a, b = ctx.describe(call.args[0]), ctx.describe(call.args[1])
    sign = -1.0 if call.op.name == "relax.subtract" else 1.0
    if isinstance(a, QActivation) and isinstance(b, QConstant) and b.as_activation() is not None:
        b = b.as_activation()
    elif isinstance(b, QActivation) and isinstance(a, QConstant) and a.as_activation() is not None:
        a = a.as_activation()
    if isinstance(a, QActivation) and isinstance(b, QActivation):
        return LinearSum((a, b), (1.0, sign), out_shape=static_shape(var))
    if call.op.name == "relax.add" and isinstance(b, Accumulator):
        a, b = b, a
    if isinstance(a, Accumulator) and a.kind in ("dense", "conv2d", "batch_matmul") and math.isinf(a.lo) \
            and math.isinf(a.hi):
        real = b.value if isinstance(b, FloatConstant) else b.real if isinstance(b, QConstant) else None
        out_shape = a.attrs["out_shape"]
        if real is None or np.broadcast_shapes(real.shape, out_shape) != tuple(out_shape):
            return None
        channels = out_shape[a.channel_axis]
        vec = _channel_vector(real, len(out_shape), a.channel_axis, channels)
        if vec is None:
            return None
        bias = sign * vec if a.bias is None else a.bias + sign * vec
        if a.kind == "batch_matmul" and not np.all(bias == bias[0]):
            return None
        return Accumulator(a.kind, a.operands, a.attrs, a.scale, a.channel_axis, bias, a.lo, a.hi)
    return None


@rule("relax.multiply")
def _multiply(ctx, var, call):
    a, b = ctx.describe(call.args[0]), ctx.describe(call.args[1])
    if isinstance(a, QActivation) and isinstance(b, QActivation) and static_shape(var) is not None:
        return Accumulator("mul", (a, b), {"out_shape": static_shape(var)},
                           np.array([a.params.scale * b.params.scale]), channel_axis=-1)
    return None


def _clamped(source, lo: float, hi: float):
    if isinstance(source, (Accumulator, LinearSum)):
        return source.with_clamp(lo, hi)
    if isinstance(source, QActivation):
        return LinearSum((source,), (1.0,), out_shape=None).with_clamp(lo, hi)
    return None


@rule("relax.nn.relu")
def _relu(ctx, var, call):
    return _clamped(ctx.describe(call.args[0]), 0.0, math.inf)


@rule("relax.clip")
def _clip(ctx, var, call):
    lo, hi = prim_value(call.args[1]), prim_value(call.args[2])
    if lo is None or hi is None:
        return None
    return _clamped(ctx.describe(call.args[0]), lo, hi)


# ---------------------------------------------------------------------------------------------- pooling

def _avg_pool(x: QActivation, var, pool_size, strides, padding) -> Accumulator | None:
    count = pool_size[0] * pool_size[1]
    return Accumulator("avg_pool2d", (x,), {"pool_size": tuple(pool_size), "strides": tuple(strides),
                                            "padding": tuple(padding), "out_shape": static_shape(var)},
                       np.array([x.params.scale / count]), channel_axis=1)


@rule("relax.nn.avg_pool2d")
def _avg_pool2d(ctx, var, call):
    x, attrs = ctx.describe(call.args[0]), call.attrs
    padding = tuple(int(v) for v in attrs.padding)
    if (not isinstance(x, QActivation) or attrs.layout != "NCHW" or attrs.ceil_mode
            or any(int(d) != 1 for d in attrs.dilation) or (any(padding) and not attrs.count_include_pad)):
        return None
    return _avg_pool(x, var, [int(v) for v in attrs.pool_size], [int(v) for v in attrs.strides], padding)


@rule("relax.nn.adaptive_avg_pool2d")
def _adaptive_avg_pool2d(ctx, var, call):
    x, in_shape = ctx.describe(call.args[0]), static_shape(call.args[0])
    out = call.attrs.output_size
    if not isinstance(x, QActivation) or call.attrs.layout != "NCHW" or in_shape is None or out is None \
            or [int(v) for v in out] != [1, 1]:
        return None
    return _avg_pool(x, var, in_shape[2:], [1, 1], (0, 0, 0, 0))


@rule("relax.mean")
def _mean(ctx, var, call):
    x, in_shape = ctx.describe(call.args[0]), static_shape(call.args[0])
    if not isinstance(x, QActivation) or in_shape is None or len(in_shape) != 4 or not call.attrs.keepdims \
            or call.attrs.axis is None or sorted(int(a) % 4 for a in call.attrs.axis) != [2, 3]:
        return None
    return _avg_pool(x, var, in_shape[2:], [1, 1], (0, 0, 0, 0))
