"""Per-target schedule templates for qcompiler's integer kernels.

A template is a dlight ``ScheduleRule``: ``apply(func, target, tunable)`` returns a Schedule or None.
The registry below maps a target to its rules, most specific first; adding a target means adding a
module and a line here. ``apply_schedules`` runs them over every PrimFunc of a module (dlight's
``ApplyDefaultSchedule``); a PrimFunc no rule takes is an error for integer kernels, because TVM's
unscheduled default runs an int8 GEMM at ~2 GOP/s.
"""
from __future__ import annotations

import tvm
from tvm.s_tir import dlight
from tvm.target import Target, codegen

from qcompiler.errors import QCompilerError, describe_exception
from qcompiler.target import is_x86

from .cpu_common import kernel_key
from .cpu_fallback import CPUFallback
from .cpu_float_matmul import CPUFloatMatmul
from .cpu_softmax import CPUSoftmax
from .cpu_transpose import CPUTranspose
from .x86_generic import X86IntegerKernels
from .x86_vnni import X86VNNIKernels, has_vnni



def rules_for(target: Target) -> list[dlight.ScheduleRule]:
    """The schedule rules for ``target``, most specific first."""
    if is_x86(target):
        return [X86VNNIKernels(), X86IntegerKernels(), CPUTranspose(), CPUFloatMatmul(), CPUSoftmax(), CPUFallback()]
    if target.kind.name == "llvm":
        return [CPUTranspose(), CPUFloatMatmul(), CPUSoftmax(), CPUFallback()]
    raise ValueError(f"no schedule templates for target kind {target.kind.name!r}")


def weight_layout(target: Target) -> str:
    """How the lowering should store weights for ``target``: "packed16x4" (the VNNI micro-kernels'
    [N/16, K/4, 16, 4] and [O/16, R, S, C/4, 16, 4]), "pairs16x2" / "pairs8x2" (int16
    [N/lanes, K/2, lanes, 2] and [O/lanes, R, S, C/2, lanes, 2] for the exact vpmaddwd
    micro-kernels of AVX-512BW / AVX2 CPUs without VNNI) or "plain"."""
    if not is_x86(target):
        return "plain"
    if has_vnni(target):
        return "packed16x4"
    if codegen.llvm_cpu_has_features(["avx512bw"], target):
        return "pairs16x2"
    if codegen.llvm_cpu_has_features(["avx2"], target):
        return "pairs8x2"
    return "plain"


def _failing_kernel(mod: tvm.IRModule, schedule_pass) -> str:
    """Name and key of the first PrimFunc whose scheduling raises on its own (after a module-wide
    failure, which TVM reports without saying which function it was working on)."""
    for gvar, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        try:
            schedule_pass(tvm.IRModule({gvar: func}))
        except Exception:  # noqa: BLE001 - any failure names this kernel
            key = kernel_key(func)
            return gvar.name_hint + (f" ({'/'.join(map(str, key))})" if key else "")
    return "(no single kernel fails alone)"


def apply_schedules(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Schedule every PrimFunc of ``mod`` for ``target``; integer kernels must all be taken. A rule
    that raises is a bug of ours (or TVM's): reported as a QCompilerError naming the kernel."""
    schedule_pass = dlight.ApplyDefaultSchedule(*rules_for(target))
    # dlight's pass assigns the scheduled PrimFuncs into the module it is given: work on a copy, so the
    # caller's unscheduled module (the roofline's op counts come from it) stays as it was
    mod = mod.clone()
    with target:
        try:
            mod = schedule_pass(mod)
        except Exception as err:  # noqa: BLE001 - TVM raises many types; the user gets one line
            raise QCompilerError(f"scheduling kernel {_failing_kernel(mod, schedule_pass)} for "
                                 f"{target.attrs.get('mcpu', target.kind.name)} failed ({describe_exception(err, 200)}); "
                                 "this is a qcompiler bug: please report it with the model") from err
    for gvar, func in mod.functions.items():
        key = kernel_key(func)
        if key is not None and not func.attrs.get("tirx.is_scheduled", False):
            raise RuntimeError(f"integer kernel {gvar.name_hint} {key} got no schedule")
    return mod
