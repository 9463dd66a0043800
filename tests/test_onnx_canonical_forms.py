"""What exporters write, normalized before import so it keeps its integer kernels and its ONNX meaning:
an explicit zero Pad before a Conv and SAME auto-padding become the Conv's pads (transformers' EfficientNet
and MobileNetV2), a whole-input AveragePool is a global one (EfficientNet's 1280x1280 ceil_mode pooler), and
traced shape arithmetic is folded into constants. Each compiled model against the exact reference."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import exact_reference as er
import qcompiler

RNG = np.random.default_rng(21)
F32 = np.float32


def _qdq_model(path, nodes, inits, x_shape, y_name, y_shape, opset=17):
    inits = dict(inits, x_s=np.array(0.05, F32), x_z=np.array(128, np.uint8), y_s=np.array(0.1, F32),
                 y_z=np.array(120, np.uint8))
    head = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xf"])]
    tail = [helper.make_node("QuantizeLinear", [y_name, "y_s", "y_z"], ["y"])]
    graph = helper.make_graph(head + nodes + tail, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), path)
    return path


def _conv_weight(out_c, in_c, k):
    return {"w": RNG.integers(-127, 128, (out_c, in_c, k, k), dtype=np.int8),
            "w_s": RNG.uniform(0.002, 0.01, out_c).astype(F32), "w_z": np.zeros(out_c, np.int8)}


def _check(path, x_shape):
    model = qcompiler.compile(str(path))
    assert model.metadata["ops"]["fp32"] == {}, model.metadata["ops"]
    x = RNG.integers(0, 256, x_shape, dtype=np.uint8)
    np.testing.assert_array_equal(model(x=x), er.reference_run(path, {"x": x})[0])
    return model


@pytest.mark.parametrize("requantized", [False, True], ids=["pad-conv", "pad-qdq-conv"])
def test_zero_pad_before_a_conv_becomes_its_padding(tmp_path, requantized):
    """Pad(0) -> Conv(auto_pad VALID), and Pad(0) -> Q -> DQ -> Conv as quantize_static writes it."""
    inits = dict(_conv_weight(8, 1, 3), pads=np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
                 zero=np.array(0.0, F32))
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wf"], axis=0),
             helper.make_node("Pad", ["xf", "pads", "zero"], ["p"])]
    conv_in = "p"
    if requantized:
        nodes += [helper.make_node("QuantizeLinear", ["p", "x_s", "x_z"], ["pq"]),
                  helper.make_node("DequantizeLinear", ["pq", "x_s", "x_z"], ["pf"])]
        conv_in = "pf"
    nodes.append(helper.make_node("Conv", [conv_in, "wf"], ["c"], kernel_shape=[3, 3], strides=[2, 2], group=8,
                                  auto_pad="VALID"))
    path = _qdq_model(tmp_path / "pad_conv.onnx", nodes, inits, [1, 8, 9, 9], "c", [1, 8, 5, 5])
    model = _check(path, [1, 8, 9, 9])
    assert model.metadata["ops"]["int8"].get("conv2d") == 1


@pytest.mark.parametrize("mode,stride", [("SAME_UPPER", 1), ("SAME_UPPER", 2), ("SAME_LOWER", 2)])
def test_same_auto_padding_becomes_explicit_pads(tmp_path, mode, stride):
    inits = _conv_weight(16, 8, 5)
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf"], ["c"], kernel_shape=[5, 5], strides=[stride, stride],
                              auto_pad=mode)]
    out = -(-10 // stride)
    path = _qdq_model(tmp_path / "same.onnx", nodes, inits, [1, 8, 10, 10], "c", [1, 16, out, out])
    model = _check(path, [1, 8, 10, 10])
    assert model.metadata["ops"]["int8"].get("conv2d") == 1


def test_average_pool_over_the_whole_input_is_global(tmp_path):
    """transformers' EfficientNet: AvgPool2d(1280, ceil_mode=True) over a 7x7 map is the mean of the map."""
    nodes = [helper.make_node("AveragePool", ["xf"], ["a"], kernel_shape=[64, 64], strides=[64, 64], ceil_mode=1,
                              count_include_pad=1)]
    path = _qdq_model(tmp_path / "pool.onnx", nodes, {}, [1, 16, 7, 7], "a", [1, 16, 1, 1])
    model = _check(path, [1, 16, 7, 7])
    assert model.metadata["ops"]["int8"].get("avg_pool2d") == 1


def test_traced_shape_arithmetic_is_folded_into_the_pad(tmp_path):
    """Pad widths computed from Shape -> Gather -> Sub -> Concat (what "same" padding exports): folded to
    constants once the input shape is fixed, so TVM's importer (which needs constant pads) takes it."""
    inits = dict(_conv_weight(4, 4, 3), idx=np.array([2], np.int64), nine=np.array([11], np.int64),
                 zeros6=np.zeros(6, np.int64), zero=np.array(0.0, F32))
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wf"], axis=0),
             helper.make_node("Shape", ["xf"], ["shape"]),
             helper.make_node("Gather", ["shape", "idx"], ["h"], axis=0),
             helper.make_node("Sub", ["nine", "h"], ["extra"]),  # 11 - 9 = 2 rows/cols at the end
             helper.make_node("Concat", ["zeros6", "extra", "extra"], ["pads"], axis=0),
             helper.make_node("Pad", ["xf", "pads", "zero"], ["p"]),
             helper.make_node("Conv", ["p", "wf"], ["c"], kernel_shape=[3, 3])]
    path = _qdq_model(tmp_path / "traced.onnx", nodes, inits, [1, 4, 9, 9], "c", [1, 4, 9, 9])
    _check(path, [1, 4, 9, 9])


def test_float_patch_conv_runs_as_a_matmul(tmp_path):
    """ViT's patch embedding (a float Conv with kernel == stride) as Reshape/Transpose/MatMul: the same
    values as the exact reference to float rounding, and no float conv2d left."""
    w = RNG.standard_normal((32, 3, 4, 4)).astype(F32)
    b = RNG.standard_normal(32).astype(F32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[4, 4], strides=[4, 4])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 4, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "patch.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    model = qcompiler.compile(str(path))
    assert "conv2d" not in model.metadata["ops"]["fp32"] and "matmul" in model.metadata["ops"]["fp32"]
    x = RNG.standard_normal((1, 3, 16, 12)).astype(F32)
    expected = er.reference_run(path, {"x": x})[0]
    np.testing.assert_allclose(model(x=x), expected, rtol=1e-5, atol=1e-5)


def test_a_float_conv1d_with_kernel_equal_to_stride_is_left_alone(tmp_path):
    """Only 2-D patch convs are rewritten: a Conv1d of the same form imports and computes as before."""
    w = RNG.standard_normal((8, 3, 4)).astype(F32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[4], strides=[4])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4])], [numpy_helper.from_array(w, "w")])
    path = tmp_path / "conv1d.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    model = qcompiler.compile(str(path))
    x = RNG.standard_normal((1, 3, 16)).astype(F32)
    np.testing.assert_allclose(model(x=x), er.reference_run(path, {"x": x})[0], rtol=1e-5, atol=1e-5)
