"""The ``qcompiler`` command: compile / run / inspect / roofline / demo (flag names after TVM's old tvmc).

Every user error is a QCompilerError: printed as one ``error: ...`` line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import QCompilerError, describe_exception


def parse_input_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """``"x:1x3x32x32,mask:1x128"`` -> {"x": (1, 3, 32, 32), "mask": (1, 128)} (tvmc's syntax, with x)."""
    shapes = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, dims = item.strip().rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.replace("[", "").replace("]", "").split("x") if d)
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise QCompilerError(f"--input-shapes: cannot parse {item!r}; write NAME:DxDxD, e.g. x:1x3x32x32")
        shapes[name] = shape
    return shapes


def _print_time(label: str, seconds: np.ndarray) -> None:
    ms = np.asarray(seconds) * 1e3
    print(f"{label}: median {np.median(ms):.3f} ms, min {ms.min():.3f}, max {ms.max():.3f} "
          f"(p10-p90 {np.percentile(ms, 10):.3f}-{np.percentile(ms, 90):.3f}) over {ms.size} measurements")


def cmd_compile(args) -> None:
    from .api import compile as qcompile
    from .op_summary import format_summary
    start = time.perf_counter()
    model = qcompile(args.model, args.output, target=args.target, input_shapes=parse_input_shapes(args.input_shapes))
    print(f"compiled {args.model} -> {args.output} in {time.perf_counter() - start:.1f} s "
          f"(target {model.metadata['target']})")
    print(format_summary(model.metadata["ops"]))


