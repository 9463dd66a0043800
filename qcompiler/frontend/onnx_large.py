"""ONNX models over protobuf's 2 GiB limit: checking and shape inference without serializing them.

``onnx.checker.check_model(proto)`` and ``onnx.shape_inference.infer_shapes`` serialize the model they
are given, and protobuf refuses messages of 2 GiB or more: a model that large (its weights as ONNX
external data) failed the checker, and shape inference failed silently (the frontend then imported it
without its traced shape arithmetic folded). The checker reads large models from their path; shape
inference runs on a copy whose large weights keep their names, types and dims but not their bytes (it
needs shapes, and values only of small shape tensors).
"""
from __future__ import annotations

import onnx

#: protobuf's limit on a serialized message.
PROTOBUF_LIMIT = (1 << 31) - 1
#: Initializers larger than this lose their bytes in the shape-inference copy (shape tensors are tiny).
PAYLOAD_BYTES = 1 << 20


def check_model(proto: onnx.ModelProto, path: str | None, limit: int = PROTOBUF_LIMIT) -> None:
    """onnx's checker on ``proto``, through ``path`` (where external data resolves) for large models."""
    if path is not None and proto.ByteSize() >= limit:
        onnx.checker.check_model(path)
    else:
        onnx.checker.check_model(proto)


def infer_shapes(model: onnx.ModelProto, limit: int = PROTOBUF_LIMIT, payload_bytes: int = PAYLOAD_BYTES,
                 **kwargs) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(model, **kwargs)`` for a model of any size (the result of a
    large model holds the weights' stubs, not their bytes: use it for shapes only)."""
    if model.ByteSize() < limit:
        return onnx.shape_inference.infer_shapes(model, **kwargs)
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in light.graph.initializer:
        if tensor.ByteSize() > payload_bytes:
            for payload in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                            "string_data", "external_data"):
                tensor.ClearField(payload)
            tensor.data_location = onnx.TensorProto.DEFAULT
    return onnx.shape_inference.infer_shapes(light, **kwargs)
