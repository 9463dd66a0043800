"""Integer-only requantization: real multipliers as a fixed-point (multiplier, shift) pair.

A quantized kernel accumulates in int32; its result is rescaled to the output's quantization by a
real factor r = s_in / s_out (per tensor or per output channel). Relay's QNN stack did that with
an int32 multiplier M0 in [2^30, 2^31) and a right shift s so that r ~= M0 / 2^s; we do the same,
with one rounding (round half up) at the end, all in int64:

    out = clamp(((int64(acc) * M0 + off) >> s) + zp, lo, hi),   off = bias * M0 + 2^(s-1)

Folding the bias and the rounding constant into one per-channel int64 offset keeps the per-element
work at one multiply, one add, one shift (and lets LLVM use vpmuldq instead of vpmullq).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QCompilerError

#: M0 has 31 significant bits; a shift above 62 would overflow int64 products.
MULTIPLIER_BITS = 31
MAX_SHIFT = 62


@dataclass(frozen=True)
class FixedPoint:
    """Per-channel (or length-1) fixed-point representation of real multipliers."""

    multiplier: np.ndarray  # int64 values in [2^30, 2^31) (smaller only for tiny reals)
    shift: np.ndarray  # int64 values in [1, MAX_SHIFT]

    def offset(self, bias: np.ndarray | int = 0) -> np.ndarray:
        """The folded int64 offset ``bias*M0 + 2^(s-1)`` (bias in accumulator units)."""
        bias = np.asarray(bias, dtype=np.int64)
        return bias * self.multiplier + (np.int64(1) << (self.shift - 1))


def quantize_multiplier(real: np.ndarray | float, what: str = "requantize") -> FixedPoint:
    """Represent each positive real multiplier as M0 * 2^-s with M0 in [2^30, 2^31).

    ``what`` names the op in the error raised for multipliers that cannot be represented
    (non-positive, non-finite, or >= 2^30, which no sane quantization produces).
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise QCompilerError(f"{what}: requantization scale {r.min():g} is not a positive finite number; "
                             "check the model's quantization scales")
    mantissa, exponent = np.frexp(r)  # r = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = np.round(mantissa * float(1 << MULTIPLIER_BITS)).astype(np.int64)
    carry = m0 == (1 << MULTIPLIER_BITS)
    m0[carry] >>= 1
    exponent = exponent.astype(np.int64) + carry
    shift = MULTIPLIER_BITS - exponent
    if np.any(shift < 1):
        raise QCompilerError(f"{what}: requantization multiplier {r.max():g} is too large (>= 2^30); "
                             "check the model's quantization scales")
    # Tiny multipliers: cap the shift and give up low multiplier bits (the result rounds to 0 anyway).
    over = shift > MAX_SHIFT
    if np.any(over):
        m0[over] = np.round(r[over] * float(2.0 ** MAX_SHIFT)).astype(np.int64)
        shift[over] = MAX_SHIFT
    return FixedPoint(m0, shift)


def requantize_reference(acc: np.ndarray, fp: FixedPoint, bias: np.ndarray | int, zero_point: int,
                         lo: int, hi: int, channel_axis: int = -1) -> np.ndarray:
    """NumPy statement of the integer semantics every requantizing kernel implements.

    Returns int64 (caller casts to the storage dtype). Per-channel parameters broadcast along
    ``channel_axis`` of ``acc``.
    """
    acc = np.asarray(acc, dtype=np.int64)

    def along(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.int64)
        if v.size == 1:
            return v.reshape(())
        shape = [1] * acc.ndim
        shape[channel_axis] = v.size
        return v.reshape(shape)

    v = (acc * along(fp.multiplier) + along(fp.offset(bias))) >> along(fp.shift)
    return np.clip(v + zero_point, lo, hi)
