"""The demo's exactness check: qcompiler and ONNX Runtime against the exact result of the bundled
QDQ model (onnx's ReferenceEvaluator), and why ONNX Runtime differs where it does (its int8 kernels
saturate on CPUs without VNNI). onnx's reference is imported only here, when the demo runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import QCompilerError


#: Ops of the bundled QDQ model, whose meaning is the same at its opset (17) and at the reference's (21).
_DEMO_REFERENCE_OPS = {"QuantizeLinear", "DequantizeLinear", "Conv", "Flatten", "Gemm"}


def _exact_reference_logits(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    """The exact result of the bundled QDQ model: onnx's ReferenceEvaluator (numpy, the same on every
    CPU), float math in float64 so no accumulation rounds a near-tie the wrong way, all images at once.

    Its DequantizeLinear starts at opset 19: the default-domain opset is raised to 21, which leaves the
    model's ops (``_DEMO_REFERENCE_OPS``) meaning what they meant."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx.reference import ReferenceEvaluator
    model = onnx.load(str(onnx_path))
    unknown = {n.op_type for n in model.graph.node} - _DEMO_REFERENCE_OPS
    if unknown:
        raise QCompilerError(f"demo: the exact reference was not checked for ops {sorted(unknown)}")
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 21)
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    name = model.graph.input[0].name
    return ReferenceEvaluator(model).run(None, {name: images.astype(np.float64)})[0].astype(np.float32)


def _output_step(onnx_path: Path) -> float:
    """The scale of the DequantizeLinear producing the model's output: one quantization step of a logit."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(onnx_path))
    producer = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    scale = next(t for t in model.graph.initializer if t.name == producer.input[1])
    return float(numpy_helper.to_array(scale))


def _agreement(logits: np.ndarray, exact: np.ndarray, step: float) -> str:
    steps = np.round(np.abs(logits.astype(np.float64) - exact) / step).astype(np.int64)
    same = (logits.argmax(1) == exact.argmax(1)).mean()
    return (f"{(steps == 0).mean():.2%} of logits identical, max {steps.max()} steps off, "
            f"same prediction on {same:.2%}")


def _ort_logits(onnx_path: Path, images: np.ndarray) -> np.ndarray | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"image": img[None]})[0] for img in images])


def report_exactness(onnx_path: Path, images: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> None:
    """qcompiler and ONNX Runtime each against the exact result, and why ORT differs where it does."""
    from ..target import host_features
    exact = _exact_reference_logits(onnx_path, images)
    step = _output_step(onnx_path)
    print(f"exact reference (onnx ReferenceEvaluator on the QDQ model): accuracy {(exact.argmax(1) == labels).mean():.2%}")
    print(f"qcompiler vs exact reference: {_agreement(logits, exact, step)}")
    ort_logits = _ort_logits(onnx_path, images)
    if ort_logits is None:
        return
    print(f"ONNX Runtime vs exact reference: {_agreement(ort_logits, exact, step)}; "
          f"accuracy {(ort_logits.argmax(1) == labels).mean():.2%}")
    if not np.array_equal(ort_logits, exact):
        features = host_features()
        cause = ("its int8 kernels saturate on this CPU (no VNNI: vpmaddubsw clips the int16 sum of each "
                 "pair of u8 x s8 products)" if not {"avx512vnni", "avxvnni"} & features
                 else "this CPU has VNNI, where its int8 kernels are exact: unexpected")
        print(f"ONNX Runtime is not exact here: {cause}")
