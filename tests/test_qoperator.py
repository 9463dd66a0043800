"""QOperator -> QDQ canonicalization (qcompiler.frontend.qoperator).

Every test runs the QDQ rewrite in onnxruntime (graph optimizations disabled, so it is evaluated
as written: float ops between DequantizeLinear and QuantizeLinear) on random inputs and compares
every rewritten node's output, not just the graph outputs, with what the original QOperator model
computes:

* on every CPU, the exact reference of the original (tests/exact_reference.py: onnx's
  ReferenceEvaluator, ORT's com.microsoft ops as their schemas define them);
* where onnxruntime's QOperator kernels are exact (``exact_reference.ort_is_exact``: VNNI CPUs, or
  models without an integer dot product), also those kernels. Without VNNI, ORT's QLinearConv/
  QLinearMatMul/QGemm/MatMulInteger saturate int16 pair sums (vpmaddubsw), so they are no reference.

Criteria, against either:

* int8/uint8: same dtype/shape, >= 99% of elements identical, never more than 1 step apart
  (the QOperator kernels requantize with a fused integer/float multiplier or a lookup table;
  QDQ computes in float and rounds once, half-to-even);
* int32 (MatMulInteger/ConvInteger): bit-exact, with sizes chosen so |acc| < 2**24;
* float: allclose with the tolerance stated at the call site.

Output quantization parameters are calibrated on a float reference so that the outputs spread
over the integer range; a comparison of saturated outputs would prove nothing.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import exact_reference as er
from qcompiler.errors import QCompilerError
from qcompiler.frontend.qoperator import QOPERATOR_OPS, qoperator_to_qdq

MS = "com.microsoft"
U8, I8, I32, F32 = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, TensorProto.FLOAT
NP = {U8: np.uint8, I8: np.int8, I32: np.int32, F32: np.float32, TensorProto.BOOL: np.bool_}
QRANGE = {U8: (0, 255), I8: (-128, 127)}


# ---- model building ---------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=(), *, opset=17, ir_version=8) -> onnx.ModelProto:
    """inputs: (name, elem_type, shape); outputs: (name, elem_type[, shape]); inits: name -> array.

    Output shapes that are not given are learnt from an onnxruntime run of the model.
    """
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(*o) if len(o) == 3
         else helper.make_tensor_value_info(*o, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    opsets = [helper.make_opsetid("", opset)]
    if any(n.domain == MS for n in nodes):
        opsets.append(helper.make_opsetid(MS, 1))
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
    if any(len(o) == 2 for o in outputs):
        _declare_output_shapes(model)
    return model


def _declare_output_shapes(model: onnx.ModelProto) -> None:
    """Graph outputs need a shape to pass the checker; learn it from one onnxruntime run.

    Models that onnxruntime cannot load (the unsupported-op tests) keep shapeless outputs.
    """
    feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim],
                              NP[i.type.tensor_type.elem_type]) for i in model.graph.input}
    try:
        results = _run(model, feeds, optimize=False)
    except Exception:  # noqa: BLE001
        return
    for out in model.graph.output:
        out.CopyFrom(helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type,
                                                   list(results[out.name].shape)))


def _rand_q(rng, shape, elem) -> np.ndarray:
    lo, hi = QRANGE[elem]
    return rng.integers(lo, hi + 1, size=shape).astype(NP[elem])


def _qparams(values: np.ndarray, elem: int) -> tuple[np.ndarray, np.ndarray]:
    """Min/max calibration, the way a static quantizer picks output scale and zero point."""
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    qmin, qmax = QRANGE[elem]
    scale = np.float32((hi - lo) / (qmax - qmin) or 1.0)
    zp = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    return scale, np.array(zp, NP[elem])


def _dq(q, scale, zp, axis=None) -> np.ndarray:
    scale, zp = np.asarray(scale, np.float64), np.asarray(zp, np.float64)
    if axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape) if scale.ndim == 1 else scale
        zp = zp.reshape(shape) if zp.ndim == 1 else zp
    return (q.astype(np.float64) - zp) * scale


# ---- running and comparing ---------------------------------------------------------------------
def _run(model: onnx.ModelProto, feeds: dict, *, optimize: bool) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_nodes(sub)


def _assert_canonical(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    onnx.checker.check_model(rewritten, full_check=True)
    onnx.shape_inference.infer_shapes(rewritten, check_type=True, strict_mode=True)
    left = [(n.name, n.op_type) for n in _all_nodes(rewritten.graph) if n.op_type in QOPERATOR_OPS]
    assert not left, f"QOperator ops left after rewrite: {left}"
    produced = {o for n in _all_nodes(rewritten.graph) for o in n.output}
    for node in _all_nodes(original.graph):
        assert set(node.output) <= produced, f"output of {node.name} lost"
    assert [o.name for o in rewritten.graph.output] == [o.name for o in original.graph.output]
    has_ms_nodes = any(n.domain == MS for n in _all_nodes(rewritten.graph))
    assert has_ms_nodes == any(o.domain == MS for o in rewritten.opset_import)


def _assert_q_close(name: str, ref: np.ndarray, got: np.ndarray) -> None:
    assert ref.shape == got.shape, f"{name}: shape {got.shape} != {ref.shape}"
    diff = np.abs(ref.astype(np.int32) - got.astype(np.int32))
    identical = float((diff == 0).mean())
    assert diff.max() <= 1, f"{name}: max diff {diff.max()} steps"
    assert identical >= 0.99, f"{name}: only {identical:.2%} identical"


def _compare(name, ref, got, *, rtol, atol) -> None:
    assert ref.dtype == got.dtype, f"{name}: dtype {got.dtype} != {ref.dtype}"
    assert ref.shape == got.shape, f"{name}: shape {got.shape} != {ref.shape}"
    if ref.dtype in (np.uint8, np.int8):
        _assert_q_close(name, ref, got)
    elif ref.dtype == np.int32:
        np.testing.assert_array_equal(got, ref, err_msg=name)
    else:
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=name)


def _with_outputs(model: onnx.ModelProto, value_infos) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(v for v in value_infos if v.name not in present)
    return model


def check_rewrite(original: onnx.ModelProto, feeds: dict, *, rtol=1e-5, atol=1e-6,
                  min_distinct=16) -> onnx.ModelProto:
    """Rewrite `original`, check the result is valid QDQ and computes what `original` does.

    Every tensor a rewritten node produced in the main graph is exposed as an extra output of
    both models and compared with the exact reference of the original, and with onnxruntime's
    kernels where they are exact on this CPU (module docstring). `min_distinct` guards against
    vacuous tests: each quantized output must take at least that many distinct values.
    """
    before = original.SerializeToString()
    rewritten = qoperator_to_qdq(original)
    assert original.SerializeToString() == before, "qoperator_to_qdq modified its input"
    _assert_canonical(original, rewritten)

    watched = {o for n in original.graph.node if n.op_type in QOPERATOR_OPS for o in n.output}
    inferred = onnx.shape_inference.infer_shapes(rewritten, strict_mode=True)
    infos = [v for v in inferred.graph.value_info if v.name in watched]
    exposed = _with_outputs(original, infos)
    got = _run(_with_outputs(rewritten, infos), feeds, optimize=False)
    for label, ref in _references(exposed, feeds).items():
        assert ref.keys() == got.keys(), label
        for name in ref:
            _compare(f"{name} (vs {label})", ref[name], got[name], rtol=rtol, atol=atol)
            if ref[name].dtype in (np.uint8, np.int8):
                assert len(np.unique(ref[name])) >= min_distinct, f"{name}: degenerate test output"
    return rewritten


def _references(model: onnx.ModelProto, feeds: dict) -> dict[str, dict[str, np.ndarray]]:
    """Every output of `model` from the exact reference, and from onnxruntime where ORT is exact."""
    names = [o.name for o in model.graph.output]
    found = {"exact reference": dict(zip(names, er.reference_run(model, feeds)))}
    if er.ort_is_exact(model):
        found["onnxruntime"] = _run(model, feeds, optimize=True)
    return found


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _node(model: onnx.ModelProto, op_type: str, i: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op_type][i]


# ---- QLinearConv ------------------------------------------------------------------------------
CONV_CASES = {
    "u8_per_tensor_bias": dict(xt=U8, wt=I8, per_channel=False, bias=True, C=4, M=6, group=1,
                               attrs=dict(pads=[1, 1, 1, 1])),
    "i8_per_channel_stride_asym_pad": dict(xt=I8, wt=I8, per_channel=True, bias=True, C=4, M=8,
                                           group=1, attrs=dict(strides=[2, 2], pads=[0, 1, 1, 0])),
    "u8_depthwise_dilated": dict(xt=U8, wt=I8, per_channel=True, bias=True, C=6, M=6, group=6,
                                 attrs=dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "i8_grouped_same_upper_no_bias": dict(xt=I8, wt=I8, per_channel=True, bias=False, C=4, M=6,
                                          group=2,
                                          attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "u8_u8_weights": dict(xt=U8, wt=U8, per_channel=False, bias=True, C=3, M=5, group=1,
                          attrs=dict(kernel_shape=[3, 3])),
    "u8_conv1d_per_channel": dict(xt=U8, wt=I8, per_channel=True, bias=True, C=4, M=5, group=1,
                                  attrs=dict(pads=[1, 1]), spatial=(11,)),
}


def _conv_case(rng, xt, wt, per_channel, bias, C, M, group, attrs, spatial=(9, 9)):
    """A QLinearConv with calibrated output params; returns (inputs dict, y_scale, y_zp, feeds)."""
    k = (3,) * len(spatial)
    x = _rand_q(rng, (2, C, *spatial), xt)
    x_scale, x_zp = np.float32(0.03), np.array(128 if xt == U8 else -2, NP[xt])
    w = _rand_q(rng, (M, C // group, *k), wt)
    if per_channel:
        w_scale = rng.uniform(0.002, 0.01, M).astype(np.float32)
        w_zp = (np.zeros(M) + (128 if wt == U8 else 0)).astype(NP[wt])
        w_zp[0] += 1  # a nonzero entry: per-channel zero points must be honoured too
    else:
        w_scale, w_zp = np.float32(0.005), np.array(128 if wt == U8 else 0, NP[wt])
    b = rng.integers(-3000, 3000, M).astype(np.int32)
    xf = torch.from_numpy(_dq(x, x_scale, x_zp))
    wf = torch.from_numpy(_dq(w, w_scale, w_zp, axis=0))
    bf = torch.from_numpy(_dq(b, x_scale * w_scale, 0)) if bias else None
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[len(spatial)]
    pads = attrs.get("pads", [0] * 2 * len(spatial))
    xp = torch.nn.functional.pad(xf, [p for i in reversed(range(len(spatial)))
                                      for p in (pads[i], pads[i + len(spatial)])])
    if attrs.get("auto_pad") == "SAME_UPPER":  # stride 2, k 3, size 9 -> pad 1 on both sides
        xp = torch.nn.functional.pad(xf, [1, 1] * len(spatial))
    ref = conv(xp, wf, bf, stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
               groups=group)
    y_scale, y_zp = _qparams(ref.numpy(), xt)
    inits = dict(x_scale=x_scale, x_zp=x_zp, w=w, w_scale=w_scale, w_zp=w_zp, y_scale=y_scale,
                 y_zp=y_zp)
    if bias:
        inits["b"] = b
    return x, inits


@pytest.mark.parametrize("case", CONV_CASES)
def test_qlinear_conv(case):
    spec = CONV_CASES[case]
    rng = np.random.default_rng(0)
    x, inits = _conv_case(rng, **spec)
    ins = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"]
    ins += ["b"] if spec["bias"] else []
    node = helper.make_node("QLinearConv", ins, ["y"], name="conv0", group=spec["group"],
                            **spec["attrs"])
    model = _model([node], [("x", spec["xt"], x.shape)], [("y", spec["xt"])], inits)
    rewritten = check_rewrite(model, {"x": x})

    n_dq = 3 if spec["bias"] else 2
    assert _ops(rewritten) == ["DequantizeLinear"] * n_dq + ["Conv", "QuantizeLinear"]
    conv = _node(rewritten, "Conv")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute} == \
        {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w_dq = _node(rewritten, "DequantizeLinear", 1)
    assert w_dq.input[0] == "w" and w_dq.input[1] == "w_scale"  # initializers stay initializers
    assert [a.i for a in w_dq.attribute if a.name == "axis"] == ([0] if spec["per_channel"] else [])
    if spec["bias"]:
        b_dq = _node(rewritten, "DequantizeLinear", 2)
        inits = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
        np.testing.assert_array_equal(inits[b_dq.input[1]], inits["x_scale"] * inits["w_scale"])
        assert inits[b_dq.input[2]].dtype == np.int32 and not inits[b_dq.input[2]].any()
    assert _node(rewritten, "QuantizeLinear").output[0] == "y"


def test_qlinear_conv_params_from_graph_inputs():
    """Scales, zero points and weights fed at run time, not initializers.

    x_scale arrives as a 1-element vector (made rank 0 with a Reshape), the scalar w_zero_point
    is broadcast to the per-channel length of w_scale (Expand), and the bias scale becomes a Mul.
    """
    rng = np.random.default_rng(1)
    x, inits = _conv_case(rng, xt=U8, wt=I8, per_channel=True, bias=True, C=4, M=6, group=1,
                          attrs=dict(pads=[1, 1, 1, 1]))
    w, x_scale = inits.pop("w"), inits.pop("x_scale")
    del inits["w_zp"]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                            "y_scale", "y_zp", "b"], ["y"], name="conv_dyn",
                            pads=[1, 1, 1, 1])
    model = _model([node], [("x", U8, x.shape), ("x_scale", F32, [1]), ("w", I8, w.shape),
                            ("w_zp", I8, [])], [("y", U8)], inits)
    feeds = {"x": x, "x_scale": np.array([x_scale]), "w": w, "w_zp": np.array(1, np.int8)}
    rewritten = check_rewrite(model, feeds)
    assert _ops(rewritten) == ["Reshape", "Expand", "DequantizeLinear", "DequantizeLinear", "Mul",
                               "DequantizeLinear", "Conv", "QuantizeLinear"]
    assert list(_node(rewritten, "Reshape").input)[0] == "x_scale"
    assert list(_node(rewritten, "Expand").input)[0] == "w_zp"
    w_dq = _node(rewritten, "DequantizeLinear", 1)
    assert list(w_dq.input) == ["w", "w_scale", _node(rewritten, "Expand").output[0]]
    assert list(_node(rewritten, "Mul").input) == [_node(rewritten, "Reshape").output[0], "w_scale"]


def test_one_element_vector_params_become_scalars():
    """[1]-shaped scale/zero point initializers are per-tensor: new rank-0 copies, no axis."""
    rng = np.random.default_rng(23)
    x, inits = _conv_case(rng, xt=I8, wt=I8, per_channel=False, bias=True, C=3, M=4, group=1,
                          attrs={})
    inits = {k: (v.reshape(1) if k != "w" and k != "b" else v) for k, v in inits.items()}
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                            "y_scale", "y_zp", "b"], ["y"], name="conv_vec1")
    model = _model([node], [("x", I8, x.shape)], [("y", I8)], inits)
    rewritten = check_rewrite(model, {"x": x})
    shapes = {t.name: tuple(t.dims) for t in rewritten.graph.initializer}
    for n in rewritten.graph.node:
        if n.op_type in ("DequantizeLinear", "QuantizeLinear"):
            assert [shapes[i] for i in n.input[1:]] == [(), ()] and not n.attribute, n.name


# ---- channels_last contrib variants --------------------------------------------------------------
@pytest.mark.parametrize("xt", [U8, I8])
def test_channels_last_conv_and_pools(xt):
    """com.microsoft QLinearConv/AveragePool/GlobalAveragePool with channels_last=1 (NHWC)."""
    rng = np.random.default_rng(2)
    x, inits = _conv_case(rng, xt=xt, wt=I8, per_channel=True, bias=True, C=4, M=6, group=1,
                          attrs=dict(pads=[1, 1, 1, 1]))
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    inits.update(p_scale=inits["y_scale"] * np.float32(0.7), p_zp=inits["y_zp"],
                 g_scale=inits["y_scale"] * np.float32(0.3), g_zp=inits["y_zp"])
    nodes = [
        helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                         "y_scale", "y_zp", "b"], ["c"], name="conv_nhwc",
                         domain=MS, channels_last=1, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("QLinearAveragePool", ["c", "y_scale", "y_zp", "p_scale", "p_zp"], ["p"],
                         name="pool_nhwc", domain=MS, channels_last=1, kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("QLinearGlobalAveragePool", ["p", "p_scale", "p_zp", "g_scale", "g_zp"],
                         ["g"], name="gap_nhwc", domain=MS, channels_last=1),
    ]
    model = _model(nodes, [("x", xt, x_nhwc.shape)], [("g", xt)], inits)
    rewritten = check_rewrite(model, {"x": x_nhwc}, min_distinct=4)
    assert _ops(rewritten).count("Transpose") == 6
    assert not any(a.name == "channels_last" for n in rewritten.graph.node for a in n.attribute)


# ---- QLinearMatMul ------------------------------------------------------------------------------
@pytest.mark.parametrize("at,bt,a_shape,b_scale_shape", [
    (U8, I8, (5, 16), ()),             # per-tensor
    (I8, I8, (2, 3, 16), (8,)),        # batched A, per-column B
    (U8, U8, (4, 16), (1, 8)),         # per-column given as [1, N]
])
def test_qlinear_matmul(at, bt, a_shape, b_scale_shape):
    rng = np.random.default_rng(3)
    a, b = _rand_q(rng, a_shape, at), _rand_q(rng, (16, 8), bt)
    a_scale, a_zp = np.float32(0.05), np.array(100 if at == U8 else -3, NP[at])
    b_scale = rng.uniform(0.003, 0.02, b_scale_shape).astype(np.float32)
    b_zp = np.full(b_scale_shape, 128 if bt == U8 else 0, NP[bt])
    ref = _dq(a, a_scale, a_zp) @ _dq(b, b_scale.reshape(-1), b_zp.reshape(-1), axis=1)
    y_scale, y_zp = _qparams(ref, at)
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp",
                                              "y_scale", "y_zp"], ["y"], name="mm0")
    model = _model([node], [("a", at, a.shape)], [("y", at)],
                   dict(a_scale=a_scale, a_zp=a_zp, b=b, b_scale=b_scale, b_zp=b_zp,
                        y_scale=y_scale, y_zp=y_zp))
    rewritten = check_rewrite(model, {"a": a})
    b_dq = _node(rewritten, "DequantizeLinear", 1)
    assert [x.i for x in b_dq.attribute if x.name == "axis"] == ([1] if b_scale_shape else [])


# ---- MatMulInteger / ConvInteger ----------------------------------------------------------------
@pytest.mark.parametrize("bt,zps", [(I8, "scalar"), (U8, "per_column"), (I8, "none")])
def test_matmul_integer(bt, zps):
    rng = np.random.default_rng(4)
    K = 64  # |acc| <= 64 * 255 * 255 < 2**24: the float accumulation is exact
    a, b = _rand_q(rng, (2, 5, K), U8), _rand_q(rng, (K, 7), bt)
    inits, ins = {"b": b}, ["a", "b"]
    if zps != "none":
        b_zp = (np.arange(7) + (120 if bt == U8 else -3)).astype(NP[bt])
        inits.update(a_zp=np.array(131, np.uint8),
                     b_zp=b_zp if zps == "per_column" else np.array(b_zp[0]))
        ins += ["a_zp", "b_zp"]
    node = helper.make_node("MatMulInteger", ins, ["y"], name="mmi")
    model = _model([node], [("a", U8, a.shape)], [("y", I32)], inits)
    rewritten = check_rewrite(model, {"a": a})
    assert _ops(rewritten) == ["DequantizeLinear", "DequantizeLinear", "MatMul", "Cast"]
    assert _node(rewritten, "Cast").output[0] == "y"


def test_matmul_integer_per_row_a_zero_point_matches_int64_reference():
    """Per-row A zero points (ONNX allows them, ORT's kernel does not): check against numpy."""
    rng = np.random.default_rng(5)
    a, b = _rand_q(rng, (6, 200), U8), _rand_q(rng, (200, 5), I8)
    a_zp = rng.integers(0, 256, 6).astype(np.uint8)
    b_zp = rng.integers(-5, 5, 5).astype(np.int8)
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"], name="mmi_rows")
    model = _model([node], [("a", U8, a.shape)], [("y", I32, [6, 5])],
                   dict(b=b, a_zp=a_zp, b_zp=b_zp))
    rewritten = qoperator_to_qdq(model)
    _assert_canonical(model, rewritten)
    expected = (a.astype(np.int64) - a_zp[:, None]) @ (b.astype(np.int64) - b_zp[None, :])
    assert np.abs(expected).max() < 2 ** 24
    got = _run(rewritten, {"a": a}, optimize=False)["y"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("zps", ["scalar", "none"])
def test_conv_integer(zps):
    rng = np.random.default_rng(6)
    x, w = _rand_q(rng, (2, 4, 7, 7), U8), _rand_q(rng, (6, 2, 3, 3), U8)  # ORT: uint8 only
    inits, ins = {"w": w}, ["x", "w"]
    if zps == "scalar":
        inits.update(x_zp=np.array(128, np.uint8), w_zp=np.array(120, np.uint8))
        ins += ["x_zp", "w_zp"]
    node = helper.make_node("ConvInteger", ins, ["y"], name="convi", group=2, pads=[1, 0, 1, 0],
                            strides=[2, 1])
    model = _model([node], [("x", U8, x.shape)], [("y", I32)], inits)
    rewritten = check_rewrite(model, {"x": x})
    assert _ops(rewritten) == ["DequantizeLinear", "DequantizeLinear", "Conv", "Cast"]


def test_conv_integer_per_channel_w_zero_point_matches_reference():
    """Per-output-channel w zero points (allowed by ONNX, not by ORT's kernel) vs exact float64."""
    rng = np.random.default_rng(7)
    x, w = _rand_q(rng, (1, 3, 6, 6), U8), _rand_q(rng, (4, 3, 3, 3), U8)
    x_zp, w_zp = np.array(7, np.uint8), rng.integers(100, 150, 4).astype(np.uint8)
    node = helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["y"], name="convi_pc")
    model = _model([node], [("x", U8, x.shape)], [("y", I32, [1, 4, 4, 4])],
                   dict(w=w, x_zp=x_zp, w_zp=w_zp))
    rewritten = qoperator_to_qdq(model)
    _assert_canonical(model, rewritten)
    assert [a.i for a in _node(rewritten, "DequantizeLinear", 1).attribute] == [0]
    expected = torch.nn.functional.conv2d(torch.from_numpy(_dq(x, 1, x_zp)),
                                          torch.from_numpy(_dq(w, 1, w_zp, axis=0))).numpy()
    got = _run(rewritten, {"x": x}, optimize=False)["y"]
    np.testing.assert_array_equal(got, expected.astype(np.int32))


# ---- QGemm ------------------------------------------------------------------------------------
GEMM_CASES = {
    "u8_transB_per_column_bias_N": dict(at=U8, bt=I8, transA=0, transB=1, alpha=1.0,
                                        per_column=True, c_shape=(7,), quantized=True),
    "i8_transA_alpha_bias_MN": dict(at=I8, bt=I8, transA=1, transB=0, alpha=0.5,
                                    per_column=False, c_shape=(5, 7), quantized=True),
    "u8_float_out_bias_1N": dict(at=U8, bt=U8, transA=0, transB=0, alpha=2.0, per_column=True,
                                 c_shape=(1, 7), quantized=False),
    "i8_no_bias": dict(at=I8, bt=I8, transA=0, transB=1, alpha=1.0, per_column=False,
                       c_shape=None, quantized=True),
    "u8_no_bias_opset10": dict(at=U8, bt=I8, transA=0, transB=1, alpha=1.0, per_column=False,
                               c_shape=None, quantized=True, opset=10),  # Gemm-9 requires C
}


@pytest.mark.parametrize("case", GEMM_CASES)
def test_qgemm(case):
    s = GEMM_CASES[case]
    rng = np.random.default_rng(8)
    M, K, N = 5, 32, 7
    a = _rand_q(rng, (K, M) if s["transA"] else (M, K), s["at"])
    b = _rand_q(rng, (N, K) if s["transB"] else (K, N), s["bt"])
    a_scale, a_zp = np.float32(0.04), np.array(120 if s["at"] == U8 else 5, NP[s["at"]])
    b_scale = rng.uniform(0.002, 0.01, N) if s["per_column"] else np.array(0.006)
    b_scale = b_scale.astype(np.float32)
    b_zp = np.full(b_scale.shape, 128 if s["bt"] == U8 else 0, NP[s["bt"]])
    af = _dq(a, a_scale, a_zp)
    bf = _dq(b, b_scale, b_zp, axis=0 if s["transB"] else 1)
    acc = s["alpha"] * ((af.T if s["transA"] else af) @ (bf.T if s["transB"] else bf))
    inits = dict(a_scale=a_scale, a_zp=a_zp, b=b, b_scale=b_scale, b_zp=b_zp)
    ins = ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp"]
    if s["c_shape"] is not None:
        inits["c"] = rng.integers(-4000, 4000, s["c_shape"]).astype(np.int32)
        acc = acc + inits["c"] * (s["alpha"] * a_scale * b_scale)
        ins.append("c")
    if s["quantized"]:
        inits["y_scale"], inits["y_zp"] = _qparams(acc, s["at"])
        ins += [""] * (s["c_shape"] is None) + ["y_scale", "y_zp"]
    node = helper.make_node("QGemm", ins, ["y"], name="qgemm0", domain=MS, alpha=s["alpha"],
                            transA=s["transA"], transB=s["transB"])
    model = _model([node], [("a", s["at"], a.shape)], [("y", s["at"] if s["quantized"] else F32)],
                   inits, opset=s.get("opset", 17))
    # float output: both sides sum the same exact integer products; only the scaling differs
    rewritten = check_rewrite(model, {"a": a}, rtol=1e-5, atol=1e-5 * np.abs(acc).max())
    gemm = _node(rewritten, "Gemm")
    assert {a.name: helper.get_attribute_value(a) for a in gemm.attribute} == dict(
        alpha=pytest.approx(s["alpha"]), beta=1.0, transA=s["transA"], transB=s["transB"])
    assert (rewritten.graph.node[-1].op_type == "QuantizeLinear") == s["quantized"]


# ---- elementwise, pooling, concat, activations ---------------------------------------------------
def _unary_params(rng, shape, xt):
    x = _rand_q(rng, shape, xt)
    return x, np.float32(0.05), np.array(130 if xt == U8 else -4, NP[xt])


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("xt", [U8, I8])
def test_qlinear_binary(op, xt):
    rng = np.random.default_rng(9)
    a, a_scale, a_zp = _unary_params(rng, (2, 4, 5, 5), xt)
    b = _rand_q(rng, (1, 4, 1, 1), xt)  # broadcast over batch and spatial dims
    b_scale, b_zp = np.float32(0.02), np.array(a_zp + 3, NP[xt])
    af, bf = _dq(a, a_scale, a_zp), _dq(b, b_scale, b_zp)
    c_scale, c_zp = _qparams(af + bf if op == "QLinearAdd" else af * bf, xt)
    node = helper.make_node(op, ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "c_scale", "c_zp"],
                            ["c"], name="bin0", domain=MS)
    model = _model([node], [("a", xt, a.shape)], [("c", xt)],
                   dict(a_scale=a_scale, a_zp=a_zp, b=b, b_scale=b_scale, b_zp=b_zp,
                        c_scale=c_scale, c_zp=c_zp))
    rewritten = check_rewrite(model, {"a": a})
    assert _ops(rewritten) == ["DequantizeLinear", "DequantizeLinear", op[len("QLinear"):],
                               "QuantizeLinear"]


