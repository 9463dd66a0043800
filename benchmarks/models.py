"""End-to-end latency of the test-zoo models: qcompiler built for each CPU class this host can run
(default: the host itself and every named class below it, e.g. x86-avx512-vnni, x86-avx512 and
x86-avx2 on a Zen 4), and ONNX Runtime on the same quantized ONNX file. Each implementation in its
own process, 2 threads. Every implementation's output on the benchmark input is compared with the
exact reference (onnx's ReferenceEvaluator, tests/exact_reference.py): identical share and max steps,
beside its speed. The ``-reduce-range`` variants have 7-bit weights (``quantize_static(reduce_range=
True)``), on which ONNX Runtime's AVX2 kernels cannot saturate: the like-for-like exact comparison on
CPUs without VNNI.

    python benchmarks/models.py [--models cnn,transformer,cnn-reduce-range] [--target host,x86-avx2] [--repeat 15]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402  (benchmarks/harness.py)

_CNN = dict(quant_format="qdq", activation="uint8", per_channel=True, op_types="all")
_TRANSFORMER = dict(quant_format="qdq", activation="uint8", per_channel=True, op_types=("MatMul",))
VARIANTS = {  # benchmark name -> (zoo model, zoo build kwargs); the peers' best int8 form on x86: u8 activations
    "cnn": ("cnn", _CNN),
    "transformer": ("transformer", _TRANSFORMER),
    "cnn-reduce-range": ("cnn", dict(_CNN, reduce_range=True)),
    "transformer-reduce-range": ("transformer", dict(_TRANSFORMER, reduce_range=True)),
}

WORKER = r"""
import json, os, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
feeds = dict(np.load(spec["inputs"]))
if spec["impl"] == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = spec["threads"]; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
    run = lambda: sess.run(None, feeds)
    np.savez(spec["outputs"], *run())
    for _ in range(20): run()
    times = []
    for _ in range(spec["repeat"]):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.05:
            run(); n += 1
        times.append((time.perf_counter() - t0) / n)
else:
    import qcompiler
    model = qcompiler.load(spec["model"], num_threads=spec["threads"])
    outputs = model(**feeds)
    np.savez(spec["outputs"], *(outputs if isinstance(outputs, (list, tuple)) else [outputs]))
    times = list(model.benchmark(**feeds, repeat=spec["repeat"]))
print(json.dumps(times))
"""


def measure(impl: str, model: str, inputs: str, outputs: str, threads: int, repeat: int) -> np.ndarray:
    """Per-run seconds of ``impl`` in its own process; its outputs on ``inputs`` go to ``outputs`` (.npz)."""
    spec = json.dumps(dict(impl=impl, model=model, inputs=inputs, outputs=outputs, threads=threads, repeat=repeat))
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", WORKER, spec], capture_output=True, text=True, env=env, check=True)
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--target", default=None,
                    help="comma-separated targets to build for (host, a CPU class such as x86-avx2, an LLVM CPU); "
                         "default: host and every CPU class this host can run")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "models-vm.json"))
    args = ap.parse_args(argv)
    import exact_reference as er
    import model_zoo as mz
    import qcompiler
    from qcompiler.target import PRESETS, can_run
    names = args.target.split(",") if args.target else ["host"] + [c for c in PRESETS if can_run(c)]
    for name in names:
        if not can_run(name):  # never run code this CPU lacks features for
            raise SystemExit(f"--target {name}: this CPU cannot run code built for it")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            if name not in VARIANTS:
                raise SystemExit(f"--models {name}: not one of {', '.join(VARIANTS)}")
            zoo_name, kwargs = VARIANTS[name]
            zm = mz.build(zoo_name, tmp, **kwargs)
            inputs = tmp / f"{name}_inputs.npz"
            feeds = zm.make_inputs(1, seed=3)[0]
            np.savez(inputs, **feeds)
            reference = er.ExactReference(zm.quant_path).run(feeds)
            scale = mz.output_scale(zm.quant_path)
            libs = {"onnxruntime": str(zm.quant_path)}
            for target in names:
                lib = tmp / f"{name}_qcompiler-{target}.so"
                qcompiler.compile(str(zm.quant_path), lib, target=None if target == "host" else target)
                libs[f"qcompiler-{target}"] = str(lib)
            for impl, path in libs.items():
                outputs = tmp / f"{name}_{impl}_outputs.npz"
                t = measure(impl, path, str(inputs), str(outputs), args.threads, args.repeat) * 1e3
                with np.load(outputs) as saved:
                    got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
                exact = mz.compare_quantized(got[0], reference[0], scale)
                results.append(dict(model=name, impl=impl, median_ms=float(np.median(t)), min_ms=float(t.min()),
                                    max_ms=float(t.max()), times_ms=t.tolist(), vs_exact_reference=exact))
                if exact["max_steps"] is not None:  # a quantized output: in steps of its scale
                    check = f"{100 * exact['identical_frac']:.2f}% identical, max {exact['max_steps']:g} steps"
                else:  # a float output (e.g. after a float LayerNorm): float rounding differs, so the size
                    span = float(np.ptp(reference[0]))
                    check = f"max |diff| {exact['max_abs_diff']:.3g} of an output range {span:.3g}"
                print(f"{name:26s} {impl:26s} median {np.median(t):8.4f} ms  [{t.min():.4f}-{t.max():.4f}]  "
                      f"vs exact reference: {check}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(dict(threads=args.threads, cpu=harness.cpu_model(),
                                               results=results), indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
