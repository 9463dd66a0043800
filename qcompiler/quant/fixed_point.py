"""Integer-only requantization whose results are the exactly rounded ones.

A quantized kernel accumulates in integers; its result is rescaled to the output's quantization by
a real factor r (per tensor or per output channel), e.g. r = s_x * s_w / s_out computed in float64
from the float32 scales. A float64 is a dyadic rational, so the exact result is well defined:

    q = clamp(floor((acc + bias) * r + 1/2) + zp, lo, hi)          (round half up, once)

The kernels compute it with one multiply, one 64-bit add and one shift:

    q = clamp(((int64(acc) * M0 + off) >> s) + zp, lo, hi)

with M0 in [2^30, 2^31) for the int32-accumulating kernels (an int32 operand, so LLVM multiplies
with vpmuldq). M0 / 2^s is not r, so the classic off = bias*M0 + 2^(s-1) puts acc*r on the wrong
side of a half-integer for rare accumulators. Here the offset is chosen at compile time instead:
both formulas are nondecreasing step functions of acc, so they agree at every acc iff they step up
to every output level n the clamp lets through at the same acc. The exact step of level n is
ceil((n - 1/2) / r) - bias (integer arithmetic on r's numerator and denominator); the kernel's is
ceil((n*2^s - off) / M0). Each level confines off to an interval M0 wide; any offset in the
intersection over all levels is exact (``FixedPoint.offset``).

That intersection can be empty: M0 / 2^s differs from r by up to 2^-31 relatively, so the kernel's
steps drift away from the exact ones by up to |acc| * 2^-31 accumulator units, and when two levels'
exact steps sit at opposite ends of their cells no single offset serves both. The other adjacent
multiplier (M0 + 1 or M0 - 1) drifts the other way and often fits; kernels that multiply in int64
(``max_bits`` > 31) take more multiplier bits until it fits. With an int32 multiplier and the whole
int32 accumulator range that is a matter of precision, not of search: for 8-bit outputs every channel
fits when r >= ~1e-4 (steps within ~2^20 accumulator units), a few per thousand at r ~ 1e-5, about a
quarter at r ~ 1e-6, and 16-bit outputs (65536 steps) almost never do. If nothing fits, the offset
placing the most steps exactly is used (the midpoint for 16-bit outputs) and ``InexactRoundingWarning``
says how many steps are displaced (each by about one accumulator value); a compile error is raised
only if no offset keeps the arithmetic within int64.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import QCompilerError

#: M0 has 31 significant bits in the int32-multiplier kernels; a shift above 62 would overflow int64 products.
MULTIPLIER_BITS = 31
MAX_SHIFT = 62
INT32_RANGE = (-(1 << 31), (1 << 31) - 1)

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: The step-point arithmetic is exact in int64 for levels |n| <= 2^16 (16-bit outputs) ...
_MAX_LEVEL = 1 << 16
#: ... and accumulators |acc| <= 2^34; a step further than _FAR from 0 lies outside every domain.
_MAX_ACC = 1 << 34
_FAR = 1 << 36
_LIMB = 8  # bits of the low limb in _step_points' products
_BLOCK = 1 << 20  # (channels x levels) elements handled at once, to bound memory for 16-bit outputs
_CACHE = 1 << 21  # step tables up to this many elements are kept from quantize_multiplier for offset()
#: Past this many (channels x levels) the steps are not checked (a 4096-channel dense with 16-bit
#: outputs would take minutes, and 31-bit multipliers cannot place 65536 steps exactly anyway).
_MAX_CHECKED = 1 << 24
#: Rows with more levels than this get the midpoint of their steps' offsets when no offset is exact
#: (fewest accumulator values off at the worst step) instead of the search for the most exact steps.
_SEARCH_LEVELS = 1024


class InexactRoundingWarning(UserWarning):
    """A requantize cannot match exact rounding at every accumulator (see the module docstring)."""


def _exact_ratio(real: float, divisor: int) -> tuple[int, int]:
    """real / divisor as (numerator, denominator), exactly."""
    num, den = float(real).as_integer_ratio()
    return num, den * divisor


def _neighbours(num: int, den: int, bits: int) -> list[tuple[int, int]]:
    """The (M, s) with M / 2^s just below and just above num/den, M of ``bits`` bits, nearest first.

    Empty if the ratio needs a shift below 1 (a multiplier of 2^(bits-1) or more)."""
    e = num.bit_length() - den.bit_length()
    if (num << max(0, -e)) < (den << max(0, e)):
        e -= 1  # now 2^e <= num/den < 2^(e+1)
    shift = min(bits - 1 - e, MAX_SHIFT)
    if shift < 1:
        return []
    low, rem = divmod(num << shift, den)
    ms = [low] if rem == 0 else ([low, low + 1] if 2 * rem < den else [low + 1, low])
    pairs = [(m >> 1, shift - 1) if m == 1 << bits else (m, shift) for m in ms]
    return [(m, s) for m, s in pairs if s >= 1]


def _level_range(out_range: tuple[int, int], real: np.ndarray, b_lo: np.ndarray, b_hi: np.ndarray) -> np.ndarray:
    """The levels n whose step matters: v is clamped to [out_lo, out_hi], so n = out_lo+1 .. out_hi,
    and only those near what accumulators b in [b_lo, b_hi] reach (b * r, in float with a margin of 2):
    a level below every channel's reach is reached at b_lo by all of them, as is the level just below
    the reach, which is kept and implies it; likewise above."""
    lo, hi = int(out_range[0]), int(out_range[1])
    if lo < -_MAX_LEVEL or hi > _MAX_LEVEL:
        raise QCompilerError(f"requantize: output range [{lo}, {hi}] is wider than 16-bit outputs allow")
    reach_lo = math.floor(float(np.min(b_lo * real))) - 2
    reach_hi = math.ceil(float(np.max(b_hi * real))) + 2
    return np.arange(max(lo + 1, reach_lo), min(hi, reach_hi) + 1, dtype=np.int64)


def _step_tables(ratios: list[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """Per channel, 1/(2r) = Q + R/N split for _step_points (int64 columns)."""
    rows = []
    for num, den in ratios:
        g = math.gcd(den, 2 * num)
        top, n = den // g, 2 * num // g  # 1/(2r) = top / n with n <= 2^53 (a float64 numerator)
        q, r = divmod(top, n)
        if q > _FAR:  # every step lies beyond any accumulator: only their direction matters
            q, r, n = _FAR, 0, 1
        q1, r1 = divmod(r << _LIMB, n)
        rows.append((q, r, q1, r1, n))
    return tuple(np.array(col, dtype=np.int64)[:, None] for col in zip(*rows))


def _step_points(ratios: list[tuple[int, int]], levels: np.ndarray) -> np.ndarray:
    """T[c, i] = ceil((levels[i] - 1/2) / r_c): the least acc with floor(acc * r_c + 1/2) >= levels[i].

    Exact int64 arithmetic: with v = 1 - 2n and 1/(2r) = Q + R/N, floor(v/(2r)) = v*Q + floor(v*R/N),
    and v*R (up to 2^17 * 2^53) is split into limbs so that no product exceeds 2^62. Nondecreasing
    along levels."""
    q, r, q1, r1, n = _step_tables(ratios)
    v = 1 - 2 * levels[None, :]
    vh, vl = v >> _LIMB, v & ((1 << _LIMB) - 1)
    out, tmp = np.multiply(vh, r1), np.multiply(vl, r)
    out += tmp
    out //= n
    out += np.multiply(vh, q1, out=tmp)
    out += np.multiply(v, q, out=tmp)
    return np.negative(out, out=out)


def _shift_steps(steps: np.ndarray, levels: np.ndarray, real: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Step points for exact accumulators b + f (b integer, |f| <= 1/2 per channel): the least b with
    (b + f) * r >= n - 1/2 is ceil(x - f) for x = (n - 1/2)/r, one off ceil(x) = T only when f crosses
    the distance from x to an integer. That distance is taken in float64 (x < 2^35: error < 1e-5 of an
    accumulator unit, against fractions of ~1e-3), so only a value within that of a rounding boundary
    can still go either way."""
    x = (levels[None, :] - 0.5) / real[:, None]
    f = fraction[:, None]
    below = steps - x  # in [0, 1): how far x sits below T
    out = steps.copy()
    out[(f > 0) & (f >= 1 - below)] -= 1
    out[(f < 0) & (-f > below)] += 1
    return out


