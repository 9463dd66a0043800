"""Shared machinery of the benchmark scripts (gemm.py, conv.py, peak.py): not a test, not product code.

- Every implementation is measured in its own subprocess (``measure``), one at a time, with the same
  thread count: torch, ONNX Runtime and TVM each keep a thread pool that would steal cores from the
  others in one process. The subprocess re-runs the calling script with ``--worker SPEC.json``; the
  script hands ``worker_main`` its own worker functions on top of the generic ones here
  (``ort``: an ONNX Runtime session, ``qcompiler``: a library from ``qcompiler.compile``).
- A worker warms up, picks a number of runs per measurement lasting >= ``min_time`` (50 ms), takes
  ``repeat`` (15) measurements, saves its outputs for the parent's exactness check and reports the
  per-run seconds of every measurement.
- This machine is shared (another session may run compiles on the same 2 cores): before each
  subprocess the parent waits for the machine to be idle, the worker records the CPU time that other
  processes used during its timed window ("foreign load", fraction of all cores), and a measurement
  disturbed by more than ``LOAD_LIMIT`` is repeated; every attempt goes to the JSON.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# numpy/OpenBLAS: these two only ever make sense together; a half-set pair mis-sizes OpenBLAS' blocking.
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import numpy as np  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LOAD_LIMIT = 0.05          # foreign CPU use (fraction of all cores) above which a measurement is retried
QUIET_LIMIT = 0.10         # machine busy fraction under which a measurement may start
HZ = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------
# CPU load bookkeeping (Linux /proc)
# --------------------------------------------------------------------------------------------------
def _busy_seconds() -> float | None:
    """CPU seconds spent busy by all cores since boot (user+nice+system+irq+softirq+steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / HZ


def _self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)   # all threads of this process
    return ru.ru_utime + ru.ru_stime


class LoadWindow:
    """Foreign load over a window: (CPU time of the whole machine - our own) / (wall x cores)."""

    def __init__(self, own_cpu=_self_cpu_seconds):
        self._own = own_cpu
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), own_cpu()

    def foreign(self, own_delta: float | None = None) -> float | None:
        busy1 = _busy_seconds()
        if busy1 is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        own = own_delta if own_delta is not None else self._own() - self.own0
        return max(0.0, (busy1 - self.busy0 - own) / (wall * (os.cpu_count() or 1)))


def wait_for_quiet(max_wait: float = 90.0, limit: float = QUIET_LIMIT, log=print) -> float:
    """Wait (up to max_wait s) until the machine is < limit busy over 0.5 s; returns the last busy fraction."""
    deadline, said = time.time() + max_wait, False
    while True:
        b0, t0 = _busy_seconds(), time.perf_counter()
        time.sleep(0.5)
        b1 = _busy_seconds()
        if b0 is None or b1 is None:
            return 0.0
        busy = (b1 - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if busy < limit or time.time() > deadline:
            if said and busy >= limit:
                log(f"    (machine still {busy:.0%} busy after {max_wait:.0f} s; measuring anyway, flagged)")
            return busy
        if not said:
            log(f"    (other processes keep the machine {busy:.0%} busy; waiting up to {max_wait:.0f} s)")
            said = True


def run_command(cmd: list[str], env: dict | None = None,
                timeout: float | None = None) -> tuple[int, str, str, float | None]:
    """Run a command; (returncode, stdout, stderr, foreign load over its lifetime)."""
    win = LoadWindow(own_cpu=lambda: 0.0)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        deadline = None if timeout is None else time.time() + timeout
        try:
            while True:   # wait4 (not Popen.wait) to get the child's CPU time; poll for the timeout
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if deadline is not None and time.time() > deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout)
                time.sleep(0.1)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        foreign = win.foreign(own_delta=ru.ru_utime + ru.ru_stime)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), foreign


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------
def stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)), "n": int(v.size)}


def rate_stats(ops: float, seconds) -> dict:
    """GOP/s statistics of per-run times (the median rate is ops / median time)."""
    return stats([ops / t / 1e9 for t in seconds])


def geomean(values) -> float | None:
    v = [x for x in values if x is not None and x > 0]
    return float(math.exp(sum(math.log(x) for x in v) / len(v))) if v else None


