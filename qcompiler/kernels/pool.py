"""Integer average pooling (incl. global average pooling) with a fused requantize.

acc = sum over the window of (x - zx), padding read as zx (so it adds 0: count_include_pad
semantics); out = requantize(acc, r / window_size) with r = sx / so (float64) divided exactly by the
window size, so the average of a constant window requantizes exactly like the value itself. The
multiplier is an int32 operand (vpmuldq) unless exact rounding needs more bits; then int64.
"""
from __future__ import annotations

from tvm import te, tirx

from .common import requantize_value, shift_constant


def qavg_pool2d(x, *, pool_size, strides, padding, input_zero_point: int, multiplier: int, offset: int, shift: int,
                zero_point: int, lo: int, hi: int, out_dtype: str, data_layout: str = "NCHW"):
    """NCHW, or NHWC (``data_layout``), in and out."""
    channels_last = data_layout == "NHWC"

    def nchw(idx):  # tensor index -> (n, c, h, w)
        return (idx[0], idx[3], idx[1], idx[2]) if channels_last else tuple(idx)

    def index(n, c, h, w):  # (n, c, h, w) -> tensor index
        return (n, h, w, c) if channels_last else (n, c, h, w)

    n_dim, c_dim, h_dim, w_dim = (int(v) for v in nchw(x.shape))
    kh, kw = pool_size
    sh, sw = strides
    pt, pl, pb, pr = padding
    oh = (h_dim + pt + pb - kh) // sh + 1
    ow = (w_dim + pl + pr - kw) // sw + 1
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")

    def read(n, c, h, w):
        if not (pt or pl or pb or pr):
            return x[index(n, c, h, w)].astype("int32")
        inside = tirx.all(h >= pt, h < pt + h_dim, w >= pl, w < pl + w_dim)
        clamped = x[index(n, c, tirx.max(tirx.min(h - pt, h_dim - 1), 0), tirx.max(tirx.min(w - pl, w_dim - 1), 0))]
        return tirx.if_then_else(inside, clamped.astype("int32"), tirx.const(input_zero_point, "int32"))

    def window_sum(*idx):
        n, c, h, w = nchw(idx)
        return te.sum(read(n, c, h * sh + r, w * sw + s) - tirx.const(input_zero_point, "int32"), axis=[r, s])

    shape = index(n_dim, c_dim, oh, ow)
    acc = te.compute(shape, window_sum, name="acc")
    return te.compute(shape, lambda *i: requantize_value(
        acc[i], tirx.const(multiplier, "int32" if multiplier < 1 << 31 else "int64"), tirx.const(offset, "int64"),
        shift_constant(shift),
        zero_point, lo, hi, out_dtype), name="requant")
