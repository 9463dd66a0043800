"""TE compute definitions of the integer kernels the QDQ lowering emits.

Each function states one kernel's integer semantics (the numpy reference in the tests states the
same semantics independently). Kernels are emitted with ``BlockBuilder.call_te`` and tagged with
the function attributes ``qcompiler.kernel`` (op type) and ``qcompiler.layout`` so the per-target
templates in ``schedules/`` can find them; block names ("acc", "requant", ...) are part of that
contract.
"""
from .common import shift_operand
from .conv2d import (pack_conv_weight, pack_conv_weight_pairs, qconv2d, qconv2d_packed, qconv2d_packed_pairs,
                     qdepthwise_conv2d_nhwc)
from .dense import (pack_dense_weight, pack_dense_weight_pairs, qbatch_matmul, qbatch_matmul_packed,
                    qbatch_matmul_pairs, qdense, qdense_packed,
                    qdense_packed_pairs)
from .elementwise import qadd, qmul, requantize
from .pool import qavg_pool2d

KERNEL_ATTR = "qcompiler.kernel"  # the op type: dense, conv2d, batch_matmul, add, ...
LAYOUT_ATTR = "qcompiler.layout"  # "plain", or "packed16x4" for the VNNI micro-kernels' weight layout
GROUPS_ATTR = "qcompiler.groups"  # a grouped conv's group count (absent: 1)

__all__ = ["GROUPS_ATTR", "KERNEL_ATTR", "LAYOUT_ATTR", "pack_conv_weight", "pack_conv_weight_pairs", "qconv2d_packed_pairs", "pack_dense_weight", "pack_dense_weight_pairs", "qconv2d_packed", "qadd", "qavg_pool2d", "qbatch_matmul", "qbatch_matmul_packed", "qbatch_matmul_pairs", "qconv2d", "qdense",
           "qdense_packed", "qdense_packed_pairs", "qdepthwise_conv2d_nhwc", "qmul", "requantize", "shift_operand"]
