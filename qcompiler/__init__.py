"""qcompiler: a tensor compiler for quantized (int8) neural networks on Apache TVM Relax.

Public API (imports are lazy: ``import qcompiler`` stays cheap, TVM loads on first use):
    qcompiler.compile(model, output=None, target=None, input_shapes=None, example_args=None)
    qcompiler.load(path) -> callable model (numpy in, numpy out)
    qcompiler.from_onnx(path, input_shapes=None) / qcompiler.from_torch(module, example_args)
    qcompiler.roofline(lib_or_model, target=None, threads=None) -> RooflineReport
    qcompiler.QCompilerError
"""
from .errors import QCompilerError

__all__ = ["QCompilerError", "compile", "from_onnx", "from_torch", "load", "roofline"]


def __getattr__(name: str):
    if name == "compile":
        from .api import compile
        return compile
    if name == "load":
        from .runtime import load
        return load
    if name == "from_onnx":
        from .frontend.onnx_frontend import from_onnx
        return from_onnx
    if name == "roofline":  # the package is callable: qcompiler.roofline(lib_or_model, target=None)
        # import_module, not ``from . import roofline``: that form looks the name up on this package
        # first, which lands here again (endless recursion when roofline is the first thing used)
        import importlib
        return importlib.import_module(f"{__name__}.roofline")
    if name == "from_torch":
        from .frontend.torch_frontend import from_torch
        return from_torch
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")
