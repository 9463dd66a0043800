"""Bit-exactness of every integer kernel, through the whole QDQ -> integer -> scheduled path.

Each case builds a tiny Relax QDQ graph (integer inputs and outputs, so nothing float is compared),
compiles it with qcompiler's pipeline for the host CPU, and compares against the numpy integer
reference in int_reference.py: 0 differing elements allowed. Cases also assert that the op really
became an integer kernel (no fp32 island), so a silent fallback cannot pass.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import tvm
from tvm import relax

import int_reference as ref
import isa
from qcompiler.build import build
from qcompiler.signature import ModelSignature, TensorSpec

RNG = np.random.default_rng(2024)


def f32(v) -> float:
    return float(np.float32(v))


def _c(value, dtype):
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def dq(bb, x, scale, zp, axis=-1):
    scale = np.asarray(scale, np.float32)
    zp = np.asarray(zp, str(x.ty.dtype) if isinstance(x, relax.Var) else x.value.numpy().dtype)
    return bb.emit(relax.op.dequantize(x, relax.const(scale), relax.const(zp), axis=axis))


def q(bb, y, scale, zp, dtype):
    return bb.emit(relax.op.quantize(y, relax.const(np.float32(scale)), _c(zp, dtype), axis=-1, out_dtype=dtype))


def graph_module(inputs: dict[str, np.ndarray], body) -> tuple[tvm.IRModule, relax.Var]:
    """The Relax module main(inputs...) = body(bb, vars), and main's output var."""
    bb = relax.BlockBuilder()
    params = [relax.Var(n, relax.TensorType(v.shape, str(v.dtype))) for n, v in inputs.items()]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get(), out


def build_graph(inputs: dict[str, np.ndarray], body, target=None):
    """main(inputs...) = body(bb, vars), compiled with qcompiler for ``target`` (default the host)."""
    mod, out = graph_module(inputs, body)
    out_ty = out.ty
    sig = ModelSignature(tuple(TensorSpec(n, v.shape, str(v.dtype)) for n, v in inputs.items()),
                         (TensorSpec("y", tuple(int(d) for d in out_ty.shape.values), str(out_ty.dtype)),))
    return build(mod, sig, target)


def compile_graph(inputs: dict[str, np.ndarray], body, expect_kernel: str, target=None, ops_out: dict | None = None):
    """``build_graph``, run on ``inputs``: the result (the op summary goes into ``ops_out``)."""
    model = build_graph(inputs, body, target)
    if target is not None:
        isa.skip_unless_executable(target)  # built (so it compiles everywhere); run only where this CPU can
    ops = model.metadata["ops"]
    if ops_out is not None:
        ops_out.update(ops)
    assert ops["fp32"] == {}, f"fell back to float: {ops}"
    assert ops["int8"].get(expect_kernel, 0) >= 1, ops
    return model(**inputs)


def rand_q(shape, dtype):
    lo, hi = ref.RANGES[dtype]
    return RNG.integers(lo, hi + 1, shape).astype(dtype)


def assert_exact(ours, expected):
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    diff = int(np.count_nonzero(ours.astype(np.int64) != expected.astype(np.int64)))
    assert diff == 0, f"{diff} of {expected.size} elements differ (max |d| = " \
                      f"{np.abs(ours.astype(np.int64) - expected).max()})"


# ------------------------------------------------------------------------------------------- dense
DENSE_VARIANTS = [
    ("uint8", "int8", True, "uint8", None),
    ("int8", "int8", False, "int8", "relu"),
    ("uint8", "uint8", True, "int8", "clip"),  # uint8 weights: nonzero weight zero points
]
#: AVX-512BW without VNNI (vpmaddwd micro-kernel); this machine runs it, so it is checked here too.
SKYLAKE_X = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}


#: 13 and 197 (ViT's tokens) are primes >= 8: their rows are padded to a multiple of 4 for the register tile
@pytest.mark.parametrize("m,k,n", [(1, 64, 48), (7, 33, 100), (16, 128, 96), (4, 30, 17), (1, 768, 64), (13, 33, 100),
                                   (197, 64, 48)])
