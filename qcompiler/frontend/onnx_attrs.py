"""ONNX node attributes as a plain dict, the one way the frontend's graph rewrites read them."""
from __future__ import annotations

from onnx import NodeProto, helper


def node_attributes(node: NodeProto) -> dict:
    """``{name: value}`` of ``node``'s attributes, decoded by onnx's own ``get_attribute_value``."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
