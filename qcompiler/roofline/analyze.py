"""``qcompiler.roofline``: a compiled model's kernels against this machine's ceilings."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import QCompilerError
from .ceilings import SPEC_TABLE, host_ceilings, spec_ceilings, spec_target
from .inventory import KernelInfo
from .report import RooflineReport, kernel_roof
from .timing import kernel_library, time_kernel


def pool_threads(requested: int | None) -> int:
    """The TVM thread pool's size: ``requested`` (default all CPUs) if TVM has not started its pool
    yet (it reads TVM_NUM_THREADS once), else what the pool already has."""
    from ..runtime import set_thread_count
    set_thread_count(requested)
    import tvm
    return int(tvm.get_global_func("runtime.NumThreads")())


def _spec_chip(target) -> str | None:
    """The SPEC_TABLE key of a target this machine cannot run (None: it runs here)."""
    if target is None:
        return None
    from ..target import resolve_target
    if isinstance(target, str) and target in SPEC_TABLE:
        return target
    resolved = resolve_target(target)
    triple = str(resolved.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith("x86_64"):
        return str(resolved.attrs.get("mcpu", "")) or triple
    return None


def _compiled(lib_or_model, target, input_shapes, example_args):
    """(runtime module or None, metadata, source name) of a library path, CompiledModel or model."""
    from ..build import CompiledModel
    if isinstance(lib_or_model, CompiledModel):
        lib_or_model.check_runnable()  # its kernels are about to be timed here
        return lib_or_model.executable.mod, lib_or_model.metadata, lib_or_model.metadata.get("source", "<model>")
    if isinstance(lib_or_model, (str, os.PathLike)) and str(lib_or_model).endswith(".so"):
        from ..runtime import load_library
        module, metadata = load_library(lib_or_model)
        return module, metadata, str(lib_or_model)
    from ..api import compile as compile_model
    compiled = compile_model(lib_or_model, target=target, input_shapes=input_shapes, example_args=example_args)
    compiled.check_runnable()
    source = str(lib_or_model) if isinstance(lib_or_model, (str, os.PathLike)) else compiled.metadata["source"]
    return compiled.executable.mod, compiled.metadata, source


def roofline(lib_or_model, target=None, *, threads: int | None = None, remeasure: bool = False, repeat: int = 10,
             input_shapes: dict | None = None, example_args: tuple | None = None, log=None) -> RooflineReport:
    """Roofline of every kernel of a compiled model.

    ``lib_or_model``: a library written by ``qcompiler compile`` (.so), a ``CompiledModel``, or a model
    ``qcompiler.compile`` accepts (compiled here for ``target``, default the host). Kernels are timed
    one by one with ``threads`` threads (default: TVM's pool size, all cores) against ceilings measured
    on this machine (cached; ``remeasure`` refreshes). A target this machine cannot run (e.g.
    "neoverse-n1") gets datasheet ceilings and no timings.
    """
    chip = _spec_chip(target)
    if chip is not None:
        ceilings = spec_ceilings(chip)
        if isinstance(lib_or_model, (str, os.PathLike)) and str(lib_or_model).endswith(".so"):
            raise QCompilerError(f"{lib_or_model}: a library for {chip} cannot be analysed here; pass the model")
        from ..api import import_model
        from ..build import fuse_module, lower_to_integer
        from ..target import resolve_target
        from .inventory import kernel_inventory
        resolved = resolve_target(spec_target(chip) if isinstance(target, str) and target in SPEC_TABLE else target)
        mod, _, source = import_model(lib_or_model, input_shapes=input_shapes, example_args=example_args)
        kernels = kernel_inventory(fuse_module(lower_to_integer(mod, resolved), resolved))
        rows = [kernel_roof(k, ceilings, None) for k in kernels]
        return RooflineReport(Path(source).name, str(resolved), ceilings.threads, ceilings, rows)

    count = pool_threads(threads)
    module, metadata, source = _compiled(lib_or_model, target, input_shapes, example_args)
    if "kernels" not in metadata:
        raise QCompilerError(f"{source}: the library has no kernel inventory (compiled by an older qcompiler); "
                             "recompile it with `qcompiler compile`")
    kernels = [KernelInfo.from_json(k) for k in metadata["kernels"]]
    # the ceilings of the instructions this library's kernels use (an AVX2 build on an AVX-512 host
    # is measured against vpmaddwd ymm, not the host's vpdpbusd zmm)
    from ..target import resolve_target
    library_target = resolve_target(metadata["target"]) if metadata.get("target") else None
    ceilings = host_ceilings(count, remeasure=remeasure, log=log, target=library_target)
    library = kernel_library(module)
    rows = []
    for kernel in kernels:
        if log:
            log(f"timing {kernel.name} ({kernel.op}) ...")
        rows.append(kernel_roof(kernel, ceilings, time_kernel(library, kernel, repeat=repeat)))
    return RooflineReport(source, metadata.get("target", ""), count, ceilings, rows)