@pytest.mark.parametrize("xt", [U8, I8])
def test_qlinear_add_with_omitted_output_zero_point(xt):
    """An absent C_zero_point means 0 *in the input's type*; QuantizeLinear would default to uint8.

    (onnxruntime rejects QLinearAdd with omitted *input* zero points followed by more inputs,
    so only the trailing one is left out here.)
    """
    rng = np.random.default_rng(10)
    a, b = _rand_q(rng, (16, 8), xt), _rand_q(rng, (16, 8), xt)
    zp = np.zeros((), NP[xt])
    node = helper.make_node("QLinearAdd", ["a", "s", "z", "b", "s", "z", "cs"], ["c"],
                            name="add_nozp", domain=MS)
    model = _model([node], [("a", xt, a.shape), ("b", xt, b.shape)], [("c", xt)],
                   dict(s=np.float32(0.1), z=zp, cs=np.float32(0.173 if xt == I8 else 0.117)))
    rewritten = check_rewrite(model, {"a": a, "b": b})
    q = _node(rewritten, "QuantizeLinear")
    inits = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    assert len(q.input) == 3 and inits[q.input[2]].dtype == NP[xt] and inits[q.input[2]] == 0


@pytest.mark.parametrize("xt", [U8, I8])
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[2, 2]),
])
def test_qlinear_average_pool(xt, attrs):
    rng = np.random.default_rng(11)
    x, x_scale, x_zp = _unary_params(rng, (2, 8, 16, 16), xt)
    # A "round" scale ratio (e.g. 0.04 / 0.05) makes window means hit exact .5 ties, which
    # ORT's kernel and QuantizeLinear break differently; calibrated scales are never that round.
    y_scale, y_zp = np.float32(0.0437), np.array(x_zp + 2, NP[xt])
    node = helper.make_node("QLinearAveragePool", ["x", "x_scale", "x_zp", "y_scale", "y_zp"],
                            ["y"], name="pool0", domain=MS, **attrs)
    model = _model([node], [("x", xt, x.shape)], [("y", xt)],
                   dict(x_scale=x_scale, x_zp=x_zp, y_scale=y_scale, y_zp=y_zp))
    rewritten = check_rewrite(model, {"x": x})
    pool = _node(rewritten, "AveragePool")
    assert {a.name: helper.get_attribute_value(a) for a in pool.attribute} == attrs


