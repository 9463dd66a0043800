"""Integer matmul kernels: activation x constant weight (dense) and activation x activation.

dense:         acc[m, n] = sum_k x[m, k] * w[k, n]  (- wzp[n] * sum_k x[m, k] if the weight has zero points)
               The activation zero point and the bias are folded into the per-channel offset at compile
               time (they only involve constant weight column sums), so the inner loop is a pure dot.
batch_matmul:  acc[b, m, n] = sum_k (a[b, m, k] - za) * (b[b, k, n] - zb), both operands activations.
"""
from __future__ import annotations

from tvm import te, tirx

from .common import epilogue, requantize_value, shift_constant


def qdense(x, w, multiplier, offset, shift, weight_zero_point=None, *, zero_point: int, lo, hi, out_dtype: str,
           out_scale=None, out_bias=None):
    """x [M, K] (u8/s8), w [K, N] (s8) -> [M, N]:
    requantized (multiplier/offset/shift), or with ``multiplier`` None: int32 acc + offset (int32), or
    with ``out_scale``/``out_bias`` also given: fp32 (acc + offset) * out_scale + out_bias, clamped to [lo, hi]."""
    m_dim, k_dim = x.shape
    n_dim = w.shape[1]
    k = te.reduce_axis((0, k_dim), "k")
    acc = te.compute((m_dim, n_dim), lambda i, j: te.sum(x[i, k].astype("int32") * w[k, j].astype("int32"), axis=k),
                     name="acc")
    value = _weight_zero_point_terms(acc, x, k_dim, weight_zero_point)
    return epilogue((m_dim, n_dim), value, lambda i, j: j, multiplier, offset, shift, zero_point=zero_point, lo=lo,
                    hi=hi, out_dtype=out_dtype, out_scale=out_scale, out_bias=out_bias)


def _weight_zero_point_terms(acc, x, k_dim: int, weight_zero_point):
    """acc[i, j] - wzp[j] * sum_k x[i, k] (only with weight zero points: uint8 weights)."""
    if weight_zero_point is None:
        return lambda i, j: acc[i, j]
    kr = te.reduce_axis((0, k_dim), "kr")
    rowsum = te.compute((x.shape[0],), lambda i: te.sum(x[i, kr].astype("int32"), axis=kr), name="rowsum")
    return lambda i, j: acc[i, j] - weight_zero_point[j] * rowsum[i]


def qbatch_matmul(a, b, *, a_zero_point: int, b_zero_point: int, multiplier: int, offset: int, shift: int,
                  zero_point: int, lo: int, hi: int, out_dtype: str):
    """a [B, M, K], b [B, K, N] (u8/s8, per-tensor zero points) -> requantized [B, M, N]."""
    batch, m_dim, k_dim = a.shape
    n_dim = b.shape[2]
    k = te.reduce_axis((0, k_dim), "k")
    acc = te.compute((batch, m_dim, n_dim), lambda p, i, j: te.sum(
        (a[p, i, k].astype("int32") - a_zero_point) * (b[p, k, j].astype("int32") - b_zero_point), axis=k),
        name="acc")
    return te.compute((batch, m_dim, n_dim), lambda p, i, j: requantize_value(
        acc[p, i, j], te.const(multiplier, "int32"), te.const(offset, "int64"), shift_constant(shift),
        zero_point, lo, hi, out_dtype), name="requant")


#: Packed weight block: 16 output channels x 4 reduction steps (one vpdpbusd zmm).
PACK_N, PACK_K = 16, 4


