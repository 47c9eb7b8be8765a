"""Set-up before the tests: Ctrl-C reaches the test processes, and (in a parallel run, the
README's test command) the test module is compiled once before pytest-xdist starts its workers.

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
import signal
import sys
import threading
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A background job of a shell without job control starts with SIGINT ignored, and the
    # children of the Ctrl-C tests would inherit that: let Ctrl-C reach them (and pytest).
    if (sys.platform != "win32" and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        signal.signal(signal.SIGINT, signal.default_int_handler)
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
