"""End-to-end latency of whole models: qcompiler int8 against the int8 peers and fp32, exactness beside speed.

Models: the zoo of ``benchmarks/models/zoo.py`` (ResNet-18/50, MobileNetV2, EfficientNet-B0, ConvNeXt-T,
RegNet, ViT-B/16, BERT-base, DistilBERT, RoBERTa, GPT-2, MiniLM-L6 with real weights, a torch
nn.TransformerEncoder; batch 1, full size; ``--size small`` for the test versions) and the tests' tiny
models (``tiny-cnn``, ``tiny-transformer`` and their ``-reduce-range`` variants with 7-bit weights, on
which ONNX Runtime's AVX2 kernels cannot saturate).

Implementations, each in its own process with the same thread count (default 2):
``qcompiler-<target>`` (the QDQ file compiled for each target: default the host and, on an AVX-512 host,
the AVX2 build ``x86-avx2`` too), ``onnxruntime-int8`` and ``openvino-int8`` (the same QDQ file; OpenVINO
is the optional ``bench`` extra), ``onnxruntime-fp32`` (the float model before quantization). Every int8
implementation's output is compared with the exact reference (onnx's ReferenceEvaluator in float64,
tests/exact_reference.py): quantized outputs in steps of their scale, float outputs by cosine similarity
and max |diff|. Also recorded: qcompiler's compile time, and with ``--roofline`` its time-weighted % of roof
(every kernel timed alone against this machine's measured ceilings).

    python benchmarks/models.py [--models resnet50,bert-base] [--target host,x86-avx2] [--repeat 15]

Writes ``benchmarks/results/models-<cpu>.json`` and ``.md`` (``--json``), with the CPU named.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "models"))
import harness  # noqa: E402  (benchmarks/harness.py)
import zoo  # noqa: E402  (benchmarks/models/zoo.py)

_CNN = dict(quant_format="qdq", activation="uint8", per_channel=True, op_types="all")
_TRANSFORMER = dict(quant_format="qdq", activation="uint8", per_channel=True, op_types=("MatMul",))
TINY = {  # benchmark name -> (tests/model_zoo.py model, its build kwargs); the peers' best int8 form: u8 activations
    "tiny-cnn": ("cnn", _CNN),
    "tiny-transformer": ("transformer", _TRANSFORMER),
    "tiny-cnn-reduce-range": ("cnn", dict(_CNN, reduce_range=True)),
    "tiny-transformer-reduce-range": ("transformer", dict(_TRANSFORMER, reduce_range=True)),
}
INT8_PEERS = ("onnxruntime-int8", "openvino-int8")

WORKER = r"""
import json, os, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
feeds = dict(np.load(spec["inputs"]))
impl, threads = spec["impl"], spec["threads"]
if impl.startswith("onnxruntime"):
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
    run = lambda: sess.run(None, feeds)
