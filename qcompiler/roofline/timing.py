"""Time each kernel of a compiled library on its own: warm, repeated, median.

The kernels are the PrimFuncs inside the shipped library (the code a user runs, not a rebuild), called
through TVM's ``time_evaluator`` on tensors of their argument shapes. Inputs are random 8-bit data and
random normal floats; wider integers (multipliers, offsets, indices) are zeros, which keeps any
data-dependent index in range and does not change the integer kernels' work (they have no
data-dependent branches).
"""
from __future__ import annotations

import numpy as np
import tvm

from ..errors import QCompilerError
from .inventory import KernelInfo


def kernel_library(module: tvm.runtime.Module) -> tvm.runtime.Module:
    """The module holding the compiled PrimFuncs: the VM executable's imported library (or itself)."""
    for imported in module.imports:
        if imported.kind in ("library", "llvm", "c"):
            return imported
    return module


def example_tensor(shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype in ("uint8", "int8"):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, shape, dtype=dtype)
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype)


def time_kernel(library: tvm.runtime.Module, kernel: KernelInfo, *, repeat: int = 10, min_repeat_ms: int = 20,
                seed: int = 0) -> list[float]:
    """Seconds per call of ``kernel``, one value per repeat (each the mean of enough calls to last
    ``min_repeat_ms``), after a warm-up call."""
    rng = np.random.default_rng(seed)
    if not library.implements_function(kernel.name):
        raise QCompilerError(f"kernel {kernel.name} is not in the library; recompile the model")
    args = [tvm.runtime.tensor(example_tensor(shape, dtype, rng)) for shape, dtype in kernel.params]
    device = tvm.cpu()
    warm = library.time_evaluator(kernel.name, device, number=1, repeat=1)
    warm(*args)
    timer = library.time_evaluator(kernel.name, device, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return [float(t) for t in timer(*args).results]
