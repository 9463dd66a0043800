"""Roofline analyzer: ceilings against an independent C microbenchmark, exact op counts, timings against
an independent timing of the same library, bound classification, the four outputs, the CLI, and the
zoo's CNN and transformer.

Rates on a shared 2-vCPU VM drift by 10-30% for seconds at a time, so each comparison measures both
sides back to back and is retried (up to 3 times); it passes when one attempt agrees.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import model_zoo as mz
import qcompiler
import schedules
from qcompiler.examples import example_path
from qcompiler.roofline.ceilings import Ceilings, fp32_probe_kind, int8_probe_kind, measure_compute
from qcompiler.roofline.opcount import count_ops
from qcompiler.target import can_run, host_features, host_target

THREADS = min(2, os.cpu_count() or 1)
HERE = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Ceilings are cached per machine in the user cache dir: the tests use their own."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


def _python(code: str, env_extra: dict | None = None) -> str:
    env = {**os.environ, "TVM_NUM_THREADS": str(THREADS), **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def microbench(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("microbench") / "roofline_microbench"
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed (TVM's export_library needs one too)"
    subprocess.run([cc, "-O2", "-pthread", str(HERE / "roofline_microbench.c"), "-o", str(exe)], check=True)
    return exe


#: LLVM features each compute mode of roofline_microbench.c executes.
C_MODE_FEATURES = {"vpdpbusd-zmm": {"avx512f", "avx512vnni"}, "vpmaddwd-zmm": {"avx512f", "avx512bw"},
                   "fma-zmm": {"avx512f"}, "vpmaddwd-ymm": {"avx2"}, "fma-ymm": {"avx", "fma"}, "triad": set()}


def _c_rate(exe: Path, mode: str, size: int) -> float:
    missing = C_MODE_FEATURES[mode] - host_features()
    assert not missing, f"{mode} would execute {missing}, which this CPU lacks"
    out = subprocess.run([str(exe), mode, str(THREADS), str(size), "5"], capture_output=True, text=True,
                         check=True).stdout
    return max(float(v) for v in out.split())  # best of 5, as the ceilings are


_TVM_CEILING = """
import json
from tvm.target import Target
from qcompiler.roofline import ceilings as c
from qcompiler.target import host_target
threads, what, spec = {threads}, "{what}", {target!r}
t = Target(json.loads(spec)) if spec else host_target()
if what == "memory":
    out = [("DRAM triad", e.value) for e in c.measure_memory(threads, t, 5) if e.name == "DRAM triad"]
else:
    kind = c.int8_probe_kind(t) if what == "int8" else c.fp32_probe_kind(t)
    out = [(kind[0], c.measure_compute(kind, threads, t, 7, 0.1, what).value)]  # the product's measure_ceilings
