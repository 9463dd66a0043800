"""Every x86 CPU class: the host target from LLVM's host-feature query, the named classes users type,
refusal of code this CPU cannot run (in every way of running it), and the int8 kernels of each class
exact on worst-case operands.

Kernels are built for each class on every host and their code is checked everywhere; they are
executed only where this CPU has the class's features (AVX2 code runs on every supported host).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import isa
import qcompiler
import schedules
from qcompiler.examples import example_path
from qcompiler.target import (PRESETS, X86_ISA_FEATURES, cpu_class, host_features, host_target, required_features,
                              resolve_target)

#: LLVM feature name -> the flag Linux prints in /proc/cpuinfo: an independent view of the same CPU.
CPUINFO_FLAG = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
                "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni"}


def _cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())


def test_host_target_carries_the_host_features():
    """The host target sets every ISA feature on or off as the CPU reports it (LLVM's CPUID/XSAVE
    query), and that agrees with what the OS prints in /proc/cpuinfo."""
    target = host_target()
    mattr = [str(f) for f in target.attrs["mattr"]]
    assert {f[1:] for f in mattr} == set(X86_ISA_FEATURES)
    on = {f[1:] for f in mattr if f.startswith("+")}
    assert on == set(X86_ISA_FEATURES) & host_features()
    assert set(required_features(target)) == on
    flags = _cpuinfo_flags()
    for feature, flag in CPUINFO_FLAG.items():
        assert (feature in host_features()) == (flag in flags), feature


def _znver4_with(features_on: set) -> dict:
    """A znver4 target (a CPU name that implies AVX-512) with exactly `features_on` of the ISA features."""
    mattr = [("+" if f in features_on else "-") + f for f in X86_ISA_FEATURES]
    return resolve_target({"kind": "llvm", "mcpu": "znver4", "mattr": mattr, "num-cores": 2})


def test_masked_avx512_gets_avx2_code():
    """A VM that hides AVX-512 on an AVX-512 CPU still reports the CPU's name: the features decide.
    A znver4 target with this host's features but AVX-512 and AVX-VNNI off (so it runs on every AVX2
    host) gets the AVX2 kernels (ymm vpmaddwd, no zmm at all), with the host build's answers."""
    target = _znver4_with({f for f in host_features() if not f.startswith(("avx512", "avxvnni"))})
    assert not any(f.startswith(("avx512", "avxvnni")) for f in required_features(target))
    assert schedules.weight_layout(target) == "pairs8x2"
    assert cpu_class(target).name == "x86-avx2"
    model = qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), target=target)
    asm = isa.asm_of(model)
    assert "%zmm" not in asm and isa.count(asm, "vpmaddwd", "ymm") > 0
    images = np.load(example_path("digits_test.npz"))["images"][:16]
    host = qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")))
    for image in images:
        x = image.reshape(host.signature.inputs[0].shape).astype(np.float32)
        np.testing.assert_array_equal(model(x), host(x))


def test_masked_avx512_keeps_avxvnni():
    """Zen 5 and Intel's client CPUs have AVX-VNNI (ymm vpdpbusd) beside AVX-512: with AVX-512 masked,
    the AVX-VNNI kernels are chosen, on ymm only. Built and checked on every host."""
    target = _znver4_with({f for f in host_features() if not f.startswith("avx512")} | {"avxvnni"})
    assert cpu_class(target).name == "x86-avxvnni"
    assert schedules.weight_layout(target) == "packed16x4"
    asm = isa.asm_of(qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), target=target))
    assert "%zmm" not in asm and isa.count(asm, "vpdpbusd", "ymm") > 0


@pytest.mark.parametrize("name,layout", [("x86-avx512-vnni", "packed16x4"), ("x86-avxvnni", "packed16x4"),
                                         ("x86-avx512", "pairs16x2"), ("x86-avx2", "pairs8x2")])
def test_cpu_class_presets(name, layout):
    target = resolve_target(name)
    assert cpu_class(target) is PRESETS[name]
    assert schedules.weight_layout(target) == layout
    if name == "x86-avx2":
        assert not any(f.startswith("avx512") for f in required_features(target))


def test_unknown_target_name_is_a_clear_error():
    with pytest.raises(qcompiler.QCompilerError, match="not a CPU class .*x86-avx2.* an LLVM x86 CPU name"):
        resolve_target("avx9000")


