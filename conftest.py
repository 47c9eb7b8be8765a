"""The start of a parallel run (README: the test command), before pytest-xdist starts its workers.

Each worker collects test_xprim_models.py, and pytest rewrites its asserts and compiles it:
a second of CPU for its 6,000 lines, four times over. pytest keeps the result in __pycache__
(which .gitignore lists), but in a fresh checkout the workers all start before it exists, and
with PYTHONDONTWRITEBYTECODE set it is never kept. So the controller, which collects nothing
itself, imports the module once through pytest's rewriting import hook and keeps the result
there; the workers load it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return  # a worker, or a run without workers
    keep_path, keep_flag = list(sys.path), sys.dont_write_bytecode
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.dont_write_bytecode = False  # for these two files only: the module and xprim_models
    try:
        with contextlib.suppress(Exception):  # the workers collect it anyway, and say what is wrong
            importlib.import_module("test_xprim_models")
    finally:
        sys.path[:], sys.dont_write_bytecode = keep_path, keep_flag
