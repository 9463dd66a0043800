"""The deployable artifact: a TVM shared library with qcompiler's metadata inside it.

The metadata (signature, target, required CPU features, versions, int8/fp32 op summary) is a JSON
document in an ELF section of its own (``.qcompiler.meta``), added with binutils' objcopy after
TVM's ``export_library``. One file ships; ``qcompiler inspect`` and the loader read the section with
a few lines of ELF parsing, without loading (or running) any of the library's code, so a library
built for another CPU can be refused before it can crash the process.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from .errors import QCompilerError
from .native_log import native_stderr_silenced
from .output_files import atomic_output

SECTION = ".qcompiler.meta"
FORMAT = "qcompiler-library-2"  # 2: required_cpu_features in LLVM feature names


def write_library(executable, path: str | os.PathLike, metadata: dict) -> Path:
    """Export ``executable`` to ``path`` with ``metadata`` embedded; atomic (temp file, then rename)."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        raise QCompilerError("objcopy (binutils) is needed to write the library; install binutils")
    with atomic_output(path, "output", ".so") as lib, tempfile.TemporaryDirectory(prefix="qcompiler-") as tmp:
        meta = Path(tmp) / "meta.json"
        with native_stderr_silenced():
            executable.export_library(str(lib))
        meta.write_text(json.dumps({"format": FORMAT, **metadata}, indent=1, sort_keys=True))
        subprocess.run([objcopy, "--add-section", f"{SECTION}={meta}", "--set-section-flags",
                        f"{SECTION}=noload,readonly", str(lib)], check=True, capture_output=True)
    return Path(path)


def _section(data: bytes, name: str) -> bytes | None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None  # not a little-endian ELF64 file
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):
        name_off, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name_off, offset, size

    _, str_off, str_size = header(shstrndx)
    names = data[str_off:str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = header(i)
        if names[name_off:names.index(b"\0", name_off)].decode() == name:
            return data[offset:offset + size]
    return None


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a library written by ``write_library`` (QCompilerError if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise QCompilerError(f"{path}: no such file; give the path of a library written by `qcompiler compile`")
    data = path.read_bytes()
    try:
        raw = _section(data, SECTION)
    except (struct.error, ValueError, UnicodeDecodeError):
        raw = None
    if raw is None:
        raise QCompilerError(f"{path}: not a qcompiler library (no {SECTION} section); "
                             "build it with `qcompiler compile MODEL -o OUT.so`")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):  # bytes that are not UTF-8 fail before JSON does
        meta = None
    if not isinstance(meta, dict):
        raise QCompilerError(f"{path}: the {SECTION} section is corrupt; rebuild the library")
    if meta.get("format") != FORMAT:
        raise QCompilerError(f"{path}: library format {meta.get('format')!r} is not {FORMAT!r}; rebuild it "
                             "with this qcompiler version")
    return meta
