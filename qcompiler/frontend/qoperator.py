"""Canonicalize ONNX QOperator models into QDQ form.

ONNX has two ways of writing an int8 network. *QOperator* models use fused integer ops
(``QLinearConv``, ``QLinearMatMul``, ``MatMulInteger``, ``ConvInteger``, and onnxruntime's
``com.microsoft`` contrib ops ``QGemm``, ``QLinearAdd``, ...). *QDQ* models use plain float ops
wrapped in ``DequantizeLinear``/``QuantizeLinear`` pairs. TVM's Relax ONNX importer only understands
the second form, and qcompiler's own passes pattern-match ``DequantizeLinear -> op ->
QuantizeLinear``, so every QOperator node is rewritten here, at the ONNX level, into exactly that
pattern before import.

The rewrite is *semantic*, not bit-exact: a QOperator kernel requantizes its int32 accumulator with
one fused multiplier (or a lookup table), while the QDQ form computes the op in float and rounds
once in ``QuantizeLinear`` (half-to-even). The two agree except where float rounding puts a value
on the other side of a rounding boundary, i.e. by at most one quantization step on a small
fraction of elements. ``MatMulInteger``/``ConvInteger`` return int32; their QDQ form accumulates
in float32, which is exact as long as every partial sum stays below 2**24 in magnitude --
guaranteed when ``K * max|a - a_zp| * max|b - b_zp| < 2**24`` (``K`` = reduction length, e.g.
``K <= 258`` for any uint8/int8 operands).

Each rewritten node keeps its output names, so the rest of the graph is untouched. Scale and
zero-point initializers stay initializers; new constants get unique names derived from the node
name. Per-axis ``DequantizeLinear`` needs opset 13; a model below that is converted with
``onnx.version_converter`` (which also rewrites ops whose semantics changed, e.g. ``Softmax`` and
``Unsqueeze``) before the rewrite.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import (AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, helper,
                  numpy_helper)

from ..errors import QCompilerError
from .onnx_large import infer_shapes

__all__ = ["QOPERATOR_OPS", "qoperator_to_qdq"]

MS_DOMAIN = "com.microsoft"
PER_AXIS_OPSET = 13  # first opset whose DequantizeLinear/QuantizeLinear take an `axis`
_QDQ_ADVICE = (
    "re-export the model in QDQ format with "
    "onnxruntime.quantization.quantize_static(quant_format=QuantFormat.QDQ)"
)
# com.microsoft integer/quantized ops that are not rewritten here. Anything in this set, any
# `QOrdered*` contrib op and any `QLinear*` op without a rewrite is rejected instead of being
# passed on to an importer that would fail on it much less clearly.
_UNSUPPORTED_MS_QUANT_OPS = frozenset({
    "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "DynamicQuantizeLSTM", "MulInteger", "ReduceSumInteger", "QMoE", "QuantizeWithOrder",
    "DequantizeWithOrder", "QuantizeBFP", "DequantizeBFP",
})


def _domain(node: NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _describe(node: NodeProto) -> str:
    """How error messages name a node: by name, or by its first output for unnamed nodes."""
    where = f"'{node.name}'" if node.name else f"<unnamed, output '{node.output[0]}'>"
    domain = _domain(node)
    return f"node {where} ({domain + '::' if domain else ''}{node.op_type})"


def _unsupported(node: NodeProto, why: str) -> QCompilerError:
    return QCompilerError(f"{_describe(node)}: {why}; {_QDQ_ADVICE}")


def _numel(shape: tuple[int | None, ...] | None) -> int | None:
    if shape is None or any(d is None for d in shape):
        return None
    return math.prod(shape)


@dataclass(frozen=True)
class _QParams:
    """Scale and zero point ready for Q/DQ: rank 0 when `axis` is None, else equal-length 1-D."""

    scale: str
    zero_point: str | None
    axis: int | None = None
    size: int = 1  # number of per-axis entries


class _Rewriter:
    """Graph facts the rewrite functions query, plus the sink for the nodes/constants they emit.

    ONNX names are unique model-wide (subgraphs may read but not shadow outer names), so shapes,
    constant values and the set of used names live in flat model-wide maps; only the list of new
    initializers is per-graph, so that constants are created in the graph that uses them.
    """

    def __init__(self, model: ModelProto):
        self.opset = _default_opset(model)
        self.needs_per_axis = False
        self.names: set[str] = set()
        self.values: dict[str, np.ndarray] = {}
        self.types: dict[str, tuple[int, tuple[int | None, ...] | None]] = {}
        self._memo: dict[tuple, str] = {}
        self._prefix = ""
        self._nodes: list[NodeProto] = []
        self._inits: list[TensorProto] = []
        try:  # only for shapes of tensors produced by standard ops; contrib outputs stay unknown
            inferred = infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001 - inference is an optional source of facts
            inferred = model
        for graph in _graphs(inferred.graph):
            for vi in [*graph.input, *graph.output, *graph.value_info]:
                self._record_type(vi)
        for graph in _graphs(model.graph):
            for vi in [*graph.input, *graph.output, *graph.value_info]:
                self._record_type(vi)
                self.names.add(vi.name)
            for init in graph.initializer:
                self.values[init.name] = numpy_helper.to_array(init)
                self.names.add(init.name)
            for node in graph.node:
                self.names.update(node.input)
                self.names.update(node.output)
                self.names.add(node.name)
                if node.op_type == "Constant" and _domain(node) == "":
                    value = _constant_value(node)
                    if value is not None:
                        self.values[node.output[0]] = value

    def _record_type(self, vi: onnx.ValueInfoProto) -> None:
        if not vi.type.HasField("tensor_type"):
            return
        tt = vi.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        self.types[vi.name] = (tt.elem_type, shape)

    # ---- facts -------------------------------------------------------------------------------
    def value(self, name: str) -> np.ndarray | None:
        return self.values.get(name)

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        if name in self.values:
            return tuple(self.values[name].shape)
        return self.types.get(name, (0, None))[1]

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def elem_type(self, name: str) -> int | None:
        if name in self.values:
            return helper.np_dtype_to_tensor_dtype(self.values[name].dtype)
        elem = self.types.get(name, (0, None))[0]
        return elem or None

    # ---- emission ----------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.names or not name:
            i += 1
            name = f"{hint}_{i}"
        self.names.add(name)
        return name

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(f"{self._prefix}/{hint}")
        array = np.array(array, order="C")  # not ascontiguousarray: it turns rank 0 into rank 1
        self._inits.append(numpy_helper.from_array(array, name))
        self.values[name] = array
        return name

    def memo(self, key: tuple, make: Callable[[], str]) -> str:
        """Reuse a derived constant (e.g. a reshaped scale used by many nodes) within one graph."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def op(self, op_type: str, inputs: Iterable[str], *, out: str | None = None,
           attrs: Iterable[AttributeProto] = (), elem_type: int | None = None, **kwattrs) -> str:
        """Emit one single-output standard-domain node and return its output name."""
        output = out if out is not None else self.fresh(f"{self._prefix}/{op_type}_out")
        node = helper.make_node(op_type, list(inputs), [output],
                                name=self.fresh(f"{self._prefix}/{op_type}"), **kwattrs)
        node.attribute.extend(attrs)
        self._nodes.append(node)
        if elem_type is not None:
            self.types[output] = (elem_type, None)
        return output

    def rewrite_graph(self, graph: GraphProto) -> None:
        """Rewrite `graph` (and its control-flow bodies) in place."""
        saved_inits, saved_memo, self._inits, self._memo = self._inits, self._memo, [], {}
        new_nodes: list[NodeProto] = []
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    self.rewrite_graph(attr.g)
                elif attr.type == AttributeProto.GRAPHS:
                    for body in attr.graphs:
                        self.rewrite_graph(body)
            rewrite = _REWRITES.get((_domain(node), node.op_type))
            if rewrite is None:
                if _looks_quantized(node):
                    raise _unsupported(node, "this QOperator op has no QDQ rewrite in qcompiler")
                new_nodes.append(node)
                continue
            self._prefix = node.name or node.output[0]
            self._nodes = []
            rewrite(self, node)
            new_nodes.extend(self._nodes)
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(self._inits)
        self._inits, self._memo = saved_inits, saved_memo


