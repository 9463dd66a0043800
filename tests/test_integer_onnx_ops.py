"""ONNX integer ops (MatMulInteger, ConvInteger) and dynamic shapes, compiled and run against the exact
reference (tests/exact_reference.py) on every CPU, and against ONNX Runtime where ORT is exact (VNNI CPUs:
without VNNI its u8 x s8 kernels saturate int16 pair sums)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import exact_reference as er
import isa
import qcompiler
from qcompiler.examples import example_path

RNG = np.random.default_rng(11)


def _save(nodes, inputs, outputs, inits, path):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def assert_exact(ours: np.ndarray, model, feeds: dict) -> None:
    """``ours`` equals the exact reference's first output, and ORT's where ORT is exact on this CPU."""
    np.testing.assert_array_equal(ours, er.reference_run(model, feeds)[0], err_msg="vs exact reference")
    if er.ort_is_exact(model):
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        expected = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_array_equal(ours, expected, err_msg="vs onnxruntime")


def test_matmul_integer_is_an_exact_int32_kernel(tmp_path):
    a = RNG.integers(0, 256, (4, 32), dtype=np.uint8)
    inits = {"b": RNG.integers(-128, 128, (32, 16), dtype=np.int8), "a_zp": np.array(3, np.uint8),
             "b_zp": np.array(2, np.int8)}
    path = tmp_path / "mmi.onnx"
    _save([helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])],
          [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, 32])],
          [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 16])], inits, path)
    model = qcompiler.compile(str(path))
    assert model.metadata["ops"]["int8"] == {"dense": 1} and model.metadata["ops"]["fp32"] == {}
    assert_exact(model(a=a), path, {"a": a})


def test_conv_integer_is_an_exact_int32_kernel(tmp_path):
    x = RNG.integers(0, 256, (1, 4, 8, 8), dtype=np.uint8)
    inits = {"w": RNG.integers(0, 256, (8, 4, 3, 3), dtype=np.uint8), "x_zp": np.array(7, np.uint8),
             "w_zp": np.array(120, np.uint8)}
    path = tmp_path / "convi.onnx"
    _save([helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["y"], pads=[1, 1, 1, 1])],
          [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])],
          [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8, 8, 8])], inits, path)
    model = qcompiler.compile(str(path))
    assert model.metadata["ops"]["int8"] == {"conv2d": 1} and model.metadata["ops"]["fp32"] == {}
    assert_exact(model(x=x), path, {"x": x})


@pytest.fixture()
def dynamic_batch_model(tmp_path):
    model = onnx.load(str(example_path("digits_cnn_qdq.onnx")))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "batch"
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    return path


def test_dynamic_batch_needs_and_takes_input_shapes(dynamic_batch_model):
    with pytest.raises(qcompiler.QCompilerError, match=r"input 'image' has a dynamic dimension 'batch'.*--input-shapes"):
        qcompiler.compile(str(dynamic_batch_model))
    model = qcompiler.compile(str(dynamic_batch_model), input_shapes={"image": (1, 1, 8, 8)})
    assert model.signature.inputs[0].shape == (1, 1, 8, 8) and model.signature.outputs[0].shape == (1, 10)
    image = np.load(example_path("digits_test.npz"))["images"][:1]
    assert_exact(model(image=image), dynamic_batch_model, {"image": image})


def test_transpose_of_a_quantized_input_cancels_with_the_channels_last_edge():
    """An NHWC uint8 graph input transposed to NCHW before its DequantizeLinear feeds a channels-last
    conv (the VNNI path, built for an AVX-512 VNNI CPU on every host): the two transposes cancel, only
    the NCHW output transpose remains. Exact where it runs; this host's own build is exact everywhere."""
    from test_roofline import qdq_depthwise
    model = qdq_depthwise(c=32, hw=20)
    feeds = {"x_nhwc": np.random.default_rng(0).integers(0, 256, (1, 20, 20, 32), dtype=np.uint8)}
    assert_exact(qcompiler.compile(model)(**feeds), model, feeds)
    vnni = qcompiler.compile(model, target=isa.AVX512_VNNI)
    assert [k["name"] for k in vnni.metadata["kernels"]] == ["qconv2d", "transpose"]
    isa.skip_unless_executable(isa.AVX512_VNNI)
    assert_exact(vnni(**feeds), model, feeds)
