"""What a model update costs: bytes on the wire, bytes newly written to disk, wall time.

The script publishes a model of ``--size`` (default 200 MiB of weights, plus a 21-byte
``config.json`` and a 2 MiB ``tokenizer.json`` before them, as ``examples/publish.py`` sorts
files) in ``--chunk-size`` chunks (default 10 MiB), and four edited versions of it:

  (a) ``config.json``, before the weights, grows by 15 bytes;
  (b) 1 MiB in the middle of the weights changes, same length;
  (c) the weights file's header grows by 100 bytes;
  (d) a new 300 kB file is added at the front.

For each, it installs ``latest`` as an alias of v1, moves the alias to the edit, and runs
``xprim-models update --apply`` (as a project's venv runs it: imported, bytecode compiled).
Then (e): ``pull latest`` and ``pull v1`` side by side, an alias and its target.

What is measured, per scenario:

* bytes on the wire: body bytes the registry's HTTP server sent during the command
  (a threaded Python server in this process that counts them; index and manifest included);
* bytes newly written: the disk space (allocated blocks) of the data directory's files
  whose inode did not exist before the command, each inode counted once, so a hard link to
  a file already there costs nothing; for (e), the data directory's whole allocation;
* wall time of the command, from spawn to exit.

Beside ours it prints what a whole-file client (huggingface_hub: it fetches each changed file
whole, and keeps one blob per distinct file) and the Go original (its chunk cache is emptied
after every install, so an update fetches every chunk, and each version has its own copy)
would fetch and store for the same change, computed from the manifests.

    python3 benchmarks/bench_update.py                       # on /dev/shm
    python3 benchmarks/bench_update.py --out /var/tmp        # on disk
    python3 benchmarks/bench_update.py --size 64M --json results.json

Standard library only; Linux is the target (``st_blocks``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUP, MODEL = "bench", "model"
SHM = "/dev/shm"  # noqa: S108 - only a parent for mkdtemp, which makes a private directory
SCENARIOS = {
    "a": "a small file before the weights grows by 15 bytes",
    "b": "1 MiB in the middle of the weights changes, same length",
    "c": "the weights file's header grows by 100 bytes",
    "d": "a new 300 kB file is added at the front",
    "e": "an alias and its target pulled side by side",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mib(size: float) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{int(size)} B"


# --- The registry ---------------------------------------------------------------


def versions(weights_size: int) -> dict[str, list[tuple[str, bytes]]]:
    """v1 and the four edits of it, as (path, bytes) in stream order."""
    generator = random.Random(20261207)  # noqa: S311 - incompressible enough for HTTP
    config = b'{"model_type":"demo"}'  # 21 bytes
    tokenizer = generator.randbytes(2 << 20)
    weights = generator.randbytes(weights_size)
    middle = weights_size // 2
    edited = weights[:middle] + generator.randbytes(1 << 20) + weights[middle + (1 << 20):]
    base = [("config.json", config), ("tokenizer.json", tokenizer), ("weights.bin", weights)]
    return {
        "v1": base,
        "va": [("config.json", b'{"model_type":"demo","x":"123"}'[:36].ljust(36, b" ")), base[1], base[2]],
        "vb": [base[0], base[1], ("weights.bin", edited)],
        "vc": [base[0], base[1], ("weights.bin", generator.randbytes(100) + weights)],
        "vd": [("ADDED.txt", generator.randbytes(300_000)), *base],
    }


def build_registry(root: str, weights_size: int, chunk_size: int) -> dict[str, dict[str, Any]]:
    """Publish every version under ``root``; return {version: manifest}."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from publish import publish  # type: ignore[import-not-found]

    manifests = {}
    for version, files in versions(weights_size).items():
        digest = publish(root, GROUP, MODEL, version, files, chunk_size=chunk_size)
        with open(os.path.join(root, "data", digest), encoding="utf-8") as handle:
            manifests[version] = json.load(handle)
    return manifests


def set_alias(root: str, alias: str, target: str) -> None:
    """Point ``alias`` at ``target`` in models.json (a publisher moving it)."""
    path = os.path.join(root, "models.json")
    with open(path, encoding="utf-8") as handle:
        index = json.load(handle)
    index[GROUP][MODEL][alias] = {"alias": target}
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(index, handle)
    os.replace(path + ".tmp", path)


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the registry directory and counts the body bytes it sends."""

    sent = 0
    paths: ClassVar[list[str]] = []  # of every body sent
    lock = threading.Lock()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        while piece := source.read(1 << 20):
            outputfile.write(piece)
            with CountingHandler.lock:
                CountingHandler.sent += len(piece)
        with CountingHandler.lock:
            CountingHandler.paths.append(self.path)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(root: str) -> Iterator[str]:
    handler = lambda *a: CountingHandler(*a, directory=root)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- Our client -------------------------------------------------------------------


def prepare_client(work: str, python: str) -> list[str]:
    """Our client as a project's venv runs it: a fresh venv, the module imported, compiled."""
    venv = os.path.join(work, "venv")
    subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True)
    client = os.path.join(venv, "bin", "python")
    subprocess.run([client, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
                    os.path.join(ROOT, "xprim_models.py")], check=True)
    return [client, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); from xprim_models import main; "
            "sys.exit(main())", ROOT]