# --------------------------------------------------------------------------------------------------
# exact integer references
# --------------------------------------------------------------------------------------------------
def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul, exact: every partial sum is an integer below 2^53, so float64 BLAS is exact."""
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * a.shape[-1]
    assert bound < 2.0 ** 53, "float64 would not be exact"
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def requantize_reference(acc: np.ndarray, multiplier: np.ndarray, zero_point: int) -> np.ndarray:
    """u8 = clamp(round_half_even(acc * multiplier) + zp) in float64 (implementations may differ by 1)."""
    return np.clip(np.rint(acc * multiplier.astype(np.float64)) + zero_point, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# worker side (runs in the subprocess)
# --------------------------------------------------------------------------------------------------
def time_callable(fn, repeat: int, min_time: float, warmup: float = 0.2) -> tuple[list[float], int, float | None]:
    """Warm up (>= warmup s and >= 3 calls), pick `number` so one measurement lasts >= min_time, then
    `repeat` measurements of the mean per-call time. Returns (seconds per call, number, foreign load)."""
    t0, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - t0 < warmup:
        fn()
        calls += 1
    once = (time.perf_counter() - t0) / calls
    number = max(1, math.ceil(min_time / max(once, 1e-9)))
    win = LoadWindow()
    times = []
    for _ in range(repeat):
        s = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - s) / number)
    return times, number, win.foreign()


def _ort_worker(spec: dict) -> dict:
    """ONNX Runtime, CPU EP: intra_op = threads, inter_op = 1, all graph optimizations; timed through
    IOBinding with pre-bound input and pre-allocated output (no numpy conversion in the loop)."""
    import onnx
    import onnxruntime as ort
    threads = spec["threads"]
    ort.set_default_logger_severity(3)

    def options(optimized_path=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized_path:
            so.optimized_model_filepath = optimized_path
        return so

    # A first session only to record what ORT turned the graph into (saving the optimized model can
    # change what a session does, so the timed session below does not save it).
    opt_path = str(Path(spec["workdir"]) / (Path(spec["model"]).stem + f".{os.getpid()}.ort-opt.onnx"))
    ort.InferenceSession(spec["model"], options(opt_path), providers=["CPUExecutionProvider"])
    fused_ops = [(n.domain + "." if n.domain else "") + n.op_type for n in onnx.load(opt_path).graph.node]
    os.unlink(opt_path)

    sess = ort.InferenceSession(spec["model"], options(), providers=["CPUExecutionProvider"])
    feeds = dict(np.load(spec["inputs"]))
    binding = sess.io_binding()
    keep = []
    for name, arr in feeds.items():
        ov = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr))
        keep.append(ov)
        binding.bind_ortvalue_input(name, ov)
    outs = {}
    for o in sess.get_outputs():
        shape, dtype = spec["outputs"][o.name]
        ov = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(dtype))
        outs[o.name] = ov
        binding.bind_ortvalue_output(o.name, ov)
    run = lambda: sess.run_with_iobinding(binding)  # noqa: E731
    times, number, foreign = time_callable(run, spec["repeat"], spec["min_time"])
    return {"times": times, "number": number, "foreign_load": foreign,
            "outputs": {k: v.numpy() for k, v in outs.items()},
            "info": {"ort_optimized_graph": fused_ops, "onnxruntime": ort.__version__}}


def _qcompiler_worker(spec: dict) -> dict:
    """A qcompiler library: qcompiler.load(so, num_threads) and Model.benchmark (TVM's time_evaluator on
    pre-made tensors: no numpy conversion in the timed loop)."""
    import qcompiler
    model = qcompiler.load(spec["library"], num_threads=spec["threads"])
    feeds = dict(np.load(spec["inputs"]))
    out = model(**feeds)
    outputs = out if isinstance(out, tuple) else (out,)
    names = [o["name"] for o in model.metadata["signature"]["outputs"]]
    # warm-up + calibration with the same timer that measures
    t0, warm = time.perf_counter(), []
    while len(warm) < 3 or time.perf_counter() - t0 < 0.2:
        warm.extend(model.benchmark(repeat=1, number=1, **feeds).tolist())
    number = max(1, math.ceil(spec["min_time"] / max(float(np.median(warm)), 1e-9)))
    win = LoadWindow()
    times = model.benchmark(repeat=spec["repeat"], number=number, **feeds).tolist()
    return {"times": times, "number": number, "foreign_load": win.foreign(),
            "outputs": dict(zip(names, outputs)),
            "info": {"qcompiler_ops": model.metadata.get("ops"), "cpu": model.metadata.get("cpu"),
                     "compile_seconds": model.metadata.get("compile_seconds")}}


GENERIC_WORKERS = {"ort": _ort_worker, "qcompiler": _qcompiler_worker}


def worker_main(spec_path: str, workers: dict) -> None:
    """Entry point of a subprocess: run spec["kind"], write result JSON + outputs npz."""
    spec = json.loads(Path(spec_path).read_text())
    fn = {**GENERIC_WORKERS, **workers}[spec["kind"]]
    try:
        res = fn(spec)
        np.savez(spec["result_npz"], **{k: np.asarray(v) for k, v in res.pop("outputs").items()})
    except Exception as err:  # noqa: BLE001 - reported in the row, the run goes on
        import traceback
        res = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}",
               "traceback": traceback.format_exc()}
    Path(spec["result_json"]).write_text(json.dumps(res))


# --------------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------------
def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(BENCH_DIR), env.get("PYTHONPATH", "")] if p)
    return env


class Runner:
    """Runs worker subprocesses one at a time (waiting for a quiet machine, retrying disturbed runs)."""

    def __init__(self, script: str, workdir: Path, threads: int, repeat: int, min_time: float,
                 retries: int = 2, quiet_wait: float = 90.0, timeout: float = 900.0):
        self.script, self.workdir, self.threads = script, Path(workdir), threads
        self.repeat, self.min_time, self.retries = repeat, min_time, retries
        self.quiet_wait, self.timeout = quiet_wait, timeout
        self._n = 0

    def _once(self, spec: dict) -> tuple[dict, dict]:
        self._n += 1
        tag = f"run{self._n:03d}"
        spec = {"threads": self.threads, "repeat": self.repeat, "min_time": self.min_time,
                "workdir": str(self.workdir), **spec,
                "result_json": str(self.workdir / f"{tag}.json"), "result_npz": str(self.workdir / f"{tag}.npz")}
        spec_path = self.workdir / f"{tag}.spec.json"
        spec_path.write_text(json.dumps(spec))
        busy_before = wait_for_quiet(self.quiet_wait)
        t0 = time.time()
        try:
            rc, _out, err, _ = run_command([sys.executable, self.script, "--worker", str(spec_path)],
                                           env=child_env(self.threads), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            rc, err = -1, "timeout"
        wall = time.time() - t0
        rj = Path(spec["result_json"])
        if rj.exists():
            res = json.loads(rj.read_text())
        else:
            tail = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [f"exit code {rc}"]
            res = {"error": f"worker died (exit {rc}): {tail[0][:300]}", "stderr_tail": err[-2000:]}
        res["busy_before"] = busy_before
        res["subprocess_seconds"] = wall
        outputs = {}
        if "error" not in res and Path(spec["result_npz"]).exists():
            outputs = dict(np.load(spec["result_npz"]))
        return res, outputs

    def measure(self, spec: dict) -> tuple[dict, dict]:
        """(result, outputs) of the least disturbed of up to 1 + retries attempts; all in result['attempts']."""
        attempts, best, best_out = [], None, {}
        for _ in range(1 + self.retries):
            res, outs = self._once(spec)
            attempts.append({k: v for k, v in res.items() if k != "traceback"})
            load = res.get("foreign_load")
            if best is None or ("error" in best and "error" not in res) or \
                    ("error" not in res and (load or 0) < (best.get("foreign_load") or 0)):
                best, best_out = res, outs
            if "error" in res or load is None or load <= LOAD_LIMIT:
                break
        best = dict(best)
        best["attempts"] = attempts
        return best, best_out


def check_output(got: np.ndarray | None, ref: np.ndarray, tolerance: int) -> dict:
    """Exact (tolerance 0) or within `tolerance` quantization steps of an integer reference."""
    if got is None:
        return {"ok": False, "detail": "no output"}
    got = np.asarray(got)
    if got.shape != ref.shape:
        return {"ok": False, "detail": f"shape {got.shape} != {ref.shape}"}
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    maxdiff = int(diff.max()) if diff.size else 0
    return {"ok": maxdiff <= tolerance, "max_abs_diff": maxdiff, "n_diff": int((diff > 0).sum()),
            "n_over_tolerance": int((diff > tolerance).sum()), "tolerance": tolerance, "size": int(diff.size)}


def ok_text(check: dict | None) -> str:
    if not check:
        return "-"
    if check.get("ok"):
        return "ok" if check.get("max_abs_diff", 0) == 0 else f"ok(±{check['max_abs_diff']})"
    if "max_abs_diff" in check:
        return f"FAIL(max {check['max_abs_diff']}, {check['n_over_tolerance']} bad)"
    return f"FAIL({check.get('detail')})"


def print_table(header: list[str], rows: list[list], aligns: str | None = None, out=print) -> None:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    aligns = aligns or "l" * len(header)

    def fmt(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, aligns)).rstrip()
    out(fmt(cells[0]))
    out("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        out(fmt(r))


def fmt_num(x, digits=0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


# --------------------------------------------------------------------------------------------------
# run metadata and JSON
# --------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "dirty_files": [ln[3:] for ln in git("status", "--porcelain").splitlines() if ln.strip()],
            "compiler_sources_sha1": compiler_fingerprint()}


def compiler_fingerprint() -> str:
    """sha1 of qcompiler/ and schedules/ sources as they are now (the work tree may be ahead of HEAD)."""
    import hashlib
    h = hashlib.sha1()
    for sub in ("qcompiler", "schedules"):
        for f in sorted((REPO_DIR / sub).rglob("*.py")):
            h.update(str(f.relative_to(REPO_DIR)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_metadata(threads: int, args) -> dict:
    llvm_cpu = None
    try:
        from tvm.target import codegen
        llvm_cpu = str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - informational only
        pass
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(), "cpu_model": cpu_model(), "llvm_cpu": llvm_cpu,
        "cpu_count": os.cpu_count(), "avx512_vnni": "avx512_vnni" in cpu_flags(),
        "threads": threads, "argv": sys.argv, "args": vars(args),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     **{p: _version(p) for p in ("onnx", "onnxruntime", "torch", "apache-tvm",
                                                 "apache-tvm-ffi", "qcompiler")}},
        "git": git_state(),
        "load_limit": LOAD_LIMIT,
    }


def default_json_path(kind: str) -> Path:
    return RESULTS_DIR / f"{kind}-{socket.gethostname()}.json"


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    tmp.replace(path)
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# --------------------------------------------------------------------------------------------------
# one benchmark table (shared by gemm.py and conv.py)
# --------------------------------------------------------------------------------------------------
class Suite:
    """Collects rows (case x implementation) and prints/saves them the same way for every script.

    A row: case name, implementation, chosen variant (config), ops, timing result, correctness check.
    ``ratio_to`` of a row = its median GOP/s / the best peer row of the same case among ``peer_impls``.
    """

    def __init__(self, kind: str, peak_gops: float | None, peer_impls: list[str], measure_peak=None):
        self.kind, self.peak, self.peer_impls = kind, peak_gops, peer_impls
        self.rows: list[dict] = []
        self.measure_peak = measure_peak  # () -> GOP/s now, called beside every round of a case
        self.case_peaks: dict[str, list[float]] = {}

    def note_peak(self, case: str) -> None:
        """Measure the peak again beside a round of ``case`` (if there is a probe)."""
        if self.measure_peak is not None:
            try:
                self.case_peaks.setdefault(case, []).append(self.measure_peak())
            except Exception as err:  # noqa: BLE001 - the start-up peak still applies
                print(f"peak beside {case} failed: {err}")

    def peak_for(self, case: str) -> float | None:
        """The peak a case is compared with: the highest of the probes beside its rounds (neighbours
        only ever slow a probe down, so the highest is the truest and never flatters a kernel), else
        the start-up one."""
        beside = self.case_peaks.get(case)
        return float(max(beside)) if beside else self.peak

    def percent_peak(self, row: dict) -> float | None:
        peak = self.peak_for(row["case"])
        return 100 * row["gops"]["median"] / peak if peak and "gops" in row else None

    def add(self, case: str, impl: str, ops: float, result: dict | None, check: dict | None,
            config: str = "", variants: list[dict] | None = None, error: str | None = None) -> dict:
        row = {"case": case, "impl": impl, "config": config, "ops": ops, "check": check,
               "result": result, "variants": variants or [], "error": error}
        if result and "times" in result and not error:
            row["seconds"] = stats(result["times"])
            row["gops"] = rate_stats(ops, result["times"])
        self.rows.append(row)
        return row

    def best_peer(self, case: str) -> dict | None:
        cands = [r for r in self.rows if r["case"] == case and r["impl"] in self.peer_impls
                 and "gops" in r and (r["check"] or {}).get("ok")]
        return max(cands, key=lambda r: r["gops"]["median"]) if cands else None

    def ratio(self, row: dict, ref_impl: str | None = None) -> float | None:
        if "gops" not in row:
            return None
        if ref_impl is None:
            ref = self.best_peer(row["case"])
        else:
            ref = next((r for r in self.rows if r["case"] == row["case"] and r["impl"] == ref_impl
                        and "gops" in r), None)
        return row["gops"]["median"] / ref["gops"]["median"] if ref else None

    def print(self, out=print) -> None:
        header = ["case", "implementation", "config", "median us", "median GOP/s", "min-max GOP/s", "peak beside",
                  "% peak", "vs best ORT", "load", "check"]
        rows, last = [], None
        for r in self.rows:
            case = r["case"] if r["case"] != last else ""
            last = r["case"]
            if "gops" not in r:
                rows.append([case, r["impl"], r["config"], "", "n/a" if r["error"] else "-", "", "", "", "", "",
                             (r["error"] or "")[:160]])
                continue
            g = r["gops"]
            pct = self.percent_peak(r)
            peak = "-" if pct is None else f"{pct:.0f}%"
            ratio = self.ratio(r)
            load = (r["result"] or {}).get("foreign_load")
            rows.append([case, r["impl"], r["config"], fmt_num(r["seconds"]["median"] * 1e6, 1), fmt_num(g["median"]),
                         f"{g['min']:,.0f}-{g['max']:,.0f}", fmt_num(self.peak_for(r["case"])), peak,
                         "-" if ratio is None else f"{ratio:.2f}x",
                         "-" if load is None else (f"{load:.0%}" + ("!" if load > LOAD_LIMIT else "")),
                         ok_text(r["check"])])
        print_table(header, rows, "lllrrrrrrrl", out=out)

    def geomean(self, impl: str, ref_impl: str | None) -> tuple[float | None, int]:
        ratios = [self.ratio(r, ref_impl) for r in self.rows
                  if r["impl"] == impl and (r["check"] or {}).get("ok")]
        ratios = [x for x in ratios if x]
        return geomean(ratios), len(ratios)

    def geomean_percent_peak(self, impl: str) -> tuple[float | None, int]:
        """Geometric mean of ``impl``'s % of the peak beside it over its correct rows."""
        pcts = [self.percent_peak(r) for r in self.rows if r["impl"] == impl and (r["check"] or {}).get("ok")]
        pcts = [x for x in pcts if x]
        return geomean(pcts), len(pcts)

    def to_json(self) -> list[dict]:
        for r in self.rows:
            r["peak_beside"] = self.case_peaks.get(r["case"])
            r["percent_peak"] = self.percent_peak(r)
        return self.rows


