"""Measured hardware peak of this CPU: int8 `vpdpbusd zmm` and fp32 `vfmadd231ps zmm` throughput.

    python benchmarks/peak.py [--threads 2] [--repeat 15] [--json out.json]

Compiles `peak_kernels.c` (beside this file) with gcc at first use into ~/.cache/qcompiler/ and runs
it in a subprocess: 16 independent accumulator chains in an unrolled inline-asm loop, per thread, threads
pinned one per CPU. Reported in GOP/s: one vpdpbusd zmm = 16 lanes x 4 MACs x 2 = 128 ops, one
vfmadd zmm = 16 x 2 = 32 flops. 1-thread peaks are measured on each CPU separately (one vCPU of this VM
sometimes runs slow); the multi-thread peak uses CPUs 0..threads-1.

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
import harness  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "peak_kernels.c"
CFLAGS = ["-O2", "-mavx512f", "-mavx512vnni", "-pthread"]
OPS_NAME = {"vnni": "vpdpbusd zmm (int8)", "fma": "vfmadd231ps zmm (fp32)"}
CPU_FLAG = {"vnni": "avx512_vnni", "fma": "avx512f"}


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
         cpus: list[int]) -> tuple[list[float], float | None]:
    cmd = [str(exe), kind, str(threads), str(iters), str(repeat), ",".join(map(str, cpus))]
    rc, out, err, foreign = harness.run_command(cmd, timeout=600)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}): {err.strip()[-300:]}")
    gops = []
    for line in out.split("\n"):
        if line.strip():
            secs, ops = (float(v) for v in line.split()[:2])
            gops.append(ops / secs / 1e9)
    return gops, foreign


def probe(exe: Path, kind: str, cpus: list[int], repeat: int, target: float, retries: int = 2) -> dict:
    """GOP/s statistics of `repeat` runs of ~`target` s each on the given CPUs (one thread per CPU)."""
    threads = len(cpus)
    calib, _ = _run(exe, kind, threads, 2_000_000, 3, cpus)
    calib = [max(calib[1:])]   # first run warms up; the faster of the others
    ops_per_iter = 16 * (128 if kind == "vnni" else 32) * threads
    iters = max(10_000, int(target * calib[0] * 1e9 / ops_per_iter))
    attempts, best = [], None
    for _ in range(1 + retries):
        harness.wait_for_quiet(60, log=lambda s: print(s, file=sys.stderr))
        gops, foreign = _run(exe, kind, threads, iters, repeat, cpus)
        attempts.append({"gops": gops, "foreign_load": foreign})
        if best is None or (foreign or 0) < (best["foreign_load"] or 0):
            best = attempts[-1]
        if foreign is None or foreign <= harness.LOAD_LIMIT:
            break
    return {"op": OPS_NAME[kind], "threads": threads, "cpus": cpus, "iters": iters,
            "gops": harness.stats(best["gops"]), "samples": best["gops"],
            "foreign_load": best["foreign_load"], "attempts": attempts}


def measure_peaks(threads: int = 2, kinds=("vnni", "fma"), per_cpu: bool = True, repeat: int = 15,
                  target: float = 0.1) -> dict:
    """{kind: {"threads": {n: probe}, "per_cpu": {cpu: probe}}}; kind in vnni, fma. Missing CPU feature
    -> {"error": ...}."""
    exe = build_probe()
    flags = harness.cpu_flags()
    cpus = sorted(os.sched_getaffinity(0))
    out = {"probe": str(exe), "cflags": CFLAGS, "accumulators": 16}
    for kind in kinds:
        if CPU_FLAG[kind] not in flags:
            out[kind] = {"op": OPS_NAME[kind], "error": f"CPU lacks {CPU_FLAG[kind]}"}
            continue
        res = {"op": OPS_NAME[kind], "threads": {}, "per_cpu": {}}
        if per_cpu:
            for c in cpus:
                res["per_cpu"][str(c)] = probe(exe, kind, [c], repeat, target)
        if threads > len(cpus):
            res["threads"][str(threads)] = {"error": f"only {len(cpus)} CPUs"}
        else:
            res["threads"][str(threads)] = probe(exe, kind, cpus[:threads], repeat, target)
        out[kind] = res
    return out


def peak_gops(peaks: dict | None, threads: int, kind: str = "vnni") -> float | None:
    """Median GOP/s of the `threads`-thread probe (what the tables divide by), or None."""
    try:
        return peaks[kind]["threads"][str(threads)]["gops"]["median"]
    except (KeyError, TypeError):
        return None


def peak_rows(peaks: dict) -> list[list]:
    rows = []
    for kind in ("vnni", "fma"):
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
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-thread probe (default 2)")
    ap.add_argument("--repeat", type=int, default=15, help="measurements per probe (default 15)")
    ap.add_argument("--seconds", type=float, default=0.1, help="seconds per measurement (default 0.1)")
    ap.add_argument("--json", default=None, help="also write the results here (default: only print)")
    args = ap.parse_args(argv)
    t0 = time.time()
    peaks = measure_peaks(threads=args.threads, repeat=args.repeat, target=args.seconds)
    print(f"# measured peaks, {harness.cpu_model()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"{args.repeat} x {args.seconds:.2f} s per probe; load = other processes' CPU use during the probe")
    print_peaks(peaks)
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        path = harness.write_json(args.json, {"meta": harness.run_metadata(args.threads, args), "peaks": peaks})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
