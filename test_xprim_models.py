"""Tests for xprim_models: a real HTTP server on loopback, real files, subprocesses.

Fixtures first (an isolated environment, registries built with
examples/publish.py, a loopback server that counts requests and injects
faults), then one class per module section: ``pytest -k TestPull``.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import http.server
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import xprim_models as xm

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("publish", HERE / "examples" / "publish.py")
assert _spec is not None and _spec.loader is not None
publish = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish)


# --- Fixtures -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, XDG and APPDATA inside tmp_path; no inherited *_MODELS_DIR or proxies."""
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.endswith("_MODELS_DIR") or name.lower().endswith("_proxy") or name == "XPRIM_MODELS_REGISTRY_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("APPDATA", str(home / "AppData" / "Roaming"))
    monkeypatch.setenv("TZ", "UTC")
    return home


def blob(size: int, seed: str = "x") -> bytes:
    """Deterministic incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


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
    ) -> None:
        self.status, self.headers = status, headers or {}
        self.cut_after, self.corrupt, self.extra = cut_after, corrupt, extra
        self.extra_hidden = extra_hidden  # extra bytes not announced in Content-Length
        self.stall = stall


class RegistryServer:
    """Serves a registry directory on 127.0.0.1; counts requests and bytes per path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        self.range_requests: list[tuple[str, int]] = []
        self.faults: dict[str, list[Fault]] = collections.defaultdict(list)
        self.always: dict[str, Fault] = {}
        self.range_enabled = True
        self.condition = threading.Condition()
        self.active = 0
        self.max_active = 0
        self.gate = 0  # hold data/ requests until this many are in flight at once
        self.gate_open = False
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fail(self, path: str, *faults: Fault) -> None:
        self.faults[path].extend(faults)

    def chunk_requests(self) -> int:
        return sum(count for path, count in self.requests.items() if path.startswith("data/"))

    def close(self) -> None:
        self.stop.set()
        with self.condition:
            self.gate_open = True
            self.condition.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = request.path.lstrip("/")
        with self.condition:
            self.requests[path] += 1
            fault = self.faults[path].pop(0) if self.faults.get(path) else self.always.get(path)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.gate and path.startswith("data/"):
                if self.active >= self.gate:
                    self.gate_open = True
                    self.condition.notify_all()
                self.condition.wait_for(lambda: self.gate_open, timeout=10)
        try:
            self.respond(request, path, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.condition:
                self.active -= 1

    def respond(self, request: http.server.BaseHTTPRequestHandler, path: str, fault: Fault | None) -> None:
        if fault is not None and fault.status:
            request.send_response(fault.status)
            for name, value in fault.headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        file = self.root / path
        if ".." in path or not file.is_file():
            request.send_error(404)
            return
        body = file.read_bytes()
        if fault is not None and fault.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        header = request.headers.get("Range", "")
        if self.range_enabled and header.startswith("bytes=") and header.endswith("-"):
            start = int(header[len("bytes=") : -1])
            self.range_requests.append((path, start))
        announced = body[start:] + (fault.extra if fault is not None and not fault.extra_hidden else b"")
        request.send_response(206 if start else 200)
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        request.send_header("Content-Length", str(len(announced)))
        request.end_headers()
        if fault is not None and fault.stall:
            self.stop.wait(30)
            return
        payload = announced + (fault.extra if fault is not None and fault.extra_hidden else b"")
        if fault is not None and fault.cut_after is not None:
            payload = payload[: fault.cut_after]
        request.wfile.write(payload)
        with self.condition:
            self.bytes_sent[path] += len(payload)
        if fault is not None and fault.cut_after is not None:
            request.close_connection = True


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def server(registry_dir: Path) -> Iterator[RegistryServer]:
    registry_dir.mkdir(exist_ok=True)
    running = RegistryServer(registry_dir)
    yield running
    running.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_manager(server: RegistryServer, data_dir: Path) -> Callable[..., xm.Manager]:
    def make(**options: Any) -> xm.Manager:
        options.setdefault("retry_backoff", 0.01)
        options.setdefault("timeout", 5.0)
        registry_url = options.pop("registry_url", server.url)
        return xm.Manager(xm.Config("test-app", registry_url, str(data_dir)), **options)

    return make


@pytest.fixture
def manager(make_manager: Callable[..., xm.Manager]) -> xm.Manager:
    return make_manager()


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


def tree(root: Path) -> dict[str, bytes]:
    """Every file below root (hidden metadata excluded), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".")
    }


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xprim_models", *args], capture_output=True, text=True, cwd=HERE,
        env={**os.environ, **(env or {})}, input=input, timeout=timeout,
    )
