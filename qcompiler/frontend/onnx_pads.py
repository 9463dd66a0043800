"""A zero Pad in front of a Conv, and a Conv's SAME auto-padding, become the Conv's own ``pads``.

Why: exporters write "same" padding as an explicit Pad (transformers' EfficientNet and MobileNetV2, ported
from TensorFlow), and TVM imports a Pad as an opaque ``call_tir`` of TOPI's pad, which the QDQ analysis
cannot see through: the convolution after it stayed float (31 of EfficientNet-B0's 81 convs, 15x slower
than ONNX Runtime) and float pads cut MobileNetV2's channels-last conv chain into pieces. A constant Pad
of value 0 over the spatial axes only is exactly the convolution's zero padding, also when the quantizer
put a QuantizeLinear/DequantizeLinear pair between them (quantized, the pad value 0 is the zero point,
which dequantizes to 0 again).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_attrs import node_attributes


def pads_into_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place) with every mergeable Pad removed and its widths added to the Conv(s)."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = set()
    for node in graph.node:
        spatial = _zero_spatial_pads(node, constants)
        if spatial is None or node.output[0] in outputs:
            continue
        convs = _convs_reached(node.output[0], consumers, outputs)
        if convs is None:
            continue
        for conv in convs:
            _add_conv_pads(conv, spatial)
        for consumer in consumers[node.output[0]]:
            consumer.input[:] = [node.input[0] if i == node.output[0] else i for i in consumer.input]
        removed.add(id(node))
    if removed:
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        del graph.value_info[:]  # shapes between a removed Pad and its Conv changed; the importer infers them
    return model


def _zero_spatial_pads(node: onnx.NodeProto, constants: dict) -> list[int] | None:
    """[top, left, bottom, right] of a constant-mode 4-D Pad by 0 over H and W only, else None."""
    if node.op_type != "Pad" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    attrs = node_attributes(node)
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(node.input) > 3 and node.input[3]:  # explicit axes: not handled
        return None
    if node.input[1] not in constants:
        return None
    pads = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64).tolist()
    if len(pads) != 8 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
        return None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in constants or np.any(numpy_helper.to_array(constants[node.input[2]]) != 0):
            return None
    return [pads[2], pads[3], pads[6], pads[7]]


def _convs_reached(name: str, consumers: dict, outputs: set) -> list | None:
    """The Convs that read ``name`` as their data input, directly or through one QuantizeLinear ->
    DequantizeLinear pair; None if anything else reads it (or the Convs use auto_pad)."""
    convs = []
    for node in consumers.get(name, []):
        if node.op_type == "Conv" and node.input[0] == name and _explicit_pads(node):
            convs.append(node)
        elif node.op_type == "QuantizeLinear" and node.input[0] == name and node.output[0] not in outputs:
            for dq in consumers.get(node.output[0], []):
                if dq.op_type != "DequantizeLinear" or dq.input[0] != node.output[0] or dq.output[0] in outputs:
                    return None
                for conv in consumers.get(dq.output[0], []):
                    if conv.op_type != "Conv" or conv.input[0] != dq.output[0] or not _explicit_pads(conv):
                        return None
                    convs.append(conv)
        else:
            return None
    return convs or None


def _explicit_pads(conv: onnx.NodeProto) -> bool:
    """A 2-D Conv whose padding is its ``pads`` (NOTSET) or none (VALID: what torch exports for
    ``padding="valid"`` after an explicit Pad)."""
    attrs = node_attributes(conv)
    return attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID") and len(attrs.get("kernel_shape", [0, 0])) == 2


def _add_conv_pads(conv: onnx.NodeProto, spatial: list[int]) -> None:
    auto_pad = next((a for a in conv.attribute if a.name == "auto_pad"), None)
    if auto_pad is not None:  # NOTSET or VALID: both mean the pads attribute (absent for VALID: zeros)
        conv.attribute.remove(auto_pad)
    old = next((a for a in conv.attribute if a.name == "pads"), None)
    current = list(old.ints) if old is not None else [0, 0, 0, 0]
    merged = [a + b for a, b in zip(current, spatial)]
    if old is not None:
        conv.attribute.remove(old)
    conv.attribute.append(helper.make_attribute("pads", merged))


def same_pads_explicit(model: onnx.ModelProto, static: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``model`` (changed in place) with every 2-D Conv's ``auto_pad`` SAME_UPPER/SAME_LOWER written out as
    ``pads`` (the input shape from ``static``): TVM imports SAME as a separate opaque pad, which keeps the
    convolution float (EfficientNet's stride-1 depthwise convs)."""
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[0] not in static:
            continue
        attrs = node_attributes(node)
        mode = attrs.get("auto_pad", b"NOTSET")
        if mode not in (b"SAME_UPPER", b"SAME_LOWER") or len(static[node.input[0]]) != 4:
            continue
        kernel = list(attrs.get("kernel_shape", []))
        if len(kernel) != 2:
            continue
        strides = list(attrs.get("strides", [1, 1]))
        dilations = list(attrs.get("dilations", [1, 1]))
        begin, end = [], []
        for size, k, s, d in zip(static[node.input[0]][2:], kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            low = total // 2 if mode == b"SAME_UPPER" else total - total // 2
            begin.append(low)
            end.append(total - low)
        for a in [a for a in node.attribute if a.name in ("auto_pad", "pads")]:
            node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("pads", begin + end))
    return model
