"""NumPy statement of qcompiler's integer semantics, written independently of the product.

Every integer kernel must match these bit for bit. Each rescale rounds the exact product once,
half up: floor(acc * r + 1/2), where r is the real scale as a float64 (the tests compute it from
the float32 scales the way the model defines it) taken as the exact rational it is
(``fractions.Fraction``); accumulators are Python integers, so nothing here is approximate.
No qcompiler code is used: how the kernels reach these values (fixed-point multipliers, shifts,
offsets) is theirs to get right.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def _as_object(v) -> np.ndarray:
    """int64 values as Python integers (exact, unbounded arithmetic)."""
    return np.asarray(v, dtype=np.int64).astype(object)


def _floor(num: np.ndarray, den: int) -> np.ndarray:
    return np.asarray(num // den, dtype=object).astype(np.int64)


def round_half_up(acc: np.ndarray, real, axis: int = -1, divisor: int = 1) -> np.ndarray:
    """floor(acc * real / divisor + 1/2), exactly; ``real`` scalar or per channel along ``axis``."""
    acc = _as_object(acc)
    reals = np.atleast_1d(np.asarray(real, dtype=np.float64))
    shape = [1] * acc.ndim
    if reals.size > 1:
        shape[axis] = reals.size
    ratios = [Fraction(float(r)) / divisor for r in reals]
    num = np.array([f.numerator for f in ratios], dtype=object).reshape(shape if reals.size > 1 else ())
    den = np.array([f.denominator for f in ratios], dtype=object).reshape(shape if reals.size > 1 else ())
    return np.asarray((2 * acc * num + den) // (2 * den), dtype=object).astype(np.int64)


def saturate(v: np.ndarray, zero_point: int, dtype: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    qmin, qmax = RANGES[dtype]
    return np.clip(v + zero_point, max(qmin, lo if lo is not None else qmin),
                   min(qmax, hi if hi is not None else qmax)).astype(dtype)


def qdense(x, zx, w, zw, bias, real, zo, dtype, lo=None, hi=None):
    """x [M, K], w [K, N] (zw per column), bias int [N], real [N] -> quantized [M, N]."""
    acc = (x.astype(np.int64) - zx) @ (w.astype(np.int64) - np.asarray(zw, np.int64)) + np.asarray(bias, np.int64)
    return saturate(round_half_up(acc, real, axis=1), zo, dtype, lo, hi)


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
    return saturate(round_half_up(acc, real, axis=1), zo, dtype, lo, hi)


def qadd(a, za, ra, b, zb, rb, zo, dtype, lo=None, hi=None):
    """One rounding of ra*(a - za) + rb*(b - zb) (rb negative for a subtraction), broadcasting a and b."""
    fa, fb = Fraction(float(ra)), Fraction(float(rb))
    den = fa.denominator * fb.denominator
    num = ((_as_object(a) - za) * (fa.numerator * fb.denominator)
           + (_as_object(b) - zb) * (fb.numerator * fa.denominator))
    return saturate(_floor(2 * num + den, 2 * den), zo, dtype, lo, hi)


def qmul(a, za, b, zb, real, zo, dtype, lo=None, hi=None):
    """One rounding of real * (a - za) * (b - zb), real = s_a * s_b / s_out."""
    acc = (a.astype(np.int64) - za) * (b.astype(np.int64) - zb)
    return saturate(round_half_up(acc, real), zo, dtype, lo, hi)


def requantize(x, zx, real, zo, dtype, lo=None, hi=None):
    """One rounding of real * (x - zx), real = s_x / s_out."""
    return saturate(round_half_up(x.astype(np.int64) - zx, real), zo, dtype, lo, hi)


def avg_pool(window_sum, count, real, zo, dtype, lo=None, hi=None):
    """One rounding of the window mean rescaled: real * window_sum / count, real = s_x / s_out (the
    division by the window size is exact, not part of the float64 scale)."""
    return saturate(round_half_up(window_sum, real, divisor=count), zo, dtype, lo, hi)
