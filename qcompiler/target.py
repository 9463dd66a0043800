"""Targets: detect the host CPU and list the ISA features a library will need at run time.

The host's CPU name comes from LLVM (``llvm_get_system_cpu``), never from a guess: LLVM names this
CI machine's AMD EPYC "znver4", and code built for "znver5" uses AVX-VNNI (VEX) instructions that
it lacks (SIGILL). The features a target enables are recorded in the library's metadata so a
loader can refuse a library built for a CPU the machine is not.
"""
from __future__ import annotations

import os

from .errors import QCompilerError

#: LLVM x86 feature name -> Linux /proc/cpuinfo flag, for the features our kernels can emit.
X86_FEATURE_FLAGS = {
    "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
    "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "avx512bf16": "avx512_bf16",
    "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2", "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq", "avx512ifma": "avx512ifma", "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect", "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq",
    "amx-int8": "amx_int8", "amx-tile": "amx_tile",
}


def _tvm_target(spec):
    from tvm.target import Target
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, str):
        import json
        text = spec.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise QCompilerError(f"--target: invalid JSON ({err.msg}); example: "
                                     '\'{"kind": "llvm", "mcpu": "znver4"}\'') from None
        elif text in ("llvm", "host", "native"):
            return host_target()
        else:  # a bare CPU name, e.g. "skylake-avx512"
            spec = {"kind": "llvm", "mcpu": text}
    try:
        return Target(spec)
    except Exception as err:  # TVM raises its own error types for bad target dicts
        raise QCompilerError(f"invalid target {spec!r}: {str(err).strip().splitlines()[-1]}") from None


def host_target(num_cores: int | None = None):
    """The LLVM target of this machine (its CPU name as LLVM detects it), using all its cores."""
    from tvm.target import Target, codegen
    cpu = codegen.llvm_get_system_cpu()
    return Target({"kind": "llvm", "mcpu": cpu, "num-cores": num_cores or os.cpu_count() or 1})


def resolve_target(spec=None):
    """``None``/"host" -> the host; a dict, JSON string, CPU name or Target -> that target."""
    target = host_target() if spec is None else _tvm_target(spec)
    if target.kind.name != "llvm":
        raise QCompilerError(f"target kind {target.kind.name!r} is not supported yet; use an llvm (CPU) target")
    return target


def required_features(target) -> list[str]:
    """The x86 ISA features (cpuinfo names) the target lets LLVM use."""
    from tvm.target import codegen
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith("x86_64"):
        return []
    return sorted(flag for feature, flag in X86_FEATURE_FLAGS.items()
                  if codegen.llvm_cpu_has_features([feature], target))


def host_cpu_flags() -> set[str] | None:
    """This machine's CPU flags from /proc/cpuinfo (Linux), or None where that is not available."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None