print(json.dumps(out[0]))
"""

#: One target per x86 CPU class, described by its features (the probe follows them, not the name).
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": THREADS}
AVX512BW = {"kind": "llvm", "mcpu": "x86-64-v4", "num-cores": THREADS}
AVX512VNNI = {"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"], "num-cores": THREADS}


@pytest.mark.parametrize("target,what,probe,mode,size,tolerance", [
    (AVX2, "int8", "int8 vpmaddwd ymm", "vpmaddwd-ymm", 40_000_000, 0.10),
    (AVX2, "fp32", "fp32 fma ymm", "fma-ymm", 40_000_000, 0.10),
    (AVX512BW, "int8", "int8 vpmaddwd zmm", "vpmaddwd-zmm", 20_000_000, 0.10),
    (AVX512VNNI, "int8", "int8 vpdpbusd zmm", "vpdpbusd-zmm", 20_000_000, 0.10),
    (AVX512BW, "fp32", "fp32 fma zmm", "fma-zmm", 20_000_000, 0.10),
    (None, "memory", "DRAM triad", "triad", 1 << 25, 0.15)],
    ids=["avx2-int8", "avx2-fp32", "avx512bw-int8", "avx512vnni-int8", "avx512-fp32", "dram-triad"])
def test_ceilings_agree_with_an_independent_c_microbenchmark(microbench, target, what, probe, mode, size, tolerance):
    """Each CPU class's compute ceilings (TIR probes built for that class) within 10% of inline-asm C
    loops of the same instruction, all threads: AVX2 on every x86-64-v3 host, AVX-512 only where the
    host has it. DRAM triad bandwidth (host target) within 15% of a C STREAM triad (doubles, 3 x 256 MiB)."""
    missing = sorted(C_MODE_FEATURES[mode] - host_features())
    if missing:
        pytest.skip(f"the C {mode} loop needs {', '.join(missing)}, which this CPU lacks")
    if target and not can_run(target):
        pytest.skip(f"this CPU cannot run code built for {target}")
    attempts = []
    for _ in range(5):
        name, ours = json.loads(_python(_TVM_CEILING.format(threads=THREADS, what=what,
                                                            target=json.dumps(target) if target else "")))
        theirs = _c_rate(microbench, mode, size)
        attempts.append((ours, theirs))
        if abs(ours / theirs - 1) <= tolerance:
            break
        # a ceiling is the best rate seen: this VM's slow phases (one vCPU 25-40% slow for seconds)
        # can hit either side of one attempt, so the best of every attempt is compared too
        ours, theirs = max(a for a, _ in attempts), max(b for _, b in attempts)
        if abs(ours / theirs - 1) <= tolerance:
            break
    assert name == probe
    assert abs(ours / theirs - 1) <= tolerance, attempts


def test_ceilings_are_cached_per_machine_and_remeasured_on_request(tmp_path):
    code = ("import json; from qcompiler.roofline.ceilings import host_ceilings, cache_path; "
            f"c = host_ceilings({THREADS}, remeasure={{r}}); "
            f"print(json.dumps([str(cache_path({THREADS})), c.measured_at, len(c.entries)]))")
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    path, first, n = json.loads(_python(code.format(r=False), env))
    assert Path(path).is_relative_to(tmp_path) and Path(path).exists()
    ceilings = Ceilings.from_json(json.loads(Path(path).read_text()))
    names = {(c.name, c.threads) for c in ceilings.entries}
    int8, fp32 = int8_probe_kind(host_target())[0], fp32_probe_kind(host_target())[0]  # this CPU's class
    for threads in {1, THREADS}:
        assert {(int8, threads), (fp32, threads), ("DRAM triad", threads),
                ("DRAM copy", threads), ("L2 read", threads)} <= names
    assert all(c.value > 0 and c.source == "measured" for c in ceilings.entries)
    _, again, _ = json.loads(_python(code.format(r=False), env))
    assert again == first  # from the cache
    import time
    time.sleep(1.1)
    _, fresh, _ = json.loads(_python(code.format(r=True), env))
    assert fresh != first


# --------------------------------------------------------------------------------------------------
def _qdq_model(name: str, weight: np.ndarray, w_scale: float, w_axis: int, op, x_shape, y_shape,
               y_scale: float, pre_nodes=()) -> onnx.ModelProto:
    """DQ(x u8, 0.02, 128) and DQ(weight s8, per-channel w_scale) -> op -> Q(y u8, y_scale, 128)."""
    channels = weight.shape[w_axis]
    inits = [numpy_helper.from_array(weight, "w_q"),
             numpy_helper.from_array(np.full(channels, w_scale, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(channels, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "y_zp")]
    nodes = [*pre_nodes, helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zp"], ["x_f"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_f"], axis=w_axis), op,
             helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zp"], ["y"])]
    graph_input = pre_nodes[0].input[0] if pre_nodes else "x"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(graph_input, TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def qdq_matmul(m: int, k: int, n: int, seed: int = 0) -> onnx.ModelProto:
    weight = np.random.default_rng(seed).integers(-127, 128, (k, n), dtype=np.int8)
    return _qdq_model("qdq_matmul", weight, 0.004, 1, helper.make_node("MatMul", ["x_f", "w_f"], ["y_f"]),
                      [m, k], [m, n], 0.5)


def qdq_depthwise(c: int = 96, hw: int = 56) -> onnx.ModelProto:
    """A depthwise 3x3 conv with an NHWC uint8 graph input (a Transpose to NCHW before its
    DequantizeLinear, which cancels with the channels-last conv's edge) and an NCHW output (whose
    transpose kernel remains)."""
    weight = np.random.default_rng(1).integers(-127, 128, (c, 1, 3, 3), dtype=np.int8)
    conv = helper.make_node("Conv", ["x_f", "w_f"], ["y_f"], group=c, pads=[1, 1, 1, 1])
    to_nchw = helper.make_node("Transpose", ["x_nhwc"], ["x"], perm=[0, 3, 1, 2])
    return _qdq_model("qdq_dw", weight, 0.01, 0, conv, [1, hw, hw, c], [1, c, hw, hw], 0.1, pre_nodes=(to_nchw,))


@pytest.fixture(scope="module")
def gemm_library(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gemm") / "gemm.so"
    qcompiler.compile(qdq_matmul(512, 512, 512), path)
    return path


def test_gemm_op_count_is_exact_and_its_rate_matches_an_independent_timing(gemm_library):
    """ops = 2*M*N*K exactly (from TIR); the kernel's attained GOP/s within 10% of timing the whole
    library (a one-kernel model) through qcompiler.load + Model.benchmark."""
    model = qcompiler.load(gemm_library)
    x = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    attempts = []
    for _ in range(3):
        report = qcompiler.roofline(gemm_library, repeat=15)
        (dense,) = [r for r in report.kernels if r.op == "dense"]
        independent = 2 * 512 ** 3 / float(np.median(model.benchmark(x, repeat=15))) / 1e9
        attempts.append((dense.attained_gops, independent))
        if abs(dense.attained_gops / independent - 1) <= 0.10:
            break
    assert dense.ops == 2 * 512 ** 3 and dense.op_class == "int8" and dense.integer
    weight_bytes = 512 * 512 * (2 if schedules.weight_layout(host_target()).startswith("pairs") else 1)  # int16 for vpmaddwd
    # the shift is int64, or int32 (s - 32) where x86 lacks AVX-512's 64-bit arithmetic shift
    shift_bytes = 8 if "avx512f" in host_features() else 4
    assert dense.min_bytes == 512 * 512 + weight_bytes + 512 * 512 + 512 * (4 + 8 + shift_bytes)  # x, W, y, M0/off/s
    assert abs(dense.attained_gops / independent - 1) <= 0.10, attempts


def test_compute_and_memory_bound_classification(tmp_path):
    """A 1024^3 GEMM is compute-bound; a uint8 transpose is memory-bound, and a MobileNet depthwise
    conv is bound by whichever side of this machine's ridge point its intensity lies.

    The depthwise model's NHWC graph input cancels against the conv's channels-last edge; its NCHW
    output keeps one uint8 transpose kernel (on every x86 class: VNNI, AVX-512BW, AVX2)."""
    gemm = qcompiler.roofline(qdq_matmul(1024, 1024, 1024), repeat=5)
    (dense,) = [r for r in gemm.kernels if r.op == "dense"]
    assert dense.ops == 2 * 1024 ** 3 and dense.bound == "compute"
    # compute-bound: its roof is the int8 ceiling of the instruction the host's kernels use
    # (speed goals live in benchmarks/, not here)
    int8 = gemm.ceilings.get("int8")
    assert int8.name.startswith(int8_probe_kind(host_target())[0]) and dense.roof_gops == pytest.approx(int8.value)
    dw = qcompiler.roofline(qcompiler.compile(qdq_depthwise()), repeat=5)  # a CompiledModel works too
    by_op = {r.op: r for r in dw.kernels}
    # ~9 ops/byte: memory-bound where the ridge (int8 ceiling / DRAM bandwidth) lies above that, as on
    # Zen 4/5 (~13); on a slow AVX2 core (Zen 2 VM: 68 GOP/s / 23 GB/s ~ 3) it is compute-bound
    conv = by_op["conv2d"]
    ridge = dw.ceilings.get("int8").value / dw.ceilings.get("dram").value
    assert conv.ops == 2 * 96 * 9 * 56 * 56 and 7 < conv.intensity < 10, conv
    assert conv.bound == ("memory" if conv.intensity < ridge else "compute"), (conv, ridge)
    (transpose,) = [r for r in dw.kernels if r.op == "transpose"]
    assert transpose.bound == "memory" and transpose.ops == 0 and transpose.min_bytes == 2 * 96 * 56 * 56, transpose
    # an AVX2 library (runs on every host) is measured against AVX2's instructions, not the host's
    avx2 = qcompiler.roofline(qcompiler.compile(qdq_depthwise(), target="x86-avx2"), repeat=3)
    assert avx2.ceilings.get("int8").name.startswith("int8 vpmaddwd ymm"), avx2.ceilings
    assert avx2.ceilings.get("fp32").name.startswith("fp32 fma ymm"), avx2.ceilings


def test_report_renders_table_json_markdown_and_png(gemm_library, tmp_path):
    report = qcompiler.roofline(gemm_library, repeat=5)
    table = report.to_table()
    assert "dense" in table and int8_probe_kind(host_target())[0] in table and "% roof" in table
    data = json.loads(report.render("json"))
    assert data["summary"]["percent_of_roof"] == pytest.approx(report.percent_of_roof)
    assert {"name", "op", "ops", "min_bytes", "intensity", "seconds", "attained_gops", "roof_gops",
            "percent_of_roof", "bound", "share"} <= set(data["kernels"][0])
    assert sum(k["share"] for k in data["kernels"]) == pytest.approx(1.0)
    md = report.to_markdown()
    assert md.startswith("# Roofline") and "| dense |" in md.replace("| qdense |", "| dense |")
    png = report.plot(tmp_path / "roofline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def _qc(*args, env_extra=None):
    env = {**os.environ, "TVM_NUM_THREADS": str(THREADS), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "qcompiler.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env)


def test_cli_roofline_json_and_plot_and_its_errors(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    proc = _qc("roofline", example_path("digits_cnn_qdq.onnx"), "--format", "json", "-o", out, "--plot", png,
               "--threads", THREADS)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["threads"] == THREADS and {k["op"] for k in data["kernels"]} >= {"conv2d", "dense"}
    assert png.exists() and not list(tmp_path.glob("*.tmp"))
    bad = _qc("roofline", example_path("digits_cnn_qdq.onnx"), "--plot", tmp_path / "nope" / "r.png")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --plot") and "does not exist" in bad.stderr
    missing = _qc("roofline", tmp_path / "missing.so")
    assert missing.returncode == 2 and "missing.so" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_zoo_models(zoo_dir, name):
    """The core issue's CNN (all int8) and transformer (int8 MatMuls, fp32 islands)."""
    zm = mz.build(name, zoo_dir)
    compiled = qcompiler.compile(str(zm.quant_path))
    # the inventory is exactly the kernels the executable calls (pure reshapes are views, not kernels)
    called = set(re.findall(r"call\s+(\w+)", compiled.executable.as_text())) - {"vm"}
    assert {k["name"] for k in compiled.metadata["kernels"]} == called
    report = qcompiler.roofline(compiled, repeat=5)
    assert report.kernels and all(r.seconds and r.seconds > 0 for r in report.kernels)
    integer_ops = {r.op for r in report.kernels if r.integer}
    # the transformer's attention MatMuls (Q K^T, softmax V) are quantized on both inputs: integer batch matmuls
    assert integer_ops >= ({"conv2d", "dense"} if name == "cnn" else {"dense", "batch_matmul"})
    if name == "transformer":
        assert any(r.op_class == "fp32" for r in report.kernels)  # softmax / layer norm islands
    assert 0 < report.percent_of_roof and sum(r.share for r in report.kernels) == pytest.approx(1.0)
    assert report.top_losses(3)


