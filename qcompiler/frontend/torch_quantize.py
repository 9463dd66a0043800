"""Post-training static int8 quantization of PyTorch models with PT2E (torchao).

Why the field's quantizer instead of our own calibration: the point of qcompiler is to run
int8 models *as the framework defines them* faster, not to invent a new quantization scheme.
torchao's ``X86InductorQuantizer`` is what PyTorch itself uses for x86 int8 inference: it
decides which ops are quantized, where observers go, how fused patterns (conv+relu,
residual adds) share quantization parameters, and it computes scales/zero points with the
standard observers (a histogram observer for per-tensor affine uint8 activations, a
per-channel min-max observer for symmetric int8 weights). Re-implementing that would create a second, subtly different
definition of "the quantized model" that nothing else in the ecosystem agrees with. By
using it, the converted ``GraphModule`` is itself the numerical reference (an fp32
simulation with explicit quantize/dequantize ops) that our compiled code must match, and
models quantized by users elsewhere with the same recipe import unchanged.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import torch

from ..errors import QCompilerError


@contextlib.contextmanager
def _quiet_torchao_import() -> Iterator[None]:
    """torchao logs warnings about CUDA/CUTLASS extensions it cannot load on a CPU machine.

    They are harmless for PT2E, and noisy for every user, so we raise those loggers' levels
    while torchao is imported and restore them afterwards.
    """
    names = ("torchao", "torch.utils._pytree")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _x86_quantizer():
    """Static PTQ config: per-channel int8 weights, per-tensor uint8 activations."""
    with _quiet_torchao_import():
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    quantizer = X86InductorQuantizer()
    quantizer.set_global(
        get_default_x86_inductor_quantization_config(is_qat=False, is_dynamic=False)
    )
    return quantizer


def quantize_pt2e(
    module: torch.nn.Module,
    example_args: tuple,
    calibration_batches: Iterable[tuple],
) -> torch.fx.GraphModule:
    """Quantize ``module`` with torchao's X86InductorQuantizer and return the converted model.

    ``module`` must be in eval mode (batch-norm/dropout are folded for inference). Each
    calibration batch is a tuple of positional args for ``forward``. The result runs torch's
    quantized reference (fp32 compute with quantize/dequantize ops); pass it to
    ``from_torch`` to compile it.
    """
    with _quiet_torchao_import():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if module.training and not isinstance(module, torch.fx.GraphModule):
        raise QCompilerError(
            f"{type(module).__name__} is in training mode; call model.eval() before quantizing"
        )
    captured = _capture(module, tuple(example_args))
    try:
        prepared = prepare_pt2e(captured, _x86_quantizer())
    except Exception as exc:
        raise QCompilerError(
            f"torchao could not prepare {type(module).__name__} for PT2E: {_one_line(exc)}"
        ) from exc
    if not _calibrate(prepared, calibration_batches):
        raise QCompilerError("quantize_pt2e needs at least one calibration batch")
    return convert_pt2e(prepared)


def _capture(module: torch.nn.Module, example_args: tuple) -> torch.fx.GraphModule:
    """PT2E works on the ATen graph from torch.export, not on the eager module."""
    try:
        return torch.export.export(module, example_args).module()
    except Exception as exc:
        raise QCompilerError(
            f"torch.export could not capture {type(module).__name__} for quantization: "
            f"{_one_line(exc)}"
        ) from exc


def _calibrate(prepared: torch.fx.GraphModule, batches: Iterable[tuple]) -> int:
    """Run the observers over the batches; returns how many batches were seen."""
    count = 0
    with torch.no_grad():
        for batch in batches:
            args = batch if isinstance(batch, tuple | list) else (batch,)
            try:
                prepared(*args)
            except Exception as exc:
                raise QCompilerError(
                    f"calibration batch {count} failed: {_one_line(exc)} — batches must be "
                    "tuples of forward() args shaped like example_args"
                ) from exc
            count += 1
    return count


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["quantize_pt2e"]
