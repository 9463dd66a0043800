"""Tests for the PyTorch frontend (fp32 and PT2E-quantized models) and its error paths.

Every numerical check builds the *unoptimized* imported module with only LegalizeOps, so a
mismatch points at the frontend, not at later qcompiler passes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from tvm import relax
from tvm.target import Target

from qcompiler.errors import QCompilerError
from qcompiler.frontend.torch_frontend import from_torch
from qcompiler.frontend.torch_quantize import quantize_pt2e
from qcompiler.signature import TensorSpec

# fp32 vs fp32: the same math in a different summation order; errors are a few ulps of
# values of order 1, so 1e-5 absolute/relative leaves ample margin while catching any
# wrong op (those give errors of order 1e-1).
FP32_RTOL = 1e-5
FP32_ATOL = 1e-5


# --------------------------------------------------------------------------------------
# Helper models
# --------------------------------------------------------------------------------------


class SmallCNN(torch.nn.Module):
    """conv -> relu -> maxpool -> linear: the fp32 op set a first CNN needs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.conv(x)))
        return self.fc(torch.flatten(y, 1))


class MLP(torch.nn.Module):
    """Two inputs and two outputs, to exercise naming and tuple returns."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + bias, h


class ResidualCNN(torch.nn.Module):
    """conv+relu, conv, residual add, linear: the patterns PT2E quantizes specially."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        z = self.conv2(y) + y
        return self.fc(torch.flatten(z, 1))


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor value: torch.export cannot capture this."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


class Lgamma(torch.nn.Module):
    """aten.lgamma is core ATen but TVM's importer has no converter for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x) + 1


class NarrowRangeQDQ(torch.nn.Module):
    """Hand-written q/dq with int8 in [-127, 127] and per-channel tensor qparams.

    The per-channel buffers have PT2E's dtypes (float32 scales, int64 zero points).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scales", torch.tensor([0.05, 0.1, 0.2], dtype=torch.float32))
        self.register_buffer("zps", torch.tensor([0, 3, -2], dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        q = qd.quantize_per_tensor.default(x, 0.02, 0, -127, 127, torch.int8)
        y = qd.dequantize_per_tensor.default(q, 0.02, 0, -127, 127, torch.int8)
        qc = qd.quantize_per_channel.default(y, self.scales, self.zps, 1, -128, 127, torch.int8)
        return qd.dequantize_per_channel.default(qc, self.scales, self.zps, 1, -128, 127,
                                                 torch.int8)


class TensorQParamsQDQ(torch.nn.Module):
    """The ``.tensor`` overloads: scale/zero point as constant buffers, then computed at run
    time (the dynamic-quantization form), which must stay a Relax expression."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(0.03))
        self.register_buffer("zero_point", torch.tensor(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        q = qd.quantize_per_tensor.tensor(x, self.scale, self.zero_point, 0, 255, torch.uint8)
        y = qd.dequantize_per_tensor.tensor(q, self.scale, self.zero_point, 0, 255, torch.uint8)
        scale = y.abs().max() / 127
        zero = torch.zeros((), dtype=torch.int64)
        q2 = qd.quantize_per_tensor.tensor(y, scale, zero, -128, 127, torch.int8)
        return qd.dequantize_per_tensor.tensor(q2, scale, zero, -128, 127, torch.int8)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def build(mod: tvm.IRModule) -> relax.VirtualMachine:
    """The minimal pipeline: legalize, compile for generic llvm, run in the Relax VM."""
    mod = relax.transform.LegalizeOps()(mod)
    ex = tvm.compile(mod, target=Target({"kind": "llvm"}))
    return relax.VirtualMachine(ex, tvm.cpu())


def run(vm: relax.VirtualMachine, *args: torch.Tensor) -> list[np.ndarray]:
    out = vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    outs = list(out) if isinstance(out, tvm_ffi.Array | tuple | list) else [out]
    return [o.numpy() for o in outs]


def count_ops(mod: tvm.IRModule) -> dict[str, int]:
    """Histogram of Relax op names called in main's bindings."""
    counts: dict[str, int] = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                counts[value.op.name] = counts.get(value.op.name, 0) + 1
    return counts


def torch_outputs(module: torch.nn.Module, *args: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.detach().numpy() for o in outs]


# --------------------------------------------------------------------------------------
# fp32
# --------------------------------------------------------------------------------------


def test_fp32_cnn_matches_torch() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    mod, sig = from_torch(model, (x,))

    assert sig.inputs == (TensorSpec("input0", (2, 3, 8, 8), "float32"),)
    assert sig.outputs == (TensorSpec("output0", (2, 10), "float32"),)
    assert [p.name for p in mod["main"].params] == ["input0"]
    assert count_ops(mod).get("relax.nn.conv2d") == 1

    vm = build(mod)
    x2 = torch.randn(2, 3, 8, 8)  # a fresh input, not the export example
    (got,) = run(vm, x2)
    (want,) = torch_outputs(model, x2)
    np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)


def test_fp32_mlp_names_and_tuple_output() -> None:
    torch.manual_seed(1)
    model = MLP().eval()
    args = (torch.randn(3, 16), torch.randn(3, 4))
    mod, sig = from_torch(model, args, input_names=["features", "offset"])

    assert [p.name for p in mod["main"].params] == ["features", "offset"]
    assert sig.inputs == (
        TensorSpec("features", (3, 16), "float32"),
        TensorSpec("offset", (3, 4), "float32"),
    )
    assert sig.outputs == (
        TensorSpec("output0", (3, 4), "float32"),
        TensorSpec("output1", (3, 32), "float32"),
    )
    # Weights are embedded: the only parameters are the user inputs.
    assert len(mod["main"].params) == 2

    got = run(build(mod), *args)
    want = torch_outputs(model, *args)
    assert len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=FP32_RTOL, atol=FP32_ATOL)


