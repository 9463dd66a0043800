"""End-to-end latency of the test-zoo models: qcompiler built for each CPU class this host can run
(default: the host itself and every named class below it, e.g. x86-avx512-vnni, x86-avx512 and
x86-avx2 on a Zen 4), and ONNX Runtime on the same quantized ONNX file. Each implementation in its
own process, 2 threads.

    python benchmarks/models.py [--models cnn,transformer] [--target host,x86-avx2] [--repeat 15]
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

VARIANTS = {  # model -> zoo build kwargs (the peers' best int8 form on x86: uint8 activations)
    "cnn": dict(quant_format="qdq", activation="uint8", per_channel=True, op_types="all"),
    "transformer": dict(quant_format="qdq", activation="uint8", per_channel=True, op_types=("MatMul",)),
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
    times = list(model.benchmark(**feeds, repeat=spec["repeat"]))
print(json.dumps(times))
"""


def measure(impl: str, model: str, inputs: str, threads: int, repeat: int) -> np.ndarray:
    spec = json.dumps(dict(impl=impl, model=model, inputs=inputs, threads=threads, repeat=repeat))
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", WORKER, spec], capture_output=True, text=True, env=env, check=True)
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,transformer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--target", default=None,
                    help="comma-separated targets to build for (host, a CPU class such as x86-avx2, an LLVM CPU); "
                         "default: host and every CPU class this host can run")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "models-vm.json"))
    args = ap.parse_args(argv)
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
            zm = mz.build(name, tmp, **VARIANTS[name])
            inputs = tmp / f"{name}_inputs.npz"
            np.savez(inputs, **zm.make_inputs(1, seed=3)[0])
            libs = {"onnxruntime": str(zm.quant_path)}
            for target in names:
                lib = tmp / f"{name}_qcompiler-{target}.so"
                qcompiler.compile(str(zm.quant_path), lib, target=None if target == "host" else target)
                libs[f"qcompiler-{target}"] = str(lib)
            for impl, path in libs.items():
                t = measure(impl, path, str(inputs), args.threads, args.repeat) * 1e3
                results.append(dict(model=name, impl=impl, median_ms=float(np.median(t)), min_ms=float(t.min()),
                                    max_ms=float(t.max()), times_ms=t.tolist()))
                print(f"{name:12s} {impl:26s} median {np.median(t):8.4f} ms  [{t.min():.4f}-{t.max():.4f}]", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(dict(threads=args.threads, cpu=harness.cpu_model(),
                                               results=results), indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
