"""Silence TVM 0.27's per-constant C++ log lines around VM (de)serialization.

The VM executable logs a "Scope Saving:" / "Scope Loaded:" warning per constant from C++ when a
library is exported or loaded (no log level controls it): hundreds of lines for a real model.
File descriptor 2 goes to /dev/null around those calls only; errors still arrive as Python
exceptions.
"""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
