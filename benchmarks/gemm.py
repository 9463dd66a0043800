"""int8 GEMM: qcompiler against ONNX Runtime and torch, measured in the same run, with the measured peak.

    python benchmarks/gemm.py [--shapes 512x512x512,128x768x3072] [--threads 2] [--json out.json]

Shapes are M x K x N (M activation rows, K reduction, N outputs). Implementations, each in its own
subprocess, all on --threads threads:
  qcompiler-qdq      ONNX QDQ model u8 x -> DequantizeLinear -> MatMul(DequantizeLinear(W s8, per-channel
                     scales on axis 1, zp 0)) -> QuantizeLinear u8, compiled by qcompiler.compile
  qcompiler-bare     ONNX MatMulInteger(x u8, W s8, zp 0, 0) -> int32, compiled by qcompiler.compile
  ort-matmulinteger  ONNX Runtime on the MatMulInteger model
  ort-qdq            ONNX Runtime on the QDQ model (u8 activations: ORT fuses it into QLinearMatMul)
  torch-int-mm       torch._int_mm(a s8, b s8) -> int32 (b row-major and column-major tried, best kept)
  torch-qlinear      torch.ops.quantized.linear (quint8 input, per-channel qint8 weight, quint8 output),
                     engines x86 / onednn / fbgemm tried, best kept
Outputs are checked against an exact integer numpy reference: int32 outputs exactly, requantized u8
outputs within 1 step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also clears OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE before numpy loads)
import numpy as np  # noqa: E402

DEFAULT_SHAPES = [(512, 512, 512), (1024, 1024, 1024), (128, 768, 768), (128, 768, 3072), (128, 3072, 768)]
IMPLS = ["qcompiler-qdq", "qcompiler-bare", "ort-matmulinteger", "ort-qdq", "torch-int-mm", "torch-qlinear"]
ORT_IMPLS = ["ort-matmulinteger", "ort-qdq"]
#: Geometric-mean ratios reported at the end: (implementation, reference or None = best ORT, label).
GEOMEANS = [
    ("qcompiler-qdq", None, "qcompiler-qdq / best ORT"),
    ("qcompiler-qdq", "ort-qdq", "qcompiler-qdq / ORT on the same QDQ model"),
    ("qcompiler-bare", "ort-matmulinteger", "qcompiler-bare / ort-matmulinteger"),
    ("torch-int-mm", None, "torch-int-mm / best ORT"),
    ("torch-qlinear", None, "torch-qlinear / best ORT"),
]
TORCH_ENGINES = ["x86", "onednn", "fbgemm"]
X_SCALE = np.float32(0.02)
Y_ZERO_POINT = 128


# --------------------------------------------------------------------------------------------------
# data, exact reference, models
# --------------------------------------------------------------------------------------------------
def make_case(M: int, K: int, N: int, x_zero_point: int, seed: int, weight_bits: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (M, K), dtype=np.uint8)
    low, high = harness.weight_range(weight_bits)
    w = rng.integers(low, high + 1, (K, N), dtype=np.int8)       # symmetric per-channel int8 weights
    w_scale = (0.001 + 0.01 * rng.random(N)).astype(np.float32)
    acc = harness.exact_matmul(x.astype(np.int64) - x_zero_point, w)     # what the QDQ graph computes, in integers
    # output scale: the requantized values spread over ~+-100 steps around the zero point (few clip)
    y_scale = np.float32(float(X_SCALE) * float(np.std(acc * w_scale.astype(np.float64))) / 40.0)
    mult = (np.float64(X_SCALE) * w_scale.astype(np.float64)) / np.float64(y_scale)
    a_s8 = (x.astype(np.int16) - 128).astype(np.int8)              # the same data as int8, for torch._int_mm
    return {"x": x, "w": w, "w_scale": w_scale, "x_zero_point": x_zero_point, "y_scale": y_scale,
            "ref_qdq": harness.requantize_reference(acc, mult, Y_ZERO_POINT),
            "ref_bare": harness.exact_matmul(x, w), "a_s8": a_s8, "ref_int_mm": harness.exact_matmul(a_s8, w)}


def qdq_matmul_model(case: dict):
    from onnx import TensorProto, helper, numpy_helper
    x, w = case["x"], case["w"]
    (M, K), N = x.shape, w.shape[1]
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(case["w_scale"], "w_scale"),
             numpy_helper.from_array(np.zeros(N, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(case["x_zero_point"], np.uint8), "x_zp"),
             numpy_helper.from_array(np.array(case["y_scale"], np.float32), "y_scale"),
             numpy_helper.from_array(np.array(Y_ZERO_POINT, np.uint8), "y_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zp"], ["x_f"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_f"], axis=1),
             helper.make_node("MatMul", ["x_f", "w_f"], ["y_f"]),
             helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zp"], ["y"])]
    g = helper.make_graph(nodes, "qdq_matmul", [helper.make_tensor_value_info("x", TensorProto.UINT8, [M, K])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [M, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def matmulinteger_model(case: dict):
    from onnx import TensorProto, helper, numpy_helper
    x, w = case["x"], case["w"]
    (M, K), N = x.shape, w.shape[1]
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
             numpy_helper.from_array(np.array(0, np.int8), "w_zp")]
    g = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w_q", "x_zp", "w_zp"], ["y"])], "matmulinteger",
                          [helper.make_tensor_value_info("x", TensorProto.UINT8, [M, K])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


# --------------------------------------------------------------------------------------------------
# torch workers (run in the subprocess)
# --------------------------------------------------------------------------------------------------
def _torch(threads: int):
    import torch
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch


def torch_int_mm_worker(spec: dict) -> dict:
    torch = _torch(spec["threads"])
    if not hasattr(torch, "_int_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no torch._int_mm")
    feeds = np.load(spec["inputs"])
    a = torch.from_numpy(feeds["a_s8"])
    w = feeds["w"]
    b = torch.from_numpy(w) if spec["b_layout"] == "row-major" else torch.from_numpy(np.ascontiguousarray(w.T)).t()
    with torch.inference_mode():
        out = torch._int_mm(a, b)
        times, number, foreign = harness.time_callable(lambda: torch._int_mm(a, b), spec["repeat"], spec["min_time"])
    return {"times": times, "number": number, "foreign_load": foreign, "outputs": {"y": out.numpy()},
            "info": {"torch": torch.__version__, "b_layout": spec["b_layout"]}}


def torch_qlinear_worker(spec: dict) -> dict:
    torch = _torch(spec["threads"])
    engine = spec["engine"]
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine {engine!r} not in this torch build "
                           f"({torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = engine
    feeds = np.load(spec["inputs"])
    x, w, w_scale = feeds["x"], feeds["w"], feeds["w_scale"]
    K, N = w.shape
    p = spec["params"]
    qweight = torch._make_per_channel_quantized_tensor(
        torch.from_numpy(np.ascontiguousarray(w.T)), torch.from_numpy(w_scale.astype(np.float64)),
        torch.zeros(N, dtype=torch.int64), 0)
    lin = torch.ao.nn.quantized.Linear(K, N, bias_=False, dtype=torch.qint8)
    lin.set_weight_bias(qweight, None)
    packed = lin._packed_params._packed_params     # what the module's forward passes to the op
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), p["x_scale"], p["x_zero_point"])
    op = torch.ops.quantized.linear
    y_scale, y_zp = p["y_scale"], p["y_zero_point"]
    with torch.inference_mode():
        out = op(xq, packed, y_scale, y_zp)
        times, number, foreign = harness.time_callable(lambda: op(xq, packed, y_scale, y_zp),
                                                       spec["repeat"], spec["min_time"])
    return {"times": times, "number": number, "foreign_load": foreign, "outputs": {"y": out.int_repr().numpy()},
            "info": {"torch": torch.__version__, "engine": engine, "output_dtype": str(out.dtype)}}


WORKERS = {"torch-int-mm": torch_int_mm_worker, "torch-qlinear": torch_qlinear_worker}


# --------------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------------
def parse_shapes(text: str | None) -> list[tuple[int, int, int]]:
    if not text:
        return DEFAULT_SHAPES
    shapes = []
    for item in text.split(","):
        dims = tuple(int(v) for v in item.lower().split("x"))
        if len(dims) == 1:
            dims = dims * 3
        if len(dims) != 3:
            raise SystemExit(f"--shapes: {item!r} is not MxKxN")
        shapes.append(dims)
    return shapes


def run_shape(M: int, K: int, N: int, args, runner: harness.Runner, suite: harness.Suite, impls: list[str]) -> None:
    name = f"{M}x{K}x{N}"
    ops = 2.0 * M * N * K
    case = make_case(M, K, N, args.x_zero_point, seed=M * 1_000_003 + K * 1009 + N, weight_bits=args.weight_bits)
    wd = runner.workdir
    import onnx
    qdq_path, mmi_path = wd / f"gemm_{name}_qdq.onnx", wd / f"gemm_{name}_matmulinteger.onnx"
    onnx.save(qdq_matmul_model(case), qdq_path)
    onnx.save(matmulinteger_model(case), mmi_path)
    x_npz, torch_npz = wd / f"gemm_{name}_x.npz", wd / f"gemm_{name}_torch.npz"
    np.savez(x_npz, x=case["x"])
    np.savez(torch_npz, x=case["x"], w=case["w"], w_scale=case["w_scale"], a_s8=case["a_s8"])
    params = {"x_scale": float(X_SCALE), "x_zero_point": int(case["x_zero_point"]),
              "y_scale": float(case["y_scale"]), "y_zero_point": Y_ZERO_POINT}

    jobs = []
    for impl in impls:
        if impl in ("qcompiler-qdq", "qcompiler-bare"):
            if impl == "qcompiler-qdq":
                src, ref, tol = qdq_path, case["ref_qdq"], 1
            else:
                src, ref, tol = mmi_path, case["ref_bare"], 0
            so = wd / (src.stem + ".so")
            error, secs = harness.compile_with_qcompiler(src, so, args.target)
            compiled = {"seconds": secs, "error": error, "compiler_sources_sha1": harness.compiler_fingerprint()}
            print(f"  {name:<24} {impl:<22} compiled in {secs:.1f} s" + (f": {error}" if error else ""))
            if error:
                suite.add(name, impl, ops, None, None, error=error)["compile"] = compiled
                continue
            jobs.append(harness.Job(impl, [("", {"kind": "qcompiler", "library": str(so), "inputs": str(x_npz)})],
                                    ref, tol, compile=compiled))
        elif impl == "ort-matmulinteger":
            jobs.append(harness.Job(impl, [("", {"kind": "ort", "model": str(mmi_path), "inputs": str(x_npz),
                                                 "outputs": {"y": [[M, N], "int32"]}})], case["ref_bare"], 0))
        elif impl == "ort-qdq":
            jobs.append(harness.Job(impl, [("", {"kind": "ort", "model": str(qdq_path), "inputs": str(x_npz),
                                                 "outputs": {"y": [[M, N], "uint8"]}})], case["ref_qdq"], 1))
        elif impl == "torch-int-mm":
            jobs.append(harness.Job(impl, [(f"b {lay}", {"kind": "torch-int-mm", "inputs": str(torch_npz),
                                                         "b_layout": lay}) for lay in ("row-major", "col-major")],
                                    case["ref_int_mm"], 0))
        elif impl == "torch-qlinear":
            jobs.append(harness.Job(impl, [(f"engine={e}", {"kind": "torch-qlinear", "inputs": str(torch_npz),
                                                            "engine": e, "params": params}) for e in TORCH_ENGINES],
                                    case["ref_qdq"], 1))
    harness.run_jobs(runner, suite, name, ops, jobs, args.rounds)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        harness.worker_main(sys.argv[2], WORKERS)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--shapes", default=None, help="comma-separated MxKxN (default: the 5 standard shapes)")
    ap.add_argument("--x-zero-point", type=int, default=128, help="activation zero point of the QDQ models")
    harness.add_common_args(ap)
    args = ap.parse_args(argv)
    impls = [i for i in IMPLS if not args.only or i in args.only.split(",")]
    header = (f"# int8 GEMM (M x K x N), {args.threads} threads, GOP/s = 2*M*N*K / median time; "
              f"% peak of the {args.threads}-thread int8 peak (the instruction of the target's kernels) measured beside each shape (peak beside: the highest of the probes run before each round; start-up probe {{peak}} GOP/s); "
              "vs best ORT = median / best correct ORT variant of that shape; load = other processes' CPU use")
    return harness.run_suite("gemm", "int8 GEMM", args, __file__, ORT_IMPLS, parse_shapes(args.shapes),
                             lambda shape, runner, suite: run_shape(*shape, args, runner, suite, impls),
                             header, GEOMEANS, "shapes")


if __name__ == "__main__":
    sys.exit(main())
