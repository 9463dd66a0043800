"""A float Conv whose kernel equals its stride (a ViT's patch embedding) as the MatMul it is.

Why: ViT-B/16 embeds 16x16 patches with ``Conv(3 -> 768, kernel 16, stride 16)``; with MatMul-only
quantization it stays float, and TVM's generic float conv2d ran it at 4 GFLOP/s (55 of the model's 132 ms).
Non-overlapping windows make the convolution a matrix product of the patches (rearranged by
Reshape/Transpose) with the flattened kernel, which the float-matmul schedule runs register-tiled. Only
float convolutions are rewritten (a quantized one keeps its integer kernel); the result is the same sum
in another order (float rounding).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_attrs import node_attributes


def patch_convs_to_matmuls(model: onnx.ModelProto, static: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``model`` (changed in place) with every float 2-D Conv of non-overlapping, unpadded windows that tile
    its input exactly rewritten as Reshape -> Transpose -> Reshape -> MatMul (+ Add bias) -> Reshape -> Transpose."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        rewritten = _rewrite(node, constants, static)
        if rewritten is None:
            nodes.append(node)
        else:
            new_nodes, new_constants = rewritten
            nodes.extend(new_nodes)
            graph.initializer.extend(new_constants)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _rewrite(node: onnx.NodeProto, constants: dict, static: dict):
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] not in constants:
        return None
    weight = constants[node.input[1]]
    if weight.data_type != onnx.TensorProto.FLOAT or node.input[0] not in static:
        return None
    attrs = node_attributes(node)
    w = numpy_helper.to_array(weight)
    if w.ndim != 4 or len(static[node.input[0]]) != 4:  # 2-D convolutions only (Conv1d/3d stay as they are)
        return None
    n, c, h, wd = static[node.input[0]]
    if attrs.get("group", 1) != 1 or any(attrs.get("pads", [0, 0, 0, 0])) \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return None
    o, _, kh, kw = w.shape
    if list(attrs.get("strides", [1, 1])) != [kh, kw] or (kh, kw) == (1, 1) or h % kh or wd % kw:
        return None
    gh, gw = h // kh, wd // kw
    name = node.name or node.output[0]
    t = lambda suffix: f"{name}/patchify/{suffix}"  # noqa: E731
    shape = lambda suffix, dims: numpy_helper.from_array(np.array(dims, np.int64), t(suffix))  # noqa: E731
    new_constants = [shape("grid", [n, c, gh, kh, gw, kw]), shape("rows", [n * gh * gw, c * kh * kw]),
                     shape("out", [n, gh, gw, o]),
                     numpy_helper.from_array(np.ascontiguousarray(w.reshape(o, -1).T), t("weight"))]
    new_nodes = [
        helper.make_node("Reshape", [node.input[0], t("grid")], [t("grid_x")]),
        helper.make_node("Transpose", [t("grid_x")], [t("patches")], perm=[0, 2, 4, 1, 3, 5]),
        helper.make_node("Reshape", [t("patches"), t("rows")], [t("rows_x")]),
        helper.make_node("MatMul", [t("rows_x"), t("weight")], [t("product")]),
    ]
    result = t("product")
    if len(node.input) > 2 and node.input[2]:
        new_nodes.append(helper.make_node("Add", [result, node.input[2]], [t("biased")]))
        result = t("biased")
    new_nodes += [helper.make_node("Reshape", [result, t("out")], [t("nhwc")]),
                  helper.make_node("Transpose", [t("nhwc")], [node.output[0]], perm=[0, 3, 1, 2])]
    return new_nodes, new_constants