@pytest.mark.parametrize("x_dtype,w_dtype,per_channel,out_dtype,act", DENSE_VARIANTS)
def test_dense(m, k, n, x_dtype, w_dtype, per_channel, out_dtype, act, target=None):
    x = rand_q((m, k), x_dtype)
    w = rand_q((k, n), w_dtype)
    zx = int(RNG.integers(-20, 20)) + (128 if x_dtype == "uint8" else 0)
    sx = f32(0.02)
    sw = (RNG.uniform(0.002, 0.01, n) if per_channel else np.full(n, 0.005)).astype(np.float32)
    zw = (RNG.integers(100, 156, n) if w_dtype == "uint8" else np.zeros(n, np.int64))
    if not per_channel:
        zw = np.full(n, zw[0])
    bias = RNG.integers(-3000, 3000, n)
    so, zo = f32(0.9 * np.sqrt(k) / 8), (3 if out_dtype == "int8" else 120)
    clip_lo, clip_hi = -0.5, 6.0

    def body(bb, xv):
        wd = dq(bb, relax.const(w), sw if per_channel else sw[:1], zw if per_channel else zw[:1], axis=1)
        y = bb.emit(relax.op.matmul(dq(bb, xv, sx, zx), wd))
        bd = dq(bb, relax.const(bias.astype(np.int32)), (np.float32(sx) * sw).astype(np.float32), np.zeros(n, np.int32), 0)
        y = bb.emit(relax.op.add(y, bd))
        if act == "relu":
            y = bb.emit(relax.op.nn.relu(y))
        elif act == "clip":
            y = bb.emit(relax.op.clip(y, clip_lo, clip_hi))
        return q(bb, y, so, zo, out_dtype)

    ours = compile_graph({"x": x}, body, "dense", target)
    real = np.float64(sx) * sw.astype(np.float64) / np.float64(so)
    lo = hi = None
    if act == "relu":
        lo = zo
    elif act == "clip":
        lo, hi = zo + int(np.round(clip_lo / so)), zo + int(np.round(clip_hi / so))
    assert_exact(ours, ref.qdense(x, zx, w, zw, bias, real, zo, out_dtype, lo, hi))


@pytest.mark.parametrize("m,k,n", [(7, 33, 100), (16, 128, 96), (1, 768, 64), (13, 33, 100)])
@pytest.mark.parametrize("x_dtype,w_dtype,per_channel,out_dtype,act", DENSE_VARIANTS)
def test_dense_vpmaddwd(m, k, n, x_dtype, w_dtype, per_channel, out_dtype, act):
    test_dense(m, k, n, x_dtype, w_dtype, per_channel, out_dtype, act, target=SKYLAKE_X)


def _classic_fixed_point(real: float) -> tuple[int, int]:
    """The textbook (M0, s) with M0 = round(real * 2^s) in [2^30, 2^31): the near-half-integer cases
    below are where (acc*M0 + 2^(s-1)) >> s is one step off the exact rounding."""
    mantissa, exponent = math.frexp(real)
    m0 = round(mantissa * 2 ** 31)
    if m0 == 2 ** 31:
        m0, exponent = m0 // 2, exponent + 1
    return m0, 31 - exponent