def measure_variants(runner: Runner, case: str, impl: str, variants: list[tuple[str, dict]], ops: float,
                     reference: np.ndarray, tolerance: int, post=None, log=print) -> list[dict]:
    """Run each variant (config name, worker spec) of one implementation in its own subprocess and check
    its output (`post` adapts it first, e.g. NHWC -> NCHW). Returns one entry per variant."""
    entries = []
    for config, spec in variants:
        res, outs = runner.measure(spec)
        check = None
        if "error" not in res:
            got = next(iter(outs.values())) if outs else None
            if post is not None and got is not None:
                got = post(got)
            check = check_output(got, reference, tolerance)
        config = config or describe_info(res.get("info") or {})
        entries.append({"config": config, "result": res, "check": check})
        if "error" in res:
            log(f"  {case:<24} {impl:<22} {config:<16} n/a: {res['error'][:150]}")
        else:
            g = rate_stats(ops, res["times"])
            load = res.get("foreign_load")
            log(f"  {case:<24} {impl:<22} {config:<16} {g['median']:8,.0f} GOP/s  [{g['min']:,.0f}-{g['max']:,.0f}]"
                f"  {ok_text(check)}  load {'-' if load is None else f'{load:.0%}'}"
                f"  ({res['subprocess_seconds']:.1f} s, {len(res['attempts'])} attempt(s))")
    return entries


