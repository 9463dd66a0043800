"""Whole models against the exact reference, and against ONNX Runtime where ORT is exact.

Models come from tests/model_zoo.py (torch -> ONNX -> onnxruntime.quantization.quantize_static):
an MLP, a small CNN (depthwise, strided, dilated and grouped convs, residual add, max and global
average pooling) and a 2-layer BERT encoder (transformers, random weights), in QDQ and QOperator
form, uint8 and int8 activations, per-channel and per-tensor weights, and the CNN with 7-bit
weights (reduce_range).

The expected answer is onnx's ReferenceEvaluator on the same file (tests/exact_reference.py: float
math in float64, so every rounding is the exact value's), on every CPU. Acceptance: >= 99.9% of
elements identical and none more than 1 quantization step apart (exact_reference.MIN_IDENTICAL /
MAX_STEPS; the slack is for rounding ties). MLP/CNN outputs are dequantized int8 tensors, compared
in steps of their output scale.

The transformer's output comes from a float LayerNorm, after softmax and GELU islands (float32 in
qcompiler, float64 in the reference): it must agree to float rounding. Every quantized tensor of the
transformer and of the QDQ CNNs is also exposed and held to the integer criterion, so a wrong
integer anywhere shows even where the float output would hide it.

ONNX Runtime is an extra comparison only where it is exact (``exact_reference.ort_is_exact``): on
VNNI CPUs, and on the reduce_range CNN on every CPU. Without VNNI its u8 x s8 kernels saturate int16
pair sums (vpmaddubsw), so it is skipped there. On x86 ORT runs int8-activation QDQ MatMuls in fp32,
whose accumulation can round a near-tie such as -43.499993 the other way (it does on the zoo
transformer): not exact on any CPU, so that variant is compared with the reference only.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import exact_reference as er
import isa
import model_zoo as mz
import qcompiler
from qcompiler.build import lower_to_integer, schedule_module
from qcompiler.frontend.onnx_frontend import from_onnx
from qcompiler.target import resolve_target

VARIANTS = [(name, kw) for name in ("mlp", "cnn", "transformer") for kw in mz.standard_variants(name)]
VARIANTS.append(("cnn", mz.REDUCE_RANGE_CNN))
IDS = [f"{name}-{mz.variant_name(**kw)}" for name, kw in VARIANTS]

#: float32 rounding of the transformer's LayerNorm output (values of order 1; measured <= 1e-6).
FLOAT_ROUNDING = 1e-5


@functools.cache
def _compiled(path: str) -> qcompiler.build.CompiledModel:
    """One compilation per model file for the tests of this module (the reference and the ORT test)."""
    return qcompiler.compile(path)


def smallest_activation_scale(path) -> float:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node
              if n.op_type in ("QuantizeLinear", "QLinearMatMul") and n.input[1] in inits]
    return float(min(s.min() for s in scales))


def assert_float_output_close(ours: np.ndarray, expected: np.ndarray, step: float) -> None:
    """>= MIN_IDENTICAL of the elements equal to float rounding and none further off than one step
    of the finest activation scale (what one rounding tie upstream could move)."""
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    diff = np.abs(ours.astype(np.float64) - expected.astype(np.float64))
    close = float(np.mean(diff <= FLOAT_ROUNDING))
    assert close >= er.MIN_IDENTICAL and diff.max() <= step, f"{close:.4%} within {FLOAT_ROUNDING}, max {diff.max()}"


def _assert_agrees(name: str, path, ours: np.ndarray, expected: np.ndarray) -> None:
    if name == "transformer":
        assert_float_output_close(ours, expected, smallest_activation_scale(path))
    else:
        er.assert_matches_reference(ours, expected, mz.output_scale(path))


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_matches_exact_reference(name, kw, zoo_dir):
    zm = mz.build(name, zoo_dir, **kw)
    model = _compiled(str(zm.quant_path))
    ops = model.metadata["ops"]
    if name in ("mlp", "cnn"):  # every op has an integer rule: no fp32 island may remain
        assert ops["fp32"] == {}, ops
        assert ops["int8"].get("conv2d" if name == "cnn" else "dense", 0) >= 3, ops
    else:
        assert ops["int8"]["dense"] == 12 and ops["int8"]["batch_matmul"] == 4, ops
    reference = er.ExactReference(zm.quant_path)
    for feeds in zm.make_inputs(4, seed=99):
        _assert_agrees(name, zm.quant_path, model(**feeds), reference.run(feeds)[0])


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_matches_onnxruntime_where_it_is_exact(name, kw, zoo_dir):
    """The same criterion against ORT, where ORT computes the exact result (see the module docstring)."""
    if name == "transformer" and kw["quant_format"] == "qdq" and kw["activation"] == "int8":
        pytest.skip("ORT runs int8-activation QDQ MatMuls in fp32 on x86: not exact on any CPU")
    zm = mz.build(name, zoo_dir, **kw)
    if not er.ort_is_exact(zm.quant_path):
        pytest.skip(er.ORT_INEXACT_REASON)
    model = _compiled(str(zm.quant_path))
    session = mz.ort_session(zm.quant_path)
    for feeds in zm.make_inputs(4, seed=99):
        _assert_agrees(name, zm.quant_path, model(**feeds), session.run(None, feeds)[0])


#: A model of each kind, built for the CPU classes other than this one's (what another host's default build runs).
CLASS_VARIANTS = [("mlp", mz.standard_variants("mlp")[0]), ("cnn", mz.standard_variants("cnn")[0]),
                  ("cnn", mz.standard_variants("cnn")[6]), ("transformer", mz.standard_variants("transformer")[0])]
CLASS_TARGETS = {"avx2": isa.AVX2, "avx512": isa.AVX512, "avx512_vnni": isa.AVX512_VNNI, "avxvnni": isa.AVX_VNNI}


@pytest.mark.parametrize("cpu", CLASS_TARGETS)
@pytest.mark.parametrize("name,kw", CLASS_VARIANTS, ids=[f"{n}-{mz.variant_name(**kw)}" for n, kw in CLASS_VARIANTS])
def test_each_cpu_class_matches_exact_reference(name, kw, cpu, zoo_dir):
    """The code each CPU class gets (vpmaddwd int16 kernels without VNNI, vpdpbusd with) computes the
    exact result too; executed where this CPU has the class's features, skipped (after compiling) elsewhere."""
    zm = mz.build(name, zoo_dir, **kw)
    model = qcompiler.compile(str(zm.quant_path), target=CLASS_TARGETS[cpu])
    isa.skip_unless_executable(CLASS_TARGETS[cpu])
    reference = er.ExactReference(zm.quant_path)
    for feeds in zm.make_inputs(4, seed=99):
        _assert_agrees(name, zm.quant_path, model(**feeds), reference.run(feeds)[0])