def _graphs(graph: GraphProto) -> Iterator[GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for body in attr.graphs:
                    yield from _graphs(body)


def _constant_value(node: NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(attr), np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(attr), np.int64)
    return None


def _default_opset(model: ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise QCompilerError(f"model '{model.graph.name}' has no default-domain opset import; "
                         "re-export it with a standard ONNX exporter")


def _looks_quantized(node: NodeProto) -> bool:
    if node.op_type.startswith("QLinear"):
        return True
    return _domain(node) == MS_DOMAIN and (
        node.op_type in _UNSUPPORTED_MS_QUANT_OPS or node.op_type.startswith("QOrdered"))


def _input(node: NodeProto, i: int) -> str | None:
    """The i-th input, or None when it is absent or the empty-name placeholder for an optional."""
    return node.input[i] if i < len(node.input) and node.input[i] else None


def _attr(node: NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _required_attr(node: NodeProto, name: str):
    value = _attr(node, name)
    if value is None:
        raise _unsupported(node, f"required attribute '{name}' is missing")
    return value


def _attrs_except(node: NodeProto, *dropped: str) -> list[AttributeProto]:
    return [copy.deepcopy(a) for a in node.attribute if a.name not in dropped]


# ---- quantization parameters ----------------------------------------------------------------
def _as_scalar(rw: _Rewriter, name: str) -> str:
    """A 1-element scale/zero point as a rank-0 tensor.

    ONNX runtimes accept ``[1]`` for per-tensor parameters, but an importer may treat a 1-D
    parameter as per-axis on the default axis 1 (TVM's does), so per-tensor is made explicit.
    """
    shape = rw.shape(name)
    if shape is None or shape == ():
        return name
    value = rw.value(name)
    if value is not None:
        return rw.memo(("scalar", name), lambda: rw.const(f"{name}_scalar", value.reshape(())))
    return rw.memo(("scalar", name), lambda: rw.op(
        "Reshape", [name, rw.const("scalar_shape", np.zeros(0, np.int64))]))


def _as_vector(rw: _Rewriter, node: NodeProto, name: str, n: int) -> str:
    """A per-axis parameter as a 1-D tensor of length `n` (broadcasting a 1-element one)."""
    shape = rw.shape(name)
    if shape == (n,):
        return name
    numel = _numel(shape)
    if numel == 1 or (numel == n and sum(d != 1 for d in shape) <= 1):
        value = rw.value(name)
        if value is not None:
            vec = np.broadcast_to(value.reshape(-1), (n,)).copy()
            return rw.memo(("vector", name, n), lambda: rw.const(f"{name}_vec", vec))
        return rw.memo(("vector", name, n), lambda: rw.op(
            "Expand" if numel == 1 else "Reshape",
            [name, rw.const("vector_shape", np.array([n], np.int64))]))
    raise _unsupported(node, f"quantization parameter '{name}' has shape {shape}, which is "
                             "neither per-tensor nor per-axis along a single axis")


def _qparams(rw: _Rewriter, node: NodeProto, scale: str, zero_point: str | None, *,
             axis: int | None = None) -> _QParams:
    """Normalize a (scale, zero point) pair for DequantizeLinear/QuantizeLinear.

    `axis` is where a per-axis parameter applies; None means the op only allows per-tensor
    parameters, in which case parameters of unknown shape are trusted to be scalars.
    """
    sizes = [_numel(rw.shape(p)) for p in (scale, zero_point) if p is not None]
    if None in sizes:
        if axis is None:
            return _QParams(scale, zero_point)
        raise _unsupported(node, f"cannot tell whether '{scale}' is a per-tensor or per-axis "
                                 "scale because its shape is unknown")
    n = max(sizes)
    if n == 1:
        return _QParams(_as_scalar(rw, scale),
                        None if zero_point is None else _as_scalar(rw, zero_point))
    if axis is None:
        raise _unsupported(node, f"'{scale}' has {n} elements but this input only supports "
                                 "per-tensor quantization")
    rw.needs_per_axis = True
    return _QParams(_as_vector(rw, node, scale, n),
                    None if zero_point is None else _as_vector(rw, node, zero_point, n), axis, n)


def _axis(rw: _Rewriter, tensor: str, from_end: int) -> int:
    """Axis `rank - from_end` of `tensor`, negative (valid since opset 13) when rank is unknown."""
    rank = rw.rank(tensor)
    return -from_end if rank is None else rank - from_end


def _dequantize(rw: _Rewriter, x: str, qp: _QParams) -> str:
    inputs = [x, qp.scale] + ([qp.zero_point] if qp.zero_point else [])
    extra = {} if qp.axis is None else {"axis": qp.axis}
    return rw.op("DequantizeLinear", inputs, elem_type=TensorProto.FLOAT, **extra)


def _zero_point_or_zero(rw: _Rewriter, node: NodeProto, zero_point: str | None,
                        like: str) -> str:
    """An explicit output zero point: an absent one means 0 in the dtype of the input `like`."""
    if zero_point is not None:
        return zero_point
    elem = rw.elem_type(like)
    if elem not in (TensorProto.UINT8, TensorProto.INT8):
        raise _unsupported(node, f"the output zero point is omitted and the type of '{like}' "
                                 "is unknown, so the output type cannot be determined")
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    return rw.memo(("zero", elem), lambda: rw.const("zero_point", np.zeros((), dtype)))


def _quantize(rw: _Rewriter, node: NodeProto, y: str, scale: str, zero_point: str | None, *,
              like: str, out: str, rank: int | None = None) -> str:
    """QuantizeLinear into the original output name `out`, per-tensor.

    Contrib ops are opaque to ONNX shape inference, so the output's dtype and (when the caller
    knows it) rank are recorded for later rewrites that need them (e.g. channels_last pools).
    """
    zp = _zero_point_or_zero(rw, node, zero_point, like)
    qp = _qparams(rw, node, scale, zp)
    q = rw.op("QuantizeLinear", [y, qp.scale, qp.zero_point], out=out)
    rw.types[q] = (rw.elem_type(zp) or 0, None if rank is None else (None,) * rank)
    return q


def _requantized(rw: _Rewriter, node: NodeProto, x: str, x_scale: str, x_zp: str | None,
                 y_scale: str, y_zp: str | None, float_op: Callable[[str], str]) -> None:
    """The common DQ -> float op -> Q shape of a shape-preserving unary QLinear op."""
    xf = _dequantize(rw, x, _qparams(rw, node, x_scale, x_zp))
    _quantize(rw, node, float_op(xf), y_scale, y_zp, like=x, out=node.output[0], rank=rw.rank(x))


def _channels_last_rank(rw: _Rewriter, node: NodeProto, x: str, spatial: int | None) -> int | None:
    """Rank of a channels_last input, or None when the op is channels-first."""
    if not _attr(node, "channels_last", 0):
        return None
    rank = spatial + 2 if spatial is not None else rw.rank(x)
    if rank is None:
        raise _unsupported(node, f"channels_last=1 but the rank of '{x}' is unknown")
    return rank


def _to_channels_first(rw: _Rewriter, x: str, rank: int | None) -> str:
    # Transposing the int8 tensor (not the float one) keeps DQ -> op -> Q contiguous.
    if rank is None:
        return x
    return rw.op("Transpose", [x], perm=[0, rank - 1, *range(1, rank - 1)],
                 elem_type=rw.elem_type(x))


def _to_channels_last(rw: _Rewriter, y: str, rank: int | None, out: str) -> str:
    if rank is None:
        return y
    return rw.op("Transpose", [y], out=out, perm=[0, *range(2, rank), 1])


def _quantize_maybe_nhwc(rw: _Rewriter, node: NodeProto, yf: str, y_scale: str, y_zp: str | None,
                         *, like: str, rank: int | None) -> None:
    """Quantize a channels-first float result into the node's output, restoring NHWC if needed."""
    out = node.output[0]
    if rank is None:
        _quantize(rw, node, yf, y_scale, y_zp, like=like, out=out, rank=rw.rank(node.input[0]))
    else:
        q = _quantize(rw, node, yf, y_scale, y_zp, like=like, out=rw.fresh(f"{out}_nchw"))
        _to_channels_last(rw, q, rank, out)
        rw.types[out] = (rw.types[q][0], (None,) * rank)


def _bias_scale(rw: _Rewriter, a: _QParams, b: _QParams, factor: float = 1.0) -> str:
    """`factor * a_scale * b_scale` (per-axis if b is), folded when both scales are constants."""
    av, bv = rw.value(a.scale), rw.value(b.scale)
    if av is not None and bv is not None:
        return rw.const("bias_scale", (np.float32(factor) * av * bv).astype(bv.dtype))
    scale = rw.op("Mul", [a.scale, b.scale])
    if factor != 1.0:
        scale = rw.op("Mul", [scale, rw.const("alpha", np.array(factor, np.float32))])
    return scale


def _dequantize_bias(rw: _Rewriter, bias: str, scale: str, weight: _QParams, axis: int) -> str:
    """DequantizeLinear of an int32 bias at the accumulator scale, zero point 0.

    The bias is per-axis (along `axis` of the bias) exactly when the weight is.
    """
    if weight.axis is None:
        zp = rw.memo(("bias_zero",), lambda: rw.const("bias_zero_point", np.zeros((), np.int32)))
        return _dequantize(rw, bias, _QParams(scale, zp))
    zp = rw.const("bias_zero_point", np.zeros((weight.size,), np.int32))
    return _dequantize(rw, bias, _QParams(scale, zp, axis, weight.size))


# ---- rewrites, one per op family ----------------------------------------------------------------
def _qlinear_conv(rw: _Rewriter, node: NodeProto) -> None:
    """QLinearConv (ONNX, or com.microsoft with channels_last): bias is int32 at x_scale*w_scale."""
    x, xs, xz, w, ws, wz, ys, yz = (_input(node, i) for i in range(8))
    bias = _input(node, 8)
    kernel, w_rank = _attr(node, "kernel_shape"), rw.rank(w)
    spatial = len(kernel) if kernel else (None if w_rank is None else w_rank - 2)
    rank = _channels_last_rank(rw, node, x, spatial)
    xq = _qparams(rw, node, xs, xz)
    wq = _qparams(rw, node, ws, wz, axis=0)
    inputs = [_dequantize(rw, _to_channels_first(rw, x, rank), xq), _dequantize(rw, w, wq)]
    if bias is not None:
        inputs.append(_dequantize_bias(rw, bias, _bias_scale(rw, xq, wq), wq, axis=0))
    yf = rw.op("Conv", inputs, attrs=_attrs_except(node, "channels_last"))
    _quantize_maybe_nhwc(rw, node, yf, ys, yz, like=yz or x, rank=rank)


def _conv_integer(rw: _Rewriter, node: NodeProto) -> None:
    """ConvInteger: int32 result, so DQ at scale 1 and Cast the float conv back to int32."""
    x, w, xz, wz = (_input(node, i) for i in range(4))
    xf = _dequantize(rw, x, _unit_qparams(rw, node, x, xz, axis=None))
    wf = _dequantize(rw, w, _unit_qparams(rw, node, w, wz, axis=0))
    yf = rw.op("Conv", [xf, wf], attrs=_attrs_except(node))
    rw.op("Cast", [yf], out=node.output[0], to=TensorProto.INT32, elem_type=TensorProto.INT32)


def _matmul_integer(rw: _Rewriter, node: NodeProto) -> None:
    """MatMulInteger: per-row A / per-column B zero points become per-axis DQ at scale 1."""
    a, b, az, bz = (_input(node, i) for i in range(4))
    af = _dequantize(rw, a, _unit_qparams(rw, node, a, az, axis=_axis(rw, a, 2)))
    bf = _dequantize(rw, b, _unit_qparams(rw, node, b, bz, axis=_axis(rw, b, 1)))
    yf = rw.op("MatMul", [af, bf])
    rw.op("Cast", [yf], out=node.output[0], to=TensorProto.INT32, elem_type=TensorProto.INT32)


def _unit_qparams(rw: _Rewriter, node: NodeProto, x: str, zp: str | None,
                  axis: int | None) -> _QParams:
    """Scale-1 DQ parameters for an integer op, shaped like its (possibly per-axis) zero point."""
    n = 1 if zp is None else _numel(rw.shape(zp))
    if n is None and axis is None:
        n = 1  # the op only allows a scalar zero point
    if n is None:
        raise _unsupported(node, f"the shape of zero point '{zp}' is unknown")
    one = rw.memo(("one", n), lambda: rw.const(
        "unit_scale", np.ones(() if n == 1 else (n,), np.float32)))
    if zp is None:
        return _QParams(one, None)
    return _qparams(rw, node, one, zp, axis=axis)


def _qlinear_matmul(rw: _Rewriter, node: NodeProto) -> None:
    """QLinearMatMul: b_scale/b_zero_point may be per column (the last axis of B)."""
    a, as_, az, b, bs, bz, ys, yz = (_input(node, i) for i in range(8))
    af = _dequantize(rw, a, _qparams(rw, node, as_, az, axis=_axis(rw, a, 2)))
    bf = _dequantize(rw, b, _qparams(rw, node, bs, bz, axis=_axis(rw, b, 1)))
    _quantize(rw, node, rw.op("MatMul", [af, bf]), ys, yz, like=yz or a, out=node.output[0])


def _qgemm(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QGemm: Y = alpha * A' B' + C, C int32 at alpha*a_scale*b_scale (ORT kernel).

    ORT adds C into the int32 accumulator before scaling by alpha*a_scale*b_scale, so that is
    C's scale (the schema text's `alpha / beta` refers to the float Gemm it came from). Without
    y_scale/y_zero_point the output is float.
    """
    a, as_, az, b, bs, bz, c, ys, yz = (_input(node, i) for i in range(9))
    if (ys is None) != (yz is None):
        raise _unsupported(node, "QGemm needs both or neither of y_scale and y_zero_point")
    alpha = float(_attr(node, "alpha", 1.0))
    trans_b = int(_attr(node, "transB", 0))
    aq = _qparams(rw, node, as_, az)
    bq = _qparams(rw, node, bs, bz, axis=0 if trans_b else 1)
    inputs = [_dequantize(rw, a, aq), _dequantize(rw, b, bq)]
    if c is not None:
        c_axis = 0
        if bq.axis is not None:  # per-column scale: C must vary along N, its last axis
            c_shape = rw.shape(c)
            if c_shape is None or len(c_shape) not in (1, 2) or c_shape[-1] in (None, 1):
                raise _unsupported(node, f"per-column b_scale with bias '{c}' of shape {c_shape} "
                                         "(need (N,), (1, N) or (M, N))")
            c_axis = len(c_shape) - 1
        inputs.append(_dequantize_bias(rw, c, _bias_scale(rw, aq, bq, alpha), bq, axis=c_axis))
    elif rw.opset < 11:  # Gemm's C is optional only from opset 11
        inputs.append(rw.const("zero_bias", np.zeros((), np.float32)))
    attrs = dict(alpha=alpha, beta=1.0, transA=int(_attr(node, "transA", 0)), transB=trans_b)
    if ys is None:
        rw.op("Gemm", inputs, out=node.output[0], elem_type=TensorProto.FLOAT, **attrs)
    else:
        _quantize(rw, node, rw.op("Gemm", inputs, **attrs), ys, yz, like=yz, out=node.output[0],
                  rank=2)


def _qlinear_binary(float_op: str) -> Callable[[_Rewriter, NodeProto], None]:
    """com.microsoft QLinearAdd/QLinearMul: (A, As, Az?, B, Bs, Bz?, Cs, Cz?), broadcasting."""

    def rewrite(rw: _Rewriter, node: NodeProto) -> None:
        a, as_, az, b, bs, bz, cs, cz = (_input(node, i) for i in range(8))
        af = _dequantize(rw, a, _qparams(rw, node, as_, az))
        bf = _dequantize(rw, b, _qparams(rw, node, bs, bz))
        ranks = (rw.rank(a), rw.rank(b))
        _quantize(rw, node, rw.op(float_op, [af, bf]), cs, cz, like=a, out=node.output[0],
                  rank=None if None in ranks else max(ranks))

    rewrite.__name__ = f"_qlinear_{float_op.lower()}"
    return rewrite


def _qlinear_average_pool(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QLinearAveragePool: same attributes as AveragePool plus channels_last."""
    x, xs, xz, ys, yz = (_input(node, i) for i in range(5))
    rank = _channels_last_rank(rw, node, x, len(_attr(node, "kernel_shape", [])))
    xf = _dequantize(rw, _to_channels_first(rw, x, rank), _qparams(rw, node, xs, xz))
    yf = rw.op("AveragePool", [xf], attrs=_attrs_except(node, "channels_last"))
    _quantize_maybe_nhwc(rw, node, yf, ys, yz, like=x, rank=rank)


def _qlinear_global_average_pool(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QLinearGlobalAveragePool (channels_last needs a known input rank)."""
    x, xs, xz, ys, yz = (_input(node, i) for i in range(5))
    rank = _channels_last_rank(rw, node, x, None)
    xf = _dequantize(rw, _to_channels_first(rw, x, rank), _qparams(rw, node, xs, xz))
    _quantize_maybe_nhwc(rw, node, rw.op("GlobalAveragePool", [xf]), ys, yz, like=x, rank=rank)


def _qlinear_concat(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QLinearConcat: (Y_scale, Y_zp, then X_i, X_i_scale, X_i_zp triples)."""
    ys, yz = _input(node, 0), _input(node, 1)
    if len(node.input) < 5 or (len(node.input) - 2) % 3:
        raise _unsupported(node, "inputs must be Y_scale, Y_zero_point and (X, scale, zero point) "
                                 "triples")
    parts = [_dequantize(rw, node.input[i],
                         _qparams(rw, node, node.input[i + 1], _input(node, i + 2)))
             for i in range(2, len(node.input), 3)]
    yf = rw.op("Concat", parts, axis=int(_required_attr(node, "axis")))
    _quantize(rw, node, yf, ys, yz, like=node.input[2], out=node.output[0],
              rank=rw.rank(node.input[2]))


def _qlinear_leaky_relu(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QLinearLeakyRelu (alpha defaults to 0.01 as in LeakyRelu)."""
    alpha = float(_attr(node, "alpha", 0.01))
    _requantized(rw, node, *(_input(node, i) for i in range(5)),
                 lambda xf: rw.op("LeakyRelu", [xf], alpha=alpha))


def _qlinear_sigmoid(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QLinearSigmoid."""
    _requantized(rw, node, *(_input(node, i) for i in range(5)),
                 lambda xf: rw.op("Sigmoid", [xf]))


def _qlinear_softmax(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QLinearSoftmax: the `opset` attribute picks Softmax semantics.

    With `opset` < 13 it normalizes over all dims from `axis` on, from 13 over `axis` alone. An
    absent `axis` is the schema default -1 for every `opset` (onnxruntime fills schema defaults
    in before its kernel's opset-dependent fallback could apply), not legacy Softmax's 1. The
    float Softmax emitted here has the model's semantics, so a mismatch is bridged with
    Flatten/Reshape or rejected.
    """
    legacy = int(_required_attr(node, "opset")) < 13
    axis = int(_attr(node, "axis", -1))
    x = _input(node, 0)
    rank = rw.rank(x)
    last = axis == -1 or (rank is not None and axis == rank - 1)

    def softmax(xf: str) -> str:
        if legacy == (rw.opset < 13):
            return rw.op("Softmax", [xf], axis=rank - 1 if last and rank is not None else axis)
        if last:
            return rw.op("Softmax", [xf], axis=-1 if rank is None else rank - 1)
        if not legacy:
            raise _unsupported(node, f"opset-13 softmax over axis {axis} cannot be expressed in "
                                     f"this opset-{rw.opset} model")
        flat = rw.op("Flatten", [xf], axis=axis)
        return rw.op("Reshape", [rw.op("Softmax", [flat], axis=-1), rw.op("Shape", [xf])])

    _requantized(rw, node, x, _input(node, 1), _input(node, 2), _input(node, 3), _input(node, 4),
                 softmax)


def _qlinear_where(rw: _Rewriter, node: NodeProto) -> None:
    """com.microsoft QLinearWhere: (cond, X, xs, xz, Y, ys, yz, zs, zz)."""
    cond, x, xs, xz, y, ys, yz, zs, zz = (_input(node, i) for i in range(9))
    xf = _dequantize(rw, x, _qparams(rw, node, xs, xz))
    yf = _dequantize(rw, y, _qparams(rw, node, ys, yz))
    _quantize(rw, node, rw.op("Where", [cond, xf, yf]), zs, zz, like=x, out=node.output[0])


_REWRITES: dict[tuple[str, str], Callable[[_Rewriter, NodeProto], None]] = {
    ("", "QLinearConv"): _qlinear_conv,
    (MS_DOMAIN, "QLinearConv"): _qlinear_conv,  # ORT's NHWC-capable variant
    ("", "QLinearMatMul"): _qlinear_matmul,
    ("", "MatMulInteger"): _matmul_integer,
    ("", "ConvInteger"): _conv_integer,
    (MS_DOMAIN, "QGemm"): _qgemm,
    (MS_DOMAIN, "QLinearAdd"): _qlinear_binary("Add"),
    (MS_DOMAIN, "QLinearMul"): _qlinear_binary("Mul"),
    (MS_DOMAIN, "QLinearAveragePool"): _qlinear_average_pool,
    (MS_DOMAIN, "QLinearGlobalAveragePool"): _qlinear_global_average_pool,
    (MS_DOMAIN, "QLinearConcat"): _qlinear_concat,
    (MS_DOMAIN, "QLinearLeakyRelu"): _qlinear_leaky_relu,
    (MS_DOMAIN, "QLinearSigmoid"): _qlinear_sigmoid,
    (MS_DOMAIN, "QLinearSoftmax"): _qlinear_softmax,
    (MS_DOMAIN, "QLinearWhere"): _qlinear_where,
}

QOPERATOR_OPS: frozenset[str] = frozenset(op for _, op in _REWRITES)


# ---- driver -------------------------------------------------------------------------------------
def _rewrite(model: ModelProto) -> tuple[ModelProto, bool]:
    out = copy.deepcopy(model)
    rw = _Rewriter(out)
    rw.rewrite_graph(out.graph)
    return out, rw.needs_per_axis


def _upgrade_opset(model: ModelProto, version: int) -> ModelProto:
    """Convert the default domain to `version`, adapting ops whose semantics changed."""
    try:
        upgraded = onnx.version_converter.convert_version(model, version)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise QCompilerError(
            f"model '{model.graph.name}' uses per-channel quantization, which needs opset "
            f"{version}, but converting it from opset {_default_opset(model)} failed "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); {_QDQ_ADVICE} "
            f"and opset_version>={version}") from None
    upgraded.ir_version = max(upgraded.ir_version, model.ir_version,
                              helper.find_min_ir_version_for(list(upgraded.opset_import)))
    return upgraded


def _uses_domain(model: ModelProto, domain: str) -> bool:
    graphs = list(_graphs(model.graph))
    nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    return (any(n.domain == domain for n in nodes)
            or any(f.domain == domain for f in model.functions))


def qoperator_to_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every QOperator node of `model` into DequantizeLinear -> float op -> QuantizeLinear.

    Returns a new model; `model` is not modified. A model without QOperator nodes comes back
    unchanged (as a copy). Raises QCompilerError naming the node for quantized ops that have no
    rewrite (e.g. QAttention, QLinearReduceMean) or parameter layouts QDQ cannot express.
    """
    result, needs_per_axis = _rewrite(model)
    if needs_per_axis and _default_opset(model) < PER_AXIS_OPSET:
        result, _ = _rewrite(_upgrade_opset(model, PER_AXIS_OPSET))
    if not _uses_domain(result, MS_DOMAIN):
        kept = [o for o in result.opset_import if o.domain != MS_DOMAIN]
        del result.opset_import[:]
        result.opset_import.extend(kept)
    return result
