"""The qcompiler command from a fresh shell: compile, run, inspect, and its error handling.

Each command runs in its own process (as a user runs it); the compiled .so is also loaded by a
separate Python process that never imported the compiler. Results are checked against the exact
reference (tests/exact_reference.py) on every CPU, and against ONNX Runtime where ORT is exact.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import exact_reference as er
import isa
from qcompiler.examples import example_path
from qcompiler.target import host_features, required_features, resolve_target

EXAMPLE = example_path("digits_cnn_qdq.onnx")


def qc(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "qcompiler.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lib") / "digits.so"
    proc = qc("compile", EXAMPLE, "-o", out)
    assert "int8 kernels: conv2d x3, dense x1" in proc.stdout, proc.stdout
    assert "fp32 islands: none" in proc.stdout, proc.stdout
    return out


def test_run_matches_the_exact_reference(library, tmp_path):
    images = np.load(example_path("digits_test.npz"))["images"]
    np.savez(tmp_path / "in.npz", image=images[:1])
    proc = qc("run", library, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz", "--repeat", "5")
    assert "output logits: shape 1x10 float32" in proc.stdout and "latency: median" in proc.stdout, proc.stdout
    ours = np.load(tmp_path / "out.npz")["logits"]
    # same int8 logits, dequantized identically
    np.testing.assert_array_equal(ours, er.reference_run(EXAMPLE, {"image": images[:1]})[0])
    if er.ort_is_exact(EXAMPLE):
        import onnxruntime as ort
        sess = ort.InferenceSession(str(EXAMPLE), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(ours, sess.run(None, {"image": images[:1]})[0])


def _needs(inspect_stdout: str) -> list[str]:
    line = next(ln for ln in inspect_stdout.splitlines() if ln.startswith("needs:"))
    return line.split(":", 1)[1].strip().split(", ")


def test_inspect_shows_the_features_the_library_needs(library):
    """The host's library needs exactly what its target enables, VNNI only where the host has it."""
    proc = qc("inspect", library)
    assert "input     image: 1x1x8x8 float32" in proc.stdout, proc.stdout
    needs = _needs(proc.stdout)
    assert needs == required_features(resolve_target(None)), proc.stdout
    assert ("avx512vnni" in needs) == ("avx512vnni" in host_features()), proc.stdout
    meta = json.loads(qc("inspect", library, "--json").stdout)
    # every CPU class runs the conv chain channels-last: one transpose in, one before the flatten
    assert meta["ops"]["int8"] == {"conv2d": 3, "dense": 1, "reshape": 1, "permute_dims": 2} and meta["versions"]["apache-tvm"]


@pytest.mark.parametrize("cpu,spec", [("avx512_vnni", isa.AVX512_VNNI), ("avx2", isa.AVX2)])
def test_inspect_a_library_built_for_another_cpu_class(cpu, spec, tmp_path):
    """`compile --target` for a CPU class, on any host (compiled and inspected, not run): the library
    records that class's features, VNNI exactly for the VNNI class."""
    out = tmp_path / f"digits_{cpu}.so"
    qc("compile", EXAMPLE, "-o", out, "--target", json.dumps(spec))
    needs = _needs(qc("inspect", out).stdout)
    assert needs == required_features(resolve_target(spec))
    assert ("avx512vnni" in needs) == (cpu == "avx512_vnni") and "avx2" in needs
    assert (cpu == "avx2") == (not any(f.startswith("avx512") for f in needs))


