"""Run a compiled model: numpy in, numpy out, inputs checked against the signature.

``load(path)`` reads the library's metadata first (no code loaded), refuses a library that needs CPU
features this machine lacks, then loads it with TVM's runtime and wraps its Relax VM.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .artifact import read_metadata
from .errors import QCompilerError
from .native_log import native_stderr_silenced
from .signature import ModelSignature
from .target import check_runnable, usable_cpus


class Model:
    """A runnable model: ``model(x)`` or ``model(name=x)`` -> numpy array (tuple for several outputs)."""

    def __init__(self, vm, metadata: dict, where: str):
        set_thread_count()  # all CPUs unless the user chose; effective until TVM's pool first runs
        self._vm = vm
        self.metadata = metadata
        self.signature = ModelSignature.from_json(metadata["signature"])
        self._where = where
        self._runnable = False

    def check_runnable(self) -> None:
        """Refuse (QCompilerError) to run code built for CPU features this machine lacks: a model
        compiled in-process for another CPU can be exported, not run (SIGILL kills the process)."""
        if not self._runnable:
            check_cpu_features(self.metadata, self._where)
            self._runnable = True

    def _tensors(self, args, kwargs) -> list:
        import tvm
        self.check_runnable()
        specs = self.signature.inputs
        if args and kwargs:
            raise QCompilerError(f"{self._where}: pass inputs either by position or by name, not both")
        if kwargs:
            missing = [s.name for s in specs if s.name not in kwargs]
            extra = sorted(set(kwargs) - {s.name for s in specs})
            if missing or extra:
                raise QCompilerError(f"{self._where}: inputs {sorted(kwargs)} do not match the model's inputs "
                                     f"{[s.name for s in specs]}")
            args = [kwargs[s.name] for s in specs]
        if len(args) != len(specs):
            raise QCompilerError(f"{self._where}: expected {len(specs)} input(s) "
                                 f"({', '.join(s.describe() for s in specs)}), got {len(args)}")
        tensors = []
        for spec, value in zip(specs, args):
            value = np.asarray(value)
            if tuple(value.shape) != spec.shape or str(value.dtype) != spec.dtype:
                got = "x".join(map(str, value.shape)) or "scalar"
                raise QCompilerError(f"{self._where}: input {spec.name!r} expects {spec.describe().split(': ')[1]}, "
                                     f"got {got} {value.dtype}; convert the input (or recompile with "
                                     "--input-shapes)")
            tensors.append(tvm.runtime.tensor(np.ascontiguousarray(value)))
        return tensors

    def __call__(self, *args, **kwargs):
        result = self._vm["main"](*self._tensors(args, kwargs))
        outputs = [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def benchmark(self, *args, repeat: int = 10, number: int = 0, **kwargs) -> np.ndarray:
        """Per-run latency in seconds for ``repeat`` measurements (each the mean of ``number`` runs;
        0 picks ``number`` so one measurement takes ~50 ms)."""
        import tvm
        tensors = self._tensors(args, kwargs)
        if number <= 0:
            once = self._vm.time_evaluator("main", tvm.cpu(), number=3, repeat=1)(*tensors).mean
            number = max(1, int(0.05 / max(once, 1e-7)))
        timer = self._vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
        return np.asarray(timer(*tensors).results)


def check_cpu_features(metadata: dict, where: str) -> None:
    """Refuse code whose required CPU features this machine lacks, before any of it runs."""
    check_runnable(metadata.get("required_cpu_features", []), where, metadata.get("cpu", "?"))


def set_thread_count(num_threads: int | None = None) -> None:
    """Size TVM's thread pool (read once, when TVM starts it): ``num_threads``, else the user's
    TVM_NUM_THREADS, else every CPU this process may run on. TVM's own default is half the hardware
    threads (it assumes SMT siblings), which is one thread on a 2-vCPU machine."""
    if num_threads:
        os.environ["TVM_NUM_THREADS"] = str(num_threads)
    elif not os.environ.get("TVM_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(usable_cpus())


def load_library(path: str | os.PathLike, num_threads: int | None = None):
    """(TVM runtime module, metadata) of a library written by ``qcompiler compile``: the metadata is
    read and the CPU checked before any of the library's code is loaded."""
    path = Path(path)
    metadata = read_metadata(path)
    check_cpu_features(metadata, str(path))
    set_thread_count(num_threads)
    import tvm
    try:
        with native_stderr_silenced():
            return tvm.runtime.load_module(str(path.resolve())), metadata
    except Exception as err:
        raise QCompilerError(f"{path}: TVM could not load the library: {str(err).strip().splitlines()[-1]}") from None


def load(path: str | os.PathLike, num_threads: int | None = None) -> Model:
    """Load a library written by ``qcompiler compile`` (in this or a fresh process)."""
    lib, metadata = load_library(path, num_threads)
    import tvm
    from tvm import relax
    try:
        with native_stderr_silenced():
            vm = relax.VirtualMachine(lib, tvm.cpu())
    except Exception as err:
        raise QCompilerError(f"{path}: TVM could not load the library: {str(err).strip().splitlines()[-1]}") from None
    return Model(vm, metadata, str(path))
