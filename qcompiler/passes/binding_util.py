"""Helpers shared by our binding-level mutators."""
from __future__ import annotations

from tvm import relax


def emit_replacing(mutator: relax.PyExprMutator, var: relax.Var, value: relax.Expr) -> relax.Var:
    """Emit ``value`` in place of the binding of ``var`` and remap later uses of ``var`` to it.

    A non-dataflow var inside a dataflow block is a block output (emit_output); everywhere else a
    plain emit keeps the var's kind.
    """
    builder = mutator.builder_
    if builder.current_block_is_dataflow() and not isinstance(var, relax.DataflowVar):
        new_var = builder.emit_output(value, name_hint=var.name)
    else:
        new_var = builder.emit(value, name_hint=var.name)
    mutator.set_var_remap(var, new_var)
    return new_var


def rewrite_relax_functions(mod, mutator: relax.PyExprMutator):
    """Run ``mutator`` over every Relax function of ``mod``; the module with the rewritten functions."""
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
