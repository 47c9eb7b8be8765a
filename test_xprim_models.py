"""Tests for xprim_models: a real HTTP server on loopback, real files, subprocesses.

Fixtures first (an isolated environment, registries built with
examples/publish.py, a loopback server that counts requests and injects
faults), then one class per module section: ``pytest -k TestPull``.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import errno
import functools
import hashlib
import http
import importlib.util
import io
import json
import logging
import os
import posixpath
import py_compile
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import typing
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable

import pytest

import xprim_models as xm

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("publish", HERE / "examples" / "publish.py")
assert _spec is not None and _spec.loader is not None
publish = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish)


# --- Per-OS helpers -------------------------------------------------------------
# The few things a test does differently on Windows (README, "Platforms"), kept here so
# that the tests read the same on every OS.

WINDOWS = os.name == "nt"
# The interpreter of child processes. -S skips the site module: xprim_models and the children's
# scripts need only the standard library (the module comes from the checkout, by the working
# directory or PYTHONPATH), and site's start-up (site-packages' .pth hooks) is a third of a
# child's cost. Tests that need installed packages (pip, mypy) use sys.executable itself.
PYTHON = [sys.executable, "-S"]
SEP = re.escape(os.sep)  # a path separator, inside a regular expression
# Windows has no SIGKILL: os.kill(pid, 9) is TerminateProcess, as abrupt, and the exit code is 9.
KILL_SIGNAL = 9 if WINDOWS else signal.SIGKILL
KILLED = 9 if WINDOWS else -signal.SIGKILL  # the return code of a process killed so


def child_timeout(seconds: float) -> float:
    """How long to wait for a child process (to start, reach a point, answer or end) before
    calling it hung: ``seconds``, or on Windows at least 240 s. Under wine a child takes
    seconds to start, and tens of seconds on a busy machine. Only a hung child waits it out."""
    return max(seconds, 240.0) if WINDOWS else seconds


def kill(process: subprocess.Popen[Any]) -> None:
    """End ``process`` at once: no handler, no finally, no atexit runs in it."""
    os.kill(process.pid, KILL_SIGNAL)


# On Windows, Ctrl+C reaches a console program as the C runtime's SIGINT, raised in a
# thread of its own. A test has no console to press it in, so the child raises it when
# told to on its stdin; on POSIX the test sends SIGINT itself.
CTRL_C_SHIM = """
import runpy, signal, sys, threading
def ctrl_c():
    sys.stdin.readline()
    signal.raise_signal(signal.SIGINT)
threading.Thread(target=ctrl_c, daemon=True).start()
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
    exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
"""


def popen_interruptible(args: list[str], **options: Any) -> subprocess.Popen[str]:
    """``subprocess.Popen(args)`` (``args`` starts with PYTHON) that ``ctrl_c`` can interrupt."""
    if WINDOWS:
        args = [*PYTHON, "-c", CTRL_C_SHIM, *args[len(PYTHON):]]
        options["stdin"] = subprocess.PIPE
    return subprocess.Popen(args, **options)


def ctrl_c(process: subprocess.Popen[str]) -> None:
    """What pressing Ctrl+C does to the process."""
    if WINDOWS:
        assert process.stdin is not None
        process.stdin.write("\n")
        process.stdin.flush()
    else:
        process.send_signal(signal.SIGINT)


# Python that sets ``peak`` to the peak resident memory of its process, in bytes.
PEAK_RSS = (
    "import ctypes\n"  # Windows: GetProcessMemoryInfo's PeakWorkingSetSize
    "class Counters(ctypes.Structure):\n"
    "    _fields_ = [('cb', ctypes.c_ulong), ('faults', ctypes.c_ulong)] + [(n, ctypes.c_size_t) for n in 'abcdefgh']\n"
    "counters = Counters(cb=ctypes.sizeof(Counters))\n"
    "ctypes.WinDLL('psapi').GetProcessMemoryInfo(ctypes.c_void_p(-1), ctypes.byref(counters), counters.cb)\n"
    "peak = counters.a\n"
) if WINDOWS else (
    "import resource, sys\n"  # ru_maxrss: bytes on macOS, KiB elsewhere
    "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)\n"
)


def symlink(target: Path, link: Path, *, or_skip: bool = True) -> bool:
    """``os.symlink``; where no link can be made, skip the test (or, without ``or_skip``, return False)."""
    try:
        os.symlink(target, link, target_is_directory=target.is_dir())
    except OSError as exc:  # Windows without the privilege (or developer mode)
        reason = f"cannot create symbolic links here: {exc}"
    else:
        if os.path.islink(link):
            return True
        reason = "wine creates no symbolic links (os.symlink reports success, makes nothing)"
    if or_skip:
        pytest.skip(reason)
    return False


def directory_link(target: Path, link: Path) -> None:
    """A link to the directory ``target``: a junction on Windows (which needs no privilege, and
    which ``os.path.islink`` does not report), else a symbolic link; where none can be made
    (wine makes no junctions: "Request not supported"), skip the test."""
    if WINDOWS:
        import _winapi

        try:
            _winapi.CreateJunction(str(target), str(link))  # type: ignore[attr-defined,unused-ignore]
        except OSError as exc:
            pytest.skip(f"cannot create a junction here: {exc}")
    else:
        symlink(target, link)


def open_under(root: Path) -> list[str]:
    """What this process holds open below ``root``: from /proc/self/fd on Linux; on Windows,
    the C runtime's descriptors (which os.open and open() use), each asked for its path."""
    if sys.platform == "win32":  # WINDOWS, in a form mypy understands
        import ctypes
        import msvcrt

        final_path = ctypes.WinDLL("kernel32").GetFinalPathNameByHandleW
        buffer = ctypes.create_unicode_buffer(32768)
        prefix = os.path.normcase(str(root) + os.sep)
        found = []
        for fd in range(1024):  # far more than a pull may hold
            try:
                handle = msvcrt.get_osfhandle(fd)
            except OSError:
                continue  # not open
            if final_path(ctypes.c_void_p(handle), buffer, len(buffer), 0):
                path = buffer.value.removeprefix("\\\\?\\")
                if os.path.normcase(path).startswith(prefix):
                    found.append(path)
        return found
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed while listing
        if target.startswith(str(root) + os.sep):
            found.append(target)
    return found


# --- Fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def compiled_module() -> None:
    """xprim_models.py's bytecode where Python looks for it (``__pycache__``, which .gitignore
    lists). Over a hundred children import the module; with PYTHONDONTWRITEBYTECODE set, each
    would compile it anew (a third of what starting one costs), as no import writes the file."""
    if sys.dont_write_bytecode:
        with contextlib.suppress(OSError):  # a read-only checkout: each child compiles it, slower
            py_compile.compile(str(HERE / "xprim_models.py"), doraise=True)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, XDG and APPDATA inside tmp_path; no inherited *_MODELS_DIR or proxies."""
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.endswith("_MODELS_DIR") or name.lower().endswith("_proxy") or name in (
                "XPRIM_MODELS_REGISTRY_URL", "XPRIM_MODELS_COPY_FILES"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("APPDATA", str(home / "AppData" / "Roaming"))
    monkeypatch.setenv("TZ", "UTC")
    return home


def blob(size: int, seed: str = "x") -> bytes:
    """Deterministic incompressible bytes (a longer blob of a seed starts with the shorter)."""
    return hashlib.shake_256(seed.encode()).digest(size)


class Fault:
    """What the server does instead of a normal answer to one request."""

    def __init__(
        self,
        status: int = 0,
        headers: dict[str, str] | None = None,
        cut_after: int | None = None,
        corrupt: bool = False,
        extra: bytes = b"",
        extra_hidden: bool = False,
        stall: bool = False,
        reset_after: int | None = None,
        framing: str = "",
        pause_after: int | None = None,
        raw: bytes = b"",
        script: Callable[[socket.socket, bytes, int], bool] | None = None,
    ) -> None:
        self.status, self.headers = status, headers or {}
        self.cut_after, self.corrupt, self.extra = cut_after, corrupt, extra
        self.extra_hidden = extra_hidden  # extra bytes not announced in Content-Length
        self.stall = stall
        self.reset_after = reset_after  # send this many body bytes, then a TCP reset
        # "chunked", "unsized" (no Content-Length; the connection closes), "interim" (a 103
        # response first), "long-head" (over 64 KiB of headers) or "bare-lf" (LF line ends):
        # legal, if less usual.
        self.framing = framing
        self.pause_after = pause_after  # send this many body bytes, then wait for ``resume``
        self.paused, self.resume = threading.Event(), threading.Event()
        self.raw = raw  # the whole answer, as is; the connection closes after it
        # script(conn, body, n) writes the whole answer itself on the client's socket, given the
        # file's bytes (b"" if none) and how many times the path was asked for, this time
        # included; it returns whether the connection stays open.
        self.script = script


class Hold:
    """A request the server keeps waiting: ``arrived`` when it comes, answered once ``release`` is set."""

    def __init__(self) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()


def read_head(sock: socket.socket, data: bytes) -> tuple[bytes, bytes] | None:
    """The HTTP head at the start of ``data`` (read on from ``sock`` until it is whole) and the
    bytes after it; None if the peer closes first."""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def pipe(source: socket.socket, target: socket.socket) -> None:
    """Copy ``source`` to ``target`` until either closes, then shut both down."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    for sock in (source, target):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Request:
    """A request as the server read it: ``path`` is its target as sent (``/models.json``; for
    a proxy, an absolute URL or CONNECT's host:port), ``headers`` its fields by lower-case name;
    ``rest`` (bytes read past its head) and ``upstream`` (a proxy's) belong to its connection."""

    def __init__(self, conn: socket.socket, head: bytes, rest: bytes, upstream: socket.socket | None) -> None:
        self.conn, self.head, self.rest, self.upstream = conn, head.decode("latin-1"), rest, upstream
        request_line, *fields = self.head.split("\r\n")
        self.method, self.path, _ = request_line.split(" ")
        self.headers = {name.strip().lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
        self.keep_open = self.headers.get("connection", "").lower() != "close"
        self.count = 0  # how many times its path was asked for, this time included


class LoopbackServer:
    """An HTTP/1.1 server on 127.0.0.1, on raw sockets, so that a test can send any answer.

    It serves the registry directory ``root`` (None: every path is 404) with keep-alive,
    Content-Length and ``Range: bytes=N-``; with ``tls`` (an SSLContext), over HTTPS. It is
    also a forward proxy: a CONNECT opens a tunnel, and a GET in absolute form is relayed
    over one upstream connection per client connection (its answer needs a Content-Length).

    What it records; a path is a request's target without its leading slash:
      requests          Counter of requests per path; ``condition`` is notified on each
      heads, headers    each request's head as received (request line and fields, CRLF-joined),
                        and its fields as {lower-case name: value}, in order
      connections       the client address of each connection accepted, in order
      bytes_sent        body bytes sent per path by answers with a Content-Length (not by faults
                        that replace the answer); range_requests: (path, start) of each Range honoured
      max_active        the most requests in hand at once
      tagged            Counter per path of the requests carrying the field ``tag`` (name, value)

    Knobs, set by a test at any time:
      fail(path, *faults)   answer the next requests for path with these faults, one each
      always[path] = fault  answer every request for path so (a Fault may replace the answer
                            by raw bytes or a script; for a proxy, a CONNECT's path is host:port)
      hold(path)            keep the next request for path waiting until released
      gate, gated           hold requests for gated paths until ``gate`` are in hand at once
      required_headers      a request without all of these fields is answered 401
      cache_control         path prefix -> the Cache-Control of its answers
      range_enabled         False: Range is ignored, the whole file is sent
      keep_alive            False: each connection closes after one answer, without saying so
      stop                  set by close(), which also ends open connections: scripts (see
                            ``trickle``) and stalls wait on it
    """

    def __init__(self, root: Path | None = None, tls: Any = None) -> None:
        self.root, self.tls = root, tls
        self.requests: collections.Counter[str] = collections.Counter()
        self.heads: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.connections: list[tuple[str, int]] = []
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        self.range_requests: list[tuple[str, int]] = []
        self.tag, self.tagged = ("", ""), collections.Counter[str]()
        self.faults: dict[str, list[Fault]] = collections.defaultdict(list)
        self.always: dict[str, Fault] = {}
        self.holds: dict[str, Hold] = {}
        self.gate, self.gated, self.gate_open = 0, set[str](), False
        self.active = self.max_active = 0
        self.required_headers: dict[str, str] = {}
        self.cache_control: dict[str, str] = {}
        self.range_enabled = self.keep_alive = True
        self.condition, self.stop = threading.Condition(), threading.Event()
        self.open: set[socket.socket] = set()  # client connections, shut down by close()
        # A backlog of 128: the default drops bursts of connections into 1 s SYN retries.
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def fail(self, path: str, *faults: Fault) -> None:
        self.faults[path].extend(faults)

    def hold(self, path: str) -> Hold:
        """Keep the next request for ``path`` waiting until released (or the server closes)."""
        with self.condition:
            self.holds[path] = Hold()
            return self.holds[path]

    def chunk_requests(self) -> int:
        return sum(count for path, count in self.requests.items() if path.startswith("data/"))

    def trickle(self, conn: socket.socket, data: bytes) -> bool:
        """Send ``data`` a byte at a time, 20 bytes a second, until done or stopped."""
        for byte in data:
            if self.stop.wait(0.05):
                return False
            conn.sendall(bytes([byte]))
        return True

    def close(self) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        with self.condition:
            self.gate_open = True
            self.condition.notify_all()
            for hold in self.holds.values():
                hold.release.set()
            for conn in self.open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        socket.create_connection(self.listener.getsockname()).close()  # wakes accept() to see the stop
        self.thread.join()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            conn, address = self.listener.accept()
            if self.stop.is_set():
                conn.close()
                return
            with self.condition:
                self.connections.append(address)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        request = None
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            # The body is a second write: Nagle would hold it for a 40 ms delayed ACK.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.condition:
                self.open.add(conn)
            received = read_head(conn, b"")
            while received is not None and not self.stop.is_set():
                request = Request(conn, *received, request.upstream if request else None)
                self.handle(request)
                if not request.keep_open:
                    break
                received = read_head(conn, request.rest)
        except OSError:
            pass  # clients hang up: expected
        finally:
            with self.condition:
                self.open.discard(conn)
            conn.close()
            if request is not None and request.upstream is not None:
                request.upstream.close()

    def handle(self, request: Request) -> None:
        path = request.path.lstrip("/")
        with self.condition:
            self.requests[path] += 1
            request.count = self.requests[path]
            self.heads.append(request.head)
            self.headers.append(request.headers)
            if self.tag[0] and request.headers.get(self.tag[0].lower()) == self.tag[1]:
                self.tagged[path] += 1
            self.condition.notify_all()  # for tests waiting on request counts
            fault = self.faults[path].pop(0) if self.faults.get(path) else self.always.get(path)
            if any(request.headers.get(name.lower()) != value for name, value in self.required_headers.items()):
                fault = Fault(status=401)
            hold = self.holds.get(path)
            if hold is not None and hold.arrived.is_set():
                hold = None  # only the first request is held
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.gate and path in self.gated:
                if self.active >= self.gate:
                    self.gate_open = True
                    self.condition.notify_all()
                self.condition.wait_for(lambda: self.gate_open, timeout=10)
        if hold is not None:
            hold.arrived.set()
            hold.release.wait(30)
        try:
            self.respond(request, path, fault)
        finally:
            with self.condition:
                self.active -= 1

    def respond(self, request: Request, path: str, fault: Fault | None) -> None:
        conn, fault = request.conn, fault or Fault()
        if fault.script is not None:
            request.keep_open = fault.script(conn, self.read(path) or b"", request.count)
        elif fault.raw:
            conn.sendall(fault.raw)
            request.keep_open = False
        elif fault.status:
            conn.sendall(self.answer_head(fault.status, {**fault.headers, "Content-Length": "0"}))
        elif request.method == "CONNECT":
            self.tunnel(request)
        elif "://" in request.path:
            self.relay(request)
        elif (body := self.read(path)) is None:
            conn.sendall(self.answer_head(404, {"Content-Length": "0"}))
        else:
            self.send_file(request, path, body, fault)

    def read(self, path: str) -> bytes | None:
        """The file ``path`` below ``root``; None if there is none."""
        file = self.root / path if self.root is not None and ".." not in path else None
        return file.read_bytes() if file is not None and file.is_file() else None

    @staticmethod
    def answer_head(status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", f"Date: {email.utils.formatdate(usegmt=True)}",
                 *(f"{name}: {value}" for name, value in headers.items()), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def send_file(self, request: Request, path: str, body: bytes, fault: Fault) -> None:
        conn = request.conn
        if fault.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        header = request.headers.get("range", "")
        if self.range_enabled and header.startswith("bytes=") and header.endswith("-"):
            start = int(header[len("bytes=") : -1])
            self.range_requests.append((path, start))
        announced = body[start:] + (fault.extra if not fault.extra_hidden else b"")
        if fault.framing == "bare-lf":
            conn.sendall(b"HTTP/1.1 200 OK\nContent-Length: %d\n\n%s" % (len(announced), announced))
            return
        if fault.framing == "interim":
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </data>; rel=preload\r\n\r\n")
        headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"} if start else {}
        if fault.framing == "long-head":
            headers.update((f"X-Padding-{n}", "x" * 4000) for n in range(20))
        if fault.framing == "chunked":
            conn.sendall(self.answer_head(206 if start else 200, {**headers, "Transfer-Encoding": "chunked"}))
            for offset in range(0, len(announced), 700):
                piece = announced[offset : offset + 700]
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.sendall(b"0\r\n\r\n")
            return
        if fault.framing == "unsized":
            conn.sendall(self.answer_head(206 if start else 200, headers))
            conn.sendall(announced)
            request.keep_open = False
            return
        headers["Content-Length"] = str(len(announced))
        headers.update(("Cache-Control", value) for prefix, value in self.cache_control.items()
                       if path.startswith(prefix))
        conn.sendall(self.answer_head(206 if start else 200, headers))
        if fault.stall:
            self.stop.wait(30)
            return
        payload = announced + (fault.extra if fault.extra_hidden else b"")
        if fault.reset_after is not None:
            conn.sendall(payload[: fault.reset_after])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() resets
            request.keep_open = False
            return
        if fault.cut_after is not None:
            payload = payload[: fault.cut_after]
            request.keep_open = False
        if fault.pause_after is not None:
            conn.sendall(payload[: fault.pause_after])
            fault.paused.set()
            fault.resume.wait(30)
            payload = payload[fault.pause_after :]
        conn.sendall(payload)
        request.keep_open &= self.keep_alive
        with self.condition:
            self.bytes_sent[path] += len(payload)

    def tunnel(self, request: Request) -> None:
        host, _, port = request.path.rpartition(":")
        request.upstream = socket.create_connection((host, int(port)))
        request.conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        request.upstream.sendall(request.rest)
        threading.Thread(target=pipe, args=(request.upstream, request.conn), daemon=True).start()
        pipe(request.conn, request.upstream)
        request.keep_open = False

    def relay(self, request: Request) -> None:
        url = urllib.parse.urlsplit(request.path)
        if request.upstream is None:
            request.upstream = socket.create_connection((url.hostname, url.port or 80))
        lines = [f"{request.method} {url.path} HTTP/1.1", *request.head.split("\r\n")[1:], "", ""]
        kept = [line for line in lines if not line.lower().startswith("proxy-authorization:")]
        request.upstream.sendall("\r\n".join(kept).encode("latin-1"))
        answer = read_head(request.upstream, b"")
        length = re.search(rb"(?im)^content-length: *(\d+)", answer[0]) if answer else None
        if answer is None or length is None:
            raise ConnectionError(f"no answer with a Content-Length from {url.netloc}")
        head, body = answer
        while len(body) < int(length[1]):
            more = request.upstream.recv(65536)
            if not more:
                raise ConnectionError(f"{url.netloc} closed the connection mid-answer")
            body += more
        request.conn.sendall(head + b"\r\n\r\n" + body)


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def server(registry_dir: Path) -> Iterator[LoopbackServer]:
    registry_dir.mkdir(exist_ok=True)
    running = LoopbackServer(registry_dir)
    yield running
    running.close()


@pytest.fixture
def proxy() -> Iterator[LoopbackServer]:
    """A second server with no directory, for the tests that use it as HTTP(S)_PROXY."""
    running = LoopbackServer()
    yield running
    running.close()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so no one else takes it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_manager(server: LoopbackServer, data_dir: Path) -> Callable[..., xm.Manager]:
    def make(**options: Any) -> xm.Manager:
        options.setdefault("retry_backoff", 0.01)
        options.setdefault("timeout", 5.0)
        registry_url = options.pop("registry_url", server.url)
        return xm.Manager(xm.Config("test-app", registry_url, str(data_dir)), **options)

    return make


@pytest.fixture
def manager(make_manager: Callable[..., xm.Manager]) -> xm.Manager:
    return make_manager()


@pytest.fixture
def logged() -> Iterator[Callable[[str], threading.Event]]:
    """``logged(text)``: an Event, set once the xprim_models logger logs a message containing ``text``."""
    wanted: list[tuple[str, threading.Event]] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for text, event in wanted:
                if text in record.getMessage():
                    event.set()

    def logged(text: str) -> threading.Event:
        wanted.append((text, threading.Event()))
        return wanted[-1][1]

    handler = Handler()
    logging.getLogger("xprim_models").addHandler(handler)
    yield logged
    logging.getLogger("xprim_models").removeHandler(handler)


@pytest.fixture(params=["chunk-fits-buffer", "chunk-exceeds-buffer"])
def write_buffer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk streams into its place through a worker's 256 KiB write buffer: the 1 KiB
    chunks of ``model`` fit it (one write per chunk); with the buffer at 300 bytes they are
    written piece by piece as they arrive, as chunks over 256 KiB are."""
    if request.param == "chunk-exceeds-buffer":
        monkeypatch.setattr(xm, "_BUFFER_SIZE", 300)


MODEL_FILES = {
    "model.safetensors": blob(5000, "weights"),
    "config.json": b'{"layers": 2}\n',
    "sub/tokenizer.json": blob(1500, "tokenizer"),
    "empty.txt": b"",
}


@pytest.fixture
def model(registry_dir: Path) -> dict[str, bytes]:
    """``org/tiny v1`` (1 KiB chunks), its alias ``latest``, and ``org/tiny v2``."""
    publish.publish(str(registry_dir), "org", "tiny", "v1", MODEL_FILES, chunk_size=1024,
                    metadata={"framework": "onnx"})
    publish.publish(str(registry_dir), "org", "tiny", "v2", {**MODEL_FILES, "config.json": b'{"layers": 3}\n'},
                    chunk_size=1024)
    publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v1")
    return MODEL_FILES


def manifest_of(registry_dir: Path, group: str, model: str, version: str) -> dict[str, Any]:
    index = json.loads((registry_dir / "models.json").read_text())
    digest = index[group][model][version]["hash"]
    return dict(json.loads((registry_dir / "data" / digest).read_bytes()))


def write_manifest(registry_dir: Path, group: str, model: str, version: str, manifest: Any) -> str:
    """Publish a hand-made (possibly hostile) manifest; return its hash."""
    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (registry_dir / "data").mkdir(parents=True, exist_ok=True)
    (registry_dir / "data" / digest).write_bytes(raw)
    index_path = registry_dir / "models.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index.setdefault(group, {}).setdefault(model, {})[version] = {"hash": digest}
    index_path.write_text(json.dumps(index))
    return digest


def dead_pid() -> int:
    """The process id of a process that has exited."""
    child = subprocess.run([*PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def data_dir_of(manager: xm.Manager) -> Path:
    return Path(manager.data_dir)


def tree(root: Path) -> dict[str, bytes]:
    """Every file below root (hidden metadata excluded), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".")
    }


def cli_command(*args: str, registry: LoopbackServer | str | os.PathLike[str] | None = None,
                data_dir: os.PathLike[str] | str | None = None) -> list[str]:
    """``xprim-models [--registry R] [--data-dir D] ARGS`` as a command line of this Python."""
    return [*PYTHON, "-m", "xprim_models", *cli_flags(registry, data_dir), *args]


def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Managers made by the CLI in this process wait 0.01 s before a retry, not 0.5 s."""
    defaults = xm.Manager.__init__.__kwdefaults__
    assert defaults is not None and "retry_backoff" in defaults
    monkeypatch.setitem(defaults, "retry_backoff", 0.01)


def cli_flags(registry: LoopbackServer | str | os.PathLike[str] | None,
              data_dir: os.PathLike[str] | str | None) -> list[str]:
    flags = []
    if registry is not None:
        flags += ["--registry", registry.url if isinstance(registry, LoopbackServer) else os.fspath(registry)]
    if data_dir is not None:
        flags += ["--data-dir", os.fspath(data_dir)]
    return flags


def cli(*args: str, registry: LoopbackServer | str | os.PathLike[str] | None = None,
        data_dir: os.PathLike[str] | str | None = None, env: dict[str, str] | None = None,
        process: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``xprim-models [--registry R] [--data-dir D] ARGS`` and check it printed no traceback.

    It runs through ``main(argv)`` in this process, with stdout and stderr captured as a
    pipe would (UTF-8, not a terminal) and ``env`` added to the environment for the call;
    with ``process``, as ``python -m xprim_models`` in a child, for what only a process
    shows: its start-up (time zone, stream encodings), its entry point and exit code.
    A CLI left running (Ctrl-C, concurrency, a terminal) starts from ``cli_command``.
    """
    if process:
        result = subprocess.run(
            cli_command(*args, registry=registry, data_dir=data_dir), capture_output=True, text=True, cwd=HERE,
            env={**os.environ, **(env or {})}, timeout=child_timeout(timeout),
        )
    else:
        result = cli_in_process([*cli_flags(registry, data_dir), *args], env or {})
    cli_no_traceback(result)
    return result


def cli_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def cli_in_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import io
    from unittest import mock

    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="") for _ in range(2)]
    with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(streams[0]), \
            contextlib.redirect_stderr(streams[1]):
        code = xm.main(argv)
    for stream in streams:
        stream.flush()
    out, err = (stream.buffer.getvalue().decode() for stream in streams)
    return subprocess.CompletedProcess(["xprim-models", *argv], code, out, err)


# --- Public types ---------------------------------------------------------------------


class TestApi:
    def test_all_is_sorted_and_complete(self) -> None:
        assert xm.__all__ == sorted(xm.__all__)
        for name in xm.__all__:
            assert hasattr(xm, name), name
        assert isinstance(xm.__version__, str) and xm.__version__

    @pytest.mark.parametrize(
        ("error", "code", "bases"),
        [
            (xm.ModelsError, 1, (Exception,)),
            (xm.ModelNotFoundError, 3, (xm.ModelsError, LookupError)),
            (xm.VersionNotFoundError, 3, (xm.ModelsError, LookupError)),
            (xm.NotInstalledError, 4, (xm.ModelsError, LookupError)),
            (xm.AlreadyInstalledError, 0, (xm.ModelsError,)),
            (xm.HashMismatchError, 6, (xm.ModelsError,)),
            (xm.NetworkError, 5, (xm.ModelsError,)),
            (xm.StorageError, 7, (xm.ModelsError,)),
            (xm.InvalidRefError, 2, (xm.ModelsError, ValueError)),
            (xm.RegistryError, 1, (xm.ModelsError,)),
        ],
        ids=lambda value: getattr(value, "__name__", str(value)),
    )
    def test_error_classes_and_exit_codes(
        self, error: type[xm.ModelsError], code: int, bases: tuple[type, ...]
    ) -> None:
        assert error.exit_code == code
        assert issubclass(error, bases)

    def test_manager_has_every_operation(self, manager: xm.Manager, data_dir: Path) -> None:
        for name in ("list_installed", "list_remote", "list_remote_group", "list_remote_versions",
                     "get_installed", "get_remote", "get_remote_detail", "pull", "remove", "remove_all",
                     "path", "check_update", "ensure", "verify", "export"):
            assert callable(getattr(manager, name)), name
        assert manager.data_dir == str(data_dir)


class TestModelRef:
    def test_the_docstring_examples_hold(self) -> None:
        import doctest

        result = doctest.testmod(xm, optionflags=doctest.ELLIPSIS)  # a failure prints its example
        assert result.attempted >= 5 and result.failed == 0

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("fast-whisper/tiny fp16", xm.ModelRef("fast-whisper", "tiny", "fp16")),
            ("llama/7b", xm.ModelRef("llama", "7b")),
            ("  llama/7b   q4_v2 ", xm.ModelRef("llama", "7b", "q4_v2")),
            ("Org.X/model+1 v1.0-rc", xm.ModelRef("Org.X", "model+1", "v1.0-rc")),
        ],
    )
    def test_parse(self, text: str, expected: xm.ModelRef) -> None:
        assert xm.ModelRef.parse(text) == expected
        assert xm.parse_model_ref(text) == expected

    @pytest.mark.parametrize(
        "text",
        ["", "llama", "llama/", "/7b", "a/b/c v", "a/b v extra", "../etc v", "a/.. v", "a/b ..", "a/b .hidden",
         "a/b v.", "a/con v", "a/b COM1", "a\\b v", "a/b v:1", "a/" + "x" * 200, "grüße/b v"],
    )
    def test_parse_rejects(self, text: str) -> None:
        with pytest.raises(xm.InvalidRefError):
            xm.ModelRef.parse(text)

    def test_str_order_and_hash(self) -> None:
        refs = [xm.ModelRef("b", "m", "v1"), xm.ModelRef("a", "z", "v2"), xm.ModelRef("a", "m", "v9")]
        assert [str(ref) for ref in sorted(refs)] == ["a/m v9", "a/z v2", "b/m v1"]
        assert len({xm.ModelRef("a", "b", "c"), xm.ModelRef.parse("a/b c")}) == 1
        with pytest.raises(xm.InvalidRefError):
            xm.ModelRef("a", "b/c")

    def test_methods_accept_strings(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        installed = manager.pull("org/tiny v1")
        assert manager.path("org/tiny v1") == installed.path
        assert manager.get_installed(xm.ModelRef("org", "tiny", "v1")) == installed
        with pytest.raises(xm.InvalidRefError, match="version is required"):
            manager.pull("org/tiny")


# --- Paths ----------------------------------------------------------------------------


class TestPaths:
    def test_linux_default_uses_xdg_data_home(self, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
        monkeypatch.setattr(sys, "platform", "linux")
        monkeypatch.setenv("XDG_DATA_HOME", "/srv/xdg")
        assert xm.Manager(xm.Config("my-tool")).data_dir == "/srv/xdg/my-tool/models"

    @pytest.mark.parametrize("xdg", [None, "", "relative/dir"], ids=["unset", "empty", "relative"])
    def test_linux_default_without_usable_xdg(self, monkeypatch: pytest.MonkeyPatch, isolated_env: Path,
                                              xdg: str | None) -> None:
        monkeypatch.setattr(sys, "platform", "linux")
        if xdg is None:
            monkeypatch.delenv("XDG_DATA_HOME")
        else:
            monkeypatch.setenv("XDG_DATA_HOME", xdg)
        expected = posixpath.join(isolated_env, ".local", "share", "my-tool", "models")
        assert xm.Manager(xm.Config("my-tool")).data_dir == expected

    def test_macos_default(self, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
        monkeypatch.setattr(sys, "platform", "darwin")
        expected = posixpath.join(isolated_env, "Library", "Application Support", "my-tool", "models")
        assert xm.Manager(xm.Config("my-tool")).data_dir == expected

    def test_windows_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "platform", "win32")
        monkeypatch.setenv("APPDATA", r"C:\Users\Ann\AppData\Roaming")
        assert xm.Manager(xm.Config("my-tool")).data_dir == r"C:\Users\Ann\AppData\Roaming\my-tool\models"

    def test_platform_is_read_at_call_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "platform", "darwin")
        on_mac = xm.Manager(xm.Config("t")).data_dir
        monkeypatch.setattr(sys, "platform", "linux")
        assert xm.Manager(xm.Config("t")).data_dir != on_mac

    def test_environment_variable_wins(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("WHISPER_TOOL_MODELS_DIR", str(tmp_path / "env"))
        config = xm.Config("whisper-tool", data_dir=tmp_path / "config")
        assert xm.Manager(config).data_dir == str(tmp_path / "env")
        monkeypatch.delenv("WHISPER_TOOL_MODELS_DIR")
        assert xm.Manager(config).data_dir == str(tmp_path / "config")
        assert xm.Manager(config, data_dir=tmp_path / "explicit").data_dir == str(tmp_path / "explicit")

    def test_importing_and_constructing_write_nothing(self, tmp_path: Path) -> None:
        xm.Manager(xm.Config("t", data_dir=tmp_path / "nothing-yet"))
        assert not (tmp_path / "nothing-yet").exists()


# --- Registry documents: models.json and manifests ------------------------------------


class TestRegistry:
    def test_list_remote_sorted_with_aliases_resolved(self, manager: xm.Manager, model: dict[str, bytes],
                                                      registry_dir: Path) -> None:
        publish.publish(str(registry_dir), "alpha", "m", "b", {"f": b"1"})
        publish.publish(str(registry_dir), "alpha", "m", "a", {"f": b"2"})
        remote = manager.list_remote()
        assert [str(item.ref) for item in remote] == [
            "alpha/m a", "alpha/m b", "org/tiny latest", "org/tiny v1", "org/tiny v2"]
        latest, v1 = remote[2], remote[3]
        assert latest.alias_of == "v1" and latest.manifest_hash == v1.manifest_hash
        assert latest.metadata == {"framework": "onnx"}  # the target's, as the alias has none
        assert [str(r.ref) for r in manager.list_remote_group("alpha")] == ["alpha/m a", "alpha/m b"]
        assert [r.ref.version for r in manager.list_remote_versions("org", "tiny")] == ["latest", "v1", "v2"]
        assert manager.list_remote_group("nope") == []
        assert manager.list_remote_versions("org", "nope") == []

    def test_get_remote_errors(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        with pytest.raises(xm.ModelNotFoundError, match="org/huge"):
            manager.get_remote("org/huge v1")
        with pytest.raises(xm.VersionNotFoundError, match="available: latest, v1, v2"):
            manager.get_remote("org/tiny v3")

    def test_get_remote_detail(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        detail = manager.get_remote_detail("org/tiny latest")
        assert detail.alias_of == "v1"
        assert detail.total_size == sum(len(data) for data in model.values())
        assert detail.chunk_size == 1024 and detail.chunk_count == -(-detail.total_size // 1024)
        assert detail.files == tuple(xm.FileInfo(path, len(data)) for path, data in model.items())
        assert [type(item) for item in manager.list_remote(detail=True)] == [xm.RemoteModelDetail] * 3

    def test_manifests_are_cached_for_detail_listings(self, manager: xm.Manager, model: dict[str, bytes],
                                                      server: LoopbackServer) -> None:
        first = manager.list_remote(detail=True)
        assert manager.list_remote(detail=True) == first
        manifests = {f"data/{item.manifest_hash}" for item in first}
        assert len(manifests) == 2 and all(server.requests[path] == 1 for path in manifests)

    def test_alias_chain_and_own_metadata(self, manager: xm.Manager, model: dict[str, bytes],
                                          registry_dir: Path) -> None:
        index = json.loads((registry_dir / "models.json").read_text())
        index["org"]["tiny"]["stable"] = {"alias": "latest", "metadata": {"channel": "stable"}}
        (registry_dir / "models.json").write_text(json.dumps(index))
        stable = manager.get_remote("org/tiny stable")
        assert stable.alias_of == "v1" and stable.metadata == {"channel": "stable"}

    @pytest.mark.parametrize(
        ("bad", "asked", "message"),
        [
            ({"a": {"alias": "b"}, "b": {"alias": "a"}}, "org/bad b", "cycle: b -> a -> b|cycle: a -> b -> a"),
            ({"a": {"alias": "a"}}, "org/bad a", "cycle: a -> a"),
            ({"a": {"alias": "gone"}}, "org/bad a", "alias of missing version 'gone'"),
            ({"a": {"alias": "b"}, "b": {"alias": "gone"}}, "org/bad a", "through alias 'b'.*missing version 'gone'"),
            ({"a": {"alias": "b"}, "b": {"hash": "ABC"}}, "org/bad a", "alias of version 'b', which cannot be used"),
            ({"a": {"hash": "ABC"}}, "org/bad a", "hash 'ABC' is not 64 lowercase hex"),
            ({"a": {"hash": "0" * 63}}, "org/bad a", "64 lowercase hex"),
            ({"a": {"hash": 7}}, "org/bad a", "64 lowercase hex"),
            ({"a": {}}, "org/bad a", "exactly one"),
            ({"a": {"hash": "0" * 64, "alias": "b"}}, "org/bad a", "exactly one"),
            ({"a": {"alias": "../x"}}, "org/bad a", "alias '../x' must be 1-128"),
            ({"a": []}, "org/bad a", "not an object"),
            ({"a": {"hash": "0" * 64, "metadata": [1]}}, "org/bad a", "metadata is not an object"),
            ({"a": {"hash": "0" * 64, "metadata": {"size": "1E400"}}}, "org/bad a", "number 1E400, beyond the range"),
            ({"a": {"hash": "0" * 64, "metadata": {"n": "-1" + "0" * 400}}}, "org/bad a",
             "number -10000"),
            ({"a": {"hash": "0" * 64, "metadata": {"n": "\ud800"}}}, "org/bad a", "unpaired surrogate"),
            ({"a": {"hash": "0" * 64, "metadata": {"n": json.loads("[" * 33 + "]" * 33)}}},
             "org/bad a", "nests more than 32 levels"),
            ({"a": {"hash": "0" * 64}, "CON": {"hash": "0" * 64}, "x": {"alias": "CON"}}, "org/bad x",
             "alias 'CON' is a reserved name on Windows"),
            ({"NUL.json": {"hash": "0" * 64}, "../x": {"hash": "0" * 64}}, "org/bad v", "version not found"),
            ([], "org/bad a", "the model is not an object of versions"),
        ],
        ids=["cycle", "self-alias", "dangling", "dangling-chain", "alias-of-bad", "hash-case", "hash-short",
             "hash-type", "neither", "both", "alias-name", "entry-type", "metadata-type", "float-1e400",
             "int-400-digits", "surrogate", "deep-metadata", "alias-of-reserved", "reserved-and-bad-names",
             "model-type"],
    )
    def test_a_bad_entry_only_takes_itself_out(self, manager: xm.Manager, registry_dir: Path,
                                               caplog: pytest.LogCaptureFixture, bad: Any, asked: str,
                                               message: str) -> None:
        index = {"org": {"ok": {"v": {"hash": "1" * 64, "metadata": {"big": 1e308, "tiny": 5e-324}},
                                "w": {"alias": "v"}}, "bad": bad},
                 "oops": 5, "CON": {"m": {"v": {"hash": "2" * 64}}}}
        # json.dumps cannot write 1E400 or a 400-digit number: they go in as strings, then lose their quotes.
        text = re.sub(r'"(1E400|-10{400})"', r"\1", json.dumps(index))
        (registry_dir / "models.json").write_text(text)
        caplog.set_level("WARNING", logger="xprim_models")
        listed = [str(item.ref) for item in manager.list_remote()]
        assert listed == (["org/bad a"] if asked == "org/bad x" else []) + ["org/ok v", "org/ok w"]
        assert manager.get_remote("org/ok w").metadata == {"big": 1e308, "tiny": 5e-324}
        assert [str(item.ref) for item in manager.list_remote_versions("org", "ok")] == ["org/ok v", "org/ok w"]
        assert manager.list_remote_group("oops") == [] and manager.list_remote_versions("org", "none") == []
        if message == "version not found":
            with pytest.raises(xm.VersionNotFoundError):
                manager.get_remote(asked)
        else:
            with pytest.raises(xm.RegistryError, match=rf"{asked}.*invalid: .*({message}).*publisher must fix"):
                manager.get_remote(asked)
            assert any(re.search(message, record.getMessage()) for record in caplog.records)
        with pytest.raises(xm.RegistryError, match=r"oops/x v.*the group is not an object of models"):
            manager.get_remote("oops/x v")
        warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        assert any("'oops': the group is not an object of models" in line for line in warnings)
        assert any("group name 'CON' is a reserved name on Windows" in line for line in warnings)
        assert len(warnings) == len(set(warnings))  # each bad entry is logged once per Manager
        with pytest.raises(xm.ModelNotFoundError):
            manager.get_remote("org/none v")

    def test_bad_entries_in_the_cli(self, server: LoopbackServer, data_dir: Path, registry_dir: Path,
                                    model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1", "v2")
        index = json.loads((registry_dir / "models.json").read_text())
        index["org"]["tiny"]["v1"]["metadata"] = {"size": "1e400"}
        index["org"]["tiny"]["v3"] = {"alias": "v9"}
        (registry_dir / "models.json").write_text(json.dumps(index).replace('"1e400"', "1e400"))
        listed = cli("--verbose", "list", "--remote", registry=server, data_dir=data_dir)
        assert listed.returncode == 0
        assert "warning: models.json: leaving out 'org/tiny v1': its metadata holds the number 1e400" \
            in listed.stderr
        assert "warning: models.json: leaving out 'org/tiny latest'" in listed.stderr  # an alias of v1
        assert [line.split()[2] for line in listed.stdout.splitlines()[1:]] == ["v2"]

        def no_constants(name: str) -> None:
            raise AssertionError(f"{name} in --json output")

        as_json = cli("--json", "list", "--remote", registry=server, data_dir=data_dir)
        listed_json = json.loads(as_json.stdout, parse_constant=no_constants)
        assert [item["version"] for item in listed_json["models"]] == ["v2"]
        for args in (["pull", "org/tiny", "v1"], ["pull", "org/tiny", "v3"],
                     ["info", "--remote", "org/tiny", "latest"]):
            refused = cli(*args, registry=server, data_dir=data_dir)
            assert refused.returncode == xm.RegistryError.exit_code, refused.stderr
            assert "its entry is invalid" in refused.stderr and "publisher must fix" in refused.stderr
        updates = cli("--json", "update", registry=server, data_dir=data_dir)
        first, second = json.loads(updates.stdout, parse_constant=no_constants)["updates"]
        assert first["version"] == "v1" and first["error"]["type"] == "RegistryError"
        assert "beyond the range of a 64-bit float" in first["error"]["message"]
        assert second["version"] == "v2" and second["error"] is None

    @pytest.mark.parametrize("doc", [b"[]", b"null", b"{not json", b'{"a": NaN}', b'{"a": Infinity}',
                                     b'{"\xff": {}}', b"[" * 5000 + b"]" * 5000])
    def test_index_of_wrong_shape(self, manager: xm.Manager, registry_dir: Path, doc: bytes) -> None:
        (registry_dir / "models.json").write_bytes(doc)
        with pytest.raises(xm.RegistryError, match=r"models\.json"):
            manager.list_remote()

    def test_values_are_counted_before_parsing(self, manager: xm.Manager, registry_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(xm, "_MAX_INDEX_VALUES", 100)
        # Commas, colons and brackets inside strings are not values: this one passes.
        punctuated = {"org": {"m": {"v": {"hash": "1" * 64, "metadata": {"text": ',:[{"\\' * 500}}}}}
        (registry_dir / "models.json").write_text(json.dumps(punctuated))
        assert manager.get_remote("org/m v").metadata == punctuated["org"]["m"]["v"]["metadata"]
        (registry_dir / "models.json").write_text(json.dumps({"org": {"m": {"v": {"hash": "1" * 64,
                                                                            "metadata": {"n": [[]] * 60}}}}}))
        with pytest.raises(xm.RegistryError, match="more than 100 JSON values"):
            manager.list_remote()

    @pytest.mark.slow  # each parses a 32 MiB index (or a 64 MiB manifest) in a child
    @pytest.mark.parametrize("shape", ["nested-lists", "strings", "aliases", "manifest-of-lists"])
    def test_parsing_memory_is_bounded(self, server: LoopbackServer, data_dir: Path, registry_dir: Path,
                                       model: dict[str, bytes], shape: str) -> None:
        v1 = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v1"]["hash"]
        cap = 32 << 20
        if shape == "nested-lists":  # the issue's document: json alone would build 850 MB of lists
            text, expected = "[" + "[]," * (cap // 3 - 2) + "[]]", 1
        elif shape == "strings":  # just under the value cap, padded to the size cap
            strings = '"ab",' * (xm._MAX_INDEX_VALUES - 21) + '"ab"'
            head = f'{{"org": {{"tiny": {{"v1": {{"hash": "{v1}", "metadata": {{"s": [{strings}], "pad": "'
            text, expected = head + "x" * (cap - len(head) - 10) + '"}}}}}', 0
        elif shape == "manifest-of-lists":  # a manifest within its 64 MiB cap that json would make 1.7 GB of
            bomb = b"[" + b"[]," * ((64 << 20) // 3 - 2) + b"[]]"
            digest = hashlib.sha256(bomb).hexdigest()
            (registry_dir / "data" / digest).write_bytes(bomb)
            text, expected = json.dumps({"org": {"tiny": {"v1": {"hash": digest}}}}), 1
        else:  # as many version entries as the value cap allows, each an alias (the costliest kind)
            versions: dict[str, Any] = {"v1": {"hash": v1, "metadata": {"framework": "onnx"}}}
            versions.update({f"a{number}": {"alias": "v1"} for number in range(xm._MAX_INDEX_VALUES // 4 - 10)})
            text, expected = json.dumps({"org": {"tiny": versions}}, separators=(",", ":")), 0
        assert len(text) <= cap
        (registry_dir / "models.json").write_text(text)
        child = (
            "import io, sys, xprim_models\n"
            "sys.stdout = io.StringIO()\n"
            f"code = xprim_models.main(['--registry', {server.url!r}, '--data-dir', {str(data_dir)!r}, "
            "'--json', 'list', '--remote'])\n"
            f"{PEAK_RSS}"
            "sys.__stdout__.write(f'{code} {peak}')\n"
        )
        result = subprocess.run([*PYTHON, "-c", child], capture_output=True, text=True, cwd=HERE,
                                timeout=child_timeout(120))
        code, peak = map(int, result.stdout.split())
        assert code == expected, result.stderr
        assert peak <= 256 << 20, f"peak RSS {peak >> 20} MiB"

    def test_missing_index_names_the_url(self, manager: xm.Manager, server: LoopbackServer) -> None:
        with pytest.raises(xm.RegistryError, match=r"models\.json.*check the registry URL"):
            manager.list_remote()
        assert server.requests["models.json"] == 1  # a 404 is not retried

    @pytest.mark.parametrize("kind", ["directory", "file-url"])
    def test_local_registries(self, tmp_path: Path, registry_dir: Path, model: dict[str, bytes], kind: str) -> None:
        url = str(registry_dir) if kind == "directory" else registry_dir.as_uri()
        local = xm.Manager(xm.Config("t", url, tmp_path / "local-data"))
        installed = local.pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))

    def test_no_registry_configured(self, tmp_path: Path) -> None:
        with pytest.raises(xm.RegistryError, match="no registry URL"):
            xm.Manager(xm.Config("t", "", tmp_path)).list_remote()

    def test_malformed_url(self, tmp_path: Path) -> None:
        with pytest.raises(xm.RegistryError, match="invalid registry URL"):
            xm.Manager(xm.Config("t", "http://[::1/x", tmp_path)).list_remote()

    def test_truncated_document_is_retried(self, manager: xm.Manager, server: LoopbackServer,
                                           model: dict[str, bytes]) -> None:
        server.fail("models.json", Fault(cut_after=20))
        assert len(manager.list_remote()) == 3
        assert server.requests["models.json"] == 2

    def test_hostile_retry_after_header(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
                                        model: dict[str, bytes]) -> None:
        server.fail("models.json", Fault(status=503, headers={"Retry-After": "\u00b2"}))
        assert len(make_manager().list_remote()) == 3

    def test_long_alias_chain(self, manager: xm.Manager, registry_dir: Path, model: dict[str, bytes]) -> None:
        index = json.loads((registry_dir / "models.json").read_text())
        versions = index["org"]["tiny"]
        versions["a0"] = {"alias": "v2"}
        for number in range(1, 400):
            versions[f"a{number}"] = {"alias": f"a{number - 1}"}
        (registry_dir / "models.json").write_text(json.dumps(index))
        assert {item.alias_of for item in manager.list_remote_versions("org", "tiny") if item.ref.version[0] == "a"} \
            == {"v2"}

    @pytest.mark.slow  # 30,000 versions: 2 s of CPU
    def test_messages_and_logs_from_the_index_are_bounded(self, manager: xm.Manager, registry_dir: Path,
                                                          model: dict[str, bytes]) -> None:
        # Within the caps: 10,000 aliases in one cycle, 10,000 more each an alias of the next
        # (listed last first) down to a missing version, and 10,000 good versions.
        count = 10_000
        index = json.loads((registry_dir / "models.json").read_text())
        index["org"]["ring"] = {f"r{n}": {"alias": f"r{(n + 1) % count}"} for n in range(count)}
        index["org"]["chain"] = {f"c{n}": {"alias": f"c{n + 1}"} for n in reversed(range(count))}
        index["org"]["many"] = {f"m{n}": {"hash": "0" * 64} for n in range(count)}
        (registry_dir / "models.json").write_text(json.dumps(index))
        lines: list[str] = []

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        handler = Handler()
        logging.getLogger("xprim_models").addHandler(handler)
        try:
            assert len(manager.list_remote()) == 3 + count
        finally:
            logging.getLogger("xprim_models").removeHandler(handler)
        assert sum(map(len, lines)) < 16_000 and max(map(len, lines)) < 300, lines[:3]
        assert lines[-1] == ("models.json: leaving out 19980 more invalid entries; asking for one by name says why")
        with pytest.raises(xm.RegistryError) as cycle:
            manager.get_remote("org/ring r5000")
        assert "cycle: r0 -> r1 -> r2 -> r3 -> r4 -> ... (10000 aliases, back to 'r0')" in str(cycle.value)
        with pytest.raises(xm.RegistryError) as chain:
            manager.get_remote("org/chain c0")
        assert "through alias 'c9999', and it is an alias of missing version 'c10000'" in str(chain.value)
        with pytest.raises(xm.VersionNotFoundError) as missing:
            manager.get_remote("org/many x")
        assert "; available: m0, m1, m10, m100, m1000 and 9995 more" in str(missing.value)
        assert max(len(str(error.value)) for error in (cycle, chain, missing)) < 300

    def test_unsupported_scheme(self, tmp_path: Path) -> None:
        with pytest.raises(xm.RegistryError, match="unsupported scheme"):
            xm.Manager(xm.Config("t", "ftp://example.com/r", tmp_path)).list_remote()

    def test_retries_5xx_then_succeeds(self, manager: xm.Manager, server: LoopbackServer,
                                       model: dict[str, bytes]) -> None:
        server.fail("models.json", Fault(status=503), Fault(status=500))
        assert len(manager.list_remote()) == 3
        assert server.requests["models.json"] == 3

    def test_honours_retry_after_on_429(self, manager: xm.Manager, server: LoopbackServer,
                                        model: dict[str, bytes]) -> None:
        server.fail("models.json", Fault(status=429, headers={"Retry-After": "1"}))
        started = time.monotonic()
        manager.list_remote()
        assert server.requests["models.json"] == 2
        assert time.monotonic() - started >= 0.9  # waited as told, not the 0.01 s backoff

    def test_gives_up_after_retries(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer) -> None:
        server.always["models.json"] = Fault(status=502)
        with pytest.raises(xm.NetworkError, match=r"HTTP 502.*after 3 attempts") as caught:
            make_manager(retries=2).list_remote()
        assert server.requests["models.json"] == 3
        assert caught.value.__cause__ is not None

    @pytest.mark.parametrize("status", [400, 403])
    def test_other_4xx_is_not_retried(self, manager: xm.Manager, server: LoopbackServer, status: int) -> None:
        server.always["models.json"] = Fault(status=status)
        with pytest.raises(xm.NetworkError, match=f"HTTP {status}"):
            manager.list_remote()
        assert server.requests["models.json"] == 1

    def test_connection_refused_is_network_error(self, tmp_path: Path, refusing_port: int) -> None:
        port = refusing_port
        closed = xm.Manager(xm.Config("t", f"http://127.0.0.1:{port}", tmp_path), retries=1, retry_backoff=0.01)
        with pytest.raises(xm.NetworkError, match=f"127.0.0.1:{port}"):
            closed.list_remote()

    def test_stalled_server_times_out(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
                                      model: dict[str, bytes]) -> None:
        server.always["models.json"] = Fault(stall=True)
        with pytest.raises(xm.NetworkError, match="timed out"):
            make_manager(timeout=0.3, retries=1).list_remote()
        assert server.requests["models.json"] == 2

    def test_oversized_index_is_refused_without_reading_it(
        self, manager: xm.Manager, server: LoopbackServer, registry_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(xm, "_MAX_INDEX_BYTES", 1000)
        (registry_dir / "models.json").write_text(json.dumps({"g": {f"m{i}": {} for i in range(500)}}))
        with pytest.raises(xm.RegistryError, match="1000-byte limit"):
            manager.list_remote()
        assert server.requests["models.json"] == 1

    @pytest.mark.parametrize("through", ["our client", "an opener"])
    @pytest.mark.parametrize("status", [401, 403])
    def test_refused_credentials_say_how_to_send_them(self, make_manager: Callable[..., xm.Manager],
                                                      server: LoopbackServer, data_dir: Path, status: int,
                                                      through: str) -> None:
        import urllib.request

        server.always["models.json"] = Fault(status=status)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if through == "an opener" else None
        with pytest.raises(xm.NetworkError, match=rf"HTTP {status}.*--header 'Authorization: \.\.\.'.*headers="):
            make_manager(opener=opener).list_remote()
        assert server.requests["models.json"] == 1  # not retried
        result = cli("list", "--remote", registry=server, data_dir=data_dir)
        assert result.returncode == 5 and "--header 'Authorization: ...'" in result.stderr

    @pytest.mark.parametrize("location", ["http://[::1", "http://127.0.0.1:99999/x"])
    def test_a_redirect_to_a_malformed_url_is_a_network_error(self, manager: xm.Manager, server: LoopbackServer,
                                                              data_dir: Path, location: str) -> None:
        server.always["models.json"] = Fault(status=302, headers={"Location": location})
        with pytest.raises(xm.NetworkError, match=f"redirect to a malformed URL {re.escape(repr(location))}"):
            manager.list_remote()
        assert server.requests["models.json"] == 1  # not retried
        result = cli("list", "--remote", registry=server, data_dir=data_dir)
        assert result.returncode == 5 and location in result.stderr

    def test_redirects_to_another_origin_keep_their_connections(
        self, make_manager: Callable[..., xm.Manager], server: LoopbackServer, registry_dir: Path
    ) -> None:
        # data/ answered by a 302 to a second host, as object stores and CDNs do: each worker keeps
        # one connection to each origin, not a new pair for every chunk.
        content = blob(60 * 512, "many")
        publish.publish(str(registry_dir), "org", "many", "v1", {"f": content}, chunk_size=512)
        cdn = LoopbackServer(registry_dir)
        try:
            for path in (registry_dir / "data").iterdir():
                moved = {"Location": f"{cdn.url}/data/{path.name}"}
                server.always[f"data/{path.name}"] = Fault(status=302, headers=moved)
            installed = make_manager().pull("org/many v1", concurrency=4)
            assert (Path(installed.path) / "f").read_bytes() == content
            assert server.chunk_requests() == cdn.chunk_requests() == 61  # the manifest and 60 chunks
            assert len(server.connections) <= 4 + 2  # a connection per worker, plus index and manifest
            assert len(cdn.connections) <= 4 + 1
        finally:
            cdn.close()


GOOD_CHUNK = blob(10, "c")


def hostile(files: list[dict[str, Any]] | Any = None, **overrides: Any) -> dict[str, Any]:
    files = files if files is not None else [{"path": "a", "size": 10}]
    manifest: dict[str, Any] = {"total_size": 10, "chunk_size": 16,
                                "chunks": [hashlib.sha256(GOOD_CHUNK).hexdigest()], "files": files}
    manifest.update(overrides)
    return manifest


HOSTILE_MANIFESTS = {
    "absolute": hostile([{"path": "/etc/passwd", "size": 10}]),
    "parent": hostile([{"path": "../escape", "size": 10}]),
    "parent-inside": hostile([{"path": "a/../../escape", "size": 10}]),
    "dot": hostile([{"path": "./a", "size": 10}]),
    "empty-segment": hostile([{"path": "a//b", "size": 10}]),
    "trailing-slash": hostile([{"path": "a/", "size": 10}]),
    "backslash": hostile([{"path": "a\\..\\b", "size": 10}]),
    "nul": hostile([{"path": "a\x00b", "size": 10}]),
    "drive": hostile([{"path": "C:/Windows/x", "size": 10}]),
    "colon": hostile([{"path": "file:stream", "size": 10}]),
    "reserved": hostile([{"path": "CON", "size": 10}]),
    "reserved-ext": hostile([{"path": "dir/nul.json", "size": 10}]),
    "reserved-com": hostile([{"path": "com1.txt", "size": 10}]),
    "trailing-dot": hostile([{"path": "a.", "size": 10}]),
    "trailing-space": hostile([{"path": "dir /a", "size": 10}]),
    "case-collision": hostile([{"path": "Model.bin", "size": 5}, {"path": "model.BIN", "size": 5}]),
    # macOS stores names decomposed (NFD): "café" spelled both ways is one file there.
    "nfd-collision": hostile([{"path": "caf\u00e9.txt", "size": 5}, {"path": "cafe\u0301.txt", "size": 5}]),
    "nfd-case-collision": hostile([{"path": "Caf\u00e9/a", "size": 5}, {"path": "cafe\u0301/A", "size": 5}]),
    "nfd-file-as-dir": hostile([{"path": "\u00c5", "size": 5}, {"path": "a\u030a/b", "size": 5}]),
    "file-as-dir": hostile([{"path": "a", "size": 5}, {"path": "a/b", "size": 5}]),
    "dir-as-file": hostile([{"path": "a/b", "size": 5}, {"path": "A", "size": 5}]),
    "metadata-dir": hostile([{"path": ".test-app/manifest.json", "size": 10}]),
    "metadata-dir-case": hostile([{"path": ".TEST-APP/x", "size": 10}]),
    "metadata-name": hostile([{"path": ".test-app", "size": 10}]),
    "not-string": hostile([{"path": 7, "size": 10}]),
    "empty-path": hostile([{"path": "", "size": 10}]),
    "negative-size": hostile([{"path": "a", "size": -1}, {"path": "b", "size": 11}]),
    "fractional-size": hostile([{"path": "a", "size": 10.0}]),
    "bool-size": hostile([{"path": "a", "size": True}], total_size=1),
    "sizes-dont-add-up": hostile([{"path": "a", "size": 9}]),
    "too-many-chunks": hostile(chunks=[hashlib.sha256(GOOD_CHUNK).hexdigest()] * 2),
    "too-few-chunks": hostile(chunks=[]),
    "zero-chunk-size": hostile(chunk_size=0),
    "uppercase-hash": hostile(chunks=[hashlib.sha256(GOOD_CHUNK).hexdigest().upper()]),
    "path-as-hash": hostile(chunks=["../../../../etc/passwd"]),
    "absurd-total": hostile(total_size=1 << 60),
    "files-not-list": hostile(files={"a": 10}),
    "file-not-object": hostile(files=["a"]),
    "lone-surrogate": hostile([{"path": "\ud800.bin", "size": 10}]),
    "not-object": [1, 2, 3],
    "missing-keys": {"files": []},
}


class TestHostileManifest:
    @pytest.mark.parametrize("name", list(HOSTILE_MANIFESTS))
    def test_rejected_before_anything_is_written(self, manager: xm.Manager, registry_dir: Path,
                                                 server: LoopbackServer, data_dir: Path, name: str) -> None:
        write_manifest(registry_dir, "org", "evil", "v1", HOSTILE_MANIFESTS[name])
        (registry_dir / "data" / hashlib.sha256(GOOD_CHUNK).hexdigest()).write_bytes(GOOD_CHUNK)
        with pytest.raises(xm.RegistryError, match="invalid"):
            manager.pull("org/evil v1")
        assert server.chunk_requests() == 1  # the manifest, and not one chunk
        assert not (data_dir / "org").exists() or os.listdir(data_dir / "org" / "evil") == []
        assert not (data_dir / "registry.json").exists()
        assert not (registry_dir.parent / "escape").exists()

    def test_manifest_that_does_not_hash_to_its_name(self, manager: xm.Manager, registry_dir: Path,
                                                     server: LoopbackServer, model: dict[str, bytes]) -> None:
        digest = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v1"]["hash"]
        server.always[f"data/{digest}"] = Fault(corrupt=True)
        with pytest.raises(xm.HashMismatchError, match=f"manifest {digest}"):
            manager.pull("org/tiny v1")

    def test_valid_unusual_paths_are_accepted(self, manager: xm.Manager, registry_dir: Path) -> None:
        files = {"deep/er/file name.bin": b"1", "unicodé/ß.txt": b"2", ".hidden": b"3", "a.b.c": b"4"}
        publish.publish(str(registry_dir), "org", "odd", "v1", files)
        assert tree(Path(manager.pull("org/odd v1").path)) | {".hidden": b"3"} == dict(sorted(files.items()))


# --- Registry client: transport, deadlines, retries, framing, proxies, headers --------


class TestConnections:
    def test_a_status_other_than_200_is_not_taken_for_the_document(
        self, make_manager: Callable[..., xm.Manager], server: LoopbackServer, model: dict[str, bytes]
    ) -> None:
        server.always["models.json"] = Fault(status=300)
        with pytest.raises(xm.NetworkError, match=r"models\.json: HTTP 300"):
            make_manager(retries=0).list_remote()

    def test_status_with_non_ascii_digits_is_a_network_error(self, make_manager: Callable[..., xm.Manager],
                                                             server: LoopbackServer, model: dict[str, bytes]) -> None:
        server.always["models.json"] = Fault(raw=b"HTTP/1.1 \xb200 OK\r\nContent-Length: 2\r\n\r\n{}")
        with pytest.raises(xm.NetworkError, match=r"models\.json"):
            make_manager(retries=0).list_remote()

    @pytest.mark.parametrize("framing", ["chunked", "unsized", "interim", "long-head", "bare-lf"])
    def test_every_response_framing_is_read(self, manager: xm.Manager, model: dict[str, bytes],
                                            server: LoopbackServer, registry_dir: Path, framing: str) -> None:
        # Every framing is read by the one HTTP client: nothing is asked for twice.
        for path in chunk_paths(registry_dir):
            server.always[path] = Fault(framing=framing)
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        assert server.chunk_requests() == 8  # the manifest and 7 chunks

    def test_connections_are_reused(self, manager: xm.Manager, registry_dir: Path, server: LoopbackServer) -> None:
        publish.publish(str(registry_dir), "org", "many", "v1", {"f": blob(60 * 512, "many")}, chunk_size=512)
        manager.pull("org/many v1", concurrency=4)
        assert server.chunk_requests() == 61
        assert len(server.connections) <= 4 + 2  # a connection per worker, plus index and manifest

    def test_listing_fetches_manifests_on_a_few_connections(self, manager: xm.Manager, registry_dir: Path,
                                                             server: LoopbackServer) -> None:
        for n in range(40):
            publish.publish(str(registry_dir), "org", "many", f"v{n}", {"f": f"{n}".encode()})
        assert len(manager.list_remote(detail=True)) == 40
        assert server.chunk_requests() == 40  # a manifest each
        assert len(server.connections) <= 8 + 1  # a connection per pool thread, plus the index
        server.connections.clear()
        detailed = typing.cast("list[xm.RemoteModelDetail]", manager.list_remote(detail=True))
        assert [item.total_size for item in detailed][:3] == [1, 1, 2]
        assert server.chunk_requests() == 40 and len(server.connections) == 1  # manifests come from the cache

    def test_redirects_are_followed(self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer,
                                    registry_dir: Path) -> None:
        mirror = registry_dir / "mirror" / "data"
        mirror.mkdir(parents=True)
        for path in chunk_paths(registry_dir):
            shutil.copy(registry_dir / path, mirror)
            server.always[path] = Fault(status=302, headers={"Location": f"/mirror/{path}"})
        installed = manager.pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        assert all(server.requests[f"mirror/{path}"] == 1 for path in chunk_paths(registry_dir))

    def test_dropped_keep_alive_connections_are_reopened_without_retrying(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], server: LoopbackServer
    ) -> None:
        server.keep_alive = False
        installed = make_manager(retries=0).pull("org/tiny v1", concurrency=2)
        assert tree(Path(installed.path)) == dict(sorted(model.items()))


def ok_head(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra)


class TestDeadlines:
    """No server can hold a request past about ``timeout`` per attempt (README, Retries)."""

    def test_a_trickled_head_times_out(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer) -> None:
        head = ok_head(b"{}", b"X-Slow: " + b"x" * 60_000 + b"\r\n")
        server.always["models.json"] = Fault(script=lambda conn, body, n: server.trickle(conn, head))
        with pytest.raises(xm.NetworkError, match=r"timed out: no complete response within 0\.5s.*after 2 attempts"):
            make_manager(timeout=0.5, retries=1).list_remote()
        assert server.requests["models.json"] == 2

    def test_a_trickled_index_body_times_out(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
                                             model: dict[str, bytes]) -> None:
        def script(conn: socket.socket, body: bytes, n: int) -> bool:
            conn.sendall(ok_head(body))
            return server.trickle(conn, body)

        server.always["models.json"] = Fault(script=script)
        with pytest.raises(xm.NetworkError, match=r"less than 64 KiB of the body arrived in 0\.5s"):
            make_manager(timeout=0.5, retries=0).list_remote()

    def test_a_trickled_chunk_times_out_and_is_retried(self, make_manager: Callable[..., xm.Manager],
                                                      server: LoopbackServer, registry_dir: Path,
                                                      model: dict[str, bytes]) -> None:
        path = chunk_paths(registry_dir)[1]

        def script(conn: socket.socket, body: bytes, n: int) -> bool:
            conn.sendall(ok_head(body))
            if n == 1:
                return server.trickle(conn, body)
            conn.sendall(body)
            return True

        server.always[path] = Fault(script=script)
        installed = make_manager(timeout=0.5).pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        assert server.requests[path] == 2

    def test_a_slow_but_steady_body_is_not_cut(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
                                             registry_dir: Path) -> None:
        # The rule is progress, not speed: a chunk that takes longer than the timeout to
        # arrive passes, since no 64 KiB of it takes longer than one.
        content = blob(256 << 10, "steady")
        publish.publish(str(registry_dir), "org", "steady", "v1", {"f": content}, chunk_size=256 << 10)
        path = chunk_paths(registry_dir, model="steady")[0]

        def script(conn: socket.socket, body: bytes, n: int) -> bool:
            conn.sendall(ok_head(body))
            for offset in range(0, len(body), 16 << 10):
                if server.stop.wait(0.04):  # 0.16 s a 64 KiB, 0.64 s in all
                    return False
                conn.sendall(body[offset : offset + (16 << 10)])
            return True

        server.always[path] = Fault(script=script)
        installed = make_manager(timeout=0.5, retries=0).pull("org/steady v1")
        assert (Path(installed.path) / "f").read_bytes() == content

    def test_pauses_of_a_rate_limit_do_not_count(self, make_manager: Callable[..., xm.Manager],
                                                 server: LoopbackServer, registry_dir: Path) -> None:
        # Only waiting on the server counts against the timeout: a chunk whose 64 KiB
        # --limit-rate spreads over about twice the timeout (0.9 s) is not cut.
        content = blob(64 << 10, "limited")
        publish.publish(str(registry_dir), "org", "limited", "v1", {"f": content}, chunk_size=64 << 10)
        installed = make_manager(timeout=0.5, retries=0).pull("org/limited v1", limit_rate=64 << 10)
        assert (Path(installed.path) / "f").read_bytes() == content

    @pytest.mark.parametrize("pace", [0.0, 0.05])
    def test_endless_interim_responses_fail(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
                                            pace: float) -> None:
        def script(conn: socket.socket, body: bytes, n: int) -> bool:
            while not server.stop.wait(pace):
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            return False

        server.always["models.json"] = Fault(script=script)
        expected = "interim" if not pace else "timed out"
        with pytest.raises(xm.NetworkError, match=expected):
            make_manager(timeout=0.5, retries=0).list_remote()

    def test_an_unsolicited_extra_response_is_never_read_as_the_next(
        self, make_manager: Callable[..., xm.Manager], server: LoopbackServer, registry_dir: Path
    ) -> None:
        # Each chunk comes with a second, unasked-for answer of the same size. The chunks are
        # bigger than a head's read, so the extra answer waits in the socket, not in our buffer:
        # read as the next chunk's answer, it would fail its hash (and with retries=0, the pull).
        content = blob(4 * (128 << 10), "wide")
        publish.publish(str(registry_dir), "org", "wide", "v1", {"f": content}, chunk_size=128 << 10)

        def script(conn: socket.socket, body: bytes, n: int) -> bool:
            fake = bytes(len(body))
            conn.sendall(ok_head(body) + body + ok_head(fake) + fake)
            return True

        for path in chunk_paths(registry_dir, model="wide"):
            server.always[path] = Fault(script=script)
        installed = make_manager(retries=0).pull("org/wide v1", concurrency=1)
        assert (Path(installed.path) / "f").read_bytes() == content
        assert len(server.connections) >= 4  # each spoiled connection was dropped

    def test_a_late_stray_response_costs_one_retry(self, make_manager: Callable[..., xm.Manager],
                                                   server: LoopbackServer, registry_dir: Path,
                                                   model: dict[str, bytes]) -> None:
        # A stray answer that comes after the next request went out cannot be told
        # from the real one; it fails the hash, and the retry uses a new connection.
        paths = chunk_paths(registry_dir)

        def first(conn: socket.socket, body: bytes, n: int) -> bool:
            conn.sendall(ok_head(body) + body)
            if n == 1:
                select.select([conn], [], [], 10)  # the client's next request is on its way
                fake = bytes(1024)
                conn.sendall(ok_head(fake) + fake)
            return True

        def second(conn: socket.socket, body: bytes, n: int) -> bool:
            if n == 1:
                return True  # the stray answer above stands in for this one
            conn.sendall(ok_head(body) + body)
            return True

        server.always[paths[0]], server.always[paths[1]] = Fault(script=first), Fault(script=second)
        installed = make_manager(retries=1).pull("org/tiny v1", concurrency=1)
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        assert server.requests[paths[1]] == 2


class TestRetryPolicy:
    """``retries=N``: at most N+1 attempts per request, whatever fails, with backoff (README, Retries)."""

    # A bad hash, a 5xx, a cut body (the next attempt resumes from byte 10), a body too long.
    FAULTS = (Fault(corrupt=True), Fault(status=503), Fault(reset_after=10), Fault(extra=b"x" * 10))

    def test_every_kind_of_failure_counts_against_one_budget(self, make_manager: Callable[..., xm.Manager],
                                                             model: dict[str, bytes], server: LoopbackServer,
                                                             registry_dir: Path) -> None:
        bad = chunk_paths(registry_dir)[3]
        server.fail(bad, *self.FAULTS)
        with pytest.raises(xm.HashMismatchError, match=r"chunk 4/7 .*expected 1024, after 4 attempts"):
            make_manager(retries=3).pull("org/tiny v1")
        assert server.requests[bad] == 4

    def test_one_more_retry_gets_through(self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes],
                                         server: LoopbackServer, registry_dir: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
        bad = chunk_paths(registry_dir)[3]
        server.fail(bad, *self.FAULTS)
        with caplog.at_level("INFO", logger="xprim_models"):
            installed = make_manager(retries=4, retry_backoff=0.01).pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        assert server.requests[bad] == 5
        waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"retrying {server.url}/{bad}")]
        # A hash mismatch waits its backoff like any other failure: 0.01, 0.02, 0.04, 0.08 s.
        assert [re.search(r" in (\S+)s \(attempt (\d) of 5\)", w).groups() for w in waits] == [  # type: ignore[union-attr]
            ("0.0", "2"), ("0.0", "3"), ("0.0", "4"), ("0.1", "5")]
        assert "hash mismatch" in waits[0] and "HTTP 503" in waits[1] and "expected 1024" in waits[3]


    @pytest.mark.parametrize("through", ["our client", "an opener"])
    def test_a_chunk_answered_with_204_is_a_broken_transfer(self, make_manager: Callable[..., xm.Manager],
                                                          model: dict[str, bytes], server: LoopbackServer,
                                                          registry_dir: Path, through: str) -> None:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if through == "an opener" else None
        bad = chunk_paths(registry_dir)[3]
        server.always[bad] = Fault(status=204)
        with pytest.raises(xm.NetworkError, match=r"chunk 4/7 .*HTTP 204 No Content.*after 2 attempts"):
            make_manager(retries=1, opener=opener).pull("org/tiny v1")
        assert server.requests[bad] == 2
        del server.always[bad]
        server.fail(bad, Fault(status=204))
        installed = make_manager(retries=1, opener=opener).pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        assert server.requests[bad] == 4


def framed(head: bytes, body: bytes = b"{}") -> bytes:
    return head.replace(b"\n", b"\r\n") + b"\r\n" + body


MALFORMED = {
    "HTTP/2 status line": b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\n{}",
    "not HTTP": b"ICY 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "lower-case version": b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "folded header": framed(b"HTTP/1.1 200 OK\nX-A: a\n folded\nContent-Length: 2\n"),
    "folded first header": framed(b"HTTP/1.1 200 OK\n\tX-A: a\nContent-Length: 2\n"),
    "space before colon": framed(b"HTTP/1.1 200 OK\nContent-Length : 2\n"),
    "no colon": framed(b"HTTP/1.1 200 OK\nContent-Length 2\n"),
    "NUL in a name": framed(b"HTTP/1.1 200 OK\nX\x00A: a\nContent-Length: 2\n"),
    "non-ASCII name": framed(b"HTTP/1.1 200 OK\nX-\xc7: a\nContent-Length: 2\n"),
    "control character in a value": framed(b"HTTP/1.1 200 OK\nX-A: a\x01b\nContent-Length: 2\n"),
    "bare CR": b"HTTP/1.1 200 OK\rContent-Length: 2\r\n\r\n{}",
    "bare CR in a value": framed(b"HTTP/1.1 200 OK\nX-A: a\rb\nContent-Length: 2\n"),
    "conflicting Content-Length lines": framed(b"HTTP/1.1 200 OK\nContent-Length: 2\nContent-Length: 3\n"),
    "conflicting Content-Length list": framed(b"HTTP/1.1 200 OK\nContent-Length: 2, 3\n"),
    "negative Content-Length": framed(b"HTTP/1.1 200 OK\nContent-Length: -2\n"),
    "hex Content-Length": framed(b"HTTP/1.1 200 OK\nContent-Length: 0x2\n"),
    "huge Content-Length": framed(b"HTTP/1.1 200 OK\nContent-Length: 1234567890123456789012\n"),
    "Content-Length and chunked": framed(b"HTTP/1.1 200 OK\nContent-Length: 2\nTransfer-Encoding: chunked\n",
                                         b"2\r\n{}\r\n0\r\n\r\n"),
    "gzip then chunked": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n", b"2\r\n{}\r\n0\r\n\r\n"),
    "chunk size not hex": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"zz\r\n{}\r\n0\r\n\r\n"),
    "signed chunk size": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"+2\r\n{}\r\n0\r\n\r\n"),
    "chunk size overflow": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
                                  b"10000000000000002\r\n{}\r\n0\r\n\r\n"),
    "empty chunk size": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"\r\n{}\r\n0\r\n\r\n"),
    "chunk longer than its size": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"1\r\n{}\r\n0\r\n\r\n"),
    "chunked without the last chunk": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"2\r\n{}\r\n"),
    "folded trailer": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"2\r\n{}\r\n0\r\n folded\r\n\r\n"),
    "trailer without colon": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"2\r\n{}\r\n0\r\nX\r\n\r\n"),
    "head over 256 KiB": framed(b"HTTP/1.1 200 OK\n" + b"X-Pad: " + b"x" * (300 << 10) + b"\nContent-Length: 2\n"),
    "101 Switching Protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    "head cut short": b"HTTP/1.1 200 OK\r\nContent-Len",
    "17 interim responses": b"HTTP/1.1 100 Continue\r\n\r\n" * 17 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
}

LEGAL = {
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    "no reason phrase": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
    "empty reason phrase": b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n{}",
    "non-ASCII reason and value": framed(b"HTTP/1.1 200 D\xe9j\xe0 vu\nX-A: caf\xe9\nContent-Length: 2\n"),
    "repeated equal Content-Length": framed(b"HTTP/1.1 200 OK\nContent-Length: 2\ncontent-length: 2, 2\n"),
    "chunked with extensions": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
                                      b"1;a=b\r\n{\r\n1 ; c=\"d\"\r\n}\r\n0\r\n\r\n"),
    "chunked with trailers": framed(b"HTTP/1.1 200 OK\nTransfer-Encoding: Chunked\n",
                                    b"2\r\n{}\r\n0\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\n"),
    "chunked with bare LF": b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\n{}\n0\n\n",
    "close-delimited HTTP/1.0": b"HTTP/1.0 200 OK\r\n\r\n{}",
    "interim responses": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" * 3
    + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "a 200 KiB head": framed(b"HTTP/1.1 200 OK\n" + b"X-Pad: x\n" * 20_000 + b"Content-Length: 2\n"),
}


class TestFraming:
    """The one HTTP parser (``_Connection``), against malformed framing of every kind and legal oddities."""

    @pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
    def test_malformed_is_a_network_error(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
                                          model: dict[str, bytes], raw: bytes) -> None:
        server.always["models.json"] = Fault(raw=raw)
        with pytest.raises(xm.NetworkError, match=r"models\.json.*after 2 attempts"):
            make_manager(retries=1).list_remote()
        assert server.requests["models.json"] == 2

    @pytest.mark.parametrize("raw", LEGAL.values(), ids=LEGAL.keys())
    def test_legal_oddities_are_read(self, manager: xm.Manager, server: LoopbackServer, raw: bytes) -> None:
        server.always["models.json"] = Fault(raw=raw)
        assert manager.list_remote() == []

    def test_a_long_head_after_a_head_cut_short(self, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
                                                registry_dir: Path, model: dict[str, bytes]) -> None:
        # The first answer closes inside a head; the retry's head is over 128 KiB, so the
        # session's buffer grows while the first attempt's error (and its views of the
        # buffer) is still kept. A buffer resized in place raised a bare BufferError.
        def script(conn: socket.socket, body: bytes, n: int) -> bool:
            if n == 1:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: b\r\n")
                return False
            padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 4000) for i in range(40))
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + padding + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            return True

        server.always[chunk_paths(registry_dir)[0]] = Fault(script=script)
        installed = make_manager(retries=2).pull("org/tiny v1", concurrency=1)
        assert tree(Path(installed.path)) == dict(sorted(model.items()))

    def test_early_hints_after_a_redirect(self, manager: xm.Manager, server: LoopbackServer, registry_dir: Path,
                                          model: dict[str, bytes]) -> None:
        mirror = registry_dir / "mirror"
        shutil.copytree(registry_dir / "data", mirror / "data")
        shutil.copy(registry_dir / "models.json", mirror / "models.json")
        for path in ["models.json", *chunk_paths(registry_dir)]:
            server.always[path] = Fault(status=302, headers={"Location": f"/mirror/{path}"})
            server.always[f"mirror/{path}"] = Fault(framing="interim")
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        assert server.requests["mirror/models.json"] == 1


class TestProxies:
    def test_http_through_a_proxy_keeps_one_connection_per_worker(
        self, make_manager: Callable[..., xm.Manager], server: LoopbackServer, registry_dir: Path,
        proxy: LoopbackServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        publish.publish(str(registry_dir), "org", "many", "v1", {"f": blob(60 * 512, "many")}, chunk_size=512)
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:p%40ss@"))
        monkeypatch.setenv("NO_PROXY", "example.com")
        make_manager(headers={"X-Team": "ml"}).pull("org/many v1", concurrency=4)
        assert server.chunk_requests() == 61  # the manifest and 60 chunks
        assert len(proxy.connections) <= 4 + 2  # a connection per worker, plus index and manifest
        assert all(head.startswith(f"GET {server.url}/") for head in proxy.heads)  # absolute-form
        credentials = "\r\nProxy-Authorization: Basic dXNlcjpwQHNz\r\n"  # user:p@ss
        assert all(credentials in head + "\r\n" for head in proxy.heads)
        assert all("\r\nX-Team: ml\r\n" in head + "\r\n" for head in proxy.heads)
        assert "\r\nCache-Control: no-cache" in proxy.heads[0] and "Cache-Control" not in proxy.heads[-1]

    def test_https_through_a_proxy_tunnels_with_connect(self, tmp_path: Path, https_registry: tuple[str, Path],
                                                        proxy: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
        import ssl

        url, cert = https_registry
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        context = ssl.create_default_context(cafile=str(cert))
        manager = xm.Manager(xm.Config("t", url, tmp_path / "a"), ssl_context=context, headers={"X-Team": "ml"})
        installed = manager.pull("org/tiny v1", concurrency=2)
        assert tree(Path(installed.path)) == dict(sorted(MODEL_FILES.items()))
        target = url.removeprefix("https://")
        assert proxy.heads and all(head.startswith(f"CONNECT {target} HTTP/1.1") for head in proxy.heads)
        assert not any("X-Team" in head for head in proxy.heads)  # the caller's headers go inside the tunnel
        assert len(proxy.connections) <= 2 + 2
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        seen = len(proxy.heads)
        xm.Manager(xm.Config("t", url, tmp_path / "b"), ssl_context=context).pull("org/tiny v1")
        assert len(proxy.heads) == seen

    @pytest.mark.parametrize(("status", "credentials"), [(403, "user:wr0ng@"), (407, "user:wr0ng@"), (407, "")])
    def test_a_refused_connect_is_final_and_says_what_to_do(self, tmp_path: Path, proxy: LoopbackServer,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            status: int, credentials: str) -> None:
        # squid's answer: its HTML page in the same write as the head. 403 is what Debian's stock
        # "http_access deny CONNECT !SSL_ports" gives any port but 443.
        page = b"<html><body>ERROR: The requested URL could not be retrieved</body></html>\n" * 20
        reason = {403: b"Forbidden", 407: b"Proxy Authentication Required"}[status]
        proxy.always["models.example.com:8443"] = Fault(
            raw=b"HTTP/1.1 %d %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason, len(page), page))
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", f"http://{credentials}"))
        monkeypatch.setenv("NO_PROXY", "")
        manager = xm.Manager(xm.Config("t", "https://models.example.com:8443", tmp_path), retry_backoff=0.01)
        expected = {(403, True): r"refused to tunnel to models\.example\.com:8443 \(HTTP 403 Forbidden\).*"
                                 r"allow port 8443, or add models\.example\.com to NO_PROXY",
                    (407, True): r"refused the credentials in its URL \(HTTP 407\); check them",
                    (407, False): r"asks for credentials \(HTTP 407\); put them in the proxy URL"
                                  r" \(http://user:password@host:port\)"}[status, bool(credentials)]
        with pytest.raises(xm.NetworkError, match=rf"the proxy {proxy.url} {expected}") as caught:
            manager.list_remote()
        assert len(proxy.heads) == 1  # not retried
        assert "wr0ng" not in str(caught.value)

    def test_an_unsupported_proxy_is_a_clear_network_error(self, make_manager: Callable[..., xm.Manager],
                                                           server: LoopbackServer, model: dict[str, bytes],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", "socks5://user:secret@127.0.0.1:1080")
        with pytest.raises(xm.NetworkError, match=r"socks5://127\.0\.0\.1:1080 is not a plain http") as caught:
            make_manager().list_remote()
        assert "secret" not in str(caught.value)


SECRET = "Bearer s3cr3t-t0ken"


class TestHeaders:
    def test_headers_go_with_every_request_and_are_never_logged(
        self, make_manager: Callable[..., xm.Manager], server: LoopbackServer, registry_dir: Path,
        model: dict[str, bytes], caplog: pytest.LogCaptureFixture
    ) -> None:
        def busy_once(conn: socket.socket, body: bytes, n: int) -> bool:  # one retry, logged
            conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n" if n == 1 else ok_head(body) + body)
            return True

        server.always[chunk_paths(registry_dir)[2]] = Fault(script=busy_once)
        with caplog.at_level("DEBUG", logger="xprim_models"):
            manager = make_manager(headers={"Authorization": SECRET, "Cookie": "id=s3cr3t"})
            manager.pull("org/tiny v1")
        assert len(server.headers) == 1 + 1 + 7 + 1  # index, manifest, chunks, the retried chunk
        assert all(h.get("authorization") == SECRET and h.get("cookie") == "id=s3cr3t" for h in server.headers)
        assert len(server.connections) <= 4 + 2 + 1  # workers, index, manifest; the 503 closed one
        assert "s3cr3t" not in caplog.text and "retrying" in caplog.text

    def test_cli_header_option(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        result = cli("-v", "--header", f"Authorization: {SECRET}", "--header", "X-Team:ml", "pull", "org/tiny", "v1",
                     registry=server, data_dir=data_dir)
        assert result.returncode == 0, result.stderr
        assert all(h.get("authorization") == SECRET and h.get("x-team") == "ml" for h in server.headers)
        assert "debug: GET" in result.stderr and "s3cr3t" not in result.stderr + result.stdout
        seen = len(server.headers)
        after = cli("list", "--remote", "--header", "X-Team: after",  # also after the command word
                    registry=server, data_dir=data_dir)
        assert after.returncode == 0, after.stderr
        assert {h.get("x-team") for h in server.headers[seen:]} == {"after"}

    @pytest.mark.parametrize("option", ["Authorization", ": value", "Bad Name: x", "X-A: a\x01b", "Host: evil"])
    def test_cli_rejects_bad_headers_without_echoing_the_value(self, server: LoopbackServer, data_dir: Path,
                                                               option: str) -> None:
        result = cli("--header", option, "list", registry=server, data_dir=data_dir)
        err = result.stderr
        assert result.returncode == 2 and "error: " in err and "header" in err
        assert "a\x01b" not in err and "evil" not in err and not server.headers

    @pytest.mark.parametrize("headers", [{"X-A": "line\r\nInjected: 1"}, {"Range": "bytes=0-"}, {"X A": "b"},
                                         {"X-A": "caf\u00e9"}])
    def test_manager_rejects_bad_headers(self, tmp_path: Path, headers: dict[str, str]) -> None:
        with pytest.raises(ValueError, match="header") as caught:
            xm.Manager(xm.Config("t", "http://127.0.0.1:1", tmp_path), headers=headers)
        assert "Injected" not in str(caught.value) and "caf" not in str(caught.value)

    def test_accept_encoding_is_refused_naming_it(self, server: LoopbackServer, data_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        # The hashes cover the bytes as stored: a compressed answer could only fail them.
        with pytest.raises(ValueError, match="header accept-encoding cannot be given"):
            xm.Manager(xm.Config("t", server.url, data_dir), headers={"accept-encoding": "gzip"})
        code = xm.main(["--registry", server.url, "--data-dir", str(data_dir),
                        "--header", "Accept-Encoding: gzip", "list", "--remote"])
        assert code == 2 and "header Accept-Encoding cannot be given" in capsys.readouterr().err
        assert not server.headers

    @pytest.mark.parametrize("target", ["another host", "another port", "the same origin"])
    def test_credentials_stay_with_their_origin_across_redirects(
        self, server: LoopbackServer, registry_dir: Path, tmp_path: Path, model: dict[str, bytes], target: str
    ) -> None:
        mirror = LoopbackServer(registry_dir)
        try:
            port = mirror.url.rsplit(":", 1)[1]
            origin = {"another host": f"http://localhost:{port}", "another port": f"http://127.0.0.1:{port}",
                      "the same origin": server.url}[target]
            paths = chunk_paths(registry_dir)
            chunk = (registry_dir / paths[0]).read_bytes()

            def redirect(conn: socket.socket, body: bytes, n: int) -> bool:
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s/data/x\r\nContent-Length: 3\r\n\r\nabc"
                             % origin.encode())
                return True

            def serve(conn: socket.socket, body: bytes, n: int) -> bool:
                conn.sendall(ok_head(chunk) + chunk)
                return True

            server.always[paths[0]] = Fault(script=redirect)
            mirror.always["data/x"] = server.always["data/x"] = Fault(script=serve)
            manager = xm.Manager(xm.Config("t", server.url, tmp_path / "d"),
                                 headers={"Authorization": SECRET, "Cookie": "c=1", "X-Team": "ml"})
            assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
            seen = (server if target == "the same origin" else mirror).headers
            (followed,) = [h for h in seen if "authorization" not in h] or [seen[-1]]
            assert followed["x-team"] == "ml"
            if target == "the same origin":
                assert all(h.get("authorization") == SECRET and h.get("cookie") == "c=1" for h in seen)
            else:  # like curl and requests: credentials are not sent on to another origin
                assert "authorization" not in followed and "cookie" not in followed
                assert all(h.get("authorization") == SECRET for h in server.headers)
        finally:
            mirror.close()


# --- Pull engine: chunks, progress, seeding, rate limit, scale ------------------------


def chunk_paths(registry_dir: Path, version: str = "v1", model: str = "tiny") -> list[str]:
    return [f"data/{digest}" for digest in manifest_of(registry_dir, "org", model, version)["chunks"]]


def interrupted_pull(server: LoopbackServer, registry_dir: Path, data_dir: Path,
                     make_manager: Callable[..., xm.Manager]) -> Path:
    """Pull org/tiny v1 until its sixth chunk fails; the staging directory it leaves to resume from."""
    server.fail(chunk_paths(registry_dir)[5], Fault(status=500))
    with pytest.raises(xm.NetworkError):
        make_manager(retries=0).pull("org/tiny v1", concurrency=1)
    return data_dir / "org" / "tiny" / ".v1.staging"


class TestPull:
    def test_pull_installs_files_manifest_and_record(self, manager: xm.Manager, model: dict[str, bytes],
                                                     data_dir: Path, registry_dir: Path) -> None:
        before = time.time()
        installed = manager.pull("org/tiny v1")
        root = data_dir / "org" / "tiny" / "v1"
        assert installed.path == str(root)
        assert tree(root) == dict(sorted(model.items()))
        digest = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v1"]["hash"]
        assert (root / ".test-app" / "manifest.json").read_bytes() == (registry_dir / "data" / digest).read_bytes()
        record = json.loads((data_dir / "registry.json").read_text())["org"]["tiny"]["v1"]
        assert record["manifest_hash"] == digest == installed.manifest_hash
        assert record["total_size"] == sum(len(d) for d in model.values()) == installed.total_size
        assert record["file_count"] == 4 == installed.file_count
        assert record["installed_at"].endswith("Z")
        assert installed.installed_at.tzinfo is not None and installed.installed_at.timestamp() >= int(before)
        assert manager.get_installed("org/tiny v1") == installed
        assert manager.list_installed() == [installed]
        assert sorted(os.listdir(root.parent)) == ["v1"]  # no staging left behind

    def test_pull_alias_installs_under_alias_name(self, manager: xm.Manager, model: dict[str, bytes],
                                                  data_dir: Path) -> None:
        installed = manager.pull("org/tiny latest")
        assert installed.alias_of == "v1" and installed.path == str(data_dir / "org" / "tiny" / "latest")
        assert json.loads((data_dir / "registry.json").read_text())["org"]["tiny"]["latest"]["alias_of"] == "v1"
        assert manager.get_installed("org/tiny latest").alias_of == "v1"

    def test_already_installed(self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer) -> None:
        installed = manager.pull("org/tiny v1")
        fetched = server.chunk_requests()
        with pytest.raises(xm.AlreadyInstalledError) as caught:
            manager.pull("org/tiny v1")
        assert caught.value.installed == installed
        assert server.chunk_requests() == fetched

    def test_force_reinstalls_from_verified_bytes(self, manager: xm.Manager, model: dict[str, bytes],
                                                  server: LoopbackServer, registry_dir: Path) -> None:
        installed = Path(manager.pull("org/tiny v1").path)
        (installed / "config.json").write_bytes(b'{"layers": 9}\n')  # damaged on disk
        manager.pull("org/tiny v1", force=True)
        assert tree(installed) == dict(sorted(model.items()))
        damaged_chunk = chunk_paths(registry_dir)[4]  # the chunk holding config.json
        assert server.requests[damaged_chunk] == 2
        assert server.chunk_requests() == 1 + 7 + 1  # the manifest (then cached), 7 chunks, the damaged one

    def test_empty_model(self, manager: xm.Manager, registry_dir: Path) -> None:
        publish.publish(str(registry_dir), "org", "void", "v1", {"a": b"", "dir/b": b""})
        installed = manager.pull("org/void v1")
        assert installed.total_size == 0 and tree(Path(installed.path)) == {"a": b"", "dir/b": b""}
        publish.publish(str(registry_dir), "org", "none", "v1", {})
        assert manager.pull("org/none v1").file_count == 0

    def test_large_file_spanning_many_chunks_and_small_files_sharing_one(
        self, manager: xm.Manager, registry_dir: Path
    ) -> None:
        files = {"big.bin": blob(10_000, "big"), **{f"small/{i}.txt": blob(i, str(i)) for i in range(12)}}
        publish.publish(str(registry_dir), "org", "mixed", "v1", files, chunk_size=777)
        assert tree(Path(manager.pull("org/mixed v1", concurrency=3).path)) == dict(sorted(files.items()))

    def test_total_size_is_verified(self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
        original = xm._Staging.place
        grown = threading.Event()

        def place_then_grow(self: Any, number: int, data: memoryview, start: int) -> None:
            original(self, number, data, start)
            if not grown.is_set():  # something outside the pull writes into staging
                grown.set()
                with open(self.path(len(self.manifest.files) - 1), "ab") as stray:
                    stray.write(b"!")

        monkeypatch.setattr(xm._Staging, "place", place_then_grow)
        with pytest.raises(xm.StorageError, match="hold 6515 bytes, not the manifest's 6514"):
            manager.pull("org/tiny v1")
        assert manager.list_installed() == []

    def test_duplicate_chunk_is_fetched_once(self, manager: xm.Manager, registry_dir: Path,
                                             server: LoopbackServer) -> None:
        same = blob(2048, "same")
        publish.publish(str(registry_dir), "org", "twins", "v1", {"a": same, "b": same}, chunk_size=1024)
        chunks = manifest_of(registry_dir, "org", "twins", "v1")["chunks"]
        assert len(chunks) == 4 and len(set(chunks)) == 2
        installed = manager.pull("org/twins v1")
        assert tree(Path(installed.path)) == {"a": same, "b": same}
        assert all(server.requests[f"data/{digest}"] == 1 for digest in chunks)

    @pytest.mark.usefixtures("write_buffer")
    def test_corrupt_chunk_is_hash_mismatch_and_old_version_survives(
        self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer, registry_dir: Path,
        data_dir: Path
    ) -> None:
        manager.pull("org/tiny v1")
        before = tree(data_dir / "org" / "tiny" / "v1")
        record = (data_dir / "registry.json").read_bytes()
        publish.publish(str(registry_dir), "org", "tiny", "v1", {"other.bin": blob(7000, "other")}, chunk_size=1024)
        bad = chunk_paths(registry_dir)[2]
        server.always[bad] = Fault(corrupt=True)
        expected = (r"pull org/tiny v1: chunk 3/7 \([0-9a-f]{12}\): "
                    r"hash mismatch \(got (?!e3b0)[0-9a-f]{64}\), after 4 attempts")
        with pytest.raises(xm.HashMismatchError, match=expected):
            manager.pull("org/tiny v1")
        assert server.requests[bad] == 4  # the first attempt and 3 retries
        assert tree(data_dir / "org" / "tiny" / "v1") == before
        assert (data_dir / "registry.json").read_bytes() == record
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == [".v1.staging", "v1"]  # the new one, to resume

    @pytest.mark.usefixtures("write_buffer")
    def test_corrupt_once_is_retried(self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer,
                                     registry_dir: Path) -> None:
        bad = chunk_paths(registry_dir)[0]
        server.fail(bad, Fault(corrupt=True))
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        assert server.requests[bad] == 2

    @pytest.mark.usefixtures("write_buffer")
    def test_chunk_body_too_long_is_hash_mismatch(self, make_manager: Callable[..., xm.Manager],
                                                  model: dict[str, bytes], server: LoopbackServer,
                                                  registry_dir: Path) -> None:
        bad = chunk_paths(registry_dir)[1]
        server.always[bad] = Fault(extra=b"x" * 100_000)
        with pytest.raises(xm.HashMismatchError, match="expected 1024"):
            make_manager(retries=0).pull("org/tiny v1")

    @pytest.mark.usefixtures("write_buffer")
    def test_chunk_body_too_long_without_content_length(self, make_manager: Callable[..., xm.Manager],
                                                        model: dict[str, bytes], server: LoopbackServer,
                                                        registry_dir: Path) -> None:
        # The server lies: Content-Length says 1024 but more follows. Only the
        # announced bytes are read, and they are the right ones.
        bad = chunk_paths(registry_dir)[1]
        server.always[bad] = Fault(extra=b"x" * 4096, extra_hidden=True)
        assert tree(Path(make_manager(retries=0).pull("org/tiny v1").path)) == dict(sorted(model.items()))

    @pytest.mark.usefixtures("write_buffer")
    def test_cut_transfer_resumes_with_range(self, manager: xm.Manager, model: dict[str, bytes],
                                             server: LoopbackServer, registry_dir: Path) -> None:
        cut = chunk_paths(registry_dir)[0]
        server.fail(cut, Fault(cut_after=300))
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        assert server.range_requests == [(cut, 300)]

    def test_a_resumed_chunk_keeps_the_bytes_still_in_its_write_buffer(
            self, manager: xm.Manager, registry_dir: Path, server: LoopbackServer) -> None:
        # A 400 KiB chunk is cut after 300 KiB: bytes received after the first read wait in the
        # 256 KiB write buffer when the cut comes. The answer to the Range request arrives in one
        # write, so its first read brings body bytes with the head; they must go after the waiting
        # ones. Otherwise the chunk fails its hash and is fetched a third time, whole.
        size = 400 << 10
        body = blob(size, "resumed")
        publish.publish(str(registry_dir), "org", "big", "v1", {"model.bin": body}, chunk_size=size)
        (digest,) = manifest_of(registry_dir, "org", "big", "v1")["chunks"]
        rest = body[300 << 10 :]
        answer = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
                  % (size - len(rest), size - 1, size, len(rest))) + rest
        server.fail(f"data/{digest}", Fault(cut_after=300 << 10), Fault(raw=answer))
        assert Path(manager.pull("org/big v1").path, "model.bin").read_bytes() == body
        assert server.requests[f"data/{digest}"] == 2

    @pytest.mark.usefixtures("write_buffer")
    def test_cut_transfer_restarts_when_range_is_ignored(self, manager: xm.Manager, model: dict[str, bytes],
                                                         server: LoopbackServer, registry_dir: Path) -> None:
        server.range_enabled = False
        cut = chunk_paths(registry_dir)[0]
        server.fail(cut, Fault(cut_after=300))
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        assert server.requests[cut] == 2

    def test_missing_chunk_is_registry_error_not_retried(self, manager: xm.Manager, model: dict[str, bytes],
                                                         server: LoopbackServer, registry_dir: Path) -> None:
        gone = chunk_paths(registry_dir)[4]
        (registry_dir / gone).unlink()
        with pytest.raises(xm.RegistryError, match=r"chunk 5/7.*missing from the registry"):
            manager.pull("org/tiny v1")
        assert server.requests[gone] == 1

    def test_interrupted_pull_resumes_from_the_staging_files(self, make_manager: Callable[..., xm.Manager],
                                                         model: dict[str, bytes], server: LoopbackServer,
                                                         registry_dir: Path, data_dir: Path) -> None:
        chunks = chunk_paths(registry_dir)
        server.fail(chunks[5], Fault(status=500))
        with pytest.raises(xm.NetworkError):
            make_manager(retries=0).pull("org/tiny v1", concurrency=1)
        assert not (data_dir / "org" / "tiny" / "v1").exists()
        # What was verified stays: written into the staging files, which the next pull resumes.
        assert (data_dir / "org" / "tiny" / ".v1.staging" / "model.safetensors").read_bytes()[:5 * 1024] == \
            model["model.safetensors"][:5 * 1024]
        first = dict(server.requests)
        make_manager(retries=0).pull("org/tiny v1", concurrency=1)
        for path in chunks[:5]:
            assert server.requests[path] == first[path] == 1
        for path in chunks[5:]:
            assert server.requests[path] == first.get(path, 0) + 1

    def test_resume_does_not_rewrite_what_is_already_in_place(
        self, make_manager: Callable[..., xm.Manager], registry_dir: Path, server: LoopbackServer,
        data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        files = {"a.bin": blob(4096, "a"), "b.bin": blob(4096, "b")}
        publish.publish(str(registry_dir), "org", "two", "v1", files, chunk_size=1024)
        last = chunk_paths(registry_dir, model="two")[-1]
        server.always[last] = Fault(status=404)
        with pytest.raises(xm.RegistryError):
            make_manager(retries=0).pull("org/two v1", concurrency=1)  # a.bin is complete, b.bin is not
        staged = data_dir / "org" / "two" / ".v1.staging" / "a.bin"
        os.utime(staged, ns=(1_000_000_000, 1_000_000_000))
        del server.always[last]
        installed = Path(make_manager().pull("org/two v1").path)
        assert tree(installed) == files
        assert (installed / "a.bin").stat().st_mtime_ns == 1_000_000_000  # verified, not written again

    def test_resume_repairs_whatever_the_staging_directory_became(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], server: LoopbackServer,
        registry_dir: Path, data_dir: Path, tmp_path: Path
    ) -> None:
        staging = interrupted_pull(server, registry_dir, data_dir, make_manager)
        (staging / "empty.txt").write_bytes(b"should be empty")
        shutil.rmtree(staging / "sub")
        (staging / "sub").write_bytes(b"a file where a directory belongs")
        outside = tmp_path / "outside"
        outside.mkdir()
        (staging / "config.json").unlink()
        symlink(outside / "config.json", staging / "config.json", or_skip=False)  # else one damage fewer
        installed = make_manager().pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        assert list(outside.iterdir()) == []

    @pytest.mark.parametrize("chunk_kib", [300, 1024])
    def test_big_and_repeated_chunks_stream_into_their_places(
        self, manager: xm.Manager, registry_dir: Path, server: LoopbackServer, data_dir: Path, chunk_kib: int
    ) -> None:
        # Chunks bigger than the 256 KiB write buffer, one of them listed three times and
        # served corrupt once; files start and end inside chunks.
        size = chunk_kib << 10
        same = blob(size, "same")
        files = {"a.bin": blob(size + 1000, "a") + same, "b/c.bin": same + same[:500], "d.bin": same[500:] + b"end"}
        publish.publish(str(registry_dir), "org", "big", "v1", files, chunk_size=size)
        chunks = manifest_of(registry_dir, "org", "big", "v1")["chunks"]
        repeated = collections.Counter(chunks).most_common(1)[0]
        assert repeated[1] >= 2
        server.fail(f"data/{repeated[0]}", Fault(corrupt=True))
        held = server.hold(f"data/{chunks[-1]}")
        pulled: list[xm.InstalledModel] = []
        puller = threading.Thread(target=lambda: pulled.append(manager.pull("org/big v1", concurrency=2)))
        puller.start()
        assert held.arrived.wait(20)
        # Mid-pull, nothing but the staging files (and the cached manifest, and locks) is on disk.
        written = {path.relative_to(data_dir).as_posix() for path in data_dir.rglob("*") if path.is_file()}
        assert {path for path in written if not path.startswith(("org/big/.v1.staging/", ".locks/",
                                                                 "cache/manifests/"))} == set()
        held.release.set()
        puller.join(30)
        installed = pulled[0]
        assert tree(Path(installed.path)) == files
        assert server.requests[f"data/{repeated[0]}"] == 2  # once corrupt, once right; copied to the others
        assert all(server.requests[f"data/{digest}"] == 1 for digest in set(chunks) - {repeated[0]})

    def test_concurrency_is_reached_and_not_exceeded(self, manager: xm.Manager, registry_dir: Path,
                                                     server: LoopbackServer) -> None:
        publish.publish(str(registry_dir), "org", "wide", "v1", {"f": blob(40 * 512, "wide")}, chunk_size=512)
        server.gate, server.gated = 5, set(chunk_paths(registry_dir, "v1", "wide"))
        manager.pull("org/wide v1", concurrency=5)
        assert server.max_active == 5

    def test_concurrency_is_capped_at_16(self, manager: xm.Manager, registry_dir: Path,
                                         server: LoopbackServer) -> None:
        publish.publish(str(registry_dir), "org", "wide", "v1", {"f": blob(60 * 512, "wide")}, chunk_size=512)
        server.gate, server.gated = 16, set(chunk_paths(registry_dir, "v1", "wide"))
        manager.pull("org/wide v1", concurrency=40)
        assert server.max_active == 16

    @pytest.mark.parametrize("concurrency", [0, -1])
    def test_concurrency_below_one_is_value_error(self, manager: xm.Manager, model: dict[str, bytes],
                                                  concurrency: int) -> None:
        with pytest.raises(ValueError, match="concurrency"):
            manager.pull("org/tiny v1", concurrency=concurrency)


class TestProgress:
    def test_phases_and_counters(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        events: list[xm.PullProgress] = []
        manager.pull("org/tiny v1", progress=events.append)
        phases = [event.phase for event in events]
        assert phases[0] == "manifest"
        assert phases.index("chunks") < phases.index("extracting")
        assert phases == sorted(phases, key=["manifest", "chunks", "extracting"].index)
        body = [event for event in events if event.phase != "manifest"]
        for before, after in zip(body, body[1:]):
            assert after.chunks_completed >= before.chunks_completed
            assert after.bytes_completed >= before.bytes_completed
        last = events[-1]
        total = sum(len(data) for data in model.values())
        assert (last.chunks_total, last.chunks_completed) == (7, 7)
        assert last.bytes_total == last.bytes_completed == last.bytes_downloaded == total
        assert {event.current_file for event in events if event.phase == "extracting"} <= set(model)

    def test_chunks_phase_ends_complete_and_names_files(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        events: list[xm.PullProgress] = []
        manager.pull("org/tiny v1", progress=events.append)
        chunks = [event for event in events if event.phase == "chunks"]
        first_extracting = next(i for i, event in enumerate(events) if event.phase == "extracting")
        last_chunks = events[first_extracting - 1]
        assert last_chunks.phase == "chunks"
        assert (last_chunks.chunks_completed, last_chunks.bytes_completed) == (7, V1_SIZE)
        # Each chunk event after the first completion names a file of the chunk completed last.
        named = {event.current_file for event in chunks if event.chunks_completed}
        assert named and named <= {"model.safetensors", "config.json", "sub/tokenizer.json"}
        assert all(event.current_file for event in chunks if event.chunks_completed)

    def test_progress_keeps_coming_while_the_server_stalls(self, make_manager: Callable[..., xm.Manager],
                                                           model: dict[str, bytes], server: LoopbackServer,
                                                           registry_dir: Path) -> None:
        server.always[chunk_paths(registry_dir)[0]] = Fault(stall=True)
        beats = threading.Event()
        stalled: list[xm.PullProgress] = []

        def progress(event: xm.PullProgress) -> None:
            if event.phase == "chunks" and event.chunks_completed == 0:
                stalled.append(event)
                if len(stalled) >= 3:  # unchanged snapshots: the once-a-second heartbeat
                    beats.set()
                    raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            make_manager(timeout=30).pull("org/tiny v1", concurrency=1, progress=progress)
        assert beats.is_set()

    def test_cached_chunks_count_as_completed_not_downloaded(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], server: LoopbackServer,
        registry_dir: Path
    ) -> None:
        server.fail(chunk_paths(registry_dir)[4], Fault(status=500))
        with pytest.raises(xm.NetworkError):
            make_manager(retries=0).pull("org/tiny v1", concurrency=1)
        events: list[xm.PullProgress] = []
        make_manager().pull("org/tiny v1", progress=events.append)
        last = events[-1]
        assert last.bytes_completed == last.bytes_total
        assert last.bytes_downloaded == last.bytes_total - 4 * 1024

    def test_callback_exception_aborts_cleanly(self, manager: xm.Manager, model: dict[str, bytes],
                                               data_dir: Path) -> None:
        class Stop(Exception):
            pass

        def progress(event: xm.PullProgress) -> None:
            if event.chunks_completed >= 2:  # in whichever phase: workers may finish first
                raise Stop

        with pytest.raises(Stop):
            manager.pull("org/tiny v1", progress=progress)
        assert manager.list_installed() == []
        assert os.listdir(data_dir / "org" / "tiny") == [".v1.staging"]  # kept, to resume
        assert manager.pull("org/tiny v1").ref.version == "v1"  # nothing is left locked

    @pytest.mark.skipif(not WINDOWS and not os.path.isdir("/proc/self/fd"), reason="lists descriptors in /proc")
    def test_callback_exception_while_extracting_leaks_no_descriptor(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path
    ) -> None:
        def progress(event: xm.PullProgress) -> None:
            if event.phase == "extracting":
                raise KeyError("stop")

        for _ in range(3):
            with pytest.raises(KeyError):
                manager.pull("org/tiny v1", progress=progress)
        assert open_under(data_dir) == []
        assert os.listdir(data_dir / "org" / "tiny") == [".v1.staging"]

    @pytest.mark.skipif(not WINDOWS and not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
    def test_open_descriptors_stay_bounded_when_chunks_repeat(self, manager: xm.Manager, registry_dir: Path,
                                                              server: LoopbackServer) -> None:
        same = blob(300 * 16, "repeat")
        publish.publish(str(registry_dir), "org", "echo", "v1", {"a": same, "b": same}, chunk_size=16)
        most = 0

        def progress(event: xm.PullProgress) -> None:
            nonlocal most
            most = max(most, len(open_under(Path(manager.data_dir))))

        installed = manager.pull("org/echo v1", concurrency=2, progress=progress)
        assert tree(Path(installed.path)) == {"a": same, "b": same}
        assert 0 < most <= 2 * (2 * 2 + 2) + 2  # about two windows of chunks, not 300
        assert server.chunk_requests() == 1 + 300  # the manifest, and each chunk once

    def test_callback_exception_aborts_cleanly_and_unlocks(self, manager: xm.Manager, model: dict[str, bytes],
                                                          data_dir: Path) -> None:
        def progress(event: xm.PullProgress) -> None:
            raise RuntimeError("stop")

        with pytest.raises(RuntimeError):
            manager.pull("org/tiny v1", progress=progress)
        assert manager.list_installed() == []
        assert manager.pull("org/tiny v1").ref.version == "v1"  # nothing is left locked


def listed(result: xm.VerifyResult) -> list[str]:
    """The files a verify found damaged, or perhaps damaged as they share a damaged chunk."""
    return sorted([*result.damaged, *result.sharing_damaged_chunk])


def changed_chunks(registry_dir: Path, old: str, new: str) -> set[str]:
    return set(chunk_paths(registry_dir, new)) - set(chunk_paths(registry_dir, old))


class TestSeeding:
    def test_new_version_downloads_only_changed_chunks(self, manager: xm.Manager, model: dict[str, bytes],
                                                       server: LoopbackServer, registry_dir: Path) -> None:
        manager.pull("org/tiny v1")
        before = server.requests.copy()
        events: list[xm.PullProgress] = []
        installed = manager.pull("org/tiny v2", progress=events.append)
        assert tree(Path(installed.path))["config.json"] == b'{"layers": 3}\n'
        fetched = {path for path, count in (server.requests - before).items() if path.startswith("data/")}
        v2_manifest = f"data/{installed.manifest_hash}"
        assert fetched == {v2_manifest, *changed_chunks(registry_dir, "v1", "v2")}
        assert len(fetched) == 2
        assert events[-1].bytes_downloaded == 1024 and events[-1].bytes_completed == installed.total_size

    def test_modified_installed_file_is_not_trusted(self, manager: xm.Manager, model: dict[str, bytes],
                                                    server: LoopbackServer, registry_dir: Path) -> None:
        v1 = Path(manager.pull("org/tiny v1").path)
        weights = bytearray((v1 / "model.safetensors").read_bytes())
        weights[100] ^= 0xFF  # inside the first chunk
        (v1 / "model.safetensors").write_bytes(bytes(weights))
        before = server.requests.copy()
        v2 = Path(manager.pull("org/tiny v2").path)
        assert (v2 / "model.safetensors").read_bytes() == model["model.safetensors"]
        fetched = {path for path in (server.requests - before) if path.startswith("data/")}
        assert chunk_paths(registry_dir, "v2")[0] in fetched  # taken from the network, not the damaged copy

    def test_seeding_survives_a_file_that_vanished(self, manager: xm.Manager, model: dict[str, bytes],
                                                   registry_dir: Path) -> None:
        v1 = Path(manager.pull("org/tiny v1").path)
        (v1 / "model.safetensors").unlink()
        assert tree(Path(manager.pull("org/tiny v2").path))["model.safetensors"] == model["model.safetensors"]


class TestRateLimit:
    def test_limiter_paces_bytes_at_the_rate(self) -> None:
        now = [100.0]

        class Clock:
            def __call__(self) -> float:
                return now[0]

        class Sleep:
            def wait(self, delay: float) -> bool:
                now[0] += delay
                return False

        limiter = xm._RateLimiter(1000.0, Clock())
        for _ in range(50):
            limiter.take(100, Sleep())  # type: ignore[arg-type]
            now[0] += 0.001  # the network itself is fast
        assert 5000 / 1000.0 * 0.95 <= now[0] - 100.0 <= 5000 / 1000.0 * 1.1

    def test_every_downloaded_byte_passes_the_limiter(self, manager: xm.Manager, model: dict[str, bytes],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        paid: list[int] = []
        monkeypatch.setattr(xm._RateLimiter, "take", lambda self, count, cancel: paid.append(count))
        installed = manager.pull("org/tiny v1", limit_rate=4096)
        assert sum(paid) == installed.total_size
        assert max(paid) <= 4096  # small reads keep a low cap smooth

    @pytest.mark.parametrize(("text", "rate"), [("500K", 500_000), ("2M", 2_000_000), ("1.5G", 1.5e9),
                                                ("4096", 4096), ("2MB/s", 2_000_000), ("500kB", 500_000),
                                                ("512KiB", 512 << 10), ("2MiB", 2 << 20), ("1GiB", 1 << 30)])
    def test_cli_rate_syntax(self, text: str, rate: float) -> None:
        assert xm._rate(text) == rate

    def test_invalid_rates(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        with pytest.raises(ValueError, match="limit_rate"):
            manager.pull("org/tiny v1", limit_rate=0)
        assert cli("pull", "org/tiny", "v1", "--limit-rate", "fast").returncode == 2


def sparse_files_work(directory: Path) -> bool:
    """Whether a file extended with truncate, as staging files are, takes (almost) no disk space here."""
    probe = directory / "sparse-probe"
    with open(probe, "wb") as handle:
        handle.truncate(64 << 20)
    try:
        return disk_usage(probe) < 1 << 20
    finally:
        probe.unlink()


def publish_chunks(registry_dir: Path, group: str, model: str, version: str, chunks: list[bytes],
                   files: list[tuple[str, int]], chunk_size: int) -> str:
    """Publish a stream given as chunks (each distinct one stored once) cut into ``files``."""
    (registry_dir / "data").mkdir(parents=True, exist_ok=True)
    named: dict[bytes, str] = {}  # a chunk repeated 4096 times is hashed once
    for chunk in chunks:
        if chunk not in named:
            named[chunk] = hashlib.sha256(chunk).hexdigest()
            (registry_dir / "data" / named[chunk]).write_bytes(chunk)
    digests = [named[chunk] for chunk in chunks]
    total = sum(len(chunk) for chunk in chunks)
    assert sum(size for _, size in files) == total
    return write_manifest(registry_dir, group, model, version, {
        "total_size": total, "chunk_size": chunk_size, "chunks": digests,
        "files": [{"path": path, "size": size} for path, size in files],
    })


def read_at(path: Path, offset: int, count: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(count)


class TestScale:
    def test_file_larger_than_4_gib(self, manager: xm.Manager, registry_dir: Path, server: LoopbackServer,
                                    data_dir: Path, tmp_path: Path) -> None:
        mib = 1 << 20
        if not sparse_files_work(tmp_path):
            pytest.skip("no sparse files here: the pull would write 4 GiB of zeros")
        head, zero, past, tail = blob(100, "head"), bytes(mib), blob(mib, "past 4 GiB"), blob(5000, "tail")
        # The stream: 4 GiB (head, then zeros), a chunk starting at 2**32, a zero chunk, a short tail.
        chunks = [head + zero[100:], *[zero] * 4095, past, zero, tail]
        total = 4098 * mib + 5000
        if shutil.disk_usage(tmp_path).free < total + (1 << 30):
            pytest.skip("the pull checks for room for the whole model first")
        files = [("head.txt", 100), ("big.bin", total - 2100), ("after.txt", 2000)]
        publish_chunks(registry_dir, "org", "huge", "v1", chunks, files, mib)

        installed = manager.pull("org/huge v1")

        root = Path(installed.path)
        big = root / "big.bin"
        assert big.stat().st_size == total - 2100 > 1 << 32
        assert (root / "head.txt").read_bytes() == head
        assert read_at(big, 0, 4096) == bytes(4096)
        # big.bin starts 100 bytes into the stream: its byte 2**32 is byte 100 of the chunk past 4 GiB.
        assert read_at(big, (1 << 32) - 116, mib + 32) == bytes(16) + past + bytes(16)
        assert read_at(big, big.stat().st_size - 3016, 4000) == bytes(16) + tail[:3000]
        assert (root / "after.txt").read_bytes() == tail[3000:]  # starts past 4 GiB in the stream
        zero_chunk = f"data/{hashlib.sha256(zero).hexdigest()}"
        assert server.requests[zero_chunk] == 0  # known by its hash: the holes of the new files read as it
        assert disk_usage(big) < 64 * mib  # the zeros were never written: holes
        record = json.loads((data_dir / "registry.json").read_text())["org"]["huge"]["v1"]
        assert (record["total_size"], record["file_count"]) == (total, 3)
        assert manager.list_installed()[0].total_size == total

    def test_resumed_staging_gets_its_zero_chunks_written(
        self, make_manager: Callable[..., xm.Manager], registry_dir: Path, server: LoopbackServer, data_dir: Path
    ) -> None:
        first, zero, tail = blob(1024, "first"), bytes(1024), blob(300, "tail")
        stream = first + zero * 3 + tail
        publish_chunks(registry_dir, "org", "padded", "v1", [first, zero, zero, zero, tail],
                       [("weights.bin", len(stream))], 1024)
        server.fail(f"data/{hashlib.sha256(tail).hexdigest()}", Fault(status=500))
        with pytest.raises(xm.NetworkError):
            make_manager(retries=0).pull("org/padded v1", concurrency=1)
        staging = data_dir / "org" / "padded" / ".v1.staging" / "weights.bin"
        with open(staging, "r+b") as handle:  # where the second zero chunk goes
            handle.seek(2048)
            handle.write(b"garbage" * 100)
        installed = make_manager().pull("org/padded v1")
        assert (Path(installed.path) / "weights.bin").read_bytes() == stream

    def test_a_big_chunk_spanning_thousands_of_files(self, registry_dir: Path, server: LoopbackServer,
                                                     data_dir: Path) -> None:
        # A 1 MiB chunk streams into its 1,500 files: with 256 descriptors allowed (macOS's
        # default), no more than a few may be open at once. (Windows has no such limit to set.)
        files = {f"d/f{n:04d}.txt": blob(700, f"f{n}") for n in range(1500)}
        publish.publish(str(registry_dir), "org", "small-files", "v1", files, chunk_size=1 << 20)
        limit = "" if WINDOWS else "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
        command = [*PYTHON, "-c", f"{limit}import runpy, sys; "
                   "sys.argv[0] = 'xprim_models'; runpy.run_module('xprim_models', run_name='__main__')",
                   "--registry", server.url, "--data-dir", str(data_dir), "-q", "pull", "org/small-files", "v1"]
        result = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=child_timeout(60))
        assert result.returncode == 0, result.stderr
        assert tree(data_dir / "org" / "small-files" / "v1") == files

    @pytest.fixture
    def roomy_dir(self, tmp_path: Path) -> Iterator[Path]:
        """A directory for 100,000 real files: on tmpfs where there is one with room, since a
        journal-less ext4 takes up to a minute to create them after a mass deletion elsewhere."""
        if WINDOWS:  # no tmpfs
            yield tmp_path
            return
        shm = Path("/dev/shm")
        try:
            stats = os.statvfs(shm)
            roomy = stats.f_bavail * stats.f_frsize > 2 << 30 and stats.f_favail > 300_000
        except OSError:
            roomy = False
        if not roomy:
            yield tmp_path
            return
        path = Path(tempfile.mkdtemp(prefix="xprim-models-test-", dir=shm))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @pytest.mark.slow  # 100,000 files
    def test_model_of_100_000_files(self, registry_dir: Path, server: LoopbackServer, roomy_dir: Path) -> None:
        manager = xm.Manager(xm.Config("test-app", server.url, str(roomy_dir / "data")), retry_backoff=0.01)
        # Under wine each file costs a wineserver round trip and its flush a real fsync: 100,000
        # take over ten minutes there, so the Windows leg pulls a tenth (still one flush per file).
        count = 10_000 if WINDOWS else 100_000
        content = [b"" if i % 10 == 0 else f"{i}\n".encode() for i in range(count)]  # a tenth are empty
        paths = [f"part{i // 1000:02d}/file{i:05d}.txt" for i in range(count)]
        publish.publish(str(registry_dir), "org", "many", "v1", list(zip(paths, content)), chunk_size=16 << 10)

        installed = manager.pull("org/many v1")

        root = Path(installed.path)
        found = sum(len(names) for directory, _, names in os.walk(root) if ".test-app" not in directory)
        assert found == installed.file_count == count
        for i in [0, 1, 999, 1000, count - 1, *random.Random(5).sample(range(count), 200)]:
            assert (root / paths[i]).read_bytes() == content[i], paths[i]
        assert [(item.ref, item.file_count) for item in manager.list_installed()] == \
            [(xm.ModelRef("org", "many", "v1"), count)]


# --- Local store: the install transaction, locks, crashes, updates, verify, prune -----


class TestStorage:
    def test_remove(self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path) -> None:
        manager.pull("org/tiny v1")
        manager.pull("org/tiny v2")
        manager.remove("org/tiny v1")
        assert [str(item.ref) for item in manager.list_installed()] == ["org/tiny v2"]
        assert not (data_dir / "org" / "tiny" / "v1").exists()
        with pytest.raises(xm.NotInstalledError, match="org/tiny v1"):
            manager.remove("org/tiny v1")
        with pytest.raises(xm.NotInstalledError):
            manager.path("org/tiny v1")

    def test_remove_all(self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path) -> None:
        for version in ("v2", "v1", "latest"):
            manager.pull(f"org/tiny {version}")
        removed = manager.remove_all("org", "tiny")
        assert [str(ref) for ref in removed] == ["org/tiny latest", "org/tiny v1", "org/tiny v2"]
        assert manager.list_installed() == []
        assert not (data_dir / "org").exists()
        with pytest.raises(xm.NotInstalledError):
            manager.remove_all("org", "tiny")

    def test_check_update_follows_a_moved_alias(self, manager: xm.Manager, model: dict[str, bytes],
                                                registry_dir: Path) -> None:
        installed = manager.pull("org/tiny latest")
        assert manager.check_update("org/tiny latest") == (installed.manifest_hash, installed.manifest_hash)
        publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v2")
        old, new = manager.check_update("org/tiny latest")
        assert old == installed.manifest_hash and new == manager.get_remote("org/tiny v2").manifest_hash
        updated = manager.pull("org/tiny latest")
        assert updated.alias_of == "v2" and b'"layers": 3' in (Path(updated.path) / "config.json").read_bytes()

    def test_registry_json_format(self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path) -> None:
        manager.pull("org/tiny latest")
        doc = json.loads((data_dir / "registry.json").read_text())
        entry = doc["org"]["tiny"]["latest"]
        assert set(entry) == {"manifest_hash", "total_size", "file_count", "installed_at", "alias_of", "registry_url"}
        assert time.strptime(entry["installed_at"], "%Y-%m-%dT%H:%M:%SZ")

    @pytest.mark.parametrize("content", ["{broken", "[]", '{"g": {"m": {"v": 3}}}',
                                         '{"g": {"m": {"v": {"manifest_hash": "x"}}}}',
                                         '{"g": {"m": {"v": {"manifest_hash": "%s", "total_size": 1e999, '
                                         '"file_count": 1, "installed_at": "2024-01-01T00:00:00Z"}}}}' % ("0" * 64)])
    def test_corrupt_registry_json_is_storage_error(self, manager: xm.Manager, data_dir: Path,
                                                    content: str) -> None:
        data_dir.mkdir()
        (data_dir / "registry.json").write_text(content)
        with pytest.raises(xm.StorageError, match=r"registry\.json"):
            manager.list_installed()

    def test_unwritable_data_dir_is_storage_error(self, make_manager: Callable[..., xm.Manager],
                                                  model: dict[str, bytes], tmp_path: Path) -> None:
        (tmp_path / "a-file").write_text("not a directory")
        blocked = make_manager(data_dir=tmp_path / "a-file" / "data")
        with pytest.raises(xm.StorageError, match="a-file"):
            blocked.pull("org/tiny v1")

    @pytest.mark.parametrize(
        ("code", "hint"),
        [(errno.ENOSPC, "free some disk space"), (errno.EDQUOT, "free some disk space"),
         (errno.EFBIG, "free some disk space"), (errno.EACCES, "check the permissions"),
         (errno.EROFS, "check the permissions")],
        ids=["ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EROFS"],
    )
    def test_disk_errors_are_storage_errors_and_keep_installed(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], data_dir: Path,
        monkeypatch: pytest.MonkeyPatch, code: int, hint: str
    ) -> None:
        manager, copying = make_manager(), make_manager(copy_files=True)
        manager.pull("org/tiny v1")
        before = tree(data_dir / "org" / "tiny" / "v1")

        def failing(fd: int, data: memoryview, offset: int) -> None:
            raise OSError(code, os.strerror(code))

        # A full or read-only disk cannot be made here as root: every write into the files fails.
        monkeypatch.setattr(xm, "_pwrite_all", failing)
        with pytest.raises(xm.StorageError, match=f"{os.strerror(code)}; {hint}"):
            copying.pull("org/tiny v1", force=True)  # a sharing pull would link the intact files, writing nothing
        assert tree(data_dir / "org" / "tiny" / "v1") == before
        assert [item.ref.version for item in manager.list_installed()] == ["v1"]

    def test_disk_full_while_writing_a_downloaded_chunk_into_its_file(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(target: int, view: memoryview, offset: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(xm, "_pwrite_all", full)  # chunks this small go from memory into the files
        with pytest.raises(xm.StorageError, match=rf"cannot write \S+{SEP}org{SEP}tiny{SEP}\.v1\.staging{SEP}\S+: "
                                                  r"No space left on device; free some disk space"):
            manager.pull("org/tiny v1")
        assert manager.list_installed() == []
        monkeypatch.undo()
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))

    def test_versions_differing_only_in_case_cannot_share_a_directory(
        self, manager: xm.Manager, registry_dir: Path
    ) -> None:
        publish.publish(str(registry_dir), "org", "m", "q4", {"f": b"lower"})
        publish.publish(str(registry_dir), "org", "m", "Q4", {"f": b"upper"})
        manager.pull("org/m q4")
        with pytest.raises(xm.InvalidRefError, match="letter case"):
            manager.pull("org/m Q4")
        assert (data_dir_of(manager) / "org" / "m" / "q4" / "f").read_bytes() == b"lower"

    @staticmethod
    def kill_at_registry_commit(server: LoopbackServer, data_dir: Path, when: str, action: str) -> None:
        """Run ``action`` (Python using ``manager``) in a crash child killed ``when`` ("before" or
        "after") os.replace puts registry.json in place: the commit of an install or a remove."""
        hook = ["os", "replace", r"/registry\.json$", when]
        plan = json.dumps({"action": action, "hooks": [hook], "kill_at": 1})
        crash_expect_killed(crash_run_child(server, data_dir, plan))

    @pytest.mark.parametrize("crash_in", ["pull", "remove"])
    def test_crash_before_registry_commit_keeps_the_committed_copy(
        self, manager: xm.Manager, model: dict[str, bytes], registry_dir: Path, data_dir: Path,
        server: LoopbackServer, crash_in: str
    ) -> None:
        manager.pull("org/tiny v1")
        publish.publish(str(registry_dir), "org", "tiny", "v1", {"model.safetensors": b"new bytes"})
        action = 'manager.pull("org/tiny v1", force=True)' if crash_in == "pull" else 'manager.remove("org/tiny v1")'
        self.kill_at_registry_commit(server, data_dir, "before", action)
        publish.publish(str(registry_dir), "org", "tiny", "v1", MODEL_FILES, chunk_size=1024,
                        metadata={"framework": "onnx"})
        with pytest.raises(xm.AlreadyInstalledError):
            manager.pull("org/tiny v1")  # recovers first, then finds the committed copy
        assert tree(data_dir / "org" / "tiny" / "v1") == dict(sorted(model.items()))
        assert manager.files("org/tiny v1")[0].path == "model.safetensors"
        # A pull's never-committed copy goes back to staging, where a pull of it would resume.
        expected = ["v1"] if crash_in == "remove" else [".v1.staging", "v1"]
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == expected

    def test_crash_after_remove_commit_leaves_it_removed(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path, server: LoopbackServer
    ) -> None:
        manager.pull("org/tiny v1")
        self.kill_at_registry_commit(server, data_dir, "after", "manager.remove('org/tiny v1')")
        assert manager.list_installed() == []
        manager.pull("org/tiny v1")
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == ["v1"]

    def test_an_unlisted_complete_version_is_adopted_by_the_next_pull(
        self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer, registry_dir: Path,
        data_dir: Path
    ) -> None:
        self.kill_at_registry_commit(server, data_dir, "before", 'manager.pull("org/tiny v1")')
        assert (data_dir / "org" / "tiny" / "v1").is_dir() and manager.list_installed() == []
        before = sum(server.requests[path] for path in chunk_paths(registry_dir))
        installed = manager.pull("org/tiny v1")
        assert sum(server.requests[path] for path in chunk_paths(registry_dir)) == before  # verified, not fetched
        assert tree(Path(installed.path)) == dict(sorted(model.items())) and manager.verify("org/tiny v1").ok
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == ["v1"]

    def test_an_unlisted_version_is_removed_by_prune_or_a_pull_of_other_bytes(
        self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer, registry_dir: Path,
        data_dir: Path
    ) -> None:
        self.kill_at_registry_commit(server, data_dir, "before", 'manager.pull("org/tiny v1")')
        assert manager.prune_cache() > 0
        assert not (data_dir / "org" / "tiny").exists() or os.listdir(data_dir / "org" / "tiny") == []
        self.kill_at_registry_commit(server, data_dir, "before", 'manager.pull("org/tiny v1")')
        publish.publish(str(registry_dir), "org", "tiny", "v1", {"other.bin": b"republished"})
        assert tree(Path(manager.pull("org/tiny v1").path)) == {"other.bin": b"republished"}
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == ["v1"]

    def test_the_next_command_cleans_an_old_copy_and_dead_writers_files(
        self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer, data_dir: Path
    ) -> None:
        manager.pull("org/tiny v1")
        manager.pull("org/tiny v2")
        self.kill_at_registry_commit(server, data_dir, "after", "manager.remove('org/tiny v1')")
        assert (data_dir / "org" / "tiny" / ".v1.old").is_dir()
        temporary = data_dir / f"registry.json.{dead_pid()}.1.tmp"
        temporary.write_bytes(b"{}")
        assert [item.ref.version for item in manager.list_installed()] == ["v2"]
        assert not (data_dir / "org" / "tiny" / ".v1.old").exists()  # list holds the model's lock for a moment
        manager.remove("org/tiny v2")  # commits registry.json, under its lock
        assert not temporary.exists()

    def test_leftover_staging_is_cleaned(self, manager: xm.Manager, model: dict[str, bytes],
                                         data_dir: Path) -> None:
        staging = data_dir / "org" / "tiny" / ".v1.staging"
        (staging / "junk").mkdir(parents=True)
        manager.pull("org/tiny v1")
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == ["v1"]

    def test_interrupted_swap_is_rolled_back(self, manager: xm.Manager, model: dict[str, bytes],
                                             data_dir: Path) -> None:
        installed = manager.pull("org/tiny v1")
        # A crash between the two renames of a swap leaves the old copy aside.
        os.rename(installed.path, data_dir / "org" / "tiny" / ".v1.old")
        with pytest.raises(xm.AlreadyInstalledError):
            manager.pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))


PULL_SCRIPT = """
import sys, xprim_models as xm
manager = xm.Manager(xm.Config("test-app", sys.argv[1], sys.argv[2]), retry_backoff=0.01)
try:
    manager.pull(sys.argv[3], concurrency=2)
    print("installed")
except xm.AlreadyInstalledError:
    print("already")
"""


class TestConcurrency:
    def test_a_failed_pull_writes_nothing_once_it_has_returned(
        self, make_manager: Callable[..., xm.Manager], registry_dir: Path, server: LoopbackServer
    ) -> None:
        # Chunks over 256 KiB stream into the staging files. A worker of a failed pull, still
        # waiting on the network, must not write into the next pull's staging directory.
        size = 512 << 10
        publish.publish(str(registry_dir), "org", "big", "v1", {"model.bin": blob(2 * size, "old")}, chunk_size=size)
        a1, b1 = (f"data/{digest}" for digest in manifest_of(registry_dir, "org", "big", "v1")["chunks"])
        slow = server.always[a1] = Fault(pause_after=64 << 10)
        server.always[b1] = Fault(status=404)
        b1_held = server.hold(b1)
        manager = make_manager(retries=0)
        failures: list[xm.ModelsError] = []
        a1_begun = threading.Event()

        def fail() -> None:
            def progress(snapshot: xm.PullProgress) -> None:
                if snapshot.bytes_completed >= 64 << 10:  # a1's first bytes are in their place
                    a1_begun.set()

            try:
                manager.pull("org/big v1", concurrency=2, progress=progress)
            except xm.ModelsError as exc:
                failures.append(exc)

        first = threading.Thread(target=fail)
        before = set(threading.enumerate())
        first.start()
        assert a1_begun.wait(10) and b1_held.arrived.wait(10)
        b1_held.release.set()  # the 404 fails the pull while a1's worker waits for the rest of a1
        first.join(10)
        assert [type(exc) for exc in failures] == [xm.RegistryError]
        late = [thread for thread in set(threading.enumerate()) - before if thread.name.startswith("xprim-models")]
        assert late, "a1's worker should still be waiting"

        new = blob(2 * size, "new")
        publish.publish(str(registry_dir), "org", "big", "v1", {"model.bin": new}, chunk_size=size)
        b2_held = server.hold(f"data/{manifest_of(registry_dir, 'org', 'big', 'v1')['chunks'][1]}")
        a2_written = threading.Event()
        pulled: list[xm.InstalledModel] = []

        def progress(snapshot: xm.PullProgress) -> None:
            if snapshot.chunks_completed:
                a2_written.set()

        second = threading.Thread(target=lambda: pulled.append(manager.pull("org/big v1", concurrency=2,
                                                                            progress=progress)))
        second.start()
        assert a2_written.wait(10)
        slow.resume.set()  # the rest of a1 reaches the failed pull's worker, which must drop it
        for thread in late:
            thread.join(10)
            assert not thread.is_alive()
        b2_held.release.set()
        second.join(10)
        assert (Path(pulled[0].path) / "model.bin").read_bytes() == new
        assert manager.verify("org/big v1").ok

    def test_threads_racing_on_one_model(self, manager: xm.Manager, model: dict[str, bytes],
                                         server: LoopbackServer, registry_dir: Path) -> None:
        outcomes: list[str] = []
        barrier = threading.Barrier(6)

        def pull() -> None:
            barrier.wait()
            try:
                manager.pull("org/tiny v1")
                outcomes.append("installed")
            except xm.AlreadyInstalledError:
                outcomes.append("already")

        threads = [threading.Thread(target=pull) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes) == ["already"] * 5 + ["installed"]
        assert all(server.requests[path] == 1 for path in chunk_paths(registry_dir))

    def test_threads_pulling_different_models_all_recorded(self, manager: xm.Manager, model: dict[str, bytes],
                                                           registry_dir: Path) -> None:
        for index in range(6):
            publish.publish(str(registry_dir), "many", f"m{index}", "v1", {"f": blob(3000, str(index))},
                            chunk_size=512)
        threads = [threading.Thread(target=manager.pull, args=(f"many/m{index} v1",)) for index in range(6)]
        threads.append(threading.Thread(target=manager.pull, args=("org/tiny v2",)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(manager.list_installed()) == 7

    def test_processes_racing_on_one_model(self, model: dict[str, bytes], server: LoopbackServer,
                                           registry_dir: Path, data_dir: Path) -> None:
        command = [*PYTHON, "-c", PULL_SCRIPT, server.url, str(data_dir), "org/tiny v1"]
        processes = [subprocess.Popen(command, cwd=HERE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
        outputs = sorted(process.communicate(timeout=child_timeout(30))[0].strip() for process in processes)
        assert outputs == ["already", "already", "installed"]
        assert all(server.requests[path] == 1 for path in chunk_paths(registry_dir))

    def test_a_reader_holding_registry_json_open_delays_a_commit_without_failing_it(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path
    ) -> None:
        # Windows cannot replace a file while anyone has it open, and `list` in another
        # process reads registry.json without a lock.
        manager.pull("org/tiny v1")
        errors: list[BaseException] = []

        def pull() -> None:
            try:
                manager.pull("org/tiny v2")
            except BaseException as exc:
                errors.append(exc)

        puller = threading.Thread(target=pull)
        with open(data_dir / "registry.json", "rb"):
            puller.start()
            # Nothing signals the commit: watch for its temporary file (POSIX just finishes).
            while puller.is_alive() and not list(data_dir.glob("registry.json.*.tmp")):
                time.sleep(0.01)
        puller.join(30)
        assert errors == []
        assert [item.ref.version for item in manager.list_installed()] == ["v1", "v2"]

    @pytest.mark.skipif(not WINDOWS, reason="POSIX replaces a file that is open")
    def test_registry_json_held_open_for_good_is_a_clear_storage_error(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        installed = manager.pull("org/tiny v1")
        monkeypatch.setattr(xm, "_SHARING_RETRY_SECONDS", 0.2)
        held_open = r"cannot write \S+registry\.json: another program has it open \(.*\); close that program"
        with open(data_dir / "registry.json", "rb"), pytest.raises(xm.StorageError, match=held_open):
            manager.remove("org/tiny v1")
        assert [item.ref.version for item in manager.list_installed()] == ["v1"]
        assert tree(Path(installed.path)) == dict(sorted(model.items()))

    def test_ctrl_c_stops_the_pull_and_keeps_verified_chunks(self, model: dict[str, bytes], server: LoopbackServer,
                                                             registry_dir: Path, data_dir: Path) -> None:
        chunks = chunk_paths(registry_dir)
        arrived = server.hold(chunks[3]).arrived
        script = PULL_SCRIPT.replace("concurrency=2", "concurrency=1")
        process = popen_interruptible([*PYTHON, "-c", script, server.url, str(data_dir), "org/tiny v1"],
                                      cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert arrived.wait(child_timeout(20))
            ctrl_c(process)
            _, stderr = process.communicate(timeout=child_timeout(5))
        finally:
            process.kill()
        assert "KeyboardInterrupt" in stderr
        assert not (data_dir / "registry.json").exists()
        before = server.requests.copy()
        server.holds.clear()
        xm.Manager(xm.Config("test-app", server.url, str(data_dir))).pull("org/tiny v1")
        fetched = server.requests - before
        assert all(fetched[path] == 0 for path in chunks[:3])  # the verified chunks were kept


HOLD_SCRIPT = """
import sys, xprim_models as xm
manager = xm.Manager(xm.Config("test-app", sys.argv[1], sys.argv[2]), retry_backoff=0.01)
manager.pull(sys.argv[3], concurrency=1)
print("installed")
"""


class TestReliability:
    @pytest.mark.usefixtures("write_buffer")
    def test_connection_reset_mid_chunk_is_retried(self, manager: xm.Manager, model: dict[str, bytes],
                                                   server: LoopbackServer, registry_dir: Path) -> None:
        chunk = chunk_paths(registry_dir)[1]
        server.fail(chunk, Fault(reset_after=100), Fault(reset_after=0))
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        assert server.requests[chunk] == 3

    def test_connection_reset_every_time_is_network_error(self, make_manager: Callable[..., xm.Manager],
                                                          model: dict[str, bytes], server: LoopbackServer,
                                                          registry_dir: Path) -> None:
        chunk = chunk_paths(registry_dir)[1]
        server.always[chunk] = Fault(reset_after=10)
        with pytest.raises(xm.NetworkError, match=rf"chunk 2/7 .*{chunk}.*after 3 attempts") as caught:
            make_manager(retries=2).pull("org/tiny v1")
        assert "reset" in str(caught.value) or "closed" in str(caught.value) or "broken" in str(caught.value)

    @pytest.mark.usefixtures("write_buffer")
    def test_stalled_chunk_is_retried(self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes],
                                      server: LoopbackServer, registry_dir: Path) -> None:
        chunk = chunk_paths(registry_dir)[2]
        server.fail(chunk, Fault(stall=True))
        installed = make_manager(timeout=0.3).pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        assert server.requests[chunk] == 2

    def test_oversized_manifest_is_refused(self, manager: xm.Manager, registry_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(xm, "_MAX_MANIFEST_BYTES", 100)
        publish.publish(str(registry_dir), "org", "many", "v1", {f"f{i}": b"x" for i in range(20)})
        with pytest.raises(xm.RegistryError, match="100-byte limit"):
            manager.pull("org/many v1")

    @pytest.mark.parametrize("cap", ["_MAX_FILES", "_MAX_CHUNKS"])
    def test_file_and_chunk_count_caps(self, manager: xm.Manager, registry_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch, cap: str) -> None:
        monkeypatch.setattr(xm, cap, 5)
        publish.publish(str(registry_dir), "org", "many", "v1", {f"f{i}": b"xx" for i in range(6)}, chunk_size=2)
        with pytest.raises(xm.RegistryError, match="at most 5"):
            manager.pull("org/many v1")

    # Local safety: whatever is planted in the data directory, nothing outside it is written.

    @pytest.fixture
    def outside(self, tmp_path: Path) -> Path:
        target = tmp_path / "outside"
        target.mkdir()
        (target / "precious").write_bytes(b"keep me")
        return target

    def assert_outside_untouched(self, outside: Path) -> None:
        assert sorted(p.name for p in outside.iterdir()) == ["precious"]
        assert (outside / "precious").read_bytes() == b"keep me"

    def test_planted_staging_link_is_not_followed(self, manager: xm.Manager, model: dict[str, bytes],
                                                  data_dir: Path, outside: Path) -> None:
        (data_dir / "org" / "tiny").mkdir(parents=True)
        symlink(outside, data_dir / "org" / "tiny" / ".v1.staging")
        symlink(outside, data_dir / "org" / "tiny" / ".v2.old")
        manager.pull("org/tiny v1")
        manager.pull("org/tiny v2")
        self.assert_outside_untouched(outside)
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == ["v1", "v2"]

    def test_a_linked_directory_in_a_resumed_staging_directory_is_replaced(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], server: LoopbackServer,
        registry_dir: Path, data_dir: Path, outside: Path
    ) -> None:
        staging = interrupted_pull(server, registry_dir, data_dir, make_manager)
        shutil.rmtree(staging / "sub")
        directory_link(outside, staging / "sub")
        installed = make_manager().pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        self.assert_outside_untouched(outside)

    def test_planted_cache_links_are_not_followed(self, manager: xm.Manager, model: dict[str, bytes],
                                                  data_dir: Path, registry_dir: Path, outside: Path) -> None:
        digest = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v1"]["hash"]
        (data_dir / "cache" / "manifests").mkdir(parents=True)
        symlink(outside / "precious", data_dir / "cache" / "manifests" / digest)
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        self.assert_outside_untouched(outside)

    def test_links_inside_an_installed_version_are_not_followed(self, manager: xm.Manager, model: dict[str, bytes],
                                                                data_dir: Path, outside: Path) -> None:
        installed = Path(manager.pull("org/tiny v1").path)
        (installed / "model.safetensors").unlink()
        symlink(outside / "precious", installed / "model.safetensors")
        symlink(outside, installed / "sub" / "linked-dir")
        manager.pull("org/tiny v1", force=True)
        assert tree(installed) == dict(sorted(model.items()))
        manager.remove("org/tiny v1")
        self.assert_outside_untouched(outside)

    @pytest.mark.parametrize("link", ["cache", "cache/manifests", ".locks", ".locks/models/org"])
    def test_linked_private_directories_are_refused(self, manager: xm.Manager, model: dict[str, bytes],
                                                    data_dir: Path, outside: Path, link: str) -> None:
        (data_dir / link).parent.mkdir(parents=True, exist_ok=True)
        symlink(outside, data_dir / link)
        with pytest.raises(xm.StorageError, match=f"{re.escape(str(data_dir / link))} is a symbolic link"):
            manager.pull("org/tiny v1")
        self.assert_outside_untouched(outside)

    # Hostile local files: a hard link, pipe or device is never written through or waited on.

    def test_hard_link_in_a_resumed_staging_directory_is_replaced(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], server: LoopbackServer,
        registry_dir: Path, data_dir: Path, outside: Path
    ) -> None:
        planted = interrupted_pull(server, registry_dir, data_dir, make_manager) / "model.safetensors"
        planted.unlink()
        os.link(outside / "precious", planted)
        installed = make_manager().pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        self.assert_outside_untouched(outside)

    def test_planted_pipes_and_directories_are_neither_read_nor_waited_on(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], server: LoopbackServer,
        registry_dir: Path, data_dir: Path
    ) -> None:
        # A named pipe where the OS has them in its file system; on Windows, which has not,
        # a directory: what can stand there that is not a plain file.
        pipes = hasattr(os, "mkfifo")
        interrupted_pull(server, registry_dir, data_dir, make_manager)
        digest = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v1"]["hash"]
        staging = data_dir / "org" / "tiny" / ".v1.staging"
        planted = [staging / "config.json", data_dir / "cache" / "manifests" / digest,
                   data_dir / f"registry.json.{dead_pid()}.1.tmp"]
        (data_dir / "cache" / "manifests").mkdir(exist_ok=True)
        for path in planted:
            path.unlink(missing_ok=True)
            if pipes:
                os.mkfifo(path)
            else:
                path.mkdir()
        manager = make_manager()
        installed = manager.pull("org/tiny v1")  # a pipe opened to read or write would hang it
        assert tree(Path(installed.path)) == dict(sorted(model.items()))
        if pipes:
            for path in planted[1:]:  # the caches drop what is not a plain file (a fresh copy may take its place)
                assert not path.exists() or (path.is_file() and not path.is_fifo()), path
        else:  # nothing was written into a directory, and the caches left them as they were
            assert all(path.is_dir() and not any(path.iterdir()) for path in planted[1:]), planted

    def test_repair_refuses_a_linked_version_directory_as_pull_does(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path, outside: Path
    ) -> None:
        installed = Path(manager.pull("org/tiny v1").path)
        shutil.move(str(installed), str(outside / "v1"))
        symlink(outside / "v1", installed)
        (outside / "v1" / "model.safetensors").write_bytes(b"damaged")
        for action in (lambda: manager.verify("org/tiny v1", repair=True),
                       lambda: manager.pull("org/tiny v1", force=True)):
            with pytest.raises(xm.StorageError, match=f"{re.escape(str(installed))} is a symbolic link"):
                action()
        assert (outside / "v1" / "model.safetensors").read_bytes() == b"damaged"
        assert sorted(p.name for p in outside.iterdir()) == ["precious", "v1"]

    def test_verify_works_on_a_read_only_data_directory(self, manager: xm.Manager, model: dict[str, bytes],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        manager.pull("org/tiny v1")

        def read_only(self: Any) -> None:
            raise xm.StorageError("cannot lock ...: Read-only file system")

        monkeypatch.setattr(xm._FileLock, "__enter__", read_only)  # as root, no real read-only mount here
        assert manager.verify("org/tiny v1").ok
        with pytest.raises(xm.StorageError, match="Read-only"):
            manager.verify("org/tiny v1", repair=True)

    def test_stray_files_where_directories_go(self, manager: xm.Manager, model: dict[str, bytes],
                                              data_dir: Path) -> None:
        (data_dir / "org" / "tiny").mkdir(parents=True)
        (data_dir / "org" / "tiny" / ".v1.staging").write_text("stray file")
        (data_dir / "org" / "tiny" / ".v1.old").write_text("stray file")
        assert tree(Path(manager.pull("org/tiny v1").path)) == dict(sorted(model.items()))
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == ["v1"]

    # Races between processes.

    def hold_lock(self, server: LoopbackServer, registry_dir: Path, data_dir: Path,
                  ref: str = "org/tiny v1") -> tuple[subprocess.Popen[str], threading.Event]:
        """A child process stuck mid-pull of ``ref`` (so holding its model lock) on a stalled chunk."""
        arrived = server.hold(chunk_paths(registry_dir, ref.split()[1])[2]).arrived
        child = subprocess.Popen([*PYTHON, "-c", HOLD_SCRIPT, server.url, str(data_dir), ref],
                                 cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert arrived.wait(child_timeout(20))
        return child, arrived

    def test_lock_of_a_killed_process_is_released(self, manager: xm.Manager, model: dict[str, bytes],
                                                  server: LoopbackServer, registry_dir: Path, data_dir: Path) -> None:
        child, _ = self.hold_lock(server, registry_dir, data_dir)
        child.kill()
        child.communicate(timeout=child_timeout(10))
        installed = manager.pull("org/tiny v1")  # no stale lock: this does not wait
        assert tree(Path(installed.path)) == dict(sorted(model.items()))

    def test_cli_says_it_is_waiting_for_another_download(self, model: dict[str, bytes], server: LoopbackServer,
                                                         registry_dir: Path, data_dir: Path) -> None:
        child, _ = self.hold_lock(server, registry_dir, data_dir)
        waiting = subprocess.Popen(
            [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
             "pull", "org/tiny", "v1"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "XPRIM_MODELS_MODELS_DIR": ""},
        )
        assert waiting.stderr is not None
        line = waiting.stderr.readline()  # blocks until the notice, after about a second
        assert line == "Waiting for another download of org/tiny to finish...\n"  # news, not a warning
        child.kill()  # the lock dies with its holder
        child.communicate(timeout=child_timeout(10))
        out, _ = waiting.communicate(timeout=child_timeout(30))
        assert waiting.returncode == 0 and "Model installed: org/tiny v1" in out

    def test_ctrl_c_while_waiting_for_another_download_promises_nothing_kept(
        self, model: dict[str, bytes], server: LoopbackServer, registry_dir: Path, data_dir: Path
    ) -> None:
        child, _ = self.hold_lock(server, registry_dir, data_dir)
        waiting = popen_interruptible(
            [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
             "pull", "org/tiny", "v1"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert waiting.stderr is not None
            assert waiting.stderr.readline() == "Waiting for another download of org/tiny to finish...\n"
            ctrl_c(waiting)
            out, err = waiting.communicate(timeout=child_timeout(30))
        finally:
            child.kill()
            child.communicate(timeout=child_timeout(10))
            if waiting.poll() is None:
                waiting.kill()
                waiting.communicate()
        assert (waiting.returncode, out, err) == (130, "", "interrupted\n")

    def test_remove_during_a_pull_waits_for_it(self, manager: xm.Manager, model: dict[str, bytes],
                                               server: LoopbackServer, registry_dir: Path, data_dir: Path,
                                               logged: Callable[[str], threading.Event]) -> None:
        manager.pull("org/tiny v2")
        (chunk,) = set(chunk_paths(registry_dir, "v1")) - set(chunk_paths(registry_dir, "v2"))  # not seeded
        held = server.hold(chunk)
        arrived, release = held.arrived, held.release
        child = subprocess.Popen([*PYTHON, "-c", HOLD_SCRIPT, server.url, str(data_dir), "org/tiny v1"],
                                 cwd=HERE, stdout=subprocess.PIPE, text=True)
        assert arrived.wait(child_timeout(20))
        removed, waiting = threading.Event(), logged("Waiting for another download of org/tiny to finish")

        def remove() -> None:
            manager.remove("org/tiny v2")
            removed.set()

        remover = threading.Thread(target=remove)
        remover.start()
        assert waiting.wait(20)  # for the same model's lock, which the pull holds (said after 1 s)
        assert not removed.is_set()
        release.set()
        assert child.communicate(timeout=child_timeout(30))[0].strip() == "installed"
        remover.join(30)
        assert removed.is_set()
        assert [str(item.ref) for item in manager.list_installed()] == ["org/tiny v1"]
        assert sorted(os.listdir(data_dir / "org" / "tiny")) == ["v1"]

    def test_processes_pulling_different_models_all_recorded(self, model: dict[str, bytes], server: LoopbackServer,
                                                             registry_dir: Path, data_dir: Path) -> None:
        shared = blob(4096, "shared")
        for index in range(5):
            publish.publish(str(registry_dir), "many", f"m{index}", "v1",
                            {"shared": shared, "own": blob(2048, str(index))}, chunk_size=1024)
        children = [subprocess.Popen([*PYTHON, "-c", PULL_SCRIPT, server.url, str(data_dir),
                                      f"many/m{index} v1"], cwd=HERE, stdout=subprocess.PIPE, text=True)
                    for index in range(5)]
        assert [child.communicate(timeout=child_timeout(60))[0].strip() for child in children] == ["installed"] * 5
        installed = xm.Manager(xm.Config("test-app", server.url, str(data_dir))).list_installed()
        assert [str(item.ref) for item in installed] == [f"many/m{index} v1" for index in range(5)]
        for item in installed:
            assert (Path(item.path) / "shared").read_bytes() == shared


# A zygote: a Python (PYTHON) that has imported xprim_models, every module the module may import
# later and those the scripts run here import, and then forks a child per job. A forked child
# starts at once: no interpreter start-up and no import, most of what a child of the crash tests
# costs (0.14 s of CPU); under the fault sweep, strace's counts start with the command's own
# calls. One job at a time, each a JSON line on stdin: {"code", "argv", "out", "err", "env"}.
# The zygote answers the child's pid, waits for a line (the caller may attach strace to the
# child meanwhile), lets the child run, and answers its wait status. No thread runs in the
# zygote (a fork copies only the forking thread), and a child never returns into its loop: it
# ends in os._exit, or dies by a signal.
ZYGOTE = r"""
import encodings.idna, importlib, json, os, re, signal, sys, threading, time, traceback
import xprim_models as xm

with open(xm.__file__, encoding="utf-8") as source:
    for name in re.findall(r"^\s+(?:import|from) ([\w.]+)", source.read(), re.M):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
for name in ("json", "shutil", "signal", "time"):  # the crash child's
    importlib.import_module(name)
if threading.active_count() != 1:
    sys.exit("the zygote cannot fork: its imports started threads: %r" % threading.enumerate())

def run(job):
    # As `python -c code argv...` would: the exit status of SystemExit, 1 after a traceback.
    if job["env"] is not None:
        os.environ.clear()
        os.environ.update(job["env"])
        time.tzset()
    sys.argv = ["-c", *job["argv"]]
    try:
        exec(compile(job["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code

for line in sys.stdin:
    job = json.loads(line)
    go_read, go_write = os.pipe()
    streams = [os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC) for path in (os.devnull, job["out"], job["err"])]
    pid = os.fork()
    if pid == 0:
        code = 70
        try:  # no call strace may trace (close, open, write...) before go: strace may be attaching now
            for fd, stream in enumerate(streams):
                os.dup2(stream, fd)
            if os.read(go_read, 1):
                code = run(job)
        finally:
            os._exit(code)
    os.close(go_read)
    for stream in streams:
        os.close(stream)
    print(pid, flush=True)
    if sys.stdin.readline() != "go\n":  # the caller gave up on this child, or ended
        os.kill(pid, signal.SIGKILL)
    try:
        os.write(go_write, b"x")
    except OSError:  # the child was killed before go
        pass
    os.close(go_write)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class ZygoteError(Exception):
    """The zygote itself failed: it did not start, did not fork, or ended."""


class Zygote:
    """Runs Python code in children forked from a ZYGOTE process, one at a time (POSIX only).

    ``run`` is ``subprocess.run([*PYTHON, "-c", code, *argv], cwd=HERE)`` with stdout and
    stderr captured, in a fork. The zygote starts with the first job, with ``env`` (default:
    this process's), and again after a failure; ``close`` ends it.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.directory: Path | None = None  # the zygote's stderr, and the children's streams by default
        self.child: tuple[list[str], int, Path, Path] | None = None  # args, pid, out, err of the running child
        self.answers = b""

    def run(self, code: str, argv: list[str], *, env: dict[str, str] | None = None, out: Path | None = None,
            err: Path | None = None, between: Callable[[int], None] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Fork a child running ``code`` with ``argv``, its environment ``env`` (default: the
        zygote's), stdout and stderr to the files ``out`` and ``err``; ``between(pid)`` runs
        before it starts. Its result once it ended; AssertionError when it runs over ``timeout``."""
        pid = self.start(code, argv, env=env, out=out, err=err)
        try:
            if between is not None:
                between(pid)
            self.go()
            return self.wait(timeout)
        finally:
            self.abandon()

    def start(self, code: str, argv: list[str], *, env: dict[str, str] | None = None, out: Path | None = None,
              err: Path | None = None) -> int:
        """Fork the child of ``run``, waiting for ``go``; returns its pid."""
        assert self.child is None, "the zygote runs one child at a time"
        if self.process is None:
            self.directory = self.directory or Path(tempfile.mkdtemp(prefix="zygote-"))
            with open(self.directory / "zygote.err", "wb") as errors:
                self.process = subprocess.Popen([*PYTHON, "-c", ZYGOTE], cwd=HERE, env=self.env, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=errors)
            self.answers = b""
        assert self.process.stdin is not None and self.directory is not None
        out, err = out or self.directory / "out", err or self.directory / "err"
        job = {"code": code, "argv": argv, "out": str(out), "err": str(err), "env": env}
        try:
            self.process.stdin.write(json.dumps(job).encode() + b"\n")
            self.process.stdin.flush()
            answer = self.answer(child_timeout(60))
        except (OSError, TimeoutError) as exc:
            answer = repr(exc)
        if not answer.isdigit():
            self.stop()
            raise ZygoteError(f"the zygote did not fork: {answer}; {self.errors()}")
        self.child = ([*PYTHON, "-c", code, *argv], int(answer), out, err)
        return int(answer)

    def go(self) -> None:
        """Let the started child run."""
        assert self.process is not None and self.process.stdin is not None and self.child is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """The started child's result once it ended (a negative return code: killed by that signal).
        When it runs over ``timeout``, it is killed and AssertionError says so."""
        assert self.child is not None
        args, _, out, err = self.child
        try:
            status = self.answer(timeout)
        except TimeoutError:
            self.abandon()
            raise AssertionError(f"the child {args[len(PYTHON) + 2:]} was still running after {timeout:.0f} s "
                                 f"(killed it); its stderr: {err.read_text()}") from None
        if not status.lstrip("-").isdigit():
            self.abandon()
            raise ZygoteError(f"the zygote did not say how its child ended: {status}; {self.errors()}")
        self.child = None
        return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(int(status)), out.read_text(),
                                           err.read_text())

    def answer(self, timeout: float) -> str:
        """The zygote's next line; TimeoutError after ``timeout`` seconds, "" when it ended."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.answers:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                raise TimeoutError
            data = os.read(self.process.stdout.fileno(), 4096)
            if not data:
                return ""
            self.answers += data
        line, _, self.answers = self.answers.partition(b"\n")
        return line.decode()

    def errors(self) -> str:
        assert self.directory is not None
        return f"the zygote's stderr: {(self.directory / 'zygote.err').read_text(errors='replace').strip()}"

    def abandon(self) -> None:
        """Kill the started child if it has not been waited for, and the zygote with it."""
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):  # the zygote, waiting for it, has not reaped it
                os.kill(self.child[1], signal.SIGKILL)
            self.stop()

    def stop(self) -> None:
        self.child = None
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            assert self.process.stdin is not None and self.process.stdout is not None
            with contextlib.suppress(OSError):  # what a failed write left in the buffer
                self.process.stdin.close()
            self.process.stdout.close()
            self.process = None

    def close(self) -> None:
        """End the zygote (a child still running first) and remove its directory."""
        self.abandon()
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


CRASH_ZYGOTE = Zygote()  # this process's crash children on POSIX; ended with the session


@pytest.fixture(scope="session", autouse=True)
def crash_zygote() -> Iterator[None]:
    """CRASH_ZYGOTE ends with the session (or with its test process: its stdin closes)."""
    yield
    CRASH_ZYGOTE.close()


# A child process runs an action with kill points armed, then dies by SIGKILL (on Windows
# the test ends it with TerminateProcess: nothing runs after it, no finally, no atexit).
# The plan, from argv[3] (JSON):
#   ref, force, concurrency   the default action: manager.pull(ref, force=, concurrency=, progress=)
#   action: "python"    run this statement instead, with ``manager`` and ``progress`` bound
#   progress_at: N      die in the progress callback once chunks_completed >= N
#   hooks: [[module, name, regex, "before"|"after"], ...]   wrap os.<name> or shutil.<name>
#                       (a name the OS lacks, such as os.pwrite on Windows, is skipped); a call
#                       whose string arguments, joined by spaces (with / as the path separator
#                       on every OS), match regex is one event. A descriptor as the first
#                       argument stands for the path os.open opened it with.
#   kill_at: N          die before/after the N-th event (0: never; then print the event count)
CRASH_CHILD = r"""
import json, os, re, shutil, signal, sys, threading, time
import xprim_models as xm

url, data_dir, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
guard = threading.Lock()
events = [0]
opened = {}  # descriptor -> the path os.open gave it
os_open, os_close, os_write = os.open, os.close, os.write  # the originals, for die() and the wrappers

def die(label):
    os_write(2, ("killed at " + label + "\n").encode())
    if os.name != "nt":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:  # Windows: the test kills it (see crash_run_child)
        time.sleep(1)

def event(label):
    with guard:
        events[0] += 1
        hit = events[0] == plan.get("kill_at", 0)
    if hit:
        die("event %d: %s" % (events[0], label))

def tracked_open(path, *args, **kwargs):
    fd = os_open(path, *args, **kwargs)
    opened[fd] = os.fsdecode(path)
    return fd

def tracked_close(fd):
    opened.pop(fd, None)
    os_close(fd)

def hook(module, name, pattern, when):
    original, regex = getattr(module, name), re.compile(pattern)
    def wrapper(*args, **kwargs):
        strings = [arg for arg in args if isinstance(arg, str)]
        if args and isinstance(args[0], int) and args[0] in opened:
            strings.insert(0, opened[args[0]])
        text = " ".join(strings).replace(os.sep, "/")
        if not regex.search(text):
            return original(*args, **kwargs)
        if when == "before":
            event("before %s(%s)" % (name, text))
        result = original(*args, **kwargs)
        if when == "after":
            event("after %s(%s)" % (name, text))
        return result
    setattr(module, name, wrapper)

def progress(snapshot):
    if plan.get("progress_at") and snapshot.chunks_completed >= plan["progress_at"]:
        die("progress %s %d/%d" % (snapshot.phase, snapshot.chunks_completed, snapshot.chunks_total))

os.open, os.close = tracked_open, tracked_close
modules = {"os": os, "shutil": shutil}
for module, name, pattern, when in plan.get("hooks", []):
    if hasattr(modules[module], name):
        hook(modules[module], name, pattern, when)
manager = xm.Manager(xm.Config("test-app", url, data_dir), retry_backoff=0.01, timeout=5.0)
try:
    if "action" in plan:
        exec(plan["action"], {"manager": manager, "progress": progress})
    else:
        manager.pull(plan["ref"], force=plan["force"], concurrency=plan.get("concurrency", 4), progress=progress)
    outcome = "done"
except xm.AlreadyInstalledError:
    outcome = "already"
print(json.dumps({"outcome": outcome, "events": events[0]}))
"""

CRASH_CHUNK = 1024
CRASH_OLD_FILES = {  # org/big v1 as installed before every crash: 12 chunks
    "weights.bin": blob(9_000, "old-weights"),
    "config.json": b'{"layers": 1}\n',
    "sub/vocab.txt": blob(3_000, "old-vocab"),
    "empty.txt": b"",
}


def crash_new_files(tag: str) -> dict[str, bytes]:
    """A version to pull: 77 chunks of 1 KiB; files start and end inside chunks."""
    return {
        "weights.bin": blob(50_001, f"{tag}-weights"),
        "config.json": b'{"layers": 2}\n',
        "sub/vocab.txt": blob(20_000, f"{tag}-vocab"),
        "empty.txt": b"",
        "sub/deep/extra.bin": blob(6_500, f"{tag}-extra"),
        "z/last.bin": blob(1_500, f"{tag}-last"),
    }


CRASH_V2_FILES = crash_new_files("v2")
CRASH_V1_NEW_FILES = crash_new_files("v1-republished")


class ListedVersionNotIntact(AssertionError):
    """Right after the kill, a listed version's directory does not hold what registry.json says."""


class LeftoverNotCleaned(AssertionError):
    """A file the crash left behind is still there after the next pull of that model."""


class CrashScenario:
    """org/big v1 is installed; the child then pulls ``ref``. Knows every hash's expected files.

    Managers made here tag their requests, and the server counts tagged requests apart
    (``parent_requests``): a killed child's last requests may still reach the server later.
    """

    def __init__(self, name: str, registry_dir: Path, data_dir: Path, server: LoopbackServer,
                 make_manager: Callable[..., xm.Manager]) -> None:
        self.name, self.registry_dir, self.data_dir = name, registry_dir, data_dir
        opener = urllib.request.build_opener()
        opener.addheaders.append(("X-Crash-Test", "parent"))
        self._make_manager, self._opener = make_manager, opener
        server.tag = ("X-Crash-Test", "parent")
        self.parent_requests = server.tagged
        old = publish.publish(str(registry_dir), "org", "big", "v1", CRASH_OLD_FILES, chunk_size=CRASH_CHUNK)
        v2 = publish.publish(str(registry_dir), "org", "big", "v2", CRASH_V2_FILES, chunk_size=CRASH_CHUNK)
        self.make_manager().pull("org/big v1")
        self.contents: dict[str, dict[str, bytes]] = {old: CRASH_OLD_FILES, v2: CRASH_V2_FILES}
        if name == "new":  # pull another version next to the installed one
            self.version, self.force, self.target = "v2", False, v2
            self.allowed = {"v1": {old}, "v2": {v2}}
            self.final = {"v1": old, "v2": v2}
        elif name == "update":  # pull --force of a republished v1 over the installed v1
            new = publish.publish(str(registry_dir), "org", "big", "v1", CRASH_V1_NEW_FILES, chunk_size=CRASH_CHUNK)
            self.contents[new] = CRASH_V1_NEW_FILES
            self.version, self.force, self.target = "v1", True, new
            self.allowed = {"v1": {old, new}}
            self.final = {"v1": new}
        else:  # "reinstall": pull --force of the very same v1
            assert name == "reinstall"
            self.version, self.force, self.target = "v1", True, old
            self.allowed = {"v1": {old}}
            self.final = {"v1": old}
        self.ref = f"org/big {self.version}"
        self.files = self.contents[self.target]
        self.chunks = list(manifest_of(registry_dir, "org", "big", self.version)["chunks"])
        assert len(self.chunks) >= 60 or name == "reinstall"

    def make_manager(self) -> xm.Manager:
        """A fresh Manager on the data dir, as the next command would make."""
        return self._make_manager(opener=self._opener)

    def plan(self, **kill_points: Any) -> str:
        return json.dumps({"ref": self.ref, "force": self.force, **kill_points})


def crash_run_child(server: LoopbackServer, data_dir: Path, plan: str) -> subprocess.CompletedProcess[str]:
    argv = [server.url, str(data_dir), plan]
    if not WINDOWS:  # a fork of a Python that has imported xprim_models already
        return CRASH_ZYGOTE.run(CRASH_CHILD, argv, env=dict(os.environ), timeout=30)
    command = [*PYTHON, "-c", CRASH_CHILD, *argv]
    # Under wine a process that calls TerminateProcess on itself sometimes never ends (seen
    # under load: "killed at ..." printed, then nothing for minutes). So on Windows the child
    # says where it stopped and waits there, and the test kills it from outside.
    with subprocess.Popen(command, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stderr is not None
        errors: list[str] = []
        stopped = threading.Event()

        def read_errors(stream: IO[str]) -> None:
            for line in stream:
                errors.append(line)
                if line.startswith("killed at "):
                    stopped.set()
            stopped.set()  # the child ended by itself

        reader = threading.Thread(target=read_errors, args=(child.stderr,), daemon=True)
        reader.start()
        bound = child_timeout(120)
        if not stopped.wait(bound):
            kill(child)
            raise AssertionError(f"the crash child was still running after {bound:.0f} s: {''.join(errors)}")
        if any(line.startswith("killed at ") for line in errors):
            kill(child)
        output = child.stdout.read()
        child.wait(child_timeout(60))
        reader.join(60)
    return subprocess.CompletedProcess(command, child.returncode, output, "".join(errors))


def crash_expect_killed(result: subprocess.CompletedProcess[str]) -> str:
    """The child was killed at its kill point; return where (for failure messages)."""
    assert result.returncode == KILLED, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


def crash_stored_hash(root: Path) -> str:
    try:
        return hashlib.sha256((root / ".test-app" / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return ""


def crash_copy_holds(root: Path, digest: str, files: dict[str, bytes]) -> bool:
    return root.is_dir() and crash_stored_hash(root) == digest and tree(root) == files


def crash_leftovers(data_dir: Path) -> set[str]:
    """Staging and old directories, partial downloads and temporary files under the data dir."""
    found = set()
    for directory, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            if re.fullmatch(r"\..+\.(staging|old)", name) or name.endswith((".part", ".tmp")):
                found.add(os.path.relpath(os.path.join(directory, name), data_dir))
    return found


def crash_check_listed(sc: CrashScenario, final: bool = False) -> None:
    """registry.json is valid JSON and every listed version of org/big is complete where it is listed."""
    json.loads((sc.data_dir / "registry.json").read_bytes())
    manager = sc.make_manager()
    listed = {item.ref.version: item for item in manager.list_installed()}
    assert "v1" in listed, f"the installed v1 is no longer listed: {sorted(listed)}"
    for version, item in listed.items():
        assert item.manifest_hash in sc.allowed[version], f"{item.ref} lists a hash nobody published"
        files = sc.contents[item.manifest_hash]
        root = Path(item.path)
        assert root.is_dir(), f"{item.ref} is listed but {root} does not exist"
        assert crash_stored_hash(root) == item.manifest_hash, f"{root} holds another manifest than the listed one"
        assert tree(root) == files, f"{root} does not hold the files of the listed manifest"
        assert (item.total_size, item.file_count) == (sum(map(len, files.values())), len(files))
        assert [info.path for info in manager.files(item.ref)] == list(files)
    if final:
        assert {version: item.manifest_hash for version, item in listed.items()} == sc.final


def crash_check_recoverable(sc: CrashScenario) -> None:
    """Weaker than crash_check_listed: every listed version is whole, in place or set aside as .<version>.old."""
    json.loads((sc.data_dir / "registry.json").read_bytes())
    listed = {item.ref.version: item for item in sc.make_manager().list_installed()}
    assert "v1" in listed
    for version, item in listed.items():
        assert item.manifest_hash in sc.allowed[version]
        copies = (Path(item.path), Path(item.path).parent / f".{version}.old")
        assert any(crash_copy_holds(copy, item.manifest_hash, sc.contents[item.manifest_hash]) for copy in copies), (
            f"{item.ref}: no complete copy of the listed manifest survived"
        )


def crash_staged_chunks(sc: CrashScenario) -> set[str]:
    """The chunks whose bytes the staging directory of the pull holds, right, at their first position."""
    staging = sc.data_dir / "org" / "big" / f".{sc.version}.staging"
    manifest = staging / ".test-app" / "manifest.json"
    if not manifest.is_file() or hashlib.sha256(manifest.read_bytes()).hexdigest() != sc.target:
        return set()
    doc = json.loads(manifest.read_bytes())
    stream = bytearray()
    for entry in doc["files"]:
        path = staging / entry["path"]
        data = path.read_bytes()[: entry["size"]] if path.is_file() and not path.is_symlink() else b""
        stream += data + bytes(entry["size"] - len(data))
    size = doc["chunk_size"]
    return {digest for position, digest in enumerate(doc["chunks"])
            if hashlib.sha256(stream[position * size : (position + 1) * size]).hexdigest() == digest}


def crash_assert_staging_used(sc: CrashScenario, counts: collections.Counter[str], staged: set[str],
                              before: collections.Counter[str], at_most_once: bool = True) -> None:
    """Chunks already right in the staging files were not downloaded again; none was downloaded twice."""
    fetched = {digest: counts[f"data/{digest}"] - before[f"data/{digest}"] for digest in sc.chunks}
    again = sorted(digest[:12] for digest in staged & set(sc.chunks) if fetched[digest])
    assert not again, f"verified chunks downloaded again: {again}"
    if at_most_once:
        assert all(count <= 1 for count in fetched.values()), sorted(fetched.values())[-3:]


def crash_resume(sc: CrashScenario, strict_leftovers: bool = False) -> None:
    """Run the interrupted pull again: it completes from the staging files and leaves nothing behind."""
    staged = crash_staged_chunks(sc)
    leftovers = crash_leftovers(sc.data_dir)
    before = collections.Counter(sc.parent_requests)
    entry = json.loads((sc.data_dir / "registry.json").read_bytes())["org"]["big"].get(sc.version, {})
    manager = sc.make_manager()
    try:
        installed = manager.pull(sc.ref, force=sc.force)
    except xm.AlreadyInstalledError as exc:  # the crash came after registry.json was committed
        assert entry.get("manifest_hash") == sc.target and not sc.force
        installed = exc.installed
    assert installed.manifest_hash == sc.target
    crash_assert_staging_used(sc, sc.parent_requests, staged, before)
    crash_check_listed(sc, final=True)
    assert sorted(os.listdir(sc.data_dir / "org" / "big")) == sorted(sc.final)  # no staging or old copy
    left = crash_leftovers(sc.data_dir)
    assert not [path for path in left if not path.endswith(".tmp")], left
    assert left <= leftovers, f"the resumed pull left files behind: {sorted(left - leftovers)}"
    if strict_leftovers and left:
        raise LeftoverNotCleaned(f"files left by the crash survive the next pull: {sorted(left)}")


def crash_verify(sc: CrashScenario, where: str) -> None:
    """Check the state a kill left, then resume. A version listed but not intact in place is raised last."""
    broken: ListedVersionNotIntact | None = None
    try:
        crash_check_listed(sc)
    except AssertionError as exc:
        broken = ListedVersionNotIntact(f"after the kill ({where}): {exc}")
    crash_check_recoverable(sc)
    crash_resume(sc)
    if broken is not None:
        raise broken


CRASH_MODES = ("progress", "before-write", "after-write", "close-file")
CRASH_STAGED = r"\.staging/(?!\.test-app/)"  # a model file being staged, not the staging's metadata


def crash_data_writes(when: str) -> list[list[str]]:
    """Hooks on the writes of chunk bytes into the staged files: os.pwrite, or on Windows
    (no os.pwrite) the os.write after an os.lseek."""
    return [["os", name, CRASH_STAGED, when] for name in ("pwrite", "write")]


CRASH_STEPS = {  # kill points of the install proper (after every chunk is verified and every file written)
    "manifest-json": ([["os", "replace", r"\.staging/\.test-app/manifest\.json\.\S+\.tmp ", "before"]], 1),
    "before-swap": ([["os", "rename", "", "before"]], 1),
    "between-renames": ([["os", "rename", r"/v1 ", "after"]], 1),  # installed v1 set aside as .v1.old
    "after-swap": ([["os", "rename", r"\.staging ", "after"]], 1),
    "registry-temp": ([["os", "replace", r"registry\.json\.\S+\.tmp ", "before"]], 1),
    "registry-replaced": ([["os", "replace", r"registry\.json\.\S+\.tmp ", "after"]], 1),
    "discard-old": ([["shutil", "rmtree", r"/\.v1\.old$", "before"]], 1),
}

CRASH_OPERATIONS: dict[str, int] = {}  # scenario -> file operations of an uninterrupted pull


class TestCrash:
    """SIGKILL at randomised and at chosen points of a pull; every run bounded by subprocess timeouts."""

    @pytest.mark.parametrize("seed", range(8))
    def test_kill_while_downloading_or_extracting(
        self, seed: int, registry_dir: Path, data_dir: Path, server: LoopbackServer,
        make_manager: Callable[..., xm.Manager]
    ) -> None:
        rng = random.Random(seed)
        sc = CrashScenario(("new", "update")[seed // 4 % 2], registry_dir, data_dir, server, make_manager)
        mode = CRASH_MODES[seed % 4]
        if mode == "progress":
            plan = sc.plan(progress_at=rng.randint(1, len(sc.chunks) - 1))
        elif mode in ("before-write", "after-write"):  # the staging files half written, a chunk half checked
            plan = sc.plan(hooks=crash_data_writes(mode.split("-")[0]), kill_at=rng.randint(1, len(sc.chunks)))
        else:  # the fsync of a finished file (the directories' fsyncs come after them all)
            file = CRASH_STAGED + r"\S+\.(bin|json|txt)$"
            plan = sc.plan(hooks=[["os", "fsync", file, rng.choice(["before", "after"])]],
                           kill_at=rng.randint(1, len(sc.files)))
        where = crash_expect_killed(crash_run_child(server, data_dir, plan))
        crash_check_listed(sc)  # nothing was swapped yet: the strict check must hold
        crash_verify(sc, where)

    @pytest.mark.parametrize("seed", range(3))
    def test_kill_from_outside_while_a_chunk_is_in_flight(
        self, seed: int, registry_dir: Path, data_dir: Path, server: LoopbackServer,
        make_manager: Callable[..., xm.Manager]
    ) -> None:
        sc = CrashScenario(("new", "update")[seed % 2], registry_dir, data_dir, server, make_manager)
        self.kill_in_flight(sc, server, random.Random(seed).randint(1, len(sc.chunks)))
        crash_verify(sc, "in flight")

    @pytest.mark.parametrize(
        ("scenario", "step"),
        [
            # ("new", "registry-temp") is test_temporary_files_of_a_crash_are_cleaned_by_the_next_pull[registry]
            *[("new", step) for step in ("before-swap", "after-swap", "registry-replaced")],
            ("update", "manifest-json"),
            ("update", "before-swap"),
            ("update", "between-renames"),
            ("update", "after-swap"),
            ("update", "registry-temp"),
            ("update", "registry-replaced"),
            ("update", "discard-old"),
            ("reinstall", "between-renames"),
            ("reinstall", "after-swap"),
        ],
    )
    def test_kill_at_each_install_step(
        self, scenario: str, step: str, registry_dir: Path, data_dir: Path, server: LoopbackServer,
        make_manager: Callable[..., xm.Manager]
    ) -> None:
        sc = CrashScenario(scenario, registry_dir, data_dir, server, make_manager)
        hooks, kill_at = CRASH_STEPS[step]
        plan = sc.plan(hooks=hooks, kill_at=kill_at)
        where = crash_expect_killed(crash_run_child(server, data_dir, plan))
        crash_verify(sc, where)

    @pytest.mark.parametrize("seed", range(3))
    def test_repeated_kills_at_random_file_operations(
        self, seed: int, registry_dir: Path, data_dir: Path, server: LoopbackServer, tmp_path: Path,
        make_manager: Callable[..., xm.Manager]
    ) -> None:
        """Up to three kills in a row, each at a random file operation (recovery included), then a full pull."""
        rng = random.Random(1000 + seed)
        sc = CrashScenario(("new", "update")[seed % 2], registry_dir, data_dir, server, make_manager)
        hooks = [["os", name, "", "before"] for name in ("open", "replace", "rename", "unlink", "rmdir", "mkdir",
                                                          "fsync", "pwrite", "write")]
        if sc.name not in CRASH_OPERATIONS:  # count the operations of an uninterrupted pull, on a copy
            rehearsal = tmp_path / "rehearsal"
            shutil.copytree(data_dir, rehearsal)
            counted = crash_run_child(server, rehearsal, sc.plan(hooks=hooks))
            assert counted.returncode == 0, counted.stderr
            CRASH_OPERATIONS[sc.name] = json.loads(counted.stdout)["events"]
        total = CRASH_OPERATIONS[sc.name]
        assert total > len(sc.chunks)
        for _ in range(3):
            staged = crash_staged_chunks(sc)
            before = collections.Counter(server.requests)
            result = crash_run_child(server, data_dir, sc.plan(hooks=hooks, kill_at=rng.randint(1, total)))
            if result.returncode == 0:
                break  # the kill point lay beyond what was left to do
            crash_expect_killed(result)
            crash_assert_staging_used(sc, server.requests, staged, before, at_most_once=False)
            crash_check_listed(sc)
            crash_check_recoverable(sc)
        crash_resume(sc)

    @pytest.mark.parametrize("target", ["registry", "manifest-cache"])
    def test_temporary_files_of_a_crash_are_cleaned_by_the_next_pull(
        self, target: str, registry_dir: Path, data_dir: Path, server: LoopbackServer,
        make_manager: Callable[..., xm.Manager]
    ) -> None:
        sc = CrashScenario("new", registry_dir, data_dir, server, make_manager)
        pattern = r"registry\.json\.\S+\.tmp " if target == "registry" else r"/cache/manifests/\S+\.tmp "
        crash_expect_killed(crash_run_child(server, data_dir,
                                            sc.plan(hooks=[["os", "replace", pattern, "before"]], kill_at=1)))
        assert any(path.endswith(".tmp") for path in crash_leftovers(data_dir))
        crash_resume(sc, strict_leftovers=True)

    @staticmethod
    def kill_in_flight(sc: CrashScenario, server: LoopbackServer, n: int) -> None:
        """SIGKILL the pulling child from outside while the server holds its n-th chunk request."""
        wanted = {f"data/{digest}" for digest in sc.chunks}
        lock, seen = threading.Lock(), [0]
        reached, release, finished = threading.Event(), threading.Event(), threading.Event()
        original = server.handle

        def handle(request: Any) -> None:
            held = False
            if request.path.lstrip("/") in wanted:
                with lock:
                    seen[0] += 1
                    held = seen[0] == n
            if held:
                reached.set()
                release.wait(10)
            try:
                original(request)
            finally:
                if held:
                    finished.set()

        server.handle = handle  # type: ignore[method-assign]
        plan = sc.plan()
        if WINDOWS:
            process = subprocess.Popen([*PYTHON, "-c", CRASH_CHILD, server.url, str(sc.data_dir), plan],
                                       cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert reached.wait(child_timeout(20)), "the child never asked for its chunk"
                kill(process)
                _, stderr = process.communicate(timeout=child_timeout(10))
            finally:
                process.kill()
                release.set()
            returncode = process.returncode
        else:  # a fork of a Python that has imported xprim_models already (see crash_run_child)
            pid = CRASH_ZYGOTE.start(CRASH_CHILD, [server.url, str(sc.data_dir), plan], env=dict(os.environ))
            CRASH_ZYGOTE.go()
            try:
                assert reached.wait(20), "the child never asked for its chunk"
                os.kill(pid, KILL_SIGNAL)
                result = CRASH_ZYGOTE.wait(10)
            finally:
                CRASH_ZYGOTE.abandon()  # the child, if it was not waited for
                release.set()
            returncode, stderr = result.returncode, result.stderr
        assert returncode == KILLED, stderr
        assert finished.wait(10)  # the held request is counted before the resume looks at the counters
        server.handle = original  # type: ignore[method-assign]


class TestPreflight:
    def test_not_enough_space_fails_before_any_chunk(self, manager: xm.Manager, model: dict[str, bytes],
                                                     server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
        import shutil

        usage = shutil.disk_usage(".")
        # A nearly full disk cannot be made for real here: the free space is what is mocked.
        # Chunks stream straight into the files: room for the files is enough.
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=6_000))
        expected = r"needs 6\.5 kB of disk space in \S+ but only 6 kB is free; free some space"
        with pytest.raises(xm.StorageError, match=expected):
            manager.pull("org/tiny v1")
        assert server.chunk_requests() == 1  # the manifest only
        assert manager.list_installed() == []

    def test_a_resumed_pull_needs_room_only_for_what_is_missing(
        self, make_manager: Callable[..., xm.Manager], model: dict[str, bytes], server: LoopbackServer,
        registry_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import shutil

        server.fail(chunk_paths(registry_dir)[4], Fault(status=500))
        with pytest.raises(xm.NetworkError):
            make_manager(retries=0).pull("org/tiny v1", concurrency=1)  # 4 KiB landed in staging
        usage = shutil.disk_usage(".")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=3 * 1024))
        # 6.5 kB of files less the 4 KiB already written: fits in 3 KiB
        assert make_manager().pull("org/tiny v1").total_size == 6514


# Updates of a model in 1 MiB chunks, config.json first as examples/publish.py writes it:
# each one publishes org/big v1 and a changed v2, pulls v1, then v2.
BIG_CHUNK = 1 << 20


@functools.cache
def big_files() -> dict[str, bytes]:
    return {"config.json": b'{"hidden": 4096, "n": 1}', "weights.bin": blob(6 * BIG_CHUNK + 12345, "weights"),
            "tokenizer.json": blob(70_000, "tokenizer")}


def publish_big(registry_dir: Path, version: str, files: dict[str, bytes]) -> None:
    publish.publish(str(registry_dir), "org", "big", version, files, chunk_size=BIG_CHUNK)


def fetched_chunks(server: LoopbackServer, before: collections.Counter[str], registry_dir: Path,
                   version: str) -> int:
    """The chunks of ``version`` requested since ``before``."""
    wanted = set(chunk_paths(registry_dir, version, "big"))
    return sum(count for path, count in (server.requests - before).items() if path in wanted)


def unique_allocation(*roots: Path) -> int:
    """The disk space the files under ``roots`` take, each file counted once however many links it has."""
    seen: dict[tuple[int, int], int] = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and ".test-app" not in path.parts:
                status = path.stat()
                seen[(status.st_dev, status.st_ino)] = disk_usage(path)
    return sum(seen.values())


class TestUpdates:
    """Updates cost what changed: chunks found in installed files by path, identical files
    sharing storage, and a preflight that asks only for what will be written."""

    def update(self, manager: xm.Manager, server: LoopbackServer, registry_dir: Path,
               v2: dict[str, bytes]) -> tuple[int, Path, Path]:
        publish_big(registry_dir, "v1", big_files())
        publish_big(registry_dir, "v2", v2)
        old = Path(manager.pull("org/big v1").path)
        before = server.requests.copy()
        new = Path(manager.pull("org/big v2").path)
        assert tree(new) == dict(sorted(v2.items()))
        return fetched_chunks(server, before, registry_dir, "v2"), old, new

    def test_a_small_file_before_the_weights_grows(self, manager: xm.Manager, server: LoopbackServer,
                                                   registry_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        files = big_files()
        v2 = {**files, "config.json": files["config.json"] + b', "extra": 1}'}  # 15 bytes longer: all shifted
        written = [0]
        name = "pwrite" if hasattr(os, "pwrite") else "write"  # Windows: os.lseek, then os.write
        original = getattr(os, name)

        def counted(fd: int, data: bytes, *offset: int) -> int:
            count: int = original(fd, data, *offset)
            written[0] += count
            return count

        monkeypatch.setattr(os, name, counted)  # the chunk bytes written into files (and, by os.write, documents)
        fetched, old, new = self.update(manager, server, registry_dir, v2)
        assert fetched <= 2  # of 7: the rest is found in v1's files by path
        # Its weights are byte-identical to v1's, shifted against the chunks: shared, not written.
        assert os.path.samefile(old / "weights.bin", new / "weights.bin")
        assert written[0] < sum(len(data) for data in files.values()) + 2 * BIG_CHUNK  # v1, then little

    def test_a_shifted_file_that_differs_where_it_was_not_hashed_gets_its_own_copy(
        self, manager: xm.Manager, server: LoopbackServer, registry_dir: Path
    ) -> None:
        files = big_files()
        weights = bytearray(files["weights.bin"])
        weights[5] ^= 0xFF  # in the first chunk, which v1 does not hold: known only once it arrives
        v2 = {**files, "config.json": files["config.json"] + b', "extra": 1}', "weights.bin": bytes(weights)}
        fetched, old, new = self.update(manager, server, registry_dir, v2)
        assert fetched <= 2
        assert not os.path.samefile(old / "weights.bin", new / "weights.bin")
        assert (old / "weights.bin").read_bytes() == files["weights.bin"]  # never written through
        assert manager.verify("org/big v1").ok and manager.verify("org/big v2").ok

    def test_shifted_files_are_compared_where_they_meet(self, manager: xm.Manager, server: LoopbackServer,
                                                        registry_dir: Path) -> None:
        big = big_files()
        files = {"config.json": big["config.json"], "weights.bin": big["weights.bin"],
                 "tail.bin": blob(3 * BIG_CHUNK, "tail")}  # weights.bin and tail.bin meet inside a chunk
        publish_big(registry_dir, "v1", files)
        weights = bytearray(files["weights.bin"])
        weights[-1] ^= 0xFF  # in the chunk where weights.bin ends and tail.bin begins: neither holds it whole
        v2 = {**files, "config.json": files["config.json"] + b', "extra": 1}', "weights.bin": bytes(weights)}
        publish_big(registry_dir, "v2", v2)
        old = Path(manager.pull("org/big v1").path)
        new = Path(manager.pull("org/big v2").path)
        assert tree(new) == dict(sorted(v2.items()))
        assert os.path.samefile(old / "tail.bin", new / "tail.bin")
        assert (old / "weights.bin").read_bytes() == files["weights.bin"]

    def test_a_zero_chunk_is_not_assumed_where_a_shared_file_lies(
        self, manager: xm.Manager, registry_dir: Path
    ) -> None:
        big = big_files()
        tail = bytes(2 * BIG_CHUNK) + blob(BIG_CHUNK, "tail")
        files = {"config.json": big["config.json"], "weights.bin": big["weights.bin"], "tail.bin": tail}
        publish_big(registry_dir, "v1", files)
        config = big["config.json"] + b', "extra": 1}'
        last = (len(config) + len(big["weights.bin"])) % BIG_CHUNK  # its bytes in the chunk it shares with tail.bin
        weights = big["weights.bin"][:-last] + bytes(last)  # now zeros there, as tail.bin begins
        v2 = {**files, "config.json": config, "weights.bin": weights}
        publish_big(registry_dir, "v2", v2)
        manifest = manifest_of(registry_dir, "org", "big", "v2")
        zero = hashlib.sha256(bytes(BIG_CHUNK)).hexdigest()
        assert manifest["chunks"].count(zero) >= 2  # where weights.bin meets tail.bin, and inside tail.bin
        old = Path(manager.pull("org/big v1").path)
        new = Path(manager.pull("org/big v2").path)
        assert tree(new) == dict(sorted(v2.items()))
        assert (old / "weights.bin").read_bytes() == big["weights.bin"]

    def test_the_weights_header_grows(self, manager: xm.Manager, server: LoopbackServer,
                                      registry_dir: Path) -> None:
        files = big_files()
        weights = files["weights.bin"]
        v2 = {**files, "weights.bin": weights[:64] + b"h" * 100 + weights[64:]}  # tensors line up with the end
        fetched, _, _ = self.update(manager, server, registry_dir, v2)
        assert fetched <= 3

    def test_a_mebibyte_of_the_weights_changes(self, manager: xm.Manager, server: LoopbackServer,
                                               registry_dir: Path) -> None:
        files = big_files()
        weights = bytearray(files["weights.bin"])
        middle = len(weights) // 2
        weights[middle : middle + BIG_CHUNK] = blob(BIG_CHUNK, "changed")
        fetched, old, new = self.update(manager, server, registry_dir, {**files, "weights.bin": bytes(weights)})
        assert fetched <= 2
        for name in ("config.json", "tokenizer.json"):  # unchanged files share v1's storage
            assert os.path.samefile(old / name, new / name)
        assert not os.path.samefile(old / "weights.bin", new / "weights.bin")
        assert manager.verify("org/big v1").ok and manager.verify("org/big v2").ok

    def test_the_preflight_asks_only_for_what_will_be_written(
        self, manager: xm.Manager, make_manager: Callable[..., xm.Manager], server: LoopbackServer,
        registry_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        files = big_files()
        weights = bytearray(files["weights.bin"])
        weights[100] ^= 0xFF  # one chunk differs
        publish_big(registry_dir, "v1", files)
        publish_big(registry_dir, "v2", {**files, "weights.bin": bytes(weights)})
        manager.pull("org/big v1")
        usage = shutil.disk_usage(".")
        # A nearly full disk cannot be made for real here: the free space is what is mocked.
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=3 * BIG_CHUNK))
        with pytest.raises(xm.StorageError, match=r"needs 6\.\d MB of disk space in \S+ but only 3\.1 MB is free"):
            xm.Manager(manager.config, data_dir=tmp_path / "empty").pull("org/big v2")  # the whole model
        assert manager.pull("org/big v2").total_size == len(weights) + 70_024  # 1 MiB to write: it fits

    def test_an_alias_and_its_target_cost_the_disk_once(self, manager: xm.Manager, server: LoopbackServer,
                                                        registry_dir: Path) -> None:
        publish_big(registry_dir, "v1", big_files())
        publish.add_alias(str(registry_dir), "org", "big", "latest", "v1")
        target = Path(manager.pull("org/big v1").path)
        before = server.chunk_requests()
        alias = Path(manager.pull("org/big latest").path)
        assert server.chunk_requests() == before  # its manifest, v1's, is in the manifest cache
        for name in big_files():
            assert os.path.samefile(target / name, alias / name)
        model_size = sum(len(data) for data in big_files().values())
        assert unique_allocation(target, alias) < model_size * 1.1
        assert manager.verify("org/big v1").ok and manager.verify("org/big latest").ok

    def test_removing_one_version_keeps_the_other(self, manager: xm.Manager, registry_dir: Path) -> None:
        publish_big(registry_dir, "v1", big_files())
        publish.add_alias(str(registry_dir), "org", "big", "latest", "v1")
        target = Path(manager.pull("org/big v1").path)
        alias = Path(manager.pull("org/big latest").path)
        assert os.path.samefile(target / "weights.bin", alias / "weights.bin")
        manager.remove("org/big latest")
        assert not alias.exists()
        assert tree(target) == dict(sorted(big_files().items()))
        assert manager.verify("org/big v1").ok

    def test_repairing_a_shared_file_replaces_it_and_leaves_the_other_version_alone(
        self, manager: xm.Manager, registry_dir: Path
    ) -> None:
        publish_big(registry_dir, "v1", big_files())
        publish.add_alias(str(registry_dir), "org", "big", "latest", "v1")
        target = Path(manager.pull("org/big v1").path)
        alias = Path(manager.pull("org/big latest").path)
        shared = target / "weights.bin"
        with open(shared, "r+b") as handle:  # damage written through the link reaches both
            handle.seek(10)
            handle.write(b"\0" * 8)
        damaged, inode = shared.read_bytes(), shared.stat().st_ino
        assert manager.verify("org/big latest", repair=True) == xm.VerifyResult(
            sharing_damaged_chunk=("config.json", "weights.bin"), repaired=("weights.bin",))
        assert not os.path.samefile(shared, alias / "weights.bin")  # replaced by rename, not written through
        assert (alias / "weights.bin").read_bytes() == big_files()["weights.bin"]
        assert shared.stat().st_ino == inode and shared.read_bytes() == damaged  # v1 is checked on its own
        # The damaged chunk spans both files: either may hold the damage.
        assert manager.verify("org/big v1") == xm.VerifyResult(sharing_damaged_chunk=("config.json", "weights.bin"))
        assert manager.verify("org/big latest").ok

    def test_repair_finds_chunks_by_path_too(self, make_manager: Callable[..., xm.Manager],
                                             server: LoopbackServer, registry_dir: Path) -> None:
        files = big_files()
        v2 = {**files, "config.json": files["config.json"] + b', "extra": 1}'}  # every chunk shifted
        manager = make_manager(copy_files=True)  # v2's weights its own, so damage stays in v2
        _, _, new = self.update(manager, server, registry_dir, v2)
        with open(new / "weights.bin", "r+b") as handle:
            handle.seek(3 * BIG_CHUNK)
            handle.write(b"\0" * 8)
        before = server.chunk_requests()
        assert manager.verify("org/big v2", repair=True).repaired == ("weights.bin",)
        assert server.chunk_requests() == before  # v1 holds no such chunk by hash, but its weights.bin by path
        assert tree(new) == dict(sorted(v2.items()))

    def test_a_link_planted_in_an_installed_version_is_not_shared(
        self, manager: xm.Manager, registry_dir: Path, tmp_path: Path
    ) -> None:
        publish_big(registry_dir, "v1", big_files())
        publish.add_alias(str(registry_dir), "org", "big", "latest", "v1")
        target = Path(manager.pull("org/big v1").path)
        outside = tmp_path / "outside.json"  # the same bytes, so only the link gives it away
        outside.write_bytes(big_files()["tokenizer.json"])
        (target / "tokenizer.json").unlink()
        symlink(outside, target / "tokenizer.json")
        alias = Path(manager.pull("org/big latest").path)
        assert not (alias / "tokenizer.json").is_symlink()
        assert not os.path.samefile(alias / "tokenizer.json", outside) and outside.stat().st_nlink == 1
        assert (alias / "tokenizer.json").read_bytes() == big_files()["tokenizer.json"]
        assert os.path.samefile(target / "weights.bin", alias / "weights.bin")  # the intact files are shared

    def test_no_link_is_made_through_a_linked_directory(self, manager: xm.Manager, model: dict[str, bytes],
                                                        tmp_path: Path) -> None:
        target = Path(manager.pull("org/tiny v1").path)
        outside = tmp_path / "outside"  # the same bytes, so only the linked directory gives it away
        shutil.copytree(target / "sub", outside)
        shutil.rmtree(target / "sub")
        symlink(outside, target / "sub")
        alias = Path(manager.pull("org/tiny latest").path)
        assert (outside / "tokenizer.json").stat().st_nlink == 1
        assert tree(alias) == dict(sorted(model.items()))
        assert os.path.samefile(target / "model.safetensors", alias / "model.safetensors")  # the others are shared

    @pytest.mark.parametrize("shifted", [False, True], ids=["aligned", "shifted"])
    def test_no_link_is_made_to_an_installed_file_that_grew(self, manager: xm.Manager, server: LoopbackServer,
                                                            registry_dir: Path, shifted: bool) -> None:
        files = big_files()
        publish_big(registry_dir, "v1", files)
        # Aligned, tokenizer.json is linked as planned; shifted (config.json grows, and tokenizer.json
        # lies in no chunk wholly), it is written, then found identical and linked.
        v2 = {**files, "config.json": files["config.json"] + b', "extra": 1}'} if shifted else files
        publish_big(registry_dir, "v2", v2)
        old = Path(manager.pull("org/big v1").path)
        with open(old / "tokenizer.json", "ab") as handle:  # what the manifest covers still hashes right
            handle.write(b"appended by someone")
        new = Path(manager.pull("org/big v2").path)
        assert tree(new) == dict(sorted(v2.items()))
        assert not os.path.samefile(old / "tokenizer.json", new / "tokenizer.json")
        assert manager.verify("org/big v2").ok

    def test_prune_counts_only_what_it_frees(self, make_manager: Callable[..., xm.Manager], data_dir: Path,
                                             server: LoopbackServer, registry_dir: Path) -> None:
        files = big_files()
        weights = bytearray(files["weights.bin"])
        weights[3 * BIG_CHUNK] ^= 0xFF
        publish_big(registry_dir, "v1", files)
        publish_big(registry_dir, "v2", {**files, "weights.bin": bytes(weights)})
        manager = make_manager(retries=0)
        manager.pull("org/big v1")
        new_chunks = set(chunk_paths(registry_dir, "v2", "big")) - set(chunk_paths(registry_dir, "v1", "big"))
        server.fail(new_chunks.pop(), Fault(status=500))
        with pytest.raises(xm.NetworkError):
            manager.pull("org/big v2")
        staging = data_dir / "org" / "big" / ".v2.staging"
        assert os.path.samefile(staging / "config.json", Path(manager.path("org/big v1")) / "config.json")
        # Its own files, written or not; the files it shares with v1 free nothing.
        expected = disk_usage(staging / "weights.bin") + disk_usage(staging / ".test-app" / "manifest.json")
        assert manager.prune_cache() == expected

    @pytest.mark.parametrize("how", ["copy_files", "links fail"])
    def test_copies_where_files_cannot_be_linked(self, make_manager: Callable[..., xm.Manager], how: str,
                                                 server: LoopbackServer, registry_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        publish_big(registry_dir, "v1", big_files())
        publish.add_alias(str(registry_dir), "org", "big", "latest", "v1")
        if how == "links fail":  # as on FAT, or across devices
            def refuse(*args: Any, **kwargs: Any) -> None:
                raise OSError(errno.EPERM, os.strerror(errno.EPERM))

            monkeypatch.setattr(os, "link", refuse)
        manager = make_manager(copy_files=how == "copy_files")
        target = Path(manager.pull("org/big v1").path)
        before = server.chunk_requests()
        alias = Path(manager.pull("org/big latest").path)
        assert server.chunk_requests() == before  # copied from v1, verified by hash
        for name in big_files():
            assert not os.path.samefile(target / name, alias / name)
        assert tree(alias) == tree(target) == dict(sorted(big_files().items()))
        files = big_files()
        v2 = {**files, "config.json": files["config.json"] + b', "extra": 1}'}  # every chunk shifted
        publish_big(registry_dir, "v2", v2)
        requested = server.requests.copy()
        new = Path(manager.pull("org/big v2").path)
        assert fetched_chunks(server, requested, registry_dir, "v2") <= 2  # copied from v1's files by path
        assert tree(new) == dict(sorted(v2.items()))
        assert not os.path.samefile(target / "weights.bin", new / "weights.bin")


class TestVerify:
    def damage(self, root: Path) -> None:
        weights = bytearray((root / "model.safetensors").read_bytes())
        weights[3000] ^= 0xFF  # chunk 3 of 7, inside the big file only
        (root / "model.safetensors").write_bytes(bytes(weights))
        (root / "sub" / "tokenizer.json").unlink()

    def test_intact_model_verifies(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        manager.pull("org/tiny v1")
        assert manager.verify("org/tiny v1").ok

    def test_damage_is_reported_and_repaired_from_the_damaged_chunks_only(
        self, manager: xm.Manager, model: dict[str, bytes], server: LoopbackServer, registry_dir: Path
    ) -> None:
        root = Path(manager.pull("org/tiny v1").path)
        self.damage(root)
        untouched = (root / "config.json").stat().st_ino
        # config.json shares chunk 5 with the missing tokenizer, so its bytes cannot be vouched for.
        assert listed(manager.verify("org/tiny v1")) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
        before = server.requests.copy()
        assert list(manager.verify("org/tiny v1", repair=True).repaired) == ["model.safetensors", "sub/tokenizer.json"]
        assert tree(root) == dict(sorted(model.items()))
        fetched = server.requests - before
        chunks = chunk_paths(registry_dir)
        # chunk 3 (the flipped byte) and chunks 5-7 (the tokenizer's 1500 bytes): nothing else
        assert set(fetched) == {chunks[2], chunks[4], chunks[5], chunks[6]}
        assert (root / "config.json").stat().st_ino == untouched  # not rewritten
        assert manager.verify("org/tiny v1").ok

    def test_file_sharing_a_damaged_chunk_is_not_rewritten(self, manager: xm.Manager, model: dict[str, bytes]
                                                           ) -> None:
        root = Path(manager.pull("org/tiny v1").path)
        (root / "config.json").write_bytes(b'{"layers": 7}\n')  # same size, other bytes
        assert listed(manager.verify("org/tiny v1")) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
        inode = (root / "model.safetensors").stat().st_ino
        assert list(manager.verify("org/tiny v1", repair=True).repaired) == ["config.json"]
        assert (root / "model.safetensors").stat().st_ino == inode
        assert tree(root) == dict(sorted(model.items()))

    def test_repair_seeds_from_another_installed_version(self, make_manager: Callable[..., xm.Manager],
                                                         model: dict[str, bytes], server: LoopbackServer) -> None:
        manager = make_manager()
        root = Path(manager.pull("org/tiny v1").path)
        make_manager(copy_files=True).pull("org/tiny v2")  # its own copy: damage written through a link hits both
        weights = bytearray((root / "model.safetensors").read_bytes())
        weights[10] ^= 0xFF
        weights[4000] ^= 0xFF
        (root / "model.safetensors").write_bytes(bytes(weights))
        before = server.chunk_requests()
        manager.verify("org/tiny v1", repair=True)
        assert server.chunk_requests() == before  # every damaged chunk was in v2
        assert tree(root) == dict(sorted(model.items()))

    def test_damaged_stored_manifest_is_restored(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        root = Path(manager.pull("org/tiny v1").path)
        (root / ".test-app" / "manifest.json").write_text("{}")
        assert listed(manager.verify("org/tiny v1")) == [".test-app/manifest.json"]
        assert list(manager.verify("org/tiny v1", repair=True).repaired) == [".test-app/manifest.json"]
        assert manager.verify("org/tiny v1").ok

    def test_repair_restores_a_missing_empty_file_and_metadata_directory(
        self, manager: xm.Manager, registry_dir: Path
    ) -> None:
        files = {"a": b"12345", "empty": b"", "b": b"67890"}
        publish.publish(str(registry_dir), "org", "small", "v1", files, chunk_size=16)
        root = Path(manager.pull("org/small v1").path)
        (root / "empty").unlink()
        assert listed(manager.verify("org/small v1")) == ["empty"]
        assert list(manager.verify("org/small v1", repair=True).repaired) == ["empty"]
        (root / "a").write_bytes(b"xxxxx")
        shutil.rmtree(root / ".test-app")
        assert list(manager.verify("org/small v1", repair=True).repaired) == [".test-app/manifest.json", "a"]
        assert tree(root) == dict(sorted(files.items())) and manager.verify("org/small v1").ok

    def test_repair_does_not_write_through_a_linked_directory(self, manager: xm.Manager, model: dict[str, bytes],
                                                              tmp_path: Path) -> None:
        root = Path(manager.pull("org/tiny v1").path)
        outside = tmp_path / "outside"
        outside.mkdir()
        shutil.rmtree(root / "sub")
        symlink(outside, root / "sub")
        with pytest.raises(xm.StorageError, match="is a symbolic link"):
            manager.verify("org/tiny v1", repair=True)
        assert list(outside.iterdir()) == []

    def test_verify_checks_its_options(self, manager: xm.Manager, model: dict[str, bytes]) -> None:
        manager.pull("org/tiny v1")
        with pytest.raises(ValueError, match="concurrency"):
            manager.verify("org/tiny v1", repair=True, concurrency=0)

    def test_cli_repair_without_a_registry_configured_or_recorded_fails_before_it_starts(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        cli_install(server, data_dir, "v1")
        record = json.loads((data_dir / "registry.json").read_text())
        del record["org"]["tiny"]["v1"]["registry_url"]  # as the Go original installs
        (data_dir / "registry.json").write_text(json.dumps(record))
        self.damage(data_dir / "org" / "tiny" / "v1")
        before = tree(data_dir / "org" / "tiny" / "v1")
        repair = cli("verify", "--repair", data_dir=data_dir)
        assert repair.returncode == 1
        assert repair.stderr == (
            "error: no registry URL is configured: give --registry URL, or set XPRIM_MODELS_REGISTRY_URL\n")
        assert tree(data_dir / "org" / "tiny" / "v1") == before

    def test_cli_verify_exit_codes(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1")
        assert cli("verify", registry=server, data_dir=data_dir).stdout == "org/tiny v1: ok\n"
        self.damage(data_dir / "org" / "tiny" / "v1")
        damaged = cli("verify", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert damaged.returncode == 6
        assert damaged.stdout == (
            "org/tiny v1: 2 files damaged or missing\n  model.safetensors\n  sub/tokenizer.json\n"
            "org/tiny v1: 1 file sharing a damaged chunk (perhaps intact: the chunk's hash cannot say which of "
            "its files holds the damage)\n  config.json\n"
            "To repair it: xprim-models verify org/tiny v1 --repair\n")
        (result,) = cli_document(cli("verify", "org/tiny v1", "--json", registry=server, data_dir=data_dir))["results"]
        assert (result["damaged"], result["sharing_damaged_chunk"]) == (
            ["model.safetensors", "sub/tokenizer.json"], ["config.json"])
        repaired = cli("verify", "--repair", "--quiet", registry=server, data_dir=data_dir)
        assert (repaired.returncode, repaired.stdout) == (
            0, "org/tiny v1: 2 files repaired\n  model.safetensors\n  sub/tokenizer.json\n")
        verified = cli("--json", "verify", registry=server, data_dir=data_dir)
        assert json.loads(verified.stdout)["results"][0]["damaged"] == []


def windows_file_call(path: Path, mode: str, function: str, *args: Any) -> None:
    """Call the kernel32 ``function`` (GetFileInformationByHandleEx, DeviceIoControl) on a
    handle of the file ``path`` opened with ``mode``, followed by ``args``; fail on failure."""
    import ctypes
    import msvcrt

    call = getattr(ctypes.WinDLL("kernel32", use_last_error=True), function)  # type: ignore[attr-defined,unused-ignore]
    with open(path, mode) as handle:
        if not call(ctypes.c_void_p(msvcrt.get_osfhandle(handle.fileno())), *args):  # type: ignore[attr-defined,unused-ignore]
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined,unused-ignore]


def disk_usage(path: Path) -> int:
    """The disk space a file takes: its allocated blocks; on Windows, which keeps no
    st_blocks, the AllocationSize of its FILE_STANDARD_INFO."""
    if not WINDOWS:
        return path.lstat().st_blocks * 512
    import ctypes

    info = (ctypes.c_int64 * 3)()  # AllocationSize, EndOfFile, then the link count and flags
    windows_file_call(path, "rb", "GetFileInformationByHandleEx", 1, info, ctypes.c_uint32(ctypes.sizeof(info)))
    return info[0]


def make_sparse(path: Path) -> None:
    """Let the file ``path`` keep holes: Windows fills what a file is extended by, unless
    it is marked sparse (FSCTL_SET_SPARSE); POSIX file systems keep holes unasked."""
    if WINDOWS:
        import ctypes

        returned = ctypes.c_uint32()
        windows_file_call(path, "r+b", "DeviceIoControl", ctypes.c_uint32(0x900C4), None, ctypes.c_uint32(0), None,
                          ctypes.c_uint32(0), ctypes.byref(returned), None)


class TestPrune:
    def test_prune_deletes_staging_and_empty_directories(self, manager: xm.Manager, data_dir: Path) -> None:
        staging = data_dir / "org" / "tiny" / ".v1.staging"
        staging.mkdir(parents=True)
        (staging / "half").write_bytes(b"x" * 7)
        (data_dir / "org" / "empty").mkdir()
        on_disk = disk_usage(staging / "half")
        assert manager.prune_cache() == on_disk
        assert not (data_dir / "org").exists()
        assert manager.prune_cache() == 0

    def test_prune_waits_for_a_running_pull(self, manager: xm.Manager, model: dict[str, bytes],
                                            server: LoopbackServer, registry_dir: Path, data_dir: Path,
                                            logged: Callable[[str], threading.Event]) -> None:
        held = server.hold(chunk_paths(registry_dir)[4])
        arrived, release = held.arrived, held.release
        results: list[object] = []
        puller = threading.Thread(target=lambda: results.append(manager.pull("org/tiny v1", concurrency=1)))
        puller.start()
        assert arrived.wait(child_timeout(20))
        assert (data_dir / "org" / "tiny" / ".v1.staging").is_dir()  # the pull is under way
        pruned, waiting = threading.Event(), logged("Waiting for another download of org/tiny to finish")

        def prune() -> None:
            manager.prune_cache()
            pruned.set()

        pruner = threading.Thread(target=prune)
        pruner.start()
        assert waiting.wait(20)  # deleting now would pull the chunks from under the pull
        assert not pruned.is_set()
        release.set()
        puller.join(30)
        pruner.join(30)
        assert pruned.is_set() and isinstance(results[0], xm.InstalledModel)
        assert tree(data_dir / "org" / "tiny" / "v1") == dict(sorted(model.items()))

    def test_prune_counts_only_what_it_deleted(self, manager: xm.Manager, model: dict[str, bytes],
                                               data_dir: Path) -> None:
        installed = manager.pull("org/tiny v1")
        os.rename(installed.path, data_dir / "org" / "tiny" / ".v1.old")  # a crash between a swap's renames
        assert manager.prune_cache() == 0  # the old copy was put back, not deleted
        assert tree(Path(installed.path)) == dict(sorted(model.items()))

    def test_partial_file_of_a_live_writer_is_kept(self, manager: xm.Manager, model: dict[str, bytes],
                                                   data_dir: Path) -> None:
        # A writer in another PID namespace (or one whose process id another process took):
        # its process id means nothing here, its open file does.
        child = subprocess.Popen([*PYTHON, "-c", "pass"])
        child.wait()
        dead_pid = child.pid  # exited and reaped
        cache = data_dir / "cache" / "manifests"
        cache.mkdir(parents=True)
        held = cache / f"{'d' * 64}.{dead_pid}.1.tmp"
        gone = cache / f"{'e' * 64}.{dead_pid}.1.tmp"
        held.write_bytes(b"being written")
        gone.write_bytes(b"left by a crash")
        with open(held, "rb") as handle:
            if not WINDOWS:  # writers lock their files; Windows refuses to delete an open one anyway
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            manager.pull("org/tiny v1")
            assert held.exists() and not gone.exists()

    def test_prune_removes_empty_model_and_group_directories(self, manager: xm.Manager, model: dict[str, bytes],
                                                             data_dir: Path, tmp_path: Path) -> None:
        manager.pull("org/tiny v1")
        (data_dir / "org" / "other" / ".v1.staging").mkdir(parents=True)  # an interrupted pull's leftover
        (data_dir / "lone" / "model").mkdir(parents=True)
        outside = tmp_path / "outside"
        (outside / "model").mkdir(parents=True)
        linked = symlink(outside, data_dir / "linked", or_skip=False)
        if linked:
            symlink(outside / "model", data_dir / "org" / "link", or_skip=False)
        manager.prune_cache()
        assert tree(data_dir / "org" / "tiny" / "v1") == dict(sorted(model.items()))
        assert not (data_dir / "org" / "other").exists() and not (data_dir / "lone").exists()
        assert (outside / "model").is_dir()  # links are neither followed nor removed
        assert not linked or ((data_dir / "linked").is_symlink() and (data_dir / "org" / "link").is_symlink())
        manager.remove("org/tiny v1")
        if linked:
            os.unlink(data_dir / "org" / "link")
        manager.prune_cache()
        assert not (data_dir / "org").exists()
        assert (data_dir / "linked").is_symlink() == linked

    @pytest.mark.parametrize("group", ["..", "cache"])
    def test_nothing_is_deleted_while_registry_json_cannot_be_read(
            self, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path, data_dir: Path,
            group: str) -> None:
        cli_install(server, data_dir, "latest")
        registry = data_dir / "registry.json"
        good = registry.read_text()
        registry.write_text(good.replace('"org"', json.dumps(group)))  # the installed version is no longer named
        installed = data_dir / "org" / "tiny" / "latest"
        for command in (["prune"], ["remove", "org/tiny", "latest"],
                        ["verify", "org/tiny", "latest", "--repair"], ["pull", "org/tiny", "latest"]):
            result = cli(*command, registry=server, data_dir=data_dir)
            assert result.returncode == 7, (command, result.stderr)
            assert f"{registry} is corrupt" in result.stderr
            assert "nothing was deleted" in result.stderr or command[0] == "pull"  # a pull fails before
            assert tree(installed) == dict(sorted(model.items())), command
        # The way out the message gives: with registry.json moved away, a pull adopts the files.
        registry.rename(data_dir / "registry.json.bad")
        chunks = chunk_paths(registry_dir)
        fetched = [server.requests[path] for path in chunks]
        assert cli("pull", "org/tiny", "latest", registry=server, data_dir=data_dir).returncode == 0
        assert [server.requests[path] for path in chunks] == fetched  # not one chunk downloaded again
        assert tree(installed) == dict(sorted(model.items()))

    def test_cli_prune(self, server: LoopbackServer, data_dir: Path) -> None:
        staging = data_dir / "org" / "tiny" / ".v1.staging"
        staging.mkdir(parents=True)
        (staging / "half").write_bytes(b"x" * 8192)
        freed = xm._format_size(disk_usage(staging / "half"))
        assert cli("prune", registry=server, data_dir=data_dir).stdout == f"Freed {freed}\n"
        assert cli("prune", registry=server, data_dir=data_dir).stdout == "Nothing to prune\n"

    def test_prune_reports_the_disk_space_of_sparse_files(self, manager: xm.Manager, data_dir: Path) -> None:
        staging = data_dir / "org" / "tiny" / ".v1.staging"
        staging.mkdir(parents=True)
        weights = staging / "weights.bin"
        weights.touch()
        make_sparse(weights)
        with open(weights, "r+b") as file:  # 64 MiB long, one 64 KiB block written
            file.truncate(64 << 20)
            file.write(b"x" * (64 << 10))
        expected = disk_usage(weights)
        if expected >= 8 << 20:
            pytest.skip("this file system does not keep files sparse")
        assert expected >= 64 << 10
        assert manager.prune_cache() == expected  # not the apparent 64 MiB
        assert not staging.exists()


# --- Export ---------------------------------------------------------------------------


def objects_needed(data_dir: Path, *refs: str) -> set[str]:
    """The data/ names the installed versions ``refs`` ("org/tiny v1") need: manifests and chunks."""
    names = set()
    for ref in refs:
        group_model, version = ref.split()
        raw = (data_dir / group_model / version / ".test-app" / "manifest.json").read_bytes()
        names |= {hashlib.sha256(raw).hexdigest(), *json.loads(raw)["chunks"]}
    return names


class TestExport:
    """``Manager.export`` and ``export REF... --to DIR`` (README: Moving models)."""

    def test_round_trip_into_an_empty_data_dir_with_no_server(
        self, manager: xm.Manager, server: LoopbackServer, model: dict[str, bytes], data_dir: Path, tmp_path: Path
    ) -> None:
        refs = ["org/tiny v1", "org/tiny latest", "org/tiny v2"]
        for ref in refs:
            manager.pull(ref)
        export = tmp_path / "usb" / "models"
        exported = manager.export(refs, export)
        assert [str(item.ref) for item in exported] == refs
        server.close()
        index = json.loads((export / "models.json").read_text())
        assert index["org"]["tiny"]["latest"] == {"alias": "v1"}
        assert set(index["org"]["tiny"]) == {"v1", "v2", "latest"}
        assert set(os.listdir(export / "data")) == objects_needed(data_dir, *refs)  # exactly, no temporaries
        elsewhere = tmp_path / "elsewhere"
        for ref in refs:
            result = cli("-q", "pull", *ref.split(), registry=export, data_dir=elsewhere)
            assert result.returncode == 0, result.stderr
            version = ref.split()[1]
            assert tree(elsewhere / "org" / "tiny" / version) == tree(data_dir / "org" / "tiny" / version)
            manifest = Path(".xprim-models", "manifest.json")
            assert (elsewhere / "org/tiny" / version / manifest).read_bytes() == \
                (data_dir / "org/tiny" / version / ".test-app" / "manifest.json").read_bytes()
        listed = {item["version"]: item for item in cli_document(
            cli("--json", "list", data_dir=elsewhere))["models"]}
        assert listed["latest"]["alias_of"] == "v1" and listed["v1"]["registry_url"] == str(export)

    def test_the_export_is_servable_over_http(
        self, manager: xm.Manager, server: LoopbackServer, model: dict[str, bytes], tmp_path: Path
    ) -> None:
        manager.pull("org/tiny latest")
        manager.export(["org/tiny"], tmp_path / "export")  # every installed version of org/tiny
        served = LoopbackServer(tmp_path / "export")
        try:
            fresh = xm.Manager(xm.Config("test-app", served.url, tmp_path / "fresh"), retry_backoff=0.01)
            installed = fresh.pull("org/tiny latest")
            assert (installed.alias_of, tree(Path(installed.path))) == ("v1", MODEL_FILES)
            pinned = fresh.pull("org/tiny v1", pin=installed.manifest_hash)
            assert tree(Path(pinned.path)) == MODEL_FILES
        finally:
            served.close()

    def test_merge_into_an_existing_export(
        self, manager: xm.Manager, model: dict[str, bytes], registry_dir: Path, data_dir: Path, tmp_path: Path
    ) -> None:
        export = tmp_path / "export"
        publish.publish(str(export), "team", "own", "v1", {"own.bin": b"someone else's"}, metadata={"k": "v"})
        theirs = json.loads((export / "models.json").read_text())["team"]
        their_objects = set(os.listdir(export / "data"))
        manager.pull("org/tiny v1")
        manager.export(["org/tiny v1"], export)
        first = {name: (export / "data" / name).stat() for name in os.listdir(export / "data")}
        publish.publish(str(registry_dir), "org", "other", "v1", {**MODEL_FILES, "extra.txt": b"more"},
                        chunk_size=1024)
        manager.pull("org/other v1")
        manager.export(["org/tiny v1", "org/other v1"], export)
        index = json.loads((export / "models.json").read_text())
        assert index["team"] == theirs and set(index["org"]) == {"tiny", "other"}
        names = set(os.listdir(export / "data"))
        assert names == their_objects | objects_needed(data_dir, "org/tiny v1", "org/other v1")
        for name, before in first.items():  # already there: not written again
            after = (export / "data" / name).stat()
            assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
        fresh = xm.Manager(xm.Config("test-app", str(export), tmp_path / "fresh"))
        assert tree(Path(fresh.pull("team/own v1").path)) == {"own.bin": b"someone else's"}
        assert fresh.get_remote("team/own v1").metadata == {"k": "v"}
        assert tree(Path(fresh.pull("org/other v1").path)) == {**MODEL_FILES, "extra.txt": b"more"}

    @pytest.mark.parametrize("damage", ["flipped", "missing"])
    def test_a_damaged_install_is_refused(self, manager: xm.Manager, server: LoopbackServer,
                                          model: dict[str, bytes], data_dir: Path, tmp_path: Path,
                                          damage: str, capsys: pytest.CaptureFixture[str]) -> None:
        manager.pull("org/tiny v1")
        manager.pull("org/tiny v2")
        weights = data_dir / "org" / "tiny" / "v1" / "model.safetensors"
        weights.unlink()  # v2 may share this file (a hard link): damage v1's copy only
        if damage == "flipped":
            weights.write_bytes(b"\0" + MODEL_FILES["model.safetensors"][1:])
        export = tmp_path / "export"
        manager.export(["org/tiny v2"], export)
        listed = (export / "models.json").read_bytes()
        with pytest.raises(xm.HashMismatchError) as caught:
            manager.export(["org/tiny v1"], export)
        message = str(caught.value)
        assert "model.safetensors" in message and "verify --repair on org/tiny v1" in message
        assert (export / "models.json").read_bytes() == listed  # v2 stays; v1 is not listed
        tool = embedded_tool(xm.Config("test-app", server.url, data_dir))  # the manager's app, as a command
        assert tool("export", "org/tiny", "v1", "--to", str(export)) == 6
        err = capsys.readouterr().err
        assert err.startswith("error: cannot export org/tiny v1: damaged in ") and "model.safetensors" in err
        manager.verify("org/tiny v1", repair=True)
        manager.export(["org/tiny v1"], export)
        assert set(json.loads((export / "models.json").read_text())["org"]["tiny"]) == {"v1", "v2"}

    def test_the_export_command(self, server: LoopbackServer, model: dict[str, bytes], data_dir: Path,
                                tmp_path: Path) -> None:
        for version in ("v1", "v2", "latest"):
            cli("-q", "pull", "org/tiny", version, registry=server, data_dir=data_dir)
        export = tmp_path / "export"
        result = cli("export", "org/tiny", "latest", "org/tiny v2", "--to", str(export),
                     registry=server, data_dir=data_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Exported: org/tiny latest (6.5 kB)\nExported: org/tiny v2 (6.5 kB)\n")
        assert f"Registry: {export} " in result.stdout
        as_json = cli_document(cli("--json", "export", "org/tiny", "--to", str(export),
                                   registry=server, data_dir=data_dir))
        assert as_json["directory"] == str(export)
        assert [item["version"] for item in as_json["exported"]] == ["latest", "v1", "v2"]
        server.close()
        elsewhere = tmp_path / "elsewhere"
        pulled = cli("--json", "pull", "org/tiny", "latest", registry=export, data_dir=elsewhere)
        assert cli_document(pulled)["model"]["alias_of"] == "v1"
        assert tree(elsewhere / "org" / "tiny" / "latest") == MODEL_FILES
        for argv in (["export", "org/tiny", "--to", str(export), "v9"], ["export", "v1", "--to", str(export)]):
            bad = cli(*argv, data_dir=data_dir)
            assert bad.returncode in (2, 4) and "Traceback" not in bad.stderr, argv
        assert cli("export", "org/tiny", data_dir=data_dir).returncode == 2  # --to is required

    def test_a_chunk_over_4_gib_is_refused_on_fat32(
        self, manager: xm.Manager, model: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if sys.platform.startswith("linux"):
            assert xm._file_system(str(tmp_path))  # the kind of file system is known here
        manager.pull("org/tiny v1")
        monkeypatch.setattr(xm, "_file_system", lambda path: "vfat")
        monkeypatch.setattr(xm, "_FAT32_MAX_FILE", 1000)  # the 1 KiB chunks stand for chunks over 4 GiB
        with pytest.raises(xm.StorageError, match=r"FAT file system \(vfat\), which holds no file over 4 GiB"):
            manager.export(["org/tiny v1"], tmp_path / "export")
        assert not (tmp_path / "export" / "models.json").exists()
        assert os.listdir(tmp_path / "export" / "data") == []

    def test_an_alias_whose_target_the_export_lists_as_other_bytes(
        self, manager: xm.Manager, model: dict[str, bytes], registry_dir: Path, tmp_path: Path
    ) -> None:
        manager.pull("org/tiny latest")  # v1's bytes
        publish.publish(str(tmp_path / "export"), "org", "tiny", "v1", V2_FILES, chunk_size=1024)
        with pytest.raises(xm.RegistryError, match="alias of v1"):
            manager.export(["org/tiny latest"], tmp_path / "export")
        with pytest.raises(xm.StorageError, match="inside the data directory"):
            manager.export(["org/tiny latest"], Path(manager.data_dir) / "export")


    def test_the_data_directory_is_never_an_export_target(self, server: LoopbackServer,
                                                          model: dict[str, bytes], tmp_path: Path) -> None:
        parent = tmp_path / "parent"
        data_dir = parent / "data"
        manager = xm.Manager(xm.Config("test-app", server.url, str(data_dir)))
        manager.pull("org/tiny v1")
        before = {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")}
        symlink(data_dir, tmp_path / "linked")
        symlink(data_dir / "org", tmp_path / "linked-org")
        for target in (tmp_path / "linked", tmp_path / "linked-org" / "export", data_dir / "org" / "export"):
            with pytest.raises(xm.StorageError, match="inside the data directory"):
                manager.export(["org/tiny v1"], target)
        with pytest.raises(xm.StorageError, match=r"its data[/\\] would be the data directory"):
            manager.export(["org/tiny v1"], parent)  # <to>/data/ is the data directory itself
        assert {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")} == before
        assert sorted(os.listdir(parent)) == ["data"]

    def test_the_next_export_deletes_what_a_killed_one_was_writing(
        self, manager: xm.Manager, model: dict[str, bytes], tmp_path: Path
    ) -> None:
        manager.pull("org/tiny v1")
        export = tmp_path / "export"
        manager.export(["org/tiny v1"], export)
        dead = dead_pid()
        chunk = next(name for name in os.listdir(export / "data"))
        left = [export / "data" / f"{chunk}.{dead}.1.tmp", export / f"models.json.{dead}.1.tmp"]
        for path in left:
            path.write_bytes(b"half written")
        own = [export / f"notes.{dead}.1.tmp", export / "data" / f"notes.{dead}.1.tmp"]  # not an export's names
        for path in own:
            path.write_bytes(b"someone's")
        manager.export(["org/tiny v1"], export)
        assert not any(path.exists() for path in left)
        assert all(path.read_bytes() == b"someone's" for path in own)

    @pytest.mark.skipif(WINDOWS, reason="Windows opens no directory to flush it; NTFS journals renames")
    def test_objects_are_on_stable_storage_before_models_json_lists_them(
        self, manager: xm.Manager, model: dict[str, bytes], registry_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager.pull("org/tiny v1")
        export = tmp_path / "export"
        manager.export(["org/tiny v1"], export)
        chunk = chunk_paths(registry_dir)[3][5:]
        (export / "data" / chunk).unlink()  # the manifest stays: only this object is written again
        calls: list[tuple[str, object]] = []
        fsync, replace = os.fsync, os.replace

        def recorded_fsync(fd: int) -> None:
            calls.append(("fsync", os.fstat(fd).st_ino))
            fsync(fd)

        def recorded_replace(source: str, target: str) -> None:
            calls.append(("replace", os.path.basename(target)))
            replace(source, target)

        monkeypatch.setattr(os, "fsync", recorded_fsync)
        monkeypatch.setattr(os, "replace", recorded_replace)
        manager.export(["org/tiny v1"], export)
        renamed, listed = calls.index(("replace", chunk)), calls.index(("replace", "models.json"))
        assert ("fsync", (export / "data").stat().st_ino) in calls[renamed:listed]

    @pytest.mark.parametrize("alias_of", ["bad name!", "con", "latest"])
    def test_an_alias_recorded_with_no_valid_target_is_refused_before_anything_is_written(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path, tmp_path: Path, alias_of: str
    ) -> None:
        manager.pull("org/tiny latest")
        doc = json.loads((data_dir / "registry.json").read_text())
        doc["org"]["tiny"]["latest"]["alias_of"] = alias_of
        (data_dir / "registry.json").write_text(json.dumps(doc))
        with pytest.raises(xm.StorageError, match=r"records org/tiny latest as an alias of .*; pull org/tiny "
                                                  r"latest again, which records it anew"):
            manager.export(["org/tiny latest"], tmp_path / "export")
        assert os.listdir(tmp_path / "export" / "data") == []

    @pytest.mark.parametrize("index", [b'{"org": 5}', b'{"org": {"tiny": []}}'], ids=["group", "model"])
    def test_a_models_json_entry_of_another_shape_in_the_export_directory_is_refused(
        self, server: LoopbackServer, model: dict[str, bytes], data_dir: Path, tmp_path: Path, index: bytes
    ) -> None:
        cli("-q", "pull", "org/tiny", "latest", registry=server, data_dir=data_dir)
        export = tmp_path / "export"
        export.mkdir()
        (export / "models.json").write_bytes(index)
        result = cli("export", "org/tiny", "latest", "--to", str(export), registry=server, data_dir=data_dir)
        assert result.returncode == 1 and "fix that entry, or export into another directory" in result.stderr
        assert (export / "models.json").read_bytes() == index

    def test_a_models_json_nested_too_deeply_in_the_export_directory_is_refused(
        self, server: LoopbackServer, model: dict[str, bytes], data_dir: Path, tmp_path: Path
    ) -> None:
        cli("-q", "pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        export = tmp_path / "export"
        export.mkdir()
        index = b'{"org": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        (export / "models.json").write_bytes(index)
        result = cli("export", "org/tiny", "v1", "--to", str(export), registry=server, data_dir=data_dir)
        assert result.returncode == 1 and "its models.json is not a registry index" in result.stderr
        assert (export / "models.json").read_bytes() == index

    @pytest.mark.parametrize("kind", ["chunk", "manifest"])
    def test_an_object_already_in_the_export_is_kept_only_if_it_hashes_right(
        self, manager: xm.Manager, model: dict[str, bytes], registry_dir: Path, tmp_path: Path, kind: str
    ) -> None:
        installed = manager.pull("org/tiny v1")
        export = tmp_path / "export"
        manager.export(["org/tiny v1"], export)
        name = installed.manifest_hash if kind == "manifest" else chunk_paths(registry_dir)[2][5:]
        damaged = bytearray((export / "data" / name).read_bytes())
        damaged[0] ^= 0xFF  # of its size, other bytes
        (export / "data" / name).write_bytes(bytes(damaged))
        manager.export(["org/tiny v1"], export)
        assert hashlib.sha256((export / "data" / name).read_bytes()).hexdigest() == name
        fresh = xm.Manager(xm.Config("test-app", str(export), tmp_path / "fresh"), retries=0)
        assert tree(Path(fresh.pull("org/tiny v1").path)) == MODEL_FILES


# --- Manager: which registry answers, pins, ensure ------------------------------------


class TestProvenance:
    """Each install records the registry it came from; update checks each model there."""

    def setup_registries(self, tmp_path: Path) -> tuple[Path, Path, Path]:
        first, second, data = tmp_path / "first", tmp_path / "second", tmp_path / "data"
        publish.publish(str(first), "org", "x", "v1", {"x.bin": b"x one"})
        publish.publish(str(second), "org", "y", "v1", {"y.bin": b"y one"})
        for registry, model in ((first, "x"), (second, "y")):
            assert cli("-q", "pull", f"org/{model}", "v1", registry=registry, data_dir=data).returncode == 0
        return first, second, data

    def test_each_install_records_its_registry(self, tmp_path: Path) -> None:
        first, second, data = self.setup_registries(tmp_path)
        models = cli_document(cli("list", "--json", data_dir=data))["models"]
        listed = {item["model"]: item["registry_url"] for item in models}
        assert listed == {"x": str(first), "y": str(second)}
        record = json.loads((data / "registry.json").read_text())["org"]["y"]["v1"]
        assert record["registry_url"] == str(second)
        info = cli("info", "org/y", "v1", data_dir=data)
        assert info.returncode == 0 and f"Registry:     {second}" in info.stdout

    def test_update_checks_each_model_against_its_own_registry(
        self, tmp_path: Path
    ) -> None:
        first, second, data = self.setup_registries(tmp_path)
        publish.publish(str(first), "org", "x", "v1", {"x.bin": b"x two"})
        publish.publish(str(second), "org", "y", "v1", {"y.bin": b"y two"})
        env = {"XPRIM_MODELS_REGISTRY_URL": str(first)}  # the default, not named on the command line
        assert cli("-q", "update", "--apply", data_dir=data, env=env).returncode == 0
        assert (data / "org" / "x" / "v1" / "x.bin").read_bytes() == b"x two"
        assert (data / "org" / "y" / "v1" / "y.bin").read_bytes() == b"y two"

    def test_update_with_a_named_registry_falls_back_to_where_each_came_from(self, tmp_path: Path) -> None:
        first, second, data = self.setup_registries(tmp_path)
        publish.publish(str(second), "org", "y", "v1", {"y.bin": b"y two"})
        result = cli("update", "--apply", registry=first, data_dir=data)
        assert result.returncode == 0
        out = result.stdout
        assert "org/x v1: up to date\n" in out
        assert "org/y v1: update available" in out and "source:" not in out  # first does not list it
        assert (data / "org" / "y" / "v1" / "y.bin").read_bytes() == b"y two"


def embedded_tool(config: xm.Config, **manager_options: Any) -> Callable[..., int]:
    """``whisper-tool models ARGS`` in this process: register_subcommands in a parent's parser."""
    import argparse

    parser = argparse.ArgumentParser(prog="whisper-tool")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models").add_subparsers(dest="models_command", required=True)
    xm.register_subcommands(models, config, **manager_options)

    def run(*argv: str) -> int:
        args = parser.parse_args(["models", *argv])
        code: int = args.func(args)
        return code

    return run


def recorded_sources(data_dir: Path) -> dict[str, str]:
    """``{"group/model version": registry_url}`` from registry.json."""
    doc = json.loads((data_dir / "registry.json").read_text())
    return {f"{g}/{m} {v}": entry.get("registry_url", "") for g, models in doc.items()
            for m, versions in models.items() for v, entry in versions.items()}


TOKEN = {"Authorization": "Bearer team-token"}


class TestRegistries:
    """Which registry a command asks, with which settings, and how often (README: Moving models)."""

    @pytest.fixture
    def no_registry_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("XPRIM_MODELS_REGISTRY_URL", raising=False)

    @pytest.fixture
    def private(self, tmp_path: Path) -> Iterator[LoopbackServer]:
        """A second registry that, like ``server`` in these tests, answers 401 without TOKEN."""
        running = LoopbackServer(tmp_path / "private")
        running.required_headers = dict(TOKEN)
        yield running
        running.close()

    def install_from_both(self, server: LoopbackServer, private: LoopbackServer, data_dir: Path,
                          app: str) -> None:
        server.required_headers = dict(TOKEN)
        publish.publish(str(private.root), "team", "small", "v1", {"w.bin": b"small one"})
        for registry in (server, private):
            manager = xm.Manager(xm.Config(app, registry.url), data_dir=str(data_dir), headers=TOKEN,
                                 retry_backoff=0.01)
            manager.pull("org/tiny v1" if registry is server else "team/small v1")
        publish.publish(str(server.root), "org", "tiny", "v1", V2_FILES, chunk_size=1024)  # republished
        publish.publish(str(private.root), "team", "small", "v1", {"w.bin": b"small two"})

    def test_update_and_repair_send_the_header_to_every_recorded_registry(
        self, server: LoopbackServer, private: LoopbackServer, model: dict[str, bytes], data_dir: Path,
        no_registry_env: None
    ) -> None:
        self.install_from_both(server, private, data_dir, "xprim-models")
        header = ["--header", f"Authorization: {TOKEN['Authorization']}"]
        result = cli(*header, "-q", "update", "--apply", data_dir=data_dir)
        assert (result.returncode, result.stderr) == (0, ""), result.stdout
        assert tree(data_dir / "org" / "tiny" / "v1") == V2_FILES
        assert (data_dir / "team" / "small" / "v1" / "w.bin").read_bytes() == b"small two"
        (data_dir / "team" / "small" / "v1" / "w.bin").write_bytes(b"small 2wo")
        repaired = cli(*header, "verify", "--repair", data_dir=data_dir)
        assert repaired.returncode == 0, repaired.stderr
        assert (data_dir / "team" / "small" / "v1" / "w.bin").read_bytes() == b"small two"
        without = cli("update", data_dir=data_dir)
        assert without.returncode == 5 and "401" in without.stderr  # the servers do require it

    def test_embedding_options_reach_every_recorded_registry(
        self, server: LoopbackServer, private: LoopbackServer, model: dict[str, bytes], data_dir: Path,
        capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.install_from_both(server, private, data_dir, "whisper-tool")
        tool = embedded_tool(xm.Config("whisper-tool", "", data_dir), headers=TOKEN, retries=0)
        assert tool("update", "--apply") == 0, capsys.readouterr().err
        assert tree(data_dir / "org" / "tiny" / "v1") == V2_FILES
        assert (data_dir / "team" / "small" / "v1" / "w.bin").read_bytes() == b"small two"
        (data_dir / "org" / "tiny" / "v1" / "config.json").unlink()
        assert tool("verify", "--repair") == 0, capsys.readouterr().err
        assert tree(data_dir / "org" / "tiny" / "v1") == V2_FILES
        assert tool("verify", "--repair") == 0
        assert embedded_tool(xm.Config("whisper-tool", "", data_dir), retries=0)("update") == 5  # 401s

    def test_each_index_is_fetched_once_per_command(
        self, server: LoopbackServer, registry_dir: Path, data_dir: Path, tmp_path: Path
    ) -> None:
        names = [f"m{number}" for number in range(6)]
        for name in names:
            publish.publish(str(registry_dir), "org", name, "v1", {"w.bin": name.encode()})
        cli("-q", "pull", "org/m0", "v1", registry=server, data_dir=data_dir)
        for name in names[1:]:
            cli("-q", "pull", f"org/{name}", "v1", registry=server, data_dir=data_dir)
        for name in names:
            publish.publish(str(registry_dir), "org", name, "v1", {"w.bin": name.encode() * 2})
        server.requests.clear()
        result = cli("update", "--apply", registry=server, data_dir=data_dir)
        assert result.returncode == 0 and result.stdout.count("Updated: ") == 6, result.stderr
        assert server.requests["models.json"] == 1
        mirror = LoopbackServer(registry_dir)  # another registry: asked first, it lists the same manifests
        try:
            for name in names:
                (data_dir / "org" / name / "v1" / "w.bin").write_bytes(b"damaged")
            server.requests.clear()
            repaired = cli("verify", "--repair", registry=mirror, data_dir=data_dir)
            assert repaired.returncode == 0, repaired.stderr
            assert mirror.requests["models.json"] == 1 and server.requests["models.json"] == 0
            assert all((data_dir / "org" / name / "v1" / "w.bin").read_bytes() == name.encode() * 2
                       for name in names)
        finally:
            mirror.close()

    def moved(self, server: LoopbackServer, registry_dir: Path, data_dir: Path, tmp_path: Path,
              app: str) -> LoopbackServer:
        """org/tiny v1 and latest, and org/gone v1, installed from ``server``, which then goes
        down; a copy of its directory without org/gone, where latest moved to v2, is served
        on another port."""
        manager = xm.Manager(xm.Config(app, server.url), data_dir=str(data_dir), retry_backoff=0.01)
        for ref in ("org/tiny v1", "org/tiny latest"):
            manager.pull(ref)
        shutil.copytree(registry_dir, tmp_path / "moved")
        publish.publish(str(registry_dir), "org", "gone", "v1", {"g.bin": b"gone"})
        manager.pull("org/gone v1")
        publish.add_alias(str(tmp_path / "moved"), "org", "tiny", "latest", "v2")
        server.close()
        return LoopbackServer(tmp_path / "moved")

    def check_moved(self, old: str, new: LoopbackServer, data_dir: Path, code: int, out: str, err: str) -> None:
        assert code == 3, err  # the exit code of org/gone's error; the others are updated
        assert f"org/tiny latest: update available (v1 \u2192 v2); source: {old} \u2192 {new.url}" in out
        assert f"org/tiny v1: up to date; source: {old} \u2192 {new.url} (recorded)" in out
        assert "Updated: org/tiny latest" in out
        (line,) = [line for line in err.splitlines() if line.startswith("error: org/gone v1: ")]
        assert f"not the configured {new.url}" in line and f"nor {old}, where it was installed from" in line
        assert "configure a registry that lists it, or remove it" in line
        assert tree(data_dir / "org" / "tiny" / "latest") == V2_FILES
        assert recorded_sources(data_dir) == {"org/tiny latest": new.url, "org/tiny v1": new.url, "org/gone v1": old}
        assert new.requests["models.json"] == 1

    def test_a_moved_registry_via_the_embedded_command(
        self, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path, data_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]
    ) -> None:
        old, new = server.url, self.moved(server, registry_dir, data_dir, tmp_path, "whisper-tool")
        try:
            tool = embedded_tool(xm.Config("whisper-tool", new.url, data_dir), retries=0)  # the app's setting moved
            code = tool("update", "--apply")
            self.check_moved(old, new, data_dir, code, *capsys.readouterr())
            new.requests.clear()
            assert tool("update", "--json") == 3
            updates = {f"{u['model']} {u['version']}": u for u in json.loads(capsys.readouterr().out)["updates"]}
            assert updates["tiny latest"]["source_changed"] is False  # recorded when applied
            assert updates["tiny latest"]["registry_url"] == new.url
            assert (updates["tiny v1"]["source_changed"], updates["tiny v1"]["installed_registry_url"]) == (
                False, new.url)  # up to date, recorded by --apply
            assert updates["gone v1"]["error"]["exit_code"] == 3 and updates["gone v1"]["registry_url"] is None
            (data_dir / "org" / "tiny" / "v1" / "config.json").unlink()  # repaired from the recorded new place
            unconfigured = embedded_tool(xm.Config("whisper-tool", "", data_dir), retries=0)
            assert unconfigured("verify", "org/tiny", "v1", "--repair", "-q") == 0, capsys.readouterr().err
            assert unconfigured("update", "org/gone") == 5  # installed from the old place, which is down
            assert (f"hint: if the registry moved from {old}, configure whisper-tool's registry URL: "
                    "the new one is asked first") in capsys.readouterr().err
            assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES
        finally:
            new.close()

    def test_a_moved_registry_via_the_standalone_command(
        self, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path, data_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The old place refuses connections: each command would wait out the default retries (3.5 s).
        short_backoff(monkeypatch)
        old, new = server.url, self.moved(server, registry_dir, data_dir, tmp_path, "xprim-models")
        try:
            stuck = cli("update", data_dir=data_dir)  # only the old place is known
            assert stuck.returncode == 5
            assert (f"hint: if the registry moved from {old}, give --registry URL, or set "
                    "XPRIM_MODELS_REGISTRY_URL: the new one is asked first") in stuck.stderr
            result = cli("update", "--apply", registry=new.url, data_dir=data_dir)
            self.check_moved(old, new, data_dir, result.returncode, result.stdout, result.stderr)
        finally:
            new.close()

    def test_one_registry_under_two_spellings(self, server: LoopbackServer, model: dict[str, bytes],
                                              data_dir: Path) -> None:
        cli("-q", "pull", "org/tiny", "latest", registry=server, data_dir=data_dir)
        cli("-q", "pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        server.requests.clear()
        spelled = server.url.replace("http://", "HTTP://") + "/"
        result = cli("update", registry=spelled, data_dir=data_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(": up to date\n") == 2 and "source" not in result.stdout
        assert server.requests["models.json"] == 1

    def test_a_recorded_registry_s_own_error_is_not_taken_for_a_missing_configuration(
        self, tmp_path: Path, no_registry_env: None
    ) -> None:
        registry, data = tmp_path / "registry", tmp_path / "data"
        publish.publish(str(registry), "org", "x", "v1", {"x.bin": b"x"})
        assert cli("-q", "pull", "org/x v1", registry=registry, data_dir=data).returncode == 0
        (registry / "models.json").write_text("[]")
        result = cli("update", data_dir=data)
        assert result.returncode == 1
        assert f"error: org/x v1: models.json at {registry / 'models.json'} is invalid" in result.stderr
        assert "no registry URL" not in result.stderr

    def test_verify_repair_with_no_configured_registry(self, server: LoopbackServer, model: dict[str, bytes],
                                                      data_dir: Path, no_registry_env: None) -> None:
        cli("-q", "pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        (data_dir / "org" / "tiny" / "v1" / "model.safetensors").write_bytes(b"x")
        result = cli("verify", "org/tiny", "v1", "--repair", data_dir=data_dir)
        assert result.returncode == 0, result.stderr
        assert "org/tiny v1: 1 file repaired\n  model.safetensors\n" in result.stdout
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES

    @pytest.mark.parametrize("recorded", ["registry", "~/registry", 42], ids=["relative", "home", "number"])
    def test_a_recorded_registry_that_is_no_url_nor_absolute_path_is_not_asked(
        self, manager: xm.Manager, model: dict[str, bytes], registry_dir: Path, data_dir: Path, tmp_path: Path,
        isolated_env: Path, monkeypatch: pytest.MonkeyPatch, no_registry_env: None, recorded: Any
    ) -> None:
        manager.pull("org/tiny v1")
        doc = json.loads((data_dir / "registry.json").read_text())
        doc["org"]["tiny"]["v1"]["registry_url"] = recorded  # where it would lead, a registry waits
        (data_dir / "registry.json").write_text(json.dumps(doc))
        shutil.copytree(registry_dir, isolated_env / "registry")
        shutil.copytree(registry_dir, tmp_path / "42")
        monkeypatch.chdir(tmp_path)
        unconfigured = xm.Manager(xm.Config("test-app", "", str(data_dir)), retries=0)
        (data_dir / "org" / "tiny" / "v1" / "config.json").write_bytes(b"damaged")
        for action in (lambda: unconfigured.check_update("org/tiny v1"),
                       lambda: unconfigured.verify("org/tiny v1", repair=True)):
            with pytest.raises(xm.RegistryError, match=rf"registry\.json records the registry of org/tiny v1 as "
                                                         rf"{re.escape(repr(str(recorded)))}, which is not what"):
                action()
        assert (data_dir / "org" / "tiny" / "v1" / "config.json").read_bytes() == b"damaged"
        for command in ("update", "verify"):
            result = cli(command, *["--repair"] * (command == "verify"), data_dir=data_dir)
            assert result.returncode == 1 and "it is not asked" in result.stderr, command
            assert result.stderr.count("\nhint: give --registry URL, or set XPRIM_MODELS_REGISTRY_URL\n") == 1
        fixed = manager.verify("org/tiny v1", repair=True)  # the configured registry is asked as always
        assert fixed.repaired == ("config.json",)
        applied = cli("update", "--apply", registry=registry_dir, data_dir=data_dir)
        assert applied.returncode == 0 and "it is not asked" in applied.stderr
        assert f"up to date; source: {recorded} \u2192 {registry_dir} (recorded)" in applied.stdout
        assert recorded_sources(data_dir)["org/tiny v1"] == str(registry_dir)

    def test_a_recorded_file_url_of_another_host_does_not_stop_the_configured_registry(
        self, manager: xm.Manager, model: dict[str, bytes], data_dir: Path, registry_dir: Path
    ) -> None:
        manager.pull("org/tiny v1")
        doc = json.loads((data_dir / "registry.json").read_text())
        doc["org"]["tiny"]["v1"]["registry_url"] = "file://fileserver/registry"
        (data_dir / "registry.json").write_text(json.dumps(doc))
        publish.publish(str(registry_dir), "org", "tiny", "v1", V2_FILES, chunk_size=1024)
        assert manager.check_update("org/tiny v1")[1] == listed_hash(registry_dir, "v1")
        (data_dir / "org" / "tiny" / "v1" / "config.json").write_bytes(b"damaged")
        assert manager.verify("org/tiny v1", repair=True).repaired == ("config.json",)
        with pytest.raises(xm.RegistryError, match="'file://fileserver/registry', which is not what installs"):
            xm.Manager(xm.Config("test-app", "", str(data_dir))).check_update("org/tiny v1")


def listed_hash(registry_dir: Path, version: str) -> str:
    return str(json.loads((registry_dir / "models.json").read_text())["org"]["tiny"][version]["hash"])


class TestPinning:
    """``group/model version@<sha256>`` and ``pin=`` (README: Moving models)."""

    def test_parse_str_and_equality(self) -> None:
        digest = "ab" * 32
        ref = xm.ModelRef.parse(f"org/tiny v1@{digest.upper()}")
        assert (ref.version, ref.pin, str(ref)) == ("v1", digest, f"org/tiny v1@{digest}")
        assert ref == xm.ModelRef("org", "tiny", "v1", digest) != xm.ModelRef("org", "tiny", "v1")
        assert xm.parse_model_ref(str(ref)) == ref and xm.ModelRef.parse("org/tiny v1").pin == ""
        for text in ("org/tiny v1@", "org/tiny v1@abc", f"org/tiny v1@{digest}x"):
            with pytest.raises(xm.InvalidRefError, match="manifest hash"):
                xm.ModelRef.parse(text)
        with pytest.raises(xm.InvalidRefError, match="model 'tiny@"):  # a pin needs a version
            xm.ModelRef.parse(f"org/tiny@{digest}")
        with pytest.raises(xm.InvalidRefError, match="pin"):
            xm.ModelRef("org", "tiny", "", digest)

    def test_pinned_pull_after_the_registry_republishes_the_version(
        self, manager: xm.Manager, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path,
        data_dir: Path
    ) -> None:
        first = listed_hash(registry_dir, "v1")
        publish.publish(str(registry_dir), "org", "tiny", "v1", V2_FILES, chunk_size=1024)
        assert listed_hash(registry_dir, "v1") != first
        server.requests.clear()
        installed = manager.pull(f"org/tiny v1@{first}")
        assert (installed.ref, installed.manifest_hash) == (xm.ModelRef("org", "tiny", "v1"), first)
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES  # never the new bytes
        assert server.requests["models.json"] == 0  # fetched by its hash, not through the index
        with pytest.raises(xm.AlreadyInstalledError):
            manager.pull("org/tiny v1", pin=first)
        assert manager.ensure("org/tiny v1", pin=first) == installed.path
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES
        result = cli("--json", "pull", "org/tiny", f"v1@{first}", "--force", registry=server, data_dir=data_dir)
        assert cli_document(result)["model"]["pinned_ref"] == f"org/tiny v1@{first}"
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES
        (listed,) = cli_document(cli("--json", "list", registry=server, data_dir=data_dir))["models"]
        assert listed["pinned_ref"] == f"org/tiny v1@{first}"  # what pull takes, to be copied
        info = cli("info", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert f"Pin:          org/tiny v1@{first}\n" in info.stdout
        with pytest.raises(xm.InvalidRefError, match="pinned twice"):
            manager.pull(f"org/tiny v1@{first}", pin="cd" * 32)
        with pytest.raises(xm.InvalidRefError, match="takes no pin"):
            manager.path(f"org/tiny v1@{first}")

    def test_update_leaves_a_pinned_install_as_it_is(
        self, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path, data_dir: Path
    ) -> None:
        # An app pins what it was tested with; a routine `update --apply` must not move it, or
        # the app's next ensure(pin=) would need the network to put the pinned bytes back.
        first = listed_hash(registry_dir, "v1")
        assert cli("-q", "pull", "org/tiny", f"v1@{first}", registry=server, data_dir=data_dir).returncode == 0
        assert cli("-q", "pull", "org/tiny", "v2", registry=server, data_dir=data_dir).returncode == 0
        publish.publish(str(registry_dir), "org", "tiny", "v1", V2_FILES, chunk_size=1024)
        server.requests.clear()
        result = cli("update", "--apply", registry=server, data_dir=data_dir)
        assert result.returncode == 0, result.stderr
        assert (f"org/tiny v1: pinned to {first[:12]}, not checked "
                "(pull org/tiny v1 without a pin to follow the registry again)\n") in result.stdout
        assert "org/tiny v2: up to date\n" in result.stdout
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES
        assert server.requests["models.json"] == 1  # for v2 alone
        updates = cli_document(cli("--json", "update", registry=server, data_dir=data_dir))["updates"]
        assert [(item["version"], item["pinned"], item["update_available"]) for item in updates] == [
            ("v1", True, False), ("v2", False, False)]
        listed = cli_document(cli("--json", "list", registry=server, data_dir=data_dir))["models"]
        assert [(item["version"], item["pinned"]) for item in listed] == [("v1", True), ("v2", False)]
        info = cli("info", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert "Status:       Installed, pinned\n" in info.stdout, info.stderr
        server.close()  # the pinned app starts with no network
        app = xm.Manager(xm.Config("xprim-models", server.url, str(data_dir)), retries=0)
        assert app.ensure("org/tiny v1", pin=first) == str(data_dir / "org" / "tiny" / "v1")

    def test_a_pull_without_a_pin_releases_a_pinned_install(
        self, manager: xm.Manager, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path
    ) -> None:
        first = listed_hash(registry_dir, "v1")
        assert manager.pull(f"org/tiny v1@{first}").pinned
        before = sum(server.requests[path] for path in chunk_paths(registry_dir))
        released = manager.pull("org/tiny v1")  # the same manifest: installed again, its files shared
        assert (released.pinned, released.manifest_hash) == (False, first)
        assert sum(server.requests[path] for path in chunk_paths(registry_dir)) == before
        with pytest.raises(xm.AlreadyInstalledError):
            manager.pull("org/tiny v1")
        publish.publish(str(registry_dir), "org", "tiny", "v1", V2_FILES, chunk_size=1024)
        assert manager.check_update("org/tiny v1") == (first, listed_hash(registry_dir, "v1"))

    def test_a_pinned_ensure_or_pull_holds_what_is_installed(
        self, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path, data_dir: Path
    ) -> None:
        # The usual way an app meets its pin: someone pulled the model first, without one.
        first = listed_hash(registry_dir, "v1")
        assert cli("-q", "pull", "org/tiny", "v1", registry=server, data_dir=data_dir).returncode == 0
        assert cli("-q", "pull", "org/tiny", "v2", registry=server, data_dir=data_dir).returncode == 0
        second = listed_hash(registry_dir, "v2")
        server.close()
        app = xm.Manager(xm.Config("xprim-models", server.url, str(data_dir)), retries=0)
        assert app.ensure("org/tiny v1", pin=first) == str(data_dir / "org" / "tiny" / "v1")  # no network
        assert app.get_installed("org/tiny v1").pinned
        with pytest.raises(xm.AlreadyInstalledError) as caught:
            app.pull("org/tiny v2", pin=second)  # from the manifest cache, as ensure's would be
        assert caught.value.installed.pinned and app.get_installed("org/tiny v2").pinned

    def test_update_leaves_an_install_pinned_while_it_runs(
        self, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path, data_dir: Path
    ) -> None:
        publish.publish(str(registry_dir), "org", "a", "v1", {"a.bin": blob(3000, "a1")}, chunk_size=1024)
        publish.publish(str(registry_dir), "org", "b", "v1", {"b.bin": blob(3000, "b1")}, chunk_size=1024)
        assert cli("-q", "pull", "org/a", "v1", registry=server, data_dir=data_dir).returncode == 0
        assert cli("-q", "pull", "org/b", "v1", registry=server, data_dir=data_dir).returncode == 0
        pinned = json.loads((registry_dir / "models.json").read_text())["org"]["b"]["v1"]["hash"]
        publish.publish(str(registry_dir), "org", "a", "v1", {"a.bin": blob(3000, "a2")}, chunk_size=1024)
        publish.publish(str(registry_dir), "org", "b", "v1", {"b.bin": blob(3000, "b2")}, chunk_size=1024)
        held = server.hold(f"data/{manifest_of(registry_dir, 'org', 'a', 'v1')['chunks'][0]}")
        update = subprocess.Popen(
            [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir), "update", "--apply"],
            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert held.arrived.wait(child_timeout(30))  # update has listed both, and is on org/a
            app = xm.Manager(xm.Config("xprim-models", server.url, str(data_dir)))
            assert app.ensure("org/b v1", pin=pinned) == str(data_dir / "org" / "b" / "v1")
        finally:
            held.release.set()
            out, err = update.communicate(timeout=child_timeout(60))
        assert update.returncode == 0, err
        assert "org/a v1: update available" in out and "Updated: org/a v1" in out
        assert f"org/b v1: pinned meanwhile (to {pinned[:12]}), not updated\n" in out
        assert (data_dir / "org" / "b" / "v1" / "b.bin").read_bytes() == blob(3000, "b1")
        assert app.get_installed("org/b v1").pinned

    def test_a_pin_the_registry_lacks(self, manager: xm.Manager, server: LoopbackServer, model: dict[str, bytes],
                                      data_dir: Path) -> None:
        manager.pull("org/tiny v1")
        before, record = tree(data_dir / "org" / "tiny" / "v1"), (data_dir / "registry.json").read_bytes()
        missing = hashlib.sha256(b"never published").hexdigest()
        with pytest.raises(xm.VersionNotFoundError) as caught:
            manager.pull(f"org/tiny v1@{missing}")
        assert f"org/tiny v1@{missing}" in str(caught.value) and "nothing was installed or changed" in str(caught.value)
        with pytest.raises(xm.VersionNotFoundError):
            manager.ensure("org/tiny v1", pin=missing)
        assert tree(data_dir / "org" / "tiny" / "v1") == before
        assert (data_dir / "registry.json").read_bytes() == record
        result = cli("pull", "org/tiny", f"v1@{missing}", registry=server, data_dir=data_dir)
        assert result.returncode == 3 and f"pinned manifest not found: org/tiny v1@{missing}" in result.stderr

    def test_a_cached_pin_is_fetched_from_the_registry_that_holds_it(
        self, server: LoopbackServer, model: dict[str, bytes], registry_dir: Path, data_dir: Path, tmp_path: Path
    ) -> None:
        first = xm.Manager(xm.Config("test-app", server.url, str(data_dir))).pull("org/tiny v1").manifest_hash
        publish.publish(str(registry_dir), "org", "tiny", "v1", V2_FILES, chunk_size=1024)
        xm.Manager(xm.Config("test-app", server.url, str(data_dir))).pull("org/tiny v1")  # first stays cached
        mirror = LoopbackServer(tmp_path / "mirror")  # the new registry: it has the new bytes only
        try:
            publish.publish(str(mirror.root), "org", "tiny", "v1", V2_FILES, chunk_size=1024)
            moved = xm.Manager(xm.Config("test-app", mirror.url, str(data_dir)), retries=0)
            installed = moved.pull("org/tiny v1", pin=first)  # config.json's chunk is on server only
            assert (installed.manifest_hash, installed.registry_url) == (first, server.url)
            assert tree(Path(installed.path)) == MODEL_FILES
        finally:
            mirror.close()

    def test_ensure_takes_the_keywords_of_pull(self) -> None:
        import inspect

        def keywords(method: Any) -> dict[str, Any]:
            return {name: (p.kind, p.default) for name, p in inspect.signature(method).parameters.items()}

        assert keywords(xm.Manager.ensure) == keywords(xm.Manager.pull)

    def test_pinned_ensure_with_no_server_running(self, make_manager: Callable[..., xm.Manager],
                                                  server: LoopbackServer, model: dict[str, bytes],
                                                  registry_dir: Path) -> None:
        manager = make_manager(retries=0)
        first, second = listed_hash(registry_dir, "v1"), listed_hash(registry_dir, "v2")
        path = manager.ensure(f"org/tiny v1@{first}")
        server.close()
        assert manager.ensure(f"org/tiny v1@{first}") == path
        assert manager.ensure("org/tiny v1", pin=first) == path
        with pytest.raises(xm.NetworkError):  # installed, but as other bytes than the pin: it must ask
            manager.ensure("org/tiny v1", pin=second)


class TestEnsure:
    def test_installed_means_no_network(self, manager: xm.Manager, model: dict[str, bytes],
                                        server: LoopbackServer) -> None:
        path = manager.ensure("org/tiny v1")
        assert tree(Path(path)) == dict(sorted(model.items()))
        before = sum(server.requests.values())
        assert manager.ensure("org/tiny v1") == path
        assert sum(server.requests.values()) == before

    def test_threads_and_processes_racing(self, manager: xm.Manager, model: dict[str, bytes],
                                          server: LoopbackServer, registry_dir: Path, data_dir: Path) -> None:
        script = ("import sys, xprim_models as xm\n"
                  "print(xm.Manager(xm.Config('test-app', sys.argv[1], sys.argv[2])).ensure('org/tiny v1'))\n")
        children = [subprocess.Popen([*PYTHON, "-c", script, server.url, str(data_dir)], cwd=HERE,
                                     stdout=subprocess.PIPE, text=True) for _ in range(2)]
        paths: list[str] = []
        threads = [threading.Thread(target=lambda: paths.append(manager.ensure("org/tiny v1"))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        paths += [child.communicate(timeout=child_timeout(60))[0].strip() for child in children]
        assert paths == [str(data_dir / "org" / "tiny" / "v1")] * 6
        assert all(server.requests[path] == 1 for path in chunk_paths(registry_dir))


# --- Command line: the standalone command, and embedded in a parent tool --------------


V1_SIZE = sum(len(content) for content in MODEL_FILES.values())  # 6514 bytes: "6.5 kB"
V2_FILES = {**MODEL_FILES, "config.json": b'{"layers": 3}\n'}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SNAKE_CASE = re.compile(r"[a-z][a-z0-9_]*")
PTY_BAR = re.compile(r"Downloading: \d+/\d+ chunks \[[=> ]{5,20}\] \d+%")  # the bar narrows to fit the sizes


def cli_install(server: LoopbackServer, data_dir: Path, *versions: str) -> None:
    """Install versions of org/tiny in-process, as the standalone CLI (app ``xprim-models``) would."""
    manager = xm.Manager(xm.Config("xprim-models", server.url), data_dir=str(data_dir), retry_backoff=0.01)
    for version in versions:
        manager.pull(f"org/tiny {version}")


def cli_keys(doc: Any) -> Iterator[str]:
    """Every object key in a JSON document, recursively."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield key
            yield from cli_keys(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from cli_keys(value)


def cli_document(result: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document on stdout (json.loads rejects anything after it), with snake_case keys."""
    doc = json.loads(result.stdout)
    assert all(SNAKE_CASE.fullmatch(key) for key in cli_keys(doc)), doc
    return doc


def cli_check_installed_json(item: dict[str, Any], data_dir: Path, version: str, alias_of: str = "") -> None:
    assert (item["group"], item["model"], item["version"], item["alias_of"]) == ("org", "tiny", version, alias_of)
    assert item["total_size"] == V1_SIZE and item["file_count"] == len(MODEL_FILES)
    assert RFC3339_UTC.fullmatch(item["installed_at"]), item["installed_at"]
    assert item["path"] == str(data_dir / "org" / "tiny" / version)
    assert re.fullmatch(r"[0-9a-f]{64}", item["manifest_hash"])


def cli_local_time(rfc3339: str, with_time: bool) -> str:
    """What the human output shows for a JSON time (the tests run with TZ=UTC)."""
    moment = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_time else "%Y-%m-%d")


def cli_without_quarters(stderr: str, verb: str = "Downloading") -> str:
    """Progress off a terminal without its 25/50/75% lines (how many come depends on timing), which
    must all say ``verb``."""
    quarters = re.findall(r"^(\w+): \d/7 chunks \d+% .*\n", stderr, flags=re.MULTILINE)
    assert set(quarters) <= {verb}, stderr
    return re.sub(r"^\w+: \d/7 chunks \d+% .*\n", "", stderr, flags=re.MULTILINE)


def cli_chunk(registry_dir: Path, version: str, index: int) -> str:
    return str(manifest_of(registry_dir, "org", "tiny", version)["chunks"][index])


def cli_signal_on_request(monkeypatch: pytest.MonkeyPatch, server: LoopbackServer, path: str) -> threading.Event:
    """An Event set as soon as the server starts answering ``path``."""
    seen = threading.Event()
    respond = server.respond

    def watching(request: Any, requested: str, fault: Fault | None) -> None:
        if requested == path:
            seen.set()
        respond(request, requested, fault)

    monkeypatch.setattr(server, "respond", watching)
    return seen


def cli_read_until_eof(fd: int, process: subprocess.Popen[bytes], limit: float = 30) -> bytes:
    """Everything written to a pty until the child has closed it (EIO on Linux, b'' elsewhere)."""
    deadline = time.monotonic() + limit
    output = b""
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            process.kill()
            pytest.fail(f"no EOF on the pty within {limit}s; got {output!r}")
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return output
            raise
        if not data:
            return output
        output += data


EMBEDDING_SCRIPT = """\
    # A parent tool embedding the models commands as the README ("Embedding in your CLI") shows.
    import argparse
    import json
    import os
    import sys

    import xprim_models

    parser = argparse.ArgumentParser(prog="whisper-tool")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="manage models")
    xprim_models.register_subcommands(
        models.add_subparsers(dest="models_command", required=True),
        xprim_models.Config(app_name="whisper-tool", registry_url=os.environ["WHISPER_TOOL_REGISTRY"]),
        **json.loads(os.environ.get("WHISPER_TOOL_MANAGER_OPTIONS", "{}")))
    args = parser.parse_args()
    sys.exit(args.func(args))      # each registered command sets func; it returns the exit code
"""


class TestCli:
    # main() and global options ------------------------------------------------

    def test_main_returns_exit_codes_and_never_raises_system_exit(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert xm.main(["--help"]) == 0
        assert "usage: xprim-models" in capsys.readouterr().out
        assert xm.main(["--version"]) == 0
        assert capsys.readouterr().out == f"xprim-models {xm.__version__}\n"
        assert xm.main([]) == 2
        assert "usage:" in capsys.readouterr().err
        assert xm.main(["pull", "org/tiny"]) == 2  # the version is required
        usage, error = capsys.readouterr().err.rsplit("\n", 2)[-3:-1]
        assert "GROUP/MODEL [VERSION]" in usage
        assert error == "error: pull org/tiny: a version is required ('org/tiny <version>')"
        base = ["--registry", server.url, "--data-dir", str(data_dir)]
        result = xm.main([*base, "path", "org/tiny", "v1"])
        assert result == 4 and isinstance(result, int)
        assert capsys.readouterr().err == "error: model not installed: org/tiny v1\n"
        assert xm.main([*base, "list", "--remote", "--json"]) == 0
        assert [item["version"] for item in json.loads(capsys.readouterr().out)["models"]] == ["latest", "v1", "v2"]

    def test_version_flag(self) -> None:
        result = cli("--version", process=True)
        assert (result.returncode, result.stdout) == (0, f"xprim-models {xm.__version__}\n")

    def test_registry_flag_wins_over_the_environment_variable(
        self, server: LoopbackServer, model: dict[str, bytes], tmp_path: Path
    ) -> None:
        env = {"XPRIM_MODELS_REGISTRY_URL": server.url}
        from_env = cli("list", "--remote", "--json", env=env)
        assert from_env.returncode == 0, from_env.stderr
        assert len(json.loads(from_env.stdout)["models"]) == 3
        assert server.requests["models.json"] == 1
        elsewhere = tmp_path / "other-registry"
        publish.publish(str(elsewhere), "other", "thing", "v9", {"a.bin": b"abc"})
        from_flag = cli("list", "--remote", "--json", registry=elsewhere, env=env)
        assert from_flag.returncode == 0, from_flag.stderr
        assert [(m["group"], m["version"]) for m in json.loads(from_flag.stdout)["models"]] == [("other", "v9")]
        assert server.requests["models.json"] == 1  # the flag won: the server was not asked

    def test_no_registry_configured_is_an_error(self) -> None:
        result = cli("list", "--remote")
        assert result.returncode == 1
        assert result.stderr.startswith("error: no registry URL is configured")

    def test_data_dir_flag_env_var_and_default(
        self, server: LoopbackServer, model: dict[str, bytes], tmp_path: Path, isolated_env: Path
    ) -> None:
        default = cli("pull", "org/tiny", "v1", registry=server)
        assert default.returncode == 0, default.stderr
        base = Path(xm.Manager(xm.Config("xprim-models")).data_dir)  # the platform's, below the private HOME
        assert base.parts[-2:] == ("xprim-models", "models") and isolated_env in base.parents
        expected = base / "org" / "tiny" / "v1"
        assert default.stdout.endswith(f"Path: {expected}\n")
        env = {"XPRIM_MODELS_MODELS_DIR": str(tmp_path / "from-env")}
        from_env = cli("pull", "org/tiny", "v1", registry=server, env=env)
        assert from_env.stdout.endswith(f"Path: {tmp_path / 'from-env' / 'org' / 'tiny' / 'v1'}\n")
        from_flag = cli("pull", "org/tiny", "v1", registry=server, data_dir=tmp_path / "flag", env=env)
        assert from_flag.stdout.endswith(f"Path: {tmp_path / 'flag' / 'org' / 'tiny' / 'v1'}\n")
        assert tree(tmp_path / "flag" / "org" / "tiny" / "v1") == MODEL_FILES

    # Output flags before and after the command word ------------------------------

    @pytest.mark.parametrize("position", ["before", "after"])
    def test_output_flags_before_and_after_the_command(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes], position: str
    ) -> None:
        def args(flag: str, *command: str) -> list[str]:
            return [flag, *command] if position == "before" else [*command, flag]

        as_json = cli(*args("--json", "list", "--remote"), registry=server, data_dir=data_dir)
        assert [item["version"] for item in cli_document(as_json)["models"]] == ["latest", "v1", "v2"]
        verbose = cli(*args("--verbose", "list", "--remote"), registry=server, data_dir=data_dir)
        assert f"GET {server.url}/models.json" in verbose.stderr
        assert verbose.stdout.startswith("GROUP")
        quiet = cli(*args("--quiet", "pull", "org/tiny", "v1"), registry=server, data_dir=data_dir)
        assert (quiet.returncode, quiet.stderr) == (0, "")
        assert "Model installed: org/tiny v1 (6.5 kB)\n" in quiet.stdout

    def test_flag_after_the_command_keeps_one_given_before(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        result = cli("--json", "list", "--remote", "--verbose", registry=server, data_dir=data_dir)
        assert len(cli_document(result)["models"]) == 3
        assert f"GET {server.url}/models.json" in result.stderr

    def test_no_debug_lines_without_verbose(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        result = cli("list", "--remote", registry=server, data_dir=data_dir)
        assert (result.returncode, result.stderr) == (0, "")

    def test_registry_and_data_dir_after_the_command_word(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        assert cli("pull", "org/tiny", "v1", "--registry", server.url, f"--data-dir={data_dir}", "-q").returncode == 0
        listed = cli_document(cli("list", "--data-dir", str(data_dir), "--json"))["models"]
        assert [item["version"] for item in listed] == ["v1"]
        path = cli("path", "org/tiny v1", "--data-dir", str(data_dir))  # the one-word form
        assert (path.returncode, path.stdout) == (0, f"{data_dir / 'org' / 'tiny' / 'v1'}\n")

    @pytest.mark.parametrize(
        ("argv", "code", "message"),
        [
            (["pull", "org/tiny", "V1"], 3,
             "version not found: org/tiny V1 (did you mean org/tiny v1?); available: latest, v1, v2\n"),
            (["pull", "org/tiyn", "v1"], 3, "model not found in registry: org/tiyn (did you mean org/tiny v1?)"),
            (["pull", "Org/Tiny", "v2"], 3, "model not found in registry: Org/Tiny (did you mean org/tiny v2?)"),
            (["pull", "org/tiny", "lates"], 3, "version not found: org/tiny lates (did you mean org/tiny latest?)"),
            (["pull", "acme/nothing", "v1"], 3, "model not found in registry: acme/nothing; 'xprim-models list"),
            (["path", "org/tiny", "V1"], 4, "model not installed: org/tiny V1 (did you mean org/tiny v1?)"),
            (["info", "org/tin", "v1"], 4, "model not installed: org/tin v1 (did you mean org/tiny v1?)"),
        ],
        ids=["version-case", "model-typo", "group-and-model-case", "version-typo", "nothing-close",
             "installed-version-case", "installed-typo"],
    )
    def test_did_you_mean(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes], argv: list[str], code: int, message: str
    ) -> None:
        cli_install(server, data_dir, "v1")
        result = cli(*argv, registry=server, data_dir=data_dir)
        assert result.returncode == code
        assert result.stderr.startswith(f"error: {message}")

    def test_ref_mistakes_are_quoted_as_typed_and_get_a_hint(self) -> None:
        slashed = cli("path", "acme/small/v1")
        assert slashed.returncode == 2
        assert "error: invalid model reference 'acme/small/v1': expected" in slashed.stderr
        colon = cli("pull", "acme/small:v1")  # docker's and ollama's way of writing it
        assert colon.returncode == 2
        assert colon.stderr.endswith("\nhint: the version is a word of its own: acme/small v1\n")

    @pytest.mark.parametrize("command", ["pull", "remove", "info", "path", "update", "verify"])
    def test_help_explains_every_positional(self, command: str) -> None:
        result = cli(command, "--help")
        assert result.returncode == 0
        usage, positionals = result.stdout.split("positional arguments:\n")
        assert "[VERSION]" in usage and "(required)" not in positionals  # VERSION may come inside GROUP/MODEL
        for name in ("GROUP/MODEL", "VERSION"):
            assert re.search(rf"^  {name} +\S", positionals, re.MULTILINE), positionals

    def test_registry_without_a_scheme_gets_a_hint(
        self, server: LoopbackServer, model: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        host = server.url.split("//")[1]
        bare = cli("list", "--remote", registry=host)
        assert bare.returncode == 1
        assert bare.stderr.endswith(f"\nhint: {host} is not a directory; if it is a server, write http://{host}\n")
        (tmp_path / "not-a-registry").mkdir()  # a directory: no hint, it is one
        directory = cli("list", "--remote", registry="not-a-registry")
        assert directory.returncode == 1 and "hint:" not in directory.stderr

    # Human output --------------------------------------------------------------

    @pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1 kB"), (6514, "6.5 kB"),
                                                (999_949, "999.9 kB"), (999_950, "1 MB"), (31_457_288, "31.5 MB"),
                                                (7_400_000_000, "7.4 GB")])
    def test_sizes_are_decimal(self, size: int, text: str) -> None:
        assert xm._format_size(size) == text

    def test_list_human(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        empty = cli("list", registry=server, data_dir=data_dir)
        assert (empty.returncode, empty.stdout, empty.stderr) == (0, "No models installed\n", "")
        cli_install(server, data_dir, "v1", "v2")
        dates = [cli_local_time(item["installed_at"], False)
                 for item in cli_document(cli("list", "--json", registry=server, data_dir=data_dir))["models"]]
        result = cli("list", registry=server, data_dir=data_dir)
        assert result.returncode == 0
        assert result.stdout == (
            "GROUP   MODEL   VERSION   SIZE     INSTALLED\n"
            f"org     tiny    v1        6.5 kB   {dates[0]}\n"
            f"org     tiny    v2        6.5 kB   {dates[1]}\n"
        )

    def test_list_remote_human(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        result = cli("list", "--remote", registry=server, data_dir=data_dir)
        assert result.returncode == 0
        assert result.stdout == (
            "GROUP   MODEL   VERSION        SIZE\n"
            "org     tiny    latest -> v1   6.5 kB\n"
            "org     tiny    v1             6.5 kB\n"
            "org     tiny    v2             6.5 kB\n"
        )

    def test_pull_human_and_already_installed(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        result = cli("pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert result.returncode == 0
        path = data_dir / "org" / "tiny" / "v1"
        assert result.stdout == f"Model installed: org/tiny v1 (6.5 kB)\nPath: {path}\n"
        assert tree(path) == MODEL_FILES
        downloads = server.chunk_requests()
        again = cli("pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert again.returncode == 0
        assert again.stdout == (
            "Model already installed: org/tiny v1\n"
            "Use --force to install it again (its chunks on this disk are hashed again and reused)\n")
        assert server.chunk_requests() == downloads  # nothing downloaded
        forced = cli("pull", "org/tiny", "v1", "--force", registry=server, data_dir=data_dir)
        assert forced.returncode == 0
        assert "Reused 7 chunks (6.5 kB) already on this disk; nothing downloaded\n" in forced.stderr  # as it said
        assert forced.stdout == f"Model installed: org/tiny v1 (6.5 kB)\nPath: {path}\n"

    def test_info_installed_human(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1")
        (listed,) = cli_document(cli("--json", "list", registry=server, data_dir=data_dir))["models"]
        result = cli("info", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert result.returncode == 0
        assert result.stdout == textwrap.dedent(f"""\
            Model:        org/tiny v1
            Status:       Installed
            Size:         6.5 kB
            Files:        4
            Installed:    {cli_local_time(listed["installed_at"], True)}
            Path:         {data_dir / "org" / "tiny" / "v1"}
            Registry:     {server.url}
            Pin:          org/tiny v1@{listed["manifest_hash"]}

            Files:
              model.safetensors     5 kB
              config.json           14 B
              sub/tokenizer.json    1.5 kB
              empty.txt             0 B
            """)

    def test_info_remote_human(self, server: LoopbackServer, data_dir: Path, registry_dir: Path,
                               model: dict[str, bytes]) -> None:
        result = cli("info", "org/tiny", "v1", "--remote", registry=server, data_dir=data_dir)
        digest = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v1"]["hash"]
        assert result.returncode == 0
        assert result.stdout == textwrap.dedent(f"""\
            Model:        org/tiny v1
            Status:       Available (not installed)
            Size:         6.5 kB
            Pin:          org/tiny v1@{digest}
            Chunks:       7 \u00d7 1 kB
            Files:        4

            Files:
              model.safetensors     5 kB
              config.json           14 B
              sub/tokenizer.json    1.5 kB
              empty.txt             0 B

            Metadata:
              framework: onnx
            """)

    def test_info_shows_control_characters_of_metadata_as_escapes(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        # A registry's metadata reaches a terminal: ESC, BEL and CSI there would retitle the
        # window, move the cursor or rewrite what the user reads.
        publish.publish(str(registry_dir), "org", "tiny", "v9", {"a\x9b31m.bin": b"a"},
                        metadata={"note\x1b[2J": "\x1b]0;pwned\x07 \x9b31m red\x7f"})
        result = cli("info", "org/tiny", "v9", "--remote", registry=server, data_dir=data_dir)
        assert result.returncode == 0, result.stderr
        assert "  note\\x1b[2J: \\x1b]0;pwned\\x07 \\x9b31m red\\x7f\n" in result.stdout
        assert "  a\\x9b31m.bin    1 B\n" in result.stdout  # a path may hold C1 (C0 is refused)
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.stdout)

    def test_remove_human(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1", "v2", "latest")
        one = cli("remove", "org/tiny", "latest", registry=server, data_dir=data_dir)
        assert (one.returncode, one.stdout) == (0, "Removed: org/tiny latest\n")
        assert not (data_dir / "org" / "tiny" / "latest").exists()
        every = cli("remove", "org/tiny", "--all", registry=server, data_dir=data_dir)
        assert every.returncode == 0
        assert every.stdout == "Removed: org/tiny v1\nRemoved: org/tiny v2\nRemoved 2 versions\n"
        assert not (data_dir / "org" / "tiny" / "v1").exists() and not (data_dir / "org" / "tiny" / "v2").exists()
        assert cli("list", registry=server, data_dir=data_dir).stdout == "No models installed\n"

    @pytest.mark.parametrize("args", [["org/tiny", "v1"], ["org/tiny", "--all"]], ids=["version", "all"])
    def test_remove_not_installed(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes], args: list[str]
    ) -> None:
        result = cli("remove", *args, registry=server, data_dir=data_dir)
        assert (result.returncode, result.stdout) == (4, "")
        assert result.stderr.startswith("error: model not installed: org/tiny")

    def test_path_prints_only_the_path(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1")
        result = cli("path", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{data_dir / 'org' / 'tiny' / 'v1'}\n", "")

    # update --------------------------------------------------------------------------

    def test_update_reports_and_applies(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        cli_install(server, data_dir, "latest")
        current = cli("update", registry=server, data_dir=data_dir)
        assert (current.returncode, current.stdout) == (0, "Checking for updates...\n\norg/tiny latest: up to date\n")
        publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v2")
        check = cli("update", "org/tiny", registry=server, data_dir=data_dir)
        assert check.returncode == 0
        assert check.stdout == "Checking for updates...\n\norg/tiny latest: update available (v1 \u2192 v2)\n"
        assert tree(data_dir / "org" / "tiny" / "latest") == MODEL_FILES  # only checked
        before = server.requests.copy()
        applied = cli("update", "--apply", registry=server, data_dir=data_dir)
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout == (
            "Checking for updates...\n\n"
            "org/tiny latest: update available (v1 \u2192 v2)\n"
            "Downloading update for org/tiny latest...\n"
            "Updated: org/tiny latest (6.5 kB)\n"
        )
        assert "Extracting files... done\n" in applied.stderr
        assert tree(data_dir / "org" / "tiny" / "latest") == V2_FILES
        # What was fetched: the v2 manifest and the chunks v2 does not share with
        # the installed v1, each once; the rest is copied from the installed files.
        delta = server.requests - before
        v2_hash = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v2"]["hash"]
        changed = set(manifest_of(registry_dir, "org", "tiny", "v2")["chunks"]) - set(
            manifest_of(registry_dir, "org", "tiny", "v1")["chunks"])
        assert len(changed) == 1
        assert {path: count for path, count in delta.items() if path.startswith("data/")} == {
            f"data/{digest}": 1 for digest in {v2_hash, *changed}}
        after = cli("--json", "update", registry=server, data_dir=data_dir)
        (entry,) = cli_document(after)["updates"]
        assert (entry["version"], entry["update_available"], entry["remote_alias_of"]) == ("latest", False, "v2")

    def test_update_arrow_on_a_stream_that_cannot_show_it(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        # A cp1252 console or pipe (Windows) has no arrow: it reads "->", not "?".
        cli_install(server, data_dir, "latest")
        publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v2")
        check = cli("update", registry=server, data_dir=data_dir,  # a real process: its stdout encodes in cp1252
                    env={"PYTHONIOENCODING": "cp1252"}, process=True)
        assert (check.returncode, check.stderr) == (0, "")
        assert check.stdout.endswith("org/tiny latest: update available (v1 -> v2)\n")

    def test_update_nothing_installed_and_unknown_model(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        nothing = cli("update", registry=server, data_dir=data_dir)
        assert (nothing.returncode, nothing.stdout) == (0, "No models installed\n")
        cli_install(server, data_dir, "v1")
        result = cli("update", "org/other", registry=server, data_dir=data_dir)
        assert (result.returncode, result.stderr) == (4, "error: model not installed: org/other\n")

    def test_repair_says_it_rewrites_the_damaged_files(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        cli_install(server, data_dir, "v1")
        (data_dir / "org" / "tiny" / "v1" / "config.json").write_bytes(b"damaged")
        repaired = cli("verify", "org/tiny", "v1", "--repair", registry=server, data_dir=data_dir)
        assert repaired.returncode == 0, repaired.stderr
        assert repaired.stderr.endswith("\nRewriting damaged files... done\n"), repaired.stderr
        assert repaired.stdout == "org/tiny v1: 1 file repaired\n  config.json\n"

    def test_update_of_one_version_and_its_errors_name_it_once(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import shutil

        cli_install(server, data_dir, "v1", "latest")
        publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v2")
        one = cli("update", "org/tiny", "latest", registry=server, data_dir=data_dir)
        assert (one.returncode, one.stdout) == (
            0, "Checking for updates...\n\norg/tiny latest: update available (v1 \u2192 v2)\n")
        publish.publish(str(registry_dir), "org", "tiny", "v3", {"other.bin": blob(3000, "other")}, chunk_size=1024)
        publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v3")  # nothing on this disk to reuse
        usage = shutil.disk_usage(".")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
        full = cli("update", "org/tiny latest", "--apply", registry=server, data_dir=data_dir)
        assert full.returncode == 7
        assert re.search(r"^error: org/tiny latest: needs 3 kB of disk space in \S+ but only 1 kB is free",
                         full.stderr, re.MULTILINE), full.stderr
        missing = cli("update", "org/tiny", "v2", registry=server, data_dir=data_dir)
        assert (missing.returncode, missing.stderr) == (4, "error: model not installed: org/tiny v2\n")

    def test_update_failing_check_does_not_stop_the_others(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        cli_install(server, data_dir, "v1", "v2")
        index = json.loads((registry_dir / "models.json").read_text())
        del index["org"]["tiny"]["v1"]
        index["org"]["tiny"]["latest"] = {"alias": "v2"}
        (registry_dir / "models.json").write_text(json.dumps(index))
        changed = {**MODEL_FILES, "config.json": b'{"layers": 4}\n'}
        publish.publish(str(registry_dir), "org", "tiny", "v2", changed, chunk_size=1024)  # v2 rebuilt
        checked = cli("--json", "update", registry=server, data_dir=data_dir)
        assert checked.returncode == 3
        first, second = cli_document(checked)["updates"]
        assert first["version"] == "v1" and first["remote_hash"] is None
        assert first["error"]["type"] == "VersionNotFoundError" and first["error"]["exit_code"] == 3
        assert (second["version"], second["update_available"], second["applied"], second["error"]) == (
            "v2", True, False, None)
        applied = cli("update", "--apply", registry=server, data_dir=data_dir)
        assert applied.returncode == 3
        assert "error: org/tiny v1: version not found" in applied.stderr
        assert "org/tiny v2: update available" in applied.stdout
        assert "Updated: org/tiny v2 (6.5 kB)\n" in applied.stdout
        assert tree(data_dir / "org" / "tiny" / "v2") == changed
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES  # the failing one is left alone

    # JSON documents ------------------------------------------------------------

    def test_json_documents(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        assert cli_document(cli("list", "--json", registry=server, data_dir=data_dir)) == {"models": []}
        remote = cli_document(cli("list", "--remote", "--json", registry=server, data_dir=data_dir))["models"]
        assert [(m["group"], m["model"], m["version"], m["alias_of"]) for m in remote] == [
            ("org", "tiny", "latest", "v1"), ("org", "tiny", "v1", ""), ("org", "tiny", "v2", "")]
        assert all((m["total_size"], m["chunk_size"], m["chunk_count"], m["file_count"]) == (V1_SIZE, 1024, 7, 4)
                   for m in remote)
        assert remote[1]["metadata"] == {"framework": "onnx"}

        pulled = cli_document(cli("--json", "pull", "org/tiny", "latest", registry=server, data_dir=data_dir))
        assert pulled["status"] == "installed"
        cli_check_installed_json(pulled["model"], data_dir, "latest", alias_of="v1")
        again = cli_document(cli("--json", "pull", "org/tiny", "latest", registry=server, data_dir=data_dir))
        assert again["status"] == "already_installed"
        cli_check_installed_json(again["model"], data_dir, "latest", alias_of="v1")

        (listed,) = cli_document(cli("--json", "list", registry=server, data_dir=data_dir))["models"]
        cli_check_installed_json(listed, data_dir, "latest", alias_of="v1")
        assert cli_document(cli("path", "org/tiny", "latest", "--json", registry=server, data_dir=data_dir)) == {
            "path": str(data_dir / "org" / "tiny" / "latest")}

        info = cli_document(cli("info", "org/tiny", "latest", "--remote", "--json", registry=server, data_dir=data_dir))
        assert (info["group"], info["model"], info["version"]) == ("org", "tiny", "latest")
        cli_check_installed_json(info["installed"], data_dir, "latest", alias_of="v1")
        expected_files = [{"path": path, "size": len(content)} for path, content in MODEL_FILES.items()]
        assert info["installed"]["files"] == expected_files
        assert info["remote"]["files"] == expected_files
        assert (info["remote"]["total_size"], info["remote"]["chunk_count"], info["remote"]["alias_of"]) == (
            V1_SIZE, 7, "v1")
        local_only = cli_document(cli("--json", "info", "org/tiny", "latest", registry=server, data_dir=data_dir))
        assert local_only["remote"] is None and local_only["installed"]["files"] == expected_files

        (update,) = cli_document(cli("--json", "update", registry=server, data_dir=data_dir))["updates"]
        assert (update["group"], update["model"], update["version"]) == ("org", "tiny", "latest")
        assert update["update_available"] is False and update["error"] is None

        removed = cli_document(cli("--json", "remove", "org/tiny", "--all", registry=server, data_dir=data_dir))
        assert removed == {"removed": [{"group": "org", "model": "tiny", "version": "latest"}]}

    # Progress --------------------------------------------------------------------

    def test_progress_off_a_terminal(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        result = cli("pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert result.returncode == 0
        assert cli_without_quarters(result.stderr) == (
            "Fetching manifest... done\nGetting 7 chunks (6.5 kB)\nDownloaded 7 chunks (6.5 kB)\n"
            "Extracting files... done\n"
        )
        assert "\r" not in result.stderr and "\x1b" not in result.stderr

    def test_progress_says_what_was_reused_and_counts_right(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes],
    ) -> None:
        def pull(*args: str) -> str:
            result = cli("pull", *args, registry=server, data_dir=data_dir)
            assert result.returncode == 0, result.stderr
            return result.stderr

        pull("org/tiny v1")  # one word, as the API takes it
        assert cli_without_quarters(pull("org/tiny", "latest"), "Verifying") == (  # an alias of what is installed
            "Fetching manifest... done\nGetting 7 chunks (6.5 kB)\n"
            "Reused 7 chunks (6.5 kB) already on this disk; nothing downloaded\nExtracting files... done\n"
        )
        v2 = pull("org/tiny", "v2")  # one chunk differs from v1
        assert "Downloaded 1 kB, reused 5.5 kB already on this disk (7 chunks)\n" in v2
        publish.publish(str(registry_dir), "org", "one", "v1", {"a.bin": b"abc"})
        publish.publish(str(registry_dir), "org", "none", "v1", {})
        assert "Getting 1 chunk (3 B)\nDownloaded 1 chunk (3 B)\n" in pull("org/one", "v1")
        assert pull("org/none", "v1") == "Fetching manifest... done\nExtracting files... done\n"  # no chunk line at all

    @staticmethod
    def pull_on_a_terminal(server: LoopbackServer, data_dir: Path, columns: int, *args: str) -> str:
        """What a pull writes to a pseudo-terminal ``columns`` wide (its size set as a resize does)."""
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
            process = subprocess.Popen(
                [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
                 "pull", "org/tiny", "v1", *args],
                stdin=slave, stdout=slave, stderr=slave, cwd=HERE,
                env={key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")},
            )
            os.close(slave)
            slave = -1
            output = cli_read_until_eof(master, process).decode()
            assert process.wait(timeout=10) == 0
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        assert "Traceback" not in output
        return output

    @staticmethod
    def drawn(output: str) -> list[str]:
        """Every state of every progress line a terminal shows: each redraw (after ``\\r``) on its own."""
        states = [part.replace("\x1b[2K", "") for line in output.split("\r\n") for part in line.split("\r")]
        return [state for state in states if not state.startswith(("Model installed: ", "Path: "))]

    @pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
    def test_progress_on_a_terminal_80_columns(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        # 8 kB/s: the 6.5 kB take most of a second, so the line is redrawn with a speed and an ETA.
        output = self.pull_on_a_terminal(server, data_dir, 80, "--limit-rate", "8K")
        states = self.drawn(output)
        assert all(len(state) < 80 for state in states), [state for state in states if len(state) >= 80]
        assert any(PTY_BAR.match(state) and "/s ETA " in state for state in states), states
        assert "Downloaded 7 chunks (6.5 kB)" in states
        assert "Model installed: org/tiny v1 (6.5 kB)" in output
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES

    @pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
    def test_progress_on_a_terminal_40_columns(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        output = self.pull_on_a_terminal(server, data_dir, 40, "--limit-rate", "8K")
        states = self.drawn(output)
        assert all(len(state) < 40 for state in states), [state for state in states if len(state) >= 40]
        progress = [state for state in states if state.startswith("Downloading: ")]
        assert progress and not any("[" in state or "ETA" in state for state in progress), progress
        assert "Downloaded 7 chunks (6.5 kB)" in states

    def test_progress_line_narrows_in_order(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Bar first, then ETA, then speed: at each width, the fullest line that fits, never wider."""
        import argparse

        console = xm._Console(argparse.Namespace())
        lines: list[str] = []
        monkeypatch.setattr(console, "err", lambda text, end="\n": lines.append(text.replace("\r\x1b[2K", "")))
        printer = xm._ProgressPrinter(console)
        printer.terminal = True
        printer.samples = [(time.monotonic() - 2, 0)]  # 2 s ago: a speed of about 1 MB/s
        snapshot = xm.PullProgress("chunks", 70, 30, 4 << 20, 2 << 20, 2 << 20)
        shapes = []
        for width in (120, 80, 62, 55, 45, 40, 30, 20):
            monkeypatch.setattr(xm, "_terminal_width", lambda stream, width=width: width)
            printer.last_draw = 0.0
            printer._download(snapshot)
            assert len(lines[-1]) < width, (width, lines[-1])
            shapes.append(("[" in lines[-1], "ETA" in lines[-1], "/s" in lines[-1]))
        assert shapes == sorted(shapes, reverse=True)  # each thing, once gone, stays gone
        assert shapes[0] == (True, True, True) and shapes[-1] == (False, False, False)
        assert (False, True, True) in shapes and (False, False, True) in shapes  # the bar went first, then ETA

    def test_stall_says_what_it_waits_for(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        class Terminal(io.StringIO):
            def __init__(self) -> None:
                super().__init__()
                self.noticed = threading.Event()

            def isatty(self) -> bool:
                return True

            def write(self, text: str) -> int:
                written = super().write(text)
                if "Waiting for" in self.getvalue():
                    self.noticed.set()
                return written

        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        monkeypatch.setenv("COLUMNS", "120")
        monkeypatch.setattr(xm, "_STALL_NOTICE_AFTER", 0.2)  # rather than 5 s
        short_backoff(monkeypatch)
        stalled = Fault(pause_after=0)  # headers, then nothing until resumed
        server.fail("models.json", Fault(status=503), stalled)
        result: list[int] = []
        listing = threading.Thread(target=lambda: result.append(
            xm.main(["--registry", server.url, "--data-dir", str(data_dir), "list", "--remote"])))
        listing.start()
        try:
            assert terminal.noticed.wait(20)
        finally:
            stalled.resume.set()
            listing.join(30)
        assert result == [0]
        host = server.url.split("//")[1]
        assert re.search(rf"\r\x1b\[2KWaiting for {re.escape(host)} \(attempt 2 of 4, \d+s without progress\)",
                         terminal.getvalue()), terminal.getvalue()

    def test_network_failure_mid_pull_says_the_next_run_resumes(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        short_backoff(monkeypatch)
        server.always[chunk_paths(registry_dir)[4]] = Fault(status=503)
        failed = cli("pull", "org/tiny", "v1", "--concurrency", "1", registry=server, data_dir=data_dir)
        assert failed.returncode == 5
        assert failed.stderr.endswith(
            "(after 4 attempts)\nthe verified chunks are kept: run the same command again to resume\n")
        del server.always[chunk_paths(registry_dir)[4]]
        resumed = cli("pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert resumed.returncode == 0
        # Chunks 1 to 4 came before the failure; 5 to 7 come now.
        assert "Downloaded 2.4 kB, reused 4.1 kB already on this disk (7 chunks)" in resumed.stderr
        server.fail("models.json", *[Fault(status=503)] * 4)  # before any chunk: nothing to resume
        early = cli("pull", "org/tiny", "v2", registry=server, data_dir=data_dir)
        assert early.returncode == 5 and "resume" not in early.stderr

    # Exit codes and error messages -------------------------------------------------

    @pytest.mark.parametrize(
        "case",
        [
            (["pull", "org/tiny", "v9"], 3, "error: version not found: org/tiny v9", True),
            (["pull", "org/nope", "v1"], 3, "error: model not found in registry: org/nope", False),
            (["info", "org/nope", "v1", "--remote"], 3, "error: model not found in registry: org/nope", False),
            (["path", "org/tiny", "v1"], 4, "error: model not installed: org/tiny v1", True),
            (["info", "org/tiny", "v1"], 4, "error: model not installed: org/tiny v1", False),
            (["remove", "org/tiny", "v1"], 4, "error: model not installed: org/tiny v1", False),
            (["remove", "org/tiny"], 2, "error: remove: give either a version or --all", True),
            (["pull", "org/tiny", "v1 v2"], 2, "error: invalid model reference", False),
        ],
        ids=["version-not-found", "model-not-found", "info-remote-not-found", "path-not-installed",
             "info-not-installed", "remove-not-installed", "remove-without-version", "bad-ref"],
    )
    def test_error_exit_codes(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes],
        case: tuple[list[str], int, str, bool],
    ) -> None:
        args, code, message, check_json = case
        human = cli(*args, registry=server, data_dir=data_dir)
        assert (human.returncode, human.stdout) == (code, "")
        error_line = next(line for line in human.stderr.splitlines() if line.startswith("error: "))
        assert error_line.startswith(message), human.stderr
        assert human.stderr.startswith("usage: " if code == 2 else "error: "), human.stderr
        if not check_json:
            return
        as_json = cli("--json", *args, registry=server, data_dir=data_dir)
        assert as_json.returncode == code
        error = cli_document(as_json)["error"]
        assert set(error) == {"type", "message", "exit_code"}
        assert error["exit_code"] == code
        assert as_json.stderr.endswith(f"error: {error['message']}\n")

    @pytest.mark.parametrize(
        "args",
        [["pull", "org/tiny"], ["pull", "org/tiny", "v1", "--concurrency", "0"], ["frobnicate"]],
        ids=["missing-version", "bad-concurrency", "unknown-command"],
    )
    def test_usage_errors_exit_2(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes], args: list[str]
    ) -> None:
        result = cli(*args, registry=server, data_dir=data_dir)
        assert result.returncode == 2
        assert "usage: xprim-models" in result.stderr
        assert server.requests == {}

    @pytest.mark.parametrize("args", [["--json", "bogus"],
                                      ["--json", "pull", "acme/small", "v1", "--concurrency", "abc"],
                                      ["pull", "acme/small", "--limit-rate", "fast", "--json"]])
    def test_usage_errors_with_json_print_the_error_document(self, args: list[str]) -> None:
        result = cli(*args)
        assert result.returncode == 2
        error = cli_document(result)["error"]
        assert (error["type"], error["exit_code"]) == ("UsageError", 2)
        assert result.stderr.endswith(f"error: {error['message']}\n")

    def test_hash_mismatch_exits_6(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        # Each pull waits out the default backoff (0.5 + 1 + 2 s): one in-process pull carries every
        # check of the text, while the same pull with --json runs beside it as a real process.
        chunk = cli_chunk(registry_dir, "v1", 2)
        server.always["data/" + chunk] = Fault(corrupt=True)
        as_json = subprocess.Popen(
            [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir.parent / "json-data"),
             "--json", "pull", "org/tiny", "v1"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        result = cli("pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert result.returncode == 6
        assert result.stdout == ""
        assert "error: pull org/tiny v1: chunk 3/7" in result.stderr and "hash mismatch" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("error: ")
        assert not (data_dir / "org" / "tiny" / "v1").exists()
        # The message names the hash received (not that of no bytes), and each retry says so.
        body = (registry_dir / "data" / chunk).read_bytes()
        received = hashlib.sha256(bytes([body[0] ^ 0xFF]) + body[1:]).hexdigest()
        assert hashlib.sha256(b"").hexdigest() not in result.stderr
        assert f"(got {received})" in result.stderr
        assert result.stderr.count("downloading it again") == 3 and "after 4 attempts" in result.stderr
        out, err = as_json.communicate(timeout=child_timeout(30))
        assert as_json.returncode == 6, err
        assert cli_document(subprocess.CompletedProcess(as_json.args, 6, out))["error"]["type"] == "HashMismatchError"
        assert server.requests["data/" + chunk] == 8  # 4 attempts each

    def test_storage_error_exits_7(self, server: LoopbackServer, tmp_path: Path, model: dict[str, bytes]) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory\n")
        for args in (["list"], ["pull", "org/tiny", "v1"]):
            result = cli(*args, registry=server, data_dir=blocker / "models")
            assert (result.returncode, result.stdout) == (7, ""), result.stderr
            # Windows reports only "path not found" here, which must not read as "nothing installed".
            assert result.stderr.startswith("error: cannot "), result.stderr
            assert f"{blocker} is a file, not a directory; move that file away" in result.stderr
        as_json = cli("--json", "list", registry=server, data_dir=blocker / "models")
        assert cli_document(as_json)["error"]["type"] == "StorageError"

    def test_ctrl_c_exits_130_and_the_pull_resumes(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        stalled = cli_chunk(registry_dir, "v1", 3)
        server.always["data/" + stalled] = Fault(stall=True)
        reached = cli_signal_on_request(monkeypatch, server, "data/" + stalled)
        process = popen_interruptible(
            [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
             "pull", "org/tiny", "v1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE,
        )
        try:
            assert reached.wait(timeout=child_timeout(20)), "the pull never asked for the stalled chunk"
            ctrl_c(process)
            stdout, stderr = process.communicate(timeout=child_timeout(20))
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, stderr
        assert "Traceback" not in stdout + stderr
        assert stdout == ""
        assert re.search(r"^interrupted: run the same command again to resume", stderr, re.MULTILINE), stderr
        assert not (data_dir / "org" / "tiny" / "v1").exists()
        # Verified chunks were kept in the staging files: the resumed pull does not fetch them again.
        del server.always["data/" + stalled]
        resumed = cli("pull", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert resumed.returncode == 0, resumed.stderr
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES
        fetched = [server.requests["data/" + cli_chunk(registry_dir, "v1", index)] for index in range(7)]
        assert fetched.count(1) >= 3 and fetched[3] == 2, fetched  # at least chunks 1 to 3 came once

    def test_closed_pipe_head(self, server: LoopbackServer, data_dir: Path, registry_dir: Path,
                              model: dict[str, bytes]) -> None:
        # `xprim-models list --remote | head -1`, with far more output than a pipe buffers.
        index = json.loads((registry_dir / "models.json").read_text())
        index["org"]["tiny"].update({f"an-alias-with-a-rather-long-name-{n:04d}": {"alias": "v1"} for n in range(2000)})
        (registry_dir / "models.json").write_text(json.dumps(index))
        writer = subprocess.Popen(
            [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
             "list", "--remote"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE,
        )
        assert writer.stdout is not None
        reader = subprocess.Popen([*PYTHON, "-c", "import sys; sys.stdout.write(sys.stdin.readline())"],
                                  stdin=writer.stdout, stdout=subprocess.PIPE)
        writer.stdout.close()
        writer.stdout = None  # the reader's now: communicate() must not read it (on Windows it would try)
        try:
            first, _ = reader.communicate(timeout=child_timeout(30))
            _, errors = writer.communicate(timeout=child_timeout(30))
        finally:
            for process in (reader, writer):
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        assert first.decode().split() == ["GROUP", "MODEL", "VERSION", "SIZE"]
        assert errors.decode() == ""

    @pytest.mark.parametrize("args", [["list", "--remote"], ["path", "org/tiny", "v1"]], ids=["list", "path"])
    def test_closed_pipe_before_any_output(
        self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes], args: list[str]
    ) -> None:
        cli_install(server, data_dir, "v1")
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
        try:
            result = subprocess.run(
                [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir), *args],
                stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=HERE, timeout=child_timeout(30), check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
        assert result.stderr == ""

    def test_closed_pipe_json_error(self, server: LoopbackServer, data_dir: Path, model: dict[str, bytes]) -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run(
                [*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
                 "--json", "path", "org/tiny", "v1"],
                stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=HERE, timeout=child_timeout(30), check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 4


class TestEmbedding:
    @pytest.fixture
    def whisper_tool(self, tmp_path: Path) -> Path:
        script = tmp_path / "whisper_tool.py"
        script.write_text(textwrap.dedent(EMBEDDING_SCRIPT))
        return script

    @staticmethod
    def run_tool(script: Path, registry: str, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``whisper-tool ARGS`` as a subprocess, importing xprim_models through PYTHONPATH."""
        result = subprocess.run(
            [*PYTHON, str(script), *args], capture_output=True, text=True, cwd=script.parent,
            timeout=child_timeout(timeout), check=False,
            env={**os.environ, "PYTHONPATH": str(HERE), "WHISPER_TOOL_REGISTRY": registry, **(env or {})},
        )
        cli_no_traceback(result)
        return result

    def test_registers_every_command_each_with_func(
        self, server: LoopbackServer, model: dict[str, bytes], capsys: pytest.CaptureFixture[str]
    ) -> None:
        import argparse

        parser = argparse.ArgumentParser(prog="whisper-tool")
        commands = parser.add_subparsers(dest="command", required=True)
        models = commands.add_parser("models")
        subparsers = models.add_subparsers(dest="models_command", required=True)
        xm.register_subcommands(subparsers, xm.Config("whisper-tool", server.url), retries=0)
        assert set(subparsers.choices) == {"list", "pull", "remove", "info", "path", "update", "verify", "prune",
                                           "export"}
        for argv in (["list"], ["pull", "org/tiny", "v1"], ["remove", "org/tiny", "--all"],
                     ["info", "org/tiny", "v1"], ["path", "org/tiny", "v1"], ["update"], ["verify"], ["prune"],
                     ["export", "org/tiny", "v1", "--to", "somewhere"]):
            args = parser.parse_args(["models", *argv])
            assert callable(args.func), argv
        args = parser.parse_args(["models", "list", "--remote", "--json"])
        result = args.func(args)
        assert result == 0 and isinstance(result, int)
        assert len(json.loads(capsys.readouterr().out)["models"]) == 3
        args = parser.parse_args(["models", "path", "org/tiny", "v1"])
        assert args.func(args) == 4  # an error is an exit code, not an exception

    def test_the_parent_tools_options_of_the_same_names_are_left_alone(
        self, server: LoopbackServer, model: dict[str, bytes], data_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import argparse

        parser = argparse.ArgumentParser(prog="clash")
        for flag in ("--model", "--version"):
            parser.add_argument(flag, default="the parent's")
        for flag in ("--json", "--verbose", "--force", "--all"):
            parser.add_argument(flag, action="store_true")
        commands = parser.add_subparsers(dest="command", required=True)
        xm.register_subcommands(commands.add_parser("models").add_subparsers(dest="models_command", required=True),
                                xm.Config("clash", server.url), data_dir=str(data_dir))
        for argv in (["pull", "org/tiny", "v1", "--force"], ["path", "org/tiny", "v1"], ["info", "org/tiny", "v1"],
                     ["update"], ["verify"], ["list", "--remote"], ["remove", "org/tiny", "--all"], ["prune"]):
            args = parser.parse_args(["--model", "m", "--version", "3", "--json", "--verbose", "models", *argv])
            assert (args.model, args.version, args.json, args.verbose, args.force, args.all) == (
                "m", "3", True, True, False, False), argv
            assert args.func(args) == 0, argv
        output = capsys.readouterr()
        assert "{" not in output.out and "debug:" not in output.err  # the parent's --json and --verbose are its own

    def test_the_readmes_python_example_runs_again_and_again(
        self, server: LoopbackServer, registry_dir: Path, tmp_path: Path
    ) -> None:
        readme = (HERE / "README.md").read_text(encoding="utf-8")
        example = readme.split("## A Python example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
        assert "https://models.example.com" in example
        code = example.replace("https://models.example.com", server.url)
        publish.publish(str(registry_dir), "fast-whisper", "tiny", "fp16", MODEL_FILES, chunk_size=1024)
        env = {**os.environ, "PYTHONPATH": str(HERE), "WHISPER_TOOL_MODELS_DIR": str(tmp_path / "models")}
        runs = [subprocess.run([*PYTHON, "-c", code], capture_output=True, text=True, env=env,
                               timeout=child_timeout(60), check=False) for _ in range(2)]
        assert [run.returncode for run in runs] == [0, 0], runs[1].stderr
        home = tmp_path / "models" / "fast-whisper" / "tiny" / "fp16"
        assert runs[0].stdout == runs[1].stdout == f"{home}\n{home} {V1_SIZE}\n"

    def test_list_pull_path(
        self, server: LoopbackServer, model: dict[str, bytes], whisper_tool: Path, isolated_env: Path
    ) -> None:
        empty = self.run_tool(whisper_tool, server.url, "models", "list")
        assert (empty.returncode, empty.stdout) == (0, "No models installed\n")
        pulled = self.run_tool(whisper_tool, server.url, "models", "pull", "org/tiny", "v1")
        assert pulled.returncode == 0, pulled.stderr
        base = Path(xm.Manager(xm.Config("whisper-tool")).data_dir)  # the platform's, below the private HOME
        assert base.parts[-2:] == ("whisper-tool", "models") and isolated_env in base.parents
        home = base / "org" / "tiny" / "v1"
        assert pulled.stdout == f"Model installed: org/tiny v1 (6.5 kB)\nPath: {home}\n"
        assert "Fetching manifest... done\n" in pulled.stderr and "Extracting files... done\n" in pulled.stderr
        assert tree(home) == MODEL_FILES
        assert (home / ".whisper-tool").is_dir()  # the metadata directory follows the app name
        path = self.run_tool(whisper_tool, server.url, "models", "path", "org/tiny", "v1")
        assert (path.returncode, path.stdout) == (0, f"{home}\n")
        listed = self.run_tool(whisper_tool, server.url, "models", "list")
        assert listed.stdout.splitlines()[1].split()[:4] == ["org", "tiny", "v1", "6.5"]
        as_json = self.run_tool(whisper_tool, server.url, "models", "list", "--json")
        (item,) = cli_document(as_json)["models"]
        assert (item["version"], item["path"], item["total_size"]) == ("v1", str(home), V1_SIZE)

    def test_data_dir_follows_the_app_name(
        self, server: LoopbackServer, model: dict[str, bytes], whisper_tool: Path, tmp_path: Path
    ) -> None:
        env = {"WHISPER_TOOL_MODELS_DIR": str(tmp_path / "whisper-models"),
               "XPRIM_MODELS_MODELS_DIR": str(tmp_path / "not-this-one")}
        pulled = self.run_tool(whisper_tool, server.url, "models", "pull", "org/tiny", "v1", "--quiet", env=env)
        assert (pulled.returncode, pulled.stderr) == (0, "")
        target = tmp_path / "whisper-models" / "org" / "tiny" / "v1"
        assert tree(target) == MODEL_FILES
        assert not (tmp_path / "not-this-one").exists()
        path = self.run_tool(whisper_tool, server.url, "models", "path", "org/tiny", "v1", env=env)
        assert path.stdout == f"{target}\n"

    def test_output_flags_after_the_command(
        self, server: LoopbackServer, model: dict[str, bytes], whisper_tool: Path
    ) -> None:
        result = self.run_tool(whisper_tool, server.url, "models", "list", "--remote", "--json", "--verbose")
        assert len(cli_document(result)["models"]) == 3
        assert f"GET {server.url}/models.json" in result.stderr

    def test_network_error_exits_5(self, model: dict[str, bytes], whisper_tool: Path, refusing_port: int) -> None:
        closed = f"http://127.0.0.1:{refusing_port}"
        env = {"WHISPER_TOOL_MANAGER_OPTIONS": json.dumps({"retries": 1, "retry_backoff": 0, "timeout": 5})}
        for args in (["list", "--remote"], ["pull", "org/tiny", "v1"]):
            result = self.run_tool(whisper_tool, closed, "models", *args, env=env)
            assert (result.returncode, result.stdout) == (5, ""), result.stderr
            assert result.stderr.startswith("error: ") and "(after 2 attempts)" in result.stderr
        as_json = self.run_tool(whisper_tool, closed, "models", "list", "--remote", "--json", env=env)
        assert as_json.returncode == 5
        assert cli_document(as_json)["error"]["type"] == "NetworkError"
        assert cli_document(as_json)["error"]["exit_code"] == 5

    def test_usage_error_exits_2(self, server: LoopbackServer, whisper_tool: Path) -> None:
        result = self.run_tool(whisper_tool, server.url, "models", "pull", "org/tiny")
        assert result.returncode == 2
        assert "usage: whisper-tool models pull" in result.stderr

    def test_messages_name_only_what_the_parent_tool_has(
        self, server: LoopbackServer, model: dict[str, bytes], data_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import argparse

        def tool(registry: str) -> argparse.ArgumentParser:
            parser = argparse.ArgumentParser(prog="whisper-tool")
            commands = parser.add_subparsers(dest="command", required=True)
            models = commands.add_parser("models").add_subparsers(dest="models_command", required=True)
            xm.register_subcommands(models, xm.Config("whisper-tool", registry, data_dir), retries=0)
            return parser

        def run(parser: argparse.ArgumentParser, *argv: str) -> tuple[int, str]:
            args = parser.parse_args(["models", *argv])
            code = args.func(args)
            return code, capsys.readouterr().err

        no_registry = tool("")
        for argv in (["list", "--remote"], ["pull", "org/tiny", "v1"]):
            code, err = run(no_registry, *argv)
            assert (code, err) == (1, "error: no registry URL is configured for whisper-tool\n"), argv
        xm.Manager(xm.Config("whisper-tool", server.url, data_dir)).pull("org/tiny v1")
        assert run(no_registry, "update") == (0, "")  # checked against the registry it was pulled from
        (data_dir / "org" / "tiny" / "v1" / "config.json").write_bytes(b"damaged")
        assert run(no_registry, "verify", "--repair", "-q") == (0, "")  # repaired from there too
        assert (data_dir / "org" / "tiny" / "v1" / "config.json").read_bytes() == MODEL_FILES["config.json"]
        code, err = run(tool(server.url), "pull", "org/tiyn", "v1")
        assert code == 3
        assert err == ("error: model not found in registry: org/tiyn (did you mean org/tiny v1?); "
                       "'whisper-tool models list --remote' shows what the registry has\n")
        assert "XPRIM_MODELS" not in err and "--registry" not in err


# --- Beyond the module: the publisher, conventions, the Go original, a fleet, the fault sweep ---


class TestPublish:
    @pytest.fixture
    def source(self, tmp_path: Path) -> Path:
        source = tmp_path / "source"
        (source / "sub").mkdir(parents=True)
        (source / "weights.bin").write_bytes(blob(3000, "publish"))
        (source / "sub" / "config.json").write_bytes(b"{}")
        return source

    def test_publishes_what_the_client_reads(self, tmp_path: Path, source: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        registry = tmp_path / "registry"
        assert publish.main([str(registry), "org/pub", "v1", str(source), "--chunk-size", "1024",
                             "--metadata", "license=MIT"]) == 0
        assert publish.main([str(registry), "org/pub", "latest", "--alias-of", "v1"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("org/pub v1: manifest ") and out[1].startswith("org/pub latest: alias of v1, ")
        manager = xm.Manager(xm.Config("publish-test", str(registry)), data_dir=tmp_path / "data")
        detail = manager.get_remote_detail("org/pub latest")
        assert (detail.alias_of, detail.chunk_count, dict(detail.metadata)) == ("v1", 3, {"license": "MIT"})
        assert [info.path for info in detail.files] == ["weights.bin", "sub/config.json"]
        assert tree(Path(manager.pull("org/pub latest").path)) == tree(source)

    @pytest.mark.parametrize(
        ("case", "code", "message"),
        [
            ("alias-of-missing", 1, "error: org/pub has no version 'v9' to alias (it has: v1)"),
            ("missing-source", 1, "error: source directory {tmp}{sep}nowhere does not exist or is not a directory"),
            ("empty-source", 1, "error: source directory {tmp}{sep}empty holds no files: there is nothing to publish"),
            ("no-slash", 2, "error: invalid model reference 'pub v2': expected 'group/model'"),
            ("bad-version", 2, "error: invalid model reference 'org/pub v2!': version 'v2!' must be"),
            ("client-rejects", 1, "error: the registry fails the client's checks after publishing org/pub v2: "
                                  "manifest "),
        ],
    )
    def test_refuses_with_a_message_and_leaves_the_index_alone(
        self, tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str], case: str, code: int, message: str
    ) -> None:
        registry = tmp_path / "registry"
        assert publish.main([str(registry), "org/pub", "v1", str(source)]) == 0
        index = (registry / "models.json").read_bytes()
        (tmp_path / "empty").mkdir()
        (tmp_path / "bad").mkdir()
        # Names the client refuses: a colon (Windows cannot even create it), or where the OS
        # keeps both, "café" in NFC and in NFD (one file on macOS).
        for name in ["caf\u00e9.txt", "cafe\u0301.txt"] if WINDOWS else ["a:b.txt"]:
            (tmp_path / "bad" / name).write_bytes(b"refused")
        argv = {
            "alias-of-missing": ["org/pub", "latest", "--alias-of", "v9"],
            "missing-source": ["org/pub", "v2", str(tmp_path / "nowhere")],
            "empty-source": ["org/pub", "v2", str(tmp_path / "empty")],
            "no-slash": ["pub", "v2", str(source)],
            "bad-version": ["org/pub", "v2!", str(source)],
            "client-rejects": ["org/pub", "v2", str(tmp_path / "bad")],
        }[case]
        capsys.readouterr()
        assert publish.main([str(registry), *argv]) == code
        output = capsys.readouterr()
        assert output.out == ""
        assert output.err.startswith(message.format(tmp=tmp_path, sep=os.sep)), output.err
        assert (registry / "models.json").read_bytes() == index

    def test_refuses_to_change_a_published_name_without_force(
        self, tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        registry = tmp_path / "registry"
        other = tmp_path / "other"
        other.mkdir()
        (other / "weights.bin").write_bytes(b"other weights")
        for argv in (["v1", str(source)], ["v2", str(other)], ["latest", "--alias-of", "v1"]):
            assert publish.main([str(registry), "org/pub", *argv]) == 0
        capsys.readouterr()
        refusals = {
            "other files": (["v1", str(other)], "error: org/pub v1 is already published with other files (manifest "),
            "files over an alias": (["latest", str(source)], "error: org/pub latest is an alias of v1; these files "
                                                             "would make it a version of its own; give --force"),
            "an alias over a version": (["v2", "--alias-of", "v1"], "error: org/pub v2 is a version (manifest "),
        }
        index = (registry / "models.json").read_bytes()
        for case, (argv, message) in refusals.items():
            assert publish.main([str(registry), "org/pub", *argv]) == 1, case
            assert capsys.readouterr().err.startswith(message), case
            assert (registry / "models.json").read_bytes() == index, case
        # The same files again, and an alias moved, change nothing a user did not ask for.
        assert publish.main([str(registry), "org/pub", "v1", str(source)]) == 0
        assert publish.main([str(registry), "org/pub", "latest", "--alias-of", "v2"]) == 0
        for argv, _ in refusals.values():
            assert publish.main([str(registry), "org/pub", *argv, "--force"]) == 0, argv
        listed = json.loads((registry / "models.json").read_text())["org"]["pub"]
        assert listed["v2"] == {"alias": "v1"} and "hash" in listed["latest"]

    def test_runs_as_a_script_from_a_checkout(self, tmp_path: Path, source: Path) -> None:
        result = subprocess.run(
            [*PYTHON, str(HERE / "examples" / "publish.py"), str(tmp_path / "registry"), "org/pub", "v1",
             str(source)], capture_output=True, text=True, timeout=child_timeout(60), cwd=tmp_path,
            env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("org/pub v1: manifest ")


@pytest.fixture
def https_registry(tmp_path: Path, registry_dir: Path, model: dict[str, bytes]) -> Iterator[tuple[str, Path]]:
    """The registry served over HTTPS with a self-signed certificate; yields (url, certificate path)."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        # An EC key: made in milliseconds, where an RSA key of 2048 bits takes 0.2 s.
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    running = LoopbackServer(registry_dir, tls=context)
    yield running.url, cert
    running.close()


class TestConventions:
    def test_every_test_the_docs_cite_exists(self) -> None:
        cited = set()
        for page in [HERE / "README.md", *sorted((HERE / "docs").glob("*.md"))]:
            cited.update(re.findall(r"\b(Test\w+)::(test_\w+)", page.read_text(encoding="utf-8")))
        assert cited
        missing = [f"{cls}::{name}" for cls, name in sorted(cited)
                   if not callable(getattr(globals().get(cls), name, None))]
        assert not missing, f"cited in README.md or docs/ but not defined: {missing}"

    def test_import_is_silent(self, tmp_path: Path) -> None:
        script = (
            "import sys, threading, os\n"
            "before = set(sys.modules)\n"
            "import xprim_models\n"
            "heavy = {'argparse', 'urllib.request', 'http.client', 'socket', 'ssl', 'json', 'logging',\n"
            "         'concurrent.futures', 'email'}\n"
            "print(sorted(heavy & (set(sys.modules) - before)), threading.active_count(), os.listdir('.'))\n"
        )
        empty = tmp_path / "empty"
        empty.mkdir()
        out = subprocess.run([*PYTHON, "-c", script], cwd=empty, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(HERE)}, timeout=child_timeout(30))
        assert out.stdout.strip() == "[] 1 []", out.stderr

    def test_vendored_under_another_name(self, tmp_path: Path, server: LoopbackServer, model: dict[str, bytes],
                                         data_dir: Path) -> None:
        vendor = tmp_path / "somepkg" / "_vendor"
        vendor.mkdir(parents=True)
        (tmp_path / "somepkg" / "__init__.py").write_text("")
        (vendor / "__init__.py").write_text("")
        (vendor / "xprim_models.py").write_bytes((HERE / "xprim_models.py").read_bytes())
        script = textwrap.dedent("""
            import argparse, sys
            from somepkg._vendor import xprim_models as models
            assert "xprim_models" not in sys.modules
            assert "MIT" in open(models.__file__).read(600)
            parser = argparse.ArgumentParser(prog="sometool")
            sub = parser.add_subparsers(dest="command", required=True)
            group = sub.add_parser("models").add_subparsers(dest="models_command", required=True)
            models.register_subcommands(group, models.Config("sometool", sys.argv[1], sys.argv[2]))
            args = parser.parse_args(sys.argv[3:])
            sys.exit(args.func(args))
        """)
        result = subprocess.run([*PYTHON, "-c", script, server.url, str(data_dir), "models", "pull",
                                 "org/tiny", "v1", "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                timeout=child_timeout(60))
        assert result.returncode == 0, result.stderr
        assert f"Path: {data_dir / 'org' / 'tiny' / 'v1'}" in result.stdout
        assert tree(data_dir / "org" / "tiny" / "v1") == dict(sorted(model.items()))

    @staticmethod
    def install_wheel(work: Path) -> tuple[Path, Path, Path, dict[str, str]]:
        """The wheel, built offline, and where it is installed: (the wheel, a python that
        imports it, its console script, the environment to run them in). Into a venv, or
        where Python has no venv module (the embeddable Windows CPython that CI runs under
        wine), with pip's --target into a directory on PYTHONPATH."""
        pytest.importorskip("hatchling", reason="the build backend is installed by the README's test command")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(work / "dist"), str(HERE)], check=True, timeout=child_timeout(120))
        (wheel,) = (work / "dist").glob("xprim_models-*.whl")
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MYPYPATH")}
        if importlib.util.find_spec("venv") is None:
            target = work / "target"
            subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "-q", "--target", str(target),
                            str(wheel)], check=True, timeout=child_timeout(120))
            return wheel, Path(sys.executable), target / "bin" / "xprim-models", {**env, "PYTHONPATH": str(target)}
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                       timeout=child_timeout(120))
        python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q",
                        str(wheel)], check=True, timeout=child_timeout(120))
        return wheel, python, python.parent / "xprim-models", env

    @pytest.mark.slow  # builds a wheel and runs mypy on it
    def test_wheel_installs_offline_with_no_dependencies_and_real_types(self, tmp_path: Path) -> None:
        import zipfile

        wheel, python, script, env = self.install_wheel(tmp_path)
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
            # The one file of the repository, as the package's __init__, with py.typed beside it.
            assert archive.read("xprim_models/__init__.py") == (HERE / "xprim_models.py").read_bytes()
        assert sorted(n for n in names if not n.startswith("xprim_models-")) == [
            "xprim_models/__init__.py", "xprim_models/__main__.py", "xprim_models/py.typed"]
        assert "Requires-Dist" not in metadata
        assert "Requires-Python: >=3.9" in metadata and "License" in metadata and "Classifier:" in metadata
        for command in ([str(script)], [str(python), "-m", "xprim_models"]):
            result = subprocess.run([*command, "--version"], capture_output=True, text=True,
                                    timeout=child_timeout(60), cwd=tmp_path, env=env)
            assert result.stdout.strip() == f"xprim-models {xm.__version__}", result.stderr
        # mypy --strict on a user's file, against the installed wheel, sees the real types.
        pytest.importorskip("mypy", reason="mypy is installed by .ci/run")
        (tmp_path / "user.py").write_text(textwrap.dedent("""\
            import logging
            import urllib.request

            from xprim_models import Config, LoggerLike, Manager, OpenerLike, PullProgress, RefLike

            reveal_type(Manager.pull)
            ref: RefLike = "org/tiny v1"
            logger: LoggerLike = logging.getLogger("mytool")
            opener: OpenerLike = urllib.request.build_opener()


            def show(progress: PullProgress) -> None:
                reveal_type(progress.phase)


            Manager(Config("mytool"), logger=logger, opener=opener).pull(ref, progress=show)
            Manager(Config("mytool"), logger=42)
        """))
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--no-error-summary",
             "--python-executable", str(python), "user.py"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
        )
        lines = result.stdout.splitlines()
        pull = next(line for line in lines if line.startswith("user.py:6: note: Revealed type is "))
        assert re.search(r'"def \(self: xprim_models\.Manager, ref: .*xprim_models\.ModelRef.*, \*, force: '
                         r'(builtins\.)?bool =, .*progress: .*xprim_models\.PullProgress.*\) -> '
                         r'xprim_models\.InstalledModel"', pull), pull
        assert "Any" not in pull
        phase = next(line for line in lines if line.startswith("user.py:13: note: Revealed type is "))
        assert all(f"Literal['{name}']" in phase for name in ("manifest", "chunks", "extracting")), phase
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith("user.py:17: error: ") and "LoggerLike" in errors[0], lines

    def test_user_agent(self, manager: xm.Manager, server: LoopbackServer, model: dict[str, bytes]) -> None:
        manager.pull("org/tiny v1")
        python = ".".join(str(part) for part in sys.version_info[:3])
        assert {h.get("user-agent") for h in server.headers} == {f"xprim-models/{xm.__version__} python/{python}"}

    def test_logger_is_silent_unless_configured(self, server: LoopbackServer, model: dict[str, bytes],
                                                data_dir: Path, registry_dir: Path) -> None:
        # A chunk served corrupt once makes the module log a warning; Python's
        # last-resort handler would print it if the module had no NullHandler.
        script = (
            "import logging, sys, xprim_models as xm\n"
            "if sys.argv[3] == 'configured': logging.basicConfig()\n"
            "xm.Manager(xm.Config('test-app', sys.argv[1], sys.argv[2]), retry_backoff=0.01).pull('org/tiny v1')\n"
        )
        for host in ("silent", "configured"):
            server.fail(chunk_paths(registry_dir)[0], Fault(corrupt=True))
            result = subprocess.run([*PYTHON, "-c", script, server.url, str(data_dir / host), host], cwd=HERE,
                                    capture_output=True, text=True, timeout=child_timeout(60))
            assert result.returncode == 0, result.stderr
            if host == "silent":
                assert result.stderr == ""
            else:
                assert re.search(r"hash mismatch .*, downloading it again", result.stderr), result.stderr

    def test_http_proxy_is_used_and_no_proxy_bypasses_it(self, make_manager: Callable[..., xm.Manager],
                                                         server: LoopbackServer, model: dict[str, bytes],
                                                         proxy: LoopbackServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        make_manager().pull("org/tiny v1")
        assert f"{server.url}/models.json" in proxy.requests and len(proxy.heads) == server.chunk_requests() + 1
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        seen = len(proxy.heads)
        make_manager().pull("org/tiny v2")
        assert len(proxy.heads) == seen

    def test_https_with_a_private_ca(self, tmp_path: Path, https_registry: tuple[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
        import ssl

        url, cert = https_registry
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(xm.NetworkError, match=r"certificate verification failed.*SSL_CERT_FILE"):
            xm.Manager(xm.Config("t", url, tmp_path / "a"), retries=0).list_remote()
        context = ssl.create_default_context(cafile=str(cert))
        installed = xm.Manager(xm.Config("t", url, tmp_path / "b"), ssl_context=context).pull("org/tiny v1")
        assert tree(Path(installed.path)) == dict(sorted(MODEL_FILES.items()))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert len(xm.Manager(xm.Config("t", url, tmp_path / "c")).list_remote()) == 3


# Go's time.Time in JSON: RFC 3339 with nanoseconds (trailing zeros dropped) and the local offset.
GO_INSTALLED_AT = "2026-11-28T23:30:36.123456789+01:00"
GO_INSTALLED_UTC = datetime(2026, 11, 28, 22, 30, 36, 123456, tzinfo=timezone.utc)
# What Go's time.Time.UnmarshalJSON reads: RFC 3339 with an upper-case T and Z.
GO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def go_json(value: Any) -> bytes:
    """``json.MarshalIndent(value, "", "  ")`` as Go writes it: struct fields in declaration
    order (the dicts here are built in that order; maps are sorted by the caller), ``<``,
    ``>`` and ``&`` escaped, other text as UTF-8, no newline at the end."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def go_install(registry_dir: Path, data_dir: Path, app: str, group: str, model: str, version: str,
               installed_at: str = GO_INSTALLED_AT) -> Path:
    """Install a published version as the Go original does; return its directory.

    Its files; its manifest re-marshalled into ``.<app>/manifest.json`` from

        type Manifest struct {
            TotalSize int64      `json:"total_size"`
            ChunkSize int64      `json:"chunk_size"`
            Chunks    []string   `json:"chunks"`
            Files     []FileInfo `json:"files"` // FileInfo{Path string `json:"path"`; Size int64 `json:"size"`}
        }

    (other bytes than the published ones); its registry.json, a map of maps of
    ``{manifest_hash, total_size, file_count, installed_at}``; and beside them its chunk
    cache ``.chunks`` (a chunk an interrupted pull left) and its lock file ``registry.json.lock``.
    """
    digest = json.loads((registry_dir / "models.json").read_text())[group][model][version]["hash"]
    published = json.loads((registry_dir / "data" / digest).read_bytes())
    stream = b"".join((registry_dir / "data" / chunk).read_bytes() for chunk in published["chunks"])
    root = data_dir / group / model / version
    offset = 0
    for entry in published["files"]:
        target = root / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(stream[offset:offset + entry["size"]])
        offset += entry["size"]
    manifest = {"total_size": published["total_size"], "chunk_size": published["chunk_size"],
                "chunks": published["chunks"],
                "files": [{"path": entry["path"], "size": entry["size"]} for entry in published["files"]]}
    (root / f".{app}").mkdir(parents=True, exist_ok=True)
    (root / f".{app}" / "manifest.json").write_bytes(go_json(manifest))
    registry = data_dir / "registry.json"
    doc = json.loads(registry.read_bytes()) if registry.exists() else {}
    doc.setdefault(group, {}).setdefault(model, {})[version] = {
        "manifest_hash": digest, "total_size": published["total_size"], "file_count": len(published["files"]),
        "installed_at": installed_at,
    }
    registry.write_bytes(go_json({g: {m: dict(sorted(versions.items())) for m, versions in sorted(models.items())}
                                  for g, models in sorted(doc.items())}))
    (data_dir / ".chunks").mkdir(exist_ok=True)
    if published["chunks"]:
        cached = data_dir / ".chunks" / published["chunks"][-1]
        cached.write_bytes(stream[(len(published["chunks"]) - 1) * published["chunk_size"]:])
        long_ago = time.time() - 30 * 86400
        os.utime(cached, (long_ago, long_ago))
    (data_dir / "registry.json.lock").touch()
    return root


def go_own_files(data_dir: Path) -> dict[str, tuple[bytes, float]]:
    """The Go original's chunk cache and lock file: content and modification time."""
    paths = [data_dir / "registry.json.lock", *sorted((data_dir / ".chunks").iterdir())]
    return {path.relative_to(data_dir).as_posix(): (path.read_bytes(), path.stat().st_mtime) for path in paths}


def go_check_readable(doc: Any) -> None:
    """registry.json as Go's json.Unmarshal into map[string]map[string]map[string]Entry reads it:
    the keys it knows with the types it declares (int64/int, string, time.Time); others it ignores."""
    for models in doc.values():
        for versions in models.values():
            for entry in versions.values():
                assert isinstance(entry["manifest_hash"], str) and re.fullmatch(r"[0-9a-f]{64}", entry["manifest_hash"])
                for key in ("total_size", "file_count"):
                    assert isinstance(entry[key], int) and not isinstance(entry[key], bool)
                assert GO_TIME.fullmatch(entry["installed_at"]), entry["installed_at"]


def published_bytes(registry_dir: Path, version: str) -> bytes:
    digest: str = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"][version]["hash"]
    return (registry_dir / "data" / digest).read_bytes()


def registry_entry(data_dir: Path, version: str) -> dict[str, Any]:
    return dict(json.loads((data_dir / "registry.json").read_bytes())["org"]["tiny"][version])


class TestGoOriginal:
    @pytest.mark.parametrize(("text", "expected"), [
        (GO_INSTALLED_AT, GO_INSTALLED_UTC),
        ("2026-11-28T23:30:36Z", datetime(2026, 11, 28, 23, 30, 36, tzinfo=timezone.utc)),
        ("2026-11-28T23:30:36.5-05:30", datetime(2026, 11, 29, 5, 0, 36, 500000, tzinfo=timezone.utc)),
        ("2026-11-28t23:30:36.1z", datetime(2026, 11, 28, 23, 30, 36, 100000, tzinfo=timezone.utc)),
        ("2026-11-28 23:30:36.000001+00:00", datetime(2026, 11, 28, 23, 30, 36, 1, tzinfo=timezone.utc)),
        ("2026-11-28T23:30:36.12-00:00", datetime(2026, 11, 28, 23, 30, 36, 120000, tzinfo=timezone.utc)),
        ("2026-11-29T00:30:36.1234567+14:00", datetime(2026, 11, 28, 10, 30, 36, 123456, tzinfo=timezone.utc)),
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=timezone.utc)),  # a leap second
    ], ids=["go-nanoseconds-offset", "utc-z", "half-hour-offset", "lower-case", "space", "unknown-offset",
            "seven-digits", "leap-second"])
    def test_any_rfc3339_install_time_is_read(self, manager: xm.Manager, data_dir: Path, text: str,
                                              expected: datetime) -> None:
        data_dir.mkdir()
        (data_dir / "registry.json").write_bytes(go_json({"org": {"tiny": {"v1": {
            "manifest_hash": "a" * 64, "total_size": 0, "file_count": 0, "installed_at": text}}}}))
        installed_at = manager.get_installed("org/tiny v1").installed_at
        assert installed_at == expected and installed_at.utcoffset() == timedelta(0)

    @pytest.mark.parametrize("value", ["yesterday", "2026-11-28T23:30:36", "2026-13-01T00:00:00Z",
                                       "2026-11-28T23:30:36+24:00", "0000-01-01T00:00:00+01:00", 1764369036, None])
    def test_unreadable_install_time_is_unknown_for_its_entry_only(
        self, manager: xm.Manager, data_dir: Path, value: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        entry = {"manifest_hash": "a" * 64, "total_size": 0, "file_count": 0, "installed_at": value}
        if value is None:
            del entry["installed_at"]
        good = {**entry, "installed_at": "2026-11-28T23:30:36Z"}
        data_dir.mkdir()
        (data_dir / "registry.json").write_bytes(go_json({"org": {"tiny": {"v1": entry, "v2": good}}}))
        with caplog.at_level(logging.WARNING, logger="xprim_models"):
            listed = manager.list_installed()
        assert [(str(item.ref), item.installed_at) for item in listed] == [
            ("org/tiny v1", datetime(1970, 1, 1, tzinfo=timezone.utc)),
            ("org/tiny v2", datetime(2026, 11, 28, 23, 30, 36, tzinfo=timezone.utc)),
        ]
        assert any("install time of org/tiny v1 is unknown" in record.getMessage() for record in caplog.records)
        assert not any("org/tiny v2" in record.getMessage() for record in caplog.records)

    def test_cli_shows_an_unknown_install_time(self, server: LoopbackServer, data_dir: Path,
                                               registry_dir: Path, model: dict[str, bytes]) -> None:
        go_install(registry_dir, data_dir, "xprim-models", "org", "tiny", "v1", installed_at="yesterday")
        listed = cli("list", registry=server, data_dir=data_dir)
        assert listed.returncode == 0
        assert listed.stdout.splitlines()[1].split() == ["org", "tiny", "v1", "6.5", "kB", "unknown"]
        assert "install time of org/tiny v1 is unknown" in listed.stderr
        info = cli("--quiet", "info", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert (info.returncode, info.stderr) == (0, "") and "Installed:    unknown\n" in info.stdout
        item = cli_document(cli("--json", "--quiet", "list", registry=server, data_dir=data_dir))["models"][0]
        assert item["installed_at"] == "1970-01-01T00:00:00Z"

    def test_cli_shows_go_zero_time_west_of_greenwich(self, data_dir: Path, registry_dir: Path,
                                                      model: dict[str, bytes]) -> None:
        go_install(registry_dir, data_dir, "xprim-models", "org", "tiny", "v1", installed_at="0001-01-01T00:00:00Z")

        def west(*args: str) -> subprocess.CompletedProcess[str]:  # a process of its own: TZ is read at start
            result = cli(*args, data_dir=data_dir, env={"TZ": "XYZ+5"}, process=True)  # local time: before year 1
            return result

        listed = west("list")
        assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[-1] == "0001-01-01"
        info = west("info", "org/tiny", "v1")
        assert info.returncode == 0 and "Installed:    0001-01-01 00:00:00\n" in info.stdout
        item = cli_document(west("--json", "list"))["models"][0]
        assert item["installed_at"] == "0001-01-01T00:00:00Z"

    def test_cli_list_path_info_files_and_verify_work_on_a_go_directory(
        self, server: LoopbackServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        root = go_install(registry_dir, data_dir, "xprim-models", "org", "tiny", "v1")
        stored = root / ".xprim-models" / "manifest.json"
        go_copy = stored.read_bytes()
        assert go_copy != published_bytes(registry_dir, "v1")
        listed = cli("list", registry=server, data_dir=data_dir)
        assert listed.returncode == 0 and listed.stdout.splitlines()[1].split() == [
            "org", "tiny", "v1", "6.5", "kB", "2026-11-28"]
        assert cli("path", "org/tiny", "v1", registry=server, data_dir=data_dir).stdout == f"{root}\n"
        info = cli("info", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert info.returncode == 0, info.stderr
        assert "Installed:    2026-11-28 22:30:36\n" in info.stdout  # TZ=UTC
        assert all(f"  {name}" in info.stdout for name in model)
        doc = cli_document(cli("--json", "info", "org/tiny", "v1", registry=server, data_dir=data_dir))["installed"]
        assert doc["installed_at"] == "2026-11-28T22:30:36Z"
        assert [item["path"] for item in doc["files"]] == list(model)
        assert stored.read_bytes() == go_copy  # reading changes nothing

        # Without a registry: the files against the copy, and a plain word that the manifest went unchecked.
        offline = cli("verify", "org/tiny", "v1", data_dir=data_dir)
        assert (offline.returncode, offline.stdout) == (0, "org/tiny v1: ok\n")
        assert "the manifest itself could not be checked" in offline.stderr
        assert "no registry URL is configured" in offline.stderr and "registry sent" not in offline.stderr
        assert stored.read_bytes() == go_copy
        (root / "sub" / "tokenizer.json").write_bytes(b"x" * len(model["sub/tokenizer.json"]))
        damaged = cli("verify", "org/tiny", "v1", data_dir=data_dir)
        assert damaged.returncode == 6 and "  sub/tokenizer.json\n" in damaged.stdout
        (root / "sub" / "tokenizer.json").write_bytes(model["sub/tokenizer.json"])

        # With one: the published manifest, fetched by its hash, checks the files and replaces the copy.
        checked = cli("verify", "org/tiny", "v1", registry=server, data_dir=data_dir)
        assert (checked.returncode, checked.stdout, checked.stderr) == (0, "org/tiny v1: ok\n", "")
        assert stored.read_bytes() == published_bytes(registry_dir, "v1")
        digest = registry_entry(data_dir, "v1")["manifest_hash"]
        assert {path: n for path, n in server.requests.items() if path.startswith("data/")} == {f"data/{digest}": 1}

    def test_verify_checks_the_files_against_the_published_manifest(
        self, make_manager: Callable[..., xm.Manager], data_dir: Path, registry_dir: Path, model: dict[str, bytes],
        server: LoopbackServer,
    ) -> None:
        root = go_install(registry_dir, data_dir, "test-app", "org", "tiny", "v1")
        stored = root / ".test-app" / "manifest.json"
        # A copy that parses but is not what was published: a chunk hash differs.
        lying = json.loads(stored.read_bytes())
        lying["chunks"][0] = "0" * 64
        stored.write_bytes(go_json(lying))
        manager = make_manager()
        assert manager.files("org/tiny v1") == [xm.FileInfo(name, len(data)) for name, data in model.items()]
        assert listed(make_manager(registry_url="").verify("org/tiny v1")) == ["model.safetensors"]  # by the copy
        assert manager.verify("org/tiny v1").ok  # by the published manifest
        assert stored.read_bytes() == published_bytes(registry_dir, "v1")
        weights = bytearray((root / "model.safetensors").read_bytes())
        weights[10] ^= 0xFF
        (root / "model.safetensors").write_bytes(bytes(weights))
        stored.write_bytes(go_json(json.loads(stored.read_bytes())))
        assert list(manager.verify("org/tiny v1", repair=True).repaired) == ["model.safetensors"]
        assert tree(root) == dict(sorted(model.items())) and stored.read_bytes() == published_bytes(registry_dir, "v1")
        assert server.chunk_requests() == 2  # the manifest, then the one damaged chunk

    def test_damaged_stored_manifest_is_named_as_a_local_file(self, manager: xm.Manager, data_dir: Path,
                                                              registry_dir: Path, model: dict[str, bytes]) -> None:
        root = go_install(registry_dir, data_dir, "test-app", "org", "tiny", "v1")
        stored = root / ".test-app" / "manifest.json"
        for damage in (b'{"total_size": 1', go_json({**json.loads(stored.read_bytes()), "total_size": 1})):
            stored.write_bytes(damage)
            with pytest.raises(xm.StorageError) as caught:
                manager.files("org/tiny v1")
            message = str(caught.value)
            assert str(stored) in message and "verify --repair" in message
            assert "registry" not in message and "publisher" not in message

    def test_go_directory_survives_pull_list_prune_verify_and_force(
        self, make_manager: Callable[..., xm.Manager], data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        root = go_install(registry_dir, data_dir, "test-app", "org", "tiny", "v1")
        stored = root / ".test-app" / "manifest.json"
        go_copy, go_entry, theirs = stored.read_bytes(), registry_entry(data_dir, "v1"), go_own_files(data_dir)
        manager, offline = make_manager(), make_manager(registry_url="")

        def intact() -> None:
            assert tree(root) == dict(sorted(model.items()))
            assert stored.read_bytes() == go_copy  # never taken for a half-done swap, never moved
            assert registry_entry(data_dir, "v1") == go_entry  # kept as the Go original wrote it
            assert go_own_files(data_dir) == theirs
            assert sorted(p.name for p in (data_dir / "org" / "tiny").iterdir() if p.name.startswith(".")) == []
            go_check_readable(json.loads((data_dir / "registry.json").read_bytes()))

        manager.pull("org/tiny v2")
        intact()
        listed = manager.list_installed()
        assert (str(listed[0].ref), listed[0].installed_at) == ("org/tiny v1", GO_INSTALLED_UTC)
        intact()
        with pytest.raises(xm.AlreadyInstalledError):
            manager.pull("org/tiny v1")
        intact()
        manager.prune_cache()
        intact()
        assert offline.verify("org/tiny v1").ok
        intact()
        installed = manager.pull("org/tiny v1", force=True)
        assert tree(root) == dict(sorted(model.items())) and installed.path == str(root)
        assert stored.read_bytes() == published_bytes(registry_dir, "v1")
        assert registry_entry(data_dir, "v1")["manifest_hash"] == go_entry["manifest_hash"]
        assert go_own_files(data_dir) == theirs and not list((data_dir / "org" / "tiny").glob(".v1.*"))
        assert manager.verify("org/tiny v1").ok and manager.verify("org/tiny v2").ok

    def test_force_pull_over_a_go_directory_killed_between_renames(
        self, manager: xm.Manager, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        # What a kill leaves when `pull --force` had moved the Go copy aside: first before the
        # new copy took its place (the Go copy comes back), then after (the new copy stays).
        root = go_install(registry_dir, data_dir, "test-app", "org", "tiny", "v1")
        old, staging = data_dir / "org" / "tiny" / ".v1.old", data_dir / "org" / "tiny" / ".v1.staging"
        go_copy = (root / ".test-app" / "manifest.json").read_bytes()
        shutil.copytree(root, staging)
        (staging / ".test-app" / "manifest.json").write_bytes(published_bytes(registry_dir, "v1"))
        os.rename(root, old)
        assert manager.get_installed("org/tiny v1").installed_at == GO_INSTALLED_UTC
        assert (root / ".test-app" / "manifest.json").read_bytes() == go_copy and not old.exists()
        assert tree(root) == dict(sorted(model.items()))
        os.rename(root, old)
        os.rename(staging, root)
        assert [str(item.ref) for item in manager.list_installed()] == ["org/tiny v1"]
        assert not old.exists() and not staging.exists() and tree(root) == dict(sorted(model.items()))
        assert (root / ".test-app" / "manifest.json").read_bytes() == published_bytes(registry_dir, "v1")

    def test_pull_and_remove_beside_go_versions(self, manager: xm.Manager, data_dir: Path, registry_dir: Path,
                                               model: dict[str, bytes]) -> None:
        go_install(registry_dir, data_dir, "test-app", "org", "tiny", "v1")
        v2 = go_install(registry_dir, data_dir, "test-app", "org", "tiny", "v2", "2026-11-27T08:00:00-08:00")
        theirs, go_v2 = go_own_files(data_dir), registry_entry(data_dir, "v2")
        manager.pull("org/tiny latest")
        manager.remove("org/tiny v1")
        assert not (data_dir / "org" / "tiny" / "v1").exists()
        assert (v2 / "config.json").read_bytes() == b'{"layers": 3}\n'
        doc = json.loads((data_dir / "registry.json").read_bytes())
        assert sorted(doc["org"]["tiny"]) == ["latest", "v2"] and registry_entry(data_dir, "v2") == go_v2
        go_check_readable(doc)
        assert go_own_files(data_dir) == theirs
        assert manager.remove_all("org", "tiny") == [xm.ModelRef("org", "tiny", "latest"),
                                                     xm.ModelRef("org", "tiny", "v2")]
        assert go_own_files(data_dir) == theirs and json.loads((data_dir / "registry.json").read_bytes()) == {}

    def test_go_lock_file_is_never_taken_for_a_group(self, manager: xm.Manager, data_dir: Path,
                                                     registry_dir: Path) -> None:
        publish.publish(str(registry_dir), "registry.json.lock", "tiny", "v1", {"a": b"x"}, chunk_size=16)
        data_dir.mkdir()
        (data_dir / "registry.json.lock").touch()
        with pytest.raises(xm.InvalidRefError, match="reserved"):
            manager.pull("registry.json.lock/tiny v1")
        assert (data_dir / "registry.json.lock").is_file() and manager.prune_cache() == 0
        assert (data_dir / "registry.json.lock").is_file()


SQUID_CONF = """\
http_port 127.0.0.1:{port}
pid_filename none
cache_log stdio:/dev/stderr
access_log none
cache_store_log none
cache_mem 64 MB
maximum_object_size_in_memory 16 MB
collapsed_forwarding on
maximum_object_size 1 GB
refresh_pattern /data/[0-9a-f]{{64}}$ 525600 100% 525600
refresh_pattern . 0 20% 4320
http_access allow all
pinger_enable off
shutdown_lifetime 0 seconds
visible_hostname localhost
coredump_dir {directory}
"""


@pytest.fixture
def squid(tmp_path: Path) -> Iterator[str]:
    """A squid forward caching proxy on loopback, with collapsed forwarding; yields its URL."""
    binary = shutil.which("squid") or shutil.which("squid", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.skip("needs squid (the Debian package squid; .ci/run installs it)")
    directory = tmp_path / "squid"
    directory.mkdir()
    for _ in range(3):  # another process may take the free port first
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (directory / "squid.conf").write_text(SQUID_CONF.format(port=port, directory=directory))
        process = subprocess.Popen([binary, "-N", "-d", "1", "-f", str(directory / "squid.conf")],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, errors="replace")
        assert process.stderr is not None
        log: list[str] = []
        for line in process.stderr:  # squid says when it listens, or why it cannot
            log.append(line)
            if "Accepting HTTP Socket connections" in line or "FATAL" in line:
                break
        if log and "Accepting HTTP Socket connections" in log[-1]:
            break
        process.kill()
        process.wait()
    else:
        pytest.skip("squid could not be started: " + "".join(log[-5:]))
    threading.Thread(target=process.stderr.read, daemon=True).start()  # keep its pipe drained
    yield f"http://127.0.0.1:{port}"
    # Killed, not stopped: a graceful stop takes squid 2 s, and there is nothing to save
    # (one process, its cache in memory).
    process.kill()
    process.wait()


class TestFleet:
    """Many machines behind one caching proxy (README, Serving a fleet)."""

    @pytest.mark.slow  # squid and six client processes: 2 s of CPU
    def test_clients_pulling_at_once_through_squid_fetch_each_chunk_about_once(
        self, squid: str, server: LoopbackServer, registry_dir: Path, tmp_path: Path
    ) -> None:
        content = blob(64 * (64 << 10), "fleet")
        publish.publish(str(registry_dir), "org", "fleet", "v1", {"w.bin": content}, chunk_size=64 << 10)
        # The origin sends no Cache-Control: the README's refresh_pattern for data/ makes chunks cacheable.
        clients = 6
        # The origin holds the manifest until every client has fetched the index, so all
        # of them ask squid for the manifest, then for the chunks, at the same time.
        manifest = f"data/{json.loads((registry_dir / 'models.json').read_text())['org']['fleet']['v1']['hash']}"
        hold = server.hold(manifest)

        def release() -> None:
            with server.condition:
                server.condition.wait_for(lambda: server.requests["models.json"] >= clients, timeout=60)
            hold.release.set()

        threading.Thread(target=release, daemon=True).start()
        processes = [
            subprocess.Popen([*PYTHON, "-m", "xprim_models", "--registry", server.url, "--data-dir",
                              str(tmp_path / f"client{n}"), "pull", "org/fleet", "v1"], cwd=HERE,
                             env={**os.environ, "HTTP_PROXY": squid, "NO_PROXY": ""},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for n in range(clients)
        ]
        for process in processes:
            _, err = process.communicate(timeout=child_timeout(120))
            assert process.returncode == 0, err
        for n in range(clients):
            assert (tmp_path / f"client{n}" / "org" / "fleet" / "v1" / "w.bin").read_bytes() == content
        chunks = chunk_paths(registry_dir, model="fleet")
        served = [server.requests[path] for path in chunks]
        egress = sum(server.bytes_sent[path] for path in chunks)
        print(f"{clients} clients: origin served {sum(served)} chunk requests for {len(chunks)} chunks, "
              f"{egress / len(content):.2f}x the model")
        assert max(served) <= 2 and egress <= 1.25 * len(content)  # about once, not once per client
        assert server.requests[manifest] == 1  # six requests at once, collapsed into one
        assert server.requests["models.json"] == clients  # the index is revalidated every time

    def test_update_sees_an_alias_move_behind_an_index_cached_for_an_hour(
        self, squid: str, server: LoopbackServer, registry_dir: Path, data_dir: Path, model: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        server.cache_control["models.json"] = "max-age=3600"
        monkeypatch.setenv("HTTP_PROXY", squid)
        monkeypatch.setenv("NO_PROXY", "")
        assert cli("pull", "org/tiny", "latest", registry=server, data_dir=data_dir).returncode == 0
        # squid holds the index: a client that does not ask to revalidate gets the old one.
        plain = urllib.request.build_opener(urllib.request.ProxyHandler({"http": squid}))
        with plain.open(f"{server.url}/models.json", timeout=10) as response:
            cached = response.read()
        publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v2")
        with plain.open(f"{server.url}/models.json", timeout=10) as response:
            assert response.read() == cached
        result = cli("update", registry=server, data_dir=data_dir)
        assert result.returncode == 0 and "org/tiny latest: update available" in result.stdout, result.stdout


# Runs real commands under strace and fails each system call they make under the
# data directory in turn: ENOSPC, EIO, or SIGKILL at that call. After each run the
# target version must be whole (old or new) or absent, other models untouched, the
# exit typed with no traceback, nothing written outside the data directory, and
# the same command run again must succeed. docs/reliability.md shows the table.
#
# strace attaches once the child has imported everything, so its per-thread call
# counts (which `inject=...:when=N` uses) start with the command itself; the
# injection points are read from a baseline run, never picked by hand.

SWEEP_SYSCALLS = ("write", "pwrite64", "fsync", "fdatasync", "rename", "renameat", "renameat2", "openat", "close",
                  "ftruncate", "mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "copy_file_range")
SWEEP_FAULTS = ("ENOSPC", "EIO", "KILL")
SWEEP_COMMAND = "import sys, xprim_models as xm; sys.exit(xm.main(sys.argv[1:]))"  # run in a fork of a Zygote
SWEEP_LINE = re.compile(r"^(\d+) +(?:<\.\.\. )?(\w+)(\(| resumed>)")


@functools.cache
def sweep_enabled() -> str:
    """Why the sweep does not run here ("" when it does)."""
    if os.environ.get("XPRIM_MODELS_FAULT_SWEEP") != "1":
        return "the strace fault sweep runs with XPRIM_MODELS_FAULT_SWEEP=1 (its own CI step)"
    if not sys.platform.startswith("linux") or shutil.which("strace") is None:
        return "the fault sweep needs strace on Linux (Debian package strace)"
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as child:
        tracer = subprocess.Popen(["strace", "-p", str(child.pid), "-e", "trace=none", "-o", os.devnull],
                                  stderr=subprocess.PIPE, text=True)
        assert tracer.stderr is not None and child.stdin is not None
        said = tracer.stderr.readline()
        child.stdin.close()
        tracer.wait(10)
    if "attached" not in said:
        return f"strace cannot attach to a process here (ptrace not permitted?): {said.strip()}"
    return ""


class SweepHarnessError(Exception):
    """The harness itself failed (strace did not attach, the zygote died): the point is run again."""


class SweepScenario:
    """A registry, a data directory as it stands before the command, and what each outcome may hold."""

    def __init__(self, name: str, root: Path, server: LoopbackServer, registry: Path) -> None:
        self.name, self.root, self.server, self.registry = name, root, server, registry
        self.template = root / "template"
        root.mkdir()
        self.zygotes, self.guard = threading.local(), threading.Lock()
        self.started: list[Zygote] = []  # every thread's zygote, for close()
        self.streams = root / "streams"  # each command's stdout, stderr and strace log
        self.streams.mkdir()
        self.contents: dict[str, dict[str, bytes]] = {}  # manifest hash -> the files it makes
        self.before: dict[str, str] = {}  # version as "group/model version" -> manifest hash
        small = {"a.bin": blob(5_000, f"{name}-a"), "sub/b.txt": b"config\n", "empty": b"", "c.bin": blob(3_000)}
        big = {"weights.bin": blob(700_000, f"{name}-w"), "tail.bin": blob(1_000, f"{name}-t")}
        other = {"model.bin": blob(4_000, f"{name}-o")}
        if name == "pull-small":
            self.publish("org/m v1", small, 1024)
            self.command, self.target, self.allowed = ["pull", "org/m", "v1"], "org/m v1", ["absent", "new"]
        elif name == "pull-streamed":  # chunks over 256 KiB stream into their files
            self.publish("org/m v1", big, 300 << 10)
            self.command, self.target, self.allowed = ["pull", "org/m", "v1"], "org/m v1", ["absent", "new"]
        elif name == "pull-repeated":  # a 1 MiB chunk, over the write buffer, copied to where it repeats
            repeated = blob(1 << 20, f"{name}-r")
            self.publish("org/m v1", {"weights.bin": repeated * 2, "tail.bin": blob(1_000, f"{name}-t")}, 1 << 20)
            self.command, self.target, self.allowed = ["pull", "org/m", "v1"], "org/m v1", ["absent", "new"]
        elif name == "pull-force":
            self.publish("org/m v1", small, 1024)
            self.install("org/m v1")
            self.publish("org/m v1", {**small, "a.bin": blob(5_000, f"{name}-republished")}, 1024)
            self.command, self.target, self.allowed = ["pull", "org/m", "v1", "--force"], "org/m v1", ["old", "new"]
        elif name == "update-alias":
            self.publish("org/m v1", small, 1024)
            self.publish("org/m v2", {**small, "c.bin": blob(3_000, "v2")}, 1024)
            publish.add_alias(str(self.registry), "org", "m", "latest", "v1")
            self.install("org/m latest")
            publish.add_alias(str(self.registry), "org", "m", "latest", "v2")
            self.command, self.target, self.allowed = ["update", "org/m", "--apply"], "org/m latest", ["old", "new"]
        elif name == "remove":
            self.publish("org/m v1", small, 1024)
            self.publish("org/m v2", {**small, "c.bin": blob(3_000, "v2")}, 1024)
            self.install("org/m v1")
            self.install("org/m v2")
            self.command, self.target, self.allowed = ["remove", "org/m", "v1"], "org/m v1", ["old", "absent"]
        else:
            assert name == "pull-beside"
            self.publish("org/other v1", other, 1024)
            self.install("org/other v1")
            self.publish("org/m v1", small, 1024)
            self.command, self.target, self.allowed = ["pull", "org/m", "v1"], "org/m v1", ["absent", "new"]
        index = json.loads((self.registry / "models.json").read_text())
        group, model, version = re.split(r"[/ ]", self.target)
        entry = index[group][model][version]
        self.new = index[group][model][entry["alias"]]["hash"] if "alias" in entry else entry["hash"]

    def publish(self, ref: str, files: dict[str, bytes], chunk_size: int) -> None:
        group, model, version = re.split(r"[/ ]", ref)
        self.contents[publish.publish(str(self.registry), group, model, version, files, chunk_size=chunk_size)] = files

    def install(self, ref: str) -> None:
        installed = self.manager(self.template).pull(ref)
        self.before[ref] = installed.manifest_hash

    def manager(self, data_dir: Path) -> xm.Manager:
        return xm.Manager(xm.Config("xprim-models", self.server.url, str(data_dir)), retry_backoff=0.01, timeout=5.0)

    def argv(self, data_dir: Path) -> list[str]:
        return ["--registry", self.server.url, "--data-dir", str(data_dir), "--quiet", *self.command,
                *(["--concurrency", "1"] if self.command[0] != "remove" else [])]

    def fresh(self, name: str) -> Path:
        data_dir = self.root / name
        if self.template.exists():
            shutil.copytree(self.template, data_dir, symlinks=True)
        else:
            data_dir.mkdir()
        return data_dir

    def run(self, data_dir: Path, inject: str = "") -> tuple[subprocess.CompletedProcess[str], str]:
        """The command in a child under strace (attached before it starts); its result and strace's log."""
        zygote = getattr(self.zygotes, "zygote", None)
        if zygote is None:  # one per thread: a zygote runs one child at a time
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(self.root)}
            zygote = self.zygotes.zygote = Zygote(env)
            with self.guard:
                self.started.append(zygote)
        out, err, log = (self.streams / f"{data_dir.name}.{kind}" for kind in ("out", "err", "strace"))
        tracers = []

        def attach(pid: int) -> None:
            tracer = subprocess.Popen(
                ["strace", "-f", "-y", "-p", str(pid), "-o", str(log), "-e", f"trace={','.join(SWEEP_SYSCALLS)}",
                 *(["-e", f"inject={inject}"] if inject else [])], stderr=subprocess.PIPE, text=True)
            tracers.append(tracer)
            assert tracer.stderr is not None
            attached = tracer.stderr.readline()
            if "attached" not in attached:
                raise SweepHarnessError(f"strace did not attach: {attached}")

        try:
            result = zygote.run(SWEEP_COMMAND, self.argv(data_dir), out=out, err=err, between=attach, timeout=120)
        except ZygoteError as exc:
            raise SweepHarnessError(str(exc)) from exc
        finally:
            for tracer in tracers:  # it ends with the child
                tracer.wait(30)
                assert tracer.stderr is not None
                tracer.stderr.close()
        trace = log.read_text()
        for path in (out, err, log):
            path.unlink()
        return result, trace

    def close(self) -> None:
        for zygote in self.started:
            zygote.close()

    def points(self, trace: str, data_dir: Path) -> list[tuple[str, int]]:
        """(system call, N): the Nth call of that kind in some thread, made on the data directory."""
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        found = set()
        for line in trace.splitlines():
            match = SWEEP_LINE.match(line)
            if not match or match.group(3) != "(":  # a resumed line: counted where it began
                continue
            tid, call = match.group(1), match.group(2)
            counts[tid, call] += 1
            if str(data_dir) in line:
                found.add((call, counts[tid, call]))
        return sorted(found)

    def state(self, data_dir: Path) -> dict[str, str]:
        """What each listed version holds, checked byte by byte: its manifest hash, or a problem."""
        states = {}
        for item in self.manager(data_dir).list_installed():
            files = self.contents.get(item.manifest_hash)
            root = Path(item.path)
            intact = files is not None and root.is_dir() and tree(root) == dict(sorted(files.items()))
            states[str(item.ref)] = item.manifest_hash if intact else f"NOT INTACT: {item.path}"
        return states

    def check(self, data_dir: Path, fault: str, result: subprocess.CompletedProcess[str], trace: str) -> list[str]:
        """The invariants after a faulted run; returns what broke."""
        problems = []
        if fault == "KILL":
            if result.returncode != -signal.SIGKILL:
                problems.append(f"not killed: exit {result.returncode}")
        elif result.returncode not in (0, 5, 6, 7) or "Traceback" in result.stderr or (
                result.returncode and "error:" not in result.stderr):
            problems.append(f"exit {result.returncode}: {result.stderr.strip()[-300:]}")
        inside = (str(data_dir) + os.sep, str(self.streams) + os.sep, "/dev/")
        for line in trace.splitlines():
            match = SWEEP_LINE.match(line)
            if not match or match.group(3) != "(" or match.group(2) in ("close", "fsync", "fdatasync") or (
                    match.group(2) == "openat" and not re.search(r"O_WRONLY|O_RDWR|O_CREAT", line)):
                continue
            # Descriptors as strace -y names them; quoted paths too, but not the data a write carries.
            quoted = [] if "write" in match.group(2) else re.findall(r'"(/[^"]*)"', line)
            for where in re.findall(r"<(/[^>]*)>", line) + quoted:
                if where not in (str(data_dir), str(HERE)) and not where.startswith(inside):
                    problems.append(f"wrote outside the data directory: {line.strip()[:200]}")
        try:
            states = self.state(data_dir)
        except xm.ModelsError as exc:
            return [*problems, f"list failed after the fault: {exc}"]
        outcome = {"absent": None, "old": self.before.get(self.target), "new": self.new}
        if states.get(self.target) not in [outcome[name] for name in self.allowed]:
            problems.append(f"{self.target} is {states.get(self.target)}, allowed: {self.allowed}")
        for ref, digest in self.before.items():
            if ref != self.target and states.get(ref) != digest:
                problems.append(f"{ref} changed: {states.get(ref)}")
        again = xm.main(self.argv(data_dir))
        if again != 0 and not (self.command[0] == "remove" and again == 4):
            problems.append(f"running it again exits {again}")
        manager = self.manager(data_dir)
        for item in manager.list_installed():
            damaged = listed(manager.verify(item.ref))
            if damaged:
                problems.append(f"verify {item.ref} after the rerun: {damaged}")
        return problems


SWEEP_SCENARIOS = ["pull-small", "pull-streamed", "pull-repeated", "pull-force", "update-alias", "remove",
                   "pull-beside"]


@pytest.mark.skipif(bool(sweep_enabled()), reason=sweep_enabled() or "runs")
class TestFaultSweep:
    @pytest.mark.timeout(600)
    @pytest.mark.parametrize("scenario", SWEEP_SCENARIOS)
    def test_no_fault_loses_or_mixes_a_model(self, scenario: str, tmp_path: Path, server: LoopbackServer,
                                             registry_dir: Path) -> None:
        sc = SweepScenario(scenario, tmp_path / "sweep", server, registry_dir)
        try:
            self.sweep(scenario, sc)
        finally:
            sc.close()

    def sweep(self, scenario: str, sc: SweepScenario) -> None:
        from concurrent.futures import ThreadPoolExecutor

        baseline = sc.fresh("baseline")
        result, trace = sc.run(baseline)
        assert result.returncode == 0, result.stderr
        points = sc.points(trace, baseline)
        assert points, "the baseline made no system call under the data directory"

        def attempt(job: tuple[int, str, str, int]) -> dict[str, Any]:
            number, fault, call, nth = job
            data_dir = sc.fresh(f"run{number}")
            action = "signal=KILL" if fault == "KILL" else f"error={fault}"
            try:
                result, trace = sc.run(data_dir, f"{call}:{action}:when={nth}")
            except SweepHarnessError:  # once more, from a fresh copy and a fresh zygote
                shutil.rmtree(data_dir, ignore_errors=True)
                data_dir = sc.fresh(f"run{number}")
                result, trace = sc.run(data_dir, f"{call}:{action}:when={nth}")
            hit = "INJECTED" in trace or (fault == "KILL" and result.returncode == -signal.SIGKILL)
            problems = sc.check(data_dir, fault, result, trace) if hit else []
            shutil.rmtree(data_dir, ignore_errors=True)
            return {"call": call, "nth": nth, "fault": fault, "hit": hit, "problems": problems}

        jobs = [(n, fault, call, nth) for n, (fault, (call, nth)) in
                enumerate((fault, point) for point in points for fault in SWEEP_FAULTS)]
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            results = list(pool.map(attempt, jobs))
        report = os.environ.get("XPRIM_MODELS_FAULT_SWEEP_REPORT")
        if report:
            with open(f"{report}.{scenario}.json", "w") as handle:
                json.dump(results, handle)
        broken = [f"{r['fault']} at {r['call']} #{r['nth']}: {'; '.join(r['problems'])}"
                  for r in results if r["problems"]]
        assert sum(r["hit"] for r in results) >= len(results) * 0.9, "most injections missed their call"
        assert not broken, "\n".join(broken)
