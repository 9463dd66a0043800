"""Which x86 code this machine may execute: tests build for every CPU class, check the generated code
everywhere, and execute only what this CPU has the features for (never a SIGILL in pytest)."""
from __future__ import annotations

import re

import pytest

from qcompiler.target import missing_features, required_features, resolve_target

#: One explicit target per CPU class the kernels distinguish (vendor-neutral baselines).
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}
AVX512_VNNI = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}
AVX_VNNI = {"kind": "llvm", "mcpu": "x86-64-v3", "mattr": ["+avxvnni"], "num-cores": 2}


def missing(target) -> list[str]:
    return missing_features(required_features(resolve_target(target)))


def can_execute(target) -> bool:
    return not missing(target)


def skip_unless_executable(target) -> None:
    """Skip the rest of a test (its code checks have run) if this CPU cannot execute ``target``'s code."""
    lacking = missing(target)
    if lacking:
        pytest.skip(f"this CPU lacks {', '.join(lacking)}: code built and checked, not executed")


def asm_of(model) -> str:
    """The assembly of every compiled kernel of a CompiledModel."""
    return "\n".join(m.inspect_source("asm") for m in model.executable.mod.imports)


def count(asm: str, mnemonic: str, register: str) -> int:
    """How many ``mnemonic`` instructions in ``asm`` have a ``register`` (ymm/zmm) operand."""
    return len(re.findall(rf"\b{mnemonic}\s+[^\n]*%{register}", asm))