def _near_half_integer_channels(channels: int, sx: float, so: float) -> tuple[np.ndarray, np.ndarray]:
    """Per channel a float32 weight scale and an accumulator value (used as the bias) at which the
    classic rounding ((acc*M0 + 2^(s-1)) >> s) differs from floor(acc * r + 1/2), r = sx*sw/so:
    acc * r lies between a half-integer and acc * M0/2^s. Candidates are the accumulators nearest to
    each half-integer level; a float filter keeps the close ones, Fraction decides exactly."""
    rng = np.random.default_rng(8)
    scales, accs = [], []
    levels = np.arange(-120, 120) + 0.5
    while len(scales) < channels:
        sw = np.float32(rng.uniform(0.004, 0.012))
        real = np.float64(sx) * np.float64(sw) / np.float64(so)
        m0, s = _classic_fixed_point(real)
        acc = np.round(levels / real).astype(np.int64)
        close = np.abs(acc * real - levels) < 4 * np.abs(acc) * abs(real - m0 / 2 ** s)
        for a in acc[close].tolist():
            exact = math.floor(a * Fraction(real) + Fraction(1, 2))
            if (a * m0 + (1 << (s - 1))) >> s != exact:
                scales.append(sw)
                accs.append(a)
                break
    return np.array(scales, np.float32), np.array(accs, np.int64)


@pytest.mark.parametrize("kind", ["dense", "conv2d"])
def test_near_half_integer_accumulators(kind):
    """Accumulators whose exact rescaled value sits within ~2^-24 of a half-integer (where an M0/2^s
    approximation of the scale rounds to the other side) come out exactly rounded. One input value
    equals the zero point, so that accumulator is the bias, chosen per channel as such a case; the
    others are random (K=1: acc = (x - zx) * w + bias)."""
    n, m, zx = 12, 9, 128
    sx, so = f32(2.0 ** -6), f32(0.75)  # sx a power of two: the bias scale sx*sw is exact in float32
    sw, bias = _near_half_integer_channels(n, sx, so)
    real = np.float64(sx) * sw.astype(np.float64) / np.float64(so)
    classic = [_classic_fixed_point(r) for r in real]
    assert all((int(b) * m0 + (1 << (s - 1))) >> s != math.floor(int(b) * Fraction(float(r)) + Fraction(1, 2))
               for b, r, (m0, s) in zip(bias, real, classic))  # every channel has such a case
    rng = np.random.default_rng(9)  # not the shared RNG: the other tests' inputs stay as they were
    x = rng.integers(0, 256, (m, 1)).astype(np.uint8)
    x[0] = zx
    w = rng.integers(-127, 128, (1, n)).astype(np.int8)

    def body(bb, xv):
        bd = dq(bb, relax.const(bias.astype(np.int32)), (np.float32(sx) * sw).astype(np.float32),
                np.zeros(n, np.int32), 0)
        if kind == "dense":
            y = bb.emit(relax.op.matmul(dq(bb, xv, sx, zx), dq(bb, relax.const(w), sw, np.zeros(n, np.int8), axis=1)))
            y = bb.emit(relax.op.add(y, bd))
        else:
            x4 = bb.emit(relax.op.reshape(dq(bb, xv, sx, zx), (1, 1, m, 1)))
            wd = dq(bb, relax.const(w.T.reshape(n, 1, 1, 1)), sw, np.zeros(n, np.int8), axis=0)
            y = bb.emit(relax.op.add(bb.emit(relax.op.nn.conv2d(x4, wd)), bb.emit(relax.op.reshape(bd, (1, n, 1, 1)))))
        return q(bb, y, so, 0, "int8")

    ours = compile_graph({"x": x}, body, kind)
    expected = ref.qdense(x, zx, w, np.zeros(n, np.int64), bias, real, 0, "int8")
    if kind == "conv2d":
        expected = expected.T.reshape(1, n, m, 1)
    assert_exact(ours, expected)


#: Real multipliers per channel: all below 1/2 (every shift >= 32: AVX2 builds apply them as the high
#: word of the int64 sum, then an int32 shift), and with some >= 1/2 (shifts < 32: the int64 form),
#: up to 4000, where results reach ~8e9 and must saturate instead of wrapping through int32.
SHIFT_FORM_REALS = {"high_word": [2.0 ** -30, 1e-6, 3e-4, 0.01, 0.3, 0.49],
                    "int64": [4000.0, 0.7, 3.0, 1e-3, 0.2, 40.0]}


