"""Pieces shared by the integer kernels: the requantize epilogue and broadcasting."""
from __future__ import annotations

from tvm import te, tirx


#: A requantize shift at least this large can be applied as "take the high 32-bit word, then shift
#: in int32" (see ``shift_operand``).
HIGH_WORD = 32


def high_word_shifts(target=None) -> bool:
    """Whether kernels for ``target`` (default: the current one) apply shifts >= 32 as high word +
    int32 shift: on x86 without AVX-512, which has no 64-bit arithmetic shift (LLVM emulates one with
    three more instructions per vector; the 1x1 conv of ResNet-50's first stage ran 10-15% faster).
    With AVX-512's vpsravq (or NEON's sshl) the int64 form is as short and stays."""
    from tvm.target import Target, codegen

    from ..target import is_x86
    target = target or Target.current(allow_none=True)
    if target is None or not is_x86(target):
        return False
    return not codegen.llvm_cpu_has_features(["avx512f"], target)


def shift_operand(shift, target=None):
    """The shift operand the kernels take for requantize shifts ``s`` (a numpy array, per channel):
    ``s - 32`` as int32 when ``high_word_shifts(target)`` and every ``s >= 32`` (the usual case: real
    multipliers below 1/2), else ``s`` as int64. ``clamp_shifted`` tells the forms apart by that dtype."""
    import numpy as np
    values = np.asarray(shift)
    if high_word_shifts(target) and values.size > 0 and int(values.min()) >= HIGH_WORD:
        return (values - HIGH_WORD).astype(np.int32)
    return values.astype(np.int64)


def shift_constant(shift: int) -> tirx.PrimExpr:
    """A per-tensor shift as the TIR constant of ``shift_operand``'s form (for the current target)."""
    operand = shift_operand([shift])
    return tirx.const(int(operand[0]), str(operand.dtype))


def _dtype(expr) -> str:
    """The dtype of a TIR expression or a TE tensor element (a TensorSlice has no ``ty``)."""
    return str(expr.dtype) if hasattr(expr, "dtype") else str(expr.ty.dtype)


def clamp_shifted(value, shift, zero_point: int, lo: int, hi: int, out_dtype: str):
    """``clamp((value >> s) + zp, lo, hi)`` for an int64 ``value``, exactly and without int32 wrap.

    ``shift`` in ``shift_operand``'s form. With s >= 32 the floor shifts compose: value >> s ==
    int32(value >> 32) >> (s - 32), and ``value >> 32`` always fits int32, so the 64-bit part is just
    the high word (a shuffle) and the shift is a 32-bit one (``vpsravd``): AVX2 has no 64-bit
    arithmetic shift, which LLVM emulates with three more instructions per vector, plus a narrowing
    shuffle. The clamp runs before the zero point is added (to [lo - zp, hi - zp]), so no intermediate
    can overflow; with s < 32 it clamps in int64, before narrowing.
    """
    low, high = lo - zero_point, hi - zero_point
    if _dtype(shift) == "int32":
        v = (value >> tirx.const(HIGH_WORD, "int64")).astype("int32") >> shift
        v = te.max(te.min(v, tirx.const(high, "int32")), tirx.const(low, "int32"))
    else:
        v = te.max(te.min(value >> shift, tirx.const(high, "int64")), tirx.const(low, "int64")).astype("int32")
    return (v + tirx.const(zero_point, "int32")).astype(out_dtype)


def requantize_value(acc, multiplier, offset, shift, zero_point: int, lo: int, hi: int, out_dtype: str):
    """``clamp(((int64(acc) * M0 + off) >> s) + zp, lo, hi)`` as a TIR expression.

    ``multiplier`` is int32 (so LLVM multiplies sign-extended 32-bit lanes, vpmuldq), ``offset``
    int64, ``shift`` in ``shift_operand``'s form; see qcompiler.quant.fixed_point for why the bias
    lives inside ``offset``.
    """
    value = acc.astype("int64") * multiplier.astype("int64") + offset
    return clamp_shifted(value, shift, zero_point, lo, hi, out_dtype)


def broadcast_load(tensor: te.Tensor, out_indices: tuple) -> tirx.PrimExpr:
    """Numpy-style broadcast read of ``tensor`` at the indices of a (higher-rank) output."""
    rank = len(tensor.shape)
    tail = out_indices[len(out_indices) - rank:] if rank else ()
    idx = [0 if int(dim) == 1 else i for dim, i in zip(tensor.shape, tail)]
    return tensor[tuple(idx)] if rank else tensor()


def dequantize_value(acc, scale, bias, lo: float, hi: float):
    """``clamp(float32(acc) * scale + bias, lo, hi)``: an integer accumulator leaving as fp32.

    Used when the consumer of a quantized dot product is a float op (or the model output), e.g. a
    final Linear whose output is not re-quantized: the dot product stays in int8 x int8 -> int32.
    """
    v = acc.astype("float32") * scale + bias
    if lo != float("-inf"):
        v = te.max(v, tirx.const(lo, "float32"))
    if hi != float("inf"):
        v = te.min(v, tirx.const(hi, "float32"))
    return v


def epilogue(shape, value, channel, multiplier, offset, shift, *, zero_point: int, lo, hi, out_dtype: str,
             out_scale=None, out_bias=None):
    """The "requant" stage of dense/conv kernels, over output ``shape``.

    ``value(*idx)`` is the int32 accumulator (zero-point terms applied) and ``channel(*idx)`` the
    output channel of an index. Three epilogues: requantize (``multiplier`` given); fp32
    ``(acc + offset) * out_scale + out_bias`` clamped to [lo, hi] (``out_scale`` given); or the exact
    int32 ``acc + offset`` (MatMulInteger/ConvInteger).
    """
    if multiplier is None and out_scale is not None:
        return te.compute(shape, lambda *i: dequantize_value(
            value(*i) + offset[channel(*i)], out_scale[channel(*i)], out_bias[channel(*i)], lo, hi), name="requant")
    if multiplier is None:
        return te.compute(shape, lambda *i: value(*i) + offset[channel(*i)], name="requant")
    return te.compute(shape, lambda *i: requantize_value(
        value(*i), multiplier[channel(*i)], offset[channel(*i)], shift[channel(*i)], zero_point, lo, hi, out_dtype),
        name="requant")