def test_op_counts_from_tir_for_conv_and_float_kernels():
    from tvm import te
    x = te.placeholder((1, 8, 10, 10), "uint8", name="x")
    w = te.placeholder((16, 8, 3, 3), "int8", name="w")
    c, r, s = te.reduce_axis((0, 8)), te.reduce_axis((0, 3)), te.reduce_axis((0, 3))
    conv = te.compute((1, 16, 8, 8), lambda n, k, h, v: te.sum(
        x[n, c, h + r, v + s].astype("int32") * w[k, c, r, s].astype("int32"), axis=[c, r, s]), name="acc")
    count = count_ops(te.create_prim_func([x, w, conv]))
    assert (count.dot_ops, count.dot_class, count.op_class) == (2 * 16 * 8 * 9 * 64, "int8", "int8")
    a = te.placeholder((4, 32), "float32", name="a")
    b = te.placeholder((32, 5), "float32", name="b")
    k = te.reduce_axis((0, 32))
    mm = te.compute((4, 5), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="mm")
    act = te.compute((4, 5), lambda i, j: te.exp(mm[i, j]) * 2.0 + 1.0, name="act")
    count = count_ops(te.create_prim_func([a, b, act]))
    assert (count.dot_ops, count.other_ops, count.op_class) == (2 * 4 * 5 * 32, 3 * 4 * 5, "fp32")
    ew = te.compute((4, 32), lambda i, j: a[i, j] * 3.0, name="scale")
    count = count_ops(te.create_prim_func([a, ew]))
    assert (count.ops, count.dot_ops, count.op_class) == (4 * 32, 0, "fp32")


