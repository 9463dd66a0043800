"""Bundled example models, so demos and tests work offline.

Files (regenerate with ``python -m qcompiler.examples.make_digits``):

- ``digits_cnn_fp32.onnx``: a small CNN trained on scikit-learn's bundled 8x8 digits,
  input ``image`` float32 [1, 1, 8, 8] (pixels in [0, 1]), output ``logits`` [1, 10].
- ``digits_cnn_qdq.onnx``: the same model quantized by ONNX Runtime (QDQ, per-channel int8
  weights, uint8 activations) -- the kind of file qcompiler exists to compile.
- ``digits_test.npz``: held-out test split, ``images`` float32 [N, 1, 8, 8], ``labels`` int64 [N].
"""

from __future__ import annotations

from pathlib import Path

_DIR = Path(__file__).resolve().parent


def example_path(name: str) -> Path:
    """Absolute path of bundled example file ``name`` (e.g. ``"digits_cnn_qdq.onnx"``).

    Raises FileNotFoundError naming the file when it is not bundled (e.g. a wheel built
    without package data), instead of letting a later open() fail with a less clear path.
    """
    path = _DIR / name
    if Path(name).name != name or not path.is_file():
        available = ", ".join(sorted(p.name for p in _DIR.iterdir() if p.suffix in (".onnx", ".npz")))
        raise FileNotFoundError(
            f"bundled example {name!r} not found in {_DIR} (available: {available or 'none'})"
        )
    return path