def test_qlinear_average_pool_ceil_mode_counting_pads_follows_onnx_average_pool():
    """ceil_mode=1 with count_include_pad=1: windows that overhang the end padding.

    The contrib schema defines the op as DequantizeLinear -> AveragePool -> QuantizeLinear, and
    the rewrite does exactly that (ONNX/PyTorch divide by the window size clipped to input+pads).
    onnxruntime's QLinearAveragePool kernel divides such windows by the full kernel size instead,
    so it differs there -- and only there.
    """
    rng = np.random.default_rng(22)
    x, x_scale, x_zp = _unary_params(rng, (1, 4, 8, 8), U8)
    y_scale, y_zp = np.float32(0.0437), np.array(128, np.uint8)
    node = helper.make_node("QLinearAveragePool", ["x", "x_scale", "x_zp", "y_scale", "y_zp"],
                            ["y"], name="pool_ceil", domain=MS, kernel_shape=[3, 3],
                            strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)
    model = _model([node], [("x", U8, x.shape)], [("y", U8)],
                   dict(x_scale=x_scale, x_zp=x_zp, y_scale=y_scale, y_zp=y_zp))
    rewritten = qoperator_to_qdq(model)
    _assert_canonical(model, rewritten)
    ort_kernel = _run(model, {"x": x}, optimize=True)["y"]
    got = _run(rewritten, {"x": x}, optimize=False)["y"]
    mean = torch.nn.functional.avg_pool2d(torch.from_numpy(_dq(x, x_scale, x_zp)), 3, 2, 1,
                                          ceil_mode=True, count_include_pad=True).numpy()
    expected = np.clip(np.round(mean / y_scale) + 128, 0, 255).astype(np.uint8)
    assert got.shape == ort_kernel.shape == (1, 4, 5, 5)
    _assert_q_close("y vs PyTorch", expected, got)
    inner = (slice(None), slice(None), slice(0, 4), slice(0, 4))  # windows inside input+pads
    _assert_q_close("y vs ORT kernel (inner windows)", ort_kernel[inner], got[inner])
    assert (ort_kernel[..., 4] != got[..., 4]).any()  # the overhanging column differs


