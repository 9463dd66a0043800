"""fp32 islands: erf (GELU) compiles to a vectorized polynomial, not per-lane libm calls, and stays
within float32 rounding of the exact function."""
from __future__ import annotations

import math

import numpy as np
from tvm import relax

from qcompiler.build import build
from qcompiler.signature import ModelSignature, TensorSpec


def test_erf_is_vectorized_and_accurate():
    shape = (16, 128)
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.erf(x))
        bb.emit_func_output(out)
    model = build(bb.get(), ModelSignature((TensorSpec("x", shape, "float32"),), (TensorSpec("y", shape, "float32"),)))
    asm = "\n".join(m.inspect_source("asm") for m in model.executable.mod.imports)
    assert "erff" not in asm  # no scalar libm call per lane
    values = np.linspace(-5, 5, np.prod(shape), dtype=np.float32).reshape(shape)
    exact = np.vectorize(math.erf)(values.astype(np.float64))
    assert np.abs(model(x=values) - exact).max() < 5e-7  # float32 rounding of values near +-1 is 6e-8..1.2e-7
