"""CPU per 64 KiB HTTP response: http.client against the module's own parser.

Both read the same nginx-style response (head and a 64 KiB body) from memory, so
only parsing and copying are timed, not the network. Rounds alternate between the
two; the medians are printed. Standard library only.

    python3 benchmarks/bench_parse.py
"""

from __future__ import annotations

import http.client
import io
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import xprim_models

BODY = bytes(64 << 10)
HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 23:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 65536\r\n"
        b"Last-Modified: Sat, 28 Nov 2026 22:00:00 GMT\r\nConnection: keep-alive\r\n"
        b"ETag: \"6566a0c0-10000\"\r\nAccept-Ranges: bytes\r\n\r\n")
WIRE = HEAD + BODY
RESPONSES = 3000
ROUNDS = 7


class MemorySocket:
    """Just enough of a socket for both parsers, serving ``data`` from memory."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self.stream, 256 << 10)  # type: ignore[arg-type]

    def recv_into(self, view: memoryview) -> int:
        return self.stream.readinto(view)

    def settimeout(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def read_body(response: object, buffer: memoryview) -> None:
    got = 0
    while got < len(BODY):
        got += response.readinto(buffer[: len(BODY) - got])  # type: ignore[attr-defined]


def with_http_client(buffer: memoryview) -> float:
    began = time.process_time()
    for _ in range(RESPONSES):
        response = http.client.HTTPResponse(MemorySocket(WIRE))  # type: ignore[arg-type]
        response.begin()
        read_body(response, buffer)
    return (time.process_time() - began) / RESPONSES * 1e6


def with_connection(buffer: memoryview) -> float:
    connection = xprim_models._Connection(("http", "localhost", 80, ""), 30.0, None, None, None)
    began = time.process_time()
    for _ in range(RESPONSES):
        connection.sock = MemorySocket(WIRE)  # type: ignore[assignment]
        connection.start = connection.end = 0
        connection.budget, connection.window = 30.0, 1 << 62
        head = connection.read_head()
        connection.budget, connection.window = 30.0, 64 << 10
        read_body(xprim_models._HttpResponse(connection, head, bodiless=False), buffer)
    return (time.process_time() - began) / RESPONSES * 1e6


def main() -> None:
    buffer = memoryview(bytearray(256 << 10))
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(ROUNDS):
        theirs.append(with_http_client(buffer))
        ours.append(with_connection(buffer))
    for name, times in (("http.client", theirs), ("xprim_models", ours)):
        print(f"{name:13s} median {statistics.median(times):5.1f} us of CPU per response "
              f"(min {min(times):.1f}, max {max(times):.1f}; {ROUNDS} rounds of {RESPONSES})")


if __name__ == "__main__":
    main()
