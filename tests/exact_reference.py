"""The exact answer for a quantized ONNX model on any CPU, and whether ONNX Runtime gives it here.

Why this exists: on x86 CPUs without VNNI (AVX2-only Zen 3, AVX-512 without VNNI), ONNX Runtime's
int8 dot products (QLinearConv/QLinearMatMul/QGemm/MatMulInteger, the fused QDQ groups) use
``vpmaddubsw``, which saturates the int16 sum of two u8 x s8 products (DESIGN.md §3: on a
MobileNetV2-style QDQ model ORT matches the exact result on 70% of outputs, up to 8 steps off). So
ORT cannot be the expected answer of a test that must pass on every CPU. onnx's own
``ReferenceEvaluator`` (numpy) computes the ONNX semantics independently of the hardware; it is
the reference here, and ORT is an extra comparison only where it is exact (``ort_is_exact``).

Acceptance against the reference (``assert_matches_reference``): at least ``MIN_IDENTICAL`` of the
elements identical and none more than ``MAX_STEPS`` quantization step apart. The remaining
differences are rounding ties: the reference divides and rounds in float (half to even); qcompiler
requantizes with a 31-bit fixed-point multiplier (half up), so a value within float error of
k + 0.5 may land on either side.

``QCOMPILER_TEST_ASSUME_INEXACT_ORT=1`` makes ``ort_is_exact`` answer as on a CPU without VNNI, to
run the tests' non-VNNI branches on a VNNI machine.
"""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.target import host_features

#: Default-domain opset the reference runs at: onnx's DequantizeLinear has implementations from 19 on.
REFERENCE_OPSET = 21
#: The agreement asserted against the exact reference (see the module docstring).
MIN_IDENTICAL = 0.999
MAX_STEPS = 1.0

ORT_INEXACT_REASON = ("ONNX Runtime is not exact on this CPU: without VNNI its int8 kernels use vpmaddubsw, "
                      "which saturates int16 pair sums (only the exact reference is compared)")

MS_DOMAIN = "com.microsoft"

#: Per op: the oldest version whose meaning for int8/uint8/float32 tensors is unchanged at REFERENCE_OPSET
#: (later versions only added types, or attributes whose defaults keep the old behaviour). Ops not
#: listed are safe only if their schema did not change between the model's opset and REFERENCE_OPSET.
#: Not listed on purpose: Softmax/LogSoftmax < 13 (2-D coercion), Squeeze/Unsqueeze/Reduce* with axes
#: attributes (moved to inputs in 13/18), GroupNormalization < 21 (per-group scale), Resize, Split < 13.
SAFE_SINCE: dict[str, int] = {
    "QuantizeLinear": 10, "DequantizeLinear": 10, "QLinearMatMul": 10, "QLinearConv": 10,
    "Reshape": 5, "Flatten": 9, "Transpose": 1, "Constant": 1, "Cast": 6, "Identity": 1, "Shape": 1, "Size": 1,
    "Squeeze": 13, "Unsqueeze": 13, "Pad": 11, "AveragePool": 11, "Clip": 11, "Concat": 4, "Split": 13,
    "Add": 7, "Sub": 7, "Mul": 7, "Div": 7, "Pow": 7, "Relu": 6, "Sigmoid": 6, "LeakyRelu": 6, "Tanh": 6,
    "Exp": 6, "Sqrt": 6, "Neg": 6, "Reciprocal": 6, "Erf": 9, "Where": 9, "Expand": 8, "Gather": 11,
    "Slice": 11, "Max": 8, "Min": 8, "ConstantOfShape": 9, "If": 11,
}


# ---- is ONNX Runtime exact here? ------------------------------------------------------------------
def host_has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI: ORT's u8 x s8 kernels then use vpdpbusd, which accumulates in int32."""
    if os.environ.get("QCOMPILER_TEST_ASSUME_INEXACT_ORT") == "1":
        return False
    return bool({"avx512vnni", "avxvnni"} & host_features())


def ort_is_exact(model: onnx.ModelProto | str | Path | None = None) -> bool:
    """Whether ONNX Runtime computes the exact integer result on this host (for ``model`` if given):
    always on a VNNI host, elsewhere only for models ``ort_exact_without_vnni`` accepts."""
    return host_has_vnni() or (model is not None and ort_exact_without_vnni(model))


