"""The client's own work per request: N fetches of one 64 KiB chunk on a kept-alive
loopback connection, served by a child process, so this process holds only the client.

Timings on a busy machine move by ±20 %; a count of executed instructions does not.
Run it twice under callgrind and take the difference, per request:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python3 benchmarks/bench_fetch.py 50
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python3 benchmarks/bench_fetch.py 1050
    python3 benchmarks/bench_fetch.py 2000 --module /old/copy     # CPU time, of another copy

Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requests", type=int)
    parser.add_argument("--module", default=HERE, help="the directory holding xprim_models.py")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=args.serve))
        print(server.server_address[1], flush=True)
        server.serve_forever()
    sys.path.insert(0, args.module)
    import xprim_models

    class Discard(xprim_models._Sink):
        def __init__(self) -> None:
            self.scratch = memoryview(bytearray(1 << 17))

        def reset(self) -> None:
            self.kept = 0

        def space(self, limit: int) -> memoryview:
            return self.scratch[:limit]

        def took(self, count: int) -> None:
            self.kept += count

        def take(self, data: memoryview) -> None:
            self.kept += len(data)

    root = tempfile.mkdtemp(prefix="bench-fetch-")
    child = None
    try:
        os.mkdir(os.path.join(root, "data"))
        with open(os.path.join(root, "data", "chunk"), "wb") as handle:
            handle.write(os.urandom(64 << 10))
        child = subprocess.Popen([sys.executable, __file__, "0", "--serve", root], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        port = int(child.stdout.readline())
        client = xprim_models._RegistryClient(f"http://127.0.0.1:{port}", opener=None, ssl_context=None, timeout=30,
                                              retries=3, backoff=0.5, logger=logging.getLogger("bench"))
        session, sink = xprim_models._Session(), Discard()
        began = time.process_time()
        for _ in range(args.requests):
            sink.reset()
            client.fetch("data/chunk", "the chunk", sink, size=64 << 10, exact=True, session=session)
        if args.requests:
            print(f"{(time.process_time() - began) / args.requests * 1e6:.1f} us of CPU per request")
    finally:
        if child is not None:
            child.kill()
            child.wait()
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
