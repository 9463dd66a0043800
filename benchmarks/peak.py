"""Measured hardware peak of this CPU for each x86 CPU class: the int8 and fp32 instructions of the class.

    python benchmarks/peak.py [--class host|x86-avx2|x86-avx512|x86-avx512-vnni|all] [--threads 2]
                              [--repeat 15] [--json out.json]

A class's peak is the throughput of the instructions qcompiler's kernels for that class use:
x86-avx512-vnni `vpdpbusd zmm` + `vfmadd231ps zmm`, x86-avx512 `vpmaddwd zmm` + `vfmadd231ps zmm`,
x86-avx2 `vpmaddwd ymm` + `vfmadd231ps ymm` (AVX2 code runs on every x86-64-v3 CPU, so that class can
be measured on any such host; a kind the CPU lacks is reported as an error, never run). `host` (the
default) is the most specific class this CPU has, `all` every kind.

Compiles `peak_kernels.c` (beside this file) with gcc at first use into ~/.cache/qcompiler/ and runs
it in a subprocess: independent accumulator chains in an unrolled inline-asm loop (16 with zmm, 12
with ymm: AVX2 has 16 ymm registers for accumulators, operands and products), per thread, threads
pinned one per CPU. Reported in GOP/s: ops = 2 x multiply-accumulates (vpdpbusd zmm 128, vpmaddwd zmm
64, vpmaddwd ymm 32, vfmadd zmm 32, vfmadd ymm 16 per instruction). 1-thread peaks are measured on each
CPU separately (one vCPU of this VM sometimes runs slow); the multi-thread peak uses CPUs 0..threads-1.

`measure_peaks()` is what gemm.py and conv.py call to get the peak of the same run.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import harness  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "peak_kernels.c"
# no -m flags: only the inline asm uses AVX2/AVX-512, so the binary starts on every x86-64 CPU (with
# -mavx512f gcc may vectorize the C around it with zmm, which would SIGILL on an AVX2-only host)
CFLAGS = ["-O2", "-pthread"]
#: peak_kernels.c kind -> (what it measures, /proc/cpuinfo flags it needs, accumulator chains)
KINDS = {
    "vnni": ("vpdpbusd zmm (int8)", ("avx512f", "avx512_vnni"), 16),
    "vpmaddwd-zmm": ("vpmaddwd zmm (int8)", ("avx512f", "avx512bw"), 16),
    "fma": ("vfmadd231ps zmm (fp32)", ("avx512f",), 16),
    "vpmaddwd-ymm": ("vpmaddwd ymm (int8)", ("avx2",), 12),
    "fma-ymm": ("vfmadd231ps ymm (fp32)", ("avx", "fma"), 12),
}
#: CPU class (qcompiler's names) -> its (int8, fp32) kinds; most specific first
CLASSES = {
    "x86-avx512-vnni": ("vnni", "fma"),
    "x86-avx512": ("vpmaddwd-zmm", "fma"),
    "x86-avx2": ("vpmaddwd-ymm", "fma-ymm"),
}


def missing_flags(kind: str, flags: set[str]) -> list[str]:
    """The CPU flags ``kind`` needs that this CPU lacks (then it must not run: SIGILL)."""
    return [f for f in KINDS[kind][1] if f not in flags]


def class_kinds(cpu_class: str, flags: set[str]) -> tuple[str, ...]:
    """The kinds to measure for ``cpu_class``; "host" = the most specific class this CPU can run
    entirely, "all" = every kind."""
    if cpu_class == "all":
        return tuple(KINDS)
    if cpu_class == "host":
        runnable = [c for c, kinds in CLASSES.items() if not any(missing_flags(k, flags) for k in kinds)]
        return CLASSES[runnable[0]] if runnable else CLASSES["x86-avx2"]
    return CLASSES[cpu_class]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qcompiler"


def build_probe() -> Path:
    """The compiled probe, rebuilt when the source, flags or compiler change."""
    cc = os.environ.get("CC", "gcc")
    if not shutil.which(cc):
        raise RuntimeError(f"{cc} not found: the peak probe is a C program (apt-get install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha1(SOURCE.read_bytes() + " ".join(CFLAGS + version).encode()).hexdigest()[:12]
    exe = cache_dir() / f"peak_kernels-{key}"
    if exe.exists():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(exe.name + f".tmp{os.getpid()}")
    proc = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE.name} failed: {proc.stderr.strip()[-500:]}")
    tmp.replace(exe)
    return exe


def _run(exe: Path, kind: str, threads: int, iters: int, repeat: int,
         cpus: list[int]) -> tuple[list[float], float | None, list[float]]:
    """GOP/s of each repeat, the foreign CPU load meanwhile, and each repeat's seconds."""
    cmd = [str(exe), kind, str(threads), str(iters), str(repeat), ",".join(map(str, cpus))]
    rc, out, err, foreign = harness.run_command(cmd, timeout=600)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}): {err.strip()[-300:]}")
    gops, seconds = [], []
    for line in out.split("\n"):
        if line.strip():
            secs, ops = (float(v) for v in line.split()[:2])
            gops.append(ops / secs / 1e9)
            seconds.append(secs)
    return gops, foreign, seconds