def ort_exact_without_vnni(model: onnx.ModelProto | str | Path) -> bool:
    """Whether ORT's int8 kernels are exact on ``model`` even without VNNI: every integer dot product
    has a constant int8 weight within [-64, 64] (``quantize_static(..., reduce_range=True)``: a pair of
    u8 x s7 products is at most 2 * 255 * 64 < 2**15, so vpmaddubsw cannot saturate), or there is no
    integer dot product at all (ORT's other int8 kernels do not take the vpmaddubsw path)."""
    return all(w is not None and w.dtype == np.int8 and int(np.abs(w.astype(np.int32)).max()) <= 64
               for w in _dot_product_weights(_load(model)))


#: QOperator ops that run an integer dot product, with the index of their weight input.
_DOT_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "MatMulInteger": 1, "ConvInteger": 1}
#: Float ops that ORT fuses into integer dot products when their inputs come from DequantizeLinear.
_QDQ_DOT_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def _dot_product_weights(model: onnx.ModelProto) -> Iterator[np.ndarray | None]:
    """The weight operand of every integer dot product ORT may run, None where it is not a constant."""
    constants = _constants(model.graph)
    producers = {o: n for n in _all_nodes(model.graph) for o in n.output}
    for node in _all_nodes(model.graph):
        if node.op_type in _DOT_WEIGHT_INPUT:
            yield constants.get(node.input[_DOT_WEIGHT_INPUT[node.op_type]])
        elif node.op_type in _QDQ_DOT_OPS and any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input):
            dq = producers.get(node.input[1])
            yield constants.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_nodes(sub)


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


# ---- the reference model --------------------------------------------------------------------------
def reference_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A copy of ``model`` that onnx's ReferenceEvaluator computes exactly.

    Default-domain opset REFERENCE_OPSET: a plain raise of the opset import where no op of the model
    changed meaning on the way (``SAFE_SINCE``), else onnx's version converter, which rewrites those
    ops (e.g. Softmax-11's 2-D coercion into Flatten/Softmax-13/Reshape).

    Float32 is computed as float64: ONNX evaluates DequantizeLinear -> MatMul -> QuantizeLinear in
    float32, whose accumulation can round a value like -43.499993 past the .5 tie (onnx's float32
    evaluation of the zoo transformer does); in float64 a sum of int8 products is exact to ~1e-13,
    so each rounding is the exact value's. Float32 values are exact in float64: scales keep their values.
    """
    model = copy.deepcopy(_load(model))
    changed = _ops_that_change_meaning(model)
    if changed:
        model = _convert_version(model, changed)
    else:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, REFERENCE_OPSET)
    _to_float64(model.graph)
    return model


def _ops_that_change_meaning(model: onnx.ModelProto) -> list[str]:
    """``Op-version`` of every default-domain node whose meaning at REFERENCE_OPSET is not its own."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), REFERENCE_OPSET)
    changed = []
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        old = onnx.defs.get_schema(node.op_type, version).since_version
        new = onnx.defs.get_schema(node.op_type, REFERENCE_OPSET).since_version
        if old != new and old < SAFE_SINCE.get(node.op_type, new):
            changed.append(f"{node.op_type}-{old}")
    return sorted(set(changed))


def _convert_version(model: onnx.ModelProto, changed: list[str]) -> onnx.ModelProto:
    from onnx import version_converter
    try:
        return version_converter.convert_version(model, REFERENCE_OPSET)
    except Exception as err:  # noqa: BLE001 - the converter raises bare RuntimeErrors of several kinds
        raise ValueError(f"{', '.join(changed)} changed meaning by opset {REFERENCE_OPSET} and onnx's version "
                         f"converter cannot adapt this model ({str(err).strip().splitlines()[0]})") from None


F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def _to_float64(graph: onnx.GraphProto) -> None:
    """Every float32 tensor of ``graph`` (and its subgraphs) becomes float64, in place."""
    for init in graph.initializer:
        if init.data_type == F32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type == F32:
            info.type.tensor_type.elem_type = F64
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == F32:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64), attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == F32:
                attr.i = F64
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                raise ValueError(f"Constant {node.name!r}: {attr.name} is float32 by definition; use a value tensor")
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _to_float64(sub)


