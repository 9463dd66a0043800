"""PyTorch frontend: ``torch.nn.Module`` / ``ExportedProgram`` -> Relax ``IRModule`` + signature.

We go through ``torch.export`` and TVM's own ExportedProgram importer rather than tracing
ourselves: ``torch.export`` is the one capture path PyTorch supports for whole-graph export
(and the one PT2E quantization produces), and TVM's importer already covers the core ATen
op set. What TVM lacks are the ``quantized_decomposed`` q/dq ops that PT2E inserts; this
module adds converters that map them exactly onto ``relax.quantize`` / ``relax.dequantize``
so later passes can recognise QDQ patterns and fold quantized weights. Importing this module
also registers ``torch.ops.quantized_decomposed`` (it lives in torch, normally pulled in by
torchao), so PT2E programs can be built or ``torch.export.load``-ed without torchao.

The resulting ``main`` takes the user inputs as parameters (named as the caller asked, or
``input0..``), embeds weights, scales and zero points as constants, and returns one tensor or
a tuple of tensors (named ``output0..`` in the signature).
"""
from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers quantized_decomposed ops
import tvm
from torch import fx
from tvm import relax
from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

from ..errors import QCompilerError
from ..signature import ModelSignature, TensorSpec

# quantized_decomposed dtypes that relax.quantize/dequantize can represent exactly
# (relax.quantize rejects int32/uint32 outputs, so those are not offered here).
_QUANT_DTYPES: dict[torch.dtype, str] = {
    torch.uint8: "uint8",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.uint16: "uint16",
}

_QDQ_NAMESPACE = "quantized_decomposed"


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def from_torch(
    module: torch.nn.Module | torch.export.ExportedProgram,
    example_args: tuple,
    input_names: list[str] | None = None,
) -> tuple[tvm.IRModule, ModelSignature]:
    """Import a PyTorch model (fp32 or PT2E-quantized) into Relax.

    ``module`` may be an eval-mode ``nn.Module``, the ``GraphModule`` returned by
    ``convert_pt2e`` / ``quantize_pt2e``, or an already exported program. ``example_args``
    fixes the (static) input shapes and dtypes. Raises ``QCompilerError`` with a one-line
    message if the model cannot be exported or uses an op we cannot convert.
    """
    example_args = _check_example_args(example_args)
    program = _export(module, example_args)
    program = _decompose(program)
    _check_supported_ops(program)
    mod = _import_program(program)
    mod, signature = _name_interface(mod, _input_names(input_names, mod))
    return mod, signature


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def _check_example_args(example_args: Any) -> tuple:
    """Only plain tensor positional inputs are supported: they become the Relax parameters."""
    if isinstance(example_args, torch.Tensor):
        example_args = (example_args,)
    if not isinstance(example_args, tuple | list):
        raise QCompilerError(
            f"example_args must be a tuple of tensors, got {type(example_args).__name__}"
        )
    for i, arg in enumerate(example_args):
        if not isinstance(arg, torch.Tensor):
            raise QCompilerError(
                f"example_args[{i}] is a {type(arg).__name__}; only tensor inputs are "
                "supported — bake non-tensor arguments into the module"
            )
    return tuple(example_args)


def _export(module: Any, example_args: tuple) -> torch.export.ExportedProgram:
    """Capture the model with torch.export, turning any tracing failure into one line."""
    if isinstance(module, torch.export.ExportedProgram):
        return module
    if not isinstance(module, torch.nn.Module):
        raise QCompilerError(
            f"expected a torch.nn.Module or ExportedProgram, got {type(module).__name__}"
        )
    # A hand-written module in training mode would bake dropout/batch-norm statistics
    # updates into the graph; GraphModules from PT2E carry no such mode and are exempt.
    if module.training and not isinstance(module, fx.GraphModule):
        raise QCompilerError(
            f"{type(module).__name__} is in training mode; call model.eval() before compiling"
        )
    try:
        with _stderr_kept_only_on_success():
            return torch.export.export(module, example_args)
    except Exception as exc:  # torch raises many unrelated types here
        raise QCompilerError(
            f"torch.export could not capture {type(module).__name__}: {_first_line(exc)} — "
            "make forward() traceable (no data-dependent Python control flow; use torch.where "
            "or torch.cond) and pass example_args matching forward()'s signature"
        ) from exc


