"""What a float value of the QDQ graph *is* in integer terms.

The lowering reads the QDQ graph forward, attaching to each float value that it can express
exactly in integers one of these descriptions (FakeQuantizationToInteger's idea, from Relay):

- ``QActivation``: an integer tensor computed at run time, real value = scale * (q - zero_point),
  per-tensor; ``source`` says how to get q (a graph var, or a layout op applied to another source).
- ``QConstant``: a quantized constant (weights, biases); scale and zero point are expanded to the
  array's shape, so layout ops can be evaluated on all three with numpy.
- ``Accumulator``: a pending integer dot product / pooling sum (int32 accumulator with a real
  per-channel scale), plus the bias and activation clamp folded into it so far. It becomes one
  fused kernel when a ``quantize`` consumes it.
- ``LinearSum``: a pending sum of rescaled activations (add, subtract, plain requantize), plus clamp.
- ``Concat``: a pending concatenation of activations that may need requantizing to a common scale.

A value with no description stays float: an fp32 island between its dequantize and quantize.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from tvm import relax

INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
              "int32": (-(2 ** 31), 2 ** 31 - 1)}


@dataclass(frozen=True)
class VarSource:
    """The integer tensor is the (original) relax var ``var``."""

    var: relax.Var


@dataclass(frozen=True, eq=False)
class ConstSource:
    """The integer tensor is a constant (a per-tensor quantized constant used like an activation)."""

    array: np.ndarray


@dataclass(frozen=True)
class OpSource:
    """The integer tensor is the layout op ``call`` (original graph) re-applied to ``input``."""

    call: relax.Call
    input: "VarSource | OpSource | tuple"


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: str

    @property
    def qmin(self) -> int:
        return INT_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return INT_RANGES[self.dtype][1]


@dataclass(frozen=True)
class QActivation:
    source: "VarSource | OpSource"
    params: QParams


@dataclass(frozen=True, eq=False)
class QConstant:
    q: np.ndarray  # integer values
    scale: np.ndarray  # float64, q.shape
    zero_point: np.ndarray  # int64, q.shape

    @property
    def real(self) -> np.ndarray:
        return self.scale * (self.q.astype(np.int64) - self.zero_point)

    def transform(self, fn) -> "QConstant":
        return QConstant(fn(self.q), fn(self.scale), fn(self.zero_point))

    def as_activation(self) -> "QActivation | None":
        """A per-tensor quantized constant behaves like an activation (e.g. a bias in an integer add)."""
        if self.q.dtype not in (np.uint8, np.int8) or self.scale.size == 0 \
                or np.ptp(self.scale) != 0 or np.ptp(self.zero_point) != 0:
            return None
        return QActivation(ConstSource(self.q), QParams(float(self.scale.flat[0]), int(self.zero_point.flat[0]),
                                                        str(self.q.dtype)))

    def per_axis(self, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, zero point) as vectors along ``axis`` if they are constant along every other axis."""
        axis = axis % self.q.ndim
        index = tuple(slice(None) if a == axis else slice(0, 1) for a in range(self.q.ndim))
        s, z = self.scale[index], self.zero_point[index]
        if not (np.array_equal(np.broadcast_to(s, self.scale.shape), self.scale)
                and np.array_equal(np.broadcast_to(z, self.zero_point.shape), self.zero_point)):
            return None
        return s.reshape(-1), z.reshape(-1)


@dataclass(frozen=True, eq=False)
class FloatConstant:
    value: np.ndarray  # float64


@dataclass(frozen=True, eq=False)
class Accumulator:
    kind: str  # dense | batch_matmul | conv2d | mul | avg_pool2d
    operands: tuple
    attrs: dict
    scale: np.ndarray  # float64 (channels,) or (1,): real value of one accumulator unit
    channel_axis: int
    bias: np.ndarray | None = None  # real-valued per channel
    lo: float = -math.inf
    hi: float = math.inf

    def with_clamp(self, lo: float, hi: float) -> "Accumulator":
        return replace(self, lo=max(self.lo, lo), hi=min(self.hi, hi))


@dataclass(frozen=True, eq=False)
class LinearSum:
    terms: tuple  # QActivation
    coefficients: tuple  # +1.0 / -1.0
    lo: float = -math.inf
    hi: float = math.inf
    out_shape: tuple = ()

    def with_clamp(self, lo: float, hi: float) -> "LinearSum":
        return replace(self, lo=max(self.lo, lo), hi=min(self.hi, hi))


@dataclass(frozen=True, eq=False)
class Concat:
    terms: tuple  # QActivation
    call: relax.Call  # the original concat (for its axis attribute)


@dataclass
class Analysis:
    """Result of the forward analysis of one function."""

    values: dict = field(default_factory=dict)  # original var -> description
    plans: dict = field(default_factory=dict)  # original quantize/astype var -> (description, call)