@dataclasses.dataclass
class Job:
    """One implementation of one case: its variants (config name, worker spec), the exact reference,
    the tolerance in requantization steps, an output adapter and, for qcompiler, its compile record."""
    impl: str
    variants: list
    reference: np.ndarray
    tolerance: int
    post: object = None
    compile: dict | None = None


def merge_rounds(entries: list[dict]) -> dict:
    """One variant's entries from several rounds as one: the measurements pooled (median over all of
    them), the worst correctness check, the highest foreign load, every round's result kept."""
    good = [e for e in entries if "error" not in e["result"]]
    if not good:
        return entries[0]
    result = dict(good[0]["result"])
    result["times"] = [t for e in good for t in e["result"]["times"]]
    loads = [e["result"].get("foreign_load") for e in good if e["result"].get("foreign_load") is not None]
    result["foreign_load"] = max(loads) if loads else None
    result["attempts"] = [a for e in good for a in e["result"].get("attempts", [])]
    result["rounds"] = [{k: v for k, v in e["result"].items() if k not in ("attempts",)} for e in entries]
    checks = [e["check"] for e in good if e["check"] is not None]
    check = next((c for c in checks if not c.get("ok")), None) or \
        max(checks, key=lambda c: c.get("max_abs_diff", 0), default=None)
    return {"config": good[0]["config"], "result": result, "check": check}


