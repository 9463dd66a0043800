"""Every architecture of the benchmark zoo (benchmarks/models/zoo.py), small, against the exact reference.

The full-size models are the benchmark (benchmarks/models.py); here each architecture is built at its
small size (its own blocks and ops, fewer layers, narrow channels, 32x32 images / 16 tokens), exported
and quantized as users do (torch.onnx.export -> quantize_static QDQ), compiled for this host and compared
with onnx's ReferenceEvaluator (tests/exact_reference.py, float64): quantized outputs (the CNNs' logits
come from a DequantizeLinear) >= 99.9% identical and at most 1 step apart; float outputs (the
transformers' hidden states, after float LayerNorm/softmax/GELU islands computed in float32 here and in
float64 there) at cosine >= 0.9999. Two CNNs also in QOperator form, and the AVX2 build of every model,
which runs on every x86-64-v3 host, must give the host build's outputs bit for bit.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import exact_reference as er
import model_zoo as mz
import qcompiler
from qcompiler.target import host_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "models"))
import zoo  # noqa: E402  (benchmarks/models/zoo.py)

#: Float outputs: the float islands round differently in float32 (here) and float64 (the reference), and a
#: rounding tie upstream may move one quantized activation by a step: the outputs stay this close.
MIN_COSINE = 0.9999
FP32_TOLERANCE = 1e-3  # fp32 ONNX vs torch, relative to the output's spread


@pytest.fixture(scope="session")
def small_zoo(tmp_path_factory):
    """``small_zoo(name)``: the small zoo model, built once per session under pytest's temporary directory."""
    directory = tmp_path_factory.mktemp("zoo-small")
    return functools.cache(lambda name: zoo.build(name, directory, "small"))


@functools.cache
def _compiled(path: str, target: str | None = None):
    return qcompiler.compile(path, target=target)


def _assert_agrees(path: Path, ours: np.ndarray, expected: np.ndarray) -> None:
    scale = mz.output_scale(path)
    if scale is not None:
        er.assert_matches_reference(ours, expected, scale)
        return
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    a, b = ours.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine >= MIN_COSINE, f"cosine {cosine:.6f}, max |diff| {np.abs(a - b).max():.4g}"


@pytest.mark.parametrize("name", zoo.NAMES)
def test_fp32_export_matches_torch(name: str, small_zoo) -> None:
    """The zoo is what it says: the exported fp32 ONNX computes the torch module's function."""
    import torch

    model = small_zoo(name)
    feeds = model.make_inputs(1, 5)[0]
    (got,) = mz.ort_run(model.fp32_path, feeds)
    with torch.no_grad():
        want = zoo.build_torch(name, "small")(torch.from_numpy(feeds[model.input_name])).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= FP32_TOLERANCE * (np.ptp(want) + 1e-6)


@pytest.mark.parametrize("name", zoo.NAMES)
def test_small_zoo_model_matches_exact_reference(name: str, small_zoo) -> None:
    model = small_zoo(name)
    ops = mz.op_counts(model.quant_path)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0, ops
    compiled = _compiled(str(model.quant_path))
    int8_ops = compiled.metadata["ops"]["int8"]
    assert int8_ops.get("conv2d", 0) + int8_ops.get("dense", 0) + int8_ops.get("batch_matmul", 0) > 0, int8_ops
    reference = er.ExactReference(model.quant_path)
    for feeds in model.make_inputs(2, 99):
        _assert_agrees(model.quant_path, compiled(**feeds), reference.run(feeds)[0])


@pytest.mark.parametrize("name", [n for n in zoo.NAMES if zoo.ARCHITECTURES[n].qoperator])
def test_small_zoo_qoperator_matches_exact_reference(name: str, small_zoo) -> None:
    model = small_zoo(name)
    assert "QLinearConv" in mz.op_counts(model.qoperator_path)
    compiled = _compiled(str(model.qoperator_path))
    reference = er.ExactReference(model.qoperator_path)
    feeds = model.make_inputs(1, 99)[0]
    _assert_agrees(model.qoperator_path, compiled(**feeds), reference.run(feeds)[0])


@pytest.mark.skipif("avx512f" not in host_features(), reason="on an AVX2 host the host build is the AVX2 build")
@pytest.mark.parametrize("name", zoo.NAMES)
def test_avx2_build_gives_the_host_builds_answer(name: str, small_zoo) -> None:
    """One model, one answer: the x86-avx2 build (vpmaddwd ymm) and the host's (AVX-512/VNNI) agree exactly."""
    model = small_zoo(name)
    host, avx2 = _compiled(str(model.quant_path)), _compiled(str(model.quant_path), "x86-avx2")
    feeds = model.make_inputs(1, 99)[0]
    np.testing.assert_array_equal(avx2(**feeds), host(**feeds))


def test_real_text_inputs_are_tokenized_sentences(small_zoo) -> None:
    """MiniLM's inputs are windows of real tokenized text (not random ids): they start inside the vocabulary's
    word range and decode back to words of the zoo's sentences."""
    from transformers import AutoTokenizer

    ids = zoo.make_inputs(zoo.ARCHITECTURES["minilm-l6"], "small", 1, 0)[0]["input_ids"]
    text = AutoTokenizer.from_pretrained(str(zoo.minilm_dir())).decode(ids[0])
    words = {w.strip(".,:").lower() for s in zoo.SENTENCES for w in s.split()}
    assert sum(w.strip(".,:") in words for w in text.split()) >= len(text.split()) // 2, text
    assert onnx.load(str(small_zoo("minilm-l6").fp32_path)).graph.input[0].name == "input_ids"
