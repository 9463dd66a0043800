"""Operation counts of a kernel, read from its TIR (before scheduling), never guessed from its name.

Every block of the unscheduled PrimFunc runs once per point of its loop nest. A block whose update
is ``acc = acc + a * b`` (a reduction of products) is *dot work*: 2 ops (multiply + add) per point,
the convention of GEMM/conv FLOP counts, so an int8 M x K x N matmul counts exactly 2*M*N*K. Its
class is ``int8`` when the products read 8-bit (or 16-bit) integer data and ``fp32`` when they are
float. Every other block (padding, requantize epilogues, row sums, softmax, ...) counts its value
arithmetic (not index arithmetic) per point as *other* ops.

A kernel's headline ``ops`` is its dot work when it has any (the epilogue is noise next to it and not
what a dot-product ceiling measures), else its other ops; both totals are kept. Counts are of the work
the kernel executes: a dense kernel whose K is padded to 4 counts the padded K.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import ir, s_tir, tirx

_ARITH = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod, tirx.Min, tirx.Max,
          tirx.LShift, tirx.RShift, tirx.BitwiseAnd, tirx.BitwiseOr, tirx.BitwiseXor, tirx.Select,
          tirx.EQ, tirx.NE, tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.And, tirx.Or, tirx.Not)


@dataclass
class OpCount:
    dot_ops: int = 0          # 2 x multiply-accumulates of reductions of products
    other_ops: int = 0        # value arithmetic of every other block
    dot_class: str = ""       # "int8", "fp32" ("int" for wider integers) or "" (no dot work)
    other_class: str = "int8"  # "fp32" if any other block computes float values

    @property
    def ops(self) -> int:
        return self.dot_ops or self.other_ops

    @property
    def op_class(self) -> str:
        """Which compute ceiling applies: the dot's class, else that of the elementwise work."""
        return self.dot_class or self.other_class


def _children(expr):
    """Operands of a value expression (loads' indices are addressing, not counted)."""
    if isinstance(expr, tirx.Cast):
        return [expr.value]
    if isinstance(expr, tirx.Select):
        return [expr.condition, expr.true_value, expr.false_value]
    if isinstance(expr, tirx.Not):
        return [expr.a]
    if hasattr(expr, "a") and hasattr(expr, "b"):
        return [expr.a, expr.b]
    if isinstance(expr, ir.Call):
        return list(expr.args)
    if isinstance(expr, tirx.Let):
        return [expr.value, expr.body]
    return []


def arithmetic_ops(expr) -> int:
    """Value arithmetic nodes in ``expr`` (calls such as exp count as one op)."""
    own = 1 if isinstance(expr, _ARITH) or (isinstance(expr, ir.Call) and not _is_plumbing(expr)) else 0
    return own + sum(arithmetic_ops(child) for child in _children(expr))


def _is_plumbing(call) -> bool:
    name = str(call.op.name) if isinstance(call.op, ir.Op) else ""
    return name in ("tirx.if_then_else", "tirx.reinterpret", "tirx.likely")


def _loads(expr, out):
    if isinstance(expr, ir.TensorLoad):
        out.append(expr)
        return out
    for child in _children(expr):
        _loads(child, out)
    return out


def _dot_class(product) -> str:
    """int8 when the product's operands load integer data of <= 16 bits, fp32 when they are float."""
    dtypes = [str(load.ty) for load in _loads(product, [])]
    if dtypes and all(d.startswith(("int8", "uint8", "int16", "uint16")) for d in dtypes):
        return "int8"
    if str(product.ty).startswith("float"):
        return "fp32"
    return "int"


def _strip_cast(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def _dot_product(block) -> object | None:
    """The product of a ``acc = acc + a * b`` reduction block, else None."""
    store = block.body
    if block.init is None or not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tirx.Add):
        return None
    a, b = store.value.a, store.value.b
    for acc, other in ((a, b), (b, a)):
        if isinstance(acc, ir.TensorLoad) and acc.source.same_as(store.buffer):
            other = _strip_cast(other)
            return other if isinstance(other, tirx.Mul) else None
    return None


def count_ops(func: tirx.PrimFunc) -> OpCount:
    """The OpCount of an unscheduled PrimFunc (static loop extents; a symbolic extent raises)."""
    count = OpCount()
    float_other = False

    def block(stmt, points: int):
        nonlocal float_other
        product = _dot_product(stmt)
        if product is not None:
            count.dot_ops += 2 * points
            cls = _dot_class(product)
            count.dot_class = "fp32" if "fp32" in (cls, count.dot_class) else cls
        elif isinstance(stmt.body, tirx.BufferStore):
            count.other_ops += points * arithmetic_ops(stmt.body.value)
            float_other = float_other or str(stmt.body.value.ty).startswith("float")
        else:
            walk(stmt.body, points)

    def walk(stmt, points: int):
        if isinstance(stmt, tirx.For):
            extent = stmt.extent
            if not isinstance(extent, tirx.IntImm):
                raise ValueError(f"loop {stmt.loop_var} has a symbolic extent {extent}")
            walk(stmt.body, points * int(extent.value))
        elif isinstance(stmt, tirx.SeqStmt):
            for child in stmt.seq:
                walk(child, points)
        elif isinstance(stmt, s_tir.SBlockRealize):
            walk(stmt.block, points)
        elif isinstance(stmt, s_tir.SBlock):
            if stmt.iter_vars or isinstance(stmt.body, tirx.BufferStore):
                block(stmt, points)
            else:
                walk(stmt.body, points)
        elif isinstance(stmt, tirx.BufferStore):
            count.other_ops += points * arithmetic_ops(stmt.value)
        elif isinstance(stmt, tirx.IfThenElse):
            walk(stmt.then_case, points)
            if stmt.else_case is not None:
                walk(stmt.else_case, points)
        elif hasattr(stmt, "body"):
            walk(stmt.body, points)

    walk(func.body, 1)
    count.other_class = "fp32" if float_other else "int8"
    return count
