"""fp32 islands: erf, tanh, sigmoid and softmax compile to vectorized polynomials, not per-lane libm
calls, and stay within a few float32 ulp of the exact functions (computed in float64 by numpy/math,
sharing no code with the product)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tvm import relax

from test_float_islands import _build_unary

SHAPE = (16, 128)


def _compile_unary(make_op):
    model = _build_unary(SHAPE, make_op)
    return model, "\n".join(m.inspect_source("asm") for m in model.executable.mod.imports)


def _ulp_error(got: np.ndarray, exact: np.ndarray) -> float:
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return float((np.abs(got.astype(np.float64) - exact) / ulp).max())


def _softmax64(v: np.ndarray) -> np.ndarray:
    # the float32 subtraction of the row maximum is part of the float32 op (exp amplifies its rounding
    # by |x - max|), so the exact value is taken from the float32 differences
    delta = (v.astype(np.float32) - v.max(axis=-1, keepdims=True).astype(np.float32)).astype(np.float64)
    e = np.exp(delta)
    return e / e.sum(axis=-1, keepdims=True)


CASES = {
    # op, exact float64 function, input range, max ulp allowed
    "erf": (relax.op.erf, np.vectorize(math.erf), (-5, 5), 8),  # measured 4.3
    "tanh": (relax.op.tanh, np.tanh, (-10, 10), 8),  # measured 3.5
    "sigmoid": (relax.op.sigmoid, lambda v: 1 / (1 + np.exp(-v)), (-30, 30), 8),  # measured 2.5
    "softmax": (lambda x: relax.op.nn.softmax(x, axis=-1), _softmax64, (-40, 10), 8),  # measured 5.9
}


@pytest.mark.parametrize("name", CASES)
def test_transcendental_is_vectorized_and_accurate(name):
    make_op, exact_fn, (lo, hi), max_ulp = CASES[name]
    model, asm = _compile_unary(make_op)
    for libm in ("erff", "expf", "tanhf"):
        assert libm not in asm  # no scalar libm call per lane
    values = np.random.default_rng(0).uniform(lo, hi, SHAPE).astype(np.float32)
    values.flat[:3] = (0.0, lo, hi)
    exact = exact_fn(values.astype(np.float64))
    assert _ulp_error(model(x=values), exact) <= max_ulp


def test_saturating_inputs_keep_their_limits():
    model, _ = _compile_unary(relax.op.sigmoid)
    values = np.full(SHAPE, 0.0, np.float32)
    values[0, :4] = (-1e30, -100.0, 100.0, 1e30)
    out = model(x=values)
    np.testing.assert_array_equal(out[0, :4], [0.0, 0.0, 1.0, 1.0])
    masked = np.zeros(SHAPE, np.float32)
    masked[:, 64:] = np.finfo(np.float32).min  # an attention mask's "minus infinity"
    probs = _compile_unary(lambda x: relax.op.nn.softmax(x, axis=-1))[0](x=masked)
    np.testing.assert_array_equal(probs[:, 64:], 0.0)
    np.testing.assert_allclose(probs[:, :64], 1 / 64, rtol=1e-6)
