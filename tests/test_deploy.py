"""A library records the CPU features it needs; loading refuses one this machine cannot run."""
from __future__ import annotations

import pytest

import qcompiler
from qcompiler.artifact import read_metadata
from qcompiler.examples import example_path
from qcompiler.target import X86_ISA_FEATURES, host_features, required_features, resolve_target

# CPUs whose LLVM feature sets include something a given x86 machine may lack (AVX-VNNI/VP2INTERSECT
# on Zen 5, AMX and AVX512-FP16 on Sapphire/Granite Rapids).
FOREIGN_CPUS = ("znver5", "sapphirerapids", "graniterapids")


def test_host_library_records_exactly_the_host_features(tmp_path):
    """A host build may use every vector feature this CPU has and no other: its metadata lists the
    ISA features the host reports (LLVM's host query), and an AVX2 build lists AVX2's only."""
    out = tmp_path / "m.so"
    qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), out)
    meta = read_metadata(out)
    assert set(meta["required_cpu_features"]) == set(X86_ISA_FEATURES) & host_features()
    assert "avx2" in meta["required_cpu_features"]
    qcompiler.load(out)  # loads fine
    avx2 = tmp_path / "avx2.so"
    qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), avx2, target="x86-avx2")
    features = set(read_metadata(avx2)["required_cpu_features"])
    assert {"avx2", "fma"} <= features and not any(f.startswith(("avx512", "avxvnni", "amx")) for f in features)
    qcompiler.load(avx2)  # AVX2 code runs on every supported x86 host


def test_library_for_a_foreign_cpu_is_refused(tmp_path):
    foreign = next(cpu for cpu in FOREIGN_CPUS
                   if set(required_features(resolve_target({"kind": "llvm", "mcpu": cpu}))) - host_features())
    out = tmp_path / "foreign.so"
    qcompiler.compile(str(example_path("digits_cnn_qdq.onnx")), out, target={"kind": "llvm", "mcpu": foreign})
    with pytest.raises(qcompiler.QCompilerError, match=rf"built for CPU '{foreign}', needs CPU features .* lacks"):
        qcompiler.load(out)
