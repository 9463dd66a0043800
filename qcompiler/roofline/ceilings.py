"""The machine's ceilings: int8 and fp32 compute peaks, DRAM and L2 bandwidth, for 1 and N threads.

Measured here with the TIR probes of ``probes.py`` (built by TVM for this CPU), ERT-style: each probe
is timed ``repeat`` times and the best run is the ceiling (the samples are kept). The best, not the
median: a ceiling is what the machine can do, and on a shared VM a whole burst of runs can fall into
a slow phase (DRAM bandwidth measured 30 and 53 GB/s minutes apart here). The int8 probe follows
the CPU's best int8 instruction, the one qcompiler's templates use: ``vpdpbusd`` zmm (AVX-512 VNNI),
``vpdpbusd`` ymm (AVX-VNNI), else ``vpmaddwd`` zmm (AVX-512BW) or ymm (AVX2); fp32 the widest FMA.
Both are chosen from the target's LLVM features (``INT8_PROBES``, ``FP32_PROBES``). Results are
cached per machine (CPU model, flags, thread count, probe version) under the user cache directory;
``remeasure`` refreshes them.

For targets this machine cannot run (other architectures), ``spec_ceilings`` gives datasheet numbers
from ``SPEC_TABLE``, labelled "spec" with their source.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import QCompilerError
from ..output_files import write_text_atomic
from ..target import host_cpu_flags

PROBE_VERSION = 4  # bump when a probe changes: cached ceilings of older probes are ignored


@dataclass
class Ceiling:
    name: str                  # e.g. "int8 vpdpbusd zmm", "fp32 fma zmm", "DRAM triad", "L2 read"
    kind: str                  # "compute" (GOP/s) or "memory" (GB/s)
    op_class: str              # compute: "int8" / "fp32"; memory: "dram" / "l2"
    threads: int
    value: float               # best of the samples, GOP/s or GB/s
    samples: list = field(default_factory=list)
    source: str = "measured"   # "measured" or "spec: <document>"

    @property
    def unit(self) -> str:
        return "GOP/s" if self.kind == "compute" else "GB/s"


@dataclass
class Ceilings:
    cpu: str
    threads: int               # the "all threads" count
    entries: list
    measured_at: str = ""

    def get(self, op_class: str, threads: int | None = None) -> Ceiling | None:
        threads = self.threads if threads is None else threads
        preferred = [c for c in self.entries if c.op_class == op_class and c.threads == threads]
        return preferred[0] if preferred else None

    def to_json(self) -> dict:
        return {"cpu": self.cpu, "threads": self.threads, "measured_at": self.measured_at,
                "entries": [asdict(c) for c in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> "Ceilings":
        return cls(data["cpu"], data["threads"], [Ceiling(**c) for c in data["entries"]], data.get("measured_at", ""))


# --------------------------------------------------------------------------------------------------
# machine facts
# --------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_size(level: int, default: int) -> int:
    """Bytes of the CPU's cache at ``level`` (data/unified), from sysfs; ``default`` if unknown."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if int((index / "level").read_text()) != level or (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1024, "M": 1024 ** 2}.get(text[-1], 1)
        return int(text.rstrip("KM")) * scale
    return default


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "qcompiler"


def cache_path(threads: int, target=None) -> Path:
    """The cache file of this machine's ceilings for ``threads`` and the probes ``target`` (default the
    host) gets: an AVX2 library on an AVX-512 host is measured against AVX2's instructions."""
    from ..target import host_target
    target = target or host_target()
    probes_used = "|".join((kind or ("none",))[0] for kind in (int8_probe_kind(target), fp32_probe_kind(target)))
    flags = " ".join(sorted(host_cpu_flags() or []))
    key = hashlib.sha1(f"{cpu_model()}|{flags}|{threads}|{probes_used}|{PROBE_VERSION}".encode()).hexdigest()[:16]
    return cache_dir() / f"ceilings-{key}.json"


# --------------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------------
def _build(prim_func, target):
    import tvm
    return tvm.compile(tvm.IRModule({"probe": prim_func}), target=target).mod


def _time(lib, args, repeat: int) -> list[float]:
    import tvm
    timer = lib.time_evaluator("probe", tvm.cpu(), number=1, repeat=repeat)
    return [float(t) for t in timer(*args).results]


def _calibrated_trips(lib, make_args, seconds: float) -> int:
    """A trip count for the compute probes so that one run lasts about ``seconds``."""
    trips = 10_000
    while True:
        elapsed = min(_time(lib, make_args(trips), 2))
        if elapsed > seconds / 4 or trips > 1 << 34:
            return max(1, int(trips * seconds / elapsed))
        trips *= 8