def near_tie_matmul(k: int = 64, n: int = 64, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A QDQ MatMul (uint8 input, per-column int8 weights) whose n outputs all lie within ~1e-5 of a .5
    tie, by choice of each column's weight scale; returns (model, input, exactly rounded output).

    The exact value comes from rational arithmetic on the float32 scales. float32 evaluation (onnx's
    ReferenceEvaluator as written) misrounds ~15% of them, ORT on VNNI a few."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (1, k)).astype(np.uint8)
    b = rng.integers(-127, 128, (k, n)).astype(np.int8)
    a_scale, y_scale = np.float32(0.02), np.float32(0.05)
    acc = ((a.astype(np.int64) - 128) @ b.astype(np.int64))[0]
    target = np.sign(acc) * (rng.integers(5, 40, n) + 0.5 - 3e-6)
    b_scale = (target * float(y_scale) / (float(a_scale) * acc)).astype(np.float32)
    exact = [Fraction(int(c)) * Fraction(float(a_scale)) * Fraction(float(s)) / Fraction(float(y_scale))
             for c, s in zip(acc, b_scale)]
    assert all(0 < abs(e - math.floor(e) - Fraction(1, 2)) < Fraction(1, 10 ** 5) for e in exact)  # near, not on
    expected = np.clip([round(e) + 128 for e in exact], 0, 255).astype(np.uint8)[None]
    nodes = [helper.make_node("DequantizeLinear", ["a", "a_scale", "zp"], ["af"]),
             helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zp"], ["bf"], axis=1),
             helper.make_node("MatMul", ["af", "bf"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "y_scale", "zp"], ["q"])]
    inits = dict(a_scale=a_scale, zp=np.uint8(128), b=b, b_scale=b_scale, b_zp=np.zeros(n, np.int8),
                 y_scale=y_scale)
    graph = helper.make_graph(nodes, "near_ties", [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, n])],
                              [numpy_helper.from_array(np.asarray(v), name) for name, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), a, expected


