"""Build or extend an XPRIM registry directory from a directory of model files.

This is the publisher's side of the wire format that xprim_models.py reads
(DESIGN.md §1): it cuts the files, in order, into one byte stream of
fixed-size chunks, stores each chunk and the manifest under ``data/<sha256>``,
and records the version (or an alias) in ``models.json``.

    python examples/publish.py REGISTRY_DIR group/model version SOURCE_DIR [--chunk-size BYTES]
    python examples/publish.py REGISTRY_DIR group/model alias --alias-of version

The tests and the benchmark import ``publish`` and ``add_alias`` from here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Union

Source = Union[bytes, str]  # file contents, or the path of a file to read
FileList = Union[Mapping[str, Source], Sequence[tuple[str, Source]]]


def _store(registry: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(registry, "data", digest)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    return digest


def _pieces(source: Source) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with open(source, "rb") as handle:
        while True:
            piece = handle.read(1 << 20)
            if not piece:
                return
            yield piece


def _index(registry: str) -> dict[str, Any]:
    try:
        with open(os.path.join(registry, "models.json"), encoding="utf-8") as handle:
            return dict(json.load(handle))
    except FileNotFoundError:
        return {}


def _save_index(registry: str, index: Mapping[str, Any]) -> None:
    os.makedirs(registry, exist_ok=True)
    with open(os.path.join(registry, "models.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=2, sort_keys=True)
        handle.write("\n")


def publish(
    registry: str,
    group: str,
    model: str,
    version: str,
    files: FileList,
    *,
    chunk_size: int = 10 << 20,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Store ``files`` (in order) as ``group/model version``; return the manifest hash."""
    items: Iterable[tuple[str, Source]] = files.items() if isinstance(files, Mapping) else files
    chunks: list[str] = []
    entries: list[dict[str, Any]] = []
    pending = bytearray()
    total = 0
    for path, source in items:
        size = 0
        for piece in _pieces(source):
            size += len(piece)
            pending += piece
            while len(pending) >= chunk_size:
                chunks.append(_store(registry, bytes(pending[:chunk_size])))
                del pending[:chunk_size]
        entries.append({"path": path, "size": size})
        total += size
    if pending:
        chunks.append(_store(registry, bytes(pending)))
    manifest = {"total_size": total, "chunk_size": chunk_size, "chunks": chunks, "files": entries}
    digest = _store(registry, json.dumps(manifest, indent=1).encode("utf-8"))
    index = _index(registry)
    entry: dict[str, Any] = {"hash": digest}
    if metadata:
        entry["metadata"] = dict(metadata)
    index.setdefault(group, {}).setdefault(model, {})[version] = entry
    _save_index(registry, index)
    return digest


def add_alias(registry: str, group: str, model: str, alias: str, target: str) -> None:
    """Make ``alias`` point at version ``target`` of ``group/model``."""
    index = _index(registry)
    versions = index.setdefault(group, {}).setdefault(model, {})
    versions[alias] = {"alias": target}
    _save_index(registry, index)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("registry", help="registry directory to create or extend")
    parser.add_argument("model", help="group/model")
    parser.add_argument("version")
    parser.add_argument("source", nargs="?", help="directory whose files become the model")
    parser.add_argument("--chunk-size", type=int, default=10 << 20)
    parser.add_argument("--alias-of", metavar="VERSION", help="publish VERSION as an alias instead")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    group, model = args.model.split("/")
    if args.alias_of:
        add_alias(args.registry, group, model, args.version, args.alias_of)
        return 0
    if not args.source:
        parser.error("SOURCE_DIR is required unless --alias-of is given")
    files = []
    for root, dirs, names in os.walk(args.source):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, args.source).replace(os.sep, "/"), path))
    metadata = dict(item.split("=", 1) for item in args.metadata)
    digest = publish(args.registry, group, model, args.version, files,
                     chunk_size=args.chunk_size, metadata=metadata)
    print(f"{args.model} {args.version}: manifest {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
