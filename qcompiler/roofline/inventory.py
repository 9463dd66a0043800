"""The kernels of a compiled model, as the roofline needs them: what each computes and moves.

Taken from the fused, not yet scheduled Relax module (``build.fuse_module``), where every PrimFunc is
still one TE computation with its loop nest intact (so ``opcount`` can read it), and stored in the
library's metadata so a shipped ``.so`` can be analysed without the model.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import tvm
from tvm import relax, tirx

from ..kernels import KERNEL_ATTR
from .opcount import count_ops


@dataclass
class KernelInfo:
    name: str                 # the PrimFunc's symbol in the library
    op: str                   # integer kernel type (dense, conv2d, ...) or TVM's name for a float/layout op
    integer: bool             # one of qcompiler's integer kernels
    calls: int                # call sites in the model's main function
    params: list              # [(shape, dtype)] of every buffer argument: inputs, then outputs
    n_outputs: int
    dot_ops: int
    other_ops: int
    op_class: str             # which compute ceiling applies: "int8" or "fp32" (see opcount)

    @property
    def ops(self) -> int:
        return self.dot_ops or self.other_ops

    @property
    def min_bytes(self) -> int:
        """Compulsory traffic: every input read once, every output written once."""
        return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in self.params)

    @property
    def shapes(self) -> str:
        """Readable argument shapes, inputs -> outputs (e.g. "128x768 u8, 12x192x16x4 i8 -> 128x768 u8")."""
        def one(shape, dtype):
            short = {"uint8": "u8", "int8": "i8", "int32": "i32", "int64": "i64", "float32": "f32"}.get(dtype, dtype)
            return "x".join(str(d) for d in shape) + " " + short
        ins = [one(*p) for p in self.params[:len(self.params) - self.n_outputs]]
        outs = [one(*p) for p in self.params[len(self.params) - self.n_outputs:]]
        return ", ".join(ins) + " -> " + ", ".join(outs)

    def to_json(self) -> dict:
        return {**asdict(self), "params": [[list(shape), dtype] for shape, dtype in self.params]}

    @classmethod
    def from_json(cls, data: dict) -> "KernelInfo":
        return cls(**{**data, "params": [(tuple(shape), dtype) for shape, dtype in data["params"]]})


def _buffer_params(func: tirx.PrimFunc) -> list[tuple[tuple[int, ...], str]]:
    params = []
    for param in func.params:
        if not isinstance(param.ty, tirx.BufferType):
            continue  # a scalar argument (symbolic shapes): not memory traffic
        params.append((tuple(int(d) for d in param.shape), str(param.dtype)))
    return params


def _call_sites(mod: tvm.IRModule) -> tuple[Counter, dict]:
    """How often main calls each PrimFunc, and how many outputs each call writes."""
    calls, outputs = Counter(), {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            calls[name] += 1
            out = expr.ty_args[0] if expr.ty_args else None
            outputs[name] = len(out.fields) if isinstance(out, relax.TupleType) else 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return calls, outputs


def kernel_inventory(mod: tvm.IRModule, scheduled: tvm.IRModule | None = None) -> list[KernelInfo]:
    """One KernelInfo per PrimFunc the model calls (fused, unscheduled module: op counts come from it).

    With ``scheduled`` (the same module after the schedule templates), a PrimFunc that scheduling left
    a pure reshape (a transpose that moves only unit dims, once simplified) is no kernel: tvm.compile's
    RewriteDataflowReshape turns its call into a view, so that pass decides here too."""
    calls, outputs = _call_sites(mod)
    if scheduled is not None:
        remaining, _ = _call_sites(relax.transform.RewriteDataflowReshape()(scheduled))
        calls = Counter({name: n for name, n in calls.items() if name in remaining})
    kernels = []
    for gvar, func in mod.functions.items():
        name = gvar.name_hint
        if not isinstance(func, tirx.PrimFunc) or name not in calls:
            continue
        kind = func.attrs.get(KERNEL_ATTR) if func.attrs is not None else None
        count = count_ops(func)
        kernels.append(KernelInfo(
            name=name, op=str(kind) if kind is not None else name.rstrip("0123456789"), integer=kind is not None,
            calls=calls[name], params=_buffer_params(func), n_outputs=outputs.get(name, 1),
            dot_ops=count.dot_ops, other_ops=count.other_ops, op_class=count.op_class))
    return sorted(kernels, key=lambda k: k.name)