elif impl == "openvino":
    import openvino as ov
    compiled = ov.Core().compile_model(spec["model"], "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    run = lambda: [np.array(v) for v in request.infer(feeds).to_tuple()]
else:
    import qcompiler
    model = qcompiler.load(spec["model"], num_threads=threads)
    run = lambda: model(**feeds)
outputs = run()
np.savez(spec["outputs"], *(outputs if isinstance(outputs, (list, tuple)) else [outputs]))
if impl.startswith("qcompiler"):
    times = list(model.benchmark(**feeds, repeat=spec["repeat"]))
else:
    warm = time.perf_counter()
    while time.perf_counter() - warm < 0.5:
        run()
    times = []
    for _ in range(spec["repeat"]):
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < 0.05:
            run(); n += 1
        times.append((time.perf_counter() - t0) / n)
print(json.dumps(times))
"""

ROOFLINE_WORKER = r"""
import json, sys
import qcompiler
report = qcompiler.roofline(sys.argv[1], threads=int(sys.argv[2]))
print(json.dumps(report.to_json()["summary"]))
"""


def _env(threads: int) -> dict:
    return dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))


def measure(impl: str, model: str, inputs: str, outputs: str, threads: int, repeat: int) -> np.ndarray:
    """Per-run seconds of ``impl`` in its own process; its outputs on ``inputs`` go to ``outputs`` (.npz)."""
    spec = json.dumps(dict(impl=impl, model=model, inputs=inputs, outputs=outputs, threads=threads, repeat=repeat))
    out = subprocess.run([sys.executable, "-c", WORKER, spec], capture_output=True, text=True, env=_env(threads))
    if out.returncode != 0:
        raise RuntimeError(f"{impl} on {model} failed: {out.stderr.strip().splitlines()[-1:]}")
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def roofline_summary(lib: str, threads: int) -> dict:
    """qcompiler's roofline of ``lib`` in its own process: time-weighted % of roof and the top losses."""
    out = subprocess.run([sys.executable, "-c", ROOFLINE_WORKER, lib, str(threads)], capture_output=True,
                         text=True, env=_env(threads), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def agreement(got: np.ndarray, want: np.ndarray, scale: float | None) -> dict:
    """How ``got`` agrees with the exact ``want``: steps of the output scale where it has one, and always the
    cosine similarity and max |diff| (the measure for float outputs)."""
    import model_zoo as mz

    result = mz.compare_quantized(got, want, scale)
    a, b = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    result["cosine"] = float(a @ b / norm) if norm else float(np.array_equal(a, b))
    return result


def describe(check: dict) -> str:
    if check["max_steps"] is not None:  # a quantized output: in steps of its scale
        return f"{100 * check['identical_frac']:.2f}% identical, max {check['max_steps']:g} steps"
    return f"cosine {check['cosine']:.6f}, max |diff| {check['max_abs_diff']:.3g}"


def build_model(name: str, work: Path, size: str):
    """(quantized QDQ path, fp32 path, one input feed dict) of a zoo or tiny model."""
    import model_zoo as mz

    if name in TINY:
        zoo_name, kwargs = TINY[name]
        zm = mz.build(zoo_name, work, **kwargs)
        return zm.quant_path, zm.fp32_path, zm.make_inputs(1, seed=3)[0]
    zm = zoo.build(name, work, size)
    return zm.quant_path, zm.fp32_path, zm.make_inputs(1, 3)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.NAMES),
                    help=f"comma-separated, of {', '.join(zoo.NAMES + tuple(TINY))}")
    ap.add_argument("--size", default="full", choices=zoo.SIZES, help="zoo size (the tests use small)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--target", default=None,
                    help="comma-separated targets to build for (host, a CPU class such as x86-avx2, an LLVM CPU); "
                         "default: host, and x86-avx2 on a host that has more")
    ap.add_argument("--only", default=None, help="comma-separated implementations: qcompiler, onnxruntime-int8, "
                                                 "openvino-int8, onnxruntime-fp32 (default: all available)")
    ap.add_argument("--roofline", action="store_true", help="also qcompiler's time-weighted %% of roof per model")
    ap.add_argument("--no-reference", action="store_true", help="skip the exact reference (slow on full sizes)")
    ap.add_argument("--workdir", default=str(Path.home() / ".cache" / "qcompiler" / "zoo"),
                    help="where the zoo's ONNX files are cached (default ~/.cache/qcompiler/zoo)")
    ap.add_argument("--json", default=None, help="default benchmarks/results/models-<cpu>.json (+ .md beside it)")
    args = ap.parse_args(argv)
    import exact_reference as er
    import model_zoo as mz
    import qcompiler
    from qcompiler.target import can_run, host_features

    targets = args.target.split(",") if args.target else ["host"] + (["x86-avx2"] if "avx512f" in host_features() else [])
    for name in targets:
        if not can_run(name):  # never run code this CPU lacks features for
            raise SystemExit(f"--target {name}: this CPU cannot run code built for it")
    wanted = set(args.only.split(",")) if args.only else None
    peers = [p for p in (*INT8_PEERS, "onnxruntime-fp32") if wanted is None or p in wanted]
    if "openvino-int8" in peers and not _has_openvino():
        print("openvino is not installed (pip install -e '.[bench]'): openvino-int8 not measured", file=sys.stderr)
        peers.remove("openvino-int8")
    run_qcompiler = wanted is None or "qcompiler" in wanted
    work = Path(args.workdir)
    results, summary = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            if name not in zoo.NAMES and name not in TINY:
                raise SystemExit(f"--models {name}: not one of {', '.join(zoo.NAMES + tuple(TINY))}")
            quant_path, fp32_path, feeds = build_model(name, work / args.size if name in zoo.NAMES else work, args.size)
            inputs = tmp / f"{name}_inputs.npz"
            np.savez(inputs, **feeds)
            t0 = time.perf_counter()
            reference = None if args.no_reference else er.ExactReference(quant_path).run(feeds)[0]
            reference_s = time.perf_counter() - t0
            scale = mz.output_scale(quant_path)
            row = dict(model=name, size=args.size, reference_seconds=None if reference is None else reference_s,
                       impls={})
            libs: dict[str, tuple[str, str]] = {}
            if run_qcompiler:
                for target in targets:
                    lib = tmp / f"{name}_qcompiler-{target}.so"
                    t0 = time.perf_counter()
                    qcompiler.compile(str(quant_path), lib, target=None if target == "host" else target)
                    row.setdefault("compile_seconds", {})[target] = time.perf_counter() - t0
                    libs[f"qcompiler-{target}"] = ("qcompiler", str(lib))
            for peer in peers:
                libs[peer] = (peer.split("-")[0], str(fp32_path if peer.endswith("fp32") else quant_path))
            for impl, (kind, path) in libs.items():
                outputs = tmp / f"{name}_{impl}_outputs.npz"
                try:
                    t = measure(kind, path, str(inputs), str(outputs), args.threads, args.repeat) * 1e3
                except RuntimeError as err:  # a peer that cannot run a model is reported, not fatal
                    print(f"{name:22s} {impl:24s} FAILED: {err}", flush=True)
                    row["impls"][impl] = dict(error=str(err))
                    continue
                with np.load(outputs) as saved:
                    got = saved["arr_0"]
                entry = dict(median_ms=float(np.median(t)), min_ms=float(t.min()), max_ms=float(t.max()),
                             times_ms=t.tolist())
                check = ""
                if reference is not None and not impl.endswith("fp32"):
                    entry["vs_exact_reference"] = agreement(got, reference, scale)
                    check = f"  vs exact reference: {describe(entry['vs_exact_reference'])}"
                row["impls"][impl] = entry
                print(f"{name:22s} {impl:24s} median {np.median(t):9.3f} ms  [{t.min():.3f}-{t.max():.3f}]{check}",
                      flush=True)
            if args.roofline and "qcompiler-host" in libs:
                row["roofline"] = roofline_summary(libs["qcompiler-host"][1], args.threads)
                print(f"{name:22s} qcompiler-host time-weighted % of roof: {row['roofline']['percent_of_roof']:.0f}%",
                      flush=True)
            results.append(row)
    meta = dict(threads=args.threads, cpu=harness.cpu_model(), host_features=sorted(host_features()),
                targets=targets, size=args.size, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                versions=_versions())
    ratios = speed_ratios(results, targets)
    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"models-{_cpu_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, ratios=ratios, results=results), indent=1))
    out.with_suffix(".md").write_text(markdown(meta, results, ratios, targets))
    print(markdown(meta, results, ratios, targets))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def speed_ratios(results: list[dict], targets: list[str]) -> dict:
    """Per qcompiler build: geomean over models of (best int8 peer's median / qcompiler's), the worst model,
    and the geomean against ORT fp32."""
    ratios = {}
    for target in targets:
        ours = f"qcompiler-{target}"
        best, fp32 = {}, {}
        for row in results:
            impls = row["impls"]
            if "median_ms" not in impls.get(ours, {}):
                continue
            peer_ms = [impls[p]["median_ms"] for p in INT8_PEERS if "median_ms" in impls.get(p, {})]
            if peer_ms:
                best[row["model"]] = min(peer_ms) / impls[ours]["median_ms"]
            if "median_ms" in impls.get("onnxruntime-fp32", {}):
                fp32[row["model"]] = impls["onnxruntime-fp32"]["median_ms"] / impls[ours]["median_ms"]
        geo = lambda d: float(np.exp(np.mean(np.log(list(d.values()))))) if d else None  # noqa: E731
        ratios[ours] = dict(best_int8_peer=dict(geomean=geo(best), worst=min(best.items(), key=lambda kv: kv[1],
                                                                            default=None), per_model=best),
                            onnxruntime_fp32=dict(geomean=geo(fp32), per_model=fp32))
    return ratios


