"""Integer average pooling (incl. global average pooling) with a fused requantize.

acc = sum over the window of (x - zx), padding read as zx (so it adds 0: count_include_pad
semantics); out = requantize(acc, sx / (so * window_size)).
"""
from __future__ import annotations

from tvm import te, tirx

from .common import requantize_value


def qavg_pool2d(x, *, pool_size, strides, padding, input_zero_point: int, multiplier: int, offset: int, shift: int,
                zero_point: int, lo: int, hi: int, out_dtype: str, data_layout: str = "NCHW"):
    """NCHW, or NHWC (``data_layout``), in and out."""
    if data_layout == "NHWC":
        return _qavg_pool2d_nhwc(x, pool_size, strides, padding, input_zero_point, multiplier, offset, shift,
                                 zero_point, lo, hi, out_dtype)
    n_dim, c_dim, h_dim, w_dim = (int(v) for v in x.shape)
    kh, kw = pool_size
    sh, sw = strides
    pt, pl, pb, pr = padding
    oh = (h_dim + pt + pb - kh) // sh + 1
    ow = (w_dim + pl + pr - kw) // sw + 1
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")

    def read(n, c, h, w):
        if not (pt or pl or pb or pr):
            return x[n, c, h, w].astype("int32")
        inside = tirx.all(h >= pt, h < pt + h_dim, w >= pl, w < pl + w_dim)
        return tirx.if_then_else(inside, x[n, c, h - pt, w - pl].astype("int32"),
                                 tirx.const(input_zero_point, "int32"))

    acc = te.compute((n_dim, c_dim, oh, ow), lambda n, c, h, w: te.sum(
        read(n, c, h * sh + r, w * sw + s) - tirx.const(input_zero_point, "int32"), axis=[r, s]), name="acc")
    return te.compute((n_dim, c_dim, oh, ow), lambda n, c, h, w: requantize_value(
        acc[n, c, h, w], tirx.const(multiplier, "int32"), tirx.const(offset, "int64"), tirx.const(shift, "int64"),
        zero_point, lo, hi, out_dtype), name="requant")


def _qavg_pool2d_nhwc(x, pool_size, strides, padding, input_zero_point, multiplier, offset, shift, zero_point, lo, hi,
                      out_dtype):
    n_dim, h_dim, w_dim, c_dim = (int(v) for v in x.shape)
    kh, kw = pool_size
    sh, sw = strides
    pt, pl, pb, pr = padding
    oh = (h_dim + pt + pb - kh) // sh + 1
    ow = (w_dim + pl + pr - kw) // sw + 1
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")

    def read(n, h, w, c):
        inside = tirx.all(h >= pt, h < pt + h_dim, w >= pl, w < pl + w_dim)
        value = x[n, tirx.max(tirx.min(h - pt, h_dim - 1), 0), tirx.max(tirx.min(w - pl, w_dim - 1), 0), c]
        return tirx.if_then_else(inside, value.astype("int32"), tirx.const(input_zero_point, "int32"))

    acc = te.compute((n_dim, oh, ow, c_dim), lambda n, h, w, c: te.sum(
        read(n, h * sh + r, w * sw + s, c) - tirx.const(input_zero_point, "int32"), axis=[r, s]), name="acc")
    return te.compute((n_dim, oh, ow, c_dim), lambda n, h, w, c: requantize_value(
        acc[n, h, w, c], tirx.const(multiplier, "int32"), tirx.const(offset, "int64"), tirx.const(shift, "int64"),
        zero_point, lo, hi, out_dtype), name="requant")
