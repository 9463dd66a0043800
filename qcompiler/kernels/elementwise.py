"""Elementwise integer kernels with per-tensor quantization: requantize, add, mul.

All three multiply in int64 and round once; ``qcompiler.quant.fixed_point`` chooses the multipliers,
shift and offset at compile time so that the result is the exactly rounded one (round half up):

requantize: out = clamp((((x - zx) * M + off) >> s) + zo),  exact value (x - zx) * sx/so
add:        out = clamp((((a - za) * Ma + (b - zb) * Mb + off) >> s) + zo): both inputs scaled to
            the output's scale with one shared shift, rounded once; exact value
            sa/so*(a - za) +- sb/so*(b - zb)
mul:        out = clamp(((((a - za) * (b - zb)) * M + off) >> s) + zo),  exact value
            sa*sb/so * (a - za)(b - zb)
"""
from __future__ import annotations

from tvm import te, tirx

from .common import broadcast_load, clamp_shifted, shift_constant


def _centered(t, indices, zp: int):
    return broadcast_load(t, indices).astype("int64") - tirx.const(zp, "int64")


def requantize(x, *, input_zero_point: int, multiplier: int, offset: int, shift: int, zero_point: int, lo: int,
               hi: int, out_dtype: str):
    """Per-tensor requantize of an integer tensor to new (scale, zero point, dtype)."""
    return te.compute(x.shape, lambda *i: clamp_shifted(
        _centered(x, i, input_zero_point) * tirx.const(multiplier, "int64") + tirx.const(offset, "int64"),
        shift_constant(shift), zero_point, lo, hi, out_dtype), name="requant")


def qadd(a, b, *, out_shape, a_zero_point: int, b_zero_point: int, a_multiplier: int, b_multiplier: int, shift: int,
         offset: int, zero_point: int, lo: int, hi: int, out_dtype: str):
    return te.compute(out_shape, lambda *i: clamp_shifted(
        _centered(a, i, a_zero_point) * tirx.const(a_multiplier, "int64")
        + _centered(b, i, b_zero_point) * tirx.const(b_multiplier, "int64") + tirx.const(offset, "int64"),
        shift_constant(shift), zero_point, lo, hi, out_dtype), name="requant")


def qmul(a, b, *, out_shape, a_zero_point: int, b_zero_point: int, multiplier: int, offset: int, shift: int,
         zero_point: int, lo: int, hi: int, out_dtype: str):
    return te.compute(out_shape, lambda *i: clamp_shifted(
        _centered(a, i, a_zero_point) * _centered(b, i, b_zero_point) * tirx.const(multiplier, "int64")
        + tirx.const(offset, "int64"), shift_constant(shift), zero_point, lo, hi, out_dtype), name="requant")
