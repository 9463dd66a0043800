"""int8 conv2d (ResNet / MobileNet layers, batch 1): qcompiler against ONNX Runtime, same run, with the peak.

    python benchmarks/conv.py [--layers C:H:K:R:stride:pad:groups,...] [--threads 2] [--json out.json]

Every model: u8 activations (per-tensor), int8 per-channel weights (zp 0), int32 bias, requantized u8
output. Implementations, each in its own subprocess, all on --threads threads:
  qcompiler-qdq         ONNX QDQ model, NCHW as ONNX is: DequantizeLinear(x) -> Conv(DequantizeLinear(W, axis 0),
                        DequantizeLinear(bias int32, scale x_scale*w_scale)) -> QuantizeLinear, compiled by
                        qcompiler.compile
  qcompiler-qdq-nhwc    the same QDQ conv with NHWC graph I/O (Transposes around it, each between its own
                        DequantizeLinear/QuantizeLinear, as a layer inside an NHWC network sees it): qcompiler
                        keeps the conv channels-last, so the Transposes cancel
  ort-qdq-nchw          ONNX Runtime on the same QDQ model (fused to QLinearConv; with NCHW graph I/O ORT
                        adds Transposes to its NHWC kernel)
  ort-qlinearconv-nhwc  ONNX Runtime on com.microsoft.QLinearConv(channels_last=1): NHWC in and out, the
                        kernel ORT uses inside, without the Transposes
The faster correct ORT form of each layer is the peer ("vs best ORT"). Outputs are checked against an
exact integer numpy reference (within 1 requantization step).
ops = 2 * N * K * C/groups * R * S * OH * OW.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also clears OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE before numpy loads)
import numpy as np  # noqa: E402

#: (C, H(=W), K, R(=S), stride, pad, groups)
DEFAULT_LAYERS = [
    (64, 56, 64, 3, 1, 1, 1),      # ResNet-18/34 conv2_x
    (128, 28, 128, 3, 1, 1, 1),    # conv3_x
    (256, 14, 256, 3, 1, 1, 1),    # conv4_x
    (64, 56, 128, 3, 2, 1, 1),     # conv3_1, strided
    (64, 56, 256, 1, 1, 0, 1),     # ResNet-50 1x1 expansion
    (256, 28, 512, 1, 1, 0, 1),    # 1x1 projection
    (32, 112, 32, 3, 1, 1, 32),    # MobileNet depthwise
    (96, 56, 96, 3, 1, 1, 96),     # MobileNet depthwise
]
IMPLS = ["qcompiler-qdq", "qcompiler-qdq-nhwc", "ort-qdq-nchw", "ort-qlinearconv-nhwc"]
ORT_IMPLS = ["ort-qdq-nchw", "ort-qlinearconv-nhwc"]
#: Geometric-mean ratios reported at the end: (implementation, reference or None = best ORT, label).
GEOMEANS = [
    ("qcompiler-qdq", None, "qcompiler-qdq / best ORT"),
    ("qcompiler-qdq", "ort-qdq-nchw", "qcompiler-qdq / ORT on the same QDQ model"),
    ("qcompiler-qdq-nhwc", None, "qcompiler-qdq-nhwc / best ORT"),
    ("ort-qlinearconv-nhwc", "ort-qdq-nchw", "ORT NHWC / ORT QDQ NCHW"),
]
X_SCALE = np.float32(0.02)
Y_ZERO_POINT = 128


def layer_name(C, H, K, R, stride, pad, groups) -> str:
    kind = "dw " if groups == C and groups > 1 else (f"g{groups} " if groups > 1 else "")
    return f"{H}x{H}x{C} {kind}{R}x{R}" + (f"/s{stride}" if stride > 1 else "") + f" ->{K}"


def out_size(H, R, stride, pad) -> int:
    return (H + 2 * pad - R) // stride + 1


def exact_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """Integer conv2d, N=1, NCHW x (already minus its zero point, so zero padding is exact), OIHW w."""
    C, H, W = x.shape
    K, Cg, R, S = w.shape
    G, Kg = groups, K // groups
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (R, S), axis=(1, 2))[:, ::stride, ::stride]
    OH, OW = win.shape[1:3]
    win = win.reshape(G, Cg, OH, OW, R, S)
    bound = float(np.abs(x).max(initial=0)) * float(np.abs(w).max(initial=0)) * Cg * R * S
    assert bound < 2.0 ** 53, "float64 would not be exact"
    out = np.einsum("gcxyrs,gkcrs->gkxy", win, w.reshape(G, Kg, Cg, R, S).astype(np.float64), optimize=True)
    return np.rint(out).reshape(K, OH, OW).astype(np.int64)


def make_case(C, H, K, R, stride, pad, groups, x_zero_point, seed, weight_bits: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (1, C, H, H), dtype=np.uint8)
    low, high = harness.weight_range(weight_bits)
    w = rng.integers(low, high + 1, (K, C // groups, R, R), dtype=np.int8)
    w_scale = (0.001 + 0.01 * rng.random(K)).astype(np.float32)
    bias = rng.integers(-5000, 5000, K).astype(np.int32)            # quantized with scale x_scale * w_scale
    acc = exact_conv(x[0].astype(np.int64) - x_zero_point, w, stride, pad, groups) + bias[:, None, None]
    y_scale = np.float32(float(X_SCALE) * float(np.std(acc * w_scale.astype(np.float64)[:, None, None])) / 40.0)
    mult = (np.float64(X_SCALE) * w_scale.astype(np.float64) / np.float64(y_scale))[:, None, None]
    ref = harness.requantize_reference(acc, mult, Y_ZERO_POINT)[None]
    return {"x": x, "w": w, "w_scale": w_scale, "bias": bias, "x_zero_point": x_zero_point,
            "y_scale": y_scale, "ref": ref}


def _common_inits(case):
    from onnx import numpy_helper
    K = case["w"].shape[0]
    return [numpy_helper.from_array(case["w"], "w_q"), numpy_helper.from_array(case["w_scale"], "w_scale"),
            numpy_helper.from_array(np.zeros(K, np.int8), "w_zp"),
            numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(case["x_zero_point"], np.uint8), "x_zp"),
            numpy_helper.from_array(np.array(case["y_scale"], np.float32), "y_scale"),
            numpy_helper.from_array(np.array(Y_ZERO_POINT, np.uint8), "y_zp"),
            numpy_helper.from_array(case["bias"], "bias_q")]


def qdq_conv_model(case, R, stride, pad, groups, channels_last_io: bool = False):
    """What ORT's quantize_static(QDQ, per_channel=True) writes for a conv, u8 activations; with
    ``channels_last_io`` the graph takes and returns NHWC through Transposes wrapped in Q/DQ."""
    from onnx import TensorProto, helper, numpy_helper
    _, C, H, _ = case["x"].shape
    K = case["w"].shape[0]
    OH = out_size(H, R, stride, pad)
    bias_scale = (X_SCALE * case["w_scale"]).astype(np.float32)
    inits = _common_inits(case) + [numpy_helper.from_array(bias_scale, "bias_scale"),
                                   numpy_helper.from_array(np.zeros(K, np.int32), "bias_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zp"], ["x_f"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_f"], axis=0),
             helper.make_node("DequantizeLinear", ["bias_q", "bias_scale", "bias_zp"], ["bias_f"], axis=0),
             helper.make_node("Conv", ["x_nchw" if channels_last_io else "x_f", "w_f", "bias_f"], ["y_f"],
                              kernel_shape=[R, R], strides=[stride, stride], pads=[pad] * 4, group=groups),
             helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zp"], ["y_nchw" if channels_last_io else "y"])]
    x_shape, y_shape = [1, C, H, H], [1, K, OH, OH]
    if channels_last_io:
        nodes.insert(3, helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]))
        nodes += [helper.make_node("DequantizeLinear", ["y_nchw", "y_scale", "y_zp"], ["y_nchw_f"]),
                  helper.make_node("Transpose", ["y_nchw_f"], ["y_nhwc_f"], perm=[0, 2, 3, 1]),
                  helper.make_node("QuantizeLinear", ["y_nhwc_f", "y_scale", "y_zp"], ["y"])]
        x_shape, y_shape = [1, H, H, C], [1, OH, OH, K]
    g = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def nhwc_qlinearconv_model(case, R, stride, pad, groups):
    """ORT's own NHWC int8 conv: com.microsoft.QLinearConv with channels_last=1 (weights stay OIHW)."""
    from onnx import TensorProto, helper
    _, C, H, _ = case["x"].shape
    K = case["w"].shape[0]
    OH = out_size(H, R, stride, pad)
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w_q", "w_scale", "w_zp", "y_scale", "y_zp",
                                            "bias_q"], ["y"], domain="com.microsoft", channels_last=1,
                            kernel_shape=[R, R], strides=[stride, stride], pads=[pad] * 4, group=groups)
    g = helper.make_graph([node], "qlinearconv_nhwc",
                          [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, H, H, C])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, OH, OH, K])],
                          _common_inits(case))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=9)


