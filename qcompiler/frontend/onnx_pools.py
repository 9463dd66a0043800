"""An AveragePool whose one window covers its whole input is a GlobalAveragePool: say so before importing.

Why: transformers' EfficientNet (and other ports of TensorFlow models) pool the last feature map with
``nn.AvgPool2d(hidden_dim, ceil_mode=True)``: a 1280x1280 window (320x320 at small sizes) over a 7x7 map.
ONNX averages over the part of the window inside the input, i.e. the global mean; TVM's ``avg_pool2d``
with ``ceil_mode`` divides differently (the small zoo EfficientNet's pooled features were off by up to 76
quantization steps), and the integer lowering takes no ``ceil_mode`` pool at all. Rewritten to
GlobalAveragePool, the node means what ONNX says on every path and gets the integer average-pool kernel.
"""
from __future__ import annotations

import onnx
from onnx import helper

from .onnx_attrs import node_attributes


def whole_window_pools_to_global(model: onnx.ModelProto, static: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``model`` (changed in place) with every AveragePool whose single, unpadded window covers the whole
    input (``static`` gives the input's shape) replaced by a GlobalAveragePool."""
    for index, node in enumerate(model.graph.node):
        if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx"):
            continue
        shape = static.get(node.input[0])
        if shape is None or not _covers_whole_input(node, shape[2:]):
            continue
        model.graph.node[index].CopyFrom(helper.make_node("GlobalAveragePool", list(node.input), list(node.output),
                                                          name=node.name))
    return model


def _covers_whole_input(node: onnx.NodeProto, spatial: tuple[int, ...]) -> bool:
    attrs = node_attributes(node)
    kernel = list(attrs.get("kernel_shape", []))
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    if len(kernel) != len(spatial) or any(pads) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        return False
    if any(d != 1 for d in attrs.get("dilations", [1] * len(kernel))):
        return False
    strides = list(attrs.get("strides", [1] * len(kernel)))
    # one window per axis, starting at 0 and reaching past the end (ceil_mode) or exactly to it
    one_window = all((s - k) // st + 1 == 1 if not attrs.get("ceil_mode") else -(-(s - k) // st) + 1 <= 1 or s <= st
                     for s, k, st in zip(spatial, kernel, strides))
    return all(k >= s for k, s in zip(kernel, spatial)) and one_window
