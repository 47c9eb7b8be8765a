"""Build or extend an XPRIM registry directory from a directory of model files.

This is the publisher's side of the wire format that xprim_models.py reads
(README: Registry format): it cuts the files, in order, into one byte stream of
fixed-size chunks, stores each chunk and the manifest under ``data/<sha256>``,
and records the version (or an alias) in ``models.json``.

    python examples/publish.py REGISTRY_DIR group/model version SOURCE_DIR [--chunk-size BYTES]
    python examples/publish.py REGISTRY_DIR group/model alias --alias-of version

It refuses a bad name, a missing or empty source directory and an alias of a
version the registry does not have, and it checks what it wrote with the
client's own parser, putting ``models.json`` back as it was if that fails.
Without ``--force`` it also refuses to change what a published name gives users:
other files under a published version, files under an alias, or an alias over a
version (publishing the same files again, and moving an alias, are fine).
Errors go to stderr as ``error: ...`` with exit code 1 (2 for usage errors).

The tests and the benchmark import ``publish`` and ``add_alias`` from here; they
overwrite as they are told.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
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
    path = os.path.join(registry, "models.json")
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:  # readers never see half a file
        json.dump(index, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(f"{path}.tmp", path)


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
    digest = store_files(registry, files, chunk_size=chunk_size)
    record(registry, group, model, version, digest, metadata)
    return digest


def store_files(registry: str, files: FileList, *, chunk_size: int = 10 << 20) -> str:
    """Store the chunks and the manifest of ``files`` (in order) under ``data/``; return the
    manifest hash. ``models.json`` is left as it is: nothing lists them yet."""
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
    return _store(registry, json.dumps(manifest, indent=1).encode("utf-8"))


def record(registry: str, group: str, model: str, version: str, digest: str,
           metadata: Mapping[str, Any] | None = None) -> None:
    """List manifest ``digest`` in ``models.json`` as ``group/model version``."""
    index = _index(registry)
    entry: dict[str, Any] = {"hash": digest}
    if metadata:
        entry["metadata"] = dict(metadata)
    index.setdefault(group, {}).setdefault(model, {})[version] = entry
    _save_index(registry, index)


def add_alias(registry: str, group: str, model: str, alias: str, target: str) -> None:
    """Make ``alias`` point at version ``target`` of ``group/model``.

    Raises:
        ValueError: the registry has no version ``target`` of ``group/model``.
    """
    index = _index(registry)
    versions = index.setdefault(group, {}).setdefault(model, {})
    if target not in versions or target == alias:
        have = ", ".join(sorted(version for version in versions if version != alias)) or "none"
        raise ValueError(f"{group}/{model} has no version {target!r} to alias (it has: {have})")
    versions[alias] = {"alias": target}
    _save_index(registry, index)


class PublishError(Exception):
    """What the command line refuses to publish, or found wrong in what it wrote."""


def _client() -> Any:
    """xprim_models, from the installed package or this repository's copy next to ``examples/``."""
    try:
        import xprim_models
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import xprim_models
    return xprim_models


def _source_files(source: str) -> list[tuple[str, Source]]:
    if not os.path.isdir(source):
        raise PublishError(f"source directory {source} does not exist or is not a directory")
    files: list[tuple[str, Source]] = []
    for root, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, source).replace(os.sep, "/"), path))
    if not files:
        raise PublishError(f"source directory {source} holds no files: there is nothing to publish")
    return files


def _check(registry: str, ref: Any, digest: str | None) -> Any:
    """Read back ``ref`` as a client would (the index, aliases, the manifest and its rules)."""
    models = _client()
    with tempfile.TemporaryDirectory() as scratch:  # the manifest cache of a throwaway client
        manager = models.Manager(models.Config("publish-check", os.path.abspath(registry)), data_dir=scratch)
        try:
            detail = manager.get_remote_detail(ref)
        except models.ModelsError as exc:
            raise PublishError(f"the registry fails the client's checks after publishing {ref}: {exc}") from exc
    if digest is not None and detail.manifest_hash != digest:
        raise PublishError(f"the registry lists {ref} with manifest {detail.manifest_hash}, not {digest}")
    return detail


