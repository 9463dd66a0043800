"""The compile-time choice of fixed-point multipliers and offsets (qcompiler.quant.fixed_point),
against brute force: the kernel formula evaluated at every accumulator (or at both sides of every
exact step, for the int32 range) versus int_reference's exact rounding (Fraction arithmetic)."""
from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

import int_reference as ref
from qcompiler.quant.fixed_point import (INT32_RANGE, InexactRoundingWarning, add_multipliers, multiplier_bits,
                                         quantize_multiplier)
from test_integer_kernels import _classic_fixed_point


def kernel(acc, m0: int, off: int, shift: int, out_range) -> np.ndarray:
    """clamp((acc * M0 + off) >> s, out_lo, out_hi): the requantize every int kernel computes (minus zp)."""
    return np.clip((np.asarray(acc, np.int64) * np.int64(m0) + np.int64(off)) >> np.int64(shift), *out_range)


def offsets(fp, bias):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactRoundingWarning)
        return fp.offset(bias)


def random_reals(rng, count: int, low: float, high: float) -> np.ndarray:
    """float64 reals made the way models make them: products and quotients of float32 scales."""
    sx, so = (np.float32(v) for v in rng.uniform(0.005, 0.05, 2))
    sw = rng.uniform(low, high, count).astype(np.float32) * np.float32(so / sx)
    return np.float64(sx) * sw.astype(np.float64) / np.float64(so)


@pytest.mark.parametrize("seed", range(6))
def test_offsets_exact_over_small_domains(seed):
    """Every accumulator of a small range (as requantize, mul and pooling have): the kernel equals the
    exact rounding of (acc + bias) * real / divisor wherever the choice claims exactness, and claims
    it for every channel here (wide multipliers allowed, as for the int64 kernels)."""
    rng = np.random.default_rng(seed)
    lo, hi = sorted(int(v) for v in rng.integers(-2 ** 15, 2 ** 15, 2))
    divisor = int(rng.choice([1, 3, 9, 49]))
    span = max(abs(lo), abs(hi), 1)
    real = np.exp(rng.uniform(np.log(divisor / span), np.log(300 * divisor / span), 6))
    out_range = (int(rng.integers(-200, 0)), int(rng.integers(0, 200)))
    fp = quantize_multiplier(real, out_range=out_range, acc_range=(lo, hi), divisor=divisor,
                             max_bits=multiplier_bits((lo, hi)))
    bias = rng.integers(-500, 500, 6)
    off = fp.offset(bias)
    assert not np.any(fp.displaced_steps(bias))
    acc = np.arange(lo, hi + 1)
    for c in range(6):
        exact = np.clip(ref.round_half_up(acc + bias[c], real[c], divisor=divisor), *out_range)
        ours = kernel(acc, fp.multiplier[c], off[c], fp.shift[c], out_range)
        assert np.count_nonzero(ours != exact) == 0, (c, real[c], divisor)


def exact_steps(real: float, levels, b_lo: int, b_hi: int) -> list[int]:
    """The least exact accumulator b in [b_lo, b_hi] (b_hi + 1: none) with floor(b*r + 1/2) >= n."""
    r = Fraction(float(real))
    return [min(max(math.ceil(Fraction(2 * n - 1, 2) / r), b_lo), b_hi + 1) for n in levels]


def displaced_levels(real: float, m0: int, shift: int, off: int, bias: int, out_range, acc_range=INT32_RANGE) -> int:
    """How many output levels the kernel reaches at another accumulator (in ``acc_range``) than exact
    rounding does. Both are nondecreasing step functions, so checking each exact step from both sides
    decides it."""
    levels = range(out_range[0] + 1, out_range[1] + 1)
    steps = np.array(exact_steps(real, levels, acc_range[0] + bias, acc_range[1] + bias)) - bias
    below, at = np.clip(steps - 1, *acc_range), np.clip(steps, *acc_range)
    ours_below, ours_at = kernel(below, m0, off, shift, out_range), kernel(at, m0, off, shift, out_range)
    level = np.arange(out_range[0] + 1, out_range[1] + 1)
    reached_early = (steps > acc_range[0]) & (ours_below >= level)
    reached_late = (steps <= acc_range[1]) & (ours_at < level)
    return int(np.count_nonzero(reached_early | reached_late))


