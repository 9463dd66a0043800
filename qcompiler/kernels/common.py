"""Pieces shared by the integer kernels: the requantize epilogue and broadcasting."""
from __future__ import annotations

from tvm import te, tirx


def requantize_value(acc, multiplier, offset, shift, zero_point: int, lo: int, hi: int, out_dtype: str):
    """``clamp(((int64(acc) * M0 + off) >> s) + zp, lo, hi)`` as a TIR expression.

    ``multiplier`` is int32 (so LLVM multiplies sign-extended 32-bit lanes, vpmuldq), ``offset`` and
    ``shift`` int64; see qcompiler.quant.fixed_point for why the bias lives inside ``offset``.
    """
    v = (acc.astype("int64") * multiplier.astype("int64") + offset) >> shift
    v = v.astype("int32") + tirx.const(zero_point, "int32")
    return te.max(te.min(v, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype(out_dtype)


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
