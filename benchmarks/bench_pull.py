"""Benchmark ``xprim_models pull`` against aria2c and curl on a loopback nginx.

The script builds a registry of incompressible data with ``examples/publish.py``
(cached under ``--work`` and reused by later invocations with the same size and
chunk size), serves it with a private nginx on 127.0.0.1, then runs our pull and
the peers interleaved, ``--repeat`` times each in rotating order, and prints a
table of wall time, throughput, peak RSS and TCP connections per tool.

    python3 benchmarks/bench_pull.py                          # 1 GiB, 10 MiB chunks, output on /dev/shm
    python3 benchmarks/bench_pull.py --size 64M --repeat 2    # a quick check
    python3 benchmarks/bench_pull.py --out /var/tmp           # output on disk
    python3 benchmarks/bench_pull.py --size 256M --chunk-size 64K --repeat 3
    python3 benchmarks/bench_pull.py --peers ours,aria2c --concurrency 8 --json results.json
    python3 benchmarks/bench_pull.py --peers ours,squid     # direct against through a warm squid

What is measured, per run:

* wall time of the whole command, from spawn to exit (taken by the launcher). Ours runs
  as a copy installed in a project's venv does: from a fresh venv of ``--python``, imported,
  with its bytecode compiled beforehand (Python start-up, index and
  manifest fetch, verification, reconstruction and fsync included for ours; the
  peers only fetch the chunk URLs into a directory, with no verification and no
  reconstruction);
* peak RSS: ``ru_maxrss`` from ``os.wait4`` on the command (the largest resident
  set of the process and the descendants it waited for). The command is spawned
  by a minimal ``python -I -S`` launcher, because Linux carries a parent's peak
  RSS through fork and exec; the launcher's own peak (about 9 MiB) is therefore a
  floor, printed under the table;
* TCP connections: distinct ``$connection`` serial numbers in the lines nginx
  appended to its access log during the run (the fallback server counts
  accepted connections instead).

Outputs are deleted and ``sync`` is called between runs, outside the timing. The
registry is read once before the first run so every tool finds it in the page
cache. If nginx is missing, the script tries ``apt-get install nginx-light`` (then
``nginx``); aria2c likewise (package ``aria2``). Without nginx it falls back to a
threaded Python HTTP server and says so: the server then limits every tool.

Standard library only; Linux is the target (``/proc``, ``os.wait4``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "xprim_models.py")
GROUP, MODEL, VERSION = "bench", "random", "v1"
PEERS = ("ours", "aria2c", "curl", "squid")
SMALL_FILES = (("config.json", 1_229), ("tokenizer.bin", 3_000_017))  # odd sizes: files straddle chunks
SHM = "/dev/shm"  # noqa: S108 - only a parent for mkdtemp, which makes a private directory
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``"1G"`` → 1073741824; accepts K/M/G/T with optional ``i``/``B`` (all binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1G, 256M, 64K)")
    value = int(float(match.group(1)) * UNITS[match.group(2).upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def human(size: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = UNITS[unit[0]]
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


# --- Registry ------------------------------------------------------------------------


@dataclass
class Registry:
    root: str
    total_size: int
    chunk_size: int
    chunks: list[str]  # unique chunk digests, in manifest order
    files: list[dict[str, Any]]  # {"path", "size", "sha256"}


def build_registry(work: str, size: int, chunk_size: int) -> Registry:
    """Create (or reuse) ``<work>/registry-<size>-<chunk_size>``."""
    root = os.path.join(work, f"registry-{size}-{chunk_size}")
    marker = os.path.join(root, "bench.json")
    with contextlib.suppress(OSError, ValueError, KeyError):
        with open(marker, encoding="utf-8") as handle:
            info = json.load(handle)
        if info["total_size"] == size and info["chunk_size"] == chunk_size:
            log(f"reusing registry {root}")
            return Registry(root, size, chunk_size, info["chunks"], info["files"])
    shutil.rmtree(root, ignore_errors=True)
    small = sum(length for _, length in SMALL_FILES)
    if size <= small:
        raise SystemExit(f"--size must exceed {small} bytes")
    layout = [("model.safetensors", size - small), *SMALL_FILES]
    source = os.path.join(work, f"source-{size}")
    os.makedirs(source, exist_ok=True)
    log(f"building registry {root} ({human(size)}, {human(chunk_size)} chunks)...")
    started = time.perf_counter()
    # Deterministic and fast; incompressible enough for HTTP, not for cryptography.
    generator = random.Random(20240607)  # noqa: S311
    files: list[dict[str, Any]] = []
    for name, length in layout:
        digest = hashlib.sha256()
        with open(os.path.join(source, name), "wb") as handle:
            left = length
            while left:
                piece = generator.randbytes(min(left, 4 << 20))
                digest.update(piece)
                handle.write(piece)
                left -= len(piece)
        files.append({"path": f"sub/{name}" if name == "config.json" else name, "size": length,
                      "sha256": digest.hexdigest()})
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from publish import publish  # type: ignore[import-not-found]

    manifest_hash = publish(root, GROUP, MODEL, VERSION,
                            [(entry["path"], os.path.join(source, os.path.basename(entry["path"])))
                             for entry in files], chunk_size=chunk_size)
    shutil.rmtree(source)
    with open(os.path.join(root, "data", manifest_hash), encoding="utf-8") as handle:
        manifest = json.load(handle)
    chunks = list(dict.fromkeys(manifest["chunks"]))
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump({"total_size": size, "chunk_size": chunk_size, "chunks": chunks, "files": files}, handle)
    log(f"built in {time.perf_counter() - started:.1f}s: {len(chunks)} chunks")
    return Registry(root, size, chunk_size, chunks, files)


def warm_page_cache(root: str) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                while handle.read(8 << 20):
                    pass


# --- Tools and installation ----------------------------------------------------------


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def apt_install(packages: Sequence[str]) -> bool:
    """Install the first package of ``packages`` that apt-get can install."""
    if not shutil.which("apt-get"):
        return False
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return False
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def install(package: str) -> bool:
        command = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        return subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              check=False).returncode == 0

    for package in packages:
        log(f"installing {package} with apt-get...")
        if install(package):
            return True
    log("apt-get install failed; running apt-get update and retrying...")
    subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return any(install(package) for package in packages)


def ensure_tool(name: str, packages: Sequence[str]) -> str | None:
    path = find_tool(name)
    if path is None:
        apt_install(packages)
        path = find_tool(name)  # a failed postinst (say, port 80 taken) still leaves the binary
    return path


def tool_version(command: Sequence[str], pattern: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "?"
    match = re.search(pattern, result.stdout + result.stderr)
    return match.group(1) if match else "?"


# --- Servers -------------------------------------------------------------------------


class Server(Protocol):
    url: str
    description: str

    def mark(self) -> int: ...

    def connections_since(self, mark: int) -> int: ...

    def stop(self) -> None: ...


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, alive: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


NGINX_CONF = """\
{user}worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    gzip off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp}/client_body;
    log_format bench '$connection $status $body_bytes_sent "$request"';
    access_log {tmp}/access.log bench;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    def __init__(self, binary: str, root: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="xprim-bench-nginx-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = os.path.join(self.tmp, "access.log")
        self.version = tool_version([binary, "-v"], r"nginx/(\S+)")
        self.description = f"nginx {self.version}"
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            # As root, workers would drop to an unprivileged user that may not read --work.
            user = "user root;\n" if os.geteuid() == 0 else ""
            handle.write(NGINX_CONF.format(user=user, tmp=self.tmp, port=self.port, root=os.path.abspath(root)))
        open(self.access_log, "wb").close()
        self.process = subprocess.Popen(
            [binary, "-p", self.tmp, "-e", os.path.join(self.tmp, "error.log"), "-c", conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            wait_listening(self.port, lambda: self.process.poll() is None)
        except RuntimeError as exc:
            self.stop()
            errors = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            raise RuntimeError(f"nginx failed to start: {exc}\n{errors}") from exc

    def mark(self) -> int:
        return os.path.getsize(self.access_log)

    def _connections(self, mark: int) -> tuple[int, int]:
        with open(self.access_log, "rb") as handle:
            handle.seek(mark)
            lines = handle.read().splitlines()
        return len(lines), len({line.split(b" ", 1)[0] for line in lines if line})

    def connections_since(self, mark: int) -> int:
        # nginx logs a request after its last byte is sent: let the tail settle.
        previous = self._connections(mark)
        for _ in range(20):
            time.sleep(0.05)
            current = self._connections(mark)
            if current == previous:
                break
            previous = current
        return previous[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class PythonServer:
    """Fallback: a threaded ``http.server`` in this process that counts connections."""

    def __init__(self, root: str) -> None:
        counter = self
        self.count = 0
        self.lock = threading.Lock()

        class Handler(http.server.SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive for clients that want it

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=root, **kwargs)

            def setup(self) -> None:
                with counter.lock:
                    counter.count += 1
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.description = f"Python {sys.version.split()[0]} http.server (fallback)"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def mark(self) -> int:
        with self.lock:
            return self.count

    def connections_since(self, mark: int) -> int:
        return self.mark() - mark

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_server(root: str) -> Server:
    binary = ensure_tool("nginx", ("nginx-light", "nginx"))
    problem = "nginx is not installed and apt-get could not install it"
    if binary:
        try:
            return Nginx(binary, root)
        except (OSError, RuntimeError) as exc:
            problem = str(exc)
    log(f"WARNING: {problem}.\nWARNING: falling back to Python's threaded http.server: it is much slower "
        "than nginx and limits every tool, so these numbers do not show client speed.")
    return PythonServer(root)


# --- Runs ----------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    repetition: int
    seconds: float
    peak_rss_kib: int
    connections: int


@dataclass
class Tool:
    key: str
    label: str
    version: str
    runs: list[Run] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, registry: Registry, server: Server, out: str) -> None:
        self.args, self.registry, self.server, self.out = args, registry, server, out
        self.target = os.path.join(out, "target")
        self.urls = [f"{server.url}/data/{digest}" for digest in registry.chunks]
        self.verified = False
        self.rss_floor_kib = 0

    def command(self, key: str) -> list[str]:
        n = self.args.concurrency
        if key in ("ours", "squid"):
            ours = [*client_command(self.args), "--registry", self.server.url, "--data-dir", self.target,
                    "--quiet", "pull", f"{GROUP}/{MODEL}", VERSION, "--concurrency", str(n)]
            return ["env", f"HTTP_PROXY={self.args.squid_url}", *ours] if key == "squid" else ours
        if key == "aria2c":
            listing = os.path.join(self.out, "aria2c-urls.txt")
            with open(listing, "w", encoding="utf-8") as handle:
                handle.write("\n".join(self.urls) + "\n")
            return [self.args.aria2c, f"-j{n}", "-x1", "-s1", "--max-connection-per-server=1",
                    "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
                    "--no-conf", "-q", "-i", listing, "-d", self.target]
        if key == "curl":
            config = os.path.join(self.out, "curl.conf")
            with open(config, "w", encoding="utf-8") as handle:
                for url in self.urls:
                    name = url.rsplit("/", 1)[1]
                    handle.write(f'url = "{url}"\noutput = "{self.target}/{name}"\n')
            return [self.args.curl, "--parallel", "--parallel-max", str(n), "-s", "-S", "--fail",
                    "--create-dirs", "-K", config]
        raise ValueError(key)

    def run(self, key: str, repetition: int) -> Run:
        command = self.command(key)
        shutil.rmtree(self.target, ignore_errors=True)
        os.makedirs(self.target)
        os.sync()
        mark = self.server.mark()
        returncode, output, stderr = launch(LAUNCHER, command)
        fields = output.split()
        if returncode != 0 or len(fields) != 4 or fields[0] != b"0":
            raise RuntimeError(f"{' '.join(command)} failed ({output!r}):\n{stderr}")
        seconds, peak_rss_kib, self.rss_floor_kib = float(fields[1]), int(fields[2]), int(fields[3])
        connections = self.server.connections_since(mark)
        self.verify(key)
        return Run(key, repetition, seconds, peak_rss_kib, connections)

    def verify(self, key: str) -> None:
        if key in ("ours", "squid"):
            base = os.path.join(self.target, GROUP, MODEL, VERSION)
            for entry in self.registry.files:
                path = os.path.join(base, *entry["path"].split("/"))
                if os.path.getsize(path) != entry["size"]:
                    raise RuntimeError(f"{path}: {os.path.getsize(path)} bytes, expected {entry['size']}")
                if not self.verified and sha256_file(path) != entry["sha256"]:
                    raise RuntimeError(f"{path}: content differs from the published file")
            self.verified = True
        else:
            total = sum(os.path.getsize(os.path.join(self.target, name)) for name in self.registry.chunks)
            expected = sum(os.path.getsize(os.path.join(self.registry.root, "data", name))
                           for name in self.registry.chunks)
            if total != expected:
                raise RuntimeError(f"{key}: downloaded {total} bytes, expected {expected}")


def client_command(args: argparse.Namespace) -> list[str]:
    """How our client runs: imported, as an installed copy or ``python -m xprim_models`` runs it,
    with its bytecode compiled beforehand (pip compiles it at install). Run as a script instead
    (``python xprim_models.py``), Python would compile the whole module on every run."""
    directory, name = os.path.split(os.path.abspath(args.client))
    module = os.path.splitext(name)[0]
    return [args.client_python, "-c", f"import sys; sys.path.insert(0, sys.argv.pop(1)); from {module} import main; "
            "sys.exit(main())", directory]


def prepare_client(args: argparse.Namespace) -> None:
    """Set ``args.client_python``: the interpreter of a fresh venv made from ``--python``, as a
    project's venv would run the client. The interpreter's own site-packages may run start-up
    hooks (``.pth`` files) that such a venv does not; on the benchmark machine one imports certifi,
    20 ms per run. Then write the client's bytecode where its import looks for it (even under
    PYTHONDONTWRITEBYTECODE)."""
    version = tool_version([args.python, "--version"], r"Python (\S+)")
    venv = os.path.join(args.work, f"venv-python-{version}")
    args.client_python = os.path.join(venv, "bin", "python")
    if not os.path.exists(args.client_python):
        made = subprocess.run([args.python, "-m", "venv", "--without-pip", venv], check=False,
                              capture_output=True, text=True)
        if made.returncode != 0:
            log(f"WARNING: no venv ({made.stderr.strip()[-200:]}); running our client with {args.python}")
            args.client_python = args.python
    subprocess.run([args.client_python, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
                    args.client], check=True)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(4 << 20):
            digest.update(piece)
    return digest.hexdigest()


# Runs a command and prints "exit-code seconds peak-RSS-KiB own-peak-RSS-KiB". A process
# inherits, through exec, the peak RSS of the process that forked it (Linux keeps the
# old address space's high-water mark), so the command must be forked from this small
# interpreter, not from the benchmark, whose peak RSS it would otherwise report.
LAUNCHER = """
import os, signal, sys, time
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
null = os.open(os.devnull, os.O_RDWR)
actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)]
started = time.perf_counter()
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ, file_actions=actions)
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
print(os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss, own)
"""


# --- Report --------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def filesystem(path: str) -> str:
    path, best, kind = os.path.realpath(path), "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            mount = fields[1].replace("\\040", " ")
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fields[2]
    return kind


def launch(launcher: str, arguments: Sequence[str]) -> tuple[int, bytes, str]:
    """Run ``launcher``, a ``python -c`` program that runs a command and prints its figures;
    return its exit status, what it printed, and the command's stderr."""
    with tempfile.TemporaryFile() as errors:
        # A session of its own, so that an interrupted benchmark can end the command with it.
        process = subprocess.Popen([sys.executable, "-I", "-S", "-c", launcher, *arguments],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                   start_new_session=True)
        try:
            output, _ = process.communicate()
        except BaseException:
            process.terminate()  # the launcher kills the command, reaps it and exits
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise
        errors.seek(0)
        return process.returncode, output, errors.read().decode(errors="replace").strip()


def write_json(target: str, document: dict[str, Any]) -> None:
    """Raw results as JSON, on stdout for "-"."""
    text = json.dumps(document, indent=2)
    if target == "-":
        print(text)
        return
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def table(tools: list[Tool], args: argparse.Namespace, bench: Bench) -> str:
    registry, server, out = bench.registry, bench.server, bench.out
    python = tool_version([args.python, "--version"], r"Python (\S+)")
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {python}, {server.description}; "
        f"output: {out} ({filesystem(out)}); {human(registry.total_size)}, {human(registry.chunk_size)} chunks "
        f"({len(registry.chunks)}), concurrency {args.concurrency}, {args.repeat} runs",
        "peers: " + ", ".join(f"{tool.key} {tool.version}" for tool in tools if tool.key != "ours"),
        f"{'tool':<16}{'median s':>9}{'min s':>8}{'max s':>8}{'MiB/s':>9}{'peak RSS MiB':>15}{'connections':>14}",
    ]
    medians: dict[str, float] = {}
    for tool in tools:
        seconds = [run.seconds for run in tool.runs]
        medians[tool.key] = statistics.median(seconds)
        counts = sorted({run.connections for run in tool.runs})
        connections = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        rss = max(run.peak_rss_kib for run in tool.runs) / 1024
        rate = registry.total_size / (1 << 20) / medians[tool.key]
        lines.append(f"{tool.label:<16}{medians[tool.key]:>9.2f}{min(seconds):>8.2f}{max(seconds):>8.2f}"
                     f"{rate:>9.1f}{rss:>15.1f}{connections:>14}")
    lines.append(f"(peak RSS cannot read below the launcher's own {bench.rss_floor_kib / 1024:.1f} MiB)")
    if "ours" in medians:
        lines.extend(f"ratio ours/{key} (median): {medians['ours'] / medians[key]:.2f}"
                     for key in medians if key not in ("ours", "squid"))
        if "squid" in medians:
            lines.append(f"ratio via squid/direct (median): {medians['squid'] / medians['ours']:.2f}")
    return "\n".join(lines)


# --- Main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default="1G", help="model size (default 1G)")
    parser.add_argument("--chunk-size", type=parse_size, default="10M", help="registry chunk size (default 10M)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel downloads for every tool (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per tool (default 5)")
    parser.add_argument("--out", metavar="DIR",
                        help="where downloads go; a temporary directory is made inside it "
                             "(default: under /dev/shm if it exists, else the system temp dir)")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    parser.add_argument("--work", metavar="DIR", default=os.path.join(cache, "xprim-models-bench"),
                        help="where registries are built and kept for reuse (default %(default)s)")
    parser.add_argument("--peers", default="ours,aria2c,curl",
                        help=f"comma-separated tools to run, from {', '.join(PEERS)} (default %(default)s); "
                             "squid is our client through a warm squid cache")
    parser.add_argument("--client", default=CLIENT, metavar="PATH",
                        help="the xprim_models.py to run as ours (default: this checkout's)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for our client (default: this one)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="also write raw results as JSON to FILE (or stdout)")
    args = parser.parse_args(argv)
    args.peers = [peer.strip() for peer in args.peers.split(",") if peer.strip()]
    unknown = [peer for peer in args.peers if peer not in PEERS]
    if unknown or not args.peers:
        parser.error(f"--peers: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PEERS)}")
    if args.concurrency < 1 or args.repeat < 1:
        parser.error("--concurrency and --repeat must be at least 1")
    return args


def resolve_tools(args: argparse.Namespace) -> list[Tool]:
    tools: list[Tool] = []
    for key in args.peers:
        if key == "ours":
            version = tool_version([args.python, CLIENT, "--version"], r"(\d[\w.+-]*)")
            tools.append(Tool(key, "xprim-models", version))
        elif key == "aria2c":
            args.aria2c = ensure_tool("aria2c", ("aria2",))
            if args.aria2c is None:
                log("WARNING: aria2c is unavailable and could not be installed; skipping it")
                continue
            version = tool_version([args.aria2c, "--version"], r"aria2 version (\S+)")
            tools.append(Tool(key, f"aria2c -j{args.concurrency}", version))
        elif key == "curl":
            args.curl = find_tool("curl")
            if args.curl is None:
                log("WARNING: curl is not installed; skipping it")
                continue
            tools.append(Tool(key, "curl --parallel", tool_version([args.curl, "--version"], r"curl (\S+)")))
        elif key == "squid":
            args.squid = ensure_tool("squid", ("squid",))
            if args.squid is None:
                log("WARNING: squid is unavailable and could not be installed; skipping it")
                continue
            tools.append(Tool(key, "ours via squid", tool_version([args.squid, "-v"], r"Version (\S+)")))
    return tools


# Our client through a forward caching proxy, as the README's "Serving a fleet" sets one up;
# the cache is filled by one pull before the timed runs, so they measure a warm cache.
SQUID_CONF = """\
http_port 127.0.0.1:{port}
pid_filename none
cache_log stdio:/dev/null
access_log none
cache_store_log none
cache_mem {memory} MB
maximum_object_size_in_memory 64 MB
maximum_object_size 1 GB
collapsed_forwarding on
refresh_pattern /data/[0-9a-f]{{64}}$ 525600 100% 525600
refresh_pattern . 0 20% 4320
http_access allow all
pinger_enable off
shutdown_lifetime 0 seconds
visible_hostname localhost
coredump_dir {directory}
"""


@contextlib.contextmanager
def warm_squid(args: argparse.Namespace, bench: Bench) -> Iterator[None]:
    if "squid" not in [tool.key for tool in args.tools]:
        yield
        return
    directory = tempfile.mkdtemp(prefix="xprim-bench-squid-")
    port = free_port()
    memory = bench.registry.total_size // (1 << 20) + 256
    with open(os.path.join(directory, "squid.conf"), "w", encoding="utf-8") as handle:
        handle.write(SQUID_CONF.format(port=port, memory=memory, directory=directory))
    process = subprocess.Popen([args.squid, "-N", "-f", os.path.join(directory, "squid.conf")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("squid did not start")
            time.sleep(0.1)
        args.squid_url = f"http://127.0.0.1:{port}"
        bench.run("squid", -1)  # fills the cache
        log(f"squid {args.squid_url} warmed with one pull")
        yield
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def scratch(parent: str | None) -> Iterator[str]:
    if parent is None:
        parent = SHM if os.path.isdir(SHM) else None
    else:
        os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix="xprim-bench-out-", dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_all(args: argparse.Namespace, tools: list[Tool], bench: Bench) -> None:
    """Every tool ``--repeat`` times, in rotating order."""
    for repetition in range(args.repeat):
        shift = repetition % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            run = bench.run(tool.key, repetition)
            tool.runs.append(run)
            log(f"  run {repetition + 1}/{args.repeat} {tool.label:<16} {run.seconds:7.2f}s "
                f"{run.peak_rss_kib / 1024:7.1f} MiB {run.connections:6d} connections")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so nginx and the scratch directories are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tools = resolve_tools(args)
    if not tools:
        raise SystemExit("no tool to run")
    os.makedirs(args.work, exist_ok=True)
    registry = build_registry(args.work, args.size, args.chunk_size)
    warm_page_cache(registry.root)
    if any(tool.key in ("ours", "squid") for tool in tools):
        prepare_client(args)
    server = start_server(registry.root)
    try:
        with scratch(args.out) as out:
            bench = Bench(args, registry, server, out)
            log(f"serving {registry.root} at {server.url} ({server.description}); output in {out}")
            args.tools = tools
            with warm_squid(args, bench):
                run_all(args, tools, bench)
            shutil.rmtree(bench.target, ignore_errors=True)
            print(table(tools, args, bench), flush=True)
            if args.json:
                document = {
                    "size": registry.total_size, "chunk_size": registry.chunk_size,
                    "chunks": len(registry.chunks), "concurrency": args.concurrency, "out": out,
                    "rss_floor_kib": bench.rss_floor_kib,
                    "out_filesystem": filesystem(out), "server": server.description, "cpu": cpu_model(),
                    "cores": os.cpu_count(),
                    "tools": [{"key": t.key, "label": t.label, "version": t.version,
                               "runs": [asdict(run) for run in t.runs]} for t in tools],
                }
                write_json(args.json, document)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