#: The int8 probe of each x86 CPU class, best first: (LLVM feature that selects it, ceiling name, int32
#: lanes, LLVM intrinsic, int16 pairs). The instruction is the one qcompiler's templates use there.
INT8_PROBES = (
    ("avx512vnni", "int8 vpdpbusd zmm", 16, "llvm.x86.avx512.vpdpbusd.512", False),
    ("avxvnni", "int8 vpdpbusd ymm", 8, "llvm.x86.avx512.vpdpbusd.256", False),
    ("avx512bw", "int8 vpmaddwd zmm", 16, "llvm.x86.avx512.pmaddw.d.512", True),
    ("avx2", "int8 vpmaddwd ymm", 8, "llvm.x86.avx2.pmadd.wd", True),
)
#: The fp32 FMA probe of each class, widest first: (LLVM feature, ceiling name, fp32 lanes).
FP32_PROBES = (("avx512f", "fp32 fma zmm", 16), ("fma", "fp32 fma ymm", 8))


def _has_feature(target, feature: str) -> bool:
    """Whether LLVM enables ``feature`` for ``target``: the probe follows what the target can execute,
    never its CPU name (an unknown or future CPU gets the probe of its features)."""
    from tvm.target import codegen
    return bool(codegen.llvm_cpu_has_features([feature], target))


def int8_probe_kind(target) -> tuple[str, object, int] | None:
    """(name, probe factory taking threads, ops per loop trip and thread) for the target's int8 path,
    or None for a target without a vector int8 dot product we probe."""
    from . import probes
    for feature, name, lanes, intrinsic, pairs in INT8_PROBES:
        if _has_feature(target, feature):
            ops_per_instruction = lanes * (2 if pairs else 4) * 2  # int8 (or int16) MACs per lane x 2
            factory = functools.partial(probes.int8_dot_probe, lanes=lanes, intrinsic=intrinsic, pairs=pairs)
            return name, factory, probes.accumulators(lanes) * ops_per_instruction
    return None


def fp32_probe_kind(target) -> tuple[str, object, int] | None:
    """(name, probe factory taking threads, ops per loop trip and thread) of the target's widest fp32
    FMA, or None without FMA."""
    from . import probes
    for feature, name, lanes in FP32_PROBES:
        if _has_feature(target, feature):
            return name, functools.partial(probes.fma_probe, lanes=lanes), probes.accumulators(lanes) * lanes * 2
    return None


def measure_compute(kind, threads: int, target, repeat: int, seconds: float, op_class: str) -> Ceiling:
    import tvm
    name, factory, ops_per_trip = kind
    probe = factory(threads)
    lib = _build(probe, target)

    def filled(param):  # operands from the probe's own buffer declarations; small floats stay finite
        dtype = str(param.dtype)
        return tvm.runtime.tensor(np.full([int(d) for d in param.shape], 1e-3 if "float" in dtype else 1, dtype))
    seed, out = (filled(param) for param in probe.params[:2])
    trips = _calibrated_trips(lib, lambda n: [seed, out, n], seconds)
    samples = [ops_per_trip * trips * threads / t / 1e9 for t in _time(lib, [seed, out, trips], repeat)]
    return Ceiling(name, "compute", op_class, threads, max(samples), samples)