def _shift_form_case(reals: str):
    """(inputs, graph body, expected) of a dense kernel with ``SHIFT_FORM_REALS[reals]`` per channel."""
    rng = np.random.default_rng(31)
    k = 128
    real = np.array(SHIFT_FORM_REALS[reals])
    n = len(real)
    sx, so, zx = f32(2.0 ** -7), f32(1.0), 128
    sw = (real * so / sx).astype(np.float32)
    x = np.concatenate([np.full((2, k), 255), np.zeros((2, k)), rng.integers(0, 256, (4, k))]).astype(np.uint8)
    w = np.where(rng.random((k, n)) < 0.5, -128, 127).astype(np.int8)
    w[:, 0] = 127  # one column all positive: the all-255 rows reach the accumulator's maximum
    bias = rng.integers(-100000, 100000, n)

    def body(bb, xv):
        y = bb.emit(relax.op.matmul(dq(bb, xv, sx, zx), dq(bb, relax.const(w), sw, np.zeros(n, np.int8), axis=1)))
        bd = dq(bb, relax.const(bias.astype(np.int32)), (np.float32(sx) * sw).astype(np.float32), np.zeros(n, np.int32), 0)
        return q(bb, bb.emit(relax.op.add(y, bd)), so, 3, "int8")

    exact_real = np.float64(sx) * sw.astype(np.float64) / np.float64(so)
    return {"x": x}, body, ref.qdense(x, zx, w, np.zeros(n, np.int64), bias, exact_real, 3, "int8")


@pytest.mark.parametrize("target", [None, isa.AVX2], ids=["host", "avx2"])
@pytest.mark.parametrize("reals", sorted(SHIFT_FORM_REALS))
def test_requantize_shift_forms_at_extreme_accumulators(reals, target):
    """Both requantize forms (high word + int32 shift, int64 shift) round exactly and saturate at
    accumulators of either sign near their extremes (rows of 255 and 0 against +-127/-128 weights);
    results of ~8e9 saturate (the int64 form once narrowed to int32 before clamping and wrapped)."""
    inputs, body, expected = _shift_form_case(reals)
    ours = compile_graph(inputs, body, "dense", target)
    assert 0 < np.count_nonzero(np.abs(expected.astype(int)) < 127)  # not all saturated
    assert_exact(ours, expected)


def test_avx2_requantize_shifts_the_high_word():
    """On AVX2 (no 64-bit arithmetic shift) the shifts >= 32 become a 32-bit vpsravd on the high word:
    no emulated 64-bit shift (vpsrlvq) is left; with a shift < 32 the int64 form (vpsrlvq) is kept.
    Code only: builds for haswell on any host."""
    high = isa.asm_of(build_graph(*_shift_form_case("high_word")[:2], isa.AVX2))
    wide = isa.asm_of(build_graph(*_shift_form_case("int64")[:2], isa.AVX2))
    vector = "[xy]mm"  # 6 channels: xmm and ymm vectors
    assert isa.count(high, "vpsravd", vector) > 0 and isa.count(high, "vpsrlvq", vector) == 0
    assert isa.count(wide, "vpsrlvq", vector) > 0