def inodes(root: str) -> dict[tuple[int, int], int]:
    """{(device, inode): allocated bytes} of the regular files under ``root``."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                status = os.lstat(os.path.join(directory, name))
                if os.path.isfile(os.path.join(directory, name)) and not os.path.islink(os.path.join(directory, name)):
                    found[(status.st_dev, status.st_ino)] = status.st_blocks * 512
    return found


@dataclass
class Figure:
    wire: int
    written: int
    seconds: float
    paths: list[str]  # requested


def run(client: list[str], url: str, data: str, *arguments: str) -> Figure:
    before = inodes(data)
    sent, requested = CountingHandler.sent, len(CountingHandler.paths)
    started = time.perf_counter()
    result = subprocess.run([*client, "--registry", url, "--data-dir", data, "--quiet", *arguments],
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} exited {result.returncode}: {result.stderr.strip()[-400:]}")
    after = inodes(data)
    written = sum(size for key, size in after.items() if key not in before)
    return Figure(CountingHandler.sent - sent, written, seconds, CountingHandler.paths[requested:])


def scenario(client: list[str], url: str, registry: str, work: str, name: str) -> Figure:
    data = tempfile.mkdtemp(prefix=f"data-{name}-", dir=work)
    try:
        set_alias(registry, "latest", "v1")
        if name == "e":
            first = run(client, url, data, "pull", f"{GROUP}/{MODEL}", "latest")
            second = run(client, url, data, "pull", f"{GROUP}/{MODEL}", "v1")
            return Figure(first.wire + second.wire, sum(inodes(data).values()), first.seconds + second.seconds,
                          first.paths + second.paths)
        run(client, url, data, "pull", f"{GROUP}/{MODEL}", "latest")
        set_alias(registry, "latest", f"v{name}")
        return run(client, url, data, "update", f"{GROUP}/{MODEL}", "--apply")
    finally:
        shutil.rmtree(data, ignore_errors=True)


# --- What others would do ---------------------------------------------------------------


def whole_file(contents: dict[str, dict[str, bytes]], old_version: str, new_version: str) -> int:
    """Bytes a whole-file client fetches: each file of the new version whose bytes it lacks."""
    have = {hashlib.sha256(data).hexdigest() for data in contents[old_version].values()}
    return sum(len(data) for data in contents[new_version].values() if hashlib.sha256(data).hexdigest() not in have)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=lambda text: int(float(text.rstrip("M")) * (1 << 20)), default=200 << 20,
                        help="weights size in MiB, e.g. 200M (default)")
    parser.add_argument("--chunk-size", type=lambda text: int(float(text.rstrip("M")) * (1 << 20)),
                        default=10 << 20, help="chunk size in MiB (default 10M)")
    parser.add_argument("--out", default=SHM, help="where the registry and data directories go (default /dev/shm)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario (the median is shown)")
    parser.add_argument("--only", default="abcde", help="scenarios to run, e.g. 'ae'")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-update-", dir=args.out)
    try:
        registry = os.path.join(work, "registry")
        log(f"publishing v1 and four edits ({mib(args.size)} of weights, {mib(args.chunk_size)} chunks) in {work}...")
        manifests = build_registry(registry, args.size, args.chunk_size)
        contents = {version: dict(files) for version, files in versions(args.size).items()}
        client = prepare_client(work, args.python)
        model_size = manifests["v1"]["total_size"]
        chunk = manifests["v1"]["chunk_size"]
        rows: list[tuple[str, ...]] = []
        document: dict[str, Any] = {}
        with serve(registry) as url:
            for name in args.only:
                figures = [scenario(client, url, registry, work, name) for _ in range(args.repeat)]
                wire = int(statistics.median(figure.wire for figure in figures))
                written = int(statistics.median(figure.written for figure in figures))
                seconds = statistics.median(figure.seconds for figure in figures)
                fetched = 0
                if name == "e":
                    ours = f"disk {written / model_size:.2f}x the model"
                    others = f"hf disk 1.00x; Go disk {2 * model_size / model_size:.2f}x"
                else:
                    new = manifests[f"v{name}"]
                    old_chunks = set(manifests["v1"]["chunks"])
                    today = sum(1 for digest in new["chunks"] if digest not in old_chunks)
                    hf = whole_file(contents, "v1", f"v{name}")
                    fetched = sum(path.rsplit("/", 1)[-1] in set(new["chunks"]) for path in figures[0].paths)
                    ours = f"{fetched} of {len(new['chunks'])}"
                    others = (f"chunks by hash alone: {today} of {len(new['chunks'])}; hf {mib(hf)}; "
                              f"Go {len(new['chunks'])} chunks ({mib(new['total_size'])})")
                rows.append((name, SCENARIOS[name], mib(wire), ours, mib(written), f"{seconds:.2f}s", others))
                document[name] = {"wire_bytes": wire, "chunks_fetched": fetched, "written_bytes": written,
                                  "seconds": seconds, "model_bytes": model_size, "chunk_bytes": chunk}
                log(f"({name}) wire {mib(wire)}, written {mib(written)}, {seconds:.2f}s")
        print(f"model: {mib(model_size)} in {len(manifests['v1']['chunks'])} chunks of {mib(chunk)}; "
              f"data on {args.out}; Python {sys.version.split()[0]}")
        print("| | scenario | on the wire | chunks fetched | newly written | wall | others |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
