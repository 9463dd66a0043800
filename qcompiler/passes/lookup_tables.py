"""Integer islands: float elementwise chains between an int8 tensor and an int8 result as 256-entry tables.

A chain such as EfficientNet's SiLU on quantized data, ``qmul(x, quantize(sigmoid(dequantize(x))))``,
maps each 8-bit value of one tensor to one 8-bit value: its whole effect is a table of 256 entries.
Run as float code it was EfficientNet-B0's most expensive kernel class (its SiLUs: 7-9% of the roof,
~80% of its kernel time on Zen 5); as a table it is one byte gather per element (10 -> 3.2 ms).

A region qualifies when it is a DAG of elementwise ops (Relax elementwise ops, our integer ``mul``
and ``add`` kernels) whose only non-constant leaf is one int8/uint8 tensor of the result's shape,
whose constants are all scalars (per-tensor quantization; per-channel parameters would need a table
per channel), which contains at least one costly float op (a transcendental, a division, a root),
and which has at least ``MIN_ELEMENTS`` elements. The tables are computed by compiling the regions
themselves, unchanged (one TVM build for all regions of a model), on every value the source can
take; each result is checked to depend on the value alone (same input value -> same output at every
position of the tensor) and a region that fails the check keeps its float code. So a table holds
exactly what the float code would have computed (with libm's transcendentals, not the faster
polynomials the float islands get).

The table lookup is elementwise, so a layout transpose in front of the region moves behind it, and a
transpose followed by its inverse (the NHWC -> NCHW -> NHWC pairs around EfficientNet's SiLUs)
cancels.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import expr_functor

from .. import kernels
from .binding_util import emit_replacing

#: Relax ops that compute each output element from the same element of each (broadcast) input.
ELEMENTWISE_OPS = frozenset({
    "relax.dequantize", "relax.quantize", "relax.astype", "relax.add", "relax.subtract", "relax.multiply",
    "relax.divide", "relax.maximum", "relax.minimum", "relax.clip", "relax.nn.relu", "relax.nn.gelu",
    "relax.nn.gelu_tanh", "relax.nn.silu", "relax.nn.leakyrelu", "relax.negative", "relax.abs", "relax.sigmoid",
    "relax.tanh", "relax.exp", "relax.log", "relax.erf", "relax.sqrt", "relax.rsqrt", "relax.power",
    "relax.round", "relax.floor", "relax.ceil", "relax.square",
})
#: Float ops whose cost justifies a table (a region of only casts, adds and clips is cheaper as code).
COSTLY_OPS = frozenset({
    "relax.divide", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid", "relax.tanh",
    "relax.exp", "relax.log", "relax.erf", "relax.sqrt", "relax.rsqrt", "relax.power",
})
#: Our integer kernels that are elementwise when their inputs have the output's shape.
ELEMENTWISE_KERNELS = frozenset({"mul", "add"})
#: Smaller tensors are not worth a table (and could not show that every value maps alike).
MIN_ELEMENTS = 1024
_INT8 = ("int8", "uint8")


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    shape = getattr(expr.ty, "shape", None)
    try:
        return tuple(int(v) for v in shape.values)
    except (AttributeError, TypeError):
        return None


def _dtype(expr: relax.Expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


class _Regions:
    """Which bindings of one function are whole table regions, found before anything is rewritten."""

    def __init__(self, mod: tvm.IRModule, func: relax.Function):
        self.mod = mod
        self.bindings: dict[relax.Var, relax.Expr] = {}
        self.order: dict[relax.Var, int] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.order[binding.var] = len(self.order)
                    self.bindings[binding.var] = binding.value
        self._memo: dict[relax.Var, tuple | None] = {}

    def resolve(self, var: relax.Expr) -> relax.Expr:
        """``var`` seen through alias bindings (``a = b``)."""
        while isinstance(var, relax.Var) and isinstance(self.bindings.get(var), relax.Var):
            var = self.bindings[var]
        return var

    def _tensor_args(self, call: relax.Call) -> list | None:
        """The tensor inputs of an elementwise call, or None if the call is not elementwise."""
        if not isinstance(call, relax.Call):
            return None
        if call.op == tvm.ir.Op.get("relax.call_tir"):
            func = self.mod[call.args[0]]
            kind = func.attrs.get(kernels.KERNEL_ATTR) if func.attrs is not None else None
            return list(call.args[1].fields) if kind is not None and str(kind) in ELEMENTWISE_KERNELS else None
        if isinstance(call.op, tvm.ir.Op) and call.op.name in ELEMENTWISE_OPS:
            return [a for a in call.args if isinstance(a, (relax.Var, tvm.ir.GenericConst))]
        return None

    def region(self, var: relax.Var):
        """(source var, member vars, costly?) of the elementwise region ending at ``var``, or None."""
        if var not in self._memo:
            self._memo[var] = None  # no cycles in a dataflow block, but stay safe
            self._memo[var] = self._region(var)
        return self._memo[var]

    def _region(self, var: relax.Var):
        call = self.bindings.get(var)
        args = self._tensor_args(call)
        shape = _shape(var)
        if args is None or shape is None:
            return None
        sources, members = set(), {var}
        costly = isinstance(call.op, tvm.ir.Op) and call.op.name in COSTLY_OPS
        for arg in args:
            if isinstance(arg, tvm.ir.GenericConst):
                if int(np.prod(arg.value.shape)) != 1:
                    return None  # per-channel parameters: a table per channel
                continue
            arg = self.resolve(arg)
            if not isinstance(arg, relax.Var):
                return None
            inner = self.region(arg) if arg in self.bindings else None
            if inner is not None and _shape(arg) == shape:
                sources.add(inner[0])
                members |= inner[1]
                costly |= inner[2]
            elif _dtype(arg) in _INT8 and _shape(arg) == shape:
                sources.add(arg)
            else:
                return None
        # the lowering emits a transpose per use: transposes of one tensor are one source
        by_key = {self.source_key(src): src for src in sources}
        if len(by_key) != 1:
            return None
        return next(iter(by_key.values())), frozenset(members), costly

    def source_key(self, var: relax.Var):
        """What identifies a region's source: a tensor, or (tensor, axes) for a transpose of it."""
        produced = self.bindings.get(var)
        if _is_permute(produced):
            return self.resolve(produced.args[0]), tuple(_axes(produced))
        return var

    def tables(self) -> dict[relax.Var, tuple[relax.Var, frozenset]]:
        """Region outputs worth a table (the largest regions only): var -> (source, members)."""
        found = {}
        for var in self.bindings:
            r = self.region(var)
            if (r is not None and r[2] and _dtype(var) in _INT8 and _dtype(r[0]) in _INT8
                    and int(np.prod(_shape(var))) >= MIN_ELEMENTS):
                found[var] = (r[0], r[1])
        inner = set().union(*(members - {var} for var, (_, members) in found.items())) if found else set()
        return {var: region for var, region in found.items() if var not in inner}