def _foreign_target() -> str:
    """A CPU class or CPU whose features this machine lacks (every x86 CPU lacks one of these)."""
    return next(t for t in ("x86-avxvnni", "x86-avx512", "x86-avx512-vnni", "znver5", "sapphirerapids")
                if isa.missing(t))


def test_code_this_cpu_cannot_run_is_refused_by_every_way_of_running_it(tmp_path):
    """Compiling for another CPU works (and exports); running it here, in-process, by benchmark, by
    roofline timing or after loading, is a QCompilerError naming the missing features, never a SIGILL."""
    foreign = _foreign_target()
    lacking = isa.missing(foreign)
    out = tmp_path / "foreign.so"
    model = qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), out, target=foreign)
    x = np.zeros(model.signature.inputs[0].shape, np.float32)
    pattern = rf"needs CPU features {', '.join(lacking)} that this machine lacks"
    with pytest.raises(qcompiler.QCompilerError, match=pattern):
        model(x)
    with pytest.raises(qcompiler.QCompilerError, match=pattern):
        model.benchmark(x)
    with pytest.raises(qcompiler.QCompilerError, match=pattern):
        qcompiler.roofline(model)
    with pytest.raises(qcompiler.QCompilerError, match=pattern):
        qcompiler.load(out)


# ------------------------------------------------------------------------ worst-case operands
CLASS_TARGETS = {"avx2": isa.AVX2, "avx512": isa.AVX512, "avx512-vnni": isa.AVX512_VNNI}
#: the instruction (and register) each class's int8 kernels must multiply with
CLASS_DOT = {"avx2": ("vpmaddwd", "ymm"), "avx512": ("vpmaddwd", "zmm"), "avx512-vnni": ("vpdpbusd", "zmm")}


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _worst_case(shape_x, w_shape, rng) -> tuple[np.ndarray, np.ndarray]:
    """Activations at 255 (some 0/254) and weights at -128/127: every adjacent pair a0*w0 + a1*w1 of
    the all-255 rows is +-65,025 or -65,280, far outside int16 (where vpmaddubsw saturates)."""
    x = np.full(shape_x, 255, np.uint8)
    x.reshape(-1)[rng.integers(0, x.size, x.size // 8)] = rng.choice([0, 254], x.size // 8)
    w = np.where(rng.random(w_shape) < 0.5, -128, 127).astype(np.int8)
    return x, w


def _check_class_code(model, cls: str) -> None:
    asm = isa.asm_of(model)
    mnemonic, register = CLASS_DOT[cls]
    assert isa.count(asm, mnemonic, register) > 0, f"no {mnemonic} {register} in the {cls} build"
    assert "pmaddubsw" not in asm  # the saturating int16 pair sums are never used
    if cls == "avx2":
        assert "%zmm" not in asm


@pytest.mark.parametrize("cls", CLASS_TARGETS)
@pytest.mark.parametrize("m,k,n", [(4, 64, 48), (7, 33, 100), (64, 256, 96), (197, 64, 48)])
def test_dense_exact_on_worst_case_operands(cls, m, k, n):
    rng = np.random.default_rng(m * k + n)
    x, w = _worst_case((m, k), (k, n), rng)
    proto = _model([helper.make_node("MatMulInteger", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], {"w": w})
    model = qcompiler.compile(proto, target=CLASS_TARGETS[cls])
    assert model.metadata["ops"]["int8"] == {"dense": 1}
    _check_class_code(model, cls)
    isa.skip_unless_executable(CLASS_TARGETS[cls])
    np.testing.assert_array_equal(model(x=x), x.astype(np.int64) @ w.astype(np.int64))


def _templates_taking(proto: onnx.ModelProto, target, key: tuple[str, str]) -> int:
    """How many kernels of kind/layout ``key`` the model lowers to for ``target`` that qcompiler's
    packed-kernel templates schedule (a kernel they decline falls to the generic fallback)."""
    from qcompiler.api import import_model
    from qcompiler.build import fuse_module, lower_to_integer
    from schedules.cpu_common import kernel_key
    target = resolve_target(target)
    mod, _, _ = import_model(proto)
    fused = fuse_module(lower_to_integer(mod, target), target)
    funcs = [f for f in fused.functions.values() if kernel_key(f) == key]
    with target:
        return sum(schedules.X86VNNIKernels().apply(f, target, False) is not None for f in funcs)


def _conv_reference(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """int64 NCHW convolution by explicit windows (zero padding)."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = xp.shape
    o, cg, r, s = w.shape
    oh, ow = (h - r) // stride + 1, (wd - s) // stride + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                window = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + r, j * stride:j * stride + s]
                out[:, oc, i, j] = (window * w[oc].astype(np.int64)).sum(axis=(1, 2, 3))
    return out


CONVS = {  # name: (C, H, K, R, stride, pad, groups)
    "3x3": (16, 9, 32, 3, 1, 1, 1), "1x1": (24, 7, 40, 1, 1, 0, 1), "3x3-stride2": (8, 11, 16, 3, 2, 1, 1),
    "odd-channels": (3, 10, 20, 3, 2, 1, 1), "depthwise": (32, 8, 32, 3, 1, 1, 32), "grouped": (16, 6, 16, 3, 1, 1, 4),
}


@pytest.mark.parametrize("cls", CLASS_TARGETS)
@pytest.mark.parametrize("conv", CONVS)
def test_conv_exact_on_worst_case_operands(cls, conv):
    c, h, k, r, stride, pad, groups = CONVS[conv]
    rng = np.random.default_rng(sum(CONVS[conv]))
    x, w = _worst_case((1, c, h, h), (k, c // groups, r, r), rng)
    oh = (h + 2 * pad - r) // stride + 1
    proto = _model([helper.make_node("ConvInteger", ["x", "w"], ["y"], strides=[stride, stride],
                                     pads=[pad] * 4, group=groups)],
                   [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, h, h])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, [1, k, oh, oh])], {"w": w})
    model = qcompiler.compile(proto, target=CLASS_TARGETS[cls])
    ops = model.metadata["ops"]
    assert ops["int8"]["conv2d"] == 1 and ops["fp32"] == {}, ops  # (+ NCHW <-> NHWC edges when channels-last)
    if groups == 1:  # grouped and depthwise convs have no dot-product micro-kernel
        _check_class_code(model, cls)
    if groups == c:  # depthwise: the NHWC template of every class takes it (not the generic fallback)
        assert _templates_taking(proto, CLASS_TARGETS[cls], ("conv2d", "depthwise_nhwc")) == 1
    isa.skip_unless_executable(CLASS_TARGETS[cls])
    np.testing.assert_array_equal(model(x=x), _conv_reference(x, w, stride, pad, groups))


# ------------------------------------------------------------------------ one model, one answer
@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_one_model_one_answer_on_every_cpu_class(name, zoo_dir):
    """The same QDQ model built for the host, for AVX2 (haswell), for AVX-512 without VNNI
    (skylake-avx512) and with VNNI (cascadelake) gives bit-identical outputs on every class this CPU
    can run, and they match onnx's exact ReferenceEvaluator (>= 99.9% identical, none > 1 step off)."""
    import exact_reference as er
    import model_zoo as mz
    zm = mz.build(name, zoo_dir, **mz.standard_variants(name)[0])
    builds = {"host": None, "avx2": isa.AVX2, "avx512": isa.AVX512, "avx512-vnni": isa.AVX512_VNNI}
    runnable = {cls: qcompiler.compile(str(zm.quant_path), target=t) for cls, t in builds.items()
                if t is None or isa.can_execute(t)}
    assert {"host", "avx2"} <= set(runnable)  # AVX2 code runs on every supported host
    reference = er.ExactReference(zm.quant_path)
    for feeds in zm.make_inputs(3, seed=7):
        outputs = {cls: model(**feeds) for cls, model in runnable.items()}
        for cls, out in outputs.items():
            np.testing.assert_array_equal(out, outputs["host"], err_msg=f"{cls} build differs from the host build")
        expected = reference.run(feeds)[0]
        if name == "transformer":  # a float output after fp32 LayerNorm: compared to float rounding
            np.testing.assert_allclose(outputs["host"], expected, rtol=0, atol=1e-5)
        else:
            er.assert_matches_reference(outputs["host"], expected, mz.output_scale(zm.quant_path))