def run_jobs(runner: Runner, suite: "Suite", case: str, ops: float, jobs: list[Job], rounds: int,
             log=print) -> None:
    """Measure every job ``rounds`` times, interleaved (all jobs, then all again): this VM has slow
    phases lasting seconds to minutes, and interleaving spreads them over every implementation instead
    of one. Each variant's measurements are pooled over the rounds; the fastest correct variant is the
    implementation's row."""
    per_job: list[list[list[dict]]] = [[] for _ in jobs]
    for _ in range(rounds):
        suite.note_peak(case)
        for i, job in enumerate(jobs):
            per_job[i].append(measure_variants(runner, case, job.impl, job.variants, ops, job.reference,
                                               job.tolerance, post=job.post, log=log))
    for job, by_round in zip(jobs, per_job):
        entries = [merge_rounds([entries[v] for entries in by_round]) for v in range(len(job.variants))]
        row = add_best(suite, case, job.impl, ops, entries)
        if job.compile is not None:
            row["compile"] = job.compile


def describe_info(info: dict) -> str:
    """Short config text from a worker's info: ORT's optimized graph, or qcompiler's kernel summary."""
    if info.get("ort_optimized_graph"):
        return ",".join(op.replace("com.microsoft.", "ms.") for op in info["ort_optimized_graph"])
    if info.get("qcompiler_ops"):
        parts = []
        for kind, ops in info["qcompiler_ops"].items():
            if ops:
                parts.append(kind + ":" + "+".join(op + (f"x{n}" if n > 1 else "") for op, n in ops.items()))
        return " ".join(parts)
    return ""


