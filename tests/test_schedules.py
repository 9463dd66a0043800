"""Schedule templates: the VNNI micro-kernels really use vpdpbusd on zmm, a non-VNNI target gets
the plain templates (built and run here for correctness), and the knobs are MetaSchedule
sampling instructions when tunable."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import s_tir, te
from tvm.target import Target

import int_reference as ref
import qcompiler
import schedules
from qcompiler.build import build
from qcompiler.kernels import pack_dense_weight, pack_dense_weight_pairs, qdense_packed, qdense_packed_pairs
import isa
from qcompiler.target import host_target
from test_integer_kernels import build_graph, dq, f32, q
from tvm import relax


asm_of = isa.asm_of


def _dense_graph(bb, xv, w, sw):
    y = bb.emit(relax.op.matmul(dq(bb, xv, f32(0.02), 128), dq(bb, relax.const(w), sw, np.zeros(w.shape[1], np.int8), 1)))
    return q(bb, y, f32(2.0), 120, "uint8")


def _build_dense(target, m=64, k=256, n=96):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    sw = rng.uniform(0.002, 0.01, n).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((m, k), "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(_dense_graph(bb, xv, w, sw))
        bb.emit_func_output(out)
    from qcompiler.signature import ModelSignature, TensorSpec
    sig = ModelSignature((TensorSpec("x", (m, k), "uint8"),), (TensorSpec("y", (m, n), "uint8"),))
    model = build(bb.get(), sig, target)
    real = np.float64(f32(0.02)) * sw.astype(np.float64) / np.float64(f32(2.0))
    return model, x, ref.qdense(x, 128, w, np.zeros(n, np.int64), np.zeros(n, np.int64), real, 120, "uint8")


def test_vnni_dense_micro_kernel_uses_vpdpbusd_on_zmm():
    model, x, expected = _build_dense(isa.AVX512_VNNI)
    asm = asm_of(model)
    assert len(re.findall(r"vpdpbusd\s+[^\n]*%zmm", asm)) >= 8, "no zmm vpdpbusd in the micro-kernel"
    assert "vpmaddubsw" not in asm  # the saturating int16 path must never be used
    isa.skip_unless_executable(isa.AVX512_VNNI)
    np.testing.assert_array_equal(model(x=x), expected)


@pytest.mark.parametrize("target,layout,register", [
    (isa.AVX512, "pairs16x2", "zmm"), (isa.AVX2, "pairs8x2", "ymm"),
    ({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2}, "pairs8x2", "ymm"),
    ({"kind": "llvm", "mcpu": "x86-64-v2", "num-cores": 2}, "plain", None)])
def test_targets_without_vnni(target, layout, register):
    """Skylake-X (AVX-512BW, no VNNI) gets the vpmaddwd micro-kernel on zmm, AVX2 CPUs on ymm,
    CPUs without AVX2 the plain templates; results checked wherever this CPU can run the code."""
    target = Target(target)
    assert schedules.weight_layout(target) == layout
    model, x, expected = _build_dense(target)
    asm = asm_of(model)
    assert "vpdpbusd" not in asm and "pmaddubsw" not in asm  # no VNNI, never the saturating int16 sums
    if register:
        assert len(re.findall(rf"vpmaddwd\s+[^\n]*%{register}", asm)) >= 4, f"no {register} vpmaddwd micro-kernel"
    if register != "zmm":
        assert "%zmm" not in asm
    isa.skip_unless_executable(target)
    np.testing.assert_array_equal(model(x=x), expected)


@pytest.mark.parametrize("layout,target", [("packed16x4", isa.AVX512_VNNI), ("pairs8x2", isa.AVX2),
                                           ("pairs16x2", isa.AVX512)])
def test_tunable_dense_template_samples_its_knobs_and_every_sample_is_valid(layout, target):
    m, k, n = 64, 512, 96
    kernel = schedules.x86_vnni.DOT_KERNELS[layout]
    x = te.placeholder((m, k), "uint8", name="x")
    m0, off, sh = (te.placeholder((n,), dt) for dt in ("int32", "int64", "int64"))
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    if layout == "packed16x4":
        wp = te.placeholder((n // 16, k // 4, 16, 4), "int8", name="wp")
        out = qdense_packed(x, wp, m0, off, sh, n_out=n, zero_point=0, lo=0, hi=255, out_dtype="uint8")
        packed = pack_dense_weight(w)
    else:  # operands packed per register tile: the tile is the layout's, the rest is sampled
        lanes = kernel.lanes
        mr, nr = schedules.x86_vnni.dense_tile(m, n, k, kernel)
        wp = te.placeholder((n // (lanes * nr), k // 2, nr, lanes, 2), "int16", name="wp")
        out = qdense_packed_pairs(x, wp, m0, off, sh, n_out=n, zero_point=0, lo=0, hi=255, out_dtype="uint8",
                                  rows=mr)
        packed = pack_dense_weight_pairs(w, lanes, nr)
    func = te.create_prim_func([x, wp, m0, off, sh, out]).with_attrs(
        {"qcompiler.kernel": "dense", "qcompiler.layout": layout})
    target = Target(target)
    rule = schedules.X86VNNIKernels()
    fixed = rule.apply(func, target, tunable=False)
    assert not any(inst.kind.name == "SampleCategorical" for inst in fixed.trace.insts)
    args = [xs, packed, np.full(n, 1 << 30, np.int32), np.full(n, 1 << 40, np.int64),
            np.full(n, 45, np.int64), np.zeros((m, n), np.uint8)]
    expected = np.clip(((xs.astype(np.int64) @ w) * (1 << 30) + (1 << 40)) >> 45, 0, 255).astype(np.uint8)
    spaces = rule.apply(func, target, tunable=True)
    assert len(spaces) == len(schedules.x86_vnni.DENSE_LOOP_ORDERS)  # one design space per loop order
    for sch in spaces:
        samples = [inst for inst in sch.trace.insts if inst.kind.name == "SampleCategorical"]
        # VNNI: MR, NR and K block are sampled; vpmaddwd: the K block (MR/NR are the packing's)
        assert len(samples) >= (2 if layout == "packed16x4" else 1), "the template's knobs must be sampling instructions"
    decisions, libs = set(), []
    for seed in range(1, 9):
        # resample: a fresh schedule with random decisions from the same template must build (and be exact)
        sch = s_tir.Schedule(func, seed=seed)
        order = schedules.x86_vnni.DENSE_LOOP_ORDERS[seed % 2]
        schedules.x86_vnni.schedule_dense_packed(sch, target, tunable=True, order=order, kernel=kernel)
        decisions.add(tuple(int(v) for _, v in sorted(sch.trace.decisions.items(), key=lambda kv: str(kv[0]))))
        libs.append(tvm.compile(sch.mod, target=target))
    assert len(decisions) >= 2, decisions
    isa.skip_unless_executable(target)
    for lib in libs:
        tensors = [tvm.runtime.tensor(a) for a in args]
        lib["main"](*tensors) if hasattr(lib, "__getitem__") else lib.jit()["main"](*tensors)
        np.testing.assert_array_equal(tensors[-1].numpy(), expected)


def test_avx_vnni_target_compiles_to_ymm_vpdpbusd():
    """Alder Lake has AVX-VNNI (VEX, 256-bit) but no AVX-512: the packed kernel is tensorized with
    two 8-lane ymm vpdpbusd per 16-lane block. This machine lacks AVX-VNNI: compiled and
    inspected, not run."""
    target = Target({"kind": "llvm", "mcpu": "alderlake", "num-cores": 2})
    assert schedules.weight_layout(target) == "packed16x4"
    model, _, _ = _build_dense(target)
    asm = asm_of(model)
    assert re.search(r"vpdpbusd\s+[^\n]*%ymm", asm) and "%zmm" not in asm


@pytest.mark.parametrize("target,layout", [(isa.AVX512_VNNI, "packed16x4"), (isa.AVX2, "pairs8x2")])
@pytest.mark.parametrize("m,k,n", [(1, 768, 768), (7, 100, 33), (128, 3072, 768), (512, 3072, 64)])
def test_dense_odd_and_k_blocked_shapes_bit_exact(m, k, n, target, layout):
    """The issue's odd shapes and the two K-blocked paths (K's weight panel too large for L1): with
    all rows in one block (128x3072x768) and with two row blocks (512x3072x64)."""
    xv = schedules.x86_vnni
    kernel = xv.DOT_KERNELS[layout]
    k_steps, n_blocks = -(-k // kernel.k_group), -(-n // kernel.lanes)
    candidates = xv.prefer_whole_k(xv.dense_tile_candidates(m, n_blocks, kernel=kernel), k_steps, kernel.lanes)
    mr, nr = candidates[0]
    k_blocked = xv.k_block_candidates(k_steps, nr, kernel.lanes)[0] != k_steps
    assert k_blocked == (k == 3072)
    if k_blocked:
        rows = xv.row_block_candidates(m, [mr], nr, kernel.lanes)[0]
        assert rows * nr * kernel.lanes * 4 <= xv.ROW_BLOCK_ACC_BYTES  # the partial sums stay in L1
        if layout == "packed16x4":  # 16-lane blocks: 512 rows need two row blocks
            assert (m // rows) == (2 if m == 512 else 1)
    model, x, expected = _build_dense(target, m, k, n)
    isa.skip_unless_executable(target)
    np.testing.assert_array_equal(model(x=x), expected)


@pytest.mark.parametrize("shape,axes,blocked", [
    ((1, 64, 56, 56), (0, 2, 3, 1), True), ((1, 14, 14, 256), (0, 3, 1, 2), True),
    ((2, 16, 12, 8), (0, 1, 3, 2), True), ((33, 70), (1, 0), True), ((2, 16, 12, 8), (0, 2, 1, 3), False)])
def test_transposes_are_cache_blocked_and_exact(shape, axes, blocked):
    """uint8 permutations (NCHW <-> NHWC at region edges, a key transpose, a 2-D transpose with tails):
    the CPUTranspose rule takes the PrimFunc (a parallel loop over tiles) unless the innermost axis
    stays innermost (a head split: the generic vectorized copy is contiguous already); output exact."""
    x = np.random.default_rng(3).integers(0, 256, shape).astype(np.uint8)
    xv = relax.Var("x", relax.TensorType(shape, "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.permute_dims(xv, axes))
        bb.emit_func_output(out)
    target = host_target(2)  # the host's name *and* features (a CPU name alone may imply missing ones)
    with target:
        mod = relax.transform.LegalizeOps()(bb.get())
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    sch = schedules.CPUTranspose().apply(funcs[0], target, False)
    if blocked:
        assert sch is not None and "T.parallel" in sch.mod.script()
    else:
        assert sch is None
    from qcompiler.signature import ModelSignature, TensorSpec
    sig = ModelSignature((TensorSpec("x", shape, "uint8"),),
                         (TensorSpec("y", tuple(shape[a] for a in axes), "uint8"),))
    model = build(bb.get(), sig, target)
    np.testing.assert_array_equal(model(x=x), x.transpose(axes))


@pytest.mark.parametrize("shape,index,axis,perm", [
    ((3, 4, 8, 16), 1, 0, (1, 0, 2)), ((4, 3, 8, 16), 2, 1, (1, 0, 2)), ((8, 16, 3), 0, 2, (1, 0)),
    ((2, 3, 8, 16), 1, 1, (0, 2, 1))])
def test_scalar_index_gather_fused_with_a_permutation(shape, index, axis, perm):
    """A Gather with a scalar index (the q/k/v split of nn.MultiheadAttention) fused with a
    transpose reads the input at a constant index: the CPUTranspose rule treats that index as fixed
    (it used to crash with "3 is not in list") and the result is exact."""
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)

    def body(bb, xv):
        return relax.op.permute_dims(bb.emit(relax.op.take(xv, relax.const(index, "int64"), axis=axis)), perm)
    model = build_graph({"x": x}, body, host_target(2))
    np.testing.assert_array_equal(model(x=x), np.take(x, index, axis=axis).transpose(perm))


def test_transformer_encoder_with_multihead_attention_compiles():
    """torch's nn.TransformerEncoder (nn.MultiheadAttention inside) through ONNX and through the
    torch frontend: both compile and agree with torch."""
    import torch
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2).eval()
    x = torch.randn(1, 8, 32)
    expected = layer(x).detach().numpy()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/encoder.onnx"
        torch.onnx.export(layer, (x,), path, opset_version=17, dynamo=False, input_names=["x"], output_names=["y"])
        from_onnx = qcompiler.compile(path)
    from_torch = qcompiler.compile(layer, example_args=(x,))
    for model in (from_onnx, from_torch):
        np.testing.assert_allclose(model(x.numpy()), expected, rtol=1e-4, atol=1e-5)


def test_a_failing_template_is_reported_with_its_kernel(monkeypatch):
    """A schedule template that raises (a bug) reaches the user as one QCompilerError naming the
    kernel and the error, not as a TVM traceback from inside dlight."""
    import schedules.x86_vnni as xv
    from qcompiler.errors import QCompilerError
    from qcompiler.examples import example_path

    def broken(*args, **kwargs):
        raise ValueError("template bug for the test")
    target = host_target(2)
    monkeypatch.setitem(xv.TEMPLATES, ("conv2d", schedules.weight_layout(target)), broken)
    with pytest.raises(QCompilerError, match=r"scheduling kernel qconv2d\w* \(conv2d.*template bug for the test"):
        qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), target=target)


def test_fallback_keeps_an_integer_kernels_requantize_after_its_reduction():
    """The fallback (fp32 islands, and integer kernels on targets without templates) must not fold the
    requantize stage into an accumulation whose reduction loops have extent 1: dlight's inlining did, and
    the result requantized partial sums (ConvNeXt's and EfficientNet's pools of 1x1 maps at small sizes).
    Built with the fallback alone and run against numpy."""
    from qcompiler.kernels import KERNEL_ATTR, LAYOUT_ATTR, qavg_pool2d
    from schedules.cpu_fallback import CPUFallback

    x = te.placeholder((1, 16, 1, 1), "uint8", name="x")
    y = qavg_pool2d(x, pool_size=(1, 1), strides=(1, 1), padding=(0, 0, 0, 0), input_zero_point=14,
                    multiplier=1 << 30, offset=1 << 30, shift=31, zero_point=20, lo=0, hi=255, out_dtype="uint8")
    func = te.create_prim_func([x, y]).with_attr({KERNEL_ATTR: "avg_pool2d", LAYOUT_ATTR: "plain"})
    target = host_target()
    sch = CPUFallback().apply(func, target, False)
    assert {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))} == {"acc", "requant"}
    lib = tvm.compile(sch.mod, target=target)
    data = np.arange(0, 256, 16, dtype=np.uint8).reshape(1, 16, 1, 1)
    out = tvm.runtime.tensor(np.zeros((1, 16, 1, 1), np.uint8))
    lib(tvm.runtime.tensor(data), out)
    # multiplier 2^30 with shift 31 and offset 2^30: (x - 14) / 2 rounded half up, + 20
    expected = np.clip(np.floor((data.astype(np.int64) - 14) / 2 + 0.5) + 20, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("row", [17, 128, 300])
def test_softmax_rows_are_fused_parallel_and_exact_to_float_rounding(row):
    """schedules/cpu_softmax.py takes TOPI's softmax with its quantize behind it: rows in parallel, the
    stages of a row fused under the row loop, the exp vectorized; the result against numpy's float64
    softmax quantized (a float32 rounding may move a value across a rounding boundary: at most 1 step)."""
    from tvm import topi
    from schedules.cpu_softmax import CPUSoftmax

    x = te.placeholder((2, 3, row), "float32", name="x")
    probs = topi.nn.fast_softmax(x, -1)
    y = te.compute(probs.shape, lambda *i: te.max(te.min(te.round(probs(*i) * 255.0), 255.0), 0.0).astype("uint8"),
                   name="quantize")
    target = host_target()
    sch = CPUSoftmax().apply(te.create_prim_func([x, y]), target, False)
    assert sch is not None
    script = sch.mod["main"].script()
    assert "T.parallel" in script and "T.vectorized" in script
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    row_loop = sch.get(sch.get_loops(blocks[-1])[0])
    assert all(sch.get(sch.get_loops(b)[0]).same_as(row_loop) for b in blocks)  # every stage under one row loop
    data = np.random.default_rng(1).normal(0, 4, (2, 3, row)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((2, 3, row), np.uint8))
    tvm.compile(sch.mod, target=target)(tvm.runtime.tensor(data), out)
    e = np.exp(data.astype(np.float64) - data.max(-1, keepdims=True))
    expected = np.clip(np.round(e / e.sum(-1, keepdims=True) * 255), 0, 255)
    assert np.abs(out.numpy().astype(np.int64) - expected).max() <= 1