def test_weights_are_constants_not_aliases() -> None:
    """Editing the torch model after import must not change the compiled model."""
    torch.manual_seed(4)
    model = MLP().eval()
    args = (torch.randn(2, 16), torch.randn(2, 4))
    want = torch_outputs(model, *args)
    mod, _ = from_torch(model, args)
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    got = run(build(mod), *args)
    np.testing.assert_allclose(got[0], want[0], rtol=FP32_RTOL, atol=FP32_ATOL)


def test_accepts_exported_program() -> None:
    model = MLP().eval()
    args = (torch.randn(1, 16), torch.randn(1, 4))
    _, sig = from_torch(torch.export.export(model, args), args)
    assert [s.name for s in sig.inputs] == ["input0", "input1"]


# --------------------------------------------------------------------------------------
# PT2E int8
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized_cnn() -> tuple[torch.fx.GraphModule, tuple[torch.Tensor]]:
    torch.manual_seed(2)
    model = ResidualCNN().eval()
    example = (torch.randn(2, 3, 8, 8),)
    batches = [(torch.randn(2, 3, 8, 8),) for _ in range(4)]
    return quantize_pt2e(model, example, batches), example


def test_pt2e_cnn_imports_qdq(quantized_cnn) -> None:
    converted, example = quantized_cnn
    mod, sig = from_torch(converted, example)
    ops = count_ops(mod)
    # PT2E x86: 4 activation quantize points (input, relu out, add out, linear input after
    # flatten), 5 activation dequantizes (the relu output feeds conv2 and the residual add
    # through separate dequantizes) and 3 per-channel weight dequantizes.
    assert ops.get("relax.quantize") == 4
    assert ops.get("relax.dequantize") == 8
    assert sig.outputs == (TensorSpec("output0", (2, 10), "float32"),)
    # The weight dequantizes read int8 constants along output-channel axis 0.
    weight_dq = [
        b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call)
        and b.value.op.name == "relax.dequantize"
        and isinstance(b.value.args[0], tvm.ir.GenericConst)
    ]
    assert len(weight_dq) == 3
    assert all(dq.args[0].ty.dtype == "int8" and dq.attrs.axis == 0 for dq in weight_dq)


