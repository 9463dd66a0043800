"""Integer conv2d (NCHW activations, OIHW weights; grouped and depthwise included).

The input is padded with its own zero point, so padding contributes exactly zero real value and
the activation zero-point correction ``-zx * sum(w[o])`` is the same for every output pixel: it is
folded into the per-channel offset at compile time. A weight zero point (rare: uint8 weights)
needs the window sum of the input, computed in the same kernel.
"""
from __future__ import annotations

from tvm import te, tirx

from .common import epilogue


def qconv2d(x, w, multiplier, offset, shift, weight_zero_point=None, *, strides, padding, dilation, groups: int,
            pad_value: int, zero_point: int, lo, hi, out_dtype: str, out_scale=None, out_bias=None):
    """x [N, C, H, W], w [O, C/groups, R, S] -> [N, O, OH, OW], padding = (top, left, bottom, right).

    Epilogues as in ``qdense``: requantize, int32 (``multiplier`` None) or fp32 (``out_scale`` given)."""
    n_dim, c_dim, h_dim, w_dim = (int(v) for v in x.shape)
    o_dim, cg_dim, r_dim, s_dim = (int(v) for v in w.shape)
    pt, pl, pb, pr = padding
    sh, sw = strides
    dh, dw = dilation
    oh = (h_dim + pt + pb - dh * (r_dim - 1) - 1) // sh + 1
    ow = (w_dim + pl + pr - dw * (s_dim - 1) - 1) // sw + 1
    og = o_dim // groups

    if pt or pl or pb or pr:
        def padded(n, c, h, wi):
            inside = tirx.all(h >= pt, h < pt + h_dim, wi >= pl, wi < pl + w_dim)
            return tirx.if_then_else(inside, x[n, c, h - pt, wi - pl], tirx.const(pad_value, x.dtype))
        xp = te.compute((n_dim, c_dim, h_dim + pt + pb, w_dim + pl + pr), padded, name="pad")
    else:
        xp = x

    c = te.reduce_axis((0, cg_dim), "c")
    r = te.reduce_axis((0, r_dim), "r")
    s = te.reduce_axis((0, s_dim), "s")
    acc = te.compute((n_dim, o_dim, oh, ow), lambda n, o, h, wi: te.sum(
        xp[n, (o // og) * cg_dim + c, h * sh + r * dh, wi * sw + s * dw].astype("int32")
        * w[o, c, r, s].astype("int32"), axis=[c, r, s]), name="acc")
    value = lambda n, o, h, wi: acc[n, o, h, wi]  # noqa: E731
    if weight_zero_point is not None:
        c2 = te.reduce_axis((0, cg_dim), "c2")
        r2 = te.reduce_axis((0, r_dim), "r2")
        s2 = te.reduce_axis((0, s_dim), "s2")
        window = te.compute((n_dim, groups, oh, ow), lambda n, g, h, wi: te.sum(
            xp[n, g * cg_dim + c2, h * sh + r2 * dh, wi * sw + s2 * dw].astype("int32"), axis=[c2, r2, s2]),
            name="window_sum")
        value = lambda n, o, h, wi: acc[n, o, h, wi] - weight_zero_point[o] * window[n, o // og, h, wi]  # noqa: E731
    return epilogue((n_dim, o_dim, oh, ow), value, lambda n, o, h, wi: o, multiplier, offset, shift,
                    zero_point=zero_point, lo=lo, hi=hi, out_dtype=out_dtype, out_scale=out_scale, out_bias=out_bias)


def pack_conv_weight(w):
    """numpy OIHW int8 [O, C, R, S] -> [ceil(O/16), R, S, ceil(C/4), 16, 4], zero padded (VNNI layout)."""
    import numpy as np
    o_dim, c_dim, r_dim, s_dim = w.shape
    op, cp = -(-o_dim // 16) * 16, -(-c_dim // 4) * 4
    padded = np.zeros((op, cp, r_dim, s_dim), dtype=w.dtype)
    padded[:o_dim, :c_dim] = w
    return np.ascontiguousarray(padded.reshape(op // 16, 16, cp // 4, 4, r_dim, s_dim).transpose(0, 4, 5, 2, 1, 3))


def qconv2d_packed(x, wp, multiplier, offset, shift, *, out_channels: int, strides, padding, dilation,
                   pad_value: int, zero_point: int, lo, hi, out_dtype: str, out_scale=None, out_bias=None,
                   out_layout: str = "NHWC", groups: int = 1):
    """x [N, H, W, C] (u8, NHWC), wp = pack_conv_weight(w) -> [N, OH, OW, out_channels] (NHWC;
    NCHW with ``out_layout``, for a float result leaving the integer region). Grouped convs (see
    ``grouped_input_channel``) need whole 16-channel blocks per group and C/groups a multiple of 4.

    Stage "pad" copies x into zero-point-padded NHWC with channels rounded up to 4 (the
    micro-kernel reads 4 channels per vpdpbusd lane); "acc" accumulates with output channels
    rounded up to 16; the epilogue writes 16 contiguous channels per vector. Epilogues as in ``qconv2d``.
    """
    n_dim, h_dim, w_dim, c_dim = (int(v) for v in x.shape)
    ob, r_dim, s_dim, cq = (int(v) for v in wp.shape[:4])
    xp, oh, ow = _pad_nhwc(x, padding, strides, dilation, (r_dim, s_dim), cq * 4 * groups, pad_value)
    sh, sw = strides
    dh, dw = dilation
    r = te.reduce_axis((0, r_dim), "r")
    s = te.reduce_axis((0, s_dim), "s")
    c = te.reduce_axis((0, cq * 4), "c")
    channel = grouped_input_channel(out_channels, groups, cq * 4)
    acc = te.compute((n_dim, oh, ow, ob * 16), lambda n, h, wi, k: te.sum(
        xp[n, h * sh + r * dh, wi * sw + s * dw, channel(k, c)].astype("int32")
        * wp[k // 16, r, s, c // 4, k % 16, c % 4].astype("int32"), axis=[r, s, c]), name="acc")
    return _nhwc_epilogue(acc, out_channels, out_layout, multiplier, offset, shift, zero_point=zero_point, lo=lo,
                          hi=hi, out_dtype=out_dtype, out_scale=out_scale, out_bias=out_bias)


def grouped_input_channel(out_channels: int, groups: int, group_channels: int):
    """(output channel k, reduction index c) -> the input channel the micro-kernels read: c of k's
    group. The packed weights of a grouped conv are [O, C/groups, R, S] packed as usual; the kernels
    require every register tile's output channels in one group (whole channel blocks per group), so
    the group index is constant in a tile and the broadcast operand stays one address per pixel."""
    if groups == 1:
        return lambda k, c: c
    per_group = out_channels // groups
    return lambda k, c: (k // per_group) * group_channels + c


def _nhwc_epilogue(acc, channels: int, out_layout: str, *params, **kwargs):
    """The epilogue of an NHWC accumulator, written NHWC or NCHW."""
    n_dim, oh, ow = (int(v) for v in acc.shape[:3])
    if out_layout == "NCHW":
        return epilogue((n_dim, channels, oh, ow), lambda n, o, h, wi: acc[n, h, wi, o], lambda n, o, h, wi: o,
                        *params, **kwargs)
    return epilogue((n_dim, oh, ow, channels), lambda n, h, wi, o: acc[n, h, wi, o], lambda n, h, wi, o: o,
                    *params, **kwargs)


def _pad_nhwc(x, padding, strides, dilation, kernel, channels: int, pad_value: int, dtype: str | None = None):
    """Stage "pad": NHWC x padded spatially with the zero point and along C (with 0) to ``channels``,
    converted to ``dtype`` (default x's; no stage at all when there is nothing to do: 1x1 convs
    read x directly)."""
    n_dim, h_dim, w_dim, c_dim = (int(v) for v in x.shape)
    dtype = dtype or str(x.dtype)
    pt, pl, pb, pr = padding
    hp, wpd = h_dim + pt + pb, w_dim + pl + pr
    oh = (hp - dilation[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    ow = (wpd - dilation[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    if not (pt or pl or pb or pr) and channels == c_dim and dtype == str(x.dtype):
        return x, oh, ow

    def padded(n, h, wi, c):
        inside = tirx.all(h >= pt, h < pt + h_dim, wi >= pl, wi < pl + w_dim, c < c_dim)
        fill = tirx.if_then_else(c < c_dim, tirx.const(pad_value, dtype), tirx.const(0, dtype))
        return tirx.if_then_else(inside, x[n, h - pt, wi - pl, tirx.min(c, c_dim - 1)].astype(dtype), fill)
    return te.compute((n_dim, hp, wpd, channels), padded, name="pad"), oh, ow


def pack_conv_weight_pairs(w, lanes: int):
    """numpy OIHW int8 [O, C, R, S] -> int16 [ceil(O/lanes), R, S, ceil(C/2), lanes, 2], zero padded:
    the vpmaddwd micro-kernel's layout (``lanes`` output channels x 2 input channels per instruction)."""
    import numpy as np
    o_dim, c_dim, r_dim, s_dim = w.shape
    op, cp = -(-o_dim // lanes) * lanes, -(-c_dim // 2) * 2
    padded = np.zeros((op, cp, r_dim, s_dim), dtype=np.int16)
    padded[:o_dim, :c_dim] = w
    return np.ascontiguousarray(padded.reshape(op // lanes, lanes, cp // 2, 2, r_dim, s_dim).transpose(0, 4, 5, 2, 1, 3))


def qconv2d_packed_pairs(x, wp, multiplier, offset, shift, *, out_channels: int, strides, padding, dilation,
                         pad_value: int, zero_point: int, lo, hi, out_dtype: str, out_scale=None, out_bias=None,
                         out_layout: str = "NHWC", groups: int = 1):
    """``qconv2d_packed`` for CPUs without VNNI: x [N, H, W, C] (u8/s8, NHWC), wp =
    pack_conv_weight_pairs(w, lanes) -> NHWC (or NCHW) output.

    Stage "pad" always runs: it pads with the zero point and widens x to int16 with channels rounded
    up to 2, so ``vpmaddwd`` reads 2 input channels of one pixel as one broadcast int16 pair. Grouped
    convs need whole ``lanes``-channel blocks per group and C/groups even (``grouped_input_channel``).
    """
    n_dim = int(x.shape[0])
    ob, r_dim, s_dim, cq, lanes = (int(v) for v in wp.shape[:5])
    xp, oh, ow = _pad_nhwc(x, padding, strides, dilation, (r_dim, s_dim), cq * 2 * groups, pad_value, "int16")
    sh, sw = strides
    dh, dw = dilation
    r = te.reduce_axis((0, r_dim), "r")
    s = te.reduce_axis((0, s_dim), "s")
    c = te.reduce_axis((0, cq * 2), "c")
    channel = grouped_input_channel(out_channels, groups, cq * 2)
    acc = te.compute((n_dim, oh, ow, ob * lanes), lambda n, h, wi, k: te.sum(
        xp[n, h * sh + r * dh, wi * sw + s * dw, channel(k, c)].astype("int32")
        * wp[k // lanes, r, s, c // 2, k % lanes, c % 2].astype("int32"), axis=[r, s, c]), name="acc")
    return _nhwc_epilogue(acc, out_channels, out_layout, multiplier, offset, shift, zero_point=zero_point, lo=lo,
                          hi=hi, out_dtype=out_dtype, out_scale=out_scale, out_bias=out_bias)


def qdepthwise_conv2d_nhwc(x, wk, multiplier, offset, shift, *, strides, padding, dilation, pad_value: int,
                           zero_point: int, lo, hi, out_dtype: str, out_scale=None, out_bias=None,
                           out_layout: str = "NHWC"):
    """Depthwise conv (groups = channels), NHWC in and out: x [N, H, W, C] -> [N, OH, OW, C].

    wk is the weight as [R, S, C] (int8). Depthwise has only R*S products per output, too few for
    vpdpbusd's 4-deep dot: 16 channels per int32 vector instead, which needs channels innermost.
    """
    n_dim, _, _, c_dim = (int(v) for v in x.shape)
    r_dim, s_dim = int(wk.shape[0]), int(wk.shape[1])
    xp, oh, ow = _pad_nhwc(x, padding, strides, dilation, (r_dim, s_dim), c_dim, pad_value)
    sh, sw = strides
    dh, dw = dilation
    r = te.reduce_axis((0, r_dim), "r")
    s = te.reduce_axis((0, s_dim), "s")
    acc = te.compute((n_dim, oh, ow, c_dim), lambda n, h, wi, c: te.sum(
        xp[n, h * sh + r * dh, wi * sw + s * dw, c].astype("int32") * wk[r, s, c].astype("int32"), axis=[r, s]),
        name="acc")
    return _nhwc_epilogue(acc, c_dim, out_layout, multiplier, offset, shift, zero_point=zero_point, lo=lo, hi=hi,
                          out_dtype=out_dtype, out_scale=out_scale, out_bias=out_bias)
