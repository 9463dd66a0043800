"""A PT2E-quantized torch CNN (torchao X86InductorQuantizer) compiles and matches torch's own
quantized reference (the converted model: fp32 arithmetic on quantize/dequantize pairs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompiler
from qcompiler.frontend.torch_quantize import quantize_pt2e


class ResidualCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = torch.nn.Conv2d(16, 32, 1)
        self.c4 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.pw(x))
        x = torch.relu(self.c4(x) + x)
        return self.fc(self.gap(self.pool(x)).flatten(1))


def converted_fc_weight_l1(quantized) -> float:
    return quantized[2].fc.weight.detach().abs().sum(dim=1).max().item()


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    gen = torch.Generator().manual_seed(1)
    example = (torch.randn(1, 3, 16, 16, generator=gen),)
    calibration = [(torch.randn(1, 3, 16, 16, generator=gen),) for _ in range(16)]
    return quantize_pt2e(model, example, calibration), example, model


def test_pt2e_cnn_compiles_and_matches_torch(quantized):
    converted, example, _ = quantized
    model = qcompiler.compile(converted, example_args=example)
    ops = model.metadata["ops"]
    # every conv and the linear run as integer kernels; PT2E leaves the residual add/relu/pool in fp32
    assert ops["int8"].get("conv2d") == 4 and ops["int8"].get("dense") == 1, ops
    assert "conv2d" not in ops["fp32"] and "matmul" not in ops["fp32"], ops
    # The output is the float Linear of a quantized tensor (uint8, scale s). Our convs are exact
    # integer arithmetic, torch's reference is fp32 arithmetic on dequantized values, so an element
    # of that tensor may land one step apart (a rounding tie). If every element is within one step,
    # output j moves by at most s * sum_k |W[j, k]|: that is the bound (W from the fp32 model, +2%
    # for its quantization error).
    last_scale = [n.args[1] for n in converted.graph.nodes if "quantize_per_tensor" in str(n.target)][-1]
    one_step_bound = 1.02 * float(last_scale) * float(converted_fc_weight_l1(quantized))
    gen = torch.Generator().manual_seed(7)
    for _ in range(4):
        x = torch.randn(1, 3, 16, 16, generator=gen)
        with torch.no_grad():
            ref = converted(x).numpy()
        ours = model(x.numpy())
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        assert np.abs(ours - ref).max() <= one_step_bound, (np.abs(ours - ref).max(), one_step_bound)
