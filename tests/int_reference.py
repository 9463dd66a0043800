"""NumPy statement of qcompiler's integer semantics, written independently of the TE kernels.

Every integer kernel must match these bit for bit. Real multipliers become (M0, shift) by
``quantize_multiplier`` (the fixed-point spec); everything else here is plain int64 numpy.
"""
from __future__ import annotations

import numpy as np

from qcompiler.quant.fixed_point import quantize_multiplier

RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def fixed_point_round(acc: np.ndarray, real, axis: int = -1) -> np.ndarray:
    """round_half_up(acc * real) with real as M0 * 2^-s (per channel along ``axis`` or scalar)."""
    fp = quantize_multiplier(real)
    shape = [1] * acc.ndim
    if fp.multiplier.size > 1:
        shape[axis] = fp.multiplier.size
    m0 = fp.multiplier.reshape(shape if fp.multiplier.size > 1 else ())
    s = fp.shift.reshape(shape if fp.shift.size > 1 else ())
    return (acc.astype(np.int64) * m0 + (np.int64(1) << (s - 1))) >> s


def saturate(v: np.ndarray, zero_point: int, dtype: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    qmin, qmax = RANGES[dtype]
    return np.clip(v + zero_point, max(qmin, lo if lo is not None else qmin),
                   min(qmax, hi if hi is not None else qmax)).astype(dtype)


def qdense(x, zx, w, zw, bias, real, zo, dtype, lo=None, hi=None):
    """x [M, K], w [K, N] (zw per column), bias int [N], real [N] -> quantized [M, N]."""
    acc = (x.astype(np.int64) - zx) @ (w.astype(np.int64) - np.asarray(zw, np.int64)) + np.asarray(bias, np.int64)
    return saturate(fixed_point_round(acc, real, axis=1), zo, dtype, lo, hi)


def conv2d_acc(x, zx, w, zw, strides, padding, dilation, groups):
    """int64 NCHW/OIHW convolution of (x - zx) and (w - zw) with zero-valued padding."""
    xc = x.astype(np.int64) - zx
    pt, pl, pb, pr = padding
    xc = np.pad(xc, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, wd = xc.shape
    o, cg, r, s = w.shape
    wc = w.astype(np.int64) - np.asarray(zw, np.int64).reshape(-1, 1, 1, 1)
    oh = (h - dilation[0] * (r - 1) - 1) // strides[0] + 1
    ow = (wd - dilation[1] * (s - 1) - 1) // strides[1] + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow), np.int64)
    for g in range(groups):
        xs = xc[:, g * cg:(g + 1) * cg]
        for ri in range(r):
            for si in range(s):
                patch = xs[:, :, ri * dilation[0]: ri * dilation[0] + strides[0] * (oh - 1) + 1: strides[0],
                           si * dilation[1]: si * dilation[1] + strides[1] * (ow - 1) + 1: strides[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wc[g * og:(g + 1) * og, :, ri, si])
    return out


def qconv2d(x, zx, w, zw, bias, real, zo, dtype, strides, padding, dilation, groups, lo=None, hi=None):
    acc = conv2d_acc(x, zx, w, zw, strides, padding, dilation, groups) + np.asarray(bias, np.int64).reshape(1, -1, 1, 1)
    return saturate(fixed_point_round(acc, real, axis=1), zo, dtype, lo, hi)


def qadd(a, za, ra, b, zb, rb, zo, dtype, lo=None, hi=None):
    """One rounding of ra*(a-za) + rb*(b-zb), both multipliers sharing the shift of the larger."""
    shift = int(quantize_multiplier(max(abs(ra), abs(rb))).shift[0])
    ma, mb = int(round(ra * 2.0 ** shift)), int(round(rb * 2.0 ** shift))
    v = (a.astype(np.int64) - za) * ma + (b.astype(np.int64) - zb) * mb + (1 << (shift - 1))
    return saturate(v >> shift, zo, dtype, lo, hi)


def requantize(x, zx, real, zo, dtype, lo=None, hi=None):
    return saturate(fixed_point_round(x.astype(np.int64) - zx, real), zo, dtype, lo, hi)