class ExactReference:
    """onnx's ReferenceEvaluator on ``reference_model(model)`` with the com.microsoft QOperator ops.

    Feeds and results are in the model's own dtypes (float32 in, float32 out: a dequantized value is
    the same whether computed in float32 or rounded to it from float64).
    """

    def __init__(self, model: onnx.ModelProto | str | Path):
        from onnx.reference import ReferenceEvaluator
        original = _load(model)
        self._dtypes = {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
                        for v in [*original.graph.input, *original.graph.output] if v.type.tensor_type.elem_type}
        self._outputs = [o.name for o in original.graph.output]
        self._evaluator = ReferenceEvaluator(reference_model(original), new_ops=reference_ops())

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """Results of ``outputs`` (default: every graph output, in order) for ``feeds``."""
        names = list(outputs or self._outputs)
        wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
        results = self._evaluator.run(names, wide)
        return [r.astype(self._dtypes[n]) if n in self._dtypes else r for n, r in zip(names, results)]


def reference_run(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray],
                  outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """Run ``model`` once in the exact reference (see ``ExactReference``)."""
    return ExactReference(model).run(feeds, outputs)


# ---- comparing ---------------------------------------------------------------------------------------
def steps_apart(ours: np.ndarray, ref: np.ndarray, scale: float | None = None) -> np.ndarray:
    """|ours - ref| in quantization steps: integer differences, or float differences / ``scale``.

    Dequantized outputs lie on a grid of ``scale``; rounding the quotient to 1e-3 removes float noise.
    """
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    if np.issubdtype(ref.dtype, np.integer):
        assert ours.dtype == ref.dtype, f"dtype {ours.dtype} != reference {ref.dtype}"
        return np.abs(ours.astype(np.int64) - ref.astype(np.int64)).astype(np.float64)
    assert scale is not None, "a float output is compared in steps of its output scale"
    return np.round(np.abs(ours.astype(np.float64) - ref.astype(np.float64)) / scale, 3)


def agreement(ours: np.ndarray, ref: np.ndarray, scale: float | None = None) -> dict:
    """``identical`` (share of elements equal) and ``max_steps`` of ``ours`` against ``ref``."""
    steps = steps_apart(ours, ref, scale)
    return {"n": int(steps.size), "identical": float(np.mean(steps == 0)) if steps.size else 1.0,
            "max_steps": float(steps.max()) if steps.size else 0.0}


def assert_matches_reference(ours: np.ndarray, ref: np.ndarray, scale: float | None = None,
                             what: str = "output") -> dict:
    """>= MIN_IDENTICAL of the elements identical and none more than MAX_STEPS apart; returns the figures."""
    stats = agreement(ours, ref, scale)
    assert stats["identical"] >= MIN_IDENTICAL and stats["max_steps"] <= MAX_STEPS, f"{what}: {stats}"
    return stats


# ---- com.microsoft QOperator ops -------------------------------------------------------------------
# ReferenceEvaluator knows the standard ops only. ORT's contrib ops are defined (ContribOperators.md)
# as DequantizeLinear -> float op -> QuantizeLinear; these implement exactly that in float64 (the real
# result, rounded once, half to even), with the float op taken from onnx's own reference. QGemm and
# QLinearConv accumulate in integers.
def _reference_op(op_type: str, *inputs: np.ndarray, n_outputs: int = 1, **attrs):
    """One standard op evaluated by onnx's reference implementation (attributes that are None are omitted);
    its output, or the tuple of its ``n_outputs`` outputs."""
    from onnx.reference import ReferenceEvaluator
    names = [f"in{k}" for k in range(len(inputs))]
    outs = [f"out{k}" for k in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **{k: v for k, v in attrs.items() if v is not None})
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", REFERENCE_OPSET)])
    results = ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))
    return results[0] if n_outputs == 1 else tuple(results)