def add_best(suite: "Suite", case: str, impl: str, ops: float, entries: list[dict]) -> dict:
    """The implementation's row = its fastest correct variant (or fastest at all, or the first error)."""
    good = [e for e in entries if "error" not in e["result"]]
    if not good:
        return suite.add(case, impl, ops, None, None, config=entries[0]["config"] if len(entries) == 1 else "",
                         variants=entries, error=entries[0]["result"]["error"])
    pool = [e for e in good if (e["check"] or {}).get("ok")] or good
    best = min(pool, key=lambda e: float(np.median(e["result"]["times"])))
    return suite.add(case, impl, ops, best["result"], best["check"], config=best["config"], variants=entries)


def compile_with_qcompiler(onnx_path: Path, so_path: Path, target=None) -> tuple[str | None, float]:
    """qcompiler.compile for ``target`` (None: the host) in this (parent) process, not timed with
    the kernels; TVM's native stderr
    chatter goes to a log file. Returns (error text or None, seconds). The sources' fingerprint at
    compile time is in compiler_fingerprint() (another session may be editing them)."""
    import qcompiler
    log_path = Path(so_path).with_suffix(".compile.log")
    t0 = time.time()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_path, "wb") as logf:
            os.dup2(logf.fileno(), 2)
            try:
                qcompiler.compile(str(onnx_path), str(so_path), target=target)
                error = None
            except Exception as err:  # noqa: BLE001 - the row reports it, the run goes on
                lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
                error = f"compile failed: {type(err).__name__}: {lines[-1] if lines else ''}"[:400]
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    return error, time.time() - t0