def measure_memory(threads: int, target, repeat: int) -> list[Ceiling]:
    """DRAM triad and copy over arrays of >= 4x the last-level cache, and an L2 read."""
    import tvm

    from . import probes
    lanes = 16
    llc = max(cache_size(3, 0), cache_size(2, 1 << 20))
    n = max(llc, 1 << 24)  # float32 elements: each array is 4x the last-level cache (>= 64 MiB)
    n -= n % (threads * lanes)
    arrays = [tvm.runtime.tensor(np.full(n, v, np.float32)) for v in (0.0, 1.0, 2.0)]
    results = []
    for name, probe, n_arrays in (("DRAM triad", probes.triad_probe, 3), ("DRAM copy", probes.copy_probe, 2)):
        lib = _build(probe(threads, n, lanes), target)
        args = arrays[:n_arrays]
        _time(lib, args, 1)  # first touch
        samples = [n_arrays * 4 * n / t / 1e9 for t in _time(lib, args, repeat)]
        results.append(Ceiling(name, "memory", "dram", threads, max(samples), samples))
    per_thread = cache_size(2, 1 << 20) // 2 // 4
    per_thread -= per_thread % (8 * lanes)
    lib = _build(probes.read_probe(threads, per_thread, lanes), target)
    buf = tvm.runtime.tensor(np.full(threads * per_thread, 1.0, np.float32))
    out = tvm.runtime.tensor(np.zeros((threads, lanes), np.float32))
    passes = max(1, int(2e9 // (per_thread * 4 * threads)))  # ~2 GB read per run
    samples = [passes * per_thread * 4 * threads / t / 1e9 for t in _time(lib, [buf, out, passes], repeat)]
    results.append(Ceiling("L2 read", "memory", "l2", threads, max(samples), samples))
    return results


def measure_ceilings(threads: int, *, repeat: int = 7, seconds: float = 0.1, target=None, log=None) -> Ceilings:
    """Measure every ceiling for 1 thread and ``threads`` threads (the TVM thread pool must have
    ``threads`` workers: set TVM_NUM_THREADS before TVM starts it)."""
    from ..target import host_target
    target = target or host_target()
    entries = []
    counts = sorted({1, threads})
    for op_class, kind in (("int8", int8_probe_kind(target)), ("fp32", fp32_probe_kind(target))):
        if kind is None:
            continue
        for count in counts:
            if log:
                log(f"measuring {kind[0]}, {count} thread(s) ...")
            entries.append(measure_compute(kind, count, target, repeat, seconds, op_class))
    for count in counts:
        if log:
            log(f"measuring DRAM and L2 bandwidth, {count} thread(s) ...")
        entries.extend(measure_memory(count, target, repeat))
    return Ceilings(cpu_model(), threads, entries, time.strftime("%Y-%m-%dT%H:%M:%S"))


def host_ceilings(threads: int, *, remeasure: bool = False, log=None, target=None) -> Ceilings:
    """This machine's ceilings for ``threads`` (and 1) thread(s), from the cache unless ``remeasure``,
    for the instructions of code built for ``target`` (default: the host's own)."""
    path = cache_path(threads, target)
    if not remeasure and path.exists():
        try:
            return Ceilings.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache file is measured again
    ceilings = measure_ceilings(threads, log=log, target=target)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(ceilings.to_json(), indent=1), "ceilings cache")
    return ceilings


# --------------------------------------------------------------------------------------------------
# datasheet ceilings for targets we cannot run
# --------------------------------------------------------------------------------------------------
#: Per-chip ceilings from vendor documents (all cores), for targets this machine cannot measure.
#: int8 = dot-product instruction throughput x lanes x MACs x 2 x cores x clock, as the source states.
SPEC_TABLE = {
    # Arm Neoverse N1 (e.g. AWS Graviton2, 64 cores at 2.5 GHz): 2 x 128-bit NEON pipes per core, SDOT
    # (16 int8 MACs) and FMLA (4 fp32 FMAs) on both: Arm Neoverse N1 Software Optimization Guide,
    # section 3 (instruction throughput tables); DRAM: 8 x DDR4-3200 channels = 204.8 GB/s.
    "neoverse-n1": {"cores": 64, "int8": 64 * 2.5 * 2 * 16 * 2, "fp32": 64 * 2.5 * 2 * 4 * 2, "dram": 204.8,
                    "source": "Arm Neoverse N1 Software Optimization Guide; Graviton2: 64 cores, 2.5 GHz, 8ch DDR4-3200"},
    # Arm Cortex-A76 (e.g. Raspberry Pi 5: 4 cores at 2.4 GHz, LPDDR4X-4267 32-bit = 17 GB/s): 2 x 128-bit
    # NEON pipes, SDOT and FMLA on both: Arm Cortex-A76 Software Optimization Guide.
    "cortex-a76": {"cores": 4, "int8": 4 * 2.4 * 2 * 16 * 2, "fp32": 4 * 2.4 * 2 * 4 * 2, "dram": 17.0,
                   "source": "Arm Cortex-A76 Software Optimization Guide; Raspberry Pi 5: 4 cores, 2.4 GHz"},
    # NVIDIA T4: 130 TOPS int8 (tensor cores), 8.1 TFLOPS fp32, 320 GB/s GDDR6: NVIDIA T4 datasheet.
    "nvidia/tesla-t4": {"gpu": True, "int8": 130_000.0, "fp32": 8_100.0, "dram": 320.0, "source": "NVIDIA T4 Tensor Core GPU datasheet"},
    # NVIDIA A100 40GB SXM: 624 TOPS int8 dense, 19.5 TFLOPS fp32 (non tensor core), 1,555 GB/s HBM2:
    # NVIDIA A100 Tensor Core GPU datasheet.
    "nvidia/nvidia-a100": {"gpu": True, "int8": 624_000.0, "fp32": 19_500.0, "dram": 1555.0,
                           "source": "NVIDIA A100 Tensor Core GPU datasheet (40GB SXM)"},
}


def spec_target(chip: str) -> dict:
    """The target to lower a model for when only ``chip``'s datasheet is known: Arm CPUs as aarch64
    LLVM targets; GPUs (qcompiler has no CUDA backend yet) as a generic LLVM target, whose kernels
    have the same ops and compulsory bytes."""
    if SPEC_TABLE.get(chip, {}).get("gpu"):
        return {"kind": "llvm"}
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": chip}


def spec_ceilings(chip: str) -> Ceilings:
    """Datasheet ceilings of ``chip`` (a key of SPEC_TABLE: an mcpu name or CUDA arch tag)."""
    spec = SPEC_TABLE.get(chip)
    if spec is None:
        raise QCompilerError(f"no measured or datasheet ceilings for {chip!r}: this machine cannot run it and "
                             f"qcompiler's spec table has {', '.join(sorted(SPEC_TABLE))}")
    source = f"spec: {spec['source']}"
    threads = int(spec.get("cores", 1))
    entries = [Ceiling(f"int8 ({chip})", "compute", "int8", threads, float(spec["int8"]), [], source),
               Ceiling(f"fp32 ({chip})", "compute", "fp32", threads, float(spec["fp32"]), [], source),
               Ceiling("DRAM (spec)", "memory", "dram", threads, float(spec["dram"]), [], source)]
    return Ceilings(chip, threads, entries)
