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
