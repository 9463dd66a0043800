"""Quick checks that the model zoo and the bundled digits example are what tests rely on.

The compiler's correctness tests compare against ONNX Runtime on these files, so a broken zoo
(wrong export, quantizer silently skipping ops, stale example) would make them meaningless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import model_zoo as mz

# fp32 ONNX vs torch: same math, different kernels/summation order; outputs are O(1).
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4

VARIANTS = [(name, kw) for name in mz.MODEL_NAMES for kw in mz.standard_variants(name)]


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
    for f in feeds:
        (q,) = mz.ort_run(zm.quant_path, f)
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