# ------------------------------------------------------------------------------------------- conv2d
CONV_CASES = {  # name: (C, H, W, O, R, S, strides, padding (t, l, b, r), dilation, groups)
    "3x3_pad1": (8, 10, 12, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3_stride2": (6, 11, 9, 10, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "1x1": (16, 7, 7, 24, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "5x3_asym_pad": (4, 9, 8, 8, 5, 3, (1, 2), (2, 1, 0, 1), (1, 1), 1),
    "dilated": (4, 12, 12, 8, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "grouped": (8, 8, 8, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 4),
    "depthwise": (16, 14, 14, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 16),
    "depthwise_s2": (12, 9, 9, 12, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 12),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("x_dtype,w_dtype,out_dtype", [("uint8", "int8", "uint8"), ("int8", "uint8", "int8")])
def test_conv2d(case, x_dtype, w_dtype, out_dtype, target=None, cases=CONV_CASES, asm_check=None):
    c, h, wd, o, r, s, strides, padding, dilation, groups = cases[case]
    x = rand_q((1, c, h, wd), x_dtype)
    w = rand_q((o, c // groups, r, s), w_dtype)
    zx = int(RNG.integers(-30, 30)) + (128 if x_dtype == "uint8" else 0)
    sx, so = f32(0.03), f32(0.4 * np.sqrt(c // groups * r * s))
    sw = RNG.uniform(0.002, 0.01, o).astype(np.float32)
    zw = RNG.integers(110, 146, o) if w_dtype == "uint8" else np.zeros(o, np.int64)
    bias = RNG.integers(-5000, 5000, o)
    zo = 5 if out_dtype == "int8" else 100

    def body(bb, xv):
        wdq = dq(bb, relax.const(w), sw, zw, axis=0)
        y = bb.emit(relax.op.nn.conv2d(dq(bb, xv, sx, zx), wdq, strides=strides, padding=padding, dilation=dilation,
                                       groups=groups))
        bd = dq(bb, relax.const(bias.astype(np.int32)), (np.float32(sx) * sw).astype(np.float32), np.zeros(o, np.int32), 0)
        y = bb.emit(relax.op.add(y, bb.emit(relax.op.reshape(bd, (1, o, 1, 1)))))
        y = bb.emit(relax.op.nn.relu(y))
        return q(bb, y, so, zo, out_dtype)

    if asm_check is not None:
        asm_check(isa.asm_of(build_graph({"x": x}, body, target)))
    ours = compile_graph({"x": x}, body, "conv2d", target)
    real = np.float64(sx) * sw.astype(np.float64) / np.float64(so)
    expected = ref.qconv2d(x, zx, w, zw, bias, real, zo, out_dtype, strides, padding, dilation, groups, lo=zo)
    assert_exact(ours, expected)


GROUPED_CASES = {  # grouped convs whose groups hold whole 16- (or 8-) channel output blocks
    "g2_16ch": (32, 9, 9, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "g4_16ch_s2": (64, 10, 10, 64, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 4),
    "g4_8ch": (32, 8, 8, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 4),
}
#: CPU class -> (its micro-kernel's instruction, register, output channels per vector)
CLASS_DOT = {"x86-avx2": ("vpmaddwd", "ymm", 8), "x86-avx512": ("vpmaddwd", "zmm", 16),
             "x86-avx512-vnni": ("vpdpbusd", "zmm", 16), "x86-avxvnni": ("vpdpbusd", "ymm", 16)}


@pytest.mark.parametrize("case", sorted(GROUPED_CASES))
@pytest.mark.parametrize("cpu_class", sorted(CLASS_DOT))
@pytest.mark.parametrize("x_dtype,out_dtype", [("uint8", "uint8"), ("int8", "int8")])
def test_grouped_conv2d_on_the_micro_kernels(case, cpu_class, x_dtype, out_dtype):
    """Grouped convs (RegNet, ResNeXt) run on each class's micro-kernel when every group has whole
    vectors of output channels (the plain template ran 64-channel 4-group 3x3 convs 8-18x slower):
    the code holds the class's dot instruction, the results are exact; a group narrower than the
    vector stays on the plain template, exact too. Built and checked on every host, run where it can."""
    from qcompiler.target import resolve_target
    instruction, register, lanes = CLASS_DOT[cpu_class]
    micro = (GROUPED_CASES[case][3] // GROUPED_CASES[case][9]) % lanes == 0

    def check(asm: str) -> None:
        assert (isa.count(asm, instruction, register) > 0) == micro, (instruction, register, micro)
    test_conv2d(case, x_dtype, "int8", out_dtype, target=resolve_target(cpu_class), cases=GROUPED_CASES,
                asm_check=check)


# ------------------------------------------------------------------------------------------- batch matmul
@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 8, 16), (2, 3, 16, 12)), ((12, 16, 64), (12, 64, 16)),
                                             ((1, 5, 7), (1, 7, 9))])
@pytest.mark.parametrize("a_dtype,b_dtype", [("uint8", "int8"), ("int8", "uint8")])
def test_batch_matmul(a_shape, b_shape, a_dtype, b_dtype):
    a, b = rand_q(a_shape, a_dtype), rand_q(b_shape, b_dtype)
    za = 131 if a_dtype == "uint8" else 3
    zb = -7 if b_dtype == "int8" else 140
    sa, sb, so, zo = f32(0.05), f32(0.04), f32(0.6), 110

    def body(bb, av, bv):
        return q(bb, bb.emit(relax.op.matmul(dq(bb, av, sa, za), dq(bb, bv, sb, zb))), so, zo, "uint8")

    ours = compile_graph({"a": a, "b": b}, body, "batch_matmul")
    acc = np.matmul(a.astype(np.int64) - za, b.astype(np.int64) - zb)
    real = np.float64(sa) * np.float64(sb) / np.float64(so)
    assert_exact(ours, ref.saturate(ref.round_half_up(acc, real), zo, "uint8"))


# ------------------------------------------------------------------------------------------- elementwise
@pytest.mark.parametrize("op", ["add", "subtract"])
@pytest.mark.parametrize("a_shape,b_shape", [((1, 8, 5, 5), (1, 8, 5, 5)), ((2, 16, 32), (32,)), ((4, 1, 6), (1, 3, 1))])
def test_add(op, a_shape, b_shape):
    a, b = rand_q(a_shape, "uint8"), rand_q(b_shape, "int8")
    za, zb, sa, sb, so, zo = 120, 3, f32(0.031), f32(0.017), f32(0.05), 77

    def body(bb, av, bv):
        y = bb.emit(getattr(relax.op, op)(dq(bb, av, sa, za), dq(bb, bv, sb, zb)))
        return q(bb, bb.emit(relax.op.nn.relu(y)), so, zo, "uint8")

    ours = compile_graph({"a": a, "b": b}, body, "add")
    sign = 1.0 if op == "add" else -1.0
    real_a = np.float64(sa) / np.float64(so)
    real_b = sign * np.float64(sb) / np.float64(so)
    assert_exact(ours, ref.qadd(a, za, real_a, b, zb, real_b, zo, "uint8", lo=zo))


def test_mul():
    a, b = rand_q((3, 40), "int8"), rand_q((3, 40), "uint8")
    za, zb, sa, sb, so, zo = -4, 128, f32(0.05), f32(0.02), f32(0.08), 0

    def body(bb, av, bv):
        return q(bb, bb.emit(relax.op.multiply(dq(bb, av, sa, za), dq(bb, bv, sb, zb))), so, zo, "int8")

    ours = compile_graph({"a": a, "b": b}, body, "mul")
    assert_exact(ours, ref.qmul(a, za, b, zb, np.float64(sa) * np.float64(sb) / np.float64(so), zo, "int8"))


@pytest.mark.parametrize("in_dtype,out_dtype", [("uint8", "uint8"), ("int8", "uint8"), ("uint8", "int8")])
def test_requantize(in_dtype, out_dtype):
    x = rand_q((5, 33), in_dtype)
    zx, sx, so, zo = (140 if in_dtype == "uint8" else 12), f32(0.07), f32(0.031), (-10 if out_dtype == "int8" else 90)

    def body(bb, xv):
        return q(bb, dq(bb, xv, sx, zx), so, zo, out_dtype)

    ours = compile_graph({"x": x}, body, "requantize")
    assert_exact(ours, ref.requantize(x, zx, np.float64(sx) / np.float64(so), zo, out_dtype))


# ------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("kind", ["global", "global_1x1", "avg2x2", "avg3x3_pad"])
def test_avg_pool(kind):
    """``global_1x1``: the squeeze of a squeeze-excitation block on a 1x1 map (EfficientNet's last blocks at
    small sizes): its reduction loops have extent 1; a schedule once folded the requantize into them."""
    x = rand_q((1, 12, 1, 1) if kind == "global_1x1" else (1, 12, 8, 8), "uint8")
    zx, sx, so, zo = 133, f32(0.05), f32(0.03), 125

    def body(bb, xv):
        d = dq(bb, xv, sx, zx)
        if kind.startswith("global"):
            y = bb.emit(relax.op.nn.adaptive_avg_pool2d(d, output_size=(1, 1)))
        elif kind == "avg2x2":
            y = bb.emit(relax.op.nn.avg_pool2d(d, pool_size=(2, 2), strides=(2, 2)))
        else:
            y = bb.emit(relax.op.nn.avg_pool2d(d, pool_size=(3, 3), strides=(1, 1), padding=(1, 1, 1, 1),
                                               count_include_pad=True))
        return q(bb, y, so, zo, "uint8")

    ours = compile_graph({"x": x}, body, "avg_pool2d")
    xc = x.astype(np.int64) - zx
    if kind.startswith("global"):
        acc, count = xc.sum(axis=(2, 3), keepdims=True), x.shape[2] * x.shape[3]
    elif kind == "avg2x2":
        acc, count = xc.reshape(1, 12, 4, 2, 4, 2).sum(axis=(3, 5)), 4
    else:
        p = np.pad(xc, ((0, 0), (0, 0), (1, 1), (1, 1)))
        acc, count = sum(p[:, :, i:i + 8, j:j + 8] for i in range(3) for j in range(3)), 9
    assert_exact(ours, ref.avg_pool(acc, count, np.float64(sx) / np.float64(so), zo, "uint8"))


def test_layout_ops_and_max_pool_stay_integer():
    """max-pool, reshape and transpose run on the integer tensor (same scale): identical values."""
    x = rand_q((1, 4, 6, 6), "uint8")
    zx, sx = 128, f32(0.1)

    def body(bb, xv):
        d = dq(bb, xv, sx, zx)
        y = bb.emit(relax.op.nn.max_pool2d(d, pool_size=(2, 2), strides=(2, 2)))
        y = bb.emit(relax.op.permute_dims(bb.emit(relax.op.reshape(y, (1, 4, 9))), [0, 2, 1]))
        return q(bb, y, sx, zx, "uint8")

    ours = compile_graph({"x": x}, body, "max_pool2d")
    expected = x.reshape(1, 4, 3, 2, 3, 2).max(axis=(3, 5)).reshape(1, 4, 9).transpose(0, 2, 1)
    assert_exact(ours, expected)


# ------------------------------------------------------------------------------------------- float epilogue
@pytest.mark.parametrize("kind", ["dense", "conv2d"])
def test_integer_kernel_with_float_output(kind):
    """A quantized dot product whose result stays float (e.g. a final Linear): int8 kernel, fp32 epilogue."""
    x = rand_q((3, 40) if kind == "dense" else (1, 6, 7, 7), "uint8")
    zx, sx = 121, f32(0.02)
    n = 24
    w = rand_q((40, n) if kind == "dense" else (n, 6, 3, 3), "int8")
    sw = RNG.uniform(0.002, 0.01, n).astype(np.float32)
    bias = RNG.standard_normal(n).astype(np.float32)

    def body(bb, xv):
        wd = dq(bb, relax.const(w), sw, np.zeros(n, np.int8), axis=1 if kind == "dense" else 0)
        if kind == "dense":
            y = bb.emit(relax.op.matmul(dq(bb, xv, sx, zx), wd))
            return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, relax.const(bias)))))
        y = bb.emit(relax.op.nn.conv2d(dq(bb, xv, sx, zx), wd, padding=(1, 1, 1, 1)))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, relax.const(bias.reshape(1, n, 1, 1))))))

    ours = compile_graph({"x": x}, body, kind)
    scale = (np.float64(sx) * sw.astype(np.float64)).astype(np.float32)
    if kind == "dense":
        acc = (x.astype(np.int64) - zx) @ w.astype(np.int64)
        expected = acc.astype(np.float32) * scale + bias
    else:
        acc = ref.conv2d_acc(x, zx, w, np.zeros(n), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        expected = acc.astype(np.float32) * scale.reshape(1, n, 1, 1) + bias.reshape(1, n, 1, 1)
    expected = np.maximum(expected, 0).astype(np.float32)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)  # fp32 rounding (FMA contraction) only