@pytest.mark.parametrize("chip,source", [("neoverse-n1", "spec: Arm Neoverse N1"),
                                         ("nvidia/tesla-t4", "spec: NVIDIA T4")])
def test_datasheet_ceilings_for_a_target_this_machine_cannot_run(chip, source):
    report = qcompiler.roofline(qdq_matmul(64, 64, 64), target=chip)
    assert not report.timed and all(c.source.startswith(source) for c in report.ceilings.entries)
    (dense,) = [r for r in report.kernels if r.op == "dense"]
    assert dense.ops == 2 * 64 ** 3 and dense.seconds is None and dense.roof_gops > 0
    assert "not timed" in report.to_table()
    with pytest.raises(qcompiler.QCompilerError, match="spec table has"):
        qcompiler.roofline(qdq_matmul(64, 64, 64), target={"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                                            "mcpu": "cortex-x925"})


#: (target, int8 probe, fp32 probe): the probes follow the target's features, whatever its name.
PROBE_TARGETS = [
    ({"kind": "llvm", "mcpu": "x86-64-v3"}, "int8 vpmaddwd ymm", "fp32 fma ymm"),
    ({"kind": "llvm", "mcpu": "haswell"}, "int8 vpmaddwd ymm", "fp32 fma ymm"),
    ({"kind": "llvm", "mcpu": "znver3"}, "int8 vpmaddwd ymm", "fp32 fma ymm"),
    ({"kind": "llvm", "mcpu": "alderlake"}, "int8 vpdpbusd ymm", "fp32 fma ymm"),
    ({"kind": "llvm", "mcpu": "skylake-avx512"}, "int8 vpmaddwd zmm", "fp32 fma zmm"),
    ({"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}, "int8 vpdpbusd zmm", "fp32 fma zmm"),
    ({"kind": "llvm", "mcpu": "znver4"}, "int8 vpdpbusd zmm", "fp32 fma zmm"),
]
_PROBE_IDS = [t["mcpu"] + "".join(t.get("mattr", [])) for t, _, _ in PROBE_TARGETS]


def _innermost_loops(asm: str) -> list[list[str]]:
    """The instructions of every innermost loop of an x86 assembly listing: from a label to the last
    branch back to it, for loops that contain no other loop."""
    lines = [line.split("#")[0].strip() for line in asm.splitlines()]
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.fullmatch(r"(\.LBB\w+):", line))}
    loops = {}
    for i, line in enumerate(lines):
        m = re.fullmatch(r"j\w+\s+(\.LBB\w+)", line)
        if m and labels.get(m.group(1), i) < i:
            loops[m.group(1)] = (labels[m.group(1)], i)
    spans = sorted(loops.values())
    innermost = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]
    return [[line for line in lines[a + 1:b + 1] if line and not line.startswith(".")] for a, b in innermost]


def _probe_loops(factory, target) -> list[list[str]]:
    import tvm
    lib = tvm.compile(tvm.IRModule({"probe": factory(THREADS)}), target=target).mod
    return _innermost_loops(lib.inspect_source("s"))


@pytest.mark.parametrize("spec,int8,fp32", PROBE_TARGETS, ids=_PROBE_IDS)
def test_probes_follow_the_target_features_and_keep_their_chains_in_registers(spec, int8, fp32):
    """The probe of each class (vpdpbusd zmm / ymm, vpmaddwd zmm / ymm, FMA zmm / ymm) is chosen from
    the target's features, and its hot loop issues that instruction on ``probes.accumulators(lanes)``
    independent accumulators (12 on ymm, 16 on zmm) that all stay in registers: no stack access in the loop (with 16 chains the AVX2
    probes spilled; LLVM may unroll, so the count is a multiple). Checked in the generated assembly,
    so targets this host cannot run are covered too; vpmaddwd stays vpmaddwd (on a VNNI target
    LLVM would fuse it with the add into vpdpwssd)."""
    from tvm.target import Target

    from qcompiler.roofline import probes
    target = Target(spec)
    for kind, expected in ((int8_probe_kind(target), int8), (fp32_probe_kind(target), fp32)):
        assert kind[0] == expected
        mnemonic, width = kind[0].split()[1:]
        # AVX-VNNI's vpdpbusd is written "{vex} vpdpbusd"
        pattern = r"(\{vex\}\s+)?" + {"fma": r"vfmadd\d{3}ps"}.get(mnemonic, mnemonic) + rf"\s.*%{width}\d+$"
        loops = [loop for loop in _probe_loops(kind[1], target) if any(re.match(pattern, i) for i in loop)]
        assert loops, f"no loop issues {kind[0]} for {spec}"
        # the accumulator is the destination of vpdpbusd / FMA, of the vpaddd after vpmaddwd
        accumulate = r"vpaddd\s.*%" + width + r"\d+$" if mnemonic == "vpmaddwd" else pattern
        for loop in loops:
            issued = sum(bool(re.match(pattern, i)) for i in loop)
            accumulators = {i.split(",")[-1].strip() for i in loop if re.match(accumulate, i)}
            chains = probes.accumulators(16 if width == "zmm" else 8)
            assert issued % chains == 0 and len(accumulators) == chains, (kind[0], loop)
            assert not [i for i in loop if re.search(r"%r[sb]p\)", i)], (f"{kind[0]} spills in its loop", loop)
            assert not [i for i in loop if i.startswith("vpdpwssd")], loop


@pytest.mark.parametrize("spec,int8,fp32", PROBE_TARGETS, ids=_PROBE_IDS)
def test_probes_run_where_the_host_can(spec, int8, fp32):
    """Each class's probes measure a positive rate here, executed only if this CPU has every feature
    the target's code may use (skipped otherwise, never run into SIGILL)."""
    from tvm.target import Target
    if not can_run(spec):
        pytest.skip(f"this CPU cannot run code built for {spec}")
    target = Target(spec)
    for op_class, kind in (("int8", int8_probe_kind(target)), ("fp32", fp32_probe_kind(target))):
        ceiling = measure_compute(kind, 1, target, 3, 0.02, op_class)
        assert ceiling.name == (int8 if op_class == "int8" else fp32) and ceiling.value > 10, ceiling


@pytest.mark.parametrize("first", ["roofline", "compile", "load"])
def test_each_public_name_works_as_the_first_use_of_the_package(first):
    """``qcompiler.roofline`` as the first attribute used in a fresh process once recursed without end
    (the lazy ``__getattr__`` re-entered itself); each public name must resolve first."""
    proc = subprocess.run([sys.executable, "-c", f"import qcompiler; print(callable(qcompiler.{first}))"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