@pytest.mark.parametrize("xt", [U8, I8])
def test_qlinear_global_average_pool(xt):
    rng = np.random.default_rng(12)
    x, x_scale, x_zp = _unary_params(rng, (4, 32, 3, 3), xt)
    y_scale, y_zp = _qparams(_dq(x, x_scale, x_zp).mean(axis=(2, 3)), xt)
    node = helper.make_node("QLinearGlobalAveragePool", ["x", "x_scale", "x_zp", "y_scale", "y_zp"],
                            ["y"], name="gap0", domain=MS, channels_last=0)
    model = _model([node], [("x", xt, x.shape)], [("y", xt)],
                   dict(x_scale=x_scale, x_zp=x_zp, y_scale=y_scale, y_zp=y_zp))
    check_rewrite(model, {"x": x})


@pytest.mark.parametrize("xt", [U8, I8])
def test_qlinear_concat(xt):
    rng = np.random.default_rng(13)
    xs = [_rand_q(rng, (2, c, 4), xt) for c in (3, 1, 2)]
    scales = [np.float32(s) for s in (0.05, 0.02, 0.08)]
    zps = [np.array(z + (128 if xt == U8 else 0), NP[xt]) for z in (0, 5, -7)]
    y_scale, y_zp = _qparams(np.concatenate([_dq(*t) for t in zip(xs, scales, zps)], 1), xt)
    ins, inits = ["y_scale", "y_zp"], dict(y_scale=y_scale, y_zp=y_zp)
    for i, (s, z) in enumerate(zip(scales, zps)):
        ins += [f"x{i}", f"s{i}", f"z{i}"]
        inits.update({f"s{i}": s, f"z{i}": z})
    node = helper.make_node("QLinearConcat", ins, ["y"], name="cat0", domain=MS, axis=1)
    model = _model([node], [(f"x{i}", xt, x.shape) for i, x in enumerate(xs)], [("y", xt)], inits)
    rewritten = check_rewrite(model, {f"x{i}": x for i, x in enumerate(xs)})
    assert _ops(rewritten) == ["DequantizeLinear"] * 3 + ["Concat", "QuantizeLinear"]