def probe(exe: Path, kind: str, cpus: list[int], repeat: int, target: float, retries: int = 2) -> dict:
    """GOP/s statistics of `repeat` runs of ~`target` s each on the given CPUs (one thread per CPU)."""
    threads = len(cpus)
    calib_iters = 2_000_000
    _, _, calib = _run(exe, kind, threads, calib_iters, 3, cpus)
    iters = max(10_000, int(target * calib_iters / min(calib[1:])))  # first run warms up; the faster of the others
    attempts, best = [], None
    for _ in range(1 + retries):
        harness.wait_for_quiet(60, log=lambda s: print(s, file=sys.stderr))
        gops, foreign, _ = _run(exe, kind, threads, iters, repeat, cpus)
        attempts.append({"gops": gops, "foreign_load": foreign})
        if best is None or (foreign or 0) < (best["foreign_load"] or 0):
            best = attempts[-1]
        if foreign is None or foreign <= harness.LOAD_LIMIT:
            break
    return {"op": KINDS[kind][0], "threads": threads, "cpus": cpus, "iters": iters,
            "gops": harness.stats(best["gops"]), "samples": best["gops"],
            "foreign_load": best["foreign_load"], "attempts": attempts}


def measure_peaks(threads: int = 2, kinds=("vnni", "fma"), per_cpu: bool = True, repeat: int = 15,
                  target: float = 0.1) -> dict:
    """{kind: {"threads": {n: probe}, "per_cpu": {cpu: probe}}}; kind a key of KINDS. A kind whose
    instructions this CPU lacks is not run: {"error": ...}."""
    exe = build_probe()
    flags = harness.cpu_flags()
    cpus = sorted(os.sched_getaffinity(0))
    out = {"probe": str(exe), "cflags": CFLAGS, "accumulators": {k: KINDS[k][2] for k in kinds}}
    for kind in kinds:
        op, _, _ = KINDS[kind]
        missing = missing_flags(kind, flags)
        if missing:
            out[kind] = {"op": op, "error": f"CPU lacks {', '.join(missing)}"}
            continue
        res = {"op": op, "threads": {}, "per_cpu": {}}
        if per_cpu:
            for c in cpus:
                res["per_cpu"][str(c)] = probe(exe, kind, [c], repeat, target)
        if threads > len(cpus):
            res["threads"][str(threads)] = {"error": f"only {len(cpus)} CPUs"}
        else:
            res["threads"][str(threads)] = probe(exe, kind, cpus[:threads], repeat, target)
        out[kind] = res
    return out


def beside_probe(peaks: dict, kind: str, threads: int, repeat: int = 5):
    """A function measuring the ``threads``-thread ``kind`` peak again, briefly (``repeat`` runs of the
    start-up probe's length): its median GOP/s. The suites call it beside every round of every case, so
    that a kernel is compared with the peak of the same minutes (this VM's neighbours slow both the
    probe and the kernels by up to ~40% for seconds to minutes)."""
    start = peaks[kind]["threads"][str(threads)]
    exe, cpus, iters = Path(peaks["probe"]), start["cpus"], start["iters"]

    def measure() -> float:
        gops, _, _ = _run(exe, kind, threads, iters, repeat, cpus)
        return float(np.median(gops))
    return measure


def peak_gops(peaks: dict | None, threads: int, kind: str = "vnni") -> float | None:
    """Median GOP/s of the `threads`-thread probe (what the tables divide by), or None."""
    try:
        return peaks[kind]["threads"][str(threads)]["gops"]["median"]
    except (KeyError, TypeError):
        return None


def peak_rows(peaks: dict) -> list[list]:
    rows = []
    for kind in KINDS:
        res = peaks.get(kind)
        if not res:
            continue
        if "error" in res:
            rows.append([res["op"], "-", "-", "n/a", "", "", res["error"]])
            continue
        entries = [(p, "1") for p in res["per_cpu"].values()] + [(p, k) for k, p in res["threads"].items()]
        for p, n in entries:
            if "error" in p:
                rows.append([res["op"], n, "-", "n/a", "", "", p["error"]])
                continue
            g = p["gops"]
            load = p["foreign_load"]
            rows.append([res["op"], str(p["threads"]), ",".join(map(str, p["cpus"])), f"{g['median']:,.0f}",
                         f"{g['min']:,.0f}-{g['max']:,.0f}", f"{g['p10']:,.0f}-{g['p90']:,.0f}",
                         "-" if load is None else f"{load:.0%}" + ("!" if load > harness.LOAD_LIMIT else "")])
    return rows


def print_peaks(peaks: dict, out=print) -> None:
    harness.print_table(["probe", "threads", "cpus", "median GOP/s", "min-max", "p10-p90", "load"],
                        peak_rows(peaks), "lllrrrl", out=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--class", "--target", dest="cpu_class", default="host", choices=["host", *CLASSES, "all"],
                    help="CPU class whose peaks to measure (default host: this CPU's most specific class)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-thread probe (default 2)")
    ap.add_argument("--repeat", type=int, default=15, help="measurements per probe (default 15)")
    ap.add_argument("--seconds", type=float, default=0.1, help="seconds per measurement (default 0.1)")
    ap.add_argument("--json", default=None, help="also write the results here (default: only print)")
    args = ap.parse_args(argv)
    t0 = time.time()
    kinds = class_kinds(args.cpu_class, harness.cpu_flags())
    peaks = measure_peaks(threads=args.threads, kinds=kinds, repeat=args.repeat, target=args.seconds)
    peaks["class"] = args.cpu_class
    print(f"# measured peaks ({args.cpu_class}), {harness.cpu_model()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"{args.repeat} x {args.seconds:.2f} s per probe; load = other processes' CPU use during the probe")
    print_peaks(peaks)
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        path = harness.write_json(args.json, {"meta": harness.run_metadata(args.threads, args), "peaks": peaks})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