def _placements(steps: np.ndarray, levels: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """d[c, i] = n * 2^s - T * M0: the offsets (minus bias*M0) placing level n's kernel step at T are
    [d, d + M0). Computed modulo 2^64: for a step inside the accumulator domain the true value is below
    2^63 in magnitude (|d| <= 2|T| + 2 + 2^(s-1) * M0/(r 2^s) + M0), so the wrapped result is exact."""
    u = np.uint64
    d = levels.astype(u)[None, :] << shift.astype(u)[:, None]
    d -= steps.view(u) * m0.astype(u)[:, None]
    return d.view(np.int64)


def _fit(steps: np.ndarray, levels: np.ndarray, m0: np.ndarray, shift: np.ndarray, bias: np.ndarray,
         b_lo: np.ndarray, b_hi: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's int64 offset for exact accumulators b = acc + bias in [b_lo, b_hi], and how many
    output steps it cannot place exactly (0: exact everywhere).

    Steps inside the domain confine off - bias*M0 to [d, d + M0) (``_placements``). Among exact offsets
    the classic rounding constant 2^(s-1) (+ bias*M0) is kept if it is one, else the nearest one.
    Channels with steps outside the domain, or near int64 limits, or without an exact offset, go
    through ``_fit_channel``.
    """
    d = _placements(steps, levels, m0, shift)
    live_lo, live_hi = d.max(axis=1, initial=_INT64_MIN), d.min(axis=1, initial=_INT64_MAX)
    # Common case: every step inside the domain (T is nondecreasing, so the first and last tell), the
    # window inside (-2^62, 2^61) and |bias*M0| < 2^62 (so |off| < 2^63), and the no-overflow bounds
    # -2^63 - b_lo*M0 <= e < 2^63 - b_hi*M0 far from the window (checked in float, 2^20 margin).
    simple = (live_lo > -(1 << 62)) & (live_hi < (1 << 61))
    if steps.shape[1]:
        simple &= (steps[:, 0] > b_lo) & (steps[:, -1] <= b_hi)
    mf, top = m0.astype(np.float64), 2.0 ** 63
    simple &= np.abs(bias.astype(np.float64)) * mf < 0.999 * 2.0 ** 62
    simple &= -top - b_lo * mf < live_lo.astype(np.float64) - 2.0 ** 20
    simple &= top - b_hi * mf > live_hi.astype(np.float64) + mf + 2.0 ** 20
    lo, hi = np.where(simple, live_lo, 0), np.where(simple, live_hi, 0) + m0
    wide = steps.shape[1] > _SEARCH_LEVELS
    fast = simple if wide else simple & (lo < hi)
    target = np.int64(1) << (shift - 1)
    e = np.where(lo < hi, np.clip(target, lo, hi - 1), (lo + hi) // 2)
    offsets = np.where(fast, e + np.where(fast, bias, 0) * m0, 0)
    displaced = np.zeros(len(m0), np.int64)
    if wide:
        displaced = np.where(fast, ((d > e[:, None]) | (d + m0[:, None] <= e[:, None])).sum(axis=1), 0)
    for c in np.flatnonzero(~fast):
        offsets[c], displaced[c] = _fit_channel(steps[c], d[c], levels, int(m0[c]), int(shift[c]), int(bias[c]),
                                                int(b_lo[c]), int(b_hi[c]), f"{what} (channel {c})")
    return offsets, displaced


def _fit_channel(steps: np.ndarray, d: np.ndarray, levels: np.ndarray, m: int, s: int, bias: int, b_lo: int,
                 b_hi: int, what: str) -> tuple[int, int]:
    """``_fit`` for one channel, in Python integers. A level stepping at T <= b_lo only needs the kernel
    at b_lo to reach it, one stepping beyond b_hi only needs the kernel at b_hi below it, and b*M0 + off
    must not overflow int64: those constraints are hard; the steps inside the domain are placed exactly,
    or as many of them as one offset can."""
    low, high = steps <= b_lo, steps > b_hi
    live = d[~(low | high)]
    lo, hi = _INT64_MIN - b_lo * m, _INT64_MAX + 1 - b_hi * m
    if low.any():
        lo = max(lo, (int(levels[low][-1]) << s) - b_lo * m)
    if high.any():
        hi = min(hi, (int(levels[high][0]) << s) - b_hi * m)
    if lo >= hi:
        raise QCompilerError(f"{what}: no int64 offset keeps the requantize in range (multiplier {m}, shift {s}); "
                             "check the model's scales and bias")
    target, displaced = 1 << (s - 1), 0
    if len(live) and max(lo, int(live.max())) >= min(hi, int(live.min()) + m):
        if len(live) > _SEARCH_LEVELS:  # the midpoint of the extreme steps' offsets (see _SEARCH_LEVELS)
            e = min(max((int(live.max()) + int(live.min()) + m) // 2, lo), hi - 1)
            displaced = int(np.count_nonzero([not v <= e < v + m for v in live.tolist()]))
        else:
            e, displaced = _most_covered(live, live + m, lo, hi, target)
    else:
        if len(live):
            lo, hi = max(lo, int(live.max())), min(hi, int(live.min()) + m)
        e = min(max(target, lo), hi - 1)
    off = e + bias * m
    if not _INT64_MIN <= off <= _INT64_MAX:
        raise QCompilerError(f"{what}: the requantize offset for bias {bias} does not fit int64; check the model's "
                             "bias and scales")
    return off, displaced


def _most_covered(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int, target: int) -> tuple[int, int]:
    """The point of [lo, hi) inside the most intervals [starts_i, ends_i) (ties: nearest ``target``), and
    how many intervals miss it."""
    lo64, hi64 = max(lo, _INT64_MIN), min(hi - 1, _INT64_MAX)
    starts, ends = np.sort(starts), np.sort(ends)
    candidates = np.unique(np.clip(np.append(starts, [lo64, min(max(target, lo64), hi64)]), lo64, hi64))
    inside = np.searchsorted(starts, candidates, "right") - np.searchsorted(ends, candidates, "right")
    best = candidates[inside == inside.max()]
    point = int(best[np.argmin(np.abs(best.astype(np.float64) - float(target)))])
    return point, len(starts) - int(inside.max())


def _blocks(channels: int, levels: int) -> list[slice]:
    """Channel slices whose (channels x levels) tables stay under _BLOCK elements."""
    step = max(1, _BLOCK // max(levels, 1))
    return [slice(i, min(i + step, channels)) for i in range(0, channels, step)]


@dataclass(frozen=True)
class FixedPoint:
    """Per-channel (or length-1) fixed-point form of real multipliers, and what it must be exact for.

    The real multiplier of channel c is ``real[c] / divisor`` exactly. ``out_range`` is the range the
    rounded value v = q - zp is clamped to; ``acc_range`` (lo, hi), scalars or per channel, the range
    of the kernel's accumulator acc the exactness guarantee covers (what its inputs can produce; the
    exact value is (acc + bias) * r, the bias given to ``offset``). The kernels narrow v to int32
    before the clamp, so the guarantee also assumes |v| < 2^31 - 2^16 (only reachable with r near 1
    or above and huge accumulators).
    """

    multiplier: np.ndarray  # int64 values of up to max_bits bits ([2^30, 2^31) for int32 kernels)
    shift: np.ndarray  # int64 values in [1, MAX_SHIFT]
    real: np.ndarray  # float64
    out_range: tuple[int, int]
    acc_range: tuple[np.ndarray, np.ndarray] = INT32_RANGE  # int64 (channels,) each after quantize_multiplier
    divisor: int = 1
    what: str = "requantize"
    _cache: dict = field(default_factory=dict, compare=False, repr=False)  # levels, step tables per block

    def offset(self, bias: np.ndarray | int = 0, fraction: np.ndarray | float | None = None) -> np.ndarray:
        """The int64 offsets ``off`` (bias in accumulator units, per channel or scalar) that make the
        kernel formula equal to exact rounding of (acc + bias + fraction) * r at every accumulator
        covered (see the class docstring); warns (InexactRoundingWarning) for channels where no offset
        can. ``fraction`` (|f| <= 1/2, float64) is the part of a float bias that is not a whole number
        of accumulator units: a QDQ model's bias is an int32 times a float32 scale s_b, which is the
        float32 rounding of s_x * s_w, not that product, so it sits ~1e-8 units per unit of bias off
        the grid (ResNet-18: 1e-5 of a step, enough to round one value of 100,000 differently from the
        exact reference and, through 16 more layers, a quarter of the logits)."""
        offsets, displaced = self._solve(bias, fraction)
        if np.any(displaced < 0):
            warnings.warn(f"{self.what}: {len(displaced)} channel(s) x {self.out_range[1] - self.out_range[0]} output "
                          "levels are too many to check; the classic rounding offset is used (not guaranteed exact)",
                          InexactRoundingWarning, stacklevel=2)
        elif np.any(displaced):
            bad = np.flatnonzero(displaced)
            warnings.warn(f"{self.what}: {len(bad)} of {len(displaced)} channel(s) (first: {bad[0]}, multiplier "
                          f"{self.real[bad[0]] / self.divisor:.9g}) cannot round exactly with "
                          f"{int(self.multiplier[bad[0]]).bit_length()}-bit multipliers: {int(displaced.sum())} "
                          "output step(s) sit next to the exactly rounded accumulator", InexactRoundingWarning,
                          stacklevel=2)
        return offsets

    def displaced_steps(self, bias: np.ndarray | int = 0, fraction: np.ndarray | float | None = None) -> np.ndarray:
        """Per channel, how many output steps ``offset(bias, fraction)`` cannot place exactly (0: exact;
        -1: not checked, see _MAX_CHECKED)."""
        return self._solve(bias, fraction)[1]

    def _solve(self, bias, fraction=None) -> tuple[np.ndarray, np.ndarray]:
        channels = len(self.multiplier)
        bias = np.broadcast_to(np.asarray(bias, dtype=np.int64).reshape(-1), (channels,))
        if fraction is not None and np.any(fraction):
            fraction = np.clip(np.broadcast_to(np.asarray(fraction, np.float64).reshape(-1), (channels,)), -0.5, 0.5)
        else:
            fraction = None
        acc_lo, acc_hi = (np.broadcast_to(np.asarray(v, np.int64), (channels,)) for v in self.acc_range)
        b_lo, b_hi = acc_lo + bias, acc_hi + bias  # the exact accumulators b = acc + bias
        if np.any(np.abs(bias) > _MAX_ACC - np.maximum(np.abs(acc_lo), np.abs(acc_hi))):
            c = int(np.argmax(np.abs(bias)))
            raise QCompilerError(f"{self.what}: bias {int(bias[c])} (channel {c}, in accumulator units) is too large "
                                 "for an int32 accumulator; check the model's bias and scales")
        levels = _level_range(self.out_range, self.real / self.divisor, b_lo, b_hi)
        if channels * len(levels) > _MAX_CHECKED:
            return self._classic(bias, fraction), np.full(channels, -1, np.int64)
        cached = self._cache.get("levels") is not None and np.array_equal(self._cache["levels"], levels)
        offsets, displaced = np.zeros(channels, np.int64), np.zeros(channels, np.int64)
        for i, block in enumerate(_blocks(channels, len(levels))):
            steps = self._cache["steps"][i] if cached else _step_points(self._ratios(block), levels)
            if fraction is not None:
                steps = _shift_steps(steps, levels, self.real[block] / self.divisor, fraction[block])
            offsets[block], displaced[block] = _fit(steps, levels, self.multiplier[block], self.shift[block],
                                                    bias[block], b_lo[block], b_hi[block], self.what)
        return offsets, displaced

    def _classic(self, bias: np.ndarray, fraction: np.ndarray | None = None) -> np.ndarray:
        """(bias + fraction)*M0 + 2^(s-1): the offset when the steps are not checked."""
        fraction = np.zeros(len(self.multiplier)) if fraction is None else fraction
        offsets = [int(b) * int(m) + round(float(f) * int(m)) + (1 << (int(s) - 1))
                   for b, f, m, s in zip(bias, fraction, self.multiplier, self.shift)]
        if not all(_INT64_MIN <= v <= _INT64_MAX for v in offsets):
            raise QCompilerError(f"{self.what}: a requantize offset does not fit int64; check the model's bias and "
                                 "scales")
        return np.array(offsets, np.int64)

    def _ratios(self, block: slice) -> list[tuple[int, int]]:
        return [_exact_ratio(r, self.divisor) for r in self.real[block]]


def multiplier_bits(acc_range: tuple[int, int]) -> int:
    """The most multiplier bits an int64-multiplying kernel can use for accumulators in ``acc_range``
    (|acc| * M < 2^61 leaves room for the offset)."""
    widest = max(abs(int(acc_range[0])), abs(int(acc_range[1])), 1)
    return max(MULTIPLIER_BITS, min(61, 61 - widest.bit_length()))


def quantize_multiplier(real: np.ndarray | float, what: str = "requantize", *, out_range: tuple[int, int],
                        acc_range: tuple = INT32_RANGE, divisor: int = 1,
                        max_bits: int = MULTIPLIER_BITS) -> FixedPoint:
    """Represent each positive real multiplier ``real / divisor`` as M * 2^-s for exact rounding.

    Per channel, the first (M, s) for which an exact offset exists (with no bias; ``FixedPoint.offset``
    re-checks with the real one): the nearest 31-bit M, the other adjacent 31-bit M, then (up to
    ``max_bits``, for kernels multiplying in int64) wider ones; else the nearest at ``max_bits``.
    ``out_range`` is the range v = q - zp is clamped to, ``acc_range`` (lo, hi), scalars or per channel,
    the accumulators to be exact for (see ``FixedPoint``). ``what`` names the op in errors
    (non-positive, non-finite, or >= 2^30 multipliers, which no sane quantization produces) and
    warnings.
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise QCompilerError(f"{what}: requantization scale {r.min():g} is not a positive finite number; "
                             "check the model's quantization scales")
    acc_lo, acc_hi = (np.broadcast_to(np.asarray(v, np.int64), r.shape).copy() for v in acc_range)
    if np.any(acc_lo < -_MAX_ACC) or np.any(acc_hi > _MAX_ACC) or np.any(acc_lo > acc_hi):
        raise QCompilerError(f"{what}: accumulator range [{acc_lo.min()}, {acc_hi.max()}] is empty or beyond the "
                             "exact requantize's 2^34")
    ratios = [_exact_ratio(x, divisor) for x in r]
    levels = _level_range(out_range, r / divisor, acc_lo, acc_hi)
    chosen: list = [None] * len(r)
    cache = {"levels": levels, "steps": []} if len(r) * len(levels) <= _CACHE else {}
    checked = len(r) * len(levels) <= _MAX_CHECKED
    if not checked:  # the nearest multipliers, unchecked (see _MAX_CHECKED)
        chosen = [(_neighbours(num, den, max_bits) or [None])[0] for num, den in ratios]
    for block in _blocks(len(r), len(levels)) if checked else []:
        steps = _step_points(ratios[block], levels)
        if cache:
            cache["steps"].append(steps)
        pending = list(range(block.start, block.stop))
        for bits in range(MULTIPLIER_BITS, max_bits + 1):
            options = {c: _neighbours(*ratios[c], bits) for c in pending}
            if bits == MULTIPLIER_BITS and not all(options.values()):
                raise QCompilerError(f"{what}: requantization multiplier {(r / divisor).max():g} is too large "
                                     "(>= 2^30); check the model's quantization scales")
            for rank in (0, 1):  # the nearest multiplier, then the other adjacent one
                tries = [c for c in pending if len(options[c]) > rank]
                if not tries:
                    continue
                m0, s = (np.array(v, dtype=np.int64) for v in zip(*(options[c][rank] for c in tries)))
                zeros, index = np.zeros(len(tries), np.int64), np.array(tries) - block.start
                _, displaced = _fit(steps[index], levels, m0, s, zeros, acc_lo[tries], acc_hi[tries], what)
                for c, bad in zip(tries, displaced):
                    if not bad:
                        chosen[c] = options[c][rank]
                pending = [c for c in pending if chosen[c] is None]
            if not pending:
                break
        for c in pending:  # nothing exact: the nearest multiplier of the widest precision
            chosen[c] = _neighbours(*ratios[c], max_bits)[0]
    if None in chosen:
        raise QCompilerError(f"{what}: requantization multiplier {(r / divisor).max():g} is too large (>= 2^30); "
                             "check the model's quantization scales")
    m0, s = (np.array(v, dtype=np.int64) for v in zip(*chosen))
    return FixedPoint(m0, s, r, (int(out_range[0]), int(out_range[1])), (acc_lo, acc_hi), int(divisor), what, cache)


@dataclass(frozen=True)
class AddFixedPoint:
    """``((a - za) * a_multiplier + (b - zb) * b_multiplier + offset) >> shift``, in int64."""

    a_multiplier: int
    b_multiplier: int
    shift: int
    offset: int


#: Input pairs an add checks exhaustively at compile time (8-bit x 8-bit is 65536).
_ADD_GRID = 1 << 20


def add_multipliers(ra: float, rb: float, a_range: tuple[int, int], b_range: tuple[int, int],
                    out_range: tuple[int, int], what: str = "add") -> AddFixedPoint:
    """Fixed-point form of an add/sub whose result is floor(ra*x + rb*y + 1/2), exactly.

    The real scales are ra = s_a / s_out and rb = +-s_b / s_out (float64, so exact dyadic
    rationals; rb carries the subtraction's sign); x = a - za and y = b - zb range over
    ``a_range`` x ``b_range`` and the result is clamped to ``out_range``. Every (x, y) is checked:
    from the shift that gives the larger multiplier 31 bits, the first shift (multipliers rounded to
    nearest) for which some offset makes all of them exact, keeping the products and the offset
    within int64. Warns (InexactRoundingWarning) if none does, or if the inputs are too wide to check.
    """
    for r in (ra, rb):
        if not math.isfinite(r) or r == 0 or abs(r) >= 2 ** 30:
            raise QCompilerError(f"{what}: input/output scale ratio {r:g} is not a usable multiplier; check the "
                                 "model's quantization scales")
    xs = np.arange(a_range[0], a_range[1] + 1, dtype=np.int64)
    ys = np.arange(b_range[0], b_range[1] + 1, dtype=np.int64)
    widest = max(abs(out_range[0]), abs(out_range[1])) + 2 + abs(ra) * np.abs(xs).max() + abs(rb) * np.abs(ys).max()
    first = _neighbours(*_exact_ratio(max(abs(ra), abs(rb)), 1), MULTIPLIER_BITS)[0][1]
    last = max(first, min(MAX_SHIFT, 61 - math.ceil(math.log2(widest))))  # (widest * 2^s) < 2^62 keeps int64
    if len(xs) * len(ys) > _ADD_GRID:
        ma, mb = _round_scaled(ra, last), _round_scaled(rb, last)
        warnings.warn(f"{what}: {len(xs)} x {len(ys)} input pairs are too many to check the rounding exactly",
                      InexactRoundingWarning, stacklevel=2)
        return AddFixedPoint(ma, mb, last, 1 << (last - 1))
    exact = np.clip(_exact_sum_floor(ra, rb, xs, ys), out_range[0] - 1, out_range[1] + 1)
    for shift in range(first, last + 1):
        ma, mb = _round_scaled(ra, shift), _round_scaled(rb, shift)
        starts, ends = _add_offset_intervals(exact, xs[:, None] * ma + ys[None, :] * mb, shift, out_range)
        lo, hi = int(starts.max()), int(ends.min())
        if lo < hi:
            return AddFixedPoint(ma, mb, shift, min(max(1 << (shift - 1), lo), hi - 1))
    offset, missed = _most_covered(starts, ends, _INT64_MIN, _INT64_MAX, 1 << (shift - 1))
    warnings.warn(f"{what}: no {shift}-bit fixed point rounds ra={ra:.9g}, rb={rb:.9g} exactly; {missed} of "
                  f"{exact.size} input pairs round next to the exact value", InexactRoundingWarning, stacklevel=2)
    return AddFixedPoint(ma, mb, shift, offset)


def _round_scaled(real: float, shift: int) -> int:
    """round(real * 2^shift), half away from zero, exactly."""
    num, den = float(real).as_integer_ratio()
    magnitude = (2 * abs(num) * (1 << shift) + den) // (2 * den)
    return magnitude if num > 0 else -magnitude


def _exact_sum_floor(ra: float, rb: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """floor(ra*x + rb*y + 1/2) for every (x, y), exactly (int64 grid).

    With a common power-of-two denominator D: floor((A + B) / D) for A = pa*x + D/2 and B = pb*y is
    floor(A/D) + floor(B/D) + [A mod D >= D - B mod D]; the carry compares Python integers through
    their ranks, so the grid itself needs no big integers."""
    (na, da), (nb, db) = ra.as_integer_ratio(), rb.as_integer_ratio()
    den = max(da, db, 2)
    pa, pb = na * (den // da), nb * (den // db)
    qa, rem_a = zip(*(divmod(pa * int(x) + den // 2, den) for x in xs))
    qb, rem_b = zip(*(divmod(pb * int(y), den) for y in ys))
    need = [den - v for v in rem_b]
    rank = {v: i for i, v in enumerate(sorted(set(rem_a) | set(need)))}
    carry = np.array([rank[v] for v in rem_a])[:, None] >= np.array([rank[v] for v in need])[None, :]
    return np.array(qa, np.int64)[:, None] + np.array(qb, np.int64)[None, :] + carry


def _add_offset_intervals(exact: np.ndarray, k: np.ndarray, shift: int, out_range: tuple[int, int]):
    """Per input pair, the offsets [start, end) for which clamp((k + off) >> shift) equals the clamped
    exact value (``exact`` already clamped to one beyond ``out_range``): below the range the kernel
    only has to stay below it, above the range only to reach its top."""
    out_lo, out_hi = out_range
    g = np.clip(exact, out_lo, out_hi)
    starts = np.where(exact > out_lo, (g << shift) - k, _INT64_MIN)
    ends = np.where(exact < out_hi, ((g + 1) << shift) - k, _INT64_MAX)
    return starts.ravel(), ends.ravel()


def requantize_reference(acc: np.ndarray, fp: FixedPoint, bias: np.ndarray | int, zero_point: int,
                         lo: int, hi: int, channel_axis: int = -1) -> np.ndarray:
    """NumPy statement of the kernel formula every requantizing kernel implements (not of exact
    rounding: that is tests/int_reference.py). Returns int64; per-channel parameters broadcast
    along ``channel_axis`` of ``acc``."""
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
