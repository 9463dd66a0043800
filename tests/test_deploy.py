"""A library records the CPU features it needs; loading refuses one this machine cannot run."""
from __future__ import annotations

import pytest

import qcompiler
from qcompiler.artifact import read_metadata
from qcompiler.examples import example_path
from qcompiler.target import host_cpu_flags, host_target, required_features, resolve_target

# CPUs whose LLVM feature sets include something a given x86 machine may lack (AVX-VNNI/VP2INTERSECT
# on Zen 5, AMX and AVX512-FP16 on Sapphire/Granite Rapids).
FOREIGN_CPUS = ("znver5", "sapphirerapids", "graniterapids")


def test_host_library_records_features_the_host_has(tmp_path):
    out = tmp_path / "m.so"
    qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), out)
    meta = read_metadata(out)
    assert meta["cpu"] == str(host_target().attrs["mcpu"])
    assert "avx512f" in meta["required_cpu_features"] or "avx2" in meta["required_cpu_features"]
    assert set(meta["required_cpu_features"]) <= host_cpu_flags()
    qcompiler.load(out)  # loads fine


def test_library_for_a_foreign_cpu_is_refused(tmp_path):
    flags = host_cpu_flags()
    foreign = next(cpu for cpu in FOREIGN_CPUS
                   if set(required_features(resolve_target({"kind": "llvm", "mcpu": cpu}))) - flags)
    out = tmp_path / "foreign.so"
    qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), out, target={"kind": "llvm", "mcpu": foreign})
    with pytest.raises(qcompiler.QCompilerError, match=rf"built for CPU '{foreign}', needs CPU features .* lacks"):
        qcompiler.load(out)
