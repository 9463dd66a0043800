"""Writing output files: checked before any work, never left half-written.

Every file qcompiler writes (libraries, reports, plots, --outputs arrays, the ceilings cache) goes
through ``atomic_output``: the content is written to a temporary file in the target's directory and
renamed over the target only when complete; on an error the temporary is removed.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import QCompilerError


def check_output_path(path: str | os.PathLike, what: str, suffix: str | None = None) -> Path:
    """Fail early (before minutes of work) on an output path that cannot be written."""
    path = Path(path)
    if suffix and path.suffix.lower() != suffix:
        raise QCompilerError(f"{what} {path}: the file must end in {suffix}")
    if not path.parent.is_dir():
        raise QCompilerError(f"{what} {path}: directory {path.parent} does not exist")
    return path


@contextmanager
def atomic_output(path: str | os.PathLike, what: str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that go by the extension
    behave); rename it to ``path`` when the block ends normally, remove it if it raises."""
    path = check_output_path(path, what, suffix)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    with atomic_output(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