def test_pt2e_cnn_matches_torch_reference(quantized_cnn) -> None:
    """Relax QDQ simulation vs torch's converted model, on inputs it was not calibrated on.

    Both compute the same fp32 QDQ graph, but conv/matmul sum in a different order and
    relax.quantize divides by the scale where torch multiplies by 1/scale, so an fp32 value
    sitting on a rounding boundary can land on the neighbouring uint8 code. We assert
    (1) every output is within one quantization step of the activation feeding the final
    linear layer: a flipped code there moves an output by step * |w|, and |w| <= 0.05 here,
    so this allows many flips but catches real errors (an off-by-one zero point or a wrong
    scale or channel axis moves outputs by many steps); and (2) most outputs agree
    to fp32 noise (1e-5): in a 300-batch sweep only ~1% of batches had any flip, and a flip
    only disturbs the outputs of its own batch row.
    """
    converted, example = quantized_cnn
    mod, _ = from_torch(converted, example)
    vm = build(mod)
    step = _last_activation_scale(mod)
    torch.manual_seed(3)
    diffs = []
    for trial in range(3):
        x = torch.randn(2, 3, 8, 8) * (1 + trial)  # includes inputs that saturate
        (got,) = run(vm, x)
        (want,) = torch_outputs(converted, x)
        diffs.append(np.abs(got - want))
    diffs = np.stack(diffs)
    assert diffs.max() <= step, (diffs.max(), step)
    assert np.mean(diffs <= 1e-5) >= 0.75, diffs


def _last_activation_scale(mod: tvm.IRModule) -> float:
    """Scale of the last relax.quantize in main (the linear layer's input)."""
    scales = [
        float(b.value.args[1].value.numpy())
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and b.value.op.name == "relax.quantize"
    ]
    return scales[-1]


def test_narrow_range_and_per_channel_qdq_are_exact() -> None:
    """quant_min/max narrower than the dtype become a clip; per-channel buffers become
    float32/int32 constant vectors. Inputs avoid rounding ties, so results are bitwise."""
    model = NarrowRangeQDQ().eval()
    x = torch.linspace(-4.0, 4.0, 2 * 3 * 5).reshape(2, 3, 5) + 0.0013
    mod, _ = from_torch(model, (x,))
    ops = count_ops(mod)
    assert ops.get("relax.clip") == 1
    assert ops.get("relax.quantize") == 2 and ops.get("relax.dequantize") == 2
    (got,) = run(build(mod), x)
    (want,) = torch_outputs(model, x)
    np.testing.assert_array_equal(got, want)


def test_tensor_qparam_overloads() -> None:
    """Constant tensor qparams fold to scalar constants; runtime ones are cast, not dropped."""
    model = TensorQParamsQDQ().eval()
    x = torch.randn(3, 7) + 0.0011
    mod, _ = from_torch(model, (x,))
    quantizes = [
        b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and b.value.op.name == "relax.quantize"
    ]
    assert len(quantizes) == 2
    assert isinstance(quantizes[0].args[1], tvm.ir.GenericConst)  # buffer -> constant
    assert not isinstance(quantizes[1].args[1], tvm.ir.GenericConst)  # computed scale
    (got,) = run(build(mod), x)
    (want,) = torch_outputs(model, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_unexportable_module_raises() -> None:
    with pytest.raises(QCompilerError, match="torch.export could not capture DataDependent"):
        from_torch(DataDependent().eval(), (torch.randn(4),))


def test_unsupported_op_is_named() -> None:
    with pytest.raises(QCompilerError, match=r"unsupported PyTorch op aten\.lgamma\.default"):
        from_torch(Lgamma().eval(), (torch.rand(4) + 1,))


def test_training_mode_is_rejected() -> None:
    with pytest.raises(QCompilerError, match="eval"):
        from_torch(SmallCNN(), (torch.randn(1, 3, 8, 8),))


def test_input_name_count_mismatch() -> None:
    with pytest.raises(QCompilerError, match="input_names"):
        from_torch(SmallCNN().eval(), (torch.randn(1, 3, 8, 8),), input_names=["a", "b"])


def test_errors_are_one_line() -> None:
    with pytest.raises(QCompilerError) as info:
        from_torch(DataDependent().eval(), (torch.randn(4),))
    assert "\n" not in str(info.value)
