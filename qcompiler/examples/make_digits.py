"""Regenerate the bundled digits example: a real trained int8 CNN for demos and tests.

Run by developers (not at install time)::

    python -m qcompiler.examples.make_digits        # or: python qcompiler/examples/make_digits.py

It trains a small CNN on scikit-learn's bundled ``load_digits`` (1797 8x8 grayscale images,
10 classes; shipped inside the sklearn wheel, so nothing is downloaded), exports it to ONNX
with a fixed batch of 1 and quantizes it with ONNX Runtime, writing next to this file:

- ``digits_cnn_fp32.onnx``  input ``image`` float32 [1, 1, 8, 8] (pixels / 16 -> [0, 1]),
  output ``logits`` float32 [1, 10];
- ``digits_cnn_qdq.onnx``   ``quantize_static(QDQ, per_channel=True, activations QUInt8,
  weights QInt8)``, MinMax-calibrated on 256 training images;
- ``digits_test.npz``       held-out 25% stratified split: ``images`` float32 [450, 1, 8, 8],
  ``labels`` int64 [450].

Model: conv3x3 1->16 +ReLU, conv3x3 16->32 stride 2 +ReLU, conv1x1 32->32 +ReLU, flatten,
Linear 512->10. Trained 15 epochs of Adam (one-cycle LR 5e-3) with batch 32 (a few seconds on 2 cores).

Everything is seeded and torch runs single-threaded, so reruns reproduce the same weights.

Measured test accuracy on the 450 held-out images (onnxruntime 1.31.1, torch 2.13.0):
fp32 = 97.78% (440/450), int8 (QDQ) = 97.56% (439/450).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
EPOCHS = 15
LR = 5e-3
BATCH = 32
CALIB_IMAGES = 256


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 [N,1,8,8] in [0,1] + int64 labels, split 75/25 stratified (seeded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    return x_tr, y_tr, x_te, y_te


def make_model():
    """The small CNN; each layer is a pattern the compiler lowers (conv, strided conv, 1x1, Gemm)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),             # 8x8
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),  # 4x4
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def train(x_tr: np.ndarray, y_tr: np.ndarray):
    """Adam (one-cycle LR, light weight decay) + cross-entropy for EPOCHS epochs; single-threaded so results don't depend on cores."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    x = torch.from_numpy(x_tr)
    y = torch.from_numpy(y_tr)
    steps_per_epoch = (len(x) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def export(model, path: Path) -> None:
    """TorchScript exporter, opset 17, static [1,1,8,8] input named ``image``."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
            input_names=["image"], output_names=["logits"],
        )
    model.eval()


def quantize(fp32_path: Path, out_path: Path, calib: np.ndarray) -> None:
    """Shape-infer, then ORT static QDQ quantization calibrated on ``calib`` images one by one."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib)

        def get_next(self):
            img = next(self._it, None)
            return None if img is None else {"image": img[None]}

    with tempfile.TemporaryDirectory() as tmp, _quiet(ort):
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32_path), str(prep))
        quantize_static(
            str(prep), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )


@contextlib.contextmanager
def _quiet(ort):
    """Hide ORT's quantization logging/shape-inference chatter; restore afterwards."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        ort.set_default_logger_severity(2)
        root.setLevel(level)


def ort_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX model in onnxruntime, one image per run (the batch is fixed)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    preds = [int(np.argmax(sess.run(None, {"image": img[None]})[0])) for img in images]
    return float(np.mean(np.asarray(preds) == labels))


def main(out_dir: Path = OUT_DIR) -> dict[str, float]:
    """Train, export, quantize, save the test split; print and return the ORT accuracies."""
    x_tr, y_tr, x_te, y_te = load_split()
    model = train(x_tr, y_tr)
    fp32 = out_dir / "digits_cnn_fp32.onnx"
    qdq = out_dir / "digits_cnn_qdq.onnx"
    export(model, fp32)
    calib = x_tr[np.random.default_rng(SEED).permutation(len(x_tr))[:CALIB_IMAGES]]
    quantize(fp32, qdq, calib)
    np.savez_compressed(out_dir / "digits_test.npz", images=x_te, labels=y_te)
    acc = {"fp32": ort_accuracy(fp32, x_te, y_te), "int8": ort_accuracy(qdq, x_te, y_te)}
    for name in ("digits_cnn_fp32.onnx", "digits_cnn_qdq.onnx", "digits_test.npz"):
        print(f"{name}: {os.path.getsize(out_dir / name)} bytes")
    print(f"test accuracy on {len(y_te)} images: fp32 {acc['fp32']:.2%}, int8 {acc['int8']:.2%}")
    return acc


if __name__ == "__main__":
    main()