@pytest.mark.parametrize("op,attrs", [("QLinearLeakyRelu", dict(alpha=0.2)),
                                      ("QLinearLeakyRelu", {}),  # default alpha 0.01
                                      ("QLinearSigmoid", {})])
@pytest.mark.parametrize("xt", [U8, I8])
def test_qlinear_activation(op, attrs, xt):
    rng = np.random.default_rng(14)
    x, x_scale, x_zp = _unary_params(rng, (2, 3, 8, 8), xt)
    xf = _dq(x, x_scale, x_zp)
    alpha = attrs.get("alpha", 0.01)
    yf = 1 / (1 + np.exp(-xf)) if op == "QLinearSigmoid" else np.where(xf < 0, alpha * xf, xf)
    y_scale, y_zp = _qparams(yf, xt)
    node = helper.make_node(op, ["x", "x_scale", "x_zp", "y_scale", "y_zp"], ["y"], name="act0",
                            domain=MS, **attrs)
    model = _model([node], [("x", xt, x.shape)], [("y", xt)],
                   dict(x_scale=x_scale, x_zp=x_zp, y_scale=y_scale, y_zp=y_zp))
    rewritten = check_rewrite(model, {"x": x})
    float_op = _node(rewritten, op[len("QLinear"):])
    if op == "QLinearLeakyRelu":
        assert float_op.attribute[0].f == pytest.approx(alpha)


