"""ONNX -> Relax: load and check the file, fix input shapes, canonicalize QOperator ops to QDQ, fold the
shape arithmetic into constants (``onnx_fold``), whole-input average pools to global ones (``onnx_pools``),
zero Pads and SAME padding into the Convs' pads (``onnx_pads``), float patch convs as MatMuls
(``onnx_patchify``), import.

TVM's importer (``tvm.relax.frontend.onnx.from_onnx``) does the op conversion; this module owns
what a user gets wrong (missing or corrupt file, dynamic shapes left open, ops nobody converts) and
turns each case into a one-line QCompilerError naming the file, node and op.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from ..errors import QCompilerError
from ..signature import ModelSignature, TensorSpec
from .onnx_fold import fold_constants, static_shapes, with_input_shapes
from .onnx_large import check_model
from .onnx_pads import pads_into_convs, same_pads_explicit
from .onnx_patchify import patch_convs_to_matmuls
from .onnx_pools import whole_window_pools_to_global
from .qoperator import qoperator_to_qdq

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
                onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.BOOL: "bool", onnx.TensorProto.DOUBLE: "float64"}


def load_onnx(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The ModelProto and a name for messages; QCompilerError for a missing/corrupt/invalid file."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<model>"
    path = Path(model)
    if not path.is_file():
        raise QCompilerError(f"{path}: no such file; give the path of an .onnx model")
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError and friends for truncated files
        raise QCompilerError(f"{path}: not a readable ONNX model ({type(err).__name__}); the file is truncated "
                             "or corrupt, re-export it") from None
    if not proto.graph.node:
        raise QCompilerError(f"{path}: not a readable ONNX model (empty graph); the file is truncated or corrupt, "
                             "re-export it")
    try:
        check_model(proto, str(path))
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise QCompilerError(f"{path}: invalid ONNX model: {first}") from None
    return proto, str(path)


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def _value_spec(value: onnx.ValueInfoProto, shapes: dict, where: str) -> TensorSpec:
    ttype = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(ttype.elem_type)
    if dtype is None:
        raise QCompilerError(f"{where}: input/output {value.name!r} has unsupported element type "
                             f"{onnx.TensorProto.DataType.Name(ttype.elem_type)}")
    if value.name in shapes:
        return TensorSpec(value.name, tuple(shapes[value.name]), dtype)
    dims = []
    for d in ttype.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise QCompilerError(f"{where}: input {value.name!r} has a dynamic dimension "
                                 f"{d.dim_param or '?'!r}; fix it with --input-shapes {value.name}:1x...")
        dims.append(d.dim_value)
    return TensorSpec(value.name, tuple(dims), dtype)


def _check_ops_supported(proto: onnx.ModelProto, where: str) -> None:
    from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx
    known = set(tvm_onnx._get_convert_map()) | {"Constant", "If"}
    for node in proto.graph.node:
        if node.op_type not in known:
            domain = f"{node.domain}:" if node.domain else ""
            raise QCompilerError(f"{where}: node {node.name or '<unnamed>'!r} uses op {domain}{node.op_type}, "
                                 "which qcompiler cannot import; replace it in the model (or export without it)")


def from_onnx(model: str | os.PathLike | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None):
    """Import an ONNX model (fp32, QDQ or QOperator) as a Relax IRModule plus its signature."""
    proto, where = load_onnx(model)
    shapes = dict(input_shapes or {})
    inputs = _graph_inputs(proto)
    unknown = set(shapes) - {i.name for i in inputs}
    if unknown:
        raise QCompilerError(f"{where}: --input-shapes names {sorted(unknown)} but the model's inputs are "
                             f"{[i.name for i in inputs]}")
    specs = [_value_spec(i, shapes, where) for i in inputs]
    proto = with_input_shapes(qoperator_to_qdq(proto), tuple(specs))
    shapes = static_shapes(proto)
    proto = whole_window_pools_to_global(fold_constants(proto, shapes), shapes)
    proto = patch_convs_to_matmuls(pads_into_convs(same_pads_explicit(proto, shapes)), shapes)
    _check_ops_supported(proto, where)

    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx
    try:
        mod = tvm_from_onnx(proto, shape_dict={s.name: list(s.shape) for s in specs},
                            dtype_dict={s.name: s.dtype for s in specs})
    except Exception as err:  # the importer raises many types; the user needs the message, not the trace
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise QCompilerError(f"{where}: TVM's ONNX importer failed: {last}") from None
    outputs = _relax_outputs(mod, [o.name for o in proto.graph.output])
    return mod, ModelSignature(tuple(specs), outputs)


def _relax_outputs(mod, names: list[str]) -> tuple[TensorSpec, ...]:
    """Output specs from the imported function's return type (shapes after input shapes were fixed)."""
    from tvm import relax
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for i, ty in enumerate(fields):
        shape = tuple(int(d) for d in ty.shape.values)
        specs.append(TensorSpec(names[i] if i < len(names) else f"output{i}", shape, str(ty.dtype)))
    return tuple(specs)