def _per_axis(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A scalar or 1-D scale/zero point shaped to broadcast along ``axis`` of an ``ndim``-D tensor."""
    values = np.asarray(values)
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    zp = 0 if zero_point is None else _per_axis(zero_point, q.ndim, axis).astype(np.float64)
    return (q.astype(np.float64) - zp) * _per_axis(scale, q.ndim, axis).astype(np.float64)


def _quantize(y: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """round(y / scale) + zero_point, half to even, saturated to ``dtype`` (the zero point's, if given)."""
    dtype = np.dtype(zero_point.dtype if zero_point is not None else dtype)
    zp = 0 if zero_point is None else np.asarray(zero_point, np.int64)
    q = np.rint(np.asarray(y, np.float64) / np.float64(np.asarray(scale).reshape(()))) + zp
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def _nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _contrib(cls: type) -> type:
    cls.op_domain = MS_DOMAIN
    return cls


@functools.cache
def reference_ops() -> list[type]:
    """The OpRun classes, made on first use: only tests that run the reference import onnx.reference."""
    from onnx.reference.op_run import OpRun

    class QLinearConv(OpRun):
        """ONNX QLinearConv for any spatial rank (onnx's own reshapes a per-channel w_scale for 2-D only).

        The integer convolution runs as a float64 Conv of the zero-point-shifted operands: exact while
        |acc| < 2**53, far beyond any int8 model's accumulators.
        """
        op_domain = ""

        def _run(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None,
                 auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None, strides=None,
                 channels_last=None):
            if channels_last:
                x = _nhwc_to_nchw(x)
            xs = x.astype(np.float64) - np.float64(0 if x_zero_point is None else x_zero_point)
            ws = w.astype(np.float64) - (0 if w_zero_point is None else _per_axis(w_zero_point, w.ndim, 0))
            bias = () if B is None else (B.astype(np.float64),)
            acc = _reference_op("Conv", xs, ws, *bias, auto_pad=auto_pad, dilations=dilations, group=group,
                                kernel_shape=kernel_shape, pads=pads, strides=strides)
            multiplier = (np.float64(x_scale) * _per_axis(w_scale, acc.ndim, 1).astype(np.float64)
                          / np.float64(y_scale))
            y = _quantize(acc * multiplier, 1.0, y_zero_point, x.dtype)
            return (_nchw_to_nhwc(y) if channels_last else y,)

    contrib_conv = _contrib(type("QLinearConv", (QLinearConv,), {}))

    class DynamicQuantizeLinear(OpRun):
        """Defined in float32 (its scale is a float32 value): evaluated on the float32 input, scale widened."""
        op_domain = ""

        def _run(self, x):
            y, scale, zero_point = _reference_op("DynamicQuantizeLinear", x.astype(np.float32), n_outputs=3)
            return y, scale.astype(np.float64), zero_point

    @_contrib
    class QGemm(OpRun):
        """alpha * a_scale * b_scale * ((A - a_zp)' (B - b_zp)' + C), requantized if y_scale is given."""

        def _run(self, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c=None, y_scale=None,
                 y_zero_point=None, alpha=1.0, transA=0, transB=0):
            a_int = a.astype(np.int64) - np.int64(0 if a_zero_point is None else a_zero_point)
            b_int = b.astype(np.int64) - (0 if b_zero_point is None
                                          else _per_axis(b_zero_point, 2, 0 if transB else 1).astype(np.int64))
            acc = (a_int.T if transA else a_int) @ (b_int.T if transB else b_int)
            if c is not None:
                acc = acc + c.astype(np.int64)
            y = acc * (np.float64(alpha) * np.float64(a_scale) * np.asarray(b_scale, np.float64).reshape(-1))
            if y_scale is None:
                return (y.astype(np.float32),)
            return (_quantize(y, y_scale, y_zero_point, a.dtype),)

    def binary(name: str, fn):
        def _run(self, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point=None):
            y = fn(_dequantize(a, a_scale, a_zero_point), _dequantize(b, b_scale, b_zero_point))
            return (_quantize(y, c_scale, c_zero_point, a.dtype),)
        return _contrib(type(name, (OpRun,), {"_run": _run}))

    def unary(name: str, fn):
        def _run(self, x, x_scale, x_zero_point, y_scale, y_zero_point=None, **attrs):
            return (_quantize(fn(_dequantize(x, x_scale, x_zero_point), **attrs), y_scale, y_zero_point, x.dtype),)
        return _contrib(type(name, (OpRun,), {"_run": _run}))

    def leaky_relu(x, alpha=0.01):
        return np.where(x < 0, alpha * x, x)

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    def softmax(x, opset, axis=-1):
        if opset >= 13:
            return _reference_op("Softmax", x, axis=axis)
        axis = axis % x.ndim  # opset < 13: over the 2-D coercion at axis
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return _reference_op("Softmax", flat, axis=1).reshape(x.shape)

    def average_pool(x, channels_last=0, **attrs):
        x = _nhwc_to_nchw(x) if channels_last else x
        y = _reference_op("AveragePool", x, **attrs)
        return _nchw_to_nhwc(y) if channels_last else y

    def global_average_pool(x, channels_last=0):
        axes = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
        return x.mean(axis=axes, keepdims=True)

    class GatherElements(OpRun):
        """ONNX GatherElements: onnx's own fails when the gathered axis is longer than 64 (np.choose's limit,
        and its fallback reshapes wrongly): BERT's token-type and position ids gather from 512 entries."""
        op_domain = ""

        def _run(self, data, indices, axis=None):
            axis = 0 if axis is None else axis
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, indices.astype(np.int64), axis=axis),)

    class AveragePool(OpRun):
        """ONNX AveragePool as ONNX Runtime's float kernel and torch compute it: a window is clipped to the
        padded input (``count_include_pad``) or to the input, and divided by the size of what remains.
        onnx's own divides a window that reaches past the input by the whole kernel (transformers'
        EfficientNet pools its 7x7 map with a 1280x1280 ``ceil_mode`` window: onnx gives ~0, ORT the mean)."""
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None, dilations=None,
                 kernel_shape=None, pads=None, strides=None):
            import itertools
            rank = len(kernel_shape)
            if auto_pad not in (None, "NOTSET", "VALID", b"NOTSET", b"VALID") or any(d != 1 for d in dilations or []):
                raise NotImplementedError("AveragePool with auto_pad SAME or dilations")
            pads = list(pads or [0] * 2 * rank)
            strides = list(strides or [1] * rank)
            spatial = x.shape[2:]
            out_shape = []
            for i in range(rank):
                span = spatial[i] + pads[i] + pads[i + rank] - kernel_shape[i]
                n = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
                if ceil_mode and (n - 1) * strides[i] >= spatial[i] + pads[i]:
                    n -= 1  # the last window would start in the end padding
                out_shape.append(n)
            y = np.zeros(x.shape[:2] + tuple(out_shape), dtype=x.dtype)
            for out in itertools.product(*(range(n) for n in out_shape)):
                lo = [o * strides[i] - pads[i] for i, o in enumerate(out)]
                hi = [min(lo[i] + kernel_shape[i], spatial[i] + pads[i + rank]) for i in range(rank)]
                count = int(np.prod([h - l for l, h in zip(lo, hi)]))
                lo, hi = [max(v, 0) for v in lo], [min(h, spatial[i]) for i, h in enumerate(hi)]
                if not count_include_pad:
                    count = int(np.prod([h - l for l, h in zip(lo, hi)]))
                window = x[(slice(None), slice(None)) + tuple(slice(l, h) for l, h in zip(lo, hi))]
                y[(slice(None), slice(None)) + out] = window.sum(axis=tuple(range(2, 2 + rank))) / count
            return (y,)

    @_contrib
    class QLinearConcat(OpRun):
        def _run(self, y_scale, y_zero_point, *triples, axis=None):
            parts = [_dequantize(*triples[k:k + 3]) for k in range(0, len(triples), 3)]
            return (_quantize(np.concatenate(parts, axis=axis), y_scale, y_zero_point, triples[0].dtype),)

    @_contrib
    class QLinearWhere(OpRun):
        def _run(self, condition, x, x_scale, x_zero_point, y, y_scale, y_zero_point, z_scale, z_zero_point):
            z = np.where(condition, _dequantize(x, x_scale, x_zero_point), _dequantize(y, y_scale, y_zero_point))
            return (_quantize(z, z_scale, z_zero_point, x.dtype),)

    return [QLinearConv, GatherElements, AveragePool, contrib_conv, DynamicQuantizeLinear, QGemm, QLinearConcat, QLinearWhere,
            binary("QLinearAdd", np.add), binary("QLinearMul", np.multiply),
            unary("QLinearLeakyRelu", leaky_relu), unary("QLinearSigmoid", sigmoid),
            unary("QLinearSoftmax", softmax), unary("QLinearAveragePool", average_pool),
            unary("QLinearGlobalAveragePool", global_average_pool)]


