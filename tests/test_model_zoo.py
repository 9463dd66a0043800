"""Quick checks that the model zoo and the bundled digits example are what tests rely on.

The compiler's correctness tests compare against the exact reference (tests/exact_reference.py) and
ONNX Runtime on these files, so a broken zoo (wrong export, quantizer silently skipping ops, stale
example) or a reference that changes a model's meaning would make them meaningless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import exact_reference as er
import model_zoo as mz

# fp32 ONNX vs torch: same math, different kernels/summation order; outputs are O(1).
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4

VARIANTS = [(name, kw) for name in mz.MODEL_NAMES for kw in mz.standard_variants(name)]
VARIANTS.append(("cnn", mz.REDUCE_RANGE_CNN))


def _variant_id(case) -> str:
    name, kw = case
    return f"{name}-{mz.variant_name(**kw)}"


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("name", mz.MODEL_NAMES)
def test_fp32_onnx_matches_torch(name: str, zoo_dir: Path) -> None:
    import torch

    zm = mz.build(name, zoo_dir)
    model = mz.build_torch(name)
    for feeds in zm.make_inputs(3, seed=1):
        (got,) = mz.ort_run(zm.fp32_path, feeds)
        with torch.no_grad():
            want = model(torch.from_numpy(feeds[zm.input_name])).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("case", VARIANTS, ids=_variant_id)
def test_quantized_variant_runs_and_is_quantized(case, zoo_dir: Path) -> None:
    name, kw = case
    zm = mz.build(name, zoo_dir, **kw)
    ops = mz.op_counts(zm.quant_path)
    if kw["quant_format"] == "qdq":
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0, ops
    else:
        qlinear = {"QLinearConv", "QLinearMatMul", "QGemm"}
        assert qlinear & set(ops), ops
    if name == "transformer":
        # MatMul-only must leave Adds float; the MatMul+Add variant must quantize them too.
        n_dq = ops.get("DequantizeLinear", 0)
        base = mz.build(name, zoo_dir, **{**kw, "op_types": mz.TRANSFORMER_MATMUL})
        if tuple(kw["op_types"]) == mz.TRANSFORMER_MATMUL_ADD:
            assert n_dq > mz.op_counts(base.quant_path)["DequantizeLinear"]

    feeds = zm.make_inputs(2, seed=7)
    quantized = er.ExactReference(zm.quant_path)
    for f in feeds:
        # The exact reference, not ORT: without VNNI ORT's u8s8 kernels saturate int16 pair sums,
        # which adds its own error on top of the quantization error this checks.
        (q,) = quantized.run(f)
        (ref,) = mz.ort_run(zm.fp32_path, f)
        assert q.shape == ref.shape and q.dtype == np.float32
        # Sanity, not accuracy: int8 must track fp32 to a few percent of the output spread.
        assert np.mean(np.abs(q - ref)) < 0.05 * np.std(ref) + 1e-6


@pytest.mark.parametrize("case", VARIANTS, ids=_variant_id)
def test_output_scale_found_when_output_is_dequantized(case, zoo_dir: Path) -> None:
    name, kw = case
    zm = mz.build(name, zoo_dir, **kw)
    scale = mz.output_scale(zm.quant_path)
    if name == "transformer":
        assert scale is None  # output comes from a float LayerNormalization in every variant
        return
    assert scale is not None and 0 < scale < 1
    # Dequantized outputs lie on the grid zero_point + k*scale: diffs are whole steps.
    a, b = (mz.ort_run(zm.quant_path, f)[0] for f in zm.make_inputs(2, seed=3))
    stats = mz.compare_quantized(a, b, scale)
    assert stats["max_steps"] == pytest.approx(round(stats["max_steps"]), abs=1e-2)


def test_build_is_cached_and_deterministic(zoo_dir: Path, tmp_path: Path) -> None:
    first = mz.build("mlp", zoo_dir)
    mtime = first.quant_path.stat().st_mtime_ns
    again = mz.build("mlp", zoo_dir)
    assert again.quant_path == first.quant_path
    assert again.quant_path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    fresh = mz.build("mlp", tmp_path)
    assert fresh.quant_path.read_bytes() == first.quant_path.read_bytes()
    a = first.make_inputs(2, 5)
    b = fresh.make_inputs(2, 5)
    assert all(np.array_equal(x[mz.INPUT_NAME], y[mz.INPUT_NAME]) for x, y in zip(a, b))


def test_build_rejects_unknown_names(zoo_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown zoo model"):
        mz.build("resnet", zoo_dir)
    with pytest.raises(ValueError, match="quant_format"):
        mz.build("mlp", zoo_dir, quant_format="int4")


def test_compare_quantized() -> None:
    ref = np.array([0, 10, 20, 30], dtype=np.uint8)
    ours = np.array([0, 11, 20, 27], dtype=np.uint8)
    s = mz.compare_quantized(ours, ref)
    assert s["identical_frac"] == 0.5 and s["max_steps"] == 3 and s["within_1_step_frac"] == 0.75
    scale = 0.05
    s = mz.compare_quantized(ours.astype(np.float32) * scale, ref.astype(np.float32) * scale, scale)
    assert s["max_steps"] == pytest.approx(3) and s["within_1_step_frac"] == 0.75
    assert s["max_abs_diff"] == pytest.approx(0.15)
    s = mz.compare_quantized(ours.astype(np.float32), ref.astype(np.float32))
    assert s["max_steps"] is None and s["max_abs_diff"] == 3


def _int8_weights(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.dims]


def test_reduce_range_cnn_has_7_bit_weights_and_onnxruntime_is_exact_on_it(zoo_dir: Path) -> None:
    """reduce_range=True gives weights in [-64, 64] (the 8-bit CNN uses the full [-127, 127]), so ORT is
    exact on it on every CPU: its outputs meet the exact-reference criterion here, whatever the CPU."""
    rr = mz.build("cnn", zoo_dir, **mz.REDUCE_RANGE_CNN)
    full = mz.build("cnn", zoo_dir, **{**mz.REDUCE_RANGE_CNN, "reduce_range": False})
    assert rr.variant == "qdq_u8_pc_all_rr" and rr.quant_path != full.quant_path
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in _int8_weights(rr.quant_path)) == 64
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in _int8_weights(full.quant_path)) == 127
    assert er.ort_exact_without_vnni(rr.quant_path) and not er.ort_exact_without_vnni(full.quant_path)
    reference, session = er.ExactReference(rr.quant_path), mz.ort_session(rr.quant_path)
    for feeds in rr.make_inputs(8, seed=5):
        er.assert_matches_reference(session.run(None, feeds)[0], reference.run(feeds)[0], mz.output_scale(rr.quant_path))


def _softmax_model(opset: int) -> onnx.ModelProto:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    graph = helper.make_graph([node], "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def _softmax(x: np.ndarray, axis) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_reference_keeps_the_meaning_of_ops_across_its_opset_raise() -> None:
    """The reference runs at opset 21: a plain raise where the ops mean the same (Softmax-13), onnx's
    version converter where they do not (Softmax-11 normalizes over all dims from axis on)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    assert [n.op_type for n in er.reference_model(_softmax_model(13)).graph.node] == ["Softmax"]
    np.testing.assert_allclose(er.reference_run(_softmax_model(13), {"x": x})[0], _softmax(x, 1), rtol=1e-6)
    assert "Flatten" in [n.op_type for n in er.reference_model(_softmax_model(11)).graph.node]
    legacy = _softmax(x.reshape(2, 12), 1).reshape(2, 3, 4)
    np.testing.assert_allclose(er.reference_run(_softmax_model(11), {"x": x})[0], legacy, rtol=1e-6)
    assert {o.version for o in er.reference_model(_softmax_model(11)).opset_import} == {er.REFERENCE_OPSET}


