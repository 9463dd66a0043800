"""fp32 islands between int8 kernels: small integer powers are products (vectorized, no powf calls),
LayerNorm's statistics are computed precisely enough that the value quantized after it is the exact one,
and float matmuls get a register-tiled schedule."""
from __future__ import annotations

import re

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


def test_float_matmul_with_epilogue_is_register_tiled_and_exact_to_float_rounding():
    """A float matmul left by the quantizer (nn.TransformerEncoder's feed-forward) with its bias + ReLU:
    the CPUFloatMatmul rule takes it (FMA on vectors, no scalar loop nest) and the result equals numpy's
    float64 product to float32 accumulation error."""
    import tvm
    from tvm.target import codegen
    from schedules.cpu_float_matmul import CPUFloatMatmul
    from qcompiler.build import fuse_module, lower_to_integer
    from qcompiler.target import host_target

    rng = np.random.default_rng(4)
    m, k, n = 128, 512, 384
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = relax.Var("x", relax.TensorType((1, m, k), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(bias)))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    mod = bb.get()
    target = host_target()
    fused = fuse_module(lower_to_integer(mod, target), target)
    matmuls = [f for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in gv.name_hint]
    assert matmuls and all(CPUFloatMatmul().apply(f, target, False) is not None for f in matmuls)
    model = build(mod, ModelSignature((TensorSpec("x", (1, m, k), "float32"),), (TensorSpec("y", (1, m, n), "float32"),)))
    asm = "\n".join(lib.inspect_source("asm") for lib in model.executable.mod.imports)
    register = "zmm" if codegen.llvm_cpu_has_features(["avx512f"], target) else "ymm"
    assert re.search(rf"vfmadd\w+\s+[^\n]*%{register}", asm)
    values = rng.standard_normal((1, m, k)).astype(np.float32)
    exact = np.maximum(values.astype(np.float64) @ w.astype(np.float64) + bias, 0)
    bound = 1e-5 * np.sqrt(k) * np.abs(values).max() * np.abs(w).max() * 4
    assert np.abs(model(x=values) - exact).max() <= bound