def pack_dense_weight(w, *, lanes: int = PACK_N):
    """numpy [K, N] int8 -> [ceil(N/16), ceil(K/4), 16, 4], zero padded (the VNNI micro-kernel's layout)."""
    import numpy as np
    k_dim, n_dim = w.shape
    kp, np_ = -(-k_dim // PACK_K) * PACK_K, -(-n_dim // lanes) * lanes
    padded = np.zeros((kp, np_), dtype=w.dtype)
    padded[:k_dim, :n_dim] = w
    return np.ascontiguousarray(padded.reshape(kp // PACK_K, PACK_K, np_ // lanes, lanes).transpose(2, 0, 3, 1))


def qdense_packed(x, wp, multiplier, offset, shift, weight_zero_point=None, *, n_out: int, zero_point: int, lo, hi,
                  out_dtype: str, out_scale=None, out_bias=None, m_pad: int | None = None):
    """x [M, K] (u8), wp = pack_dense_weight(w) -> [M, n_out]; epilogues as in ``qdense``.

    The reduction runs over K rounded up to 4; if K is not a multiple of 4, x is first copied
    into a zero-padded [M, Kp] buffer (stage "pad") so the micro-kernel reads whole 4-byte groups.
    The accumulator covers N rounded up to 16 (stage "acc"); the epilogue writes the first n_out.
    ``m_pad`` (>= M) rows are accumulated, zero rows below M (copied through "pad" as well), so that
    register tiles divide them (see ``schedules.x86_vnni.padded_rows``); the epilogue writes M rows.
    """
    m_dim, k_dim = (int(v) for v in x.shape)
    m_pad = m_pad or m_dim
    nb, kb = int(wp.shape[0]), int(wp.shape[1])
    kp = kb * PACK_K
    if kp != k_dim or m_pad != m_dim:
        xp = te.compute((m_pad, kp), lambda i, k: tirx.if_then_else(
            tirx.all(i < m_dim, k < k_dim), x[tirx.min(i, m_dim - 1), tirx.min(k, k_dim - 1)],
            tirx.const(0, x.dtype)), name="pad")
    else:
        xp = x
    k = te.reduce_axis((0, kp), "k")
    acc = te.compute((m_pad, nb * PACK_N), lambda i, j: te.sum(
        xp[i, k].astype("int32") * wp[j // PACK_N, k // PACK_K, j % PACK_N, k % PACK_K].astype("int32"), axis=k),
        name="acc")
    value = _weight_zero_point_terms(acc, x, k_dim, weight_zero_point)
    return epilogue((m_dim, n_out), value, lambda i, j: j, multiplier, offset, shift, zero_point=zero_point, lo=lo,
                    hi=hi, out_dtype=out_dtype, out_scale=out_scale, out_bias=out_bias)


def qbatch_matmul_packed(a, b, *, a_zero_point: int, b_zero_point: int, multiplier: int, offset: int, shift: int,
                         zero_point: int, lo: int, hi: int, out_dtype: str):
    """a [B, M, K] (u8), b [B, K, N] (u8 or s8) -> requantized [B, M, N], for the VNNI micro-kernel.

    b is packed at run time (stage "pack_b") into [B, N/16, K/4, 16, 4] int8; a uint8 b is shifted
    by -128 (and its zero point with it) so the micro-kernel multiplies u8 x s8. With
    zb' the (shifted) zero point of b:
        acc - zb' * rowsum(a)[i] - za * colsum(b')[j] + K * za * zb'
    where the row/column sums are their own stages ("rowsum_a", "colsum_b").
    """
    batch, m_dim, k_dim = (int(v) for v in a.shape)
    n_dim = int(b.shape[2])
    kp, np_ = -(-k_dim // PACK_K) * PACK_K, -(-n_dim // PACK_N) * PACK_N
    shift_b = 128 if b.dtype == "uint8" else 0
    zb = b_zero_point - shift_b

    def b_signed(p, k, j):
        inside = tirx.all(k < k_dim, j < n_dim)
        kk, jj = tirx.min(k, k_dim - 1), tirx.min(j, n_dim - 1)
        value = (b[p, kk, jj].astype("int32") - shift_b).astype("int8")
        return tirx.if_then_else(inside, value, tirx.const(0, "int8"))
    bp = te.compute((batch, np_ // PACK_N, kp // PACK_K, PACK_N, PACK_K),
                    lambda p, jo, ko, ji, ki: b_signed(p, ko * PACK_K + ki, jo * PACK_N + ji), name="pack_b")
    if kp != k_dim:
        ap = te.compute((batch, m_dim, kp), lambda p, i, k: tirx.if_then_else(
            k < k_dim, a[p, i, tirx.min(k, k_dim - 1)], tirx.const(0, a.dtype)), name="pad")
    else:
        ap = a
    k = te.reduce_axis((0, kp), "k")
    acc = te.compute((batch, m_dim, np_), lambda p, i, j: te.sum(
        ap[p, i, k].astype("int32") * bp[p, j // PACK_N, k // PACK_K, j % PACK_N, k % PACK_K].astype("int32"),
        axis=k), name="acc")
    kr = te.reduce_axis((0, k_dim), "kr")
    rowsum = te.compute((batch, m_dim), lambda p, i: te.sum(a[p, i, kr].astype("int32"), axis=kr), name="rowsum_a")
    kc = te.reduce_axis((0, k_dim), "kc")
    colsum = te.compute((batch, n_dim), lambda p, j: te.sum(b[p, kc, j].astype("int32") - shift_b, axis=kc),
                        name="colsum_b")
    constant = k_dim * a_zero_point * zb

    def value(p, i, j):
        return acc[p, i, j] - zb * rowsum[p, i] - a_zero_point * colsum[p, j] + constant
    return te.compute((batch, m_dim, n_dim), lambda p, i, j: requantize_value(
        value(p, i, j), tirx.const(multiplier, "int32"), tirx.const(offset, "int64"), shift_constant(shift),
        zero_point, lo, hi, out_dtype), name="requant")


def pack_dense_weight_pairs(w, lanes: int, blocks: int = 1):
    """numpy [K, N] int8 -> int16 [ceil(N/(lanes*blocks)), ceil(K/2), blocks, lanes, 2], zero padded:
    the vpmaddwd micro-kernel's layout. ``blocks`` is the register tile's NR: each k step of a tile
    reads one contiguous blocks x lanes x 2 chunk (one stream for the hardware prefetcher, not NR)."""
    import numpy as np
    k_dim, n_dim = w.shape
    width = lanes * blocks
    kp, np_ = -(-k_dim // 2) * 2, -(-n_dim // width) * width
    padded = np.zeros((kp, np_), dtype=np.int16)
    padded[:k_dim, :n_dim] = w
    return np.ascontiguousarray(padded.reshape(kp // 2, 2, np_ // width, blocks, lanes).transpose(2, 0, 3, 4, 1))


def qbatch_matmul_pairs(a, b, *, a_zero_point: int, b_zero_point: int, multiplier: int, offset: int, shift: int,
                        zero_point: int, lo: int, hi: int, out_dtype: str, lanes: int):
    """a [B, M, K], b [B, K, N] (u8/s8) -> requantized [B, M, N], for the vpmaddwd micro-kernel.

    int16 holds an 8-bit value minus its zero point exactly, so both operands are widened with their
    zero points already subtracted: stage "widen" (a - za, [B, M, Kp]) and "pack_b" (b - zb packed
    [B, N/lanes, Kp/2, lanes, 2]). The accumulator is then the exact sum itself (|pair| <= 2 * 255^2):
    no row/column-sum stages, so the epilogue can run on each finished register tile.
    """
    batch, m_dim, k_dim = (int(v) for v in a.shape)
    n_dim = int(b.shape[2])
    kp, np_ = -(-k_dim // 2) * 2, -(-n_dim // lanes) * lanes

    def b_centered(p, k, j):
        inside = tirx.all(k < k_dim, j < n_dim)
        value = b[p, tirx.min(k, k_dim - 1), tirx.min(j, n_dim - 1)].astype("int16") - tirx.const(b_zero_point, "int16")
        return tirx.if_then_else(inside, value, tirx.const(0, "int16"))
    bp = te.compute((batch, np_ // lanes, kp // 2, lanes, 2),
                    lambda p, jo, ko, ji, ki: b_centered(p, ko * 2 + ki, jo * lanes + ji), name="pack_b")
    aw = te.compute((batch, m_dim, kp), lambda p, i, k: tirx.if_then_else(
        k < k_dim, a[p, i, tirx.min(k, k_dim - 1)].astype("int16") - tirx.const(a_zero_point, "int16"),
        tirx.const(0, "int16")), name="widen")
    k = te.reduce_axis((0, kp), "k")
    acc = te.compute((batch, m_dim, np_), lambda p, i, j: te.sum(
        aw[p, i, k].astype("int32") * bp[p, j // lanes, k // 2, j % lanes, k % 2].astype("int32"), axis=k),
        name="acc")
    return te.compute((batch, m_dim, n_dim), lambda p, i, j: requantize_value(
        acc[p, i, j], tirx.const(multiplier, "int32"), tirx.const(offset, "int64"), shift_constant(shift),
        zero_point, lo, hi, out_dtype), name="requant")


def qdense_packed_pairs(x, wp, multiplier, offset, shift, weight_zero_point=None, *, n_out: int, zero_point: int,
                        lo, hi, out_dtype: str, rows: int = 1, out_scale=None, out_bias=None,
                        m_pad: int | None = None):
    """x [M, K] (u8/s8), wp = pack_dense_weight_pairs(w, lanes, NR) -> [M, n_out], for CPUs without VNNI.

    Stage "widen" copies x into int16 packed per register tile, [M/rows, Kp/2, rows, 2] (``rows`` =
    the tile's MR, K rounded up to 2, zero padded), once per call: each k step of a tile then reads
    its MR broadcast pairs from one contiguous chunk, and ``vpmaddwd`` needs no conversion.
    "acc" accumulates over N rounded up to lanes x NR, and over ``m_pad`` (>= M) rows, zero below M,
    as in ``qdense_packed``. Epilogues as in ``qdense``.
    """
    m_dim, k_dim = (int(v) for v in x.shape)
    m_pad = m_pad or m_dim
    nbo, kq, blocks, lanes = (int(v) for v in wp.shape[:4])
    kp, width = kq * 2, blocks * lanes
    if m_pad % rows:
        raise ValueError(f"{rows} rows per tile do not divide M = {m_pad}")
    xw = te.compute((m_pad // rows, kq, rows, 2), lambda io, ko, ii, p: tirx.if_then_else(
        tirx.all(ko * 2 + p < k_dim, io * rows + ii < m_dim),
        x[tirx.min(io * rows + ii, m_dim - 1), tirx.min(ko * 2 + p, k_dim - 1)].astype("int16"),
        tirx.const(0, "int16")), name="widen")
    k = te.reduce_axis((0, kp), "k")
    acc = te.compute((m_pad, nbo * width), lambda i, j: te.sum(
        xw[i // rows, k // 2, i % rows, k % 2].astype("int32")
        * wp[j // width, k // 2, (j // lanes) % blocks, j % lanes, k % 2].astype("int32"), axis=k), name="acc")
    value = _weight_zero_point_terms(acc, x, k_dim, weight_zero_point)
    return epilogue((m_dim, n_out), value, lambda i, j: j, multiplier, offset, shift, zero_point=zero_point, lo=lo,
                    hi=hi, out_dtype=out_dtype, out_scale=out_scale, out_bias=out_bias)