@pytest.mark.parametrize("low,high", [(2e-3, 2e-2), (1e-4, 1e-3), (5e-6, 5e-5)])
def test_offsets_over_the_int32_range(low, high):
    """Dot-product requantizes (int32 accumulators, 31-bit multipliers): where the choice claims an
    exact channel, no output level moves; where it reports displaced steps, the count is right. For
    scales of 1e-4 and up every channel is exact. At the small scales the classic M0 = round(r*2^s)
    with offset bias*M0 + 2^(s-1) misplaces steps of many channels (so the check can tell)."""
    rng = np.random.default_rng(int(-math.log10(low) * 10))
    channels, out_range = 256, (-131, 124)
    real = random_reals(rng, channels, low, high)
    fp = quantize_multiplier(real, out_range=out_range)
    bias = rng.integers(-2 ** 20, 2 ** 20, channels)
    off, displaced = offsets(fp, bias), fp.displaced_steps(bias)
    assert np.all(fp.multiplier < 2 ** 31) and np.all(fp.multiplier >= 2 ** 30)
    for c in range(channels):
        b = int(bias[c])
        assert displaced_levels(real[c], int(fp.multiplier[c]), int(fp.shift[c]), int(off[c]), b, out_range) \
            == displaced[c], c
    if low >= 1e-4:
        assert not np.any(displaced)
    else:
        classic = [_classic_fixed_point(float(r)) for r in real]
        wrong = [displaced_levels(r, m0, s, int(b) * m0 + (1 << (s - 1)), int(b), out_range) > 0
                 for r, (m0, s), b in zip(real, classic, bias)]
        assert sum(wrong) > 4 * np.count_nonzero(displaced)


def test_inexact_channels_warn():
    """Tiny scales with the int32 range are beyond 31-bit multipliers for some channels: offset()
    says so with InexactRoundingWarning, counting the displaced steps."""
    real = random_reals(np.random.default_rng(3), 64, 5e-7, 5e-6)
    fp = quantize_multiplier(real, "dense requantize", out_range=(-128, 127))
    with pytest.warns(InexactRoundingWarning, match=r"dense requantize: \d+ of 64 channel"):
        fp.offset(0)
    assert 0 < np.count_nonzero(fp.displaced_steps(0)) < 64


def test_other_adjacent_multiplier_is_tried():
    """When the nearest multiplier admits no exact offset, the other neighbour of r * 2^s can."""
    real = random_reals(np.random.default_rng(4), 256, 5e-6, 5e-5)
    fp = quantize_multiplier(real, out_range=(-128, 127))
    scaled = [Fraction(float(r)) * 2 ** int(s) for r, s in zip(real, fp.shift)]
    not_nearest = [abs(m - x) > Fraction(1, 2) for m, x in zip(fp.multiplier.tolist(), scaled)]
    assert any(not_nearest)
    assert all(abs(m - x) < 1 for m, x in zip(fp.multiplier.tolist(), scaled))


@pytest.mark.parametrize("seed", range(4))
def test_add_multipliers_exhaustive(seed):
    """An add/sub of two 8-bit inputs equals int_reference's single exact rounding at all 65536 pairs."""
    rng = np.random.default_rng(seed)
    sa, sb, so = (float(np.float32(v)) for v in rng.uniform(0.005, 0.1, 3))
    sign = -1.0 if seed % 2 else 1.0
    za, zb, zo = int(rng.integers(0, 256)), int(rng.integers(-128, 128)), int(rng.integers(0, 256))
    ra, rb = np.float64(sa) / np.float64(so), sign * np.float64(sb) / np.float64(so)
    fx = add_multipliers(float(ra), float(rb), (-za, 255 - za), (-128 - zb, 127 - zb), (-zo, 255 - zo))
    a = np.arange(256, dtype=np.int64)[:, None]
    b = np.arange(-128, 128, dtype=np.int64)[None, :]
    ours = np.clip((((a - za) * fx.a_multiplier + (b - zb) * fx.b_multiplier + fx.offset) >> fx.shift) + zo, 0, 255)
    expected = ref.qadd(np.broadcast_to(a, (256, 256)), za, ra, np.broadcast_to(b, (256, 256)), zb, rb, zo, "uint8")
    assert np.count_nonzero(ours != expected) == 0


def test_add_beyond_int64_precision_warns():
    """0.1*x + 0.7*y puts float64-rounded ties within 2^-55 of both sides of a half-integer: no
    int64 fixed point separates them, and the add says so instead of rounding silently."""
    with pytest.warns(InexactRoundingWarning, match="round next to the exact value"):
        add_multipliers(0.1, 0.7, (-128, 127), (-128, 127), (-128, 127))


def test_pool_divisor_is_exact():
    """A window sum divided by its size: r/9 is not a float64, the rounding still is exact (an average
    of nine equal values requantizes like the value: acc = 9*x rounds as x*r)."""
    real, count = float(np.float64(np.float32(0.05)) / np.float64(np.float32(0.03))), 9
    acc_range = (-9 * 128, 9 * 127)
    fp = quantize_multiplier(real, out_range=(-125, 130), acc_range=acc_range, divisor=count,
                             max_bits=multiplier_bits(acc_range))
    acc = np.arange(acc_range[0], acc_range[1] + 1)
    ours = kernel(acc, fp.multiplier[0], fp.offset()[0], fp.shift[0], (-125, 130))
    assert np.count_nonzero(ours != np.clip(ref.round_half_up(acc, real, divisor=count), -125, 130)) == 0
    x = np.arange(-128, 128)
    assert np.array_equal(kernel(9 * x, fp.multiplier[0], fp.offset()[0], fp.shift[0], (-125, 130)),
                          np.clip(ref.round_half_up(x, real), -125, 130))


