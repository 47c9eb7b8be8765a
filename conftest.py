"""Set-up before the tests: Ctrl-C reaches the test processes, temporary directories go to
memory where Linux has room for them, and (in a parallel run, the README's test command) the
test module is compiled once before pytest-xdist starts its workers.

The tests write, flush and delete some 40,000 small files. On this project's CI machine (a
virtual disk under ext4) the kernel's side of that cost 18 s of CPU, and on tmpfs (/dev/shm)
10 s: the run took 39 s against 29 s. A file there is as real to the module: the
same system calls, links, sparse files and locks. The disk's own failures (a full disk, EIO
from fsync) are injected by the fault sweep, not met by chance. TMPDIR or --basetemp, when
given, choose instead.

Each worker collects test_xprim_models.py, and pytest rewrites its asserts and compiles it:
some 4 s of CPU for its 7,400 lines, four times over. pytest keeps the result in __pycache__
(which .gitignore lists), but in a fresh checkout the workers all start before it exists, and
with PYTHONDONTWRITEBYTECODE set it is never kept. So the controller, which collects nothing
itself, imports the module once through pytest's rewriting import hook and keeps the result
there; the workers load it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A background job of a shell without job control starts with SIGINT ignored, and the
    # children of the Ctrl-C tests would inherit that: let Ctrl-C reach them (and pytest).
    if (sys.platform != "win32" and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not hasattr(config, "workerinput"):  # the workers, started later, inherit TMPDIR and the base directory
        temporary_files_in_memory(config)
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


def temporary_files_in_memory(config: pytest.Config) -> None:
    """Point TMPDIR (and so pytest's tmp_path) at /dev/shm when nothing chose a place and it has room."""
    if config.option.basetemp or os.environ.get("TMPDIR") or not sys.platform.startswith("linux"):
        return
    memory = "/dev/shm"  # noqa: S108 (pytest makes its own directory there, private to the user)
    try:
        stats = os.statvfs(memory)
    except OSError:
        return
    roomy = stats.f_bavail * stats.f_frsize >= 4 << 30 and stats.f_favail >= 500_000  # the slow tests' 100,000 files
    if roomy and os.access(memory, os.W_OK | os.X_OK):
        os.environ["TMPDIR"] = memory
        tempfile.tempdir = None  # read TMPDIR again