def peak_kind(target=None) -> str | None:
    """The peak.py probe of the int8 instruction qcompiler's kernels use for ``target`` (None: the
    host): vpdpbusd zmm on AVX-512 VNNI, vpmaddwd zmm on AVX-512BW, vpmaddwd ymm on AVX2."""
    import peak as _peak   # benchmarks/peak.py (this directory is on sys.path)
    from qcompiler.target import cpu_class, resolve_target
    cls = cpu_class(resolve_target(target))
    kinds = _peak.CLASSES.get(cls.name) if cls else None
    return kinds[0] if kinds else None


def load_peak(threads: int, repeat: int, kind: str | None, log=print) -> dict | None:
    """Measure peak.py probe ``kind`` (see ``peak_kind``) on `threads` threads now (same run as the
    kernels); None without a probe or if it fails."""
    import peak as _peak
    if kind is None:
        log("no peak probe for this target; tables without % of peak")
        return None
    try:
        return _peak.measure_peaks(threads=threads, kinds=(kind,), per_cpu=False, repeat=repeat)
    except Exception as err:  # noqa: BLE001 - the tables still print, without % of peak
        log(f"peak measurement failed: {err}")
        return None


def fresh_workdir(keep: str | None) -> tuple[Path, object]:
    if keep:
        p = Path(keep)
        p.mkdir(parents=True, exist_ok=True)
        return p, None
    tmp = tempfile.TemporaryDirectory(prefix="qcompiler-bench-")
    return Path(tmp.name), tmp


#: Symmetric int8 weight ranges by bits: 8 as usual, 7 as ONNX Runtime's ``quantize_static(reduce_range=True)``
#: writes them. With 7-bit weights no u8 x s8 pair sum leaves int16 (2 * 255 * 64 = 32,640), so the
#: peers' saturating AVX2 kernels (vpmaddubsw) are exact too: the like-for-like comparison without VNNI.
WEIGHT_RANGES = {8: (-127, 127), 7: (-64, 64)}


def weight_range(bits: int) -> tuple[int, int]:
    """Inclusive (low, high) of the benchmark's int8 weights for ``--weight-bits``."""
    return WEIGHT_RANGES[bits]


def add_common_args(ap) -> None:
    ap.add_argument("--threads", type=int, default=2, help="threads for every implementation (default 2)")
    ap.add_argument("--weight-bits", type=int, choices=sorted(WEIGHT_RANGES), default=8,
                    help="weights in [-127, 127] (8, default) or [-64, 64] (7: reduce_range, where ORT's AVX2 "
                         "kernels are exact)")
    ap.add_argument("--repeat", type=int, default=10, help="measurements per implementation and round (default 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds over all implementations of a case, interleaved; measurements pooled (default 3)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per measurement (default 0.05)")
    ap.add_argument("--retries", type=int, default=2,
                    help=f"re-runs of a measurement disturbed by > {LOAD_LIMIT * 100:.0f}%% foreign CPU load (default 2)")
    ap.add_argument("--quiet-wait", type=float, default=90.0,
                    help="max seconds to wait for an idle machine before each measurement (default 90)")
    ap.add_argument("--json", default=None, help="output JSON path (default benchmarks/results/<kind>-<host>.json)")
    ap.add_argument("--workdir", default=None, help="keep models/inputs/outputs here (default: a temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated implementations to run (default: all)")
    ap.add_argument("--target", default=None,
                    help="qcompiler's target: a CPU class (x86-avx2, x86-avx512, x86-avx512-vnni, x86-avxvnni), an "
                         "LLVM CPU or target JSON (default: this host); the peak is measured for the instruction "
                         "that class's int8 kernels use. The host must be able to run it (AVX2 runs everywhere)")