@pytest.mark.parametrize("cpu", CLASS_TARGETS)
def test_near_ties_round_as_the_exact_value(cpu):
    """64 results within ~1e-5 of a .5 tie: the exact reference and every CPU class's code round each
    one as the exact rational value does (no slack: these are not float ties for either)."""
    model, a, expected = near_tie_matmul()
    np.testing.assert_array_equal(er.reference_run(model, {"a": a})[0], expected)
    compiled = qcompiler.compile(model, target=CLASS_TARGETS[cpu])
    isa.skip_unless_executable(CLASS_TARGETS[cpu])
    np.testing.assert_array_equal(compiled(a=a), expected)


def expose_quantized_tensors(path, out_path) -> list[str]:
    """A copy of the model whose outputs are all QuantizeLinear results (topological order)."""
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    shapes = onnx.shape_inference.infer_shapes(model).graph.value_info
    by_name = {v.name: v for v in shapes}
    model.graph.output.extend([by_name[n] for n in names])
    onnx.save(model, str(out_path))
    return names


TENSOR_VARIANTS = [("transformer", kw) for kw in mz.standard_variants("transformer")]
TENSOR_VARIANTS += [("cnn", kw) for kw in mz.standard_variants("cnn") if kw["quant_format"] == "qdq"]
TENSOR_VARIANTS.append(("cnn", mz.REDUCE_RANGE_CNN))


@pytest.mark.parametrize("name,kw", TENSOR_VARIANTS, ids=[f"{n}-{mz.variant_name(**kw)}" for n, kw in TENSOR_VARIANTS])
def test_every_quantized_tensor_matches_exact_reference(name, kw, zoo_dir, tmp_path):
    """Each QuantizeLinear result, not just the graph output, meets the integer criterion (the exact
    reference makes no tie go the other way, so later tensors do not inherit differences)."""
    zm = mz.build(name, zoo_dir, **kw)
    exposed = tmp_path / "exposed.onnx"
    names = expose_quantized_tensors(zm.quant_path, exposed)
    model = qcompiler.compile(str(exposed))
    reference = er.ExactReference(exposed)
    for feeds in zm.make_inputs(4, seed=99):
        ours, expected = model(**feeds), reference.run(feeds)
        assert len(ours) == len(expected) == len(names) + 1
        for tensor, a, b in zip(names, ours[1:], expected[1:]):
            er.assert_matches_reference(a, b, what=tensor)


def _constants(mod: tvm.IRModule):
    found = []

    @relax.expr_functor.visitor
    class Collect(relax.PyExprVisitor):
        def visit_generic_const_(self, op):
            found.append(op.value.numpy())

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            Collect().visit_expr(func)
    return found


#: Each CPU class's weight operand type: vpdpbusd multiplies int8; vpmaddwd int16 (pre-widened int8).
WEIGHT_DTYPES = {"avx2": (isa.AVX2, np.int16), "avx512": (isa.AVX512, np.int16),
                 "avx512_vnni": (isa.AVX512_VNNI, np.int8)}


@pytest.mark.parametrize("cpu", WEIGHT_DTYPES)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_weights_are_stored_as_integers(name, cpu, zoo_dir):
    """The module compiled into the library holds the weights as the integer type its micro-kernels
    multiply (int8 values in either case), not as float32. Built for each CPU class on every host
    (compiled, not run)."""
    zm = mz.build(name, zoo_dir, quant_format="qdq", activation="int8", per_channel=True, op_types="all")
    spec, packed_dtype = WEIGHT_DTYPES[cpu]
    mod, _ = from_onnx(str(zm.quant_path))
    target = resolve_target(spec)
    constants = _constants(schedule_module(lower_to_integer(mod, target), target))
    weights = [c for c in constants if c.ndim >= 2]
    assert weights and all(c.dtype in (np.int8, packed_dtype) for c in weights), [(c.shape, c.dtype) for c in weights]
    assert any(c.dtype == packed_dtype for c in weights), [(c.shape, c.dtype) for c in weights]
    assert all(-128 <= c.min() and c.max() <= 127 for c in weights)
    big_floats = [c.shape for c in constants if c.dtype.kind == "f" and c.size > 1]
    assert big_floats == [], big_floats