def _load_inputs(path: str | None, model) -> dict[str, np.ndarray]:
    specs = model.signature.inputs
    if path is None:  # reproducible random inputs in each input's natural range
        rng = np.random.default_rng(0)
        feeds = {}
        for s in specs:
            if s.dtype.startswith("float"):
                feeds[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
            elif s.dtype == "bool":  # np.iinfo has no bool
                feeds[s.name] = rng.integers(0, 2, s.shape).astype(bool)
            else:
                info = np.iinfo(s.dtype)
                feeds[s.name] = rng.integers(info.min, info.max, s.shape, endpoint=True).astype(s.dtype)
        return feeds
    file = Path(path)
    if not file.is_file():
        raise QCompilerError(f"--inputs {file}: no such file; give an .npz with one array per input name")
    try:
        data = dict(np.load(file))
    except Exception as err:
        raise QCompilerError(f"--inputs {file}: not a readable .npz file ({type(err).__name__})") from None
    if len(specs) == 1 and specs[0].name not in data and len(data) == 1:
        return {specs[0].name: next(iter(data.values()))}
    return data


def cmd_run(args) -> None:
    from .runtime import load
    model = load(args.library, num_threads=args.threads)
    feeds = _load_inputs(args.inputs, model)
    outputs = model(**feeds)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for spec, out in zip(model.signature.outputs, outputs):
        flat = out.reshape(-1)
        head = np.array2string(flat[:8], precision=4, separator=", ")
        extra = f", argmax {int(flat.argmax())}" if flat.size <= 1000 else ""
        print(f"output {spec.name}: shape {'x'.join(map(str, out.shape))} {out.dtype}, first {head}{extra}")
    if args.outputs:
        _save_npz(args.outputs, {s.name: o for s, o in zip(model.signature.outputs, outputs)})
        print(f"outputs written to {args.outputs}")
    if args.print_time or args.repeat > 1:
        _print_time("latency", model.benchmark(**feeds, repeat=max(args.repeat, 1)))


def _save_npz(path: str, arrays: dict) -> None:
    from .output_files import atomic_output
    with atomic_output(path, "--outputs") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def cmd_inspect(args) -> None:
    from .artifact import read_metadata
    from .op_summary import format_summary
    from .signature import ModelSignature
    meta = read_metadata(args.library)
    if args.json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return
    sig = ModelSignature.from_json(meta["signature"])
    print(f"library:  {args.library}")
    print(f"source:   {meta.get('source')}")
    print(f"target:   {meta.get('target')}")
    print(f"class:    {meta.get('cpu_class') or '-'} (runs on CPUs with every feature below)")
    print(f"needs:    {', '.join(meta.get('required_cpu_features', [])) or 'baseline x86-64'}")
    print(f"versions: {', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())}")
    for spec in sig.inputs:
        print(f"input     {spec.describe()}")
    for spec in sig.outputs:
        print(f"output    {spec.describe()}")
    print(format_summary(meta["ops"]))


def cmd_demo(args) -> None:
    """The main job on the bundled example: compile the digits CNN, load the .so, run the test set,
    check it against the exact result (and ONNX Runtime against it), report latency and the roofline
    of every kernel."""
    from . import examples
    from .runtime import load
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = examples.example_path("digits_cnn_qdq.onnx")
    lib_path = out_dir / "digits_cnn_int8.so"
    cmd_compile(argparse.Namespace(model=str(onnx_path), output=str(lib_path), target=args.target,
                                   input_shapes=None))
    data = np.load(examples.example_path("digits_test.npz"))
    images, labels = data["images"], data["labels"]
    model = load(lib_path)
    logits = np.concatenate([model(image=img[None]) for img in images])
    accuracy = float((logits.argmax(1) == labels).mean())
    print(f"ran {lib_path} on {len(images)} held-out digits: accuracy {accuracy:.2%}")
    from .examples.exactness import report_exactness
    report_exactness(onnx_path, images, labels, logits)
    _print_time("latency per image (qcompiler, batch 1)", model.benchmark(image=images[:1], repeat=args.repeat))
    from .roofline.analyze import roofline
    from .output_files import write_text_atomic
    print("roofline (ceilings are measured once per machine and cached, ~15 s) ...")
    report = roofline(lib_path)
    write_text_atomic(out_dir / "roofline.md", report.to_markdown())
    report.plot(out_dir / "roofline.png")
    print("\n".join(report.to_table().splitlines()[2:4]))
    print(f"roofline report: {out_dir / 'roofline.md'}, plot: {out_dir / 'roofline.png'}")


def cmd_roofline(args) -> None:
    from .roofline.analyze import roofline
    from .output_files import check_output_path, write_text_atomic
    if args.output:
        check_output_path(args.output, "--output")
    if args.plot:
        check_output_path(args.plot, "--plot", ".png")
    report = roofline(args.model, target=args.target, threads=args.threads, remeasure=args.remeasure,
                      repeat=args.repeat, input_shapes=parse_input_shapes(args.input_shapes),
                      log=lambda message: print(message, file=sys.stderr))
    text = report.render(args.format)
    if args.output:
        write_text_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qcompiler", description="Compile quantized (int8) models with TVM.")
    sub = parser.add_subparsers(dest="command", required=True)
    target_help = ('a CPU class (x86-avx2, x86-avx512, x86-avx512-vnni, x86-avxvnni), an LLVM CPU name (znver3, '
                   'skylake-avx512, ...), an LLVM target JSON dict (\'{"kind": "llvm", "mcpu": "znver4"}\') or "host" '
                   "(default: this CPU's name and features as LLVM detects them)")

    p = sub.add_parser("compile", help="compile an ONNX model to a deployable .so")
    p.add_argument("model", help="ONNX model (fp32, QDQ or QOperator)")
    p.add_argument("-o", "--output", required=True, help="output library (.so)")
    p.add_argument("--target", default=None, help=target_help)
    p.add_argument("--input-shapes", default=None, help="fix input shapes, e.g. x:1x3x32x32,mask:1x128")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a compiled library")
    p.add_argument("library")
    p.add_argument("--inputs", default=None, help=".npz with one array per input name (default: random inputs)")
    p.add_argument("--outputs", default=None, help="write the outputs to this .npz")
    p.add_argument("--repeat", type=int, default=1, help="timing measurements (implies --print-time if > 1)")
    p.add_argument("--print-time", action="store_true", help="print latency (median and spread)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="print a compiled library's metadata")
    p.add_argument("library")
    p.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("roofline", help="each kernel's attained GOP/s against this machine's measured ceilings")
    p.add_argument("model", help="a compiled library (.so) or a model to compile first (ONNX)")
    p.add_argument("--target", default=None, help=target_help + ", or a datasheet chip (neoverse-n1, ...): "
                   "no timings then")
    p.add_argument("--input-shapes", default=None, help="fix input shapes when compiling a model")
    p.add_argument("--format", choices=["table", "json", "md"], default="table", help="report format (default table)")
    p.add_argument("-o", "--output", default=None, help="write the report here instead of stdout")
    p.add_argument("--plot", default=None, help="also write a log-log roofline PNG here")
    p.add_argument("--threads", type=int, default=None, help="threads for kernels and ceilings (default: all cores)")
    p.add_argument("--repeat", type=int, default=10, help="timed repeats per kernel (default 10)")
    p.add_argument("--remeasure", action="store_true", help="measure the ceilings again instead of the cached ones")
    p.set_defaults(func=cmd_roofline)

    p = sub.add_parser("demo", help="compile and run the bundled int8 digits CNN (the quick start)")
    p.add_argument("--output-dir", default="qcompiler-demo", help="where to write the library")
    p.add_argument("--target", default=None, help=target_help)
    p.add_argument("--repeat", type=int, default=20)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QCompilerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - a bug of ours or a library's: one line, not a traceback
        if os.environ.get("QCOMPILER_DEBUG"):
            raise
        print(f"error: internal error in `qcompiler {args.command}` ({describe_exception(err, 300)}); this is a "
              "qcompiler bug: please report it with the model and command (QCOMPILER_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