def _source_values(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Every 8-bit value, repeated over the tensor: position p holds value p mod 256."""
    codes = np.arange(int(np.prod(shape))) % 256
    return (codes - (128 if dtype == "int8" else 0)).astype(dtype).reshape(shape)


def _compute_tables(mod: tvm.IRModule, regions: _Regions, chosen: dict) -> dict[relax.Var, np.ndarray]:
    """Run every chosen region on every source value (one build); the regions whose outputs depend on
    the value alone -> their 256-entry tables (indexed by the value's unsigned code)."""
    bb = relax.BlockBuilder()
    params = {var: relax.Var(f"src{i}", relax.TensorType(_shape(src), _dtype(src)))
              for i, (var, (src, _)) in enumerate(chosen.items())}
    prim_funcs = {}
    with bb.function("main", list(params.values())):
        with bb.dataflow():
            outputs = []
            for var, (src, members) in chosen.items():
                remap, key = {}, regions.source_key(src)

                def substitute(arg):
                    arg = regions.resolve(arg)
                    if arg in remap:
                        return remap[arg]
                    return params[var] if regions.source_key(arg) == key else arg

                for member in sorted(members, key=regions.order.get):
                    call = regions.bindings[member]
                    new_args = []
                    for arg in call.args:
                        if isinstance(arg, relax.Tuple):
                            arg = relax.Tuple([substitute(a) if isinstance(a, relax.Var) else a for a in arg.fields])
                        elif isinstance(arg, relax.Var):
                            arg = substitute(arg)
                        elif isinstance(arg, relax.GlobalVar):
                            prim_funcs[arg] = mod[arg]
                        new_args.append(arg)
                    remap[member] = bb.emit(relax.Call(call.op, new_args, call.attrs, call.ty_args))
                outputs.append(remap[var])
            out = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(out)
    table_mod = bb.get()
    for gvar, func in prim_funcs.items():
        table_mod[gvar] = func
    vm = relax.VirtualMachine(tvm.compile(table_mod, target="llvm"), tvm.cpu())
    inputs = {var: _source_values(_shape(src), _dtype(src)) for var, (src, _) in chosen.items()}
    results = vm["main"](*[tvm.runtime.tensor(x) for x in inputs.values()])
    tables = {}
    for (var, x), result in zip(inputs.items(), results):
        y = result.numpy()
        codes = x.ravel().view(np.uint8)  # the unsigned code of each value: the table's index
        table = y.ravel()[:256][np.argsort(codes[:256])]
        if np.array_equal(table[codes], y.ravel()):  # the value alone decides the result
            tables[var] = table
    return tables


def _inverse(axes: list[int]) -> list[int]:
    return [int(i) for i in np.argsort(axes)]


def _axes(call: relax.Call) -> list[int]:
    rank = len(_shape(call.args[0]))
    return [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(rank))[::-1]


def _is_permute(expr) -> bool:
    return isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.permute_dims")


@expr_functor.mutator
class _TableLookups(relax.PyExprMutator):
    """Emits the chosen regions as lookups; moves a transpose in front of a region behind it and drops
    a transpose that undoes the one before it."""

    def __init__(self, mod, regions: _Regions, chosen: dict, tables: dict):
        super().__init__(mod)
        self.regions, self.chosen, self.tables = regions, chosen, tables
        self.moved: dict[relax.Var, tuple[relax.Var, list[int]]] = {}  # table var -> (lookup, axes moved behind)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        if var in self.tables:
            emit_replacing(self, var, self._lookup(var))
            return
        if _is_permute(value):
            inner = self.regions.resolve(value.args[0])
            if inner in self.moved and self.moved[inner][1] == _inverse(_axes(value)):
                emit_replacing(self, var, self.moved[inner][0])  # undoes the transpose moved behind a lookup
                return
            produced = self.regions.bindings.get(inner)
            if _is_permute(produced) and _axes(produced) == _inverse(_axes(value)):
                emit_replacing(self, var, self.visit_expr(produced.args[0]))
                return
        super().visit_var_binding_(binding)

    def _lookup(self, var: relax.Var) -> relax.Expr:
        source, _ = self.chosen[var]
        produced = self.regions.bindings.get(source)
        axes = None
        if _is_permute(produced) and _dtype(produced.args[0]) == _dtype(source):
            axes, source = _axes(produced), self.regions.resolve(produced.args[0])
        # the 8-bit values index the table themselves: no cast that FuseOps would fold into the
        # producing integer kernel (whose template then no longer matches); int8 values wrap to their
        # unsigned codes (-1 -> 255)
        mode = "wrap" if _dtype(source) == "int8" else "fast"
        looked_up = relax.op.take(relax.const(self.tables[var]), self.visit_expr(source), axis=0, mode=mode)
        if axes is None:
            return looked_up
        moved = self.builder_.emit(looked_up)
        self.moved[var] = (moved, axes)  # a following inverse transpose of ``var`` takes ``moved``
        return relax.op.permute_dims(moved, axes)


@tvm.transform.module_pass(opt_level=0, name="IntegerLookupTables")
def integer_lookup_tables(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Replace float elementwise regions from one 8-bit tensor to an 8-bit result by table lookups."""
    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        regions = _Regions(mod, func)
        chosen = regions.tables()
        tables = _compute_tables(mod, regions, chosen) if chosen else {}
        if tables:
            updates[gvar] = (regions, chosen, tables)
    for gvar, (regions, chosen, tables) in updates.items():
        mutator = _TableLookups(mod, regions, chosen, tables)
        mutator.builder_.update_func(gvar, mutator.visit_expr(mod[gvar]))
        mod = mutator.builder_.get()
    return mod