@contextlib.contextmanager
def _stderr_kept_only_on_success() -> Iterator[None]:
    """On failure torch.export prints the partial FX graph to stderr before raising.

    Users get our one-line error instead (the original exception stays chained for
    debugging), so stderr output is buffered and only replayed if export succeeds.
    """
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield
    sys.stderr.write(buffer.getvalue())


def _decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Lower to core ATen ourselves so the op check below sees what the importer will see.

    ``quantized_decomposed`` ops are CompositeExplicitAutograd, so they survive the default
    decomposition table untouched.
    """
    try:
        return program.run_decompositions()
    except Exception as exc:
        raise QCompilerError(
            f"torch could not decompose the exported program to core ATen: {_first_line(exc)}"
        ) from exc


# --------------------------------------------------------------------------------------
# Op coverage check
# --------------------------------------------------------------------------------------


def _op_name(target: Any) -> str:
    """Fully qualified op name (``aten.foo.default``) for messages; TVM keys by ``__name__``."""
    return str(target) if isinstance(target, torch._ops.OpOverload) else getattr(
        target, "__name__", repr(target)
    )


def _check_supported_ops(program: torch.export.ExportedProgram) -> None:
    """Fail early, naming the op, instead of TVM's bare ``AssertionError``.

    TVM's importer looks converters up by ``target.__name__`` (e.g. ``relu.default``), which
    ignores the namespace; we therefore also reject ops whose short name collides with one of
    our q/dq converters but live in another namespace (e.g. ``aten.quantize_per_tensor``).
    """
    known = set(ExportedProgramImporter().convert_map)
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        short = getattr(node.target, "__name__", None)
        if short in _QDQ_CONVERTERS:
            if getattr(node.target, "namespace", None) != _QDQ_NAMESPACE:
                raise _unsupported(node)
        elif short not in known:
            raise _unsupported(node)


def _unsupported(node: fx.Node) -> QCompilerError:
    return QCompilerError(
        f"unsupported PyTorch op {_op_name(node.target)} (node '{node.name}'): TVM's Relax "
        "importer has no converter for it — rewrite that part of the model with supported ops "
        "or add a converter in qcompiler/frontend/torch_frontend.py"
    )


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------


class _TrackingImporter(ExportedProgramImporter):
    """TVM's importer, remembering which node is being converted so errors can name it."""

    def __init__(self) -> None:
        self.current_node: fx.Node | None = None
        super().__init__()

    def create_convert_map(self) -> dict:
        return {name: self._tracked(fn) for name, fn in super().create_convert_map().items()}

    def update_convert_map(self, custom_convert_map: dict) -> None:
        super().update_convert_map({k: self._tracked(v) for k, v in custom_convert_map.items()})

    @staticmethod
    def _convert_pytorch_tensor_to_tvm(tensor_value: torch.Tensor) -> tvm.runtime.Tensor:
        """TVM wraps weights with zero-copy DLPack, so the IR's constants would alias the
        model's parameters and change if the user keeps training or editing the model.
        Cloning first gives the IRModule its own copy."""
        return ExportedProgramImporter._convert_pytorch_tensor_to_tvm(
            tensor_value.detach().clone()
        )

    def _tracked(self, fn: Callable) -> Callable:
        def convert(node: fx.Node, *rest: Any) -> Any:
            self.current_node = node
            return fn(node, *rest)

        return convert


