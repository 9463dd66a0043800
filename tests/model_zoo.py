"""Small, deterministic fp32 + int8 ONNX models for tests, examples and benchmarks.

Why this exists: the compiler's job is to reproduce what ONNX Runtime computes on quantized
graphs that real exporters/quantizers produce. So the zoo builds tiny PyTorch models, exports
them with the TorchScript ONNX exporter and quantizes them with
``onnxruntime.quantization.quantize_static`` -- the same pipeline users run -- entirely from
local resources (random weights, random calibration data; no hub, no data set downloads).

Entry point::

    zm = build("cnn", out_dir, quant_format="qdq", activation="uint8", per_channel=True)
    feeds = zm.make_inputs(4, seed=1)
    ref = ort_run(zm.quant_path, feeds[0])

``out_dir`` doubles as a cache: every file name encodes the model and variant, existing files
are reused, and files are written atomically (temp file + rename) so concurrent builders never
see half-written models. Delete ``out_dir`` after changing this module.

Everything is seeded: the same call yields the same weights, calibration data and test inputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader

MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "transformer")

#: Seed for weights (torch.manual_seed) -- one per model so models don't depend on build order.
WEIGHT_SEED = 0
#: Seed of the calibration batches. Tests should draw their inputs with other seeds so they
#: measure generalisation of the calibrated ranges, not just the calibration set.
CALIB_SEED = 12345
#: Number of calibration batches fed to ``quantize_static`` (MinMax calibration).
CALIB_BATCHES = 16

#: The two transformer variants the brief asks for: peers quantize only MatMul (Add/LayerNorm/
#: Softmax stay fp32); "MatMul+Add" also quantizes every elementwise Add, incl. biases/residuals.
TRANSFORMER_MATMUL: tuple[str, ...] = ("MatMul",)
TRANSFORMER_MATMUL_ADD: tuple[str, ...] = ("MatMul", "Add")

#: The CNN with 7-bit weights (``reduce_range=True``, weights in [-64, 64]): ONNX Runtime's int8 kernels
#: are exact on it on every x86 CPU (without VNNI their vpmaddubsw pair sums cannot saturate), so tests
#: can compare with ORT everywhere. ORT recommends this for AVX2 CPUs.
REDUCE_RANGE_CNN: dict = dict(quant_format="qdq", activation="uint8", per_channel=True, op_types="all",
                              reduce_range=True)

# Default ``op_types`` per model: "all" lets ORT quantize every op it knows how to.
_DEFAULT_OP_TYPES: dict[str, Sequence[str] | Literal["all"]] = {
    "mlp": "all",
    "cnn": "all",
    "transformer": TRANSFORMER_MATMUL,
}

_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (4, 64),
    "cnn": (1, 3, 32, 32),
    "transformer": (1, 16, 64),
}

INPUT_NAME = "x"
OUTPUT_NAME = "y"
OPSET = 17


# --------------------------------------------------------------------------------------------
# public data types


@dataclass(frozen=True)
class ZooModel:
    """Paths and input recipe of one built zoo model variant.

    ``make_inputs(n, seed)`` returns ``n`` feed dicts ``{input_name: float32 array}`` drawn
    from the same distribution the quantized model was calibrated on (standard normal).
    """

    name: str
    variant: str
    fp32_path: Path
    quant_path: Path
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    make_inputs: Callable[[int, int], list[dict[str, np.ndarray]]] = field(repr=False)


# --------------------------------------------------------------------------------------------
# torch models


def _kaiming_init(module) -> None:
    """Kaiming-normal weights + small random biases, so ReLU nets keep activations ~unit scale.

    PyTorch's default init shrinks activations ~sqrt(3)x per layer, which would leave the last
    layers using a handful of int8 levels; non-zero biases exercise bias requantization.
    """
    import torch

    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.normal_(m.bias, std=0.1)


def _make_mlp():
    """Linear(64->128)+ReLU+Linear(128->64)+ReLU+Linear(64->10): Gemm chains after export."""
    import torch.nn as nn

    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )
    _kaiming_init(model)
    return model


def _make_cnn():
    """A CNN covering the conv patterns the compiler must lower.

    Plain 3x3 conv, depthwise strided conv, pointwise conv, a residual Add, MaxPool, a grouped
    *and* dilated conv (groups=4, dilation=2), global average pool, Flatten and a final Gemm.
    """
    import torch
    import torch.nn as nn

    class ResBlock(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv2(self.relu(self.conv1(x)))
            return self.relu(y + x)

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),                         # 32x32
                nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.ReLU(),   # 16x16 dw
                nn.Conv2d(16, 32, 1), nn.ReLU(),                                   # pointwise
                ResBlock(32),
                nn.MaxPool2d(2),                                                   # 8x8
                nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=4), nn.ReLU(),  # grouped+dilated
                nn.AdaptiveAvgPool2d(1),                                           # GlobalAveragePool
                nn.Flatten(),
            )
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x))

    model = SmallCNN()
    _kaiming_init(model)
    # Halve the second residual conv: the block sums two ~unit branches, keep the sum moderate.
    with torch.no_grad():
        model.features[6].conv2.weight.mul_(0.5)
    return model


def _make_transformer():
    """Two BERT encoder layers (transformers.BertModel(...).encoder) on float hidden states.

    Eager attention so the export is plain MatMul/Softmax (no SDPA op). ``initializer_range``
    is 1/sqrt(hidden) instead of BERT's 0.02 so attention is not near-uniform and MatMul
    outputs are ~unit scale; biases and LayerNorm affine params are randomised because BERT
    initialises them to 0/1, which would hide bugs in bias/affine handling.
    """
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=100, max_position_embeddings=64, initializer_range=64 ** -0.5,
        attn_implementation="eager",
    )
    encoder = BertModel(config).encoder
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))

    class Encoder(torch.nn.Module):
        """Returns only ``last_hidden_state`` so the ONNX graph has one tensor output."""

        def __init__(self, enc: torch.nn.Module):
            super().__init__()
            self.enc = enc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.enc(x).last_hidden_state

    return Encoder(encoder)


_BUILDERS = {"mlp": _make_mlp, "cnn": _make_cnn, "transformer": _make_transformer}


def build_torch(name: str):
    """The fp32 ``torch.nn.Module`` behind zoo model ``name``, in eval mode, seeded.

    Rebuilt from the seed on every call (no caching), so tests can compare ONNX against it.
    """
    import torch

    _check_name(name)
    with torch.random.fork_rng():
        torch.manual_seed(WEIGHT_SEED)
        model = _BUILDERS[name]()
    return model.eval()


# --------------------------------------------------------------------------------------------
# inputs


def input_shape(name: str) -> tuple[int, ...]:
    """Static input shape of zoo model ``name``."""
    _check_name(name)
    return _INPUT_SHAPES[name]


def make_inputs(name: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` standard-normal float32 feed dicts for model ``name`` (same law as calibration)."""
    shape = input_shape(name)
    rng = np.random.default_rng(seed)
    return [{INPUT_NAME: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


class ListReader(CalibrationDataReader):
    """``CalibrationDataReader`` over a fixed list of feed dicts (ORT calls get_next until None)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


# --------------------------------------------------------------------------------------------
# building


def variant_name(
    quant_format: str = "qdq",
    activation: str = "uint8",
    per_channel: bool = True,
    op_types: Sequence[str] | Literal["all"] = "all",
    reduce_range: bool = False,
) -> str:
    """File-name tag of a quantization variant, e.g. ``qdq_u8_pc_all``, ``qoperator_s8_pt_matmul-add`` or
    ``qdq_u8_pc_all_rr`` (7-bit weights)."""
    ops = "all" if op_types == "all" else "-".join(o.lower() for o in op_types)
    act = {"uint8": "u8", "int8": "s8"}[activation]
    return f"{quant_format}_{act}_{'pc' if per_channel else 'pt'}_{ops}" + ("_rr" if reduce_range else "")


def build(
    name: str,
    out_dir: Path | str,
    *,
    quant_format: Literal["qdq", "qoperator"] = "qdq",
    activation: Literal["uint8", "int8"] = "uint8",
    per_channel: bool = True,
    op_types: Sequence[str] | Literal["all"] | None = None,
    reduce_range: bool = False,
) -> ZooModel:
    """Build (or reuse from ``out_dir``) the fp32 and int8 ONNX files of zoo model ``name``.

    Knobs (all forwarded to ``onnxruntime.quantization.quantize_static``):

    - ``name``: ``"mlp"`` [4,64], ``"cnn"`` [1,3,32,32] or ``"transformer"`` [1,16,64].
    - ``quant_format``: ``"qdq"`` -> QuantizeLinear/DequantizeLinear pairs around fp32 ops
      (the compiler must pattern-match them); ``"qoperator"`` -> QLinearConv/QLinearMatMul/
      QLinearAdd/... ops (com.microsoft ops for some, e.g. QLinearAdd/QLinearGlobalAveragePool).
    - ``activation``: activation dtype, ``"uint8"`` (QUInt8, asymmetric, ORT's default on x86)
      or ``"int8"`` (QInt8). Weights are always QInt8 (symmetric).
    - ``per_channel``: per-output-channel weight scales (axis 0 for Conv, the output axis for
      Gemm/MatMul) instead of one scale per tensor.
    - ``op_types``: op types to quantize. ``"all"`` lets ORT quantize everything it supports;
      a list restricts it (e.g. ``TRANSFORMER_MATMUL``, ``TRANSFORMER_MATMUL_ADD``). ``None``
      means the model's default: ``"all"`` for mlp/cnn, ``["MatMul"]`` for the transformer.
    - ``reduce_range``: 7-bit weights ([-64, 64]) instead of 8-bit (see ``REDUCE_RANGE_CNN``).

    Calibration: MinMax over ``CALIB_BATCHES`` batches from ``make_inputs(name, ..., CALIB_SEED)``;
    test inputs from other seeds may exceed the calibrated ranges a little and saturate, as in
    deployment. The fp32 model goes through ``quant_pre_process`` (shape inference) first; the
    returned ``fp32_path`` is the raw export, which is what a user would hand the compiler.
    """
    _check_name(name)
    if quant_format not in ("qdq", "qoperator"):
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', not {quant_format!r}")
    if activation not in ("uint8", "int8"):
        raise ValueError(f"activation must be 'uint8' or 'int8', not {activation!r}")
    if op_types is None:
        op_types = _DEFAULT_OP_TYPES[name]
    elif op_types != "all":
        op_types = tuple(op_types)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variant = variant_name(quant_format, activation, per_channel, op_types, reduce_range)
    fp32_path = out_dir / f"{name}_fp32.onnx"
    prep_path = out_dir / f"{name}_fp32_prep.onnx"
    quant_path = out_dir / f"{name}_{variant}.onnx"

    if not fp32_path.exists():
        atomic_write(fp32_path, lambda tmp: _export(name, tmp))
    if not prep_path.exists():
        atomic_write(prep_path, lambda tmp: preprocess(fp32_path, tmp))
    if not quant_path.exists():
        atomic_write(
            quant_path,
            lambda tmp: _quantize(name, prep_path, tmp, quant_format, activation, per_channel, op_types,
                                  reduce_range),
        )

    return ZooModel(
        name=name,
        variant=variant,
        fp32_path=fp32_path,
        quant_path=quant_path,
        input_name=INPUT_NAME,
        input_shape=input_shape(name),
        output_name=OUTPUT_NAME,
        make_inputs=lambda n, seed: make_inputs(name, n, seed),
    )


def standard_variants(name: str) -> list[dict]:
    """The ``build`` keyword sets tests/benchmarks should cover for model ``name``.

    mlp/cnn: QDQ and QOperator x uint8/int8 activations x per-channel/per-tensor (8 variants).
    transformer: QDQ uint8 per-channel, MatMul-only and MatMul+Add; plus QOperator and int8
    activation of the MatMul-only variant (4 variants).
    """
    _check_name(name)
    if name == "transformer":
        return [
            dict(quant_format="qdq", activation="uint8", per_channel=True, op_types=TRANSFORMER_MATMUL),
            dict(quant_format="qdq", activation="uint8", per_channel=True, op_types=TRANSFORMER_MATMUL_ADD),
            dict(quant_format="qdq", activation="int8", per_channel=True, op_types=TRANSFORMER_MATMUL),
            dict(quant_format="qoperator", activation="uint8", per_channel=True, op_types=TRANSFORMER_MATMUL),
        ]
    return [
        dict(quant_format=f, activation=a, per_channel=pc, op_types="all")
        for f in ("qdq", "qoperator")
        for a in ("uint8", "int8")
        for pc in (True, False)
    ]


def build_all(out_dir: Path | str) -> list[ZooModel]:
    """Build every standard variant of every zoo model into ``out_dir`` (cached)."""
    return [build(n, out_dir, **kw) for n in MODEL_NAMES for kw in standard_variants(n)]


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file in the same folder + rename: a cache hit is never a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def quiet():
    """Silence the exporter's deprecation warnings and ORT quantization/shape-inference chatter."""
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        ort.set_default_logger_severity(2)
        root.setLevel(old_level)


def export_onnx(model, args: tuple, path: Path | str, input_names: list[str], output_names: list[str]) -> None:
    """Export with the legacy TorchScript exporter at opset 17 and static shapes.

    The TorchScript exporter (``dynamo=False``) is what most deployed int8 models went through;
    it emits plain ONNX ops (Gemm, Conv, Erf-GELU, LayerNormalization) rather than functions.
    """
    import torch

    model.eval()
    with quiet(), torch.no_grad():
        torch.onnx.export(
            model, args, str(path), dynamo=False, opset_version=OPSET,
            input_names=input_names, output_names=output_names,
        )
    model.eval()  # export may toggle training mode internally; leave the module as found
    onnx.checker.check_model(str(path))


def _export(name: str, path: Path) -> None:
    import torch

    model = build_torch(name)
    x = torch.from_numpy(make_inputs(name, 1, seed=0)[0][INPUT_NAME])
    export_onnx(model, (x,), path, [INPUT_NAME], [OUTPUT_NAME])


def preprocess(src: Path, dst: Path, symbolic_shapes: bool = True) -> None:
    """Shape inference only: ORT's optimizer pass (skipped) would rewrite the transformer's 3-D
    MatMul+Add into Reshape+Gemm+Reshape, hiding its linear layers from ``op_types=["MatMul"]``;
    for mlp/cnn it changes nothing. ``symbolic_shapes=False`` uses onnx's shape inference alone, for
    graphs ORT's symbolic inference rejects (the Reshapes of an exported nn.MultiheadAttention)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with quiet():
        quant_pre_process(str(src), str(dst), skip_optimization=True, skip_symbolic_shape=not symbolic_shapes)


def quantize(
    fp32_path: Path | str,
    out_path: Path | str,
    calib_feeds: list[dict[str, np.ndarray]],
    *,
    quant_format: str = "qdq",
    activation: str = "uint8",
    per_channel: bool = True,
    op_types: Sequence[str] | Literal["all"] = "all",
    reduce_range: bool = False,
) -> None:
    """``quantize_static`` with MinMax calibration over ``calib_feeds``; weights always QInt8 (7-bit with
    ``reduce_range``)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with quiet():
        quantize_static(
            str(fp32_path), str(out_path), ListReader(calib_feeds),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=None if op_types == "all" else list(op_types),
            reduce_range=reduce_range,
        )


def _quantize(name, prep_path, path, quant_format, activation, per_channel, op_types, reduce_range) -> None:
    quantize(
        prep_path, path, make_inputs(name, CALIB_BATCHES, CALIB_SEED),
        quant_format=quant_format, activation=activation, per_channel=per_channel, op_types=op_types,
        reduce_range=reduce_range,
    )


# --------------------------------------------------------------------------------------------
# running and comparing


def ort_session(path: Path | str) -> ort.InferenceSession:
    """An onnxruntime session on the CPU EP with 2 intra-op threads (the machines have 2 cores).

    Use it directly to run many feeds through one model; ``ort_run`` is the one-shot form.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_run(path: Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file once in onnxruntime (see ``ort_session``) -- the reference results."""
    return ort_session(path).run(None, feeds)


def op_counts(path: Path | str) -> dict[str, int]:
    """``{op_type: count}`` of the top-level graph, most frequent first (for reports/asserts)."""
    from collections import Counter

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def output_scale(path: Path | str, output_index: int = 0) -> float | None:
    """Scale of the DequantizeLinear that produces graph output ``output_index``, if any.

    That scale is one quantization step of the output, the unit in which int8 results should
    be compared. Returns None when the output is not produced by a per-tensor DequantizeLinear
    (e.g. the transformer MatMul-only variant, whose output comes from a float LayerNorm).
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    out_name = graph.output[output_index].name
    producer = next((n for n in graph.node if out_name in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    scale = _constant_value(graph, producer.input[1])
    if scale is None or scale.size != 1:
        return None
    return float(scale.reshape(()))


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """Value of ``name`` if it is an initializer or a Constant node's output, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def compare_quantized(ours: np.ndarray, ref: np.ndarray, scale: float | None = None) -> dict:
    """Summarise how far ``ours`` is from ``ref`` in quantization steps.

    Integer outputs: steps are differences of the integer values. Float outputs: steps are
    ``|ours - ref| / scale`` where ``scale`` is the output's quantization step (see
    ``output_scale``); without a scale, step fields are None and only float diffs are given.

    Keys: ``n`` (elements), ``identical_frac``, ``max_abs_diff`` (in output units),
    ``max_steps``, ``mean_steps``, ``within_1_step_frac`` (fraction off by <= 1 step).
    """
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape} vs ref {ref.shape}")
    n = int(ref.size)
    if np.issubdtype(ref.dtype, np.integer):
        diff = np.abs(ours.astype(np.int64) - ref.astype(np.int64)).astype(np.float64)
        steps = diff
    else:
        diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
        # Dequantized values sit on a grid of `scale`; round away float noise in the division.
        steps = None if scale is None else np.round(diff / scale, 3)
    result = {
        "n": n,
        "identical_frac": float(np.mean(ours == ref)) if n else 1.0,
        "max_abs_diff": float(diff.max()) if n else 0.0,
        "max_steps": None,
        "mean_steps": None,
        "within_1_step_frac": None,
    }
    if steps is not None and n:
        result.update(
            max_steps=float(steps.max()),
            mean_steps=float(steps.mean()),
            within_1_step_frac=float(np.mean(steps <= 1.0)),
        )
    return result
