"""fp32 islands between int8 kernels: small integer powers are products (vectorized, no powf calls) and
LayerNorm's statistics are computed precisely enough that the value quantized after it is the exact one."""
from __future__ import annotations

import numpy as np
from tvm import relax

from qcompiler.build import build
from qcompiler.signature import ModelSignature, TensorSpec


def _build_unary(shape, body):
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(x))
        bb.emit_func_output(out)
    return build(bb.get(), ModelSignature((TensorSpec("x", shape, "float32"),), (TensorSpec("y", shape, "float32"),)))


def test_cube_is_a_product_not_a_powf_call():
    """GPT-2's GELU exports Pow(x, 3.0)."""
    shape = (16, 128)
    model = _build_unary(shape, lambda x: relax.op.power(x, relax.const(3.0, "float32")))
    asm = "\n".join(m.inspect_source("asm") for m in model.executable.mod.imports)
    assert "powf" not in asm
    values = np.linspace(-4, 4, np.prod(shape), dtype=np.float32).reshape(shape)
    exact = values.astype(np.float64) ** 3
    assert np.all(np.abs(model(x=values) - exact) <= 2 * np.spacing(np.abs(exact).astype(np.float32)))


def test_layer_norm_statistics_are_exact_to_float32_rounding():
    """Rows with a large mean and a small spread: float32 statistics (E[x^2] - E[x]^2, or float32 sums)
    lose digits there; the result must equal the float64 LayerNorm rounded to float32, within one ulp."""
    rng = np.random.default_rng(3)
    shape = (8, 384)
    gamma = (1 + 0.1 * rng.standard_normal(384)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(384)).astype(np.float32)
    model = _build_unary(shape, lambda x: relax.op.nn.layer_norm(x, relax.const(gamma), relax.const(beta), axes=[-1],
                                                                 epsilon=1e-12))
    values = (300 + rng.standard_normal(shape)).astype(np.float32)
    x = values.astype(np.float64)
    centered = x - x.mean(axis=-1, keepdims=True)
    exact = centered / np.sqrt((centered ** 2).mean(axis=-1, keepdims=True) + 1e-12) * gamma + beta
    ours = model(x=values)
    assert np.all(np.abs(ours - exact) <= np.spacing(np.abs(exact).astype(np.float32))), np.abs(ours - exact).max()