def _import_program(program: torch.export.ExportedProgram) -> tvm.IRModule:
    """Run TVM's importer with weights bound as constants and our q/dq converters."""
    importer = _TrackingImporter()
    constants = _constant_placeholders(program)
    custom = {
        name: _bind_constants(conv, constants) for name, conv in _QDQ_CONVERTERS.items()
    }
    try:
        return importer.from_exported_program(
            program,
            False,  # keep_params_as_input: embed weights so passes can fold them
            True,  # unwrap_unit_return_tuple: a single output is returned as a tensor
            False,  # no_bind_return_tuple
            custom,
        )
    except QCompilerError:
        raise
    except Exception as exc:
        node = importer.current_node
        where = f"op {_op_name(node.target)} (node '{node.name}')" if node is not None else "model"
        raise QCompilerError(
            f"TVM could not convert {where}: {type(exc).__name__}: {_first_line(exc)} — "
            "simplify that part of the model or report it with the model attached"
        ) from exc


def _constant_placeholders(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Placeholder name -> tensor for every lifted parameter, buffer and constant.

    PT2E keeps per-channel scales/zero points and the folded int8 weights as buffers; knowing
    their values at conversion time lets the q/dq converters emit properly typed constants.
    """
    values = {
        **dict(program.named_parameters()),
        **dict(program.named_buffers()),
        **dict(program.constants),
    }
    found = {}
    for spec in program.graph_signature.input_specs:
        tensor = values.get(spec.target) if spec.target is not None else None
        if isinstance(tensor, torch.Tensor):
            found[spec.arg.name] = tensor.detach()
    return found


def _bind_constants(converter: Callable, constants: dict[str, torch.Tensor]) -> Callable:
    def convert(node: fx.Node, importer: ExportedProgramImporter) -> relax.Expr:
        return converter(node, _Ctx(importer, constants))

    return convert


# --------------------------------------------------------------------------------------
# quantized_decomposed converters
# --------------------------------------------------------------------------------------


class _Ctx:
    """What a q/dq converter needs: the importer's env/builder and constant tensor values."""

    def __init__(self, importer: ExportedProgramImporter, constants: dict[str, torch.Tensor]):
        self.importer = importer
        self.constants = constants

    def expr(self, arg: Any) -> relax.Expr:
        return self.importer.env[arg]

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.importer.block_builder.emit(expr)

    def value(self, arg: Any) -> torch.Tensor | None:
        """The constant tensor behind an argument, or None if it is computed at runtime."""
        if isinstance(arg, torch.Tensor):
            return arg.detach()
        if isinstance(arg, fx.Node):
            if arg.name in self.constants:
                return self.constants[arg.name]
            bound = self.importer.env.get(arg)
            if isinstance(bound, torch.Tensor):  # get_attr tensors are stored raw
                return bound.detach()
        return None


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _qparam(ctx: _Ctx, arg: Any, dtype: str, node: fx.Node) -> relax.Expr:
    """A scale (float32) or zero point (int32) as a Relax expr of the dtype relax q/dq accepts.

    Literal Python numbers and constant tensors become constants (scalar if they hold one
    element, else a vector); runtime tensors are cast, so both PT2E forms are covered.
    """
    if isinstance(arg, int | float):
        return relax.const(np.asarray(arg, dtype=dtype))
    tensor = ctx.value(arg)
    if tensor is not None:
        array = tensor.to(torch.float64).numpy().astype(dtype)
        return relax.const(array.reshape(()) if array.size == 1 else array.reshape(-1))
    if isinstance(arg, fx.Node):
        expr = ctx.expr(arg)
        return expr if expr.ty.dtype == dtype else ctx.emit(relax.op.astype(expr, dtype))
    raise QCompilerError(
        f"{_op_name(node.target)} (node '{node.name}') has an unsupported qparam {arg!r}"
    )


def _int_bound(ctx: _Ctx, arg: Any, node: fx.Node) -> int:
    """quant_min/quant_max: ints, or one-element constant tensors in the ``.tensor2`` form."""
    if isinstance(arg, int):
        return arg
    tensor = ctx.value(arg)
    if tensor is not None and tensor.numel() == 1:
        return int(tensor.item())
    raise QCompilerError(
        f"{_op_name(node.target)} (node '{node.name}') has a runtime quant_min/quant_max; "
        "only constant bounds are supported"
    )


def _quant_dtype(dtype: Any, node: fx.Node) -> str:
    if dtype not in _QUANT_DTYPES:
        raise QCompilerError(
            f"{_op_name(node.target)} (node '{node.name}') uses quantized dtype {dtype}; "
            f"supported: {', '.join(map(str, _QUANT_DTYPES))}"
        )
    return _QUANT_DTYPES[dtype]


def _as_float32(ctx: _Ctx, x: relax.Expr) -> relax.Expr:
    """torch quantizes fp16/bf16 inputs after upcasting to fp32; do the same."""
    return x if x.ty.dtype == "float32" else ctx.emit(relax.op.astype(x, "float32"))


def _channel_axis(axis: int, x: relax.Expr) -> int:
    """torch accepts negative channel axes; normalise so the Relax attr is unambiguous."""
    ndim = x.ty.ndim
    return axis % ndim if ndim > 0 else axis


def _convert_quantize(node: fx.Node, ctx: _Ctx, per_channel: bool) -> relax.Expr:
    """quantize_per_tensor / quantize_per_channel -> relax.quantize (+ clip if narrowed).

    torch: ``clamp(round_half_even(x * (1/scale)) + zp, quant_min, quant_max).to(dtype)``.
    relax: ``clamp(round_half_even(x / scale) + zp, dtype.min, dtype.max)``; a following
    integer clip to [quant_min, quant_max] is exact because clamping is monotone.
    """
    i = 1 if per_channel else 0  # per-channel has an extra `axis` argument at index 3
    x = _as_float32(ctx, ctx.expr(node.args[0]))
    dtype = _quant_dtype(_arg(node, 5 + i, "dtype"), node)
    scale = _qparam(ctx, _arg(node, 1, "scale"), "float32", node)
    zero_point = _qparam(ctx, _arg(node, 2, "zero_point"), "int32", node)
    axis = _channel_axis(_arg(node, 3, "axis"), x) if per_channel else -1
    q = ctx.emit(relax.op.quantize(x, scale, zero_point, axis, dtype))
    qmin = _int_bound(ctx, _arg(node, 3 + i, "quant_min"), node)
    qmax = _int_bound(ctx, _arg(node, 4 + i, "quant_max"), node)
    return _clip_to_range(ctx, q, dtype, qmin, qmax, node)


def _clip_to_range(
    ctx: _Ctx, q: relax.Expr, dtype: str, qmin: int, qmax: int, node: fx.Node
) -> relax.Expr:
    """Narrow ranges (e.g. int8 in [-127, 127]) become an explicit clip after quantize."""
    info = np.iinfo(dtype)
    if not info.min <= qmin <= qmax <= info.max:
        raise QCompilerError(
            f"{_op_name(node.target)} (node '{node.name}') has quant range [{qmin}, {qmax}] "
            f"outside {dtype}"
        )
    if (qmin, qmax) == (info.min, info.max):
        return q
    return ctx.emit(relax.op.clip(q, qmin, qmax))


def _convert_dequantize(node: fx.Node, ctx: _Ctx, per_channel: bool) -> relax.Expr:
    """dequantize_per_tensor / dequantize_per_channel -> relax.dequantize.

    Both compute ``(float32(q) - zp) * scale`` (relax subtracts in int32 first, which is exact
    for 8/16-bit data); quant_min/quant_max are metadata in torch and are not applied. Relax
    needs float32 scales: PT2E's are float32 already, but a float64 scale tensor (which torch
    would multiply in float64) is rounded to float32 here, a difference of at most ~1 ulp.
    """
    i = 1 if per_channel else 0
    q = ctx.expr(node.args[0])
    dtype = _quant_dtype(_arg(node, 5 + i, "dtype"), node)
    if q.ty.dtype != dtype:
        raise QCompilerError(
            f"{_op_name(node.target)} (node '{node.name}') expects {dtype} input, "
            f"got {q.ty.dtype}"
        )
    out_dtype = node.kwargs.get("out_dtype")
    if out_dtype not in (None, torch.float32):
        raise QCompilerError(
            f"{_op_name(node.target)} (node '{node.name}') dequantizes to {out_dtype}; "
            "only float32 is supported"
        )
    scale = _qparam(ctx, _arg(node, 1, "scale"), "float32", node)
    zp_arg = _arg(node, 2, "zero_point" if not per_channel else "zero_points")
    zero_point = relax.const(np.int32(0)) if zp_arg is None else _qparam(ctx, zp_arg, "int32", node)
    axis = _channel_axis(_arg(node, 3, "axis"), q) if per_channel else -1
    return ctx.emit(relax.op.dequantize(q, scale, zero_point, axis, "float32"))


def _quantize_per_tensor(node: fx.Node, ctx: _Ctx) -> relax.Expr:
    return _convert_quantize(node, ctx, per_channel=False)


def _quantize_per_channel(node: fx.Node, ctx: _Ctx) -> relax.Expr:
    return _convert_quantize(node, ctx, per_channel=True)


def _dequantize_per_tensor(node: fx.Node, ctx: _Ctx) -> relax.Expr:
    return _convert_dequantize(node, ctx, per_channel=False)


def _dequantize_per_channel(node: fx.Node, ctx: _Ctx) -> relax.Expr:
    return _convert_dequantize(node, ctx, per_channel=True)


# Keys are what TVM's importer looks up: the OpOverload's ``__name__`` (namespace dropped).
_QDQ_CONVERTERS: dict[str, Callable[[fx.Node, _Ctx], relax.Expr]] = {
    "quantize_per_tensor.default": _quantize_per_tensor,
    "quantize_per_tensor.tensor": _quantize_per_tensor,
    "quantize_per_tensor.tensor2": _quantize_per_tensor,
    "dequantize_per_tensor.default": _dequantize_per_tensor,
    "dequantize_per_tensor.tensor": _dequantize_per_tensor,
    "dequantize_per_tensor.tensor2": _dequantize_per_tensor,
    "quantize_per_channel.default": _quantize_per_channel,
    "dequantize_per_channel.default": _dequantize_per_channel,
}


# --------------------------------------------------------------------------------------
# Interface naming and signature
# --------------------------------------------------------------------------------------


def _input_names(input_names: Sequence[str] | None, mod: tvm.IRModule) -> list[str]:
    count = len(mod["main"].params)
    if input_names is None:
        return [f"input{i}" for i in range(count)]
    names = list(input_names)
    if len(names) != count:
        raise QCompilerError(
            f"got {len(names)} input_names for a model with {count} tensor inputs"
        )
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise QCompilerError(f"input_names must be distinct non-empty strings, got {names}")
    return names


def _name_interface(
    mod: tvm.IRModule, names: list[str]
) -> tuple[tvm.IRModule, ModelSignature]:
    """Rename main's parameters and derive the signature from the Relax types.

    The importer names parameters after torch placeholders (``x``, ``input_1``...), which are
    an accident of tracing; users and the runtime address inputs by the names we choose here.
    """
    func = mod["main"]
    new_params = [relax.Var(name, p.ty) for name, p in zip(names, func.params)]
    renamed = func.bind_params(dict(zip(func.params, new_params)))
    func = relax.Function(new_params, renamed.body, renamed.ret_ty, renamed.is_pure,
                          renamed.attrs, renamed.span)
    mod["main"] = func
    inputs = tuple(_spec(name, p.ty) for name, p in zip(names, new_params))
    outputs = tuple(_spec(f"output{i}", t) for i, t in enumerate(_output_types(func)))
    return mod, ModelSignature(inputs, outputs)


def _output_types(func: relax.Function) -> list:
    ret = func.ret_ty
    return list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]


def _spec(name: str, ty: Any) -> TensorSpec:
    """TensorSpec from a Relax tensor type; outputs that are not static tensors are rejected."""
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise QCompilerError(f"{name} is not a tensor with a known shape ({ty}); "
                             "return only tensors from forward()")
    try:
        shape = tuple(int(d) for d in ty.shape.values)
    except TypeError as exc:
        raise QCompilerError(f"{name} has a dynamic shape {ty.shape}; "
                             "only static shapes are supported") from exc
    return TensorSpec(name, shape, str(ty.dtype))


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message, so errors stay one line."""
    text = str(exc).strip() or type(exc).__name__
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


__all__ = ["from_torch"]