@pytest.mark.parametrize("xt", [U8, I8])
@pytest.mark.parametrize("softmax_opset,axis,shape,model_opset", [
    (13, -1, (2, 3, 10), 17),
    (13, 1, (2, 6, 4), 17),       # opset-13 semantics over a middle axis
    (12, 1, (2, 3, 4), 17),       # legacy: normalize over the flattened dims 1.. (Flatten path)
    (12, None, (2, 3, 4), 17),    # absent axis is -1 even for legacy opsets (ORT behaviour)
    (11, 1, (2, 3, 4), 11),       # legacy in a legacy model: plain Softmax
])
def test_qlinear_softmax(xt, softmax_opset, axis, shape, model_opset):
    rng = np.random.default_rng(15)
    x, x_scale, x_zp = _unary_params(rng, shape, xt)
    y_scale, y_zp = np.float32(1 / 256), np.array(0 if xt == U8 else -128, NP[xt])  # as ORT does
    attrs = dict(opset=softmax_opset) | ({} if axis is None else dict(axis=axis))
    node = helper.make_node("QLinearSoftmax", ["x", "x_scale", "x_zp", "y_scale", "y_zp"], ["y"],
                            name="softmax0", domain=MS, **attrs)
    model = _model([node], [("x", xt, x.shape)], [("y", xt)],
                   dict(x_scale=x_scale, x_zp=x_zp, y_scale=y_scale, y_zp=y_zp), opset=model_opset)
    rewritten = check_rewrite(model, {"x": x}, min_distinct=8)
    over_trailing_dims = softmax_opset < 13 and axis not in (None, -1, len(shape) - 1)
    assert ("Flatten" in _ops(rewritten)) == (over_trailing_dims and model_opset >= 13)