# ------------------------------------------------------------------------------------------- concat
@pytest.mark.parametrize("same_params", [True, False])
def test_concat(same_params):
    """Concat of activations: pass-through with equal quantization, else each input requantized."""
    a, b = rand_q((1, 3, 4, 4), "uint8"), rand_q((1, 5, 4, 4), "uint8")
    za, sa = 128, f32(0.05)
    zb, sb = (za, sa) if same_params else (90, f32(0.02))

    def body(bb, av, bv):
        y = bb.emit(relax.op.concat([dq(bb, av, sa, za), dq(bb, bv, sb, zb)], axis=1))
        return q(bb, y, sa, za, "uint8")

    ours = compile_graph({"a": a, "b": b}, body, "concat" if same_params else "requantize")
    b_expected = b if same_params else ref.requantize(b, zb, np.float64(sb) / np.float64(sa), za, "uint8")
    assert_exact(ours, np.concatenate([a, b_expected], axis=1))


def test_channels_last_region_conv_pool_concat_add():
    """With the packed micro-kernels (VNNI, or vpmaddwd on AVX2/AVX-512) conv chains run NHWC: conv -> max-pool -> concat with a second conv -> residual
    add -> global average pool keeps every intermediate channels-last (transposes only at the region's
    edges), and stays bit-exact against the same graph compiled with the plain NCHW templates."""
    x = rand_q((1, 8, 12, 12), "uint8")
    w1, w2 = rand_q((16, 8, 3, 3), "int8"), rand_q((16, 16, 1, 1), "int8")
    sw = np.full(16, 0.004, np.float32)
    sx, zx, s1, z1 = f32(0.03), 128, f32(0.2), 10

    def body(bb, xv):
        def conv(inp, w, pad):
            wd = dq(bb, relax.const(w), sw, np.zeros(16, np.int8), axis=0)
            y = bb.emit(relax.op.nn.relu(bb.emit(relax.op.nn.conv2d(inp, wd, padding=pad))))
            return dq(bb, q(bb, y, s1, z1, "uint8"), s1, z1)
        a = conv(dq(bb, xv, sx, zx), w1, 1)
        pooled = dq(bb, q(bb, bb.emit(relax.op.nn.max_pool2d(a, pool_size=(2, 2), strides=(2, 2))), s1, z1, "uint8"),
                    s1, z1)
        b = conv(pooled, w2, 0)
        cat = bb.emit(relax.op.concat([pooled, b], axis=1))
        added = bb.emit(relax.op.add(cat, cat))
        summed = dq(bb, q(bb, added, s1, z1, "uint8"), s1, z1)
        return q(bb, bb.emit(relax.op.nn.adaptive_avg_pool2d(summed, output_size=(1, 1))), s1, z1, "uint8")

    ops = {}
    ours = compile_graph({"x": x}, body, "conv2d", ops_out=ops)
    # the graph input enters NHWC once; the global pool's NHWC result leaves once
    assert ops["int8"].get("permute_dims") == 2 and ops["int8"]["max_pool2d"] == 1, ops
    # x86-64-v2 (no AVX2) gets the plain NCHW templates; AVX2's vpmaddwd kernels run NHWC like VNNI's
    plain = compile_graph({"x": x}, body, "conv2d", target={"kind": "llvm", "mcpu": "x86-64-v2", "num-cores": 2})
    assert_exact(ours, plain)
    assert_exact(compile_graph({"x": x}, body, "conv2d", target=isa.AVX2), plain)