def markdown(meta: dict, results: list[dict], ratios: dict, targets: list[str]) -> str:
    impls = sorted({i for r in results for i in r["impls"]}, key=lambda i: (not i.startswith("qcompiler"), i))
    lines = [f"# Whole models, batch 1, {meta['threads']} threads: {meta['cpu']} ({meta['date']})", "",
             "Median latency in ms [min-max]; int8 outputs against the exact reference below each time "
             "(quantized outputs: % identical, max steps; float outputs: cosine).", "",
             "| model | " + " | ".join(impls) + " | compile s | % of roof |",
             "|---" * (len(impls) + 3) + "|"]
    for r in results:
        cells = []
        for i in impls:
            e = r["impls"].get(i)
            if e is None:
                cells.append("-")
            elif "error" in e:
                cells.append("failed")
            else:
                cell = f"{e['median_ms']:.2f} [{e['min_ms']:.2f}-{e['max_ms']:.2f}]"
                if "vs_exact_reference" in e:
                    cell += "<br>" + describe(e["vs_exact_reference"])
                cells.append(cell)
        compile_s = ", ".join(f"{v:.0f}" for v in r.get("compile_seconds", {}).values()) or "-"
        roof = r.get("roofline", {}).get("percent_of_roof")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {compile_s} | "
                     + ("-" if roof is None else f"{roof:.0f}%") + " |")
    lines.append("")
    for ours, ratio in ratios.items():
        best = ratio["best_int8_peer"]
        if best["geomean"] is not None:
            worst = best["worst"]
            lines.append(f"- {ours}: best int8 peer / {ours} geomean **{best['geomean']:.2f}x** "
                         f"(worst {worst[0]} {worst[1]:.2f}x)")
        if ratio["onnxruntime_fp32"]["geomean"] is not None:
            lines.append(f"- {ours}: onnxruntime-fp32 / {ours} geomean **{ratio['onnxruntime_fp32']['geomean']:.2f}x**")
    return "\n".join(lines) + "\n"


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("apache-tvm", "onnxruntime", "openvino", "torch", "transformers", "onnx"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _cpu_tag() -> str:
    from qcompiler.target import host_target

    return str(host_target().attrs.get("mcpu", "host"))


if __name__ == "__main__":
    sys.exit(main())