def test_qlinear_where():
    rng = np.random.default_rng(16)
    x, y = _rand_q(rng, (8, 16), U8), _rand_q(rng, (1, 16), U8)
    cond = rng.random((8, 16)) > 0.5
    node = helper.make_node("QLinearWhere", ["cond", "x", "xs", "xz", "y", "ys", "yz", "zs", "zz"],
                            ["z"], name="where0", domain=MS)
    model = _model([node], [("cond", TensorProto.BOOL, cond.shape), ("x", U8, x.shape)],
                   [("z", U8)],
                   dict(y=y, xs=np.float32(0.1), xz=np.uint8(128), ys=np.float32(0.05),
                        yz=np.uint8(120), zs=np.float32(0.1), zz=np.uint8(128)))
    check_rewrite(model, {"cond": cond, "x": x})


# ---- graph-level behaviour -----------------------------------------------------------------------
def test_per_channel_in_opset_11_model_upgrades_to_13_and_keeps_semantics():
    """Per-axis DQ needs opset 13; ops whose meaning changed (Softmax, Unsqueeze) are adapted."""
    rng = np.random.default_rng(17)
    x, inits = _conv_case(rng, xt=U8, wt=I8, per_channel=True, bias=True, C=4, M=6, group=1,
                          attrs=dict(pads=[1, 1, 1, 1]))
    nodes = [
        helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                         "y_scale", "y_zp", "b"], ["c"], name="conv0",
                         pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["c", "y_scale", "y_zp"], ["cf"], name="dq_out"),
        helper.make_node("Softmax", ["cf"], ["sm"], name="softmax_legacy", axis=1),
        helper.make_node("Unsqueeze", ["sm"], ["u"], name="unsq", axes=[0]),
    ]
    model = _model(nodes, [("x", U8, x.shape)], [("u", F32)], inits, opset=11, ir_version=6)
    rewritten = check_rewrite(model, {"x": x}, rtol=1e-4, atol=1e-6)
    assert [(o.domain, o.version) for o in rewritten.opset_import] == [("", 13)]
    assert rewritten.ir_version >= 7


def test_per_tensor_opset_10_model_keeps_its_opset():
    rng = np.random.default_rng(18)
    x, inits = _conv_case(rng, xt=U8, wt=U8, per_channel=False, bias=True, C=3, M=4, group=1,
                          attrs={})
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                            "y_scale", "y_zp", "b"], ["y"], name="conv0")
    model = _model([node], [("x", U8, x.shape)], [("y", U8)], inits, opset=10, ir_version=5)
    rewritten = check_rewrite(model, {"x": x})
    assert [(o.domain, o.version) for o in rewritten.opset_import] == [("", 10)]
    assert rewritten.ir_version == 5


def test_ms_opset_import_kept_while_other_contrib_ops_remain():
    rng = np.random.default_rng(19)
    a, a_scale, a_zp = _unary_params(rng, (2, 8), U8)
    nodes = [
        helper.make_node("QLinearAdd", ["a", "s", "z", "a", "s", "z", "s2", "z"], ["q"],
                         name="add0", domain=MS),
        helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["f"], name="dq0"),
        helper.make_node("Gelu", ["f"], ["y"], name="gelu0", domain=MS),
    ]
    model = _model(nodes, [("a", U8, a.shape)], [("y", F32), ("q", U8)],
                   dict(s=a_scale, z=a_zp, s2=np.float32(0.1)))
    rewritten = qoperator_to_qdq(model)
    assert [o.domain for o in rewritten.opset_import] == ["", MS]
    assert _ops(rewritten)[-1] == "Gelu"
    ref, got = _run(model, {"a": a}, optimize=True), _run(rewritten, {"a": a}, optimize=False)
    _compare("q", ref["q"], got["q"], rtol=0, atol=0)
    # one step (0.1) of q through Gelu, whose slope is below 1.13
    np.testing.assert_allclose(got["y"], ref["y"], atol=0.113)


def test_qoperator_nodes_inside_if_branches_are_rewritten():
    rng = np.random.default_rng(20)
    a, b = _rand_q(rng, (2, 6), U8), _rand_q(rng, (2, 6), U8)
    params = ["s", "z", "b", "s", "z", "s2", "z"]

    def branch(op, name):
        node = helper.make_node(op, ["a"] + params, [f"{name}_out"], name=name, domain=MS)
        out = helper.make_tensor_value_info(f"{name}_out", U8, None)
        return helper.make_graph([node], name, [], [out])

    node = helper.make_node("If", ["cond"], ["y"], name="if0",
                            then_branch=branch("QLinearAdd", "then_add"),
                            else_branch=branch("QLinearMul", "else_mul"))
    model = _model([node], [("cond", TensorProto.BOOL, []), ("a", U8, a.shape)], [("y", U8)],
                   dict(s=np.float32(0.05), z=np.uint8(128), b=b, s2=np.float32(0.08)))
    rewritten = qoperator_to_qdq(model)
    _assert_canonical(model, rewritten)
    assert [o.domain for o in rewritten.opset_import] == [""]
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "a": a}
        ref, got = _run(model, feeds, optimize=True), _run(rewritten, feeds, optimize=False)
        _compare(f"y[{cond}]", ref["y"], got["y"], rtol=0, atol=0)


@pytest.mark.parametrize("op,domain", [("QLinearReduceMean", MS), ("QAttention", MS),
                                       ("QLinearFoo", "")])
