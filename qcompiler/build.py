"""Compile a Relax module with QDQ ops into an executable with integer kernels, and export it.

Pipeline (each step one pass or one call):
  1. x86: store int8 activations as uint8 (passes.legalize_activations_to_uint8)
  2. QDQ patterns -> fused integer kernels (passes.lower_qdq_to_integer); op summary
  3. TVM legalization and fusion of the remaining ops (erf as a vectorizable polynomial, LegalizeOps,
     AnnotateTIROpPattern, FuseOps,
     FuseTIR); integer kernels are marked opaque so fusion leaves them as their templates expect;
     the kernel inventory (ops from TIR, argument shapes) for the roofline goes into the metadata
  4. schedules/ templates for every PrimFunc (schedules.apply_schedules)
  5. tvm.compile: Relax VM lowering and LLVM codegen
"""
from __future__ import annotations

import os
import platform
import time
from importlib import metadata as pkg_metadata
from pathlib import Path

import tvm
from tvm import relax

from . import passes
from .artifact import write_library
from .op_summary import summarize_ops
from .roofline.inventory import kernel_inventory
from .runtime import Model
from .signature import ModelSignature
from .target import cpu_class, required_features, resolve_target


def lower_to_integer(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Steps 1-2: the QDQ graph with integer kernels in place of QDQ patterns."""
    import schedules  # lazily: schedules imports qcompiler.kernels
    seq = [passes.legalize_activations_to_uint8] if schedules.is_x86(target) else []
    # FoldConstant: computations on weights alone (the transposed float weights of torch's
    # nn.MultiheadAttention out-projection, dequantized weights of float matmuls) run once, here
    seq += [passes.lower_qdq_to_integer, relax.transform.DeadCodeElimination(), passes.integer_lookup_tables,
            relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
    with target:  # the lowering picks kernel layouts for the target
        return tvm.transform.Sequential(seq)(mod)


def fuse_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Step 3: every op a PrimFunc (unscheduled), fused where TVM's fusion rules allow."""
    with target:
        return tvm.transform.Sequential([
            passes.vectorizable_transcendentals,
            passes.precise_layer_norm,
            passes.small_powers,
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            # pure reshapes become views, as tvm.compile would make them anyway: done here so the
            # kernel inventory lists only kernels that run
            relax.transform.RewriteDataflowReshape(),
            relax.transform.DeadCodeElimination(),
        ])(mod)


def schedule_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Steps 3-4."""
    import schedules
    return schedules.apply_schedules(fuse_module(mod, target), target)


def _versions() -> dict:
    def version(name):
        try:
            return pkg_metadata.version(name)
        except pkg_metadata.PackageNotFoundError:
            return None
    return {"qcompiler": version("qcompiler"), "apache-tvm": version("apache-tvm"),
            "apache-tvm-ffi": version("apache-tvm-ffi"), "python": platform.python_version()}


class CompiledModel(Model):
    """A model compiled in this process: callable like a loaded one, and exportable."""

    def __init__(self, executable, metadata: dict):
        super().__init__(relax.VirtualMachine(executable, tvm.cpu()), metadata, metadata.get("source", "<model>"))
        self.executable = executable

    def export(self, path: str | os.PathLike) -> Path:
        """Write the deployable ``.so`` (metadata inside); atomic."""
        return write_library(self.executable, path, self.metadata)


def build(mod: tvm.IRModule, signature: ModelSignature, target=None, *, source: str = "<module>") -> CompiledModel:
    """Lower, schedule and compile ``mod`` for ``target`` (default: this machine's CPU)."""
    target = resolve_target(target)
    start = time.perf_counter()
    lowered = lower_to_integer(mod, target)
    summary = summarize_ops(lowered)
    fused = fuse_module(lowered, target)
    import schedules
    scheduled = schedules.apply_schedules(fused, target)
    kernels = kernel_inventory(fused, scheduled)
    executable = tvm.compile(scheduled, target=target)
    metadata = {
        "source": source,
        "signature": signature.to_json(),
        "target": str(target),
        "cpu": str(target.attrs.get("mcpu", "")),
        "required_cpu_features": required_features(target),
        "cpu_class": getattr(cpu_class(target), "name", None),  # e.g. "x86-avx2": where this library runs
        "versions": _versions(),
        "ops": summary,
        "kernels": [kernel.to_json() for kernel in kernels],
        "compile_seconds": round(time.perf_counter() - start, 3),
    }
    return CompiledModel(executable, metadata)