def parse_layers(text: str | None) -> list[tuple]:
    if not text:
        return DEFAULT_LAYERS
    layers = []
    for item in text.split(","):
        vals = tuple(int(v) for v in item.split(":"))
        if len(vals) != 7:
            raise SystemExit(f"--layers: {item!r} is not C:H:K:R:stride:pad:groups")
        layers.append(vals)
    return layers


def run_layer(layer, args, runner: harness.Runner, suite: harness.Suite, impls: list[str]) -> None:
    C, H, K, R, stride, pad, groups = layer
    name = layer_name(*layer)
    OH = out_size(H, R, stride, pad)
    ops = 2.0 * K * (C // groups) * R * R * OH * OH
    seed = sum(v * 1009 ** i for i, v in enumerate(layer)) % (2 ** 31)
    case = make_case(C, H, K, R, stride, pad, groups, args.x_zero_point, seed=seed, weight_bits=args.weight_bits)
    wd = runner.workdir
    tag = f"conv_{C}_{H}_{K}_{R}_{stride}_{pad}_{groups}"
    import onnx
    qdq_path, nhwc_path = wd / f"{tag}_qdq.onnx", wd / f"{tag}_nhwc.onnx"
    onnx.save(qdq_conv_model(case, R, stride, pad, groups), qdq_path)
    onnx.save(nhwc_qlinearconv_model(case, R, stride, pad, groups), nhwc_path)
    nchw_npz, nhwc_npz = wd / f"{tag}_x_nchw.npz", wd / f"{tag}_x_nhwc.npz"
    np.savez(nchw_npz, x=case["x"])
    np.savez(nhwc_npz, x=np.ascontiguousarray(case["x"].transpose(0, 2, 3, 1)))

    def to_nchw(y):
        return y.transpose(0, 3, 1, 2)

    qdq_nhwc_path = wd / f"{tag}_qdq_nhwc.onnx"
    onnx.save(qdq_conv_model(case, R, stride, pad, groups, channels_last_io=True), qdq_nhwc_path)
    jobs = []
    for impl in impls:
        if impl in ("qcompiler-qdq", "qcompiler-qdq-nhwc"):
            nhwc = impl.endswith("nhwc")
            so = wd / f"{tag}_{impl}.so"
            error, secs = harness.compile_with_qcompiler(qdq_nhwc_path if nhwc else qdq_path, so, args.target)
            compiled = {"seconds": secs, "error": error, "compiler_sources_sha1": harness.compiler_fingerprint()}
            print(f"  {name:<24} {impl:<22} compiled in {secs:.1f} s" + (f": {error}" if error else ""))
            if error:
                suite.add(name, impl, ops, None, None, error=error)["compile"] = compiled
                continue
            jobs.append(harness.Job(impl, [("", {"kind": "qcompiler", "library": str(so),
                                                 "inputs": str(nhwc_npz if nhwc else nchw_npz)})],
                                    case["ref"], 1, post=to_nchw if nhwc else None, compile=compiled))
        elif impl == "ort-qdq-nchw":
            jobs.append(harness.Job(impl, [("", {"kind": "ort", "model": str(qdq_path), "inputs": str(nchw_npz),
                                                 "outputs": {"y": [[1, K, OH, OH], "uint8"]}})], case["ref"], 1))
        elif impl == "ort-qlinearconv-nhwc":
            jobs.append(harness.Job(impl, [("", {"kind": "ort", "model": str(nhwc_path), "inputs": str(nhwc_npz),
                                                 "outputs": {"y": [[1, OH, OH, K], "uint8"]}})], case["ref"], 1,
                                    post=to_nchw))
    harness.run_jobs(runner, suite, name, ops, jobs, args.rounds)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        harness.worker_main(sys.argv[2], {})
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--layers", default=None, help="comma-separated C:H:K:R:stride:pad:groups (default: 8 layers)")
    ap.add_argument("--x-zero-point", type=int, default=128, help="activation zero point (default 128)")
    harness.add_common_args(ap)
    args = ap.parse_args(argv)
    impls = [i for i in IMPLS if not args.only or i in args.only.split(",")]
    header = (f"# int8 conv2d (H x W x C, R x S[/stride] -> K), N=1, {args.threads} threads, GOP/s = "
              f"2*K*C/groups*R*S*OH*OW / median time; % peak of the {args.threads}-thread int8 peak (the instruction of the target's kernels) measured "
              "beside each layer (peak beside: the highest of the probes run before each round; start-up probe {peak} GOP/s); vs best ORT = median / faster correct ORT form of that layer; "
              "load = other processes' CPU use")
    return harness.run_suite("conv", "int8 conv2d (N=1)", args, __file__, ORT_IMPLS, parse_layers(args.layers),
                             lambda layer, runner, suite: run_layer(layer, args, runner, suite, impls),
                             header, GEOMEANS, "layers")


if __name__ == "__main__":
    sys.exit(main())
