"""Elementwise integer kernels with per-tensor quantization: requantize, add, mul.

add: out = clamp(((a - za) * Ma + (b - zb) * Mb + 2^(s-1)) >> s) + zo): both inputs are scaled
     to the output's scale with one shared shift, then rounded once, so the result is the
     correctly rounded fixed-point value of sa/so*(a-za) + sb/so*(b-zb).
mul: out = clamp((((a - za) * (b - zb)) * M + 2^(s-1)) >> s) + zo).
"""
from __future__ import annotations

from tvm import te, tirx

from .common import broadcast_load


def _clamp_cast(v, zero_point: int, lo: int, hi: int, out_dtype: str):
    v = v.astype("int32") + tirx.const(zero_point, "int32")
    return te.max(te.min(v, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype(out_dtype)


def _centered(t, indices, zp: int):
    return broadcast_load(t, indices).astype("int64") - tirx.const(zp, "int64")


def requantize(x, *, input_zero_point: int, multiplier: int, shift: int, zero_point: int, lo: int, hi: int,
               out_dtype: str):
    """Per-tensor requantize of an integer tensor to new (scale, zero point, dtype)."""
    rnd = 1 << (shift - 1)
    return te.compute(x.shape, lambda *i: _clamp_cast(
        (_centered(x, i, input_zero_point) * tirx.const(multiplier, "int64") + tirx.const(rnd, "int64"))
        >> tirx.const(shift, "int64"), zero_point, lo, hi, out_dtype), name="requant")


def qadd(a, b, *, out_shape, a_zero_point: int, b_zero_point: int, a_multiplier: int, b_multiplier: int, shift: int,
         zero_point: int, lo: int, hi: int, out_dtype: str):
    rnd = 1 << (shift - 1)
    return te.compute(out_shape, lambda *i: _clamp_cast(
        (_centered(a, i, a_zero_point) * tirx.const(a_multiplier, "int64")
         + _centered(b, i, b_zero_point) * tirx.const(b_multiplier, "int64") + tirx.const(rnd, "int64"))
        >> tirx.const(shift, "int64"), zero_point, lo, hi, out_dtype), name="requant")


def qmul(a, b, *, out_shape, a_zero_point: int, b_zero_point: int, multiplier: int, shift: int, zero_point: int,
         lo: int, hi: int, out_dtype: str):
    rnd = 1 << (shift - 1)
    return te.compute(out_shape, lambda *i: _clamp_cast(
        (_centered(a, i, a_zero_point) * _centered(b, i, b_zero_point) * tirx.const(multiplier, "int64")
         + tirx.const(rnd, "int64")) >> tirx.const(shift, "int64"), zero_point, lo, hi, out_dtype), name="requant")
