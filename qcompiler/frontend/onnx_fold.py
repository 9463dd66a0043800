"""Fold the ONNX graph's shape arithmetic into constants once the input shapes are fixed.

Why: exporters trace shape computations into the graph (``Shape -> Gather -> Div -> Concat -> Pad`` for
the "same" padding of transformers' MobileNetV2/EfficientNet, ``Shape -> Range -> ... -> Expand`` for
GPT-2's causal mask, ``ConstantOfShape`` for BERT's token types). With static shapes they are constants,
but TVM's ONNX importer only accepts constants where such values land (Pad's pads, Expand's shape) and
fails with messages like "'Call' object has no attribute 'value'". So before importing, every node whose
inputs are known (initializers, Constant nodes, or the Shape of a tensor whose shape onnx's shape
inference found static) is evaluated with onnx's own ReferenceEvaluator and replaced by an initializer.

Never folded: QuantizeLinear/DequantizeLinear (the lowering matches ``DequantizeLinear(int8 weight)``
patterns; folding would turn int8 weights back into float ones) except on the way to a Pad's constant
value, random ops, ops with subgraphs, and
results much larger than their inputs (an Expand of a small constant to a big tensor stays an Expand).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..signature import TensorSpec
from .onnx_attrs import node_attributes
from .onnx_large import infer_shapes

#: Ops whose value must stay an op: the QDQ patterns the lowering matches, and ops that are not functions.
_KEEP = {"QuantizeLinear", "DequantizeLinear", "If", "Loop", "Scan", "RandomNormal", "RandomUniform",
         "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
#: A folded result may be this many elements even if larger than its inputs (mask tables, position ids).
_MAX_GROWN_ELEMENTS = 1 << 20


def with_input_shapes(proto: onnx.ModelProto, inputs: tuple[TensorSpec, ...]) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph inputs have the static shapes of ``inputs``."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _fix_input_shapes(model.graph, inputs)
    return model


def fold_constants(model: onnx.ModelProto, static: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``model`` (changed in place) with every foldable node (see the module docstring) replaced by an
    initializer; ``static`` are the tensors of known shape (``static_shapes``)."""
    graph = model.graph
    pad_values = _pad_value_chain(graph)
    known = {t.name: t for t in graph.initializer}  # name -> TensorProto, for evaluating nodes
    values: dict[str, np.ndarray] = {}
    kept, folded = [], {}
    for node in graph.node:
        result = _evaluate(node, known, values, static, model, pad_values)
        if result is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, result):
            values[name] = value
            folded[name] = numpy_helper.from_array(value, name)
            known[name] = folded[name]
    if not folded:
        return model
    used = {name for node in kept for name in _inputs_with_subgraphs(node)} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(t for name, t in folded.items() if name in used)
    _drop_unused_initializers(graph, used)
    return model


def _fix_input_shapes(graph: onnx.GraphProto, inputs: tuple[TensorSpec, ...]) -> None:
    shapes = {spec.name: spec.shape for spec in inputs}
    for value in graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[value.name]:
                dims.add().dim_value = int(d)


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every tensor whose shape onnx's shape inference determines completely."""
    try:
        inferred = infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is an optimisation here; the importer reports real errors
        return {}
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = value.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[value.name] = tuple(d.dim_value for d in t.shape.dim)
    return shapes


def _pad_value_chain(graph: onnx.GraphProto) -> set[str]:
    """Tensors that only become a Pad's constant value, through QuantizeLinear/DequantizeLinear: the
    quantizer wraps the pad value in a QDQ pair, and TVM's importer takes the value as a constant only."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    chain: set[str] = set()
    frontier = [n.input[2] for n in graph.node if n.op_type == "Pad" and len(n.input) > 2 and n.input[2]]
    while frontier:
        name = frontier.pop()
        if all((c.op_type == "Pad" and i == 2) or (c.output and c.output[0] in chain) for c, i in consumers[name]):
            chain.add(name)
            producer = producers.get(name)
            if producer is not None and producer.op_type in ("QuantizeLinear", "DequantizeLinear"):
                frontier.append(producer.input[0])
    return chain


def _evaluate(node: onnx.NodeProto, known: dict, values: dict, static: dict, model: onnx.ModelProto,
              pad_values: set[str]):
    """The node's outputs as arrays if it can be folded, else None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in _KEEP and not (node.op_type in ("QuantizeLinear", "DequantizeLinear")
                                      and node.output[0] in pad_values):
        return None
    if node.op_type == "Shape" and node.input[0] in static and node.input[0] not in known:
        return [_shape_value(node, static[node.input[0]])]
    if node.op_type == "Size" and node.input[0] in static:
        return [np.array(int(np.prod(static[node.input[0]])), dtype=np.int64)]
    names = [n for n in node.input if n]
    if not all(n in known for n in names) or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                for a in node.attribute):
        return None
    from onnx.reference import ReferenceEvaluator
    for n in names:
        if n not in values:
            values[n] = numpy_helper.to_array(known[n])
    feeds = {n: values[n] for n in names}
    single = helper.make_model(
        helper.make_graph([node], "fold", [helper.make_tensor_value_info(n, known[n].data_type, None) for n in names],
                          [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]),
        opset_imports=_opsets_for(node, model), ir_version=max(model.ir_version, 8))
    try:
        result = ReferenceEvaluator(single).run(None, feeds)
    except Exception:  # noqa: BLE001 - an op the reference cannot evaluate stays in the graph
        return None
    grown = sum(np.asarray(r).size for r in result)
    if grown > max(_MAX_GROWN_ELEMENTS, sum(v.size for v in feeds.values())):
        return None
    return [np.asarray(r) for r in result]


def _opsets_for(node: onnx.NodeProto, model: onnx.ModelProto) -> list:
    """The model's opsets; for QuantizeLinear/DequantizeLinear at least 21 (onnx's reference implements them
    from 19 on; for the per-tensor constants folded here their meaning is the same at every version)."""
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return list(model.opset_import)
    return [helper.make_opsetid(o.domain, max(o.version, 21)) if o.domain in ("", "ai.onnx") else o
            for o in model.opset_import]


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    attrs = node_attributes(node)
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)


def _inputs_with_subgraphs(node: onnx.NodeProto):
    yield from node.input
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in graph.node:
                yield from _inputs_with_subgraphs(inner)


def _drop_unused_initializers(graph: onnx.GraphProto, used: set[str]) -> None:
    """Initializers only folded nodes read go, with their graph-input entries (older exporters list
    initializers as inputs too; one left without its initializer would become a real input)."""
    dropped = {t.name for t in graph.initializer if t.name not in used}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
