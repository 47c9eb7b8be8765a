"""A pull whose ``data/`` the registry answers with a 302 to a second origin, as object
stores and CDNs do, where every new connection costs ``--delay`` seconds at either server
(a handshake far away, a TLS set-up). Prints the wall time of the pull and the
connections each server accepted.

    python3 benchmarks/bench_redirect.py                      # the module in this repository
    python3 benchmarks/bench_redirect.py --module /old/copy   # another copy of xprim_models.py
    python3 benchmarks/bench_redirect.py --direct             # no redirect, for comparison

Both servers run in a child process, so the pull's process holds only the client.
Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve(root: str, delay: float, redirect: Callable[[], int] | None, accepted: collections.Counter[str],
          name: str) -> int:
    """A keep-alive HTTP/1.1 server of ``root`` on loopback; ``redirect`` gives the port that data/ moves to."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer(conn: socket.socket) -> None:
        time.sleep(delay)  # what a new connection costs
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode().lstrip("/")
                if redirect is not None and path.startswith("data/"):
                    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/%s\r\n"
                                 b"Content-Length: 0\r\n\r\n" % (redirect(), path.encode()))
                    continue
                with open(os.path.join(root, path), "rb") as handle:
                    body = handle.read()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            accepted[name] += 1
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(listener.getsockname()[1])


def servers(root: str, delay: float, direct: bool) -> None:
    """The child: the CDN and the registry; a third port answers with the connections counted since last asked."""
    accepted: collections.Counter[str] = collections.Counter()
    cdn = serve(root, delay, None, accepted, "cdn")
    registry = serve(root, delay, None if direct else (lambda: cdn), accepted, "registry")
    stats = socket.create_server(("127.0.0.1", 0))
    print(registry, stats.getsockname()[1], flush=True)
    while True:
        conn, _ = stats.accept()
        with conn:
            conn.sendall(f"{accepted['registry']} {accepted['cdn']}".encode())
            accepted.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", default=HERE, help="the directory holding xprim_models.py")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds each new connection costs")
    parser.add_argument("--direct", action="store_true", help="no redirect: the registry serves data/ itself")
    parser.add_argument("--serve", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        servers(args.serve[0], args.delay, args.direct)
        return
    sys.path.insert(0, args.module)
    sys.path.insert(0, os.path.join(HERE, "examples"))
    import publish

    import xprim_models

    work = tempfile.mkdtemp(prefix="bench-redirect-")
    child = None
    try:
        root = os.path.join(work, "registry")
        publish.publish(root, "org", "m", "v1", {"f": os.urandom(2 << 20)}, chunk_size=64 << 10)
        command = [sys.executable, __file__, "--serve", root, "--delay", str(args.delay)]
        child = subprocess.Popen(command + (["--direct"] if args.direct else []), stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        port, stats_port = map(int, child.stdout.readline().split())

        def connections() -> str:
            with socket.create_connection(("127.0.0.1", stats_port)) as sock:
                return sock.recv(100).decode()

        times, seen = [], []
        for run in range(args.runs):
            connections()
            config = xprim_models.Config("bench", f"http://127.0.0.1:{port}", os.path.join(work, f"data{run}"))
            began = time.monotonic()
            xprim_models.Manager(config).pull("org/m v1", concurrency=4)
            times.append(time.monotonic() - began)
            seen.append(connections())
        print(f"{args.module}: 2 MiB in 32 chunks of 64 KiB, concurrency 4, {args.delay * 1000:g} ms per connection: "
              f"median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}); "
              f"connections accepted by the registry and the CDN: {seen[0]}")
    finally:
        if child is not None:
            child.kill()
            child.wait()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
