"""TE compute definitions of the integer kernels the QDQ lowering emits.

Each function states one kernel's integer semantics (the numpy reference in the tests states the
same semantics independently). Kernels are emitted with ``BlockBuilder.call_te`` and tagged with
the function attribute ``qcompiler.kernel`` so the per-target templates in ``schedules/`` can find
them; block names ("acc", "requant", ...) are part of that contract.
"""
from .conv2d import qconv2d
from .dense import qbatch_matmul, qdense
from .elementwise import qadd, qmul, requantize
from .pool import qavg_pool2d

KERNEL_ATTR = "qcompiler.kernel"

__all__ = ["KERNEL_ATTR", "qadd", "qavg_pool2d", "qbatch_matmul", "qconv2d", "qdense", "qmul", "requantize"]
