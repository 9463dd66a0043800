"""Roofline analysis of compiled models: every kernel against this machine's measured int8/fp32 compute
and DRAM/L2 bandwidth ceilings (``qcompiler.roofline(...)``, ``qcompiler roofline``).

Modules: ``opcount`` (ops from TIR), ``inventory`` (the kernels of a model, stored in its library),
``probes`` + ``ceilings`` (measured and datasheet ceilings, cached), ``timing`` (each kernel timed on
its own), ``report`` + ``plot`` (table, JSON, Markdown, PNG), ``analyze`` (the API).

The API is this package called as a function, ``qcompiler.roofline(lib_or_model, target=None)``:
once any submodule is imported, Python binds the name ``qcompiler.roofline`` to this package, so
the package itself is made callable (it forwards to ``analyze.roofline``).
"""
from __future__ import annotations

import sys
import types

__all__ = ["RooflineReport", "roofline"]


def roofline(lib_or_model, target=None, **options):
    """``analyze.roofline``: see there."""
    from .analyze import roofline as analyze_roofline
    return analyze_roofline(lib_or_model, target, **options)


def __getattr__(name: str):
    # lazy: the compiler imports roofline.inventory while building, and analyze imports the compiler
    if name == "RooflineReport":
        from .report import RooflineReport
        return RooflineReport
    raise AttributeError(f"module 'qcompiler.roofline' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    def __call__(self, lib_or_model, target=None, **options):
        return roofline(lib_or_model, target, **options)


sys.modules[__name__].__class__ = _CallablePackage