def start_suite(kind: str, title: str, args, script: str, ort_impls: list[str]):
    """Common start of a benchmark script: work dir, worker runner, measured peak, empty suite.

    Returns (runner, suite, peaks, keepalive): ``suite.peak`` is the 2-thread peak in GOP/s, ``peaks``
    the raw probe results; keep ``keepalive`` referenced while measuring (it owns the temporary work dir).
    """
    workdir, keepalive = fresh_workdir(args.workdir)
    runner = Runner(str(Path(script).resolve()), workdir, args.threads, args.repeat, args.min_time,
                    retries=args.retries, quiet_wait=args.quiet_wait)
    print(f"# {title}, {cpu_model()}, {args.threads} threads per implementation, {args.rounds} interleaved "
          f"round(s) of {args.repeat} measurements x >= {args.min_time * 1e3:.0f} ms each; weights in "
          "[{}, {}] ({}-bit)".format(*weight_range(args.weight_bits), args.weight_bits))
    import peak as peak_mod
    kind = peak_kind(args.target)
    print(f"qcompiler target: {args.target or 'host'}; measuring the peak of its int8 instruction "
          f"({peak_mod.KINDS[kind][0] if kind else 'none'}) ...")
    peaks = load_peak(args.threads, args.repeat, kind)
    peak = peak_mod.peak_gops(peaks, args.threads, kind) if kind else None
    beside = None
    if peaks:
        peak_mod.print_peaks(peaks)
        if peak is not None:
            beside = peak_mod.beside_probe(peaks, kind, args.threads)
    return runner, Suite(kind, peak, ort_impls, beside), peaks, keepalive


def run_suite(kind: str, title: str, args, script: str, ort_impls: list[str], cases: list, run_case,
              header: str, ratios, unit: str) -> int:
    """A whole benchmark script after its arguments: measure the peak, ``run_case(case, runner, suite)``
    for every case, then the table (under ``header``, whose ``{peak}`` is the measured peak), the
    geometric means and the JSON."""
    t_start = time.time()
    runner, suite, peaks, _keepalive = start_suite(kind, title, args, script, ort_impls)
    for case in cases:
        run_case(case, runner, suite)
    total = time.time() - t_start
    print()
    print(header.format(peak=fmt_num(suite.peak)))
    suite.print()
    finish_suite(kind, suite, args, peaks, total, ratios, unit)
    return 0


def finish_suite(kind: str, suite: Suite, args, peaks, total: float, ratios, unit: str) -> None:
    """Common end of a benchmark script: geometric-mean ratios over the cases, then the JSON.

    ``ratios`` lists (implementation, reference implementation or None for the best peer, label);
    ``unit`` names the cases in the printout and JSON ("shapes", "layers").
    """
    geo = {}
    for impl, ref, label in ratios:
        g, n = suite.geomean(impl, ref)
        geo[label] = {"geomean": g, unit: n}
        print(f"geomean {label}: {'-' if g is None else f'{g:.2f}x'} over {n} {unit[:-1]}(s)")
    for impl in dict.fromkeys(r["impl"] for r in suite.rows if r["impl"].startswith("qcompiler")):
        g, n = suite.geomean_percent_peak(impl)
        if g is not None:
            geo[f"{impl} % of peak"] = {"geomean": g, unit: n}
            print(f"geomean {impl} % of the peak measured beside each {unit[:-1]}: {g:.0f}% over {n} {unit[:-1]}(s)")
    print(f"total {total:.0f} s")
    path = write_json(args.json or default_json_path(kind), {
        "meta": run_metadata(args.threads, args), "peak": peaks, "peak_gops": suite.peak,
        "rows": suite.to_json(), "geomean": geo, "total_seconds": total})
    print(f"wrote {path}")