def test_sixteen_bit_outputs():
    """65536 output levels: the steps are still checked (the counts of displaced ones are right),
    with the midpoint of the steps' offsets where no offset places them all."""
    real = random_reals(np.random.default_rng(6), 3, 1e-4, 1e-3)
    out_range = (-32768, 32767)
    fp = quantize_multiplier(real, out_range=out_range)
    bias = np.array([0, 12345, -70000])
    off, displaced = offsets(fp, bias), fp.displaced_steps(bias)
    assert np.all(displaced > 0)  # a 31-bit multiplier cannot place 65536 steps over the int32 range
    for c in range(3):
        assert displaced_levels(real[c], int(fp.multiplier[c]), int(fp.shift[c]), int(off[c]), int(bias[c]),
                                out_range) == displaced[c]
    # accumulators of +-2^21 reach ~+-2^13 levels, and some steps lie beyond them (the per-channel path)
    acc_range = (-(1 << 21), 1 << 21)
    real = random_reals(np.random.default_rng(12), 3, 5e-3, 1e-2)
    fp = quantize_multiplier(real, out_range=out_range, acc_range=acc_range)
    off, displaced = offsets(fp, bias), fp.displaced_steps(bias)
    for c in range(3):
        assert displaced_levels(real[c], int(fp.multiplier[c]), int(fp.shift[c]), int(off[c]), int(bias[c]),
                                out_range, acc_range) == displaced[c]


def test_too_many_levels_are_not_checked_silently():
    """4096 channels x 65536 levels is past the compile-time budget: the classic offset, and a warning."""
    real = random_reals(np.random.default_rng(7), 4096, 1e-4, 1e-3)
    fp = quantize_multiplier(real, "dense requantize", out_range=(-32768, 32767))
    with pytest.warns(InexactRoundingWarning, match="too many to check"):
        off = fp.offset(5)
    assert np.array_equal(off, 5 * fp.multiplier + (1 << (fp.shift - 1)))
    assert np.all(fp.displaced_steps(5) == -1)


def test_per_channel_accumulator_ranges():
    """Per-channel ranges (what a dense/conv's weights can produce): exact over each channel's range,
    including steps beyond it (only their side matters); a scale this small is not exact over all
    of int32 for every channel, so the ranges are what makes the difference."""
    rng = np.random.default_rng(11)
    real = random_reals(rng, 16, 5e-7, 5e-6)
    bound = rng.integers(2 ** 14, 2 ** 17, 16)
    fp = quantize_multiplier(real, out_range=(-128, 127), acc_range=(-bound, bound))
    bias = rng.integers(-3000, 3000, 16)
    off = fp.offset(bias)
    assert not np.any(fp.displaced_steps(bias))
    for c in range(16):
        acc = np.arange(-bound[c], bound[c] + 1)
        exact = np.clip(ref.round_half_up(acc + bias[c], real[c]), -128, 127)
        assert np.count_nonzero(kernel(acc, fp.multiplier[c], off[c], fp.shift[c], (-128, 127)) != exact) == 0
    assert np.any(quantize_multiplier(real, out_range=(-128, 127)).displaced_steps(bias))


@pytest.mark.parametrize("seed", range(4))
def test_fractional_bias_rounds_exactly(seed):
    """A float bias off the accumulator grid (a QDQ bias: int32 x float32(s_x * s_w), not s_x * s_w):
    the kernel equals exact rounding of (acc + bias + fraction) * real, in Fraction arithmetic, at every
    accumulator; fractions big enough to move a step are included (the integer-only offset would not)."""
    rng = np.random.default_rng(100 + seed)
    lo, hi = -3000, 3000
    real = np.exp(rng.uniform(np.log(1 / 400), np.log(1 / 20), 8))
    out_range = (-128, 127)
    fp = quantize_multiplier(real, out_range=out_range, acc_range=(lo, hi))
    bias = rng.integers(-500, 500, 8)
    fraction = rng.uniform(-0.5, 0.5, 8)
    off = fp.offset(bias, fraction)
    acc = np.arange(lo, hi + 1)
    moved = 0
    for c in range(8):
        r, b = Fraction(float(real[c])), Fraction(int(bias[c])) + Fraction(float(fraction[c]))
        exact = np.clip([math.floor((int(a) + b) * r + Fraction(1, 2)) for a in acc], *out_range)
        ours = kernel(acc, fp.multiplier[c], off[c], fp.shift[c], out_range)
        assert np.count_nonzero(ours != exact) == 0, (c, real[c], fraction[c])
        integer_only = kernel(acc, fp.multiplier[c], offsets(fp, bias)[c], fp.shift[c], out_range)
        moved += int(np.count_nonzero(integer_only != exact))
    assert moved > 0  # the fractions matter for these accumulators
