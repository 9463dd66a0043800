"""Float elementwise regions between one 8-bit tensor and an 8-bit result become 256-entry tables
(passes/lookup_tables.py): SiLU on quantized data as in EfficientNet, exact against a numpy
reference computed in float64; layout transposes around the region cancel; per-channel regions and
regions of two tensors keep their float code."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

import int_reference as ref
from test_integer_kernels import dq, q, rand_q, assert_exact, build_graph, f32, graph_module
from qcompiler.build import lower_to_integer
from qcompiler.target import resolve_target

SHAPE = (1, 16, 16, 32)
SX, SS, SO = f32(0.04), f32(1 / 256), f32(0.03)


def _silu(bb, x, zx, zo, out_dtype, x_scale=SX):
    """q(x * q(sigmoid(x))) on dequantized x, the QDQ form of EfficientNet's SiLU."""
    s = q(bb, bb.emit(relax.op.sigmoid(dq(bb, x, x_scale, zx))), SS, 0, "uint8")
    return q(bb, bb.emit(relax.op.multiply(dq(bb, x, x_scale, zx), dq(bb, s, SS, 0))), SO, zo, out_dtype)


def _silu_reference(x: np.ndarray, zx: int, zo: int, out_dtype: str) -> np.ndarray:
    real = (x.astype(np.float64) - zx) * np.float64(SX)
    sig = np.clip(np.round(1 / (1 + np.exp(-real)) / np.float64(SS)), 0, 255).astype(np.int64)  # half-even
    return ref.qmul(x, zx, sig, 0, np.float64(SX) * np.float64(SS) / np.float64(SO), zo, out_dtype)


def _lowered_text(inputs: dict, body) -> str:
    return str(lower_to_integer(graph_module(inputs, body)[0], resolve_target(None)))


@pytest.mark.parametrize("x_dtype,zx,out_dtype,zo", [("uint8", 120, "uint8", 10), ("int8", -5, "int8", -100)])
def test_silu_is_an_exact_table(x_dtype, zx, out_dtype, zo):
    x = rand_q(SHAPE, x_dtype)
    x.flat[:256] = np.arange(256) - (128 if x_dtype == "int8" else 0)  # every value occurs
    body = lambda bb, xv: _silu(bb, xv, zx, zo, out_dtype)  # noqa: E731
    text = _lowered_text({"x": x}, body)
    assert "R.take" in text and "sigmoid" not in text and "multiply" not in text
    model = build_graph({"x": x}, body)
    assert model.metadata["ops"]["fp32"] == {}, model.metadata["ops"]
    assert_exact(model(x=x), _silu_reference(x, zx, zo, out_dtype))


def test_transposes_around_a_table_cancel():
    x = rand_q(SHAPE, "uint8")

    def body(bb, xv):
        nchw = bb.emit(relax.op.permute_dims(xv, [0, 3, 1, 2]))
        return bb.emit(relax.op.permute_dims(_silu(bb, nchw, 128, 0, "uint8"), [0, 2, 3, 1]))

    text = _lowered_text({"x": x}, body)
    assert "R.take" in text and "permute_dims" not in text
    assert_exact(build_graph({"x": x}, body)(x=x), _silu_reference(x, 128, 0, "uint8"))


def test_per_channel_and_two_tensor_regions_stay_float():
    x, y = rand_q(SHAPE, "uint8"), rand_q(SHAPE, "uint8")
    per_channel = lambda bb, xv: _silu(bb, xv, 128, 0, "uint8", x_scale=np.full(32, SX, np.float32))  # noqa: E731
    assert "R.take" not in _lowered_text({"x": x}, per_channel)

    def two_tensors(bb, xv, yv):
        s = q(bb, bb.emit(relax.op.sigmoid(dq(bb, yv, SX, 128))), SS, 0, "uint8")
        return q(bb, bb.emit(relax.op.multiply(dq(bb, xv, SX, 128), dq(bb, s, SS, 0))), SO, 0, "uint8")

    text = _lowered_text({"x": x, "y": y}, two_tensors)
    assert text.count("R.take") == 1  # sigmoid(y) alone is a table; the product of x and it is not
