"""Targets: the host CPU from its features, the named CPU classes users can type, and run-time checks.

The host target is LLVM's host CPU name *plus* LLVM's own host-feature query
(``sys::getHostCPUFeatures``: CPUID and the OS's XSAVE state), every vector ISA feature switched on
or off explicitly. A CPU name alone is not enough: a VM that masks AVX-512 on an AVX-512 CPU still
reports the CPU's name, and code built for the name would die with SIGILL.

A library records the ISA features its target enables (LLVM names). Every way of running code
(``load``, an in-process ``CompiledModel``, roofline timing, the benchmarks) calls
``check_runnable`` first, which refuses, naming the missing features, code this CPU cannot execute.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

from .errors import QCompilerError

#: The x86 vector-ISA features (LLVM names) code generation may use and a loader must check.
X86_ISA_FEATURES = (
    "sse4.2", "avx", "avx2", "fma", "f16c", "bmi", "bmi2", "avx512f", "avx512cd", "avx512bw", "avx512dq",
    "avx512vl", "avx512vnni", "avxvnni", "avx512bf16", "avx512vbmi", "avx512vbmi2", "avx512bitalg",
    "avx512vpopcntdq", "avx512ifma", "avx512fp16", "avx512vp2intersect", "gfni", "vaes", "vpclmulqdq",
    "amx-int8", "amx-tile",
)


@dataclass(frozen=True)
class CPUClass:
    """A named x86 CPU class: what ``--target NAME`` builds for and what a CPU needs to run it.

    ``mcpu``/``mattr`` are vendor-neutral LLVM baselines (x86-64-v3 = AVX2+FMA, x86-64-v4 = AVX-512
    F/BW/CD/DQ/VL), so a library for a class runs on every CPU of that class, Intel or AMD.
    """

    name: str
    mcpu: str
    mattr: tuple[str, ...]

    def target_spec(self, num_cores: int | None = None) -> dict:
        spec = {"kind": "llvm", "mcpu": self.mcpu, "num-cores": num_cores or usable_cpus()}
        if self.mattr:
            spec["mattr"] = list(self.mattr)
        return spec


#: Most specific first: a CPU belongs to the first class whose features it has.
#: (The int8 kernels multiply with vpdpbusd zmm / vpdpbusd ymm / vpmaddwd zmm / vpmaddwd ymm.)
CPU_CLASSES = (
    CPUClass("x86-avx512-vnni", "x86-64-v4", ("+avx512vnni",)),  # Cascade Lake .. Sapphire Rapids, Zen 4/5
    CPUClass("x86-avxvnni", "x86-64-v3", ("+avxvnni",)),  # Intel Alder Lake and later client CPUs
    CPUClass("x86-avx512", "x86-64-v4", ()),  # Intel Skylake-SP / Skylake-X
    CPUClass("x86-avx2", "x86-64-v3", ()),  # Intel Haswell and later, AMD Zen 1-3
)
PRESETS = {c.name: c for c in CPU_CLASSES}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """The ISA features this CPU and OS support, as LLVM names them (LLVM's host-feature query)."""
    import tvm  # noqa: F401  (registers the LLVM functions)
    import tvm_ffi
    features = tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return frozenset(str(name) for name, enabled in features.items() if enabled)


def host_target(num_cores: int | None = None):
    """This machine: LLVM's host CPU name with every vector ISA feature set on or off as the host
    reports it, using ``num_cores`` (default all usable) cores."""
    from tvm.target import Target, codegen
    spec = {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": num_cores or usable_cpus()}
    if str(codegen.llvm_get_system_triple()).startswith(("x86_64", "i686")):
        have = host_features()
        spec["mattr"] = [("+" if f in have else "-") + f for f in X86_ISA_FEATURES]
    return Target(spec)


def _tvm_target(spec):
    from tvm.target import Target
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise QCompilerError(f"--target: invalid JSON ({err.msg}); example: "
                                     '\'{"kind": "llvm", "mcpu": "znver4"}\'') from None
        elif text in ("llvm", "host", "native"):
            return host_target()
        elif text in PRESETS:
            spec = PRESETS[text].target_spec()
        else:  # a bare LLVM CPU name, e.g. "skylake-avx512"
            from tvm.target import codegen
            if not codegen.llvm_is_valid_cpu(text, "x86_64-linux-gnu"):
                raise QCompilerError(f"--target {text!r}: not a CPU class ({', '.join(PRESETS)}), an LLVM x86 CPU "
                                     "name (e.g. znver3, skylake-avx512) or target JSON")
            spec = {"kind": "llvm", "mcpu": text}
    try:
        return Target(spec)
    except Exception as err:  # TVM raises its own error types for bad target dicts
        raise QCompilerError(f"invalid target {spec!r}: {str(err).strip().splitlines()[-1]}") from None


def resolve_target(spec=None):
    """``None``/"host" -> the host; a CPU class name (``x86-avx2``, ...), LLVM CPU name, dict, JSON
    string or Target -> that target."""
    target = host_target() if spec is None else _tvm_target(spec)
    if target.kind.name != "llvm":
        raise QCompilerError(f"target kind {target.kind.name!r} is not supported yet; use an llvm (CPU) target")
    return target


def is_x86(target) -> bool:
    triple = str(target.attrs.get("mtriple", "") or "")
    return target.kind.name == "llvm" and (not triple or triple.startswith(("x86_64", "i686")))


def required_features(target) -> list[str]:
    """The x86 ISA features (LLVM names) the target lets LLVM use: what a CPU needs to run its code."""
    from tvm.target import codegen
    if not is_x86(target):
        return []
    return sorted(f for f in X86_ISA_FEATURES if codegen.llvm_cpu_has_features([f], target))


def cpu_class(target) -> CPUClass | None:
    """The most specific named class whose features ``target`` has (None: below AVX2)."""
    have = set(required_features(target))
    for cls in CPU_CLASSES:
        if set(class_features(cls)) <= have:
            return cls
    return None


@functools.lru_cache(maxsize=None)
def class_features(cls: CPUClass) -> tuple[str, ...]:
    from tvm.target import Target
    return tuple(required_features(Target(cls.target_spec(1))))


def missing_features(required) -> list[str]:
    """The features of ``required`` this machine lacks (none off x86, where nothing is checked)."""
    from tvm.target import codegen
    if not str(codegen.llvm_get_system_triple()).startswith(("x86_64", "i686")):
        return []
    return sorted(set(required) - host_features())


def can_run(target) -> bool:
    """Whether this machine can execute code built for ``target``."""
    target = resolve_target(target)
    return is_x86(target) and not missing_features(required_features(target))


def check_runnable(required, where: str, cpu: str = "?") -> None:
    """Refuse (QCompilerError) to run code needing ``required`` features on a CPU that lacks some."""
    missing = missing_features(required)
    if missing:
        have = cpu_class_name_of_host()
        raise QCompilerError(f"{where}: built for CPU {cpu!r}, needs CPU features {', '.join(missing)} that this "
                             f"machine lacks (it is {have}); recompile for this machine (`qcompiler compile MODEL "
                             f"-o OUT.so` builds for the host by default, or `--target {have}`)")


def cpu_class_name_of_host() -> str:
    cls = cpu_class(host_target(1))
    return cls.name if cls else "x86-64 without AVX2"


def host_cpu_flags() -> set[str] | None:
    """This machine's CPU flags from /proc/cpuinfo (Linux), or None: only a cache key for measured
    ceilings (feature decisions use ``host_features``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None