# ---------------------------------------------------------------------------------------------
# bundled digits example


def _digits_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    sess = mz.ort_session(path)  # one session: the model's batch is fixed at 1
    preds = [int(np.argmax(sess.run(None, {"image": img[None]})[0])) for img in images]
    return float(np.mean(np.asarray(preds) == labels))


def test_digits_example_accuracy() -> None:
    from qcompiler.examples import example_path

    test = np.load(example_path("digits_test.npz"))
    images, labels = test["images"], test["labels"]
    assert images.dtype == np.float32 and images.shape[1:] == (1, 8, 8)
    assert labels.dtype == np.int64 and len(labels) == len(images) >= 300
    qdq = example_path("digits_cnn_qdq.onnx")
    ops = mz.op_counts(qdq)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    acc_fp32 = _digits_accuracy(example_path("digits_cnn_fp32.onnx"), images, labels)
    acc_int8 = _digits_accuracy(qdq, images, labels)
    assert acc_int8 >= 0.93
    assert abs(acc_fp32 - acc_int8) <= 0.02


def test_example_path_names_missing_file() -> None:
    from qcompiler.examples import example_path

    assert example_path("digits_cnn_qdq.onnx").stat().st_size < 200_000
    with pytest.raises(FileNotFoundError, match="no_such_model.onnx"):
        example_path("no_such_model.onnx")