def test_unsupported_quantized_op_raises_naming_the_node(op, domain):
    node = helper.make_node(op, ["x", "s", "z", "s", "z"], ["y"], name="the_culprit", domain=domain)
    model = _model([node], [("x", U8, [2, 3])], [("y", U8)], dict(s=np.float32(1), z=np.uint8(0)))
    with pytest.raises(QCompilerError) as e:
        qoperator_to_qdq(model)
    msg = str(e.value)
    assert "'the_culprit'" in msg and op in msg and "QuantFormat.QDQ" in msg
    assert "\n" not in msg


def test_unsupported_layout_raises_naming_the_node():
    """Per-column b_scale with an (M, 1) bias cannot be one per-axis DequantizeLinear."""
    rng = np.random.default_rng(21)
    node = helper.make_node("QGemm", ["a", "as", "az", "b", "bs", "bz", "c", "ys", "yz"], ["y"],
                            name="gemm_bad_bias", domain=MS, transB=1)
    model = _model([node], [("a", U8, [3, 4])], [("y", U8)],
                   dict(**{"as": np.float32(0.1)}, az=np.uint8(0), b=_rand_q(rng, (5, 4), I8),
                        bs=np.full(5, 0.1, np.float32), bz=np.zeros(5, np.int8),
                        c=np.zeros((3, 1), np.int32), ys=np.float32(1), yz=np.uint8(0)))
    with pytest.raises(QCompilerError, match="gemm_bad_bias"):
        qoperator_to_qdq(model)


def test_model_without_qoperator_ops_is_returned_unchanged():
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    model = _model([node], [("x", F32, [2])], [("y", F32)])
    rewritten = qoperator_to_qdq(model)
    assert rewritten is not model
    assert rewritten.SerializeToString() == model.SerializeToString()


# ---- models quantized by onnxruntime ---------------------------------------------------------
class _SmallCNN(torch.nn.Module):
    """conv, depthwise conv, residual add, avg pool, Linear -- the ops ORT turns into QOperators."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 8, 1)
        self.pool = torch.nn.AvgPool2d(2)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        z = self.pw(torch.relu(self.dw(y))) + y
        return self.fc(torch.flatten(self.pool(z), 1))


class _Mixer(torch.nn.Module):
    """sigmoid, leaky relu, concat, mul, global pool, matmul, softmax."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.w = torch.nn.Parameter(torch.randn(6, 5) * 0.3)

    def forward(self, x):
        y = self.conv(x)
        act = torch.cat([torch.sigmoid(y), torch.nn.functional.leaky_relu(y, 0.1)], 1)
        c = act * y.repeat(1, 2, 1, 1)
        g = torch.nn.functional.adaptive_avg_pool2d(c, 1).flatten(1)
        m = torch.matmul(c.flatten(2).transpose(1, 2)[..., :6], self.w)
        return torch.softmax(m, -1), g


def _export(module: torch.nn.Module, shape, path) -> str:
    torch.manual_seed(0)
    module = module.eval()
    for p in module.parameters():  # deterministic weights independent of construction order
        torch.nn.init.normal_(p, std=0.3)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["output"],
                          dynamic_axes={"x": {0: "batch"}})
    return str(path)


def _quantize_static(float_path, out_path, shape, per_channel, activation_type):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.standard_normal(shape).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(float_path, str(out_path), Reader(), quant_format=QuantFormat.QOperator,
                    per_channel=per_channel, activation_type=activation_type,
                    weight_type=QuantType.QInt8)
    return onnx.load(str(out_path))


@pytest.fixture(scope="module")
def float_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("float")
    return {"cnn": (_export(_SmallCNN(), (1, 3, 8, 8), d / "cnn.onnx"), (2, 3, 8, 8)),
            "mixer": (_export(_Mixer(), (1, 4, 6, 6), d / "mixer.onnx"), (1, 4, 6, 6))}


@pytest.mark.parametrize("name", ["cnn", "mixer"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("act", ["QUInt8", "QInt8"])
def test_onnxruntime_quantized_models(float_models, tmp_path, name, per_channel, act):
    from onnxruntime.quantization import QuantType

    path, shape = float_models[name]
    qmodel = _quantize_static(path, tmp_path / "q.onnx", shape, per_channel, QuantType[act])
    expected = {"cnn": {"QLinearConv", "QLinearAdd", "QLinearAveragePool", "QGemm"},
                "mixer": {"QLinearConv", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
                          "QLinearMul", "QLinearGlobalAveragePool", "QLinearMatMul",
                          "QLinearSoftmax"}}[name]
    assert expected <= set(_ops(qmodel)), _ops(qmodel)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    # The float graph outputs are DequantizeLinear of quantized tensors that are compared
    # step-wise, so they may differ by one step of the output scale.
    inits = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    outputs = {o.name for o in qmodel.graph.output}
    step = max(float(inits[n.input[1]]) for n in qmodel.graph.node
               if n.op_type == "DequantizeLinear" and n.output[0] in outputs)
    rewritten = check_rewrite(qmodel, {"x": x}, rtol=0, atol=step * 1.001, min_distinct=4)
    assert [o.domain for o in rewritten.opset_import] == [""]


def test_onnxruntime_dynamic_quantization_integer_ops(float_models, tmp_path):
    """quantize_dynamic emits ConvInteger/MatMulInteger; their int32 outputs must be bit-exact."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, shape = float_models["cnn"]
    quantize_dynamic(path, str(tmp_path / "dyn.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    qmodel = onnx.load(str(tmp_path / "dyn.onnx"))
    assert {"ConvInteger", "MatMulInteger"} <= set(_ops(qmodel)), _ops(qmodel)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    check_rewrite(qmodel, {"x": x}, rtol=1e-5, atol=1e-5)


def test_rewritten_model_runs_in_tvm_relax(float_models, tmp_path):
    """The point of the rewrite: TVM's ONNX importer takes the QDQ form and computes the same."""
    import tvm
    from onnxruntime.quantization import QuantType
    from tvm.relax.frontend.onnx import from_onnx

    path, shape = float_models["cnn"]
    qmodel = _quantize_static(path, tmp_path / "q.onnx", shape, True, QuantType.QInt8)
    rewritten = qoperator_to_qdq(qmodel)
    mod = from_onnx(rewritten, keep_params_in_input=False)
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = _run(rewritten, {"x": x}, optimize=False)["output"]
    _compare("output", ref, got, rtol=0, atol=1e-6)
