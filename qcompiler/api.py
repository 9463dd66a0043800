"""The Python API: ``qcompiler.compile(model) -> CompiledModel``."""
from __future__ import annotations

import os
from pathlib import Path

from .build import CompiledModel, build
from .output_files import check_output_path


def import_model(model, *, input_shapes: dict | None = None, example_args: tuple | None = None):
    """(Relax module, signature, source name) for an ONNX path/ModelProto or a torch module/ExportedProgram."""
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        from .frontend.onnx_frontend import from_onnx
        mod, signature = from_onnx(model, input_shapes)
        return mod, signature, str(model) if isinstance(model, (str, os.PathLike)) else "<onnx.ModelProto>"
    from .frontend.torch_frontend import from_torch
    if example_args is None:
        from .errors import QCompilerError
        raise QCompilerError(f"{type(model).__name__}: a torch model needs example_args (a tuple of example inputs)")
    mod, signature = from_torch(model, tuple(example_args))
    return mod, signature, type(model).__name__


def compile(model, output: str | os.PathLike | None = None, *, target=None, input_shapes: dict | None = None,
            example_args: tuple | None = None) -> CompiledModel:  # noqa: A001 - the product's verb
    """Compile a quantized (QDQ/QOperator ONNX, PT2E torch) or fp32 model for ``target`` (default: host).

    With ``output``, the deployable library is written there too (atomically).
    """
    if output is not None:  # before minutes of compiling, not after
        check_output_path(output, "output", ".so")
    mod, signature, source = import_model(model, input_shapes=input_shapes, example_args=example_args)
    compiled = build(mod, signature, target, source=Path(source).name)  # no local paths inside a shipped .so
    if output is not None:
        compiled.export(output)
    return compiled