def _listed(registry: str, ref: Any) -> dict[str, Any] | None:
    """What ``models.json`` lists under ``ref`` now, if anything."""
    entry = _index(registry).get(ref.group, {}).get(ref.model, {}).get(ref.version)
    return entry if isinstance(entry, dict) else None


def _overwrite_problem(ref: Any, listed: dict[str, Any] | None, digest: str | None, alias_of: str | None) -> str:
    """Why publishing ``digest`` (or an alias of ``alias_of``) as ``ref`` would change what users
    get under a name already published; "" if it would not. Moving an alias is what aliases are for."""
    if listed is None:
        return ""
    if "alias" in listed and digest is not None:
        return f"{ref} is an alias of {listed['alias']}; these files would make it a version of its own"
    if "alias" not in listed and alias_of is not None:
        return (f"{ref} is a version (manifest {listed.get('hash', '?')[:12]}); making it an alias of {alias_of} "
                "would replace its files for everyone who pulls or updates it")
    if "alias" not in listed and digest is not None and listed.get("hash") != digest:
        return (f"{ref} is already published with other files (manifest {listed.get('hash', '?')[:12]}, "
                f"these make {digest[:12]}); replacing them changes the model under everyone who pulls or updates it")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("registry", help="registry directory to create or extend")
    parser.add_argument("model", help="group/model")
    parser.add_argument("version")
    parser.add_argument("source", nargs="?", help="directory whose files become the model")
    parser.add_argument("--chunk-size", type=int, default=10 << 20)
    parser.add_argument("--alias-of", metavar="VERSION", help="publish VERSION as an alias instead")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--force", action="store_true",
                        help="replace what the registry lists under that name: other files, or a version by an alias "
                             "and back (refused without it)")
    args = parser.parse_args(argv)
    if args.alias_of and args.source:
        parser.error("give either SOURCE_DIR or --alias-of, not both")
    if not args.alias_of and not args.source:
        parser.error("SOURCE_DIR is required unless --alias-of is given")
    if args.chunk_size < 1:
        parser.error(f"--chunk-size must be a positive number of bytes, not {args.chunk_size}")
    if any("=" not in item for item in args.metadata):
        parser.error("--metadata takes KEY=VALUE")
    models = _client()
    try:  # the names the client accepts, and nothing else
        ref = models.ModelRef.parse(f"{args.model} {args.version}")
        if not ref.version or len(args.version.split()) != 1:
            raise models.InvalidRefError(f"invalid version {args.version!r}")
        if args.alias_of:
            models.ModelRef.parse(f"{args.model} {args.alias_of}")
    except models.InvalidRefError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    index_path = os.path.join(args.registry, "models.json")
    try:
        with open(index_path, "rb") as handle:
            before: bytes | None = handle.read()
    except FileNotFoundError:
        before = None
    try:
        listed = _listed(args.registry, ref)
        if args.alias_of:
            problem = _overwrite_problem(ref, listed, None, args.alias_of)
            if problem and not args.force:
                raise PublishError(f"{problem}; give --force to do it, or choose another name")
            try:
                add_alias(args.registry, ref.group, ref.model, ref.version, args.alias_of)
            except ValueError as exc:
                raise PublishError(str(exc)) from exc
            detail = _check(args.registry, ref, None)
            print(f"{ref}: alias of {detail.alias_of}, manifest {detail.manifest_hash}")
            return 0
        files = _source_files(args.source)
        metadata = dict(item.split("=", 1) for item in args.metadata)
        digest = store_files(args.registry, files, chunk_size=args.chunk_size)
        problem = _overwrite_problem(ref, listed, digest, None)
        if problem and not args.force:
            raise PublishError(f"{problem}; give --force to do it, or publish a new version")
        record(args.registry, ref.group, ref.model, ref.version, digest, metadata)
        _check(args.registry, ref, digest)
    except (PublishError, OSError) as exc:
        if before is None:  # the index as it was: nobody sees a broken model
            if os.path.exists(index_path):
                os.remove(index_path)
        else:
            with open(index_path, "wb") as handle:
                handle.write(before)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{ref}: manifest {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