def test_library_runs_in_a_separate_python_process(library):
    script = textwrap.dedent(f"""
        import sys, numpy as np
        import qcompiler
        model = qcompiler.load({str(library)!r})
        assert not {{"qcompiler.build", "qcompiler.passes", "onnx"}} & set(sys.modules)  # no compiler needed to run
        data = np.load({str(example_path("digits_test.npz"))!r})
        logits = np.concatenate([model(image=img[None]) for img in data["images"]])
        print((logits.argmax(1) == data["labels"]).mean())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) >= 0.95  # the exact int8 accuracy on this test set is 97.6%


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_missing_and_corrupt_model_files(tmp_path):
    out = tmp_path / "out.so"
    _assert_one_line_error(qc("compile", tmp_path / "nope.onnx", "-o", out, check=False), "nope.onnx", "no such file")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(EXAMPLE.read_bytes()[:5000])
    _assert_one_line_error(qc("compile", truncated, "-o", out, check=False), "truncated.onnx", "corrupt")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xff" * 100)
    _assert_one_line_error(qc("compile", garbage, "-o", out, check=False), "garbage.onnx")
    assert not out.exists() and list(tmp_path.glob("*.so")) == [] and list(tmp_path.glob("qcompiler-*")) == []


def test_library_with_corrupt_metadata_bytes(library, tmp_path):
    """Bytes in the metadata section that are not UTF-8 (a byte-mutated library) give a one-line
    error, not a UnicodeDecodeError traceback."""
    data = bytearray(library.read_bytes())
    at = data.find(b'"format"')
    assert at > 0
    data[at:at + 8] = b"\xff\xfe\xff\xfe\xff\xfe\xff\xfe"
    broken = tmp_path / "broken.so"
    broken.write_bytes(bytes(data))
    for command in ("run", "inspect"):
        _assert_one_line_error(qc(command, broken, check=False), "broken.so", "corrupt")


def test_output_directory_checked_before_compiling(tmp_path):
    """An output path in a missing directory fails at once, before the model is even read (here the
    model does not exist either: the output is what is reported)."""
    import qcompiler
    from qcompiler.errors import QCompilerError
    with pytest.raises(QCompilerError, match="does not exist"):
        qcompiler.compile(str(tmp_path / "missing.onnx"), tmp_path / "no" / "such" / "dir" / "out.so")
    _assert_one_line_error(qc("compile", tmp_path / "missing.onnx", "-o", tmp_path / "no" / "out.so", check=False),
                           "does not exist")


def test_run_with_a_bool_input(tmp_path):
    """`qcompiler run` makes random inputs of every dtype, bool included (np.iinfo has none)."""
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [8])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["nx"]), helper.make_node("Where", ["cond", "x", "nx"], ["y"])],
                              "where", [cond, x], [y])
    path, out = tmp_path / "where.onnx", tmp_path / "where.so"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    qc("compile", path, "-o", out)
    qc("run", out, "--outputs", tmp_path / "y.npz")
    y_out = np.load(tmp_path / "y.npz")["y"]
    rng = np.random.default_rng(0)  # what `run` documents: a seeded generator, inputs in order
    cond_in = rng.integers(0, 2, 8).astype(bool)
    x_in = rng.standard_normal(8).astype(np.float32)
    np.testing.assert_array_equal(y_out, np.where(cond_in, x_in, -x_in))


def test_an_unexpected_exception_is_one_line(library, monkeypatch, capsys):
    """Whatever escapes a command (a bug) is printed as one line with exit code 3; the traceback
    only with QCOMPILER_DEBUG=1."""
    import qcompiler.cli as cli

    def broken(args):
        raise KeyError("something internal")
    monkeypatch.setattr(cli, "cmd_inspect", broken)
    monkeypatch.delenv("QCOMPILER_DEBUG", raising=False)
    assert cli.main(["inspect", str(library)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: internal error in `qcompiler inspect` (KeyError:") and "\n" not in err, err
    monkeypatch.setenv("QCOMPILER_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["inspect", str(library)])


def test_unsupported_op_names_node_and_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="determinant_node")], "g", [x], [y])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    out = tmp_path / "det.so"
    _assert_one_line_error(qc("compile", path, "-o", out, check=False), "determinant_node", "Det")
    assert not out.exists()


def test_wrong_input_shape_and_dtype_at_run_time(library, tmp_path):
    np.savez(tmp_path / "shape.npz", image=np.zeros((2, 1, 8, 8), np.float32))
    _assert_one_line_error(qc("run", library, "--inputs", tmp_path / "shape.npz", check=False),
                           "'image'", "1x1x8x8 float32", "got 2x1x8x8 float32")
    np.savez(tmp_path / "dtype.npz", image=np.zeros((1, 1, 8, 8), np.float64))
    _assert_one_line_error(qc("run", library, "--inputs", tmp_path / "dtype.npz", check=False), "float64")
    _assert_one_line_error(qc("run", tmp_path / "missing.so", check=False), "missing.so", "no such file")
    not_ours = tmp_path / "fake.so"
    not_ours.write_bytes(b"\x7fELF not really")
    _assert_one_line_error(qc("inspect", not_ours, check=False), "not a qcompiler library")


def test_bad_input_shapes_flag(tmp_path):
    _assert_one_line_error(qc("compile", EXAMPLE, "-o", tmp_path / "a.so", "--input-shapes", "image=1x1x8x8",
                              check=False), "--input-shapes")
    _assert_one_line_error(qc("compile", EXAMPLE, "-o", tmp_path / "a.so", "--input-shapes", "img:1x1x8x8",
                              check=False), "'img'", "image")
    assert list(tmp_path.iterdir()) == []


def test_demo_is_the_readme_main_job(tmp_path):
    """`qcompiler demo` (README's first command): compile, run the held-out digits, compare with the
    exact result (qcompiler must equal it; ONNX Runtime where it is exact, else the demo says why
    not), roofline report."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "qcompiler.cli", "demo", "--output-dir", str(out), "--repeat", "5"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.split("accuracy ")[1].split("%")[0])
    assert accuracy >= 95.0, proc.stdout
    identical = "100.00% of logits identical, max 0 steps off, same prediction on 100.00%"
    assert f"qcompiler vs exact reference: {identical}" in proc.stdout, proc.stdout
    ort_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("ONNX Runtime vs exact reference: "))
    if er.ort_is_exact(EXAMPLE):
        assert identical in ort_line and "not exact here" not in proc.stdout, proc.stdout
    elif identical not in ort_line:
        assert "ONNX Runtime is not exact here: its int8 kernels saturate on this CPU (no VNNI" in proc.stdout
    assert "time-weighted % of roof" in proc.stdout
    assert (out / "digits_cnn_int8.so").exists() and (out / "roofline.png").stat().st_size > 20_000
    assert "| qconv2d" in (out / "roofline.md").read_text()
