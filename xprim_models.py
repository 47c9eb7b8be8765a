# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The xprim-models authors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in
# all copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
"""Download ML models from an XPRIM content-addressed registry.

A registry is a static file host holding ``models.json`` and ``data/<sha256>``
blobs. This module fetches a model's manifest, downloads its chunks in
parallel, verifies every byte with SHA-256, streams each chunk into its place
in a staging directory (which an interrupted pull resumes from, verifying it
again), swaps the files into place atomically, and records the install in
``registry.json``::

    import xprim_models

    manager = xprim_models.Manager(xprim_models.Config(
        app_name="whisper-tool", registry_url="https://models.example.com"))
    path = manager.ensure("fast-whisper/tiny fp16")  # pulls only if it is not installed yet
    print(path)

Public names: ``Config``, ``ModelRef``, ``parse_model_ref``, ``FileInfo``,
``InstalledModel``, ``RemoteModel``, ``RemoteModelDetail``, ``PullProgress``,
``Manager``, ``register_subcommands``, ``main``, ``ModelsError`` and its
subclasses, ``__version__``. Everything whose name starts with an underscore is
internal and may change in any release.

The module uses the standard library only. To vendor it, copy this file
unchanged into your project (any package, any module name).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import cache, partial

# typing.TYPE_CHECKING, without importing typing at run time: it costs a tenth of the
# start-up of `xprim-models path`. Type checkers take it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:  # imported for annotations only: keeps start-up fast
    import argparse
    import hashlib
    import logging
    import socket
    import ssl
    import urllib.request
    from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
    from contextlib import AbstractContextManager
    from typing import Any, AnyStr, Callable, Literal, NoReturn, Union
    from typing import Protocol as _Protocol

__version__ = "0.1.0"

__all__ = [
    "AlreadyInstalledError",
    "Config",
    "FileInfo",
    "HashMismatchError",
    "InstalledModel",
    "InvalidRefError",
    "LoggerLike",
    "Manager",
    "ModelNotFoundError",
    "ModelRef",
    "ModelsError",
    "NetworkError",
    "NotInstalledError",
    "OpenerLike",
    "PullProgress",
    "RefLike",
    "RegistryError",
    "RemoteModel",
    "RemoteModelDetail",
    "StorageError",
    "VerifyResult",
    "VersionNotFoundError",
    "__version__",
    "main",
    "parse_model_ref",
    "register_subcommands",
]


# --- Constants ----------------------------------------------------------------
# The wire format (README: Registry format) and the limits that keep a hostile registry
# from exhausting memory or disk. Every number a reader may wonder about is here.
# Regular expressions (the *_RE names) are plain strings: the re module compiles each one
# the first time it is used and caches it, so a command compiles only the ones it needs
# (start-up time: docs/performance.md).

_HASH_RE = r"[0-9a-f]{64}"
_DIGITS_RE = r"[0-9]{1,18}"  # ASCII only: str.isdigit() accepts '²'

# Group, model and version names become directory names on every platform.
_NAME_RE = r"[A-Za-z0-9](?:[A-Za-z0-9._+-]{0,126}[A-Za-z0-9_+-])?"
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{prefix}{digit}" for prefix in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"]
)
# Characters Windows refuses in file names, plus backslash and the control characters (NUL included).
_FORBIDDEN_PATH_CHARS = r'[\x00-\x1f<>:"|?*\\]'
# Top-level names the storage layout uses itself (README: Storage layout), and the Go original's lock
# file, which shares the directory (its chunk cache .chunks cannot be a group name).
_RESERVED_GROUPS = frozenset(["cache", "registry.json", "registry.json.lock"])

_MAX_INDEX_BYTES = 32 << 20
# json builds about 100 bytes of objects per value, so models.json is refused if it
# holds more values than this (counted before parsing): a document within the size
# cap could otherwise take gigabytes.
_MAX_INDEX_VALUES = 500_000  # JSON values and object keys in models.json (containers count twice)
_MAX_METADATA_DEPTH = 32  # containers nested in one entry's metadata: deeper, the entry is left out
# What a message or log line shows of a list from models.json (alias cycle links, versions,
# left-out entries), so that its length does not grow with the registry's.
_LISTED_AT_MOST = 5
_WARNED_AT_MOST = 20  # models.json entries left out with a warning each; the rest are counted
_MAX_MANIFEST_BYTES = 64 << 20
_MAX_REGISTRY_BYTES = 256 << 20
_MAX_FILES = 1_000_000
_MAX_CHUNKS = 1_000_000
_MAX_CHUNK_SIZE = 1 << 34  # 16 GiB: chunks are streamed, never held in memory
_MAX_TOTAL_SIZE = 1 << 50  # 1 PiB
_MAX_PATH_LENGTH = 1024
_MAX_SEGMENT_LENGTH = 255

_MAX_CONCURRENCY = 16
_BUFFER_SIZE = 256 << 10
_RECEIVE_BUFFER = 128 << 10  # a session's: a head and the body bytes that come with it (a 64 KiB chunk, whole)
_HEAD_MAX = 256 << 10  # the longest head a session reads, growing its buffer
_PROGRESS_WINDOW = 64 << 10  # bytes of a body that must arrive within each ``timeout`` of waiting
_INTERIM_LIMIT = 16  # 1xx responses before the final one
_REDIRECT_LIMIT = 10
_PROGRESS_INTERVAL = 0.1  # seconds between byte-progress callbacks
_RETRY_AFTER_CAP = 30.0  # seconds: a server cannot make us sleep longer
_BACKOFF_CAP = 10.0
_LOCK_NOTICE_AFTER = 1.0  # seconds of waiting before we say we are waiting
_ATTEMPT_KEY = "xprim_models_attempt"  # logging ``extra`` of each request: (url, attempt, attempts)
_NOTICE_KEY = "xprim_models_notice"  # logging ``extra`` of a warning that is news, not a fault (a wait)
_OPEN_FILES_PER_THREAD = 16  # files a pull's writing thread keeps open
_FSYNC_EACH_UP_TO = 256  # files; a model with more is flushed with one os.sync()
# Windows refuses to replace or delete a file while another process has it open: how
# long a replace (or a read racing one) keeps trying before it gives up.
_SHARING_RETRY_SECONDS = 2.0

_REGISTRY_FILE = "registry.json"
_MANIFESTS_DIR = ("cache", "manifests")
_LOCKS_DIR = ".locks"


# --- Errors -------------------------------------------------------------------
# One base class; one subclass per failure kind, each with its CLI exit code (README:
# Errors, exit codes and retries). Messages say what failed, on what, and what to do next.


class ModelsError(Exception):
    """Base class of every error this module raises on purpose."""

    exit_code = 1


class ModelNotFoundError(ModelsError, LookupError):
    """The registry has no such group/model."""

    exit_code = 3


class VersionNotFoundError(ModelsError, LookupError):
    """The registry has the model but not that version."""

    exit_code = 3


class NotInstalledError(ModelsError, LookupError):
    """The model version is not installed locally."""

    exit_code = 4


class AlreadyInstalledError(ModelsError):
    """``pull`` found the same manifest installed; ``installed`` describes it."""

    exit_code = 0

    def __init__(self, message: str, installed: InstalledModel) -> None:
        super().__init__(message)
        self.installed = installed

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.installed))


class HashMismatchError(ModelsError):
    """Downloaded bytes did not hash to their name."""

    exit_code = 6


class NetworkError(ModelsError):
    """The registry could not be reached, or a transfer failed after retries."""

    exit_code = 5


class StorageError(ModelsError):
    """A local file operation failed (permissions, full disk, corrupt state)."""

    exit_code = 7


class InvalidRefError(ModelsError, ValueError):
    """A model reference is malformed."""

    exit_code = 2


class RegistryError(ModelsError):
    """The registry is misconfigured or served invalid data."""

    exit_code = 1


def _storage_error(action: str, path: str, exc: OSError, hint: str = "") -> StorageError:
    """Wrap an OSError in a StorageError that names the path and a next step."""
    reason = exc.strerror or str(exc)
    blocker = _blocking_file(path, exc)
    if blocker:
        reason = f"{blocker} is a file, not a directory"
        hint = hint or "move that file away, or choose another data directory"
    elif _sharing_violation(exc):  # Windows refuses to replace or delete a file that is open
        reason = f"another program has it open ({reason})"
        hint = hint or "close that program (another xprim-models, an editor, a virus scanner) and try again"
    if not hint:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
            hint = "free some disk space and try again"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "check the permissions of the data directory, or choose another one"
    return StorageError(f"cannot {action} {path}: {reason}" + (f"; {hint}" if hint else ""))


def _blocking_file(path: str, exc: OSError) -> str:
    """The file standing where a directory above ``path`` should be, if that is why ``exc`` happened.

    POSIX says ENOTDIR; Windows says only "path not found" (ERROR_PATH_NOT_FOUND), which
    would otherwise read as an empty data directory."""
    if exc.errno not in (errno.ENOTDIR, errno.ENOENT):
        return ""
    parent = os.path.dirname(path)
    while parent != os.path.dirname(parent):
        if os.path.lexists(parent):
            return "" if os.path.isdir(parent) else parent
        parent = os.path.dirname(parent)
    return ""


def _sharing_violation(exc: OSError) -> bool:
    """Whether Windows refused because another process has the file open.

    A sharing or lock violation says so. A replace of an open file gets a plain access
    denial instead; asking for delete access, which only an open handle can refuse as a
    sharing violation, tells it from a real one (a directory, or no permission)."""
    if sys.platform != "win32":
        return False
    if exc.winerror in (32, 33):  # ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION
        return True
    path = exc.filename2 or exc.filename  # a replace's target, or the file opened
    if exc.winerror != 5 or not isinstance(path, str):  # ERROR_ACCESS_DENIED
        return False
    import _winapi

    try:  # DELETE access, all sharing allowed, OPEN_EXISTING
        handle = _winapi.CreateFile(path, 0x00010000, 7, 0, 3, 0, 0)
    except OSError as probe:
        return probe.winerror == 32
    _winapi.CloseHandle(handle)
    return True  # granted now: whoever had it open a moment ago has closed it


_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def _format_size(size: float) -> str:
    """``75.5 MB``: decimal units (1 kB = 1000 bytes, as huggingface and docker show sizes),
    one decimal, none when whole."""
    unit = 0
    while size >= (1000 if unit == 0 else 999.95) and unit < len(_SIZE_UNITS) - 1:
        size /= 1000
        unit += 1
    if unit == 0:
        return f"{int(size)} B"
    text = f"{size:.1f}"
    return f"{text[:-2] if text.endswith('.0') else text} {_SIZE_UNITS[unit]}"


# --- Public types -------------------------------------------------------------
# Plain frozen dataclasses: values a caller can compare, hash, sort and print.


@dataclass(frozen=True)
class Config:
    """Where models come from and where they go.

    Args:
        app_name: names the storage directory (``~/.local/share/<app_name>/models``)
            and the environment variable ``<APP_NAME>_MODELS_DIR`` that overrides it.
        registry_url: ``http(s)://`` or ``file://`` URL, or a local directory path.
        data_dir: the base directory, when the environment variable is not set.
    """

    app_name: str
    registry_url: str = ""
    data_dir: str | os.PathLike[str] | None = None


def _name_problem(kind: str, name: Any) -> str:
    """Why ``name`` cannot be a group, model or version name (it becomes a directory), or ""."""
    if not isinstance(name, str) or not re.fullmatch(_NAME_RE, name):
        return (f"{kind} {name!r:.80} must be 1-128 letters, digits, '.', '_', '+' or '-', "
                "starting with a letter or digit")
    if name.split(".", 1)[0].upper() in _WINDOWS_RESERVED:
        return f"{kind} {name!r} is a reserved name on Windows"
    return ""


def _check_name(kind: str, name: str, text: str) -> None:
    problem = _name_problem(kind, name)
    if problem:
        raise InvalidRefError(f"invalid model reference {text!r}: {problem}")


@dataclass(frozen=True, order=True)
class ModelRef:
    """A model, or one version of it: ``group/model version``; pinned to the manifest it
    must resolve to, ``group/model version@<sha256>``.

    >>> ref = ModelRef.parse("fast-whisper/tiny fp16")
    >>> ref.group, ref.model, ref.version
    ('fast-whisper', 'tiny', 'fp16')
    >>> str(ref)
    'fast-whisper/tiny fp16'
    >>> str(ModelRef("llama", "7b"))
    'llama/7b'
    >>> ModelRef.parse("llama/7b q4@" + "ab" * 32).pin == "ab" * 32
    True

    Attributes:
        pin: the SHA-256 of the manifest the version must be (as ``list --json`` and
            ``info`` show it), or "". A pinned ref differs from the unpinned one.
    """

    group: str
    model: str
    version: str = ""
    pin: str = ""

    def __post_init__(self) -> None:
        _check_name("group", self.group, f"{self.group}/{self.model}")
        _check_name("model", self.model, f"{self.group}/{self.model}")
        if self.version:
            _check_name("version", self.version, str(self))
        if self.pin and not (isinstance(self.pin, str) and re.fullmatch(_HASH_RE, self.pin) and self.version):
            raise InvalidRefError(f"invalid model reference {str(self)!r}: a pin is a version's manifest hash, "
                                  "64 hexadecimal digits: 'group/model version@<sha256>'")

    def __str__(self) -> str:
        base = f"{self.group}/{self.model}"
        version = f"{self.version}@{self.pin}" if self.pin else self.version
        return f"{base} {version}" if version else base

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``"group/model"``, ``"group/model version"`` or ``"group/model version@<sha256>"``.

        Raises:
            InvalidRefError: the text is not of that form, or a name is invalid.
        """
        if not isinstance(text, str):
            raise InvalidRefError(f"invalid model reference {text!r}: expected a string")
        parts = text.split()
        if not 1 <= len(parts) <= 2 or parts[0].count("/") != 1:
            raise InvalidRefError(
                f"invalid model reference {text!r}: expected 'group/model' or 'group/model version'"
            )
        group, model = parts[0].split("/")
        version, at, pin = (parts[1] if len(parts) == 2 else "").partition("@")
        if at and not re.fullmatch(_HASH_RE, pin.lower()):
            raise InvalidRefError(f"invalid model reference {text!r}: after '@' comes the manifest hash, "
                                  "64 hexadecimal digits (as 'list --json' and 'info' show it)")
        return cls(group, model, version, pin.lower())


def parse_model_ref(text: str) -> ModelRef:
    """Parse ``"group/model"``, ``"group/model version"`` or ``"group/model version@<sha256>"``
    (see ``ModelRef.parse``)."""
    return ModelRef.parse(text)


@dataclass(frozen=True)
class FileInfo:
    """One file of a model.

    Attributes:
        path: relative to the model directory, with ``/`` separators.
        size: in bytes.
    """

    path: str
    size: int


@dataclass(frozen=True)
class InstalledModel:
    """A model version installed locally.

    Attributes:
        ref: the version, under the name it was pulled by (an alias stays an alias).
        manifest_hash: SHA-256 of the installed manifest.
        total_size: bytes of all files.
        file_count: number of files.
        installed_at: when the install completed (timezone-aware UTC); the Unix epoch,
            with a logged warning, when registry.json's value is not RFC 3339.
        path: the absolute directory holding the files.
        alias_of: the concrete version an alias resolved to, or "".
        registry_url: the registry it was pulled from (a URL, or a directory's
            absolute path), or "" when unknown (installed by an older release or
            another tool); ``update`` checks each model against it.
        pinned: installed by a pinned pull (``pin=``, ``version@<sha256>``): ``update``
            leaves it as it is, until a pull without a pin installs it again.
    """

    ref: ModelRef
    manifest_hash: str
    total_size: int
    file_count: int
    installed_at: datetime
    path: str
    alias_of: str = ""
    registry_url: str = ""
    pinned: bool = False


@dataclass(frozen=True)
class RemoteModel:
    """A model version listed by the registry.

    Attributes:
        ref: the version as listed (possibly an alias).
        manifest_hash: SHA-256 of its manifest (an alias's final target's).
        alias_of: the concrete version an alias resolves to, or "".
        metadata: the registry's metadata for it (an alias's own, else its target's).
    """

    ref: ModelRef
    manifest_hash: str
    alias_of: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class RemoteModelDetail(RemoteModel):
    """A remote model version with the contents of its manifest.

    Attributes:
        total_size: bytes of all files.
        chunk_size: bytes of every chunk but the last.
        chunk_count: number of chunks.
        files: the files, in stream order.
    """

    total_size: int = 0
    chunk_size: int = 0
    chunk_count: int = 0
    files: tuple[FileInfo, ...] = ()


@dataclass(frozen=True)
class PullProgress:
    """A snapshot of a pull, passed to the ``progress`` callback.

    ``phase`` is ``"manifest"``, then ``"chunks"``, then ``"extracting"``.
    ``chunks_completed`` and ``bytes_completed`` include chunks copied from
    installed versions or found intact in a resumed staging directory, and only
    grow; ``bytes_downloaded`` counts network bytes only.
    """

    phase: Literal["manifest", "chunks", "extracting"]
    chunks_total: int
    chunks_completed: int
    bytes_total: int
    bytes_completed: int
    bytes_downloaded: int
    current_file: str = ""


@dataclass(frozen=True)
class VerifyResult:
    """What ``Manager.verify`` found, each a sorted tuple of relative paths.

    ``damaged``: files damaged or missing (the stored manifest included, as
    ``.<app>/manifest.json``). ``sharing_damaged_chunk``: files that only share a
    damaged chunk with another file, so perhaps intact (a chunk's hash cannot say
    which of its files holds the damage). ``repaired``: the files a repair
    rewrote (compared byte by byte with the fetched chunks, so only those that
    differed). ``ok`` is true when the scan found nothing damaged.
    """

    damaged: tuple[str, ...] = ()
    sharing_damaged_chunk: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.sharing_damaged_chunk


if TYPE_CHECKING:
    # A ModelRef, or its text form "group/model version": what every Manager method takes.
    RefLike = Union[ModelRef, str]
else:
    _Protocol = object  # the classes below are protocols to type checkers, plain classes at run time

    def __getattr__(name: str) -> Any:
        if name == "RefLike":  # made on first use, as it needs typing
            from typing import Union

            globals()[name] = Union[ModelRef, str]
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class OpenerLike(_Protocol):
    """What ``Manager(opener=...)`` takes: ``urllib.request.OpenerDirector`` or anything with its ``open``."""

    def open(self, request: urllib.request.Request, /, *, timeout: float) -> Any:
        """Send ``request``; return a response with ``status``, ``headers`` and ``readinto``."""


class LoggerLike(_Protocol):
    """What ``Manager(logger=...)`` takes: a ``logging.Logger``, or anything with these methods.

    Calls pass ``%``-style arguments, and may pass ``extra=`` as ``logging`` does.
    """

    def debug(self, msg: str, /, *args: Any, **kwargs: Any) -> None: ...
    def info(self, msg: str, /, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, msg: str, /, *args: Any, **kwargs: Any) -> None: ...
    def error(self, msg: str, /, *args: Any, **kwargs: Any) -> None: ...


def _did_you_mean(ref: ModelRef, known: Collection[tuple[str, str, str]]) -> str:
    """`` (did you mean ...?)`` naming what in ``known`` (group, model, version) is closest to
    ``ref``: the same name in another letter case, else a close spelling; "" if nothing is close."""
    import difflib

    def closest(wanted: str, names: Collection[str]) -> list[str]:
        by_fold = {name.casefold(): name for name in sorted(names, reverse=True)}
        if wanted.casefold() in by_fold:
            return [by_fold[wanted.casefold()]]
        return [by_fold[name] for name in difflib.get_close_matches(wanted.casefold(), list(by_fold), 3, 0.75)]

    base = f"{ref.group}/{ref.model}"
    models = {f"{group}/{model}" for group, model, _ in known}
    if base in models:
        versions = {version for group, model, version in known if (group, model) == (ref.group, ref.model)}
        found = [f"{base} {version}" for version in closest(ref.version, versions)]
    else:
        found = [
            f"{name} {ref.version}" if (*name.split("/"), ref.version) in known else name
            for name in closest(base, models)
        ]
    return f" (did you mean {' or '.join(found)}?)" if found else ""


def _as_ref(ref: RefLike) -> ModelRef:
    return ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)


def _versioned(ref: RefLike, action: str, *, pinned: bool = False) -> ModelRef:
    """``ref`` as a ModelRef with a version; a pin only where the action takes one."""
    ref = _as_ref(ref)
    if not ref.version:
        raise InvalidRefError(f"{action} {ref}: a version is required ('{ref} <version>')")
    if ref.pin and not pinned:
        raise InvalidRefError(f"{action} {ref}: takes no pin (only pull and ensure do); "
                              f"drop '@{ref.pin[:12]}...'")
    return ref


def _unpinned(ref: ModelRef, pin: str, action: str) -> tuple[ModelRef, str]:
    """``ref`` without its pin, and the pin: from ``ref`` or the ``pin`` keyword, which must agree."""
    if pin and not (isinstance(pin, str) and re.fullmatch(_HASH_RE, pin)):
        raise InvalidRefError(f"{action} {ref}: pin={pin!r:.80} is not a manifest hash (64 lowercase hex digits)")
    if ref.pin and pin and ref.pin != pin:
        raise InvalidRefError(f"{action} {ref}: pinned twice, to {ref.pin} and pin={pin}")
    return replace(ref, pin=""), ref.pin or pin


# --- Paths --------------------------------------------------------------------
# Pure functions of (platform, environment): the base directory (README: Storage layout)
# and the rules a manifest's file paths must follow before they touch a disk.


def _env_var_name(app_name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", app_name.upper()) + "_MODELS_DIR"


def _default_data_dir(app_name: str, platform: str, environ: Mapping[str, str]) -> str:
    """The platform's data directory for ``app_name`` (no environment override)."""
    if platform.startswith(("win32", "cygwin")):
        import ntpath

        appdata = environ.get("APPDATA") or ntpath.join(
            environ.get("USERPROFILE") or os.path.expanduser("~"), "AppData", "Roaming"
        )
        return ntpath.join(appdata, app_name, "models")
    import posixpath  # POSIX rules whatever the host, so each OS's rules are testable on any

    home = environ.get("HOME") or os.path.expanduser("~")
    if platform == "darwin":
        return posixpath.join(home, "Library", "Application Support", app_name, "models")
    xdg = environ.get("XDG_DATA_HOME", "")
    if not posixpath.isabs(xdg):  # the XDG spec: empty or relative means unset
        xdg = posixpath.join(home, ".local", "share")
    return posixpath.join(xdg, app_name, "models")


def _resolve_data_dir(config: Config) -> str:
    override = os.environ.get(_env_var_name(config.app_name), "")
    if override:
        return os.path.abspath(os.path.expanduser(override))
    if config.data_dir is not None and os.fspath(config.data_dir):
        return os.path.abspath(os.path.expanduser(os.fspath(config.data_dir)))
    return _default_data_dir(config.app_name, sys.platform, os.environ)


def _path_problem(path: Any, metadata_dir: str) -> str:
    """Why ``path`` may not be a model file path, or "" when it may."""
    if not isinstance(path, str) or not path:
        return "is not a non-empty string"
    if len(path) > _MAX_PATH_LENGTH:
        return f"is longer than {_MAX_PATH_LENGTH} characters"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (it contains a lone surrogate)"
    if path.startswith("/"):
        return "is absolute"
    bad = re.search(_FORBIDDEN_PATH_CHARS, path)
    if bad:
        return f"contains the character {bad.group()!r}"
    segments = path.split("/")
    if segments[0].casefold() == metadata_dir.casefold():
        return f"is inside the reserved directory {metadata_dir}/"
    for segment in segments:
        if segment in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
        if len(segment.encode("utf-8")) > _MAX_SEGMENT_LENGTH:
            return f"has a segment longer than {_MAX_SEGMENT_LENGTH} bytes"
        if segment[-1] in ". ":
            return f"has a segment ending in a dot or space ({segment!r})"
        if segment.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
            return f"uses the reserved Windows name {segment!r}"
    return ""


def _check_file_paths(files: Sequence[FileInfo], metadata_dir: str) -> str:
    """Why this set of paths cannot be laid out on every OS, or "" if it can."""
    import unicodedata

    seen_files: dict[str, str] = {}
    seen_dirs: dict[str, str] = {}
    for info in files:
        problem = _path_problem(info.path, metadata_dir)
        if problem:
            return f"file path {info.path!r} {problem}"
        # Case-insensitive and Unicode-normalising file systems (macOS, Windows)
        # would fold these keys together.
        key = unicodedata.normalize("NFC", info.path).casefold()
        if key in seen_files:
            return f"file paths {seen_files[key]!r} and {info.path!r} collide"
        if key in seen_dirs:
            return f"file {info.path!r} is also needed as a directory by {seen_dirs[key]!r}"
        seen_files[key] = info.path
        parts = key.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in seen_files:
                return f"file {info.path!r} needs {seen_files[prefix]!r} to be a directory"
            seen_dirs.setdefault(prefix, info.path)
    return ""


# --- Platform primitives ------------------------------------------------------
# Cross-process locks (fcntl on POSIX, msvcrt on Windows), each paired with a
# thread lock because POSIX record locks do not exclude threads of one process;
# and atomic file replacement.

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class _NotRegular(OSError):
    """A path that must be a plain file is a link, pipe, device or directory, or a file
    with other hard links (writing would change it elsewhere too)."""


def _open_regular(path: str, flags: int = os.O_RDONLY) -> int:
    """Open ``path`` only if it is a plain file, without following a link or waiting on a
    pipe; for writing, only if no other hard link shares it."""
    try:
        fd = os.open(path, flags | _O_BINARY | _O_NOFOLLOW | _O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise _NotRegular(exc.errno, "a symbolic link", path) from exc
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _NotRegular(errno.EINVAL, "not a plain file", path)
        if flags & (os.O_WRONLY | os.O_RDWR) and status.st_nlink > 1:
            raise _NotRegular(errno.EMLINK, "a file with other hard links", path)
    except BaseException:
        _close_quietly(fd)
        raise
    return fd


def _close_quietly(fd: int) -> None:
    """Close a descriptor whose data no longer matters (read-only, or being discarded)."""
    try:
        os.close(fd)
    except OSError:
        pass  # the descriptor is released whatever close() reports


def _create_new(path: str, flags: int = os.O_WRONLY) -> int:
    """Create ``path`` as a new file; a stray file or planted link there is replaced, never followed.

    On POSIX the new file is locked while open, so a cleaner in another process
    (even in another PID namespace) can tell it is still being written.
    """
    flags |= os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        os.unlink(path)  # removes a link itself, not its target
        fd = os.open(path, flags, 0o644)
    if os.name != "nt":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # a file system without locks: cleaners fall back to process ids
    return fd
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _lock_file(fd: int, shared: bool = False) -> bool:
    """Try to take a lock on ``fd`` without blocking (shared locks exist on POSIX only)."""
    if os.name == "nt":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _unlock_file(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined,unused-ignore]
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


class _FileLock:
    """An exclusive lock held by one thread of one process at a time, or a
    shared one held by any number of them.

    The operating system releases it when the process dies, so a crash never
    leaves a stale lock behind.
    """

    def __init__(self, path: str, on_wait: Callable[[], None] | None = None, *, shared: bool = False) -> None:
        self.path = path
        self._on_wait = on_wait
        self._shared = shared
        self._fd = -1
        if shared:  # holders exclude only exclusive holders, through the file lock
            self._thread_lock = threading.Lock()
        else:
            with _thread_locks_guard:
                self._thread_lock = _thread_locks.setdefault(path, threading.Lock())

    def __enter__(self) -> _FileLock:
        started = time.monotonic()
        notified = False
        if not self._thread_lock.acquire(timeout=_LOCK_NOTICE_AFTER):
            notified = self._notify()
            self._thread_lock.acquire()
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_BINARY | _O_NOFOLLOW, 0o644)
            delay = 0.01
            while not _lock_file(self._fd, self._shared):
                if not notified and time.monotonic() - started >= _LOCK_NOTICE_AFTER:
                    notified = self._notify()
                time.sleep(delay)  # no OS primitive waits on a lock file portably
                delay = min(delay * 2, 0.2)
        except OSError as exc:
            self._release()
            raise _storage_error("lock", self.path, exc) from exc
        except BaseException:
            self._release()
            raise
        return self

    def try_acquire(self) -> bool:
        """Take the lock only if that needs no waiting; release it with ``__exit__``."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_BINARY | _O_NOFOLLOW, 0o644)
            if _lock_file(self._fd, self._shared):
                return True
        except OSError:
            pass
        self._release()
        return False

    def _notify(self) -> bool:
        if self._on_wait is not None:
            self._on_wait()
        return True

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            try:
                _unlock_file(self._fd)
            except OSError:
                pass  # closing the descriptor releases the lock anyway
        self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            _close_quietly(self._fd)  # the lock goes with the descriptor, whatever close() says
            self._fd = -1
        self._thread_lock.release()


def _fsync_directory(path: str) -> None:
    if os.name == "nt":
        return  # Windows cannot open a directory for fsync; NTFS journals renames
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename stands
    finally:
        _close_quietly(fd)


if TYPE_CHECKING:
    from typing import TypeVar

    _T = TypeVar("_T")


def _retry_shared(operation: Callable[[], _T]) -> _T:
    """``operation()``, tried again for up to _SHARING_RETRY_SECONDS while Windows refuses it
    because another process has the file open.

    Readers of a file that ``_atomic_write`` replaces hold it open only to read it, and both
    sides go through here: a replace waits out a reader, a reader waits out a replace.
    """
    deadline = 0.0
    delay = 0.001
    while True:
        try:
            return operation()
        except OSError as exc:
            if not _sharing_violation(exc):
                raise
            now = time.monotonic()
            if not deadline:
                deadline = now + _SHARING_RETRY_SECONDS
            elif now >= deadline:
                raise
        time.sleep(delay)  # Windows offers no way to wait for another process to close a file
        delay = min(delay * 2, 0.05)


def _atomic_write(path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: readers see the old or the new file, never half.
    With ``durable``, the new file is on stable storage when this returns."""
    directory = os.path.dirname(path)
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(directory, exist_ok=True)
        fd = _create_new(temporary)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        _retry_shared(partial(os.replace, temporary, path))
    except OSError as exc:
        _remove_file(temporary)
        raise _storage_error("write", path, exc) from exc
    if durable:
        _fsync_directory(directory)


def _read_small(path: str, limit: int) -> bytes:
    """A small plain file's bytes, read even while ``_atomic_write`` replaces it: at most
    ``limit`` + 1 of them, so a caller can tell one too big.

    FileNotFoundError means the file is absent; a file where a directory above it should be
    raises NotADirectoryError on every OS (Windows reports it as "path not found")."""

    def read() -> bytes:
        with open(_open_regular(path), "rb") as handle:
            # read(limit + 1) alone would allocate the whole limit (64 MiB) for every call.
            return handle.read(min(os.fstat(handle.fileno()).st_size, limit) + 1)

    try:
        return _retry_shared(read)
    except FileNotFoundError as exc:
        blocker = _blocking_file(path, exc)
        if blocker:
            raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a directory", path) from exc
        raise


def _remove_file(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    return True


_IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003  # a junction (stat.IO_REPARSE_TAG_MOUNT_POINT, typed for Windows only)


def _is_link(path: str) -> bool:
    """Whether ``path`` is a symbolic link, or a Windows junction (which os.path.islink does
    not report before Python 3.12), either leading anywhere."""
    try:
        status = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISLNK(status.st_mode) or getattr(status, "st_reparse_tag", 0) == _IO_REPARSE_TAG_MOUNT_POINT


def _remove_tree(path: str) -> None:
    """Delete a directory tree (or a stray file or link) without following links."""
    import shutil

    try:
        if _is_link(path) or not os.path.isdir(path):
            os.unlink(path)  # on Windows it removes a directory link or junction itself, not what it leads to
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _storage_error("remove", path, exc) from exc


def _no_links(root: str, path: str, why: str = "") -> str:
    """``path``, after checking that nothing between ``root`` and it is a symbolic link."""
    current = root
    for part in os.path.relpath(path, root).split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise StorageError(
                f"{current} is a symbolic link; {why or f'nothing inside {root} may be one'}: remove the link"
            )
    return path


def _allocated(path: str, status: os.stat_result) -> int:
    """The disk space the file at ``path`` (``status``, its lstat) takes: less than its size
    when sparse or compressed; its size where the system does not say."""
    blocks = getattr(status, "st_blocks", None)
    if blocks is not None:
        return int(blocks) * 512
    if sys.platform != "win32" or not stat.S_ISREG(status.st_mode):
        return status.st_size
    # Windows keeps no st_blocks: FILE_STANDARD_INFO's AllocationSize counts what is allocated.
    import _winapi
    import ctypes

    info = (ctypes.c_int64 * 3)()  # AllocationSize, EndOfFile, then the link count and flags
    try:  # FILE_READ_ATTRIBUTES, all sharing allowed, OPEN_EXISTING, a link itself
        handle = _winapi.CreateFile(path, 0x80, 7, 0, 3, 0x00200000, 0)
    except OSError:
        return status.st_size
    try:
        known = _get_file_information()(handle, 1, info, ctypes.sizeof(info))  # FileStandardInfo
    finally:
        _winapi.CloseHandle(handle)
    return int(info[0]) if known else status.st_size


@cache
def _get_file_information() -> Any:
    """kernel32's GetFileInformationByHandleEx, declared on a handle of our own (not ctypes.windll's)."""
    import ctypes

    query = ctypes.WinDLL("kernel32").GetFileInformationByHandleEx  # type: ignore[attr-defined,unused-ignore]
    query.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
    return query


def _real_directory(path: str) -> bool:
    """Whether ``path`` is a directory itself, not a symbolic link or junction to one."""
    try:
        status = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(status.st_mode) and not getattr(status, "st_reparse_tag", 0)


def _remove_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:
        pass  # not empty, or gone


def _list_directory(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _tree_size(path: str) -> int:
    """The disk space deleting the files under ``path`` frees (links not followed; sparse
    files take less than their size, a file with other hard links nothing)."""

    def size(path: str) -> int:
        status = os.lstat(path)
        return 0 if status.st_nlink > 1 and stat.S_ISREG(status.st_mode) else _allocated(path, status)

    try:
        if not os.path.isdir(path) or os.path.islink(path):
            return size(path)
    except OSError:
        return 0
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                total += size(os.path.join(directory, name))
            except OSError:
                pass
    return total


def _remove_abandoned(directory: str, names: str = ".+") -> None:
    """Delete temporary files whose writer died (a crash or kill -9 leaves them behind): those
    of the files whose names match ``names``. A temporary name carries the writer's process
    id: <name>.<pid>.<thread>.tmp."""
    try:
        found = os.listdir(directory)
    except OSError:
        return
    for name in found:
        match = re.fullmatch(rf"(?:{names})\.(\d+)\.\d+\.tmp", name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        path = os.path.join(directory, name)
        if _writer_gone(path, int(match.group(1))):
            # On Windows the deletion is the last liveness test: it fails while any process
            # still has the file open.
            _remove_file(path)


def _process_running(pid: int) -> bool:
    """Whether a process with this id exists (it may not be the one that had it before)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        import _winapi

        try:
            handle = _winapi.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        except OSError as exc:
            return exc.winerror != 87  # ERROR_INVALID_PARAMETER: no such process; else not ours to query
        try:
            return _winapi.GetExitCodeProcess(handle) == 259  # STILL_ACTIVE; a killed one keeps its exit code
        finally:
            _winapi.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # alive, under another user
    return True


def _writer_gone(path: str, pid: int) -> bool:
    """Whether the process that wrote the temporary file ``path`` is gone.

    Its writer holds the file open: locked on POSIX (see ``_create_new``), undeletable on
    Windows. Between closing and renaming it the writer holds nothing, so a file that is
    not held still counts as in use while its process id runs, until it is an hour old
    (process ids are reused, and on Linux may belong to another PID namespace).
    """
    try:
        age = time.time() - os.lstat(path).st_mtime
    except OSError:
        return False
    if os.name == "nt":  # the caller's deletion fails while the file is open
        return age > 3600 or not _process_running(pid)
    import fcntl

    try:
        fd = _open_regular(path)
    except _NotRegular:
        return True  # a link or pipe under a temporary name is no one's file: never opened or waited on
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its writer still holds it, whatever its process id says here
        return age > 3600 or not _process_running(pid)
    finally:
        _close_quietly(fd)


def _sha256(data: bytes = b"") -> hashlib._Hash:
    """A SHA-256 hasher; hashlib (and OpenSSL behind it) loads on first use, not at import."""
    import hashlib

    return hashlib.sha256(data)


def _zeros_digest(size: int) -> str:
    """SHA-256 of ``size`` zero bytes, hashed a megabyte at a time."""
    hasher = _sha256()
    zeros = memoryview(bytes(min(size, 1 << 20)))
    while size > 0:
        hasher.update(zeros[: min(size, len(zeros))])
        size -= len(zeros)
    return hasher.hexdigest()


def _pread(fd: int, count: int, offset: int) -> bytes:
    """``count`` bytes at ``offset`` of an open file (fewer at its end)."""
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows
    return os.read(fd, count)


def _read_pieces(fd: int, offset: int, count: int, size: int) -> Iterator[bytes]:
    """``count`` bytes of ``fd`` from ``offset``, in pieces of at most ``size``; OSError if it ends first."""
    while count:
        data = _pread(fd, min(count, size), offset)
        if not data:
            raise OSError(errno.EIO, "file is shorter than expected")
        yield data
        offset, count = offset + len(data), count - len(data)


def _same_bytes(path: str, other: str, offset: int, count: int) -> bool:
    """Whether two files hold the same ``count`` bytes at ``offset`` (False if either cannot be read)."""
    try:
        fd = _open_regular(path)
        try:
            other_fd = _open_regular(other)
            try:
                for data in _read_pieces(fd, offset, count, _BUFFER_SIZE):
                    if _pread(other_fd, len(data), offset) != data:
                        return False
                    offset += len(data)
            finally:
                os.close(other_fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def _copy_range(source: int, offset: int, count: int, target: int, target_offset: int) -> None:
    """Copy ``count`` bytes of ``source`` at ``offset`` into ``target`` at ``target_offset``,
    in the kernel where it can (``copy_file_range``), else through a buffer."""
    copy_file_range = getattr(os, "copy_file_range", None)
    while count > 0 and copy_file_range is not None:
        try:
            copied = copy_file_range(source, target, count, offset, target_offset)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                break  # not supported between these files: copy through user space
            raise
        if copied == 0:
            raise OSError(errno.EIO, "chunk file is shorter than expected")
        offset, count, target_offset = offset + copied, count - copied, target_offset + copied
    for data in _read_pieces(source, offset, count, _BUFFER_SIZE):
        _pwrite_all(target, memoryview(data), target_offset)
        target_offset += len(data)


def _pwrite_all(target: int, view: memoryview, offset: int) -> None:
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(target, view, offset)
        else:  # Windows: each descriptor here belongs to one thread
            os.lseek(target, offset, os.SEEK_SET)
            written = os.write(target, view)
        view, offset = view[written:], offset + written


# --- Registry documents ---------------------------------------------------------
# Parsing and validating models.json and manifests. The registry is not trusted:
# every hash, size, name and path is checked before anything is written.


class _OutOfRange:
    """A JSON number no IEEE double can hold (``1e400``): kept aside so its entry can be refused."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text[:40]


def _finite_float(text: str) -> float | _OutOfRange:
    import math

    value = float(text)
    return value if math.isfinite(value) else _OutOfRange(text)


def _parse_json(data: bytes, what: str, error: type[ModelsError]) -> Any:
    import json

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not allowed")

    def finite(text: str) -> float:
        value = _finite_float(text)
        if isinstance(value, _OutOfRange):
            raise ValueError(f"the number {value.text[:40]} is beyond the range of a 64-bit float")
        return value

    try:
        return json.loads(data.decode("utf-8"), parse_constant=reject_constant, parse_float=finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON: {exc}") from exc


def _is_size(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


class _Manifest:
    """A validated manifest: its bytes as fetched, and what they say."""

    __slots__ = ("chunk_size", "chunks", "digest", "files", "raw", "starts", "total_size")

    def __init__(self, digest: str, raw: bytes, total_size: int, chunk_size: int, chunks: tuple[str, ...],
                 files: tuple[FileInfo, ...], starts: tuple[int, ...]) -> None:
        self.digest, self.raw, self.total_size, self.chunk_size = digest, raw, total_size, chunk_size
        self.chunks, self.files = chunks, files
        self.starts = starts  # where each file begins in the byte stream

    def chunk_length(self, position: int) -> int:
        if position < len(self.chunks) - 1:
            return self.chunk_size
        return self.total_size - self.chunk_size * (len(self.chunks) - 1)

    def repeated(self) -> dict[str, int]:
        """The chunks listed more than once, with their length."""
        seen: set[str] = set()
        repeated: dict[str, int] = {}
        for position, digest in enumerate(self.chunks):
            if digest in seen:
                repeated.setdefault(digest, self.chunk_length(position))
            seen.add(digest)
        return repeated


def _parse_manifest(digest: str, raw: bytes, metadata_dir: str, *, source: str = "",
                    copy: bool = False) -> _Manifest:
    """Validate a manifest's bytes by every rule of the README's registry format.

    ``source`` names the local file they were read from ("" when the registry sent
    them): a problem is then a StorageError, not a RegistryError. With ``copy`` the
    bytes may be a re-serialized copy of the manifest ``digest`` names (the Go
    original stores it re-marshalled): the same document in other bytes, which do
    not hash to ``digest``; ``raw`` keeps them as read.
    """
    what = f"manifest {digest}" + (f" in {source}" if source else "")
    actual = _sha256(raw).hexdigest()
    if actual != digest and not copy:
        raise HashMismatchError(f"{what}: {'the file holds' if source else 'the registry sent'} bytes that "
                                f"hash to {actual}")
    error = StorageError if source else RegistryError

    def fail(problem: str) -> ModelsError:
        return error(f"{what} is invalid: {problem}" + ("" if source else "; the registry's publisher must fix it"))

    if _count_containers(raw) > _MAX_FILES + 3:  # before json builds them: a bomb of empty lists is refused
        raise fail(f"it holds more JSON objects and arrays than a manifest of at most {_MAX_FILES} files can")
    doc = _parse_json(raw, what, error)
    if not isinstance(doc, dict):
        raise fail("it is not a JSON object")
    total: Any = doc.get("total_size")
    chunk_size: Any = doc.get("chunk_size")
    chunks, files = doc.get("chunks"), doc.get("files")
    if not _is_size(total, _MAX_TOTAL_SIZE):
        raise fail(f"total_size {total!r} is not an integer from 0 to {_MAX_TOTAL_SIZE}")
    if not _is_size(chunk_size, _MAX_CHUNK_SIZE):
        raise fail(f"chunk_size {chunk_size!r} is not an integer from 0 to {_MAX_CHUNK_SIZE}")
    if not isinstance(chunks, list) or len(chunks) > _MAX_CHUNKS:
        raise fail(f"chunks is not a list of at most {_MAX_CHUNKS} hashes")
    if not isinstance(files, list) or len(files) > _MAX_FILES:
        raise fail(f"files is not a list of at most {_MAX_FILES} entries")
    is_hash = re.compile(_HASH_RE).fullmatch
    for chunk in chunks:
        if not isinstance(chunk, str) or not is_hash(chunk):
            raise fail(f"chunk hash {chunk!r} is not 64 lowercase hex characters")
    expected_chunks = -(-total // chunk_size) if chunk_size else 0
    if (total > 0 and chunk_size == 0) or len(chunks) != expected_chunks:
        raise fail(
            f"{len(chunks)} chunks of {chunk_size} bytes cannot hold total_size {total} "
            f"(expected {expected_chunks} chunks)"
        )
    infos = []
    for entry in files:
        if not isinstance(entry, dict):
            raise fail(f"file entry {entry!r} is not an object")
        path: Any = entry.get("path")
        size: Any = entry.get("size")
        if not _is_size(size, _MAX_TOTAL_SIZE):
            raise fail(f"file {path!r} has size {size!r}, not a non-negative integer")
        infos.append(FileInfo(path, size))
    if sum(info.size for info in infos) != total:
        raise fail(f"file sizes add up to {sum(info.size for info in infos)}, not total_size {total}")
    problem = _check_file_paths(infos, metadata_dir)
    if problem:
        raise fail(problem)
    starts, offset = [], 0
    for info in infos:
        starts.append(offset)
        offset += info.size
    manifest = _Manifest(digest, raw, total, chunk_size, tuple(chunks), tuple(infos), tuple(starts))
    sizes: dict[str, int] = {}
    for position, chunk in enumerate(manifest.chunks):
        # A hash names one byte string, so it cannot stand for two lengths.
        if sizes.setdefault(chunk, manifest.chunk_length(position)) != manifest.chunk_length(position):
            raise fail(f"chunk {chunk} is listed with two different sizes")
    return manifest


def _segments(manifest: _Manifest, start: int, length: int) -> Iterator[tuple[int, int, int]]:
    """The (file index, offset in file, byte count) pieces of the stream range [start, start+length)."""
    import bisect

    index = bisect.bisect_right(manifest.starts, start) - 1
    while length > 0:
        offset = start - manifest.starts[index]
        count = min(manifest.files[index].size - offset, length)
        if count > 0:
            yield index, offset, count
            start, length = start + count, length - count
        index += 1


_INDEX_SEPARATORS = (b",", b":", b"[", b"{")  # each value after the first follows one of these
_JSON_STRING_RE = rb'(?s)"[^"\\]*(?:\\.[^"\\]*)*"'
_SURROGATE_RE = "[\ud800-\udfff]"  # a lone surrogate: valid JSON escapes, not text


def _count_index_values(raw: bytes) -> int:
    """An upper bound of the values and keys in the JSON document ``raw``, counted before parsing it.

    Every value or key but the first follows a ',', ':', '[' or '{' outside a string.
    Counting those bytes anywhere is quick; only if that says too many are the ones
    inside strings subtracted, string by string, stopping once there are too many strings.
    """
    count = 1 + sum(raw.count(separator) for separator in _INDEX_SEPARATORS)
    if count <= _MAX_INDEX_VALUES:
        return count
    for strings, match in enumerate(re.finditer(_JSON_STRING_RE, raw), 1):
        if strings > _MAX_INDEX_VALUES:  # every string is a value or a key
            return strings
        start, end = match.span()
        count -= sum(raw.count(separator, start, end) for separator in _INDEX_SEPARATORS)
    return count


def _count_containers(raw: bytes) -> int:
    """An upper bound of the objects and arrays in the JSON document ``raw``, counted before
    parsing it (a manifest holds one per file, and three more), the way _count_index_values counts."""
    count = raw.count(b"[") + raw.count(b"{")
    if count <= _MAX_FILES + 3:
        return count
    for match in re.finditer(_JSON_STRING_RE, raw):
        start, end = match.span()
        count -= raw.count(b"[", start, end) + raw.count(b"{", start, end)
    return count


def _bounded_int(text: str) -> int | _OutOfRange:
    # Past 308 digits no double holds it either, and Python 3.11+ refuses ints over 4300 digits.
    return int(text) if len(text.lstrip("-")) <= 308 else _OutOfRange(text)


def _metadata_problem(metadata: Any) -> str:
    """What makes ``metadata`` unfit to print as strict JSON (RFC 8259), or ""."""
    if not isinstance(metadata, dict):
        return "its metadata is not an object"
    pending: list[tuple[Any, int]] = [(metadata, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, _OutOfRange):
            return f"its metadata holds the number {value.text[:40]}, beyond the range of a 64-bit float"
        if isinstance(value, str) and re.search(_SURROGATE_RE, value):
            return f"its metadata holds the string {value[:40]!r} with an unpaired surrogate, which is not text"
        if isinstance(value, (dict, list)):
            if depth > _MAX_METADATA_DEPTH:
                return f"its metadata nests more than {_MAX_METADATA_DEPTH} levels deep"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)
    return ""


class _Index:
    """A validated models.json: the usable versions, and why each unusable entry is left out.

    One malformed entry only takes itself out (README, "Registry format"): it is never
    listed, and asking for it by name says what is wrong with it.
    """

    __slots__ = ("models", "problems")

    def __init__(self, models: dict[tuple[str, str, str], RemoteModel], problems: dict[tuple[str, ...], str]) -> None:
        self.models = models
        self.problems = problems  # keyed by (group,), (group, model) or (group, model, version)

    def lookup(self, ref: ModelRef) -> RemoteModel:
        key = (ref.group, ref.model, ref.version)
        found = self.models.get(key)
        if found is not None:
            return found
        for length in (1, 2, 3):
            problem = self.problems.get(key[:length])
            if problem:
                raise RegistryError(
                    f"{ref} is listed in the registry's models.json, but its entry is invalid: {problem}; "
                    "the registry's publisher must fix it"
                )
        versions = sorted(v for (g, m, v) in self.models if (g, m) == (ref.group, ref.model))
        invalid = sum(1 for problem_key in self.problems if problem_key[:2] == key[:2])
        if not versions and not invalid:
            raise ModelNotFoundError(
                f"model not found in registry: {ref.group}/{ref.model}{_did_you_mean(ref, self.models)}"
            )
        raise VersionNotFoundError(
            f"version not found: {ref}{_did_you_mean(ref, self.models)}; available: {_first_few(versions) or 'none'}"
            + (f"; {invalid} invalid entries of this model are left out, see the warnings" if invalid else "")
        )


def _parse_index(raw: bytes, location: str) -> _Index:
    """Parse models.json: the document as a whole, then each entry on its own (README, "Registry format")."""

    def fail(problem: str) -> RegistryError:
        return RegistryError(f"models.json at {location} is invalid: {problem}; the registry's publisher must fix it")

    if _count_index_values(raw) > _MAX_INDEX_VALUES:
        raise fail(f"it holds more than {_MAX_INDEX_VALUES} JSON values, the most this client parses")
    import json

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not allowed")

    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=reject_constant, parse_float=_finite_float,
                         parse_int=_bounded_int)
    except RecursionError as exc:
        raise fail("it nests containers too deeply to parse") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise RegistryError(f"models.json at {location} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise fail("it is not a JSON object of groups")
    problems: dict[tuple[str, ...], str] = {}
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    for group, models in doc.items():
        problem = _name_problem("group name", group) or (
            "" if isinstance(models, dict) else "the group is not an object of models")
        if problem:
            problems[(group,)] = problem
            continue
        for model, versions in models.items():
            problem = _name_problem("model name", model) or (
                "" if isinstance(versions, dict) else "the model is not an object of versions")
            if problem:
                problems[(group, model)] = problem
                continue
            for version, entry in versions.items():
                problem = _name_problem("version name", version) or _entry_problem(entry)
                if problem:
                    problems[(group, model, version)] = problem
                else:
                    entries[(group, model, version)] = entry
    # Each alias chain is walked once: every key on it learns its final version, or why it has none.
    final = {key: key[2] for key, entry in entries.items() if "alias" not in entry}
    # A broken chain's aliases: the alias where it breaks, and why. A chain that joins it says
    # the same (nesting each chain's message in the next would grow with their number).
    broken: dict[tuple[str, str, str], tuple[str, str]] = {}
    for key, entry in entries.items():
        if key in final or key in problems:
            continue  # a version, or an alias on a chain walked before
        aliased = (key[0], key[1], entry["alias"])
        if aliased in final:  # the usual alias: of a version, or of an alias resolved before
            final[key] = final[aliased]
            continue
        chain: list[tuple[str, str, str]] = []
        on_chain: set[tuple[str, str, str]] = set()
        current, problem, cycle = key, "", False
        while current not in final and current not in problems and "alias" in entries[current]:
            chain.append(current)
            on_chain.add(current)
            following = (key[0], key[1], entries[current]["alias"])
            if following in on_chain:
                names = [version for _, _, version in chain[chain.index(following):]]
                problem = f"its aliases form a cycle: {_cycle(names)}"
                cycle = True
            elif following not in entries:
                why = problems.get(following)
                problem = (f"it is an alias of version {following[2]!r}, which cannot be used: {why}" if why
                           else f"it is an alias of missing version {following[2]!r}")
            if problem:
                break
            current = following
        last = chain[-1][2]
        if not problem and current in problems:  # it joins a chain found broken before: that one's break
            last, problem = broken[current]
        if problem:
            for link in chain:
                where = link[2] if cycle else last
                broken[link] = (where, problem)
                problems[link] = problem if where == link[2] else f"it resolves through alias {where!r}, and {problem}"
            continue
        resolved = final.get(current, current[2])
        for link in chain:
            final[link] = resolved
        final.setdefault(current, resolved)
    models = {}
    for key, entry in entries.items():
        if key in problems:
            continue
        group, model, version = key
        concrete = final[key]
        target = entries[(group, model, concrete)]
        metadata = entry["metadata"] if "metadata" in entry else target.get("metadata", {})
        models[key] = RemoteModel(ModelRef(group, model, version), target["hash"],
                                  concrete if concrete != version else "", dict(metadata))
    return _Index(models, problems)


def _cycle(names: Sequence[str]) -> str:
    """An alias cycle by its first few links, and its length when they are not all of it."""
    if len(names) <= _LISTED_AT_MOST:
        return " -> ".join([*names, names[0]])
    return f"{' -> '.join(names[:_LISTED_AT_MOST])} -> ... ({len(names)} aliases, back to {names[0]!r})"


def _first_few(names: Sequence[str]) -> str:
    """``names`` joined, the first few of them when there are more."""
    if len(names) <= _LISTED_AT_MOST:
        return ", ".join(names)
    return f"{', '.join(names[:_LISTED_AT_MOST])} and {len(names) - _LISTED_AT_MOST} more"


def _entry_problem(entry: Any) -> str:
    """What is wrong with one version's entry in models.json, apart from its alias target, or ""."""
    if not isinstance(entry, dict):
        return "the entry is not an object"
    if ("hash" in entry) == ("alias" in entry):
        return "the entry must have exactly one of 'hash' and 'alias'"
    if "hash" in entry and not (isinstance(entry["hash"], str) and re.fullmatch(_HASH_RE, entry["hash"])):
        return f"its hash {entry['hash']!r:.80} is not 64 lowercase hex characters"
    if "alias" in entry:
        problem = _name_problem("alias", entry["alias"])
        if problem:
            return f"its {problem}"
    return _metadata_problem(entry["metadata"]) if "metadata" in entry else ""


def _detail(remote: RemoteModel, manifest: _Manifest) -> RemoteModelDetail:
    return RemoteModelDetail(
        ref=remote.ref, manifest_hash=remote.manifest_hash, alias_of=remote.alias_of,
        metadata=remote.metadata, total_size=manifest.total_size, chunk_size=manifest.chunk_size,
        chunk_count=len(manifest.chunks), files=manifest.files,
    )


# --- Registry client --------------------------------------------------------------
# Fetching from http(s)://, file:// or a directory through one _Transport per registry
# (our HTTP/1.1 with a wait budget per request, a caller's opener, or files), with
# bounded bodies and one retry policy (_Retry, applied in ``fetch``).


class _Transient(Exception):
    """A failure worth retrying (connection trouble, 5xx, 429, a short body)."""

    def __init__(self, reason: str, retry_after: float | None = None, restart: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.restart = restart  # the partial body cannot be resumed: start over


class _Missing(Exception):
    """The registry answered that the path does not exist (404/410, or no such file)."""


class _Cancelled(Exception):
    """The pull this transfer belongs to was stopped."""


class _Sink:
    """Where a body goes. The transfer loop receives straight into ``space()`` and then
    reports with ``took()``. ``kept`` bytes survive a failed attempt (resume)."""

    kept = 0
    resumable = False

    def reset(self) -> None:
        raise NotImplementedError

    def space(self, limit: int) -> memoryview:
        """Room for at least one and at most ``limit`` more bytes."""
        raise NotImplementedError

    def took(self, count: int) -> None:
        """``count`` bytes arrived at the start of the last ``space()``."""
        raise NotImplementedError

    def take(self, data: memoryview) -> None:
        """Take bytes that are already in memory (a seed's, or a body's that came with its head)."""
        while data:
            room = self.space(len(data))
            room[:] = data[: len(room)]
            self.took(len(room))
            data = data[len(room) :]


class _MemorySink(_Sink):
    def __init__(self) -> None:
        self.data = bytearray()
        self.scratch = memoryview(bytearray(_BUFFER_SIZE))

    def reset(self) -> None:
        self.data.clear()
        self.kept = 0

    def space(self, limit: int) -> memoryview:
        return self.scratch[:limit]

    def took(self, count: int) -> None:
        self.data += self.scratch[:count]
        self.kept += count

    def take(self, data: memoryview) -> None:
        self.data += data
        self.kept += len(data)


def _uncounted(kept: int, count: int) -> None:
    """A _ChunkSink's ``on_bytes`` while its bytes do not come from the network."""


class _ChunkSink(_Sink):
    """Streams a chunk into its first position in the files, hashing it on the way.
    A worker keeps one, and ``begin``s each chunk with it.

    Bytes arrive in ``buffer`` and are hashed and written when it is full or the
    chunk ends (``flush``), so a buffer's worth costs one hash update and one write
    however the network splits it; bytes already in memory are hashed and written
    where they are (``take``). Bytes that fail the hash stay until the next attempt
    overwrites them.
    """

    resumable = True

    def __init__(self, place: Callable[[int, memoryview, int], None]) -> None:
        self.place = place
        self.buffer = memoryview(bytearray(_BUFFER_SIZE))
        self.position, self.digest = 0, ""
        self.pending = 0  # bytes at the start of the buffer, not written yet
        self.hasher = _sha256()
        self.on_bytes: Callable[[int, int], None] = _uncounted  # told of bytes from the network

    def begin(self, position: int, digest: str) -> None:
        """Start on the chunk ``digest``, whose first position is ``position``."""
        self.position, self.digest = position, digest
        self.on_bytes = _uncounted
        self.reset()

    def reset(self) -> None:
        self.hasher = _sha256()
        self.kept = self.pending = 0

    def space(self, limit: int) -> memoryview:
        if self.pending == len(self.buffer):
            self.flush()
        return self.buffer[self.pending : self.pending + limit]

    def took(self, count: int) -> None:
        self.pending += count
        self.kept += count
        self.on_bytes(self.kept, count)

    def take(self, data: memoryview) -> None:
        if self.pending:  # behind buffered bytes: keep them in order
            super().take(data)
            return
        self.hasher.update(data)  # straight from where they are: no copy
        self.place(self.position, data, self.kept)
        self.kept += len(data)
        self.on_bytes(self.kept, len(data))

    def found(self, data: memoryview) -> None:
        """Count bytes that are already in their place (a resumed pull's), without writing them."""
        self.hasher.update(data)
        self.kept += len(data)

    def flush(self) -> None:
        """Hash and write what the buffer holds; ``hasher`` then covers every byte taken."""
        if self.pending:
            data = self.buffer[: self.pending]
            self.hasher.update(data)
            self.place(self.position, data, self.kept - self.pending)
            self.pending = 0

    def problem(self) -> str:
        """Once every byte is in: "" if they hash to the chunk's name, else what is wrong."""
        self.flush()  # the last buffered bytes go to their place; a failed attempt's are overwritten
        got = self.hasher.hexdigest()
        return "" if got == self.digest else f"hash mismatch (got {got})"


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(_DIGITS_RE, value):
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _content_length(value: str | None) -> int | None:
    """A Content-Length header's value, or None when absent or not plain digits."""
    value = (value or "").strip()
    return int(value) if re.fullmatch(_DIGITS_RE, value) else None


class _Retry:
    """The retry policy as one value, as urllib3's ``Retry`` is: how many attempts a request
    gets, how long to wait before each, and which failures are worth another attempt
    (``for_status`` and ``for_error``, the one mapping every transport uses).
    README, "Errors, exit codes and retries", states it for users."""

    __slots__ = ("attempts", "backoff")

    def __init__(self, retries: int, backoff: float) -> None:
        self.attempts, self.backoff = retries + 1, backoff

    def delay(self, attempt: int, last: _Transient) -> float:
        """Seconds to wait before attempt ``attempt`` (0 is the first) after ``last`` failed:
        the backoff doubling up to 10 s, or longer when the server asked (Retry-After, up to 30 s)."""
        delay: float = min(self.backoff * 2.0 ** (attempt - 1), _BACKOFF_CAP)
        if last.retry_after is not None:
            delay = max(delay, min(last.retry_after, _RETRY_AFTER_CAP))
        return delay

    @staticmethod
    def for_status(url: str, status: int, reason: str, fields: Mapping[str, str] | None,
                   ranged: bool) -> Exception:
        """What to raise for a final answer whose ``status`` is not one of ``_BODY_STATUSES``
        (a ``_Transient`` is retried). ``fields`` are the answer's (for Retry-After)."""
        if status in (404, 410):
            return _Missing(f"HTTP {status}")
        if status in (204, 205):  # no body where one was asked for: a broken transfer
            return _Transient(f"HTTP {status} {reason}".rstrip() + ", an answer without the body")
        if status == 416 and ranged:
            return _Transient("HTTP 416 for a resumed range", restart=True)
        if status == 429 or status >= 500:
            retry_after = _retry_after_seconds(fields.get("retry-after") if fields is not None else None)
            return _Transient(f"HTTP {status} {reason}".rstrip(), retry_after)
        if status in (401, 403):
            return NetworkError(f"{url}: HTTP {status} {reason}".rstrip() + "; if the registry needs credentials, "
                                "send them (or check them) with --header 'Authorization: ...' on the command "
                                "line, or headers={'Authorization': ...} in the Python API")
        if status == 407:
            return NetworkError(f"{url}: HTTP 407, a proxy asks for credentials; put them in the proxy URL "
                                "(http://user:password@host:port in HTTP_PROXY/HTTPS_PROXY)")
        return NetworkError(f"{url}: HTTP {status} {reason}".rstrip())

    @staticmethod
    def for_error(url: str, cause: object, doing: str = "") -> Exception:
        """What to raise when connecting, sending or receiving failed with ``cause`` (an OSError, an
        http.client error from a caller's opener, or urllib's reason): a certificate that fails
        verification is final; anything else is retried. ``doing`` prefixes the reason."""
        if type(cause).__name__ == "SSLCertVerificationError":
            return NetworkError(
                f"{url}: TLS certificate verification failed ({getattr(cause, 'verify_message', None) or cause}); "
                "set SSL_CERT_FILE to your CA bundle if you use a private CA"
            )
        return _Transient(f"{doing}{cause or type(cause).__name__}")


class _Response:
    """A response as the transfer loop sees it, from any transport: its status, length and
    Content-Range, a body read into the caller's buffer, and ``close``."""

    def __init__(self, status: int, length: int | None, body: Any, content_range: str = "") -> None:
        self.status, self.length, self.body, self.content_range = status, length, body, content_range

    def buffered(self, limit: int) -> memoryview:
        """Up to ``limit`` body bytes that arrived with the head, without copying them; use them
        before reading on."""
        return memoryview(b"")

    def readinto(self, view: memoryview) -> int:
        if hasattr(self.body, "readinto"):
            return int(self.body.readinto(view))
        data = self.body.read(len(view))  # a custom opener's response without readinto
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.body.close()
        except Exception:  # noqa: S110 - closing a broken connection may fail; nothing to do
            pass


class _Malformed(_Transient):
    """A response that breaks HTTP/1.1 framing: the connection is dropped, and the request retried."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"malformed response: {problem}", restart=True)


_HEADER_NAME_RE = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_FIELD_VALUE_RE = r"[^\x00-\x08\x0a-\x1f\x7f]*"  # no control characters but tab
# A head, checked whole: a status line, then field lines (a token, a colon, a value of visible
# characters, spaces, tabs and obs-text). That rules out folded lines, space before the colon,
# control characters and a CR anywhere but before its LF.
_STATUS_LINE_RE = rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\r?\n"
_FIELD_LINE_RE = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r?\n"
_HEAD_RE = _STATUS_LINE_RE + rb"(?:" + _FIELD_LINE_RE + rb")*"
# The fields the client acts on, in a checked head (a name may repeat).
_USED_FIELDS_RE = rb"\n(?i:(connection|content-length|content-range|location|retry-after|transfer-encoding)):([^\r\n]*)"
_CHUNK_SIZE_RE = rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?"
_HOP_HEADERS = frozenset([  # the transport's own: a caller may not set them
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
    "expect", "range", "proxy-authorization", "proxy-connection",
])
_CREDENTIAL_HEADERS = frozenset(["authorization", "cookie"])  # not sent to another host after a redirect
_BODY_STATUSES = (200, 203, 206)  # final answers that bring the body asked for
_REDIRECTS = (301, 302, 303, 307, 308)
_ORIGINS_KEPT = 4  # kept-alive connections per worker: the registry's origin and those its redirects lead to


@cache
def _regex(pattern: AnyStr) -> re.Pattern[AnyStr]:
    """``pattern``, compiled once: for the patterns of every response, whose lookup in
    re's own cache would cost more than matching them."""
    return re.compile(pattern)


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's extra request headers, checked; a ValueError never quotes a value (it may be a secret)."""
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not re.fullmatch(_HEADER_NAME_RE, name):
            raise ValueError(f"header name {name!r} is not a valid HTTP field name")
        if name.lower() in _HOP_HEADERS:
            raise ValueError(f"header {name} is set by xprim-models itself and cannot be given")
        if name.lower() == "accept-encoding":  # hashes cover the bytes as stored: nothing is decoded
            raise ValueError(f"header {name} cannot be given: xprim-models asks for the registry's bytes "
                             "as stored (identity) and does not decode compressed answers")
        if not isinstance(value, str) or not (value.isascii() and re.fullmatch(_FIELD_VALUE_RE, value)):
            raise ValueError(f"the value of header {name} must be ASCII text without control characters")
        checked[name] = value.strip(" \t")
    return checked


_Key = tuple[str, str, int, str]  # a connection's scheme, host, port and proxy URL ("" for none)


def _safe_proxy(proxy: str) -> str:
    """The proxy URL without its credentials, for messages."""
    return re.sub(r"//[^@/]*@", "//", proxy)


class _Connection:
    """One persistent HTTP/1.1 connection to one origin, direct or through a proxy, used
    by one thread at a time. It owns its socket, its TLS, its CONNECT tunnel and its
    deadline: ``exchange`` sends a request and reads the final head, connecting first
    when the kept one cannot be reused.

    This is the only HTTP parser in the module (urllib serves only a caller's
    ``opener``). One receive into its 128 KiB buffer usually brings a head and,
    for a 64 KiB chunk, the whole body: the head is checked where it lies, with
    one regular expression, and the body bytes are handed on where they lie
    (``_Response.buffered``); the rest of a longer body is received straight into
    the caller's buffer. http.client hands every head to the email package, which
    costs more than the transfer of a 64 KiB chunk (see docs/performance.md).

    Time is bounded by a budget of waiting: connecting, sending the request and
    receiving the final head (1xx interim responses included) must take at most
    ``timeout`` seconds in all, and then every 64 KiB of body (or the rest of it)
    must arrive within ``timeout`` seconds of waiting. Only time spent waiting on
    the socket counts, not a rate limit's pauses.
    """

    def __init__(self, key: _Key, timeout: float, tls: ssl.SSLContext | None,
                 proxy: tuple[tuple[str, int], str] | None, logger: Any) -> None:
        self.key, self.timeout, self.tls, self.logger = key, timeout, tls, logger
        self.proxy = proxy  # the proxy's address and Proxy-Authorization value, or None to connect directly
        self.sock: socket.socket | None = None
        self.buffer = bytearray(_RECEIVE_BUFFER)
        self.start = self.end = 0  # unread bytes: buffer[start:end]
        self.budget = 0.0  # seconds of waiting left
        self.window = 0  # bytes still to arrive before the budget is renewed
        self.poller: Any = None  # select.poll() on this connection, made when first needed
        self.sock_timeout = -1.0  # what the socket's own timeout was last set to

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.poller = None
        self.sock_timeout = -1.0
        self.start = self.end = 0

    def exchange(self, request: bytes, url: str) -> tuple[int, int, str, dict[str, str]]:
        """Send ``request`` for ``url`` and read its final head: HTTP minor version, status, reason
        and fields. The connection is reused when it is idle; one the server dropped meanwhile is
        replaced without counting as a failure. Then the body's deadline starts."""
        self.budget, self.window = self.timeout, 1 << 62  # connect, send and the head: one budget
        for _ in range(2):
            reused = self.idle()
            try:
                if not reused:
                    if self.sock is not None:
                        self.logger.debug("%s: a new connection (the kept one was closed or had stray bytes)", url)
                    self._connect(url)
                self.send(request)
                interim = 0
                while True:
                    head = self.read_head()
                    if not 100 <= head[1] < 200:
                        break
                    interim += 1
                    if head[1] == 101 or interim > _INTERIM_LIMIT:
                        raise _Malformed(f"HTTP {head[1]}" if head[1] == 101 else
                                         f"more than {_INTERIM_LIMIT} interim (1xx) responses")
                break
            except (_Transient, NetworkError):
                self.close()
                raise
            except OSError as exc:
                self.close()
                stale = isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))
                if not (reused and stale):
                    raise _Retry.for_error(url, exc) from exc
                # The server closed a kept-alive connection meanwhile: reconnect, not a retry.
        self.budget, self.window = self.timeout, _PROGRESS_WINDOW  # the body: 64 KiB per timeout
        return head

    def _connect(self, url: str) -> None:
        import socket

        self.close()
        scheme, host, port, _ = self.key
        began = time.monotonic()
        sock = socket.create_connection(self.proxy[0] if self.proxy else (host, port), max(self.budget, 0.001))
        self.budget -= time.monotonic() - began
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one small write
        if self.proxy and scheme == "https":
            self._tunnel(url)
        if self.tls is not None:
            began = time.monotonic()
            sock.settimeout(max(self.budget, 0.001))
            self.sock = self.tls.wrap_socket(sock, server_hostname=host)
            self.budget -= time.monotonic() - began
            self.sock_timeout = -1.0

    def _tunnel(self, url: str) -> None:
        """Ask the proxy for a tunnel to the origin (CONNECT); its refusal is looked at first."""
        assert self.proxy is not None
        _, host, port, proxy = self.key
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        auth = f"Proxy-Authorization: {self.proxy[1]}\r\n" if self.proxy[1] else ""
        self.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode("idna"))
        _, status, reason, _ = self.read_head()
        where = f"{url}: the proxy {_safe_proxy(proxy)}"
        if status == 407:
            raise NetworkError(f"{where} refused the credentials in its URL (HTTP 407); check them" if self.proxy[1]
                               else f"{where} asks for credentials (HTTP 407); put them in the proxy URL "
                               "(http://user:password@host:port)")
        if 400 <= status < 500 and status != 429:
            advice = (f"many proxies allow CONNECT only to port 443 (squid's default): ask its administrator to "
                      f"allow port {port}" if status == 403 else "check HTTPS_PROXY, or ask its administrator")
            raise NetworkError(f"{where} refused to tunnel to {target} (HTTP {status} {reason}".rstrip()
                               + f"); {advice}, or add {host} to NO_PROXY to connect directly")
        if not 200 <= status < 300:
            raise _Retry.for_status(f"{url} (through the proxy {_safe_proxy(proxy)})", status, reason, None, False)
        if self.start < self.end:
            raise _Malformed("bytes after the proxy's answer to CONNECT")

    def idle(self) -> bool:
        """True when the kept-alive connection has nothing to read: no stray bytes, no close."""
        sock = self.sock
        if sock is None or self.start < self.end:
            return False
        decrypted = getattr(sock, "pending", None)
        if decrypted is not None and decrypted():  # TLS bytes already decrypted
            return False
        import select

        try:
            if hasattr(select, "poll"):
                if self.poller is None:
                    self.poller = select.poll()
                    self.poller.register(sock.fileno(), select.POLLIN)
                return not self.poller.poll(0)
            return not select.select([sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def buffered(self, limit: int) -> memoryview:
        """Up to ``limit`` of the bytes received and not read yet, read now, where they lie."""
        count = min(limit, self.end - self.start)
        view = memoryview(self.buffer)[self.start : self.start + count]
        self.start += count
        return view

    def receive(self, view: memoryview) -> int:
        """Receive into ``view`` within the budget (after ``buffered`` bytes); 0 at the end of the stream."""
        sock = self.sock
        if sock is None:
            return 0
        budget = self.budget
        if budget <= 0:
            raise self._out_of_time()
        self._limit(sock, budget)
        began = time.monotonic()
        try:
            count = sock.recv_into(view)
        except TimeoutError as exc:  # socket.timeout is TimeoutError from Python 3.10 on
            raise self._out_of_time() from exc
        except OSError as exc:
            if type(exc).__name__ == "timeout":  # socket.timeout on Python 3.9
                raise self._out_of_time() from exc
            raise
        self.budget = budget - (time.monotonic() - began)
        self.window -= count
        if self.window <= 0:
            self.budget, self.window = self.timeout, _PROGRESS_WINDOW
        return count

    def _out_of_time(self) -> _Transient:
        self.close()
        if self.window > _PROGRESS_WINDOW:
            return _Transient(f"timed out: no complete response within {self.timeout:g}s")
        return _Transient(f"timed out: less than 64 KiB of the body arrived in {self.timeout:g}s")

    def _limit(self, sock: socket.socket, budget: float) -> None:
        """Make the socket's own timeout at most the budget (and not much more than a 16th of
        ``timeout`` below it: setting it costs a system call, so a close value is kept)."""
        if not budget <= self.sock_timeout <= budget + self.timeout / 16:
            sock.settimeout(budget)
            self.sock_timeout = budget

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        self._limit(self.sock, max(self.budget, 0.001))
        self.sock.sendall(data)

    def fill(self) -> None:
        """Read more bytes after ``buffer[start:end]``, moving them to the front first."""
        if self.start:
            view = memoryview(self.buffer)
            view[: self.end - self.start] = view[self.start : self.end]
            self.start, self.end = 0, self.end - self.start
        if self.end == len(self.buffer):
            if len(self.buffer) >= _HEAD_MAX:
                raise _Malformed(f"a head or line longer than {_HEAD_MAX // 1024} KiB")
            # An unusually long head: a bigger buffer, up to the cap. A new one, not this one
            # resized: a failed attempt's exception, kept for the message, may hold views of it.
            self.buffer = self.buffer + bytes(len(self.buffer))
        count = self.receive(memoryview(self.buffer)[self.end :])
        if not count:
            if not self.end:  # not a byte of an answer: a kept-alive connection the server had dropped
                raise ConnectionResetError(errno.ECONNRESET, "the server closed the connection")
            raise _Transient("the server closed the connection inside a response head")
        self.end += count

    def read_line(self) -> bytes:
        """One line (CRLF or bare LF ended), without its ending."""
        while True:
            found = self.buffer.find(b"\n", self.start, self.end)
            if found >= 0:
                line = bytes(self.buffer[self.start : found])
                self.start = found + 1
                line = line[:-1] if line.endswith(b"\r") else line
                if b"\r" in line:
                    raise _Malformed("a bare CR inside a line")
                return line
            self.fill()

    def read_head(self) -> tuple[int, int, str, dict[str, str]]:
        """The next response head: HTTP minor version, status, reason, and fields (names lower-cased)."""
        while True:
            found = self.buffer.find(b"\n\r\n", self.start, self.end)
            bare = self.buffer.find(b"\n\n", self.start, found if found >= 0 else self.end)
            if bare >= 0 or found >= 0:
                break
            self.fill()
        start, end = self.start, (bare if bare >= 0 else found) + 1  # through the last line's LF
        self.start = end + (1 if bare >= 0 else 2)
        match = _regex(_HEAD_RE).fullmatch(self.buffer, start, end)  # checked where it lies: no copy
        if match is None:
            raise _Malformed(_head_problem(bytes(self.buffer[start:end])))
        fields: dict[str, str] = {}
        for raw_name, raw_value in _regex(_USED_FIELDS_RE).findall(self.buffer, start, end):
            name, value = raw_name.decode("ascii").lower(), raw_value.strip(b" \t").decode("latin-1")
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        minor, status, reason = match.group(1, 2, 3)
        return int(minor), int(status), (reason or b"").decode("latin-1").strip(), fields


def _head_problem(head: bytes) -> str:
    """What makes ``head`` (through its last field line) fail _HEAD_RE: its status line, or which field line."""
    status_line, _, lines = head.partition(b"\n")
    if not re.fullmatch(_STATUS_LINE_RE, status_line + b"\n"):
        return f"status line {status_line.decode('latin-1')[:80]!r}"
    bad = next((line for line in lines.split(b"\n") if not re.fullmatch(_FIELD_LINE_RE, line + b"\n")), b"")
    what = "folded header line" if bad[:1] in (b" ", b"\t") else "header line"
    return f"{what} {bad.decode('latin-1').rstrip()[:80]!r}"


class _HttpResponse(_Response):
    """A response on a ``_Connection``; one not read to its end spoils the connection."""

    def __init__(self, connection: _Connection, head: tuple[int, int, str, dict[str, str]], *,
                 bodiless: bool) -> None:
        minor, status, reason, fields = head
        self.connection, self.fields, self.reason = connection, fields, reason
        value = fields.get("connection")
        if value is None:
            self.keep_alive = minor == 1
        else:
            value = value.lower()
            self.keep_alive = "close" not in value and (minor == 1 or "keep-alive" in value)
        self.chunked, self.chunk_left = False, 0
        coding = fields.get("transfer-encoding")
        length: int | None = None
        sized = fields.get("content-length", "")
        if bodiless:
            length = 0
        elif coding is None and 0 < len(sized) < 19 and sized.isdigit() and sized.isascii():
            length = int(sized)  # the usual case, checked cheaply
        elif coding is not None:
            if "content-length" in fields:
                raise _Malformed("both Transfer-Encoding and Content-Length")
            if coding.lower().replace(" ", "") != "chunked":
                raise _Malformed(f"unsupported Transfer-Encoding {coding[:40]!r}")
            self.chunked = True
        elif "content-length" in fields:
            values = {value.strip() for value in fields["content-length"].split(",")}
            if len(values) != 1 or not re.fullmatch(_DIGITS_RE, next(iter(values))):
                raise _Malformed(f"Content-Length {fields['content-length'][:40]!r}")
            length = int(values.pop())
        else:
            self.keep_alive = False  # the body ends when the connection does
        super().__init__(status, length, None, fields.get("content-range", ""))
        self.remaining = -1 if length is None else length
        self.done = length == 0

    def buffered(self, limit: int) -> memoryview:
        if self.chunked or self.done:
            return memoryview(b"")
        view = self.connection.buffered(min(limit, self.remaining) if self.remaining >= 0 else limit)
        if self.remaining >= 0:
            self.remaining -= len(view)
            self.done = not self.remaining
        return view

    def readinto(self, view: memoryview) -> int:
        if self.done:
            return 0
        if self.chunked and not self.chunk_left:
            self._next_chunk()
            if self.done:
                return 0
        limit = self.chunk_left if self.chunked else self.remaining
        if limit >= 0:
            view = view[:limit]
        connection = self.connection
        if connection.start < connection.end:
            arrived = connection.buffered(len(view))
            count = len(arrived)
            view[:count] = arrived
        else:
            count = connection.receive(view)
        if self.chunked:
            if not count:
                raise _Transient("the connection closed inside a chunked body")
            self.chunk_left -= count
        elif self.remaining >= 0:
            self.remaining -= count
            self.done = not self.remaining
        elif not count:
            self.done = True
        return count

    def _next_chunk(self) -> None:
        connection = self.connection
        if self.chunk_left == 0 and self.remaining == -2 and connection.read_line():
            raise _Malformed("chunk data longer than its size")
        match = re.fullmatch(_CHUNK_SIZE_RE, connection.read_line())
        if match is None:
            raise _Malformed("a bad chunk-size line")
        self.chunk_left, self.remaining = int(match.group(1), 16), -2  # -2: data lines end with CRLF
        if not self.chunk_left:
            for _ in range(100):  # trailer fields, then a blank line
                line = connection.read_line()
                if not line:
                    self.done = True
                    return
                if b":" not in line or line[:1] in (b" ", b"\t"):
                    raise _Malformed("a bad trailer line")
            raise _Malformed("more than 100 trailer fields")

    def close(self) -> None:
        # Anything but a clean end leaves the connection in an unknown state: start afresh.
        if not (self.done and self.keep_alive) or self.connection.start < self.connection.end:
            self.connection.close()


class _Session:
    """A worker's kept-alive connections, one per origin that its requests and their
    redirects lead to (a CDN's or an object store's besides the registry's). At most
    ``_ORIGINS_KEPT`` are kept; the oldest goes first."""

    def __init__(self) -> None:
        self.connections: dict[_Key, _Connection] = {}

    def keep(self, connection: _Connection) -> _Connection:
        if len(self.connections) >= _ORIGINS_KEPT:
            self.connections.pop(next(iter(self.connections))).close()
        self.connections[connection.key] = connection
        return connection

    def close(self) -> None:
        """Close every connection (each reconnects when next used)."""
        for connection in self.connections.values():
            connection.close()


class _Mismatch(_Transient):
    """A chunk's bytes did not hash to its name (or there were too many): one failed attempt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, restart=True)


def _request_headers(headers: Mapping[str, str], start: int, revalidate: bool) -> dict[str, str]:
    """A request's headers: the client's, and what this request adds."""
    sent = dict(headers)  # a redirect to another host takes credentials out of it
    if revalidate:  # any cache on the way must ask the registry whether its copy is current
        sent["Cache-Control"] = "no-cache"
        sent["Pragma"] = "no-cache"
    if start:
        sent["Range"] = f"bytes={start}-"
    return sent


class _Transport:
    """Opens a registry URL and returns the final response (``_Response``), or raises what
    ``_Retry`` maps the failure to. One implementation per kind of registry, chosen once
    per client: ``_HttpTransport``, ``_OpenerTransport`` and ``_LocalTransport``."""

    def open(self, url: str, start: int, revalidate: bool, session: _Session) -> _Response:
        """GET ``url`` from byte ``start``, on ``session``'s connections where the transport keeps any;
        with ``revalidate``, caches on the way must check with the registry that their copy is current."""
        raise NotImplementedError


_Route = tuple[_Key, str, str]  # connection key, Host header, request-target prefix


class _HttpTransport(_Transport):
    """Our HTTP/1.1 (``_Connection``) for http(s) registries, direct or through a proxy,
    following redirects; credentials stay with the host they were given for."""

    def __init__(self, headers: Mapping[str, str], *, timeout: float, ssl_context: ssl.SSLContext | None,
                 logger: Any) -> None:
        self.headers, self.timeout, self.logger = headers, timeout, logger
        self._ssl_context = ssl_context
        self._proxies: dict[tuple[str, str], str] = {}
        self._proxy_addresses: dict[str, tuple[tuple[str, int], str]] = {}
        self._routes: dict[str, _Route] = {}
        self._header_blocks: dict[tuple[Any, ...], bytes] = {}
        self._guard = threading.Lock()

    def open(self, url: str, start: int, revalidate: bool, session: _Session) -> _Response:
        headers = _request_headers(self.headers, start, revalidate)
        for _ in range(_REDIRECT_LIMIT + 1):
            response = self._request(session, url, headers)
            status = response.status
            if status in _BODY_STATUSES:
                return response
            if status not in _REDIRECTS:
                response.connection.close()
                raise _Retry.for_status(url, status, response.reason, response.fields, bool(start))
            location = response.fields.get("location", "")
            self._drain(response)
            url = self._redirect(url, location, status, headers)
        raise NetworkError(f"{url}: more than {_REDIRECT_LIMIT} redirects")

    def _request(self, session: _Session, url: str, headers: Mapping[str, str]) -> _HttpResponse:
        """Send one GET on the session's connection to the URL's origin, and read the final head."""
        route, target = self._route(url)
        key, authority, _ = route
        request = b"GET " + target.encode("ascii") + b" HTTP/1.1\r\n" + self._header_block(key, authority, headers, url)
        connection = session.connections.get(key) or session.keep(self._connection(key, url))
        head = connection.exchange(request, url)
        try:
            return _HttpResponse(connection, head, bodiless=head[1] in (204, 304))
        except _Transient:
            connection.close()
            raise

    def _connection(self, key: _Key, url: str) -> _Connection:
        scheme, _, _, proxy = key
        return _Connection(key, self.timeout, self._default_ssl_context() if scheme == "https" else None,
                           self._proxy_address(proxy, url) if proxy else None, self.logger)

    def _redirect(self, url: str, location: str, status: int, headers: dict[str, str]) -> str:
        from urllib.parse import quote, urljoin, urlsplit

        if not location:
            raise NetworkError(f"{url}: HTTP {status} redirect without a Location")
        try:
            target = urljoin(url, quote(location.strip(), safe="/:?=&%;@+,$!*'()~#[]"))
            old, new = urlsplit(url), urlsplit(target)
            if new.scheme.lower() in ("http", "https"):
                self._route(target)  # checks the host and port
            moved = (old.hostname, old.port) != (new.hostname, new.port)
        except (ValueError, RegistryError) as exc:
            raise NetworkError(f"{url}: HTTP {status} redirect to a malformed URL {location.strip()[:200]!r} "
                               f"({str(exc).rpartition(': ')[2]}); tell the registry's operator") from exc
        if new.scheme.lower() not in ("http", "https"):
            raise NetworkError(f"{url}: redirected to {new.scheme}:, not http(s)")
        # Like curl and requests: credentials go to no other host, and never down to plain http.
        if moved or (old.scheme, new.scheme) == ("https", "http"):
            for name in [name for name in headers if name.lower() in _CREDENTIAL_HEADERS]:
                del headers[name]
        self.logger.debug("%s: HTTP %d to %s", url, status, target)
        return target

    @staticmethod
    def _drain(response: _HttpResponse) -> None:
        """Read a redirect's short body, so its connection stays usable; a longer one closes it."""
        scrap = memoryview(bytearray(4096))
        for _ in range(16):
            if not response.readinto(scrap):
                break
        response.close()

    # Routing ---------------------------------------------------------------

    def _proxy(self, scheme: str, host: str) -> str:
        """The proxy URL for ``scheme://host`` (``host[:port]``), or "" to connect directly. Read the urllib way:
        the ``*_proxy`` variables and ``NO_PROXY``, and on macOS and Windows the system's settings."""
        with self._guard:
            if (scheme, host) not in self._proxies:
                proxy = ""
                if sys.platform in ("darwin", "win32") or any(name.lower().endswith("_proxy") for name in os.environ):
                    import urllib.request  # only then: importing it costs 20 ms

                    if not urllib.request.proxy_bypass(host):
                        proxy = urllib.request.getproxies().get(scheme, "")
                self._proxies[(scheme, host)] = proxy
            return self._proxies[(scheme, host)]

    def _route(self, url: str) -> tuple[_Route, str]:
        """How to GET ``url``: the connection, the Host header, and the request target."""
        directory, _, name = url.rpartition("/")
        cacheable = "?" not in name and "#" not in name
        route = self._routes.get(directory) if cacheable else None
        if route is None:
            route = self._parse_route(directory + "/")
            if cacheable:
                self._routes[directory] = route  # chunks share their directory's
        _, _, prefix = route
        target = prefix + name
        if not (target.isascii() and target.isprintable()) or " " in target:  # it goes on the request line
            raise RegistryError(f"invalid registry URL {url!r}: quote spaces and other special characters")
        return route, target

    def _parse_route(self, url: str) -> _Route:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise RegistryError(f"invalid registry URL {url!r}: {exc}") from exc
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        if scheme not in ("http", "https"):
            raise RegistryError(f"invalid registry URL {url!r}: not http(s)")
        if not host:
            raise RegistryError(f"invalid registry URL {url!r}: no host name")
        default_port = 443 if scheme == "https" else 80
        try:
            authority = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise RegistryError(f"invalid registry URL {url!r}: {exc}") from exc
        authority = f"[{authority}]" if ":" in authority else authority
        authority += f":{port}" if port not in (None, default_port) else ""
        proxy = self._proxy(scheme, parts.netloc.rpartition("@")[2])  # host[:port], as urllib matches NO_PROXY
        path = parts.path or "/"
        # Through a proxy, plain http asks for the absolute URL; https tunnels with CONNECT.
        prefix = f"http://{authority}{path}" if proxy and scheme == "http" else path
        return (scheme, host, port or default_port, proxy), authority, prefix

    def _default_ssl_context(self) -> ssl.SSLContext:
        import ssl

        with self._guard:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()  # honours SSL_CERT_FILE
            return self._ssl_context

    def _proxy_address(self, proxy: str, url: str) -> tuple[tuple[str, int], str]:
        """The proxy's (host, port) and its Proxy-Authorization value ("" without credentials)."""
        known = self._proxy_addresses.get(proxy)
        if known is None:
            known = self._proxy_addresses[proxy] = self._parse_proxy(proxy, url)
        return known

    @staticmethod
    def _parse_proxy(proxy: str, url: str) -> tuple[tuple[str, int], str]:
        import base64
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        try:
            port = parts.port or 80
        except ValueError:
            port = -1
        if parts.scheme.lower() != "http" or not parts.hostname or port < 0:
            raise NetworkError(f"{url}: the proxy {_safe_proxy(proxy)} is not a plain http://host:port proxy, "
                               "the only kind supported; check HTTP_PROXY/HTTPS_PROXY")
        auth = ""
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = "Basic " + base64.b64encode(credentials).decode("ascii")
        return (parts.hostname, port), auth

    def _header_block(self, key: _Key, authority: str, headers: Mapping[str, str], url: str) -> bytes:
        """A request's header lines, and the blank line that ends them (made once for a pull's chunks)."""
        made = (key, authority, *headers.items())
        block = self._header_blocks.get(made)
        if block is None:
            lines = [f"Host: {authority}", *(f"{name}: {value}" for name, value in headers.items())]
            if key[3] and key[0] == "http":
                _, proxy_auth = self._proxy_address(key[3], url)
                lines += [f"Proxy-Authorization: {proxy_auth}"] if proxy_auth else []
            block = "".join(f"{line}\r\n" for line in [*lines, ""]).encode("ascii")
            if "Range" not in headers:  # not one per resumed offset
                self._header_blocks[made] = block
        return block


class _OpenerTransport(_Transport):
    """A caller's ``opener`` (urllib's interface: ``open(request, timeout=)``), which follows
    redirects itself; its failures go through the same ``_Retry`` mapping as ours."""

    def __init__(self, opener: Any, headers: Mapping[str, str], timeout: float) -> None:
        self.opener, self.headers, self.timeout = opener, headers, timeout

    def open(self, url: str, start: int, revalidate: bool, session: _Session) -> _Response:
        import http.client
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, headers=_request_headers(self.headers, start, revalidate))
        try:
            response = self.opener.open(request, timeout=self.timeout)
        except ValueError as exc:  # includes UnicodeEncodeError; HTTPError is not one
            raise RegistryError(f"invalid registry URL {url!r}: {exc}") from exc
        except urllib.error.HTTPError as exc:
            fields = {"retry-after": exc.headers.get("Retry-After", "")} if exc.headers else None
            exc.close()
            raise _Retry.for_status(url, exc.code, str(exc.reason), fields, bool(start)) from exc
        except urllib.error.URLError as exc:
            raise _Retry.for_error(url, exc.reason) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry.for_error(url, exc) from exc
        status = getattr(response, "status", None) or response.getcode() or 200
        if status not in _BODY_STATUSES:
            _Response(status, None, response).close()
            raise _Retry.for_status(url, status, str(getattr(response, "reason", "") or ""),
                                    {"retry-after": response.headers.get("Retry-After", "")}, bool(start))
        length = _content_length(response.headers.get("Content-Length"))
        return _Response(status, length, response, response.headers.get("Content-Range") or "")


class _LocalTransport(_Transport):
    """A registry directory (a path or a ``file://`` URL): ``url`` is a file's path."""

    def open(self, url: str, start: int, revalidate: bool, session: _Session) -> _Response:
        try:
            handle = open(url, "rb")  # noqa: SIM115 - closed by _Response.close
        except FileNotFoundError as exc:
            raise _Missing("no such file") from exc
        except IsADirectoryError as exc:
            raise _Missing("is a directory") from exc
        except OSError as exc:
            raise _Retry.for_error(url, exc.strerror or exc) from exc
        size = os.fstat(handle.fileno()).st_size
        if start:
            handle.seek(start)
            return _Response(206, size - start, handle, f"bytes {start}-{size - 1}/{size}")
        return _Response(200, size, handle)


def _registry_origin(url: str) -> str:
    """A registry URL as installs record it (``InstalledModel.registry_url``): a directory
    or file:// URL as an absolute path, an http(s) URL without its trailing slash."""
    if not url:
        return ""
    if re.match(r"(?i)https?://", url):
        return url.rstrip("/")
    try:
        root = _RegistryClient._local_root(url)
    except RegistryError:
        return url
    return root if root is not None else url


class _RegistryClient:
    """Fetches registry documents and chunks: through one ``_Transport``, chosen once
    (our HTTP/1.1 for http(s)://, files for ``file://`` and directories, a caller's
    ``opener``), under one retry policy (``_Retry``, applied in ``fetch``)."""

    def __init__(
        self,
        url: str,
        *,
        opener: Any,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        retries: int,
        backoff: float,
        logger: logging.Logger | Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/") if re.match(r"(?i)(https?|file)://", url) else url
        self.local_root = self._local_root(url)
        # Sent with every request (a caller's own last: they may replace the User-Agent).
        sent = {"User-Agent": f"xprim-models/{__version__} python/{sys.version.split()[0]}",
                "Accept-Encoding": "identity", **(headers or {})}
        self.transport: _Transport
        if self.local_root is not None:
            self.transport = _LocalTransport()
        elif opener is not None:
            self.transport = _OpenerTransport(opener, sent, timeout)
        else:
            self.transport = _HttpTransport(sent, timeout=timeout, ssl_context=ssl_context, logger=logger)
        self.retry = _Retry(retries, backoff)
        self.logger = logger
        self.index_warned: set[tuple[str, ...]] = set()  # bad models.json entries already logged

    @staticmethod
    def _local_root(url: str) -> str | None:
        if not url:
            raise RegistryError("no registry URL is configured: set Config.registry_url")
        match = re.match(r"(?i)([a-z][a-z0-9+.-]*)://", url)
        if not match:
            return os.path.abspath(os.path.expanduser(url))
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            return None
        if scheme == "file":
            from urllib.parse import unquote, urlsplit

            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise RegistryError(f"registry URL {url}: file:// URLs must name a local path")
            path = unquote(parts.path)
            if os.name == "nt" and re.match(r"/[A-Za-z]:", path):
                path = path[1:]
            return path
        raise RegistryError(f"registry URL {url}: unsupported scheme {scheme!r}; use http(s)://, file:// or a path")

    @property
    def origin(self) -> str:
        """The registry as installs record it: a URL, or a directory's absolute path."""
        return _registry_origin(self.url)

    def location(self, relative: str) -> str:
        if self.local_root is not None:
            return os.path.join(self.local_root, *relative.split("/"))
        return f"{self.url}/{relative}"

    # The retry policy --------------------------------------------------------

    def fetch(
        self,
        relative: str,
        what: str,
        sink: _Sink,
        *,
        size: int,
        exact: bool,
        cancel: threading.Event | None = None,
        read_size: int = _BUFFER_SIZE,
        session: _Session,
        check: Callable[[], str] | None = None,
        revalidate: bool = False,
    ) -> None:
        """Transfer one body into ``sink``, under the one retry policy (``_Retry``).

        At most ``retries + 1`` attempts, whatever fails: a connection error or
        timeout, a 5xx or 429, a cut or malformed response, or a body that fails
        ``check`` (which returns a problem, or "" when the bytes are right). Before
        attempt n+1 it waits ``backoff * 2**(n-1)`` seconds, capped at 10 s, or
        longer when a 429/503 asks with ``Retry-After`` (up to 30 s). A cut body
        resumes with a Range request; a failed check starts over.

        With ``exact`` the body must be exactly ``size`` bytes (a longer one fails
        the attempt like a bad hash, a shorter one is a broken transfer); otherwise
        ``size`` is a cap and a longer body is a RegistryError.
        """
        location = self.location(relative)
        retry, last = self.retry, None
        for attempt in range(retry.attempts):
            if last is not None:
                delay = retry.delay(attempt, last)
                self.logger.info("retrying %s in %.1fs (attempt %d of %d): %s",
                                 location, delay, attempt + 1, retry.attempts, last)
                if cancel is not None and cancel.wait(delay):
                    raise _Cancelled()
                if cancel is None:
                    time.sleep(delay)
                if last.restart:
                    sink.reset()
            elif sink.kept:
                sink.reset()
            try:
                self._attempt(location, what, sink, size, exact, cancel, read_size, session, revalidate,
                              (attempt + 1, retry.attempts))
                problem = check() if check is not None else ""
                if not problem:
                    return
                raise _Mismatch(problem)
            except _Transient as exc:
                last = exc
                if isinstance(exc, _Mismatch):
                    session.close()  # a desynchronised connection could be the cause: take a new one
                    if attempt + 1 < retry.attempts:
                        self.logger.warning("%s: %s, downloading it again", what, exc)
                else:
                    self.logger.debug("%s: %s", location, exc)
            except _Missing as exc:
                raise RegistryError(
                    f"{what} is missing from the registry ({location}: {exc}); "
                    "check the registry URL, or tell the registry's publisher"
                ) from exc
        assert last is not None
        if isinstance(last, _Mismatch):
            raise HashMismatchError(
                f"{what}: {last}, after {retry.attempts} attempts; the registry serves corrupt data"
            ) from None
        raise NetworkError(f"{what}: {location}: {last} (after {retry.attempts} attempts)") from last

    def _attempt(
        self,
        location: str,
        what: str,
        sink: _Sink,
        size: int,
        exact: bool,
        cancel: threading.Event | None,
        read_size: int,
        session: _Session,
        revalidate: bool,
        attempt: tuple[int, int],
    ) -> None:
        start = sink.kept if sink.resumable and exact else 0
        if not start and sink.kept:
            sink.reset()
        # The extra tells the CLI what it waits for, should the request stall (see _Console).
        self.logger.debug("GET %s%s", location, f" (from byte {start})" if start else "",
                          extra={_ATTEMPT_KEY: (location, *attempt)})
        response = self.transport.open(location, start, revalidate, session)
        try:
            if start and response.status != 206:
                sink.reset()  # the server ignored Range: take the whole body again
                start = 0
            elif start and not response.content_range.startswith(f"bytes {start}-"):
                raise _Transient(f"unexpected Content-Range {response.content_range!r}", restart=True)
            remaining = size - start
            if response.length is not None and response.length > remaining:
                raise self._too_long(what, location, size, start + response.length, exact)
            self._stream(response, sink, remaining, cancel, read_size, location)
            expected = size if exact else start + (response.length if response.length is not None else 0)
            if sink.kept < expected:
                raise _Transient(f"connection closed after {sink.kept} of {expected} bytes")
            if response.length is None and self._has_more(response):
                raise self._too_long(what, location, size, None, exact)
        finally:
            response.close()

    @staticmethod
    def _too_long(what: str, location: str, size: int, sent: int | None, exact: bool) -> Exception:
        amount = f"{sent} bytes" if sent is not None else "more bytes"
        if exact:
            return _Mismatch(f"{location} sent {amount}, expected {size}")
        return RegistryError(f"{what}: {location} sent {amount}, more than the {size}-byte limit")

    @staticmethod
    def _has_more(response: _Response) -> bool:
        try:
            return response.readinto(memoryview(bytearray(1))) > 0
        except Exception:  # the body ended badly after all we needed: not "more"
            return False

    @staticmethod
    def _stream(
        response: _Response,
        sink: _Sink,
        remaining: int,
        cancel: threading.Event | None,
        read_size: int,
        location: str,
    ) -> None:
        with response.buffered(min(read_size, remaining)) as arrived:  # released before the buffer is read into
            if arrived:
                sink.take(arrived)
                remaining -= len(arrived)
        while remaining > 0:
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            try:
                count = response.readinto(sink.space(min(read_size, remaining)))
            except Exception as exc:
                import http.client  # a caller's opener may raise its errors

                if not isinstance(exc, (OSError, http.client.HTTPException)):
                    raise
                raise _Retry.for_error(location, exc, "connection broken: ") from exc
            if not count:
                return
            sink.took(count)
            remaining -= count

    def fetch_document(self, relative: str, what: str, limit: int, *, session: _Session | None = None,
                       revalidate: bool = False) -> bytes:
        """A whole document of at most ``limit`` bytes, on ``session`` or on connections of its own;
        with ``revalidate``, caches on the way must check with the registry that their copy is current."""
        sink = _MemorySink()
        connections = session or _Session()
        try:
            self.fetch(relative, what, sink, size=limit, exact=False, session=connections, revalidate=revalidate)
        finally:
            if connections is not session:
                connections.close()
        return bytes(sink.data)

    def index(self) -> _Index:
        """The registry's models.json, validated entry by entry, with aliases resolved.
        Each entry left out is logged as a warning, once per client (so once per Manager)."""
        raw = self.fetch_document("models.json", "the registry index models.json", _MAX_INDEX_BYTES,
                                  revalidate=True)  # caches must not hide an alias move
        index = _parse_index(raw, self.location("models.json"))
        fresh = [(key, problem) for key, problem in index.problems.items() if key not in self.index_warned]
        self.index_warned.update(key for key, _ in fresh)
        for key, problem in fresh[:_WARNED_AT_MOST]:
            label = "/".join(key[:2]) + "".join(f" {version}" for version in key[2:])
            self.logger.warning("models.json: leaving out %.200r: %s", label, problem)  # invalid names are not capped
        if len(fresh) > _WARNED_AT_MOST:
            self.logger.warning("models.json: leaving out %d more invalid entries; asking for one by name says why",
                                len(fresh) - _WARNED_AT_MOST)
        return index

    def manifest(self, digest: str, metadata_dir: str, session: _Session | None = None) -> _Manifest:
        """The manifest ``digest``, validated (``raw`` holds its bytes)."""
        raw = self.fetch_document(f"data/{digest}", f"manifest {digest}", _MAX_MANIFEST_BYTES, session=session)
        return _parse_manifest(digest, raw, metadata_dir)

    def manifests(self, digests: Sequence[str], metadata_dir: str) -> dict[str, _Manifest]:
        """Many manifests, fetched concurrently on a connection per pool thread."""
        if not digests:
            return {}
        from concurrent.futures import ThreadPoolExecutor

        local, sessions = threading.local(), []

        def fetch(digest: str) -> _Manifest:
            if not hasattr(local, "session"):
                local.session = _Session()
                sessions.append(local.session)
            return self.manifest(digest, metadata_dir, local.session)

        try:
            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="xprim-models-manifest") as pool:
                return dict(zip(digests, pool.map(fetch, digests)))
        finally:
            for session in sessions:
                session.close()


# --- Pull engine ------------------------------------------------------------------
# Workers stream each distinct chunk (from bytes already on this disk, hashed on the
# way and used only if they match, or from the network) into its first place in the
# files, then copy it to its other places. The calling thread waits, reports
# progress, and re-raises any error.


class _Task:
    """One distinct chunk to verify or download, and the positions it fills."""

    __slots__ = ("digest", "positions", "size")

    def __init__(self, digest: str, size: int) -> None:
        self.digest, self.size = digest, size
        self.positions: list[int] = []


class _Flow:
    """One worker's bytes: from the network in all, and of its current chunk in hand.
    Only that worker writes them; the progress reader adds them up."""

    __slots__ = ("downloaded", "kept")

    def __init__(self) -> None:
        self.downloaded = self.kept = 0


class _Source:
    """Where this disk may hold the bytes of one chunk: read, hashed, and used only if they match.

    Either chunk ``position`` of ``manifest``'s files under the directory ``origin``,
    or the ``given`` pieces (path, offset, count) in the chunk's order. ``place`` is
    the chunk position whose own bytes they are in the files being written (a
    resumed pull's), or -1: bytes found at the chunk's first position are only hashed.
    """

    __slots__ = ("given", "manifest", "origin", "place", "position")

    def __init__(self, origin: str, manifest: _Manifest | None = None, position: int = -1, *,
                 given: Sequence[tuple[str, int, int]] = (), place: int = -1) -> None:
        self.origin, self.manifest, self.position, self.given, self.place = origin, manifest, position, given, place

    def pieces(self) -> Sequence[tuple[str, int, int]]:
        if self.manifest is None:
            return self.given
        return _chunk_pieces(self.origin, self.manifest, self.position)


def _chunk_pieces(directory: str, manifest: _Manifest, position: int) -> list[tuple[str, int, int]]:
    """The (path, offset, count) pieces of chunk ``position`` of ``manifest``'s files under ``directory``."""
    return [
        (os.path.join(directory, *manifest.files[index].path.split("/")), offset, count)
        for index, offset, count in _segments(manifest, position * manifest.chunk_size,
                                              manifest.chunk_length(position))
    ]


class _Copy:
    """An installed version as a place to find chunks: its directory and stored manifest."""

    __slots__ = ("directory", "manifest", "sizes")

    def __init__(self, directory: str, manifest: _Manifest) -> None:
        self.directory, self.manifest = directory, manifest
        self.sizes = {info.path: (index, info.size) for index, info in enumerate(manifest.files)}

    def path(self, relative: str) -> str:
        return os.path.join(self.directory, *relative.split("/"))


# Candidates by path tried for one chunk: every piece aligned with its file's start, then with
# its file's end, in each of the first two installed manifests of the model.
_PATH_CANDIDATES = 4


def _sources_by_hash(manifest: _Manifest, copies: Sequence[_Copy]) -> dict[str, list[_Source]]:
    """Where installed versions hold chunks ``manifest`` lists, by hash."""
    wanted = set(manifest.chunks)
    found: dict[str, list[_Source]] = {}
    for copy in copies:
        for position, digest in enumerate(copy.manifest.chunks):
            if digest in wanted:
                found.setdefault(digest, []).append(
                    _Source(copy.directory, copy.manifest, position))
    return found


def _local_sources(manifest: _Manifest, positions: Collection[int], copies: Sequence[_Copy],
                   kin: Sequence[_Copy]) -> dict[str, list[_Source]]:
    """Where this disk holds the chunks at ``positions``: installed versions (``copies``) by
    hash, and for a chunk none holds by hash, installed files of the same model (``kin``) by path."""
    sources = _sources_by_hash(manifest, copies)
    for position in positions:
        digest = manifest.chunks[position]
        if digest not in sources and kin:
            found = _sources_by_path(manifest, position, kin)
            if found:
                sources[digest] = found
    return sources


def _sources_by_path(manifest: _Manifest, position: int, kin: Sequence[_Copy]) -> list[_Source]:
    """Candidates for chunk ``position`` assembled from installed files of the same paths in
    ``kin`` (versions of the same model): each file's bytes taken at the same offset from its
    start, then at the same distance from its end (a grown header shifts what follows it)."""
    segments = list(_segments(manifest, position * manifest.chunk_size, manifest.chunk_length(position)))
    found: list[_Source] = []
    for copy in kin:
        for from_end in (False, True):
            pieces = []
            for index, offset, count in segments:
                info = manifest.files[index]
                known = copy.sizes.get(info.path)
                at = offset + (known[1] - info.size if from_end else 0) if known else -1
                if known is None or at < 0 or at + count > known[1]:
                    break
                pieces.append((copy.path(info.path), at, count))
            else:
                if not found or found[-1].given != pieces:
                    found.append(_Source(copy.directory, given=pieces))
    return found[:_PATH_CANDIDATES]


class _RateLimiter:
    """A token bucket shared by a pull's workers: bytes are paid for after they arrive."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.lock = threading.Lock()
        self.next_free = clock()

    def take(self, count: int, cancel: threading.Event) -> None:
        with self.lock:
            now = self.clock()
            # At most a tenth of a second of unused allowance carries over: no bursts.
            self.next_free = max(self.next_free, now - 0.1) + count / self.rate
            delay = self.next_free - now
        if delay > 0:
            cancel.wait(delay)


class _PullJob:
    """Puts verified chunks into files with worker threads, through one path.

    Each distinct chunk streams into its first position while it is hashed:
    from bytes already there (a resumed pull's, verified again), from a source
    on this disk (an installed version holding it, by hash or by path), or from
    the network. Once it verifies, its
    other positions are copied from the first. The calling thread waits, reports
    progress, and re-raises a worker's error.

    It holds no ``Manager``: it is given the registry client, the ``writer`` (the
    files, addressed by chunk number), the ``sources`` of chunks on this disk, and a logger.
    """

    def __init__(
        self,
        client: _RegistryClient,
        writer: _ChunkFiles,
        label: str,
        chunks: Sequence[tuple[str, int]],
        *,
        concurrency: int,
        emit: Callable[[PullProgress], None],
        logger: Any,
        sources: Mapping[str, Sequence[_Source]] | None = None,
        limit_rate: float | None = None,
    ) -> None:
        self.client, self.writer, self.label, self.emit, self.logger = client, writer, label, emit, logger
        self.chunk_count = len(chunks)
        self.total_size = sum(size for _, size in chunks)
        self.concurrency = concurrency
        self.sources = sources or {}
        self.limiter = _RateLimiter(limit_rate) if limit_rate else None
        # Reads stay small under a low rate limit, so the cap holds over short spans too.
        self.read_size = min(_BUFFER_SIZE, max(4096, int(limit_rate / 16))) if limit_rate else _BUFFER_SIZE
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a worker finished the last chunk, failed, or wrote
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        # One task per distinct chunk, in the order of its first position: a
        # chunk listed twice is obtained once and copied to its other places.
        tasks: dict[str, _Task] = {}
        for position, (digest, size) in enumerate(chunks):
            tasks.setdefault(digest, _Task(digest, size)).positions.append(position)
        self.tasks = list(tasks.values())
        self.next_task = 0
        self.tasks_done = 0
        self.chunks_completed = 0
        self.bytes_done = 0  # of the chunks completed
        # Each worker counts its network bytes in its own _Flow, without a lock; progress adds them up.
        self.flows: list[_Flow] = []
        self.current_file = ""  # the flushing step's
        self.last_chunk = -1  # the first position of the chunk completed last
        self.dirty = True
        self.writing = 0  # workers writing into the files right now

    # Progress ----------------------------------------------------------------

    def snapshot(self, *, done: bool = False) -> PullProgress:
        """The progress now; ``done`` keeps the phase at ``chunks`` for the event that completes it."""
        phase: Literal["chunks", "extracting"] = (
            "chunks" if done or self.tasks_done < len(self.tasks) else "extracting"
        )
        return PullProgress(
            phase,
            self.chunk_count,
            self.chunks_completed,
            self.total_size,
            self.bytes_done + sum(flow.kept for flow in self.flows),
            sum(flow.downloaded for flow in self.flows),
            self.current_file or (self.writer.file_of(self.last_chunk) if self.last_chunk >= 0 else ""),
        )

    def _on_network(self, flow: _Flow, kept: int, count: int) -> None:
        """``count`` more bytes of the worker's chunk came from the network; ``kept`` are in hand."""
        flow.downloaded += count
        flow.kept = max(flow.kept, kept)  # a restarted transfer does not move progress back
        self.dirty = True
        if self.limiter is not None:
            self.limiter.take(count, self.cancel)

    def set_current_file(self, path: str) -> None:
        """The flushing step moved on to ``path``: say so at once."""
        with self.lock:
            self.current_file = path
        self.report()

    def report(self) -> None:
        """Emit the progress now."""
        with self.lock:
            snapshot = self.snapshot()
            self.dirty = False
        self.emit(snapshot)

    # Workers -----------------------------------------------------------------

    def _worker(self) -> None:
        session = _Session()
        sink = _ChunkSink(partial(self._write_files, self.writer.place))
        flow = _Flow()
        counted = partial(self._on_network, flow)
        with self.lock:
            self.flows.append(flow)
        try:
            while True:
                with self.lock:
                    if self.cancel.is_set() or self.next_task >= len(self.tasks):
                        return
                    index = self.next_task
                    self.next_task += 1
                task = self.tasks[index]
                if task.digest not in self.writer.present:
                    self._obtain(task, sink, session, counted)
                    for position in task.positions[1:]:
                        self._write_files(self.writer.copy, task.positions[0], position)
                with self.lock:
                    self.tasks_done += 1
                    self.last_chunk = task.positions[0]
                    self.chunks_completed += len(task.positions)
                    self.bytes_done += task.size * len(task.positions)
                    flow.kept = 0
                    self.dirty = True
                    if self.tasks_done == len(self.tasks):  # progress itself is polled, not pushed
                        self.changed.notify_all()
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            with self.lock:
                if self.error is None and not isinstance(exc, _Cancelled):
                    self.error = exc
                self.cancel.set()
                self.changed.notify_all()
        finally:
            session.close()

    def _obtain(self, task: _Task, sink: _ChunkSink, session: _Session,
                counted: Callable[[int, int], None]) -> None:
        """Put the verified chunk at its first position: from a source on this disk (the bytes
        already there, an installed version's) if they hash right, else the network's (``counted``)."""
        sink.begin(task.positions[0], task.digest)
        for source in self.sources.get(task.digest, ()):
            if self._read_source(source, sink):
                self.logger.debug("chunk %s: verified from %s", task.digest[:12], source.origin)
                return
            sink.reset()
        sink.on_bytes = counted  # every byte written from now on comes from the network
        what = f"{self.label}: chunk {task.positions[0] + 1}/{self.chunk_count} ({task.digest[:12]})"
        self.client.fetch(  # a mismatch is one failed attempt of the fetch's retry policy
            f"data/{task.digest}", what, sink, size=task.size, exact=True,
            cancel=self.cancel, read_size=self.read_size, session=session, check=sink.problem,
        )

    def _write_files(self, write: Callable[..., None], *args: Any) -> None:
        """``write(*args)`` into the files, unless the job is over: a worker that was still
        waiting on the network when ``run`` returned must not write after it."""
        with self.lock:
            if self.cancel.is_set():
                raise _Cancelled()
            self.writing += 1
        try:
            write(*args)
        finally:
            with self.lock:
                self.writing -= 1
                if not self.writing and self.cancel.is_set():  # run() may be waiting for this
                    self.changed.notify_all()

    def _read_source(self, source: _Source, sink: _ChunkSink) -> bool:
        """Copy a chunk's bytes out of ``source`` into the sink; True if they hash right.
        Bytes that are already where they belong are only hashed."""
        put = sink.found if source.place == sink.position else sink.take
        try:
            for path, offset, count in source.pieces():
                fd = _open_regular(path)  # a pipe planted in an installed version is not waited on
                try:
                    for data in _read_pieces(fd, offset, count, _BUFFER_SIZE):
                        if self.cancel.is_set():
                            raise _Cancelled()
                        put(memoryview(data))
                finally:
                    os.close(fd)
        except OSError:
            return False  # unreadable, shorter, or a link where a file should be: not a source after all
        return not sink.problem()  # bytes that fail the hash are overwritten by the download that follows

    # The calling thread ------------------------------------------------------

    def run(self) -> None:
        """Put every chunk into the files with the workers, and close them.
        No write starts after this returns."""
        self.emit(PullProgress("chunks", self.chunk_count, 0, self.total_size, 0, 0))
        threads = [
            threading.Thread(target=self._worker, name=f"xprim-models-{n}", daemon=True)
            for n in range(min(self.concurrency, len(self.tasks)))
        ]
        for thread in threads:
            thread.start()
        try:
            last_emit = time.monotonic()
            while True:
                with self.lock:
                    if self.error is not None:
                        raise self.error
                    if self.tasks_done == len(self.tasks):
                        snapshot = self.snapshot(done=True)  # every chunk and byte: the last chunks event
                        break
                    # Emit on change, and at least once a second so speeds and ETAs stay live.
                    if not self.dirty and time.monotonic() - last_emit < 1.0:
                        self.changed.wait(_PROGRESS_INTERVAL)
                        continue
                    snapshot = self.snapshot()
                    self.dirty = False
                last_emit = time.monotonic()
                self.emit(snapshot)
                with self.lock:  # pace the callbacks: at most one per interval
                    if self.error is None and self.tasks_done < len(self.tasks):
                        self.changed.wait(_PROGRESS_INTERVAL)
            self.emit(snapshot)
        except BaseException:
            self._stop_writing()
            try:
                self.writer.close()
            except StorageError:
                pass  # the pull has failed already; that error is the one to report
            raise
        self._stop_writing()
        self.writer.close()  # NFS may report a failed write only now

    def _stop_writing(self) -> None:
        """Let no write start, and wait for those under way (in steps: Ctrl-C on Windows)."""
        with self.lock:
            self.cancel.set()
            self.changed.notify_all()
            while self.writing:
                self.changed.wait(0.1)


class _ChunkFiles:
    """Files laid out as a manifest's byte stream, written by chunk from any thread.

    ``paths`` maps the index of each file written to its path: all of a pull's
    staging files, or the scratch copies a repair writes. ``positions`` maps the
    job's chunk numbers to positions in the manifest (a repair fetches only some).
    """

    def __init__(self, manifest: _Manifest, paths: Mapping[int, str] | Sequence[str],
                 positions: Sequence[int] | None = None) -> None:
        self.manifest, self.paths = manifest, paths
        self.positions = positions
        self.present: set[str] = set()  # chunks the files already hold at all their places
        self.shared: set[int] = set()  # files that share an installed file's storage: never written
        # Each writing thread keeps its last few files open ({file index: descriptor}), so a
        # chunk costs one write, not an open, a check and a close too. close() ends them all.
        self.local = threading.local()
        self.open_sets: list[dict[int, int]] = []
        self.lock = threading.Lock()

    def _descriptor(self, index: int) -> int:
        """This thread's descriptor for writing file ``index``."""
        descriptors: dict[int, int] | None = getattr(self.local, "descriptors", None)
        if descriptors is None:
            descriptors = self.local.descriptors = {}
            with self.lock:
                self.open_sets.append(descriptors)
        fd = descriptors.get(index)
        if fd is None:
            if len(descriptors) >= _OPEN_FILES_PER_THREAD:  # a chunk spanning many small files
                oldest = next(iter(descriptors))
                self._close(oldest, descriptors.pop(oldest))
            fd = descriptors[index] = _open_regular(self.paths[index], os.O_WRONLY)
        return fd

    def _close(self, index: int, fd: int) -> None:
        try:
            os.close(fd)  # NFS reports a failed write here
        except OSError as exc:
            raise _storage_error("write", self.paths[index], exc) from exc

    def close(self) -> None:
        """Close the files every thread kept open; call it when no write is under way."""
        with self.lock:
            problem: StorageError | None = None
            for descriptors in self.open_sets:
                for index, fd in descriptors.items():
                    try:
                        self._close(index, fd)
                    except StorageError as exc:
                        problem = problem or exc
                descriptors.clear()
        if problem is not None:
            raise problem

    def _start(self, number: int) -> tuple[int, int]:
        """Where chunk ``number`` begins in the byte stream, and its length."""
        position = self.positions[number] if self.positions is not None else number
        return position * self.manifest.chunk_size, self.manifest.chunk_length(position)

    def file_of(self, number: int) -> str:
        """The first file chunk ``number`` fills, for progress (empty files hold no chunk)."""
        start, length = self._start(number)
        return next((self.manifest.files[index].path for index, _, _ in _segments(self.manifest, start, length)), "")

    def place(self, number: int, data: memoryview, start: int) -> None:
        """Write ``data``, the bytes of chunk ``number`` from its offset ``start`` on."""
        manifest = self.manifest
        first = self._start(number)[0] + start  # where data begins in the stream
        for index, offset, length in _segments(manifest, first, len(data)):
            path = self.paths[index]
            begin = manifest.starts[index] + offset - first
            if index in self.shared and self._holds(index, data[begin : begin + length], offset):
                continue  # a file shared with an installed version, which holds these bytes
            try:
                _pwrite_all(self._descriptor(index), data[begin : begin + length], offset)
            except OSError as exc:
                raise _storage_error("write", path, exc) from exc

    def _holds(self, index: int, data: memoryview, offset: int) -> bool:
        """Whether shared file ``index`` holds ``data`` at ``offset``: the chunks covering it hashed right."""
        return True

    def copy(self, source: int, number: int) -> None:
        """Copy chunk ``source``, verified in its place, to the place of chunk ``number`` (the same chunk)."""
        start, length = self._start(source)
        for index, offset, count in _segments(self.manifest, start, length):
            path = self.paths[index]
            done = self.manifest.starts[index] + offset - start  # offset in the chunk
            try:
                fd = _open_regular(path)
            except OSError as exc:
                raise _storage_error("read", path, exc) from exc
            try:
                for data in _read_pieces(fd, offset, count, _BUFFER_SIZE):
                    self.place(number, memoryview(data), done)
                    done += len(data)
            except OSError as exc:
                raise _storage_error("read", path, exc) from exc
            finally:
                _close_quietly(fd)  # read only: what close() reports cannot concern these bytes


class _Staging(_ChunkFiles):
    """A pull's staging directory: the files of a manifest, written in place from chunks in
    any order, and what it knows of them before the job starts.

    ``plan()`` answers, once, from reads alone: whether an interrupted pull of the same
    manifest left these files (``resume``: its bytes are hashed where they are), which
    files are byte-identical to an installed file and share its storage (``shared``,
    proven by hashing the installed chunks that cover them), where this disk holds each
    chunk (``sources``: the bytes in place, installed versions by hash, installed files of
    the same paths) and how many bytes must be written (``needed``). ``create()`` then
    makes the files; the job asks ``sources``, ``present`` and ``shared``.
    """

    def __init__(self, manifest: _Manifest, root: str, label: str, metadata_dir: str) -> None:
        super().__init__(manifest, [os.path.join(root, *info.path.split("/")) for info in manifest.files])
        self.root, self.label = root, label
        self.manifest_file = os.path.join(root, metadata_dir, "manifest.json")
        self.directories: set[str] = set()
        self.resume = False
        self.links: dict[int, str] = {}  # file index: the installed file it shares storage with
        self.identities: dict[int, tuple[int, ...]] = {}  # file index: its installed file as it was hashed
        self.unproven: set[int] = set()  # shared files whose first or last bytes are still to compare
        self.verified: dict[int, Collection[int]] = {}  # shared file: chunk positions whose bytes in it hashed right
        self.sharing = threading.Lock()
        self.installed: InstalledModel  # once committed
        self.sources: dict[str, list[_Source]] = {}
        self.needed = manifest.total_size
        self.kin: Sequence[_Copy] = ()

    def path(self, index: int) -> str:
        return self.paths[index]

    def chunks(self) -> list[tuple[str, int]]:
        return [(digest, self.manifest.chunk_length(p)) for p, digest in enumerate(self.manifest.chunks)]

    # What is on this disk already ----------------------------------------------

    def plan(self, copies: Sequence[_Copy], kin: Sequence[_Copy], *, share: bool) -> None:
        """Find what this disk holds of the manifest: ``copies`` are the installed versions,
        ``kin`` those of the same model (one per manifest); with ``share``, files identical
        to one of theirs are to be linked."""
        manifest = self.manifest
        self.resume = self._left_by_a_pull()
        self.kin = kin if share else ()
        self.unproven, self.verified = set(), {}
        self.links = self._identical_files(kin) if share else {}
        self.shared = set(self.links)
        self.present = self._in_place(set() if self.resume else self._repeated_zero_chunks())
        first: dict[str, int] = {}
        for position, digest in enumerate(manifest.chunks):
            first.setdefault(digest, position)
        # Present chunks get sources too: a file whose link fails is written from them.
        self.sources = _local_sources(manifest, first.values(), copies, kin)
        self.needed = self._to_download()
        if self.resume:  # its bytes are hashed where they are, first of all
            in_place: dict[str, list[_Source]] = {}
            for position, digest in enumerate(manifest.chunks):
                in_place.setdefault(digest, []).append(_Source(self.root, manifest, position, place=position))
            self.sources = {digest: found + self.sources.get(digest, []) for digest, found in in_place.items()}

    def _to_download(self) -> int:
        """The bytes the chunks to download take in the files that are written (a resumed
        pull's files take some of them already)."""
        manifest = self.manifest
        needed = 0
        for position, digest in enumerate(manifest.chunks):
            if digest in self.present or digest in self.sources:
                continue
            length = manifest.chunk_length(position)
            needed += sum(count for index, _, count in _segments(manifest, position * manifest.chunk_size, length)
                          if index not in self.shared) if self.shared else length
        if self.resume:
            needed -= sum(_tree_size(self.path(index))
                          for index in range(len(manifest.files)) if index not in self.shared)
        return max(0, needed)

    def _left_by_a_pull(self) -> bool:
        """Whether the staging directory is a plain one that an interrupted pull of this manifest left."""
        try:
            _no_links(os.path.dirname(self.root), self.manifest_file)
            held = _read_small(self.manifest_file, _MAX_MANIFEST_BYTES)
        except (OSError, StorageError):
            return False
        return _sha256(held).hexdigest() == self.manifest.digest

    def _identical_files(self, kin: Sequence[_Copy]) -> dict[int, str]:
        """The files that are byte-identical to an installed file of the same path and size,
        as hashing the installed file (read, never written) shows: covered by the same chunks
        at the same offsets, which hash right in the installed version; or else (shifted
        against the chunks) every chunk lying inside the file hashes right there, and the
        bytes the first and last chunks hold of it are compared as they arrive (``unproven``)."""
        manifest = self.manifest
        links: dict[int, str] = {}
        self.identities = {}
        checked: dict[tuple[str, int], bool] = {}  # (installed directory, position): hashed right
        for index, info in enumerate(manifest.files):
            for copy in kin:
                known = copy.sizes.get(info.path)
                if not info.size or not known or known[1] != info.size:
                    continue
                identity = _linkable(copy, info)  # taken before hashing: a later change shows in it
                if identity is None:
                    continue
                self.identities[index] = identity
                ours = _covering(manifest, index)
                theirs = _covering(copy.manifest, known[0])
                if copy.manifest.chunk_size == manifest.chunk_size and ours[0] == theirs[0] and [
                        manifest.chunks[p] for p in ours[1]] == [copy.manifest.chunks[p] for p in theirs[1]] and all(
                        _intact(copy, p, checked) for p in theirs[1]):
                    links[index], self.verified[index] = copy.path(info.path), ours[1]
                    break
                inside = self._inside(index)
                if inside and all(_hash_pieces([(copy.path(info.path), p * manifest.chunk_size - manifest.starts[index],
                                                 manifest.chunk_length(p))]) == manifest.chunks[p] for p in inside):
                    links[index], self.verified[index] = copy.path(info.path), inside
                    self.unproven.add(index)
                    break
        return links

    def _inside(self, index: int) -> list[int]:
        """The positions of the chunks lying wholly inside file ``index``."""
        manifest = self.manifest
        start, end = manifest.starts[index], manifest.starts[index] + manifest.files[index].size
        return [p for p in _covering(manifest, index)[1]
                if p * manifest.chunk_size >= start and p * manifest.chunk_size + manifest.chunk_length(p) <= end]

    def _holds(self, index: int, data: memoryview, offset: int) -> bool:
        """Whether shared file ``index`` holds ``data`` at ``offset``. An unproven one is
        compared; where it differs, it gets a copy of its own to be written (never the
        installed file)."""
        if index not in self.unproven:
            return True
        with self.sharing:
            if index not in self.shared:
                return False  # it has its own copy now
            try:
                fd = _open_regular(self.path(index))
                try:
                    same = _pread(fd, len(data), offset) == data
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _storage_error("read", self.path(index), exc) from exc
            if not same:
                self._own_copy(index)
            return same

    def _own_copy(self, index: int) -> None:
        """Replace shared file ``index`` by a copy of its bytes that only this pull holds."""
        path = self.path(index)
        temporary = os.path.join(os.path.dirname(self.manifest_file), f"own-{index}.tmp")
        try:
            source = _open_regular(path)
            try:
                target = _create_new(temporary)
                try:
                    _copy_range(source, 0, self.manifest.files[index].size, target, 0)
                finally:
                    os.close(target)
            finally:
                os.close(source)
            os.replace(temporary, path)
        except OSError as exc:
            _remove_file(temporary)
            raise _storage_error("copy", path, exc) from exc
        self.shared.discard(index)
        self.unproven.discard(index)

    def _in_place(self, zeros: set[str]) -> set[str]:
        """The chunks the files will hold without a write: ``zeros`` (fresh files are sparse)
        and the chunks whose bytes hashed right in the shared files they lie in; but no chunk
        with a place in a shared file where its bytes there did not hash right."""
        if not self.shared:
            return zeros
        manifest = self.manifest
        held: dict[str, bool] = {}
        for position, digest in enumerate(manifest.chunks):
            files = [index for index, _, _ in _segments(manifest, position * manifest.chunk_size,
                                                          manifest.chunk_length(position))]
            doubtful = any(index in self.shared and position not in self.verified[index] for index in files)
            here = not doubtful and (digest in zeros or all(index in self.shared for index in files))
            held[digest] = held.get(digest, True) and here
        return {digest for digest, here in held.items() if here}

    def _repeated_zero_chunks(self) -> set[str]:
        """The chunks listed more than once that are all zeros (sparse data: padding, empty
        tensors), found by hash alone; fresh files are sparse, so they need no writing."""
        repeated = self.manifest.repeated()
        zeros = {size: _zeros_digest(size) for size in set(repeated.values())}  # hashed once per size
        return {digest for digest, size in repeated.items() if digest == zeros[size]}

    # The files -------------------------------------------------------------------

    def create(self) -> None:
        """The staging directory with every file at its final size (sparse until written), so
        chunks can land anywhere, and the shared files linked in.

        A resumed directory keeps the files it has (a link or a directory in a file's
        place is not followed, but replaced); otherwise it starts empty, with the
        manifest written first: it names what the directory holds, should a pull resume it.
        """
        metadata = os.path.dirname(self.manifest_file)
        if not self.resume:
            try:
                _remove_tree(self.root)
                os.makedirs(metadata)
            except OSError as exc:
                raise _storage_error("create", self.root, exc) from exc
            _atomic_write(self.manifest_file, self.manifest.raw)
        for name in _list_directory(metadata):
            if name.startswith(("link-", "own-")) and name.endswith(".tmp"):  # what a killed pull was making
                _remove_tree(os.path.join(metadata, name))
        for index, info in enumerate(self.manifest.files):
            path = self.path(index)
            try:
                self._parents(info.path)
                if index in self.links and not self._link(index):
                    self.shared.discard(index)
                    self.unproven.discard(index)
                    self.present -= self._covered_chunks(index)
                if index not in self.shared:
                    self._create_file(path, info.size)
            except OSError as exc:
                raise _storage_error("create", path, exc) from exc

    def _parents(self, relative: str) -> None:
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            directory = os.path.join(self.root, *parts[:depth])
            if directory not in self.directories:
                if self.resume and os.path.lexists(directory) and (
                    _is_link(directory) or not os.path.isdir(directory)
                ):
                    _remove_tree(directory)  # a link or a file where a directory belongs
                os.makedirs(directory, exist_ok=True)
                self.directories.add(directory)

    def _link(self, index: int) -> bool:
        """Make file ``index`` a hard link to its identical installed file; False where the
        file system cannot (FAT, another device, no permission), or where the installed file
        is no longer the one hashed (replaced, written or grown since): it is then written."""
        path = self.path(index)
        _remove_tree(path)
        try:
            _hard_link(self.links[index], path)
        except OSError:
            return False
        if _identity(os.lstat(path)) == self.identities.get(index):
            return True
        os.unlink(path)  # a link planted in the installed version since it was hashed, or other bytes
        return False

    def _covered_chunks(self, index: int) -> set[str]:
        return {self.manifest.chunks[position] for position in _covering(self.manifest, index)[1]}

    def _create_file(self, path: str, size: int) -> None:
        fd = -1
        if self.resume:  # only a plain file with no other link is kept: nothing is written through
            try:
                fd = _open_regular(path, os.O_WRONLY)
            except FileNotFoundError:
                pass
            except OSError:
                _remove_tree(path)  # a link, pipe, device, directory or hard link
        kept = fd >= 0
        if not kept:
            fd = _create_new(path)
        try:
            if not kept or os.fstat(fd).st_size != size:  # a kept file may have grown
                os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def flush(self) -> Iterator[str]:
        """Flush every file and directory to stable storage (the "extracting" phase), naming
        each file's path as it goes. A written file found byte-identical to an installed
        file of the same path is replaced by a link to it first."""
        files = self.manifest.files
        written = 0
        for index in range(len(files)):
            try:
                written += os.lstat(self.path(index)).st_size
            except OSError as exc:
                raise _storage_error("check", self.path(index), exc) from exc
        if written != self.manifest.total_size:  # every byte of the stream landed, and no more
            raise StorageError(
                f"{self.label}: the staged files hold {written} bytes, not the manifest's "
                f"{self.manifest.total_size}; did something else write into {self.root}?"
            )
        for index in range(len(files)):
            if index not in self.shared:
                self._share_if_identical(index)
        if len(files) > _FSYNC_EACH_UP_TO and hasattr(os, "sync"):
            # One flush of everything beats a hundred thousand fsyncs of tiny files.
            yield files[-1].path
            os.sync()
            return
        for index, info in enumerate(files):
            yield info.path
            if index in self.shared:
                continue  # an installed file: on stable storage already
            path = self.path(index)
            try:
                fd = os.open(path, os.O_WRONLY | _O_BINARY | _O_NOFOLLOW)  # Windows flushes writable handles only
            except OSError as exc:
                raise _storage_error("write", path, exc) from exc
            _close_file(fd, path)
        for directory in sorted(self.directories, key=len, reverse=True):
            _fsync_directory(directory)

    def _share_if_identical(self, index: int) -> None:
        """Replace written file ``index`` by a link to an installed file of the same path and
        bytes (their chunks did not line up, so only comparing them can tell)."""
        info = self.manifest.files[index]
        for copy in self.kin:
            known = copy.sizes.get(info.path)
            if not info.size or not known or known[1] != info.size:
                continue
            identity = _linkable(copy, info)
            if identity is None or not _same_bytes(self.path(index), copy.path(info.path), 0, info.size):
                continue
            temporary = os.path.join(os.path.dirname(self.manifest_file), f"link-{index}.tmp")
            try:
                _remove_tree(temporary)
                _hard_link(copy.path(info.path), temporary)
                # The bytes are compared again through the link: they are what gets installed.
                if _identity(os.lstat(temporary)) != identity or not _same_bytes(
                        self.path(index), temporary, 0, info.size):
                    raise OSError(errno.EINVAL, "not the file compared", copy.path(info.path))
                os.replace(temporary, self.path(index))
            except (OSError, StorageError):
                _remove_file(temporary)
                return  # the written copy stays
            self.shared.add(index)
            return


def _identity(status: os.stat_result) -> tuple[int, ...] | None:
    """What tells a plain file from another, or from itself rewritten: its device, inode,
    size and modification time (None for anything but a plain file)."""
    if not stat.S_ISREG(status.st_mode):
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _linkable(copy: _Copy, info: FileInfo) -> tuple[int, ...] | None:
    """The identity of ``copy``'s file ``info.path`` if a version may share it: a plain file of
    the manifest's size (not grown), in plain directories from the version directory down (a
    link or junction there leads out of the data directory); else None."""
    parts = info.path.split("/")
    if not all(_real_directory(os.path.join(copy.directory, *parts[:depth])) for depth in range(len(parts))):
        return None
    try:
        identity = _identity(os.lstat(copy.path(info.path)))
    except OSError:
        return None
    return identity if identity is not None and identity[2] == info.size else None


def _hard_link(source: str, target: str) -> None:
    """Make ``target`` a hard link to ``source`` itself: a symbolic link there is not followed
    (the caller checks that ``target`` is a plain file)."""
    if os.link in os.supports_follow_symlinks:
        os.link(source, target, follow_symlinks=False)
    else:
        os.link(source, target)


def _covering(manifest: _Manifest, index: int) -> tuple[int, range]:
    """Where file ``index`` begins in its first chunk, and the positions of the chunks covering it."""
    start, size = manifest.starts[index], manifest.files[index].size
    if not size or not manifest.chunk_size:
        return 0, range(0)
    first, last = start // manifest.chunk_size, (start + size - 1) // manifest.chunk_size
    return start % manifest.chunk_size, range(first, last + 1)


def _intact(copy: _Copy, position: int, checked: dict[tuple[str, int], bool]) -> bool:
    """Whether chunk ``position`` of an installed version hashes right in its files (remembered in ``checked``)."""
    key = (copy.directory, position)
    if key not in checked:
        pieces = _chunk_pieces(copy.directory, copy.manifest, position)
        checked[key] = _hash_pieces(pieces) == copy.manifest.chunks[position]
    return checked[key]


def _hash_pieces(pieces: Sequence[tuple[str, int, int]]) -> str:
    """The SHA-256 of the (path, offset, count) pieces of plain files, or "" if one cannot be read."""
    hasher = _sha256()
    try:
        for path, offset, count in pieces:
            fd = _open_regular(path)
            try:
                for data in _read_pieces(fd, offset, count, _BUFFER_SIZE):
                    hasher.update(data)
            finally:
                os.close(fd)
    except OSError:
        return ""
    return hasher.hexdigest()


def _close_file(fd: int, path: str) -> None:
    """Flush a finished file to stable storage and close it (NFS reports write errors on close)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        _close_quietly(fd)
        raise _storage_error("write", path, exc) from exc
    try:
        os.close(fd)
    except OSError as exc:
        raise _storage_error("write", path, exc) from exc


# --- Local store ------------------------------------------------------------------
# The data directory of one application: its layout, locks, registry.json, the
# manifests kept there, and the install transaction with its undo beside it.


def _format_time(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"  # %Y drops leading zeros on some platforms


# RFC 3339 section 5.6, as registry.json's installed_at holds it: ours in UTC with a Z, the
# Go original's as Go's time.Time marshals it, with up to nine fraction digits and the local
# offset (2026-11-28T23:30:36.123456789+01:00). datetime.fromisoformat reads neither before 3.11.
_RFC3339_RE = (
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# What InstalledModel.installed_at holds when registry.json's value cannot be read: the Unix
# epoch, a time no install of ours has, which the CLI shows as "unknown" (see the README).
_UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _parse_time(text: str) -> datetime:
    """An RFC 3339 date and time, in UTC (digits past microseconds dropped); ValueError if it is none."""
    match = re.fullmatch(_RFC3339_RE, text)
    if not match:
        raise ValueError(f"{text!r} is not an RFC 3339 date and time")
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10)
    leap = int(second == 60)  # RFC 3339 allows a leap second, datetime does not: the next second
    try:
        moment = datetime(year, month, day, hour, minute, second - leap, int((fraction or "")[:6].ljust(6, "0")),
                          tzinfo=timezone.utc) + timedelta(seconds=leap)
        if sign:
            if int(offset_hours) > 23 or int(offset_minutes) > 59:
                raise ValueError(f"offset {sign}{offset_hours}:{offset_minutes} is out of range")
            offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
            moment -= offset if sign == "+" else -offset
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not a valid RFC 3339 date and time: {exc}") from exc
    return moment


# Checks a pull makes before it creates its staging directory.


def _check_case(ref: ModelRef, installed_models: Sequence[InstalledModel]) -> None:
    """Refuse ``ref`` when an installed version differs from it only in letter case."""
    for item in installed_models:
        if str(item.ref).casefold() == str(ref).casefold() and item.ref != ref:
            raise InvalidRefError(
                f"pull {ref}: differs only in letter case from the installed {item.ref}, and "
                f"case-insensitive file systems would store both in one directory; remove {item.ref} first"
            )


def _check_space(root: str, ref: ModelRef, needed: int) -> None:
    """Fail before the first request when the disk of ``root`` cannot hold the ``needed`` bytes
    a pull writes (chunks stream straight into the staging files: nothing else is written)."""
    import shutil

    try:
        os.makedirs(root, exist_ok=True)
        free = shutil.disk_usage(root).free
    except OSError as exc:
        raise _storage_error("use", root, exc) from exc
    if needed > free:
        raise StorageError(
            f"pull {ref}: needs {_format_size(needed)} of disk space in {root}"
            f" but only {_format_size(free)} is free; "
            "free some space or choose another data directory"
        )


_LEFTOVER_RE = r"\.(.+)\.(staging|old)"


class _InstallRecords:
    """registry.json: which versions are installed, from which manifest and registry.

    It is the only record that tells an installed version from a leftover: what it
    cannot read, nothing deletes. Written whole and atomically, under the registry lock.
    """

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.path = os.path.join(store.root, _REGISTRY_FILE)

    def read(self) -> dict[str, Any]:
        """registry.json as {group: {model: {version: entry}}} ({} when there is none)."""
        path = self.path
        try:
            raw = _read_small(path, _MAX_REGISTRY_BYTES)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _storage_error("read", path, exc) from exc
        hint = self._fix_hint()
        if len(raw) > _MAX_REGISTRY_BYTES:
            raise StorageError(f"{path} is over {_format_size(_MAX_REGISTRY_BYTES)}{hint}")
        try:
            doc = _parse_json(raw, path, StorageError)
        except StorageError as exc:
            raise StorageError(f"{exc}{hint}") from exc.__cause__
        shape_ok = isinstance(doc, dict) and all(
            isinstance(models, dict)
            and all(
                isinstance(versions, dict) and all(isinstance(entry, dict) for entry in versions.values())
                for versions in models.values()
            )
            for models in doc.values()
        )
        if not shape_ok:
            raise StorageError(f"{path} is corrupt: not an object of group/model/version entries{hint}")
        return doc  # type: ignore[no-any-return]

    def _fix_hint(self) -> str:
        return f"; fix or delete {self.path} (model files are not affected)"

    def listing(self) -> dict[str, Any]:
        """registry.json with every name in it checked. Only it tells an installed version
        from a leftover, so what deletes leftovers (prune, remove, reclaim) reads it here and
        deletes nothing while it cannot be read."""
        try:
            doc = self.read()
            self.refs(doc)
        except StorageError as exc:
            problem = str(exc).removesuffix(self._fix_hint())
            raise StorageError(
                f"{problem}; nothing was deleted, as only registry.json tells an installed version from a "
                f"leftover: fix it, or move it away and pull each installed version again "
                "(the pull reuses its files) before you remove or prune"
            ) from exc
        return doc

    @staticmethod
    def entry(doc: Mapping[str, Any], ref: ModelRef) -> dict[str, Any] | None:
        return doc.get(ref.group, {}).get(ref.model, {}).get(ref.version)  # type: ignore[no-any-return]

    def find(self, ref: ModelRef) -> dict[str, Any] | None:
        """The entry of ``ref`` in registry.json as it is now (None if it lists no such version)."""
        return self.entry(self.read(), ref)

    def refs(self, doc: Mapping[str, Any]) -> list[ModelRef]:
        refs = []
        for group, models in doc.items():
            for model, versions in models.items():
                for version in versions:
                    try:
                        refs.append(ModelRef(group, model, version))
                        self.store.version_dir(refs[-1])  # a reserved group cannot be installed
                    except InvalidRefError as exc:
                        raise StorageError(f"{self.path} is corrupt: {exc}{self._fix_hint()}") from exc
        return refs

    def installed(self, ref: ModelRef, entry: Mapping[str, Any]) -> InstalledModel:
        """The InstalledModel a registry.json entry describes."""
        try:
            digest, total, count = entry["manifest_hash"], entry["total_size"], entry["file_count"]
            if not (isinstance(digest, str) and re.fullmatch(_HASH_RE, digest)):
                raise ValueError(f"manifest_hash {digest!r}")
            if not (_is_size(total, _MAX_TOTAL_SIZE) and _is_size(count, _MAX_FILES)):
                raise ValueError(f"total_size {total!r} or file_count {count!r}")
            return InstalledModel(
                ref=ref, manifest_hash=digest, total_size=total, file_count=count,
                installed_at=self._installed_at(ref, entry.get("installed_at")), path=self.store.version_dir(ref),
                alias_of=str(entry.get("alias_of", "")), registry_url=str(entry.get("registry_url", "")),
                pinned=entry.get("pinned") is True,
            )
        except (KeyError, TypeError, ValueError, OverflowError, InvalidRefError) as exc:
            raise StorageError(
                f"{self.path} is corrupt: the entry for {ref} is malformed ({exc!r}); "
                f"fix or delete {self.path} (model files are not affected)"
            ) from exc

    def _installed_at(self, ref: ModelRef, value: Any) -> datetime:
        """An entry's install time. One that is no RFC 3339 time makes only this entry's
        time unknown (_UNKNOWN_TIME), not the whole registry.json unreadable."""
        try:
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not an RFC 3339 date and time")
            return _parse_time(value)
        except ValueError as exc:
            self.store.logger.warning("%s: the install time of %s is unknown: %s", self.path, ref, exc)
            return _UNKNOWN_TIME

    def commit(self, ref: ModelRef, record: Mapping[str, Any] | None) -> None:
        """Make ``record`` the registry.json entry of ``ref``; None removes it."""
        import json

        with self.store.registry_lock():
            _remove_abandoned(self.store.root)  # temporary registry.json files of dead writers
            doc = self.read()
            versions = doc.setdefault(ref.group, {}).setdefault(ref.model, {})
            if record is not None:
                versions[ref.version] = dict(record)
            else:
                versions.pop(ref.version, None)
                if not versions:
                    del doc[ref.group][ref.model]
                if not doc[ref.group]:
                    del doc[ref.group]
            _atomic_write(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def amend(self, ref: ModelRef, manifest_hash: str, changes: Mapping[str, Any]) -> bool:
        """Add ``changes`` to the entry of ``ref`` if it is still installed as ``manifest_hash``
        (the model lock held); whether it was."""
        entry = self.find(ref)
        if not isinstance(entry, dict) or entry.get("manifest_hash") != manifest_hash:
            return False
        self.commit(ref, {**entry, **changes})
        return True

    def committed_hash(self, ref: ModelRef) -> str:
        entry = self.entry(self.listing(), ref)
        value = entry.get("manifest_hash") if entry is not None else None
        return value if isinstance(value, str) else ""


class _Store:
    """What one application keeps under its data directory.

    ``<group>/<model>/<version>/`` holds an installed version, with the manifest
    it was built from in ``.<app>/manifest.json``; ``.<version>.staging`` beside
    it is a pull being built, ``.<version>.old`` a copy on its way out.
    ``registry.json`` lists the installed versions. Locks are taken in this
    order: a model's lock, the cache lock, the registry lock.
    """

    def __init__(self, root: str, app_name: str, logger: Any) -> None:
        self.root = root
        self.metadata_dir = f".{app_name}"
        self.manifests_dir = os.path.join(root, *_MANIFESTS_DIR)
        self.logger = logger
        self.records = _InstallRecords(self)
        self.registry_path = self.records.path

    # Layout ------------------------------------------------------------------

    def version_dir(self, ref: ModelRef) -> str:
        if ref.group.lower() in _RESERVED_GROUPS:
            raise InvalidRefError(f"{ref}: the group name {ref.group!r} is reserved by the storage layout")
        return os.path.join(self.root, ref.group, ref.model, ref.version)

    def sibling(self, ref: ModelRef, suffix: str) -> str:
        """A hidden path beside the version directory (staging, old copy)."""
        return os.path.join(self.root, ref.group, ref.model, f".{ref.version}.{suffix}")

    def private(self, path: str) -> str:
        """``path`` below the data directory, with no symbolic link on the way: the cache,
        locks and version directories are never followed outside it."""
        return _no_links(self.root, path, "xprim-models keeps its models, cache and locks as plain "
                                          f"directories inside {self.root} and does not follow links there")

    def manifest_path(self, directory: str) -> str:
        return os.path.join(directory, self.metadata_dir, "manifest.json")

    # Locks -------------------------------------------------------------------

    def registry_lock(self) -> _FileLock:
        return _FileLock(self.private(os.path.join(self.root, _LOCKS_DIR, "registry.lock")))

    def cache_lock(self, *, shared: bool) -> AbstractContextManager[Any]:
        """Pulls share it; prune takes it alone, so it never deletes what a pull holds."""
        if os.name == "nt":  # no shared locks; Windows refuses to delete open chunk files anyway
            from contextlib import nullcontext

            return nullcontext()

        def waiting() -> None:
            self.logger.warning("Waiting for running downloads to finish...", extra={_NOTICE_KEY: True})

        return _FileLock(self.private(os.path.join(self.root, _LOCKS_DIR, "cache.lock")), waiting, shared=shared)

    def model_lock(self, ref: ModelRef) -> _FileLock:
        def waiting() -> None:
            self.logger.warning("Waiting for another download of %s/%s to finish...", ref.group, ref.model,
                                extra={_NOTICE_KEY: True})

        return _FileLock(
            self.private(os.path.join(self.root, _LOCKS_DIR, "models", ref.group, f"{ref.model}.lock")), waiting
        )

    def list_installed(self) -> list[InstalledModel]:
        """Every installed version, sorted, once what a crash left beside them is put right."""
        records = self.records
        doc = records.read()
        refs = records.refs(doc)
        if any(self.reclaim_if_idle(ref) for ref in self.leftovers(unlisted=False)):
            doc = records.read()
        return sorted((records.installed(ref, entry) for ref in refs if (entry := records.entry(doc, ref)) is not None),
                      key=lambda item: item.ref)

    def get(self, ref: ModelRef) -> InstalledModel:
        """The installed version ``ref``, or NotInstalledError (with a did-you-mean)."""
        doc = self.records.read()
        entry = self.records.entry(doc, ref)
        if entry is None:
            installed = [(g, m, v) for g, models in doc.items() for m, versions in models.items() for v in versions]
            raise NotInstalledError(f"model not installed: {ref}{_did_you_mean(ref, installed)}")
        return self.records.installed(ref, entry)

    def intact(self, ref: ModelRef) -> InstalledModel | None:
        """``ref`` as installed, if registry.json lists it, its directory is there, and no
        crashed swap is waiting to be recovered; else None."""
        entry = self.records.find(ref)
        if entry is None or os.path.lexists(self.sibling(ref, "old")):
            return None
        installed = self.records.installed(ref, entry)
        return installed if os.path.isdir(installed.path) else None

    def raise_if_installed(self, ref: ModelRef, manifest_hash: str, *, pin: bool = False) -> None:
        """AlreadyInstalledError if ``ref`` is installed as ``manifest_hash``; with ``pin`` (the
        model lock held), it is recorded as pinned first."""
        installed = self.hold(ref, manifest_hash) if pin else self.intact(ref)
        if installed is not None and installed.manifest_hash == manifest_hash:
            raise AlreadyInstalledError(f"model already installed: {ref}", installed)

    def hold(self, ref: ModelRef, manifest_hash: str) -> InstalledModel | None:
        """``ref`` as installed, recorded as pinned if it is installed as ``manifest_hash`` (a
        pinned pull or ensure found it so; the model lock held): ``update`` leaves it then."""
        installed = self.intact(ref)
        if installed is None or installed.manifest_hash != manifest_hash or installed.pinned:
            return installed
        self.records.amend(ref, manifest_hash, {"pinned": True})
        return replace(installed, pinned=True)

    # Manifests ---------------------------------------------------------------

    def stored_hash(self, directory: str) -> str:
        """The hash of the manifest stored in ``directory``'s metadata ("" if there is none)."""
        try:
            return _sha256(_read_small(self.manifest_path(directory), _MAX_MANIFEST_BYTES)).hexdigest()
        except OSError:
            return ""

    def stored_manifest(self, installed: InstalledModel) -> _Manifest:
        """The manifest kept in an installed version's metadata directory: the bytes as
        published, or a copy the Go original re-serialized, whose ``raw`` does not hash to
        ``installed.manifest_hash`` (only the published bytes can vouch for its content)."""
        path = self.manifest_path(installed.path)
        advice = f"run verify --repair on {installed.ref} to restore it"
        try:
            return _parse_manifest(installed.manifest_hash, _read_small(path, _MAX_MANIFEST_BYTES),
                                   self.metadata_dir, source=path, copy=True)
        except OSError as exc:
            raise _storage_error("read", path, exc, advice) from exc
        except ModelsError as exc:
            raise StorageError(f"{exc}; {advice}") from exc

    def cached_manifest(self, digest: str) -> _Manifest | None:
        """A manifest from cache/manifests (checked against its hash), or None."""
        path = os.path.join(self.manifests_dir, digest)
        try:
            return _parse_manifest(digest, _read_small(path, _MAX_MANIFEST_BYTES), self.metadata_dir, source=path)
        except _NotRegular:
            _remove_file(path)  # a link, pipe or device planted there: never read or waited on
        except (OSError, ModelsError):
            pass  # absent or damaged: fetch it again
        return None

    def manifests(self, digests: Sequence[str],
                  fetch: Callable[[Sequence[str]], Mapping[str, _Manifest]]) -> dict[str, _Manifest]:
        """Manifests from the cache, and with ``fetch(missing)`` those not there (then cached)."""
        found = {digest: self.cached_manifest(digest) for digest in digests}
        for digest, manifest in fetch([digest for digest, known in found.items() if known is None]).items():
            found[digest] = manifest
            self.cache_manifest(digest, manifest.raw)
        return found  # type: ignore[return-value]

    def cache_manifest(self, digest: str, raw: bytes) -> None:
        try:
            # No fsync: a cached manifest is checked against its hash whenever it is read.
            _atomic_write(self.private(os.path.join(self.manifests_dir, digest)), raw, durable=False)
        except StorageError as exc:
            self.logger.debug("manifest cache not written: %s", exc)

    # The install transaction -------------------------------------------------
    # registry.json names the copy that stays. A pull builds the new copy in
    # .<v>.staging, renames the installed copy (if any) to .<v>.old and the new
    # one to <v>, then commits registry.json; only then does .<v>.old go. Until
    # the commit, reclaim() undoes it, the same way after a failure here or a
    # crash found by the next command: the new copy goes back to staging (a
    # later pull of it resumes there, verifying every chunk) and the old comes back.

    @contextmanager
    def installing(self, ref: ModelRef, manifest: _Manifest, installed_models: Sequence[InstalledModel], *,
                   alias_of: str, registry_url: str, share: bool, pinned: bool = False) -> Iterator[_Staging]:
        """The staging directory of ``manifest``, planned against the ``installed_models`` and
        created, for the block to fill and flush (model lock held). When the block succeeds,
        its files are swapped in and committed as ``ref`` (``staging.installed``); if the swap
        fails, it is undone. A failed block leaves the staging files for the next pull to resume."""
        with self.cache_lock(shared=True):
            self.clean()
            final = self.private(self.version_dir(ref))  # a linked version directory is refused, not replaced
            staging = _Staging(manifest, self.sibling(ref, "staging"), f"pull {ref}", self.metadata_dir)
            copies, kin = self.copies(installed_models, ref)
            staging.plan(copies, kin, share=share)
            _check_space(self.root, ref, staging.needed)
            if staging.resume:
                self.logger.info("resuming %s from %s", ref, staging.root)
            started = time.monotonic()
            staging.create()
            yield staging  # every file complete, verified and flushed, or an exception
            staging.installed = self._swap(ref, manifest, final, staging.root, alias_of, registry_url, pinned)
            self.logger.info("installed %s (%d bytes) in %.2fs", ref, manifest.total_size,
                             time.monotonic() - started)

    def _swap(self, ref: ModelRef, manifest: _Manifest, final: str, staging: str, alias_of: str,
              registry_url: str, pinned: bool) -> InstalledModel:
        """Put the complete ``staging`` in ``final``'s place and commit it; undone on failure."""
        old = self.sibling(ref, "old")
        installed = InstalledModel(
            ref=ref, manifest_hash=manifest.digest, total_size=manifest.total_size, file_count=len(manifest.files),
            installed_at=datetime.now(timezone.utc).replace(microsecond=0), path=final, alias_of=alias_of,
            registry_url=registry_url, pinned=pinned,
        )
        # The keys the Go original reads, with its types; the others it ignores.
        record = {"manifest_hash": installed.manifest_hash, "total_size": installed.total_size,
                  "file_count": installed.file_count, "installed_at": _format_time(installed.installed_at),
                  **({"alias_of": alias_of} if alias_of else {}),
                  **({"registry_url": registry_url} if registry_url else {}),
                  **({"pinned": True} if pinned else {})}
        try:
            _fsync_directory(staging)
            try:
                if os.path.lexists(final):
                    os.rename(final, old)
                os.rename(staging, final)
            except OSError as exc:
                raise _storage_error("install", final, exc) from exc
            _fsync_directory(os.path.dirname(final))
            self.records.commit(ref, record)
        except BaseException:
            self._reclaim_quietly(ref)
            raise
        self.discard(old)
        return installed

    def reclaim(self, ref: ModelRef, *, keep_staging: bool = True) -> int:
        """Finish or undo what a failed or crashed install or remove of ``ref`` left
        (model lock held); return the bytes deleted. ``keep_staging=False`` deletes the
        staging directory too."""
        final, old, staging = self.version_dir(ref), self.sibling(ref, "old"), self.sibling(ref, "staging")
        committed = self.records.committed_hash(ref)
        freed = 0
        if os.path.lexists(old):
            if committed and self.stored_hash(final) == committed:
                freed += self.discard(old)  # the swap was committed; the old copy was on its way out
            elif committed:
                if os.path.lexists(final):  # a new copy never committed
                    self._to_staging(final, staging)
                try:
                    os.rename(old, final)  # the committed copy back in its place
                except OSError as exc:
                    raise _storage_error("restore", final, exc) from exc
            else:
                freed += self.discard(old)  # a committed remove
        if not committed and os.path.isfile(self.manifest_path(final)) and not os.path.islink(final):
            self._to_staging(final, staging)  # complete but never committed: a pull of it adopts it
        if not keep_staging and os.path.lexists(staging):
            freed += self.discard(staging)
        metadata = os.path.join(final, self.metadata_dir)
        for name in [] if os.path.islink(metadata) else _list_directory(metadata):
            if name.startswith("repair-") and name.endswith(".tmp"):  # an interrupted repair
                freed += self.discard(os.path.join(metadata, name))
        return freed

    def _to_staging(self, directory: str, staging: str) -> None:
        try:
            _remove_tree(staging)
            os.rename(directory, staging)
        except OSError as exc:
            raise _storage_error("move", directory, exc) from exc

    def reclaim_if_idle(self, ref: ModelRef) -> bool:
        """Put right what a crashed swap or remove of ``ref`` left, unless its pull or remove is
        running (and will finish it itself); return whether registry.json may have changed."""
        if not os.path.lexists(self.sibling(ref, "old")):
            return False
        lock = self.model_lock(ref)
        if not lock.try_acquire():
            return False
        try:
            self.reclaim(ref)
        finally:
            lock.__exit__(None, None, None)
        return True

    def _reclaim_quietly(self, ref: ModelRef) -> None:
        try:
            self.reclaim(ref)
        except StorageError as exc:  # the next command that takes the model's lock finishes it
            self.logger.warning("could not undo the failed install of %s yet: %s", ref, exc)

    def remove(self, ref: ModelRef) -> None:
        """Delete the installed version ``ref`` (model lock held): out of sight first, then
        out of registry.json, then off the disk."""
        self.reclaim(ref, keep_staging=False)
        if self.records.find(ref) is None:
            raise NotInstalledError(f"model not installed: {ref}")
        final, old = self.version_dir(ref), self.sibling(ref, "old")
        try:
            if os.path.lexists(final):
                os.rename(final, old)
        except OSError as exc:
            raise _storage_error("remove", final, exc) from exc
        try:
            self.records.commit(ref, None)
        except BaseException:
            self._reclaim_quietly(ref)
            raise
        self.discard(old)
        for parent in (os.path.dirname(final), os.path.dirname(os.path.dirname(final))):
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty: other versions or models live there

    def discard(self, path: str) -> int:
        """Delete what is no longer installed; return the bytes freed. A failure only costs
        disk space until the next command that holds the model's lock, or prune."""
        size = _tree_size(path)
        try:
            _remove_tree(path)
        except StorageError as exc:
            self.logger.warning("%s; the next pull or prune removes it", exc)
            return 0
        return size

    # Leftovers ---------------------------------------------------------------

    def leftovers(self, *, unlisted: bool = True) -> Iterator[ModelRef]:
        """Versions with a staging directory or old copy beside them, or (with ``unlisted``)
        a version directory that registry.json does not list."""
        doc = self.records.listing() if unlisted else {}
        for group in _list_directory(self.root):
            if group.startswith(".") or group.lower() in _RESERVED_GROUPS:
                continue
            for model in _list_directory(os.path.join(self.root, group)):
                for name in _list_directory(os.path.join(self.root, group, model)):
                    match = re.fullmatch(_LEFTOVER_RE, name)
                    version = match.group(1) if match else name
                    try:
                        ref = ModelRef(group, model, version)
                    except InvalidRefError:
                        continue
                    if match or (
                        unlisted and self.records.entry(doc, ref) is None
                        and os.path.isfile(self.manifest_path(os.path.join(self.root, group, model, name)))
                    ):
                        yield ref

    def clean(self) -> None:
        """Remove what dead processes left half-written (a pull's start, cache lock shared)."""
        for directory in (self.root, self.private(self.manifests_dir)):
            _remove_abandoned(directory)

    def prune(self) -> int:
        freed = 0
        for ref in sorted(set(self.leftovers())):
            with self.model_lock(ref):
                freed += self.reclaim(ref, keep_staging=False)
        for directory in (self.root, self.private(self.manifests_dir)):
            _remove_abandoned(directory)
        with self.cache_lock(shared=False):  # no pull is between creating a directory and filling it
            self.remove_empty()
        return freed

    def remove_empty(self) -> None:
        """Delete the model and group directories that hold nothing (prune, with no pull
        running): plain directories with model and group names, never a link or its target."""
        for group in _list_directory(self.root):
            group_dir = os.path.join(self.root, group)
            if group.lower() in _RESERVED_GROUPS or _name_problem("group", group) or not _real_directory(group_dir):
                continue
            for model in _list_directory(group_dir):
                if _name_problem("model", model) or not _real_directory(os.path.join(group_dir, model)):
                    continue
                lock = self.model_lock(ModelRef(group, model))
                if lock.try_acquire():  # else a pull, remove or verify of it is under way
                    try:
                        _remove_if_empty(os.path.join(group_dir, model))
                    finally:
                        lock.__exit__(None, None, None)
            _remove_if_empty(group_dir)

    def copies(self, installed_models: Sequence[InstalledModel], ref: ModelRef, *,
               besides: bool = False) -> tuple[list[_Copy], list[_Copy]]:
        """The installed versions whose stored manifest can be read, as places to find chunks
        (``besides``: other than ``ref``), and of those, one per manifest of ``ref``'s model."""
        copies: list[_Copy] = []
        kin: dict[str, _Copy] = {}
        for installed in installed_models:
            if besides and installed.ref == ref:
                continue
            try:
                copy = _Copy(installed.path, self.stored_manifest(installed))
            except StorageError:
                continue  # damaged or half-removed: nothing to take from it
            copies.append(copy)
            if (installed.ref.group, installed.ref.model) == (ref.group, ref.model):
                kin.setdefault(copy.manifest.digest, copy)
        return copies, list(kin.values())


# Verify and repair ----------------------------------------------------------------
# verify re-hashes an installed version's files against the manifest it was built
# from. repair writes the damaged chunks into scratch copies of the files they
# touch, completes those that differ from the files with the files' intact ranges,
# and puts them in place by rename: a file another version shares is never written
# through.


class _Verification:
    """One verify of ``ref``: the model lock, the manifest the files are checked against,
    what the scan found, and what a repair rewrote.

    Entered, it holds the model lock (when checking only, it goes on without one in a
    read-only data directory) and the installed version (``installed``, ``manifest``).
    """

    installed: InstalledModel
    manifest: _Manifest | None  # None: the stored copy is damaged or missing

    def __init__(self, store: _Store, ref: ModelRef, *, repair: bool) -> None:
        self.store, self.ref, self.repair = store, ref, repair
        self.lock: _FileLock | None = None
        self.held = False
        self.manifest_name = f"{store.metadata_dir}/manifest.json"
        self.damaged_manifest = False
        self.bad_positions: set[int] = set()
        self.damaged: set[str] = set()
        self.missing: set[str] = set()
        self.repaired: set[str] = set()

    def __enter__(self) -> _Verification:
        try:
            try:
                self.lock = self.store.model_lock(self.ref)
                self.lock.__enter__()
                self.held = True
                self.store.reclaim(self.ref)
            except StorageError:
                if self.repair:
                    raise
                # A read-only data directory has no room for a lock file; checking only reads.
                self.store.logger.debug("verify %s: going on without the model lock", self.ref)
            self.installed = self.store.get(self.ref)
            try:
                self.manifest = self.store.stored_manifest(self.installed)
            except StorageError:
                self.manifest, self.damaged_manifest = None, True
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.held and self.lock is not None:
            self.held = False
            self.lock.__exit__(None, None, None)

    def needs_published(self) -> bool:
        """Whether the stored manifest cannot vouch for itself: damaged, or a re-serialized copy."""
        return self.manifest is None or _sha256(self.manifest.raw).hexdigest() != self.installed.manifest_hash

    def use_published(self, published: _Manifest | ModelsError) -> None:
        """Check against ``published``, the manifest fetched by its hash, written over a
        re-serialized copy (the Go original's) when the lock is held. When it could not be
        fetched (``published`` is the error), a re-serialized copy is used, with a warning
        that nothing vouches for it; a damaged one is the error."""
        path = self.store.manifest_path(self.installed.path)
        if isinstance(published, ModelsError):
            if self.manifest is None:
                raise published
            self.store.logger.warning(
                "verify %s: the manifest itself could not be checked: %s is a re-serialized copy (written by "
                "another tool, such as the Go original), and the published manifest could not be fetched (%s); "
                "the files are checked against that copy", self.ref, path, published,
            )
            return
        if self.manifest is not None and self.held:
            try:
                _atomic_write(self.store.private(path), published.raw)
                self.store.logger.info("verify %s: %s was a re-serialized copy; it now holds the published bytes",
                                       self.ref, path)
            except StorageError as exc:
                self.store.logger.warning("verify %s: the published manifest was not written over the copy: %s",
                                          self.ref, exc)
        self.manifest = published

    def scan(self) -> bool:
        """Hash every chunk of the files; True if anything is damaged or missing."""
        assert self.manifest is not None
        self.bad_positions, self.damaged, self.missing = _scan(self.installed.path, self.manifest)
        return bool(self.damaged or self.damaged_manifest)

    def result(self) -> VerifyResult:
        """What Manager.verify returns: what the scan found, and what a repair rewrote."""
        sharing = _only_sharing(self.manifest, self.bad_positions, self.missing) if self.manifest else set()
        damaged = self.damaged - sharing | ({self.manifest_name} if self.damaged_manifest else set())
        return VerifyResult(tuple(sorted(damaged)), tuple(sorted(sharing)), tuple(sorted(self.repaired)))

    def repairing(self) -> _Repair:
        assert self.manifest is not None
        return _Repair(self, self.manifest)


class _Repair(_ChunkFiles):
    """The damaged chunks of a verification, written into scratch copies of the files they
    touch (model lock held). On success, the copies of the files that differ replace them
    by rename, and a damaged stored manifest is written again; the others go."""

    def __init__(self, check: _Verification, manifest: _Manifest) -> None:
        self.check = check
        self.root = check.store.private(check.installed.path)  # a linked version directory is refused
        self.metadata = _no_links(self.root, os.path.join(self.root, check.store.metadata_dir))
        self.bad = bad = sorted(check.bad_positions)
        touched = {
            index
            for position in bad
            for index, _, _ in _segments(manifest, position * manifest.chunk_size, manifest.chunk_length(position))
        } | {index for index, info in enumerate(manifest.files) if info.path in check.missing}
        self.scratch = {index: os.path.join(self.metadata, f"repair-{index}.tmp") for index in sorted(touched)}
        super().__init__(manifest, self.scratch, bad)

    def chunks(self) -> list[tuple[str, int]]:
        return [(self.manifest.chunks[p], self.manifest.chunk_length(p)) for p in self.bad]

    def __enter__(self) -> _Repair:
        try:
            os.makedirs(self.metadata, exist_ok=True)
            for index, path in self.scratch.items():
                fd = _create_new(path)
                try:
                    os.ftruncate(fd, self.manifest.files[index].size)
                finally:
                    os.close(fd)
        except OSError as exc:
            self.__exit__(None, None, None)
            raise _storage_error("repair", self.metadata, exc) from exc
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: Any) -> None:
        try:
            if kind is None:
                self._put_in_place()
        finally:
            for path in self.scratch.values():
                _remove_file(path)

    def _put_in_place(self) -> None:
        """Replace the files that differ from the fetched chunks, and a damaged stored manifest."""
        check, manifest, root = self.check, self.manifest, self.root
        repaired = set(check.missing)
        for position in self.bad:
            start = position * manifest.chunk_size
            for index, offset, count in _segments(manifest, start, manifest.chunk_length(position)):
                path = manifest.files[index].path
                if path not in repaired and not _same_bytes(
                        self.scratch[index], os.path.join(root, *path.split("/")), offset, count):
                    repaired.add(path)
        for index, scratch in self.scratch.items():
            if manifest.files[index].path in repaired:
                _replace_from_scratch(root, manifest, index, check.bad_positions, scratch)
        if check.damaged_manifest:
            target = os.path.join(root, *check.manifest_name.split("/"))
            _atomic_write(_no_links(root, target), manifest.raw)
            repaired.add(check.manifest_name)
        check.repaired = repaired
        check.store.logger.info("repaired %s: %s", check.ref, ", ".join(sorted(repaired)) or "nothing")


def _replace_from_scratch(root: str, manifest: _Manifest, index: int, bad_positions: set[int],
                          scratch: str) -> None:
    """Complete a scratch copy with the file's intact ranges, then put it in the file's place
    by rename (another version sharing the file keeps its own)."""
    info = manifest.files[index]
    path = _no_links(root, os.path.join(root, *info.path.split("/")))
    begin, end = manifest.starts[index], manifest.starts[index] + info.size
    try:
        with open(scratch, "r+b") as target:
            old = -1
            try:
                first = begin // manifest.chunk_size if manifest.chunk_size else len(manifest.chunks)
                for position in range(first, len(manifest.chunks)):
                    start = position * manifest.chunk_size
                    if start >= end:
                        break
                    low, high = max(begin, start), min(end, start + manifest.chunk_length(position))
                    if position in bad_positions or high <= low:
                        continue  # written from the fetched chunk already, or nothing to copy
                    if old < 0:  # this range hashed right: keep the file's own bytes
                        old = _open_regular(path)
                    _copy_range(old, low - begin, high - low, target.fileno(), low - begin)
            finally:
                if old >= 0:
                    os.close(old)  # before the replace: Windows cannot replace an open file
            os.fsync(target.fileno())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.isdir(path) and not os.path.islink(path):
            _remove_tree(path)
        os.replace(scratch, path)
    except OSError as exc:
        raise _storage_error("repair", path, exc) from exc


def _only_sharing(manifest: _Manifest, bad_positions: Collection[int], missing: Collection[str]) -> set[str]:
    """The files a damaged chunk touches that may be intact: each damaged chunk spans
    several files, and none of them is known damaged (missing, of the wrong size, or
    holding a damaged chunk of its own)."""
    touched = []
    for position in bad_positions:
        start, length = position * manifest.chunk_size, manifest.chunk_length(position)
        touched.append({manifest.files[index].path for index, _, _ in _segments(manifest, start, length)})
    known = set(missing).union(*(paths for paths in touched if len(paths) == 1))
    return set().union(*(paths for paths in touched if len(paths) > 1)) - known


def _scan(root: str, manifest: _Manifest) -> tuple[set[int], set[str], set[str]]:
    """(chunk positions that fail their hash, files they touch, files missing or of the wrong size)."""
    missing = set()
    for info in manifest.files:
        try:
            status = os.lstat(os.path.join(root, *info.path.split("/")))
            intact = stat.S_ISREG(status.st_mode) and status.st_size == info.size
        except OSError:
            intact = False
        if not intact:
            missing.add(info.path)
    bad: set[int] = set()
    damaged = set(missing)
    buffer = bytearray(_BUFFER_SIZE)
    handle = (-1, -1)  # (file index, descriptor): files are read in order, one open at a time
    try:
        for position, digest in enumerate(manifest.chunks):
            pieces = list(_segments(manifest, position * manifest.chunk_size, manifest.chunk_length(position)))
            paths = [manifest.files[index].path for index, _, _ in pieces]
            hasher = _sha256()
            try:
                if missing.intersection(paths):
                    raise OSError(errno.ENOENT, "missing")
                for index, offset, count in pieces:
                    if handle[0] != index:
                        if handle[1] >= 0:
                            os.close(handle[1])
                            handle = (-1, -1)
                        handle = (index, _open_regular(os.path.join(root, *manifest.files[index].path.split("/"))))
                    for data in _read_pieces(handle[1], offset, count, len(buffer)):
                        hasher.update(data)
                intact = hasher.hexdigest() == digest
            except OSError:
                intact = False
            if not intact:
                bad.add(position)
                damaged.update(paths)
    finally:
        if handle[1] >= 0:
            _close_quietly(handle[1])
    return bad, damaged, missing


def _default_logger() -> logging.Logger:
    """The ``xprim_models`` logger, silent unless the application configures logging."""
    import logging

    logger = logging.getLogger("xprim_models")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def _check_download_options(concurrency: int, limit_rate: float | None) -> int:
    """The concurrency to use (capped at 16); ValueError for values that make no sense."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, not {concurrency!r}")
    if limit_rate is not None and not limit_rate > 0:
        raise ValueError(f"limit_rate must be a positive number of bytes per second, not {limit_rate!r}")
    return min(concurrency, _MAX_CONCURRENCY)


def _registry_key(url: str) -> str:
    """What two spellings of one registry share: an http(s) URL with its scheme and host in
    lower case, without a default port or a trailing slash; a directory's absolute path, as
    the platform compares paths. ``localhost`` and ``127.0.0.1`` stay two registries."""
    origin = _registry_origin(url)
    if not re.match(r"(?i)https?://", origin):
        return os.path.normcase(origin)
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return origin  # the client refuses it when it is used
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    host = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]  # kept: other credentials, another client
    host = f"{userinfo}@{host}" if userinfo else host
    port_text = f":{port}" if port not in (None, 443 if scheme == "https" else 80) else ""
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{port_text}{parts.path.rstrip('/')}{query}"


def _recordable(url: str) -> bool:
    """Whether ``url`` is a registry as installs record it (``_registry_origin``): an http(s)
    URL, or a local directory's absolute path (on Windows, with its drive or UNC share) or
    file:// URL."""
    if re.match(r"(?i)https?://", url):
        return True
    if re.match(r"(?i)file://", url):
        try:
            url = _RegistryClient._local_root(url) or ""
        except RegistryError:
            return False  # a file:// URL of another host
    return os.path.isabs(url) and (os.name != "nt" or bool(os.path.splitdrive(url)[0]))


def _pin_missing(ref: ModelRef, pin: str, client: _RegistryClient, exc: ModelsError) -> ModelsError:
    """The error of a pinned pull whose registry answered ``exc``: a typed one naming the pin
    when the registry does not have that manifest."""
    if isinstance(exc, RegistryError) and isinstance(exc.__cause__, _Missing):
        return VersionNotFoundError(
            f"pinned manifest not found: {ref}@{pin}: {client.origin} has no data/{pin} (never published there, "
            "or deleted since); nothing was installed or changed; pull without the pin to get what the "
            "registry lists now, or ask its publisher for that manifest"
        )
    return exc


# --- Export -----------------------------------------------------------------------
# An export is a registry directory (README: Moving models): models.json and data/<sha256>,
# each object rebuilt from the installed files, checked against its hash, then renamed
# into place. The names are FAT and exFAT safe: lowercase hex, digits and dots.

_FAT32_MAX_FILE = (1 << 32) - 1  # bytes: FAT12/16/32 hold no bigger file (exFAT does)
_FAT_KINDS = frozenset(["vfat", "msdos", "fat", "FAT", "FAT32", "FAT16", "FAT12"])
_EXPORT_LOCK = ".models.json.lock"


def _file_system(path: str) -> str:
    """The kind of file system holding ``path`` (``vfat``, ``FAT32``, ``exfat``, ``ext4``...),
    or "" where this platform does not say (macOS: a chunk over 4 GiB then fails with EFBIG)."""
    path = os.path.realpath(path)
    if sys.platform == "win32":
        import ctypes

        name = ctypes.create_unicode_buffer(64)
        root = os.path.splitdrive(path)[0] + "\\"
        if ctypes.windll.kernel32.GetVolumeInformationW(root, None, 0, None, None, None, name, len(name)):
            return name.value
        return ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            mounts = handle.read().splitlines()
    except OSError:
        return ""
    best, kind = "", ""
    for line in mounts:  # "36 35 98:0 /mnt1 /mnt/point rw ... - ext3 /dev/root rw"
        fields = line.split()
        if "-" not in fields[5:]:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[4])
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[fields.index("-", 5) + 1]
    return kind


def _export_index(path: str) -> dict[str, Any]:
    """The models.json an earlier export left in the export directory ({} if none)."""
    import json

    try:
        raw = _read_small(path, _MAX_INDEX_BYTES)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _storage_error("read", path, exc) from exc
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: containers nested too deeply to parse
        doc = exc
    if not isinstance(doc, dict):
        raise RegistryError(f"cannot export into {os.path.dirname(path)}: its models.json is not a registry "
                            "index; export into an empty directory or into an earlier export")
    return doc


def _export_entries(doc: dict[str, Any], exported: Sequence[InstalledModel], path: str) -> None:
    """Set the models.json entries of ``exported`` in ``doc``: a version as its manifest hash,
    an alias as an alias, with its target; the other entries stay."""
    for item in exported:  # where their entries go must be objects: merging never drops what is there
        models = doc.get(item.ref.group, {})
        if not isinstance(models, dict) or not isinstance(models.get(item.ref.model, {}), dict):
            where = item.ref.group if not isinstance(models, dict) else f"{item.ref.group}/{item.ref.model}"
            raise RegistryError(
                f"export {item.ref}: {path} holds {where} as something other than a JSON object of "
                f"{'models' if where == item.ref.group else 'versions'}; fix that entry, or export into "
                "another directory"
            )
    wanted: dict[tuple[str, str, str], dict[str, Any]] = {}
    for item in exported:
        group, model = item.ref.group, item.ref.model
        wanted[(group, model, item.ref.version)] = {"alias": item.alias_of} if item.alias_of else {
            "hash": item.manifest_hash}
    for item in exported:
        if not item.alias_of:
            continue
        key = (item.ref.group, item.ref.model, item.alias_of)
        listed = wanted.get(key) or doc.get(key[0], {}).get(key[1], {}).get(key[2])
        if listed is None:
            wanted[key] = {"hash": item.manifest_hash}
        elif not isinstance(listed, dict) or listed.get("hash") != item.manifest_hash:
            raise RegistryError(
                f"export {item.ref}: it is an alias of {item.alias_of}, but {path} lists "
                f"{ModelRef(*key)} as other bytes; export {ModelRef(*key)} into another directory, "
                "or pull the alias again so that both are the same"
            )
    for (group, model, version), entry in wanted.items():
        versions = doc.setdefault(group, {}).setdefault(model, {})
        if not (isinstance(versions.get(version), dict) and entry.get("hash")
                and versions[version].get("hash") == entry["hash"]):  # the same bytes keep their metadata
            versions[version] = entry


def _object_present(path: str, size: int, digest: str = "") -> bool:
    """Whether ``path`` is a plain file of ``size`` bytes, and with ``digest``, they hash to it."""
    try:
        status = os.lstat(path)
    except OSError:
        return False
    if not (stat.S_ISREG(status.st_mode) and status.st_size == size):
        return False
    return not digest or _hash_pieces([(path, 0, size)]) == digest


def _installed_bytes(installed: InstalledModel, manifest: _Manifest,
                     pieces: Sequence[tuple[int, int, int]]) -> Iterator[bytes]:
    """The bytes of ``pieces`` (file index, offset, count) from ``installed``'s files;
    HashMismatchError naming the file that cannot give them."""
    for index, offset, count in pieces:
        path = os.path.join(installed.path, *manifest.files[index].path.split("/"))
        try:
            source = _open_regular(path)
            try:
                yield from _read_pieces(source, offset, count, _BUFFER_SIZE)
            finally:
                os.close(source)
        except OSError as exc:
            raise _damaged(installed, [manifest.files[index].path], str(exc.strerror or exc)) from exc


def _export_chunk(installed: InstalledModel, manifest: _Manifest, position: int, target: str) -> None:
    """Rebuild chunk ``position`` from ``installed``'s files, check its hash, and rename it
    to ``target``, or only check it when ``target`` is there already; HashMismatchError
    naming the files when they do not hold it."""
    temporary = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
    pieces = list(_segments(manifest, position * manifest.chunk_size, manifest.chunk_length(position)))
    present = _object_present(target, manifest.chunk_length(position), manifest.chunks[position])
    hasher = _sha256()
    fd = -1
    try:
        fd = -1 if present else _create_new(temporary)
        for data in _installed_bytes(installed, manifest, pieces):
            hasher.update(data)
            view = memoryview(data)
            while fd >= 0 and view:
                view = view[os.write(fd, view):]
        if hasher.hexdigest() != manifest.chunks[position]:
            raise _damaged(installed, sorted({manifest.files[index].path for index, _, _ in pieces}),
                           "its bytes do not match the manifest's hash")
        if present:
            return
        os.fsync(fd)
        os.close(fd)
        fd = -1
        _retry_shared(partial(os.replace, temporary, target))
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EFBIG:
            hint = (f"the file system does not hold a file of {_format_size(manifest.chunk_length(position))} "
                    "(FAT32 holds none over 4 GiB); export to an exFAT, NTFS, ext4 or APFS drive")
        raise _storage_error("write", target, exc, hint) from exc
    finally:
        if fd >= 0:
            _close_quietly(fd)
        _remove_file(temporary)


def _damaged(installed: InstalledModel, paths: Sequence[str], why: str) -> HashMismatchError:
    return HashMismatchError(
        f"cannot export {installed.ref}: damaged in {installed.path}: {', '.join(paths)} ({why}); "
        f"run verify --repair on {installed.ref}, then export again (nothing of it was listed in the export)"
    )


def _export_version(store: _Store, installed: InstalledModel, data: str, fat: str) -> None:
    """Write the manifest and chunks of ``installed`` that ``data`` lacks (model lock held)."""
    alias_of = installed.alias_of
    problem = (_name_problem("version", alias_of) or ("it is its own name" if alias_of == installed.ref.version
                                                       else "")) if alias_of else ""
    if problem:  # models.json would list an alias no pull can follow
        raise StorageError(
            f"cannot export {installed.ref}: {store.registry_path} records {installed.ref} as an alias of "
            f"{alias_of!r:.80}, which cannot be exported ({problem}); pull {installed.ref} again, which records "
            "it anew (nothing of it was listed in the export)"
        )
    manifest = store.stored_manifest(installed)
    if _sha256(manifest.raw).hexdigest() != installed.manifest_hash:
        raise StorageError(
            f"cannot export {installed.ref}: {store.manifest_path(installed.path)} is a re-serialized copy of its "
            "manifest (written by another tool, such as the Go original), not the published bytes; run verify on "
            f"{installed.ref} with its registry reachable, which restores them, then export again"
        )
    biggest = max((manifest.chunk_length(p) for p in range(len(manifest.chunks))), default=0)
    if fat and biggest > _FAT32_MAX_FILE:
        raise StorageError(
            f"cannot export {installed.ref}: it has chunks of {_format_size(biggest)}, and {data} is on a FAT "
            f"file system ({fat}), which holds no file over 4 GiB; export to an exFAT, NTFS, ext4 or APFS drive"
        )
    for info in manifest.files:
        path = os.path.join(installed.path, *info.path.split("/"))
        if not _object_present(path, info.size):
            raise _damaged(installed, [info.path], "missing, or not of its size")
    done: set[str] = set()
    for position, digest in enumerate(manifest.chunks):
        if digest not in done:  # every chunk is checked; one already in data/ is not written again
            _export_chunk(installed, manifest, position, os.path.join(data, digest))
            done.add(digest)
    target = os.path.join(data, installed.manifest_hash)
    if not _object_present(target, len(manifest.raw), installed.manifest_hash):
        _atomic_write(target, manifest.raw)


def _check_export_target(data_dir: str, root: str, data: str) -> None:
    """Refuse an export directory that is, or is inside, the data directory (as written,
    or where links lead), or whose ``data/`` is the data directory itself."""
    def within(path: str, directory: str) -> bool:
        return os.path.normcase(os.path.join(path, "")).startswith(os.path.normcase(os.path.join(directory, "")))

    homes = {data_dir, os.path.realpath(data_dir)}
    if any(within(path, home) for path in (root, os.path.realpath(root)) for home in homes):
        raise StorageError(f"cannot export into {root}: it is inside the data directory {data_dir}; "
                           "choose a directory outside it")
    if any(within(path, home) for path in (data, os.path.realpath(data)) for home in homes):
        raise StorageError(f"cannot export into {root}: its {os.path.join('data', '')} would be the data "
                           f"directory {data_dir}; choose a directory outside it")


def _installed_refs(store: _Store, refs: Iterable[RefLike]) -> list[ModelRef]:
    """The installed versions ``refs`` name, once each, in order."""
    wanted: list[ModelRef] = []
    for item in refs:
        ref = _as_ref(item)
        if ref.pin:
            raise InvalidRefError(f"export {ref}: takes no pin; drop '@{ref.pin[:12]}...'")
        found = [ref] if ref.version else [
            installed.ref for installed in store.list_installed()
            if (installed.ref.group, installed.ref.model) == (ref.group, ref.model)]
        if not found:
            raise NotInstalledError(f"model not installed: {ref} (no versions)")
        wanted += [one for one in found if one not in wanted]
    return wanted


def _write_export_index(path: str, doc: dict[str, Any], exported: Sequence[InstalledModel]) -> None:
    """Write ``doc`` as models.json, once it is checked to list every exported version as
    installed, the way a pull will read it."""
    import json

    raw = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    index = _parse_index(raw, path)
    for item in exported:
        if index.lookup(item.ref).manifest_hash != item.manifest_hash:
            raise RegistryError(f"export {item.ref}: {path} would not list it as installed; nothing was listed")
    _atomic_write(path, raw)


# --- Manager ----------------------------------------------------------------------
# The public API: argument checks, lock order, and delegation to the registry
# client, the pull engine and the local store. _Registries first: which registry
# answers for a model, each one's client, and its models.json once per command.


class _IndexScope:
    """``with registries.one_index_each():``: within the block, on this thread, each registry's
    models.json is fetched at most once (a failure to fetch it is kept too). One CLI command
    runs in one such block; outside it, every API call fetches the index anew, so a
    long-lived Manager sees an alias move at its next call."""

    def __init__(self, local: threading.local) -> None:
        self._local = local
        self._outer = True

    def __enter__(self) -> None:
        self._outer = getattr(self._local, "indexes", None) is None
        if self._outer:
            self._local.indexes = {}

    def __exit__(self, *exc_info: object) -> None:
        if self._outer:
            self._local.indexes = None


class _Registries:
    """Which registry answers for a model (README: Moving models): the configured one
    first, then the one an install recorded. One client per registry, made on first use
    with the Manager's settings; each registry's models.json at most once per
    ``one_index_each`` block."""

    def __init__(self, configured_url: str, store: _Store, logger: LoggerLike, **client_options: Any) -> None:
        self.configured_url = configured_url
        self._store, self._logger, self._options = store, logger, client_options
        self._clients: dict[str, _RegistryClient] = {}  # by _registry_key
        self._guard = threading.Lock()
        self._scope = threading.local()  # the indexes held by one_index_each

    def client_for(self, url: str) -> _RegistryClient:
        """The client of registry ``url``, made on first use with the Manager's headers,
        timeout, retries, TLS context, opener and logger: every registry contact, the
        configured registry's or one an install recorded, goes through one of these."""
        key = _registry_key(url)
        with self._guard:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = _RegistryClient(url, logger=self._logger, **self._options)
            return client

    @property
    def configured(self) -> _RegistryClient:
        """The configured registry's client (RegistryError if none is configured)."""
        return self.client_for(self.configured_url)

    def one_index_each(self) -> _IndexScope:
        return _IndexScope(self._scope)

    def index(self, client: _RegistryClient) -> _Index:
        """``client``'s models.json: fetched now, or once per ``one_index_each`` block."""
        held: dict[str, _Index | ModelsError] | None = getattr(self._scope, "indexes", None)
        if held is None:
            return client.index()
        key = _registry_key(client.url)
        if key not in held:
            try:
                held[key] = client.index()
            except ModelsError as exc:
                held[key] = exc
        found = held[key]
        if isinstance(found, ModelsError):
            raise found
        return found

    def sources(self, ref: ModelRef, recorded: str) -> list[_RegistryClient]:
        """The registries to ask, in order: the configured one, then ``recorded`` (where an
        installed version came from) if it is another (README: Moving models).

        A recorded registry that installs do not record (``_recordable``) is not asked: a
        relative path or ``~`` would lead wherever the working directory or home is."""
        if recorded and not _recordable(recorded):
            problem = (f"{self._store.registry_path} records the registry of {ref} as {recorded!r:.100}, which is "
                       "not what installs record (an http(s) URL, or a local directory's absolute path or file:// "
                       "URL), so it is not asked")
            if not self.configured_url:
                raise RegistryError(f"{problem}; configure the registry's URL (update --apply then records it)")
            self._logger.warning("%s", problem)
            recorded = ""
        urls = [url for url in (self.configured_url, recorded) if url]
        if len(urls) == 2 and _registry_key(urls[0]) == _registry_key(urls[1]):
            urls.pop()
        return [self.client_for(url) for url in urls] or [self.configured]  # none: the "no registry" error

    def resolve(self, ref: ModelRef, *, pin: str = "") -> tuple[_RegistryClient, RemoteModel]:
        """The registry that serves ``ref`` and what it lists for it: the configured registry
        if it lists ``ref``, else the one ``ref`` is installed from. With ``pin``, the first
        that holds the manifest of that hash (fetched by it, and cached), whatever either
        index lists."""
        entry = self._store.records.find(ref)
        recorded = str(entry.get("registry_url", "")) if isinstance(entry, dict) else ""
        failures: list[tuple[_RegistryClient, ModelsError]] = []
        sources = self.sources(ref, recorded)
        for client in sources:
            try:
                if pin:
                    if client is not sources[-1]:
                        # Asked itself, with another registry to fall back on: a copy of the manifest
                        # in the cache does not say that this registry holds its chunks.
                        self._store.cache_manifest(pin, client.manifests([pin], self._store.metadata_dir)[pin].raw)
                    else:
                        self.manifest(pin, client)
                    return client, RemoteModel(ref, pin)
                return client, self.index(client).lookup(ref)
            except (ModelNotFoundError, VersionNotFoundError, RegistryError, NetworkError, HashMismatchError) as exc:
                failures.append((client, _pin_missing(ref, pin, client, exc) if pin else exc))
        if len(failures) == 1:
            raise failures[0][1]
        (configured, first), (installed_from, second) = failures
        raise type(first)(
            f"no registry serves {ref}{'@' + pin if pin else ''}: not the configured {configured.origin} ({first}), "
            f"nor {installed_from.origin}, where it was installed from ({second}); configure a registry that "
            "lists it, or remove it if it is no longer published"
        ) from first

    def record_source(self, installed: InstalledModel, registry_url: str) -> None:
        """Record ``registry_url`` as where ``installed`` comes from, unless it changed meanwhile."""
        with self._store.model_lock(installed.ref):
            self._store.records.amend(installed.ref, installed.manifest_hash, {"registry_url": registry_url})

    def installed_source(self, installed: InstalledModel) -> _RegistryClient:
        """The registry to fetch an installed version's manifest and chunks from, by hash: the
        configured one if it lists that manifest, else the one it was installed from."""
        sources = self.sources(installed.ref, installed.registry_url)
        for client in sources[:-1]:
            try:
                if any(item.manifest_hash == installed.manifest_hash for item in self.index(client).models.values()):
                    return client
            except ModelsError as exc:
                self._logger.info("%s: asking %s instead: %s", installed.ref, sources[-1].origin, exc)
        return sources[-1]

    def manifest(self, digest: str, client: _RegistryClient | None = None) -> _Manifest:
        """The validated manifest, from the local manifest cache or the registry (``client``'s,
        else the configured one)."""
        return self._store.manifests([digest], lambda missing: (client or self.configured).manifests(
            missing, self._store.metadata_dir))[digest]


class Manager:
    """Lists, pulls, removes and locates models of one application.

    Every method is safe to call from many threads at once, and from several
    processes sharing a data directory.

    Args:
        config: the application name, registry URL and optional data directory.
        opener: an object with ``open(request, timeout=...)`` such as
            ``urllib.request.OpenerDirector``, to take over every http(s)
            request; default: the module's own HTTP/1.1 client, which honours
            ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (and on macOS and
            Windows the system's proxy settings, as urllib reads them).
        headers: extra request headers for every registry request, such as
            ``{"Authorization": "Bearer ..."}``. Values are never logged;
            ``Authorization`` and ``Cookie`` are not sent on to another host
            (or from https to http) after a redirect.
        logger: receives debug/info/warning lines; default the
            ``xprim_models`` logger, silent unless logging is configured.
        timeout: seconds a request may wait: for the connection and the
            response head together, then for each 64 KiB of the body.
        retries: a request is tried at most ``retries + 1`` times, whatever
            fails (a hash mismatch included); see ``README.md``, Retries.
        retry_backoff: seconds before the first retry; doubled each time.
        data_dir: a base directory that wins over ``<APP>_MODELS_DIR`` and
            ``Config.data_dir`` (what the CLI's ``--data-dir`` passes).
        ssl_context: verifies HTTPS registries (for a private CA); default:
            the system's trust store, or the bundle named by ``SSL_CERT_FILE``.
        copy_files: give every installed version its own copy of each file;
            by default a file byte-identical to one of another installed version
            of the model shares its storage (a hard link). Setting
            ``XPRIM_MODELS_COPY_FILES=1`` in the environment does the same.
    """

    def __init__(
        self,
        config: Config,
        *,
        opener: OpenerLike | None = None,
        logger: LoggerLike | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        retry_backoff: float = 0.5,
        data_dir: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
        copy_files: bool = False,
    ) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {type(config).__name__}")
        if not isinstance(config.app_name, str) or not re.fullmatch(_NAME_RE, config.app_name):
            raise ValueError(f"Config.app_name {config.app_name!r} must be a simple name like 'whisper-tool'")
        if timeout <= 0 or retries < 0 or retry_backoff < 0:
            raise ValueError("timeout must be positive; retries and retry_backoff must not be negative")
        self.config = config
        self._logger = logger = logger if logger is not None else _default_logger()
        root = os.path.abspath(os.path.expanduser(os.fspath(data_dir))) if data_dir else _resolve_data_dir(config)
        self._store = _Store(root, config.app_name, logger)
        self._registries = _Registries(
            config.registry_url, self._store, logger, opener=opener, ssl_context=ssl_context, timeout=timeout,
            retries=retries, backoff=retry_backoff, headers=_check_headers(headers or {}),
        )
        self._share_files = not copy_files and os.environ.get("XPRIM_MODELS_COPY_FILES", "") in ("", "0")

    @property
    def data_dir(self) -> str:
        """The resolved base directory of this application's models."""
        return self._store.root

    def __repr__(self) -> str:
        return f"Manager(app_name={self.config.app_name!r}, data_dir={self.data_dir!r})"

    def _job(self, client: _RegistryClient, writer: _ChunkFiles, label: str, chunks: Sequence[tuple[str, int]],
             concurrency: int, progress: Callable[[PullProgress], None] | None,
             sources: Mapping[str, Sequence[_Source]], limit_rate: float | None) -> _PullJob:
        emit = progress if progress is not None else (lambda snapshot: None)
        return _PullJob(client, writer, label, chunks, concurrency=concurrency, emit=emit,
                        logger=self._logger, sources=sources, limit_rate=limit_rate)

    # Public API --------------------------------------------------------------

    def list_installed(self) -> list[InstalledModel]:
        """Installed model versions, sorted by (group, model, version).

        Raises:
            StorageError: registry.json cannot be read or is corrupt.
        """
        return self._store.list_installed()

    def list_remote(self, *, detail: bool = False) -> list[RemoteModel]:
        """Every version the registry lists, aliases resolved, sorted.

        Args:
            detail: return ``RemoteModelDetail`` items, with sizes and files.
                Manifests are immutable, so they are cached under the data
                directory; missing ones are fetched concurrently.

        Raises:
            NetworkError, RegistryError: the index cannot be fetched or is invalid.
        """
        # ModelRef's order, compared as plain tuples (a big index sorts in a fraction of the time)
        remote = sorted(self._registries.configured.index().models.values(),
                        key=lambda item: (item.ref.group, item.ref.model, item.ref.version))
        if not detail:
            return remote
        digests = sorted({item.manifest_hash for item in remote})  # aliases share their target's
        manifests = self._store.manifests(
            digests, lambda missing: self._registries.configured.manifests(missing, self._store.metadata_dir))
        return [_detail(item, manifests[item.manifest_hash]) for item in remote]

    def list_remote_group(self, group: str) -> list[RemoteModel]:
        """The versions of every model in ``group`` (empty if the group is unknown); raises
        NetworkError or RegistryError when the index cannot be fetched or is invalid."""
        return [item for item in self.list_remote() if item.ref.group == group]

    def list_remote_versions(self, group: str, model: str) -> list[RemoteModel]:
        """The versions of ``group/model`` (empty if the model is unknown); raises
        NetworkError or RegistryError when the index cannot be fetched or is invalid."""
        return [item for item in self.list_remote() if (item.ref.group, item.ref.model) == (group, model)]

    def get_installed(self, ref: RefLike) -> InstalledModel:
        """The installed version ``ref``; NotInstalledError if it is not installed."""
        ref = _versioned(ref, "get_installed")
        self._store.reclaim_if_idle(ref)
        return self._store.get(ref)

    def get_remote(self, ref: RefLike) -> RemoteModel:
        """What the registry lists for ``ref``.

        Raises:
            ModelNotFoundError, VersionNotFoundError: the registry has no such model/version.
            NetworkError, RegistryError: the index cannot be fetched or is invalid.
        """
        return self._registries.configured.index().lookup(_versioned(ref, "get_remote"))

    def get_remote_detail(self, ref: RefLike) -> RemoteModelDetail:
        """What the registry lists for ``ref``, with its manifest's sizes and files.

        Raises:
            ModelNotFoundError, VersionNotFoundError: the registry has no such model/version.
            HashMismatchError, RegistryError: the manifest is corrupt or invalid.
            NetworkError: the registry cannot be reached.
        """
        remote = self.get_remote(ref)
        return _detail(remote, self._registries.manifest(remote.manifest_hash))

    def files(self, ref: RefLike) -> list[FileInfo]:
        """The files of the installed version ``ref``, in manifest order.

        Raises:
            NotInstalledError: it is not installed.
            StorageError: its stored manifest is missing or damaged.
        """
        return list(self._store.stored_manifest(self.get_installed(ref)).files)

    def path(self, ref: RefLike) -> str:
        """The directory of the installed version ``ref``; NotInstalledError if it is not installed."""
        return self.get_installed(ref).path

    def check_update(self, ref: RefLike) -> tuple[str, str]:
        """``(installed manifest hash, remote manifest hash)``; they differ when an update exists.

        For an installed alias, the remote hash is that of the version the alias
        points to now; ``get_remote(ref).alias_of`` names it. The configured registry
        is asked first, then the one ``ref`` was installed from.

        Raises:
            NotInstalledError: ``ref`` is not installed.
            ModelNotFoundError, VersionNotFoundError: the registry no longer lists it.
        """
        installed = self.get_installed(ref)
        return installed.manifest_hash, self._registries.resolve(installed.ref)[1].manifest_hash

    def pull(
        self,
        ref: RefLike,
        *,
        force: bool = False,
        concurrency: int = 4,
        progress: Callable[[PullProgress], None] | None = None,
        limit_rate: float | None = None,
        pin: str = "",
    ) -> InstalledModel:
        """Download, verify and install ``ref``; return the installed model.

        The configured registry is asked first; for an installed ``ref``, the registry
        it was installed from is the fallback. Chunks come from an interrupted pull's
        staging directory, then from installed versions that hold the same bytes or
        files of the same paths (verified again either way), and only then from the
        network. A file identical to one of an installed version of the model shares
        its storage (see ``copy_files``).

        Args:
            ref: ``ModelRef`` or ``"group/model version"`` (or ``"... version@<sha256>"``,
                pinned); an alias installs under its own name.
            force: install again even if the same manifest is installed (every
                byte is verified again; intact files are shared, not downloaded).
            concurrency: parallel chunk downloads (capped at 16).
            progress: called with a ``PullProgress`` as the pull advances; an
                exception it raises stops the pull and is re-raised.
            limit_rate: cap on the total download rate, in bytes per second.
            pin: the manifest hash ``ref`` must be (as ``InstalledModel.manifest_hash``):
                that manifest is fetched by its hash and installed, whatever the index
                lists now (then ``alias_of`` is "", and ``pinned`` is true: ``update``
                leaves it as it is).

        Raises:
            AlreadyInstalledError: the same manifest is installed and ``force`` is false.
            VersionNotFoundError: the registry no longer has the pinned manifest.
            ModelNotFoundError, RegistryError, NetworkError, HashMismatchError,
            StorageError, InvalidRefError.
        """
        return self._pull(ref, force=force, concurrency=concurrency, progress=progress, limit_rate=limit_rate,
                          pin=pin)

    def _pull(self, ref: RefLike, *, force: bool = False, concurrency: int = 4,
              progress: Callable[[PullProgress], None] | None = None, limit_rate: float | None = None,
              pin: str = "", keep_pinned: bool = False) -> InstalledModel:
        """``pull``; with ``keep_pinned`` (``update --apply``), a pinned install is left as it is
        (AlreadyInstalledError, its ``installed.pinned`` true), where a pull releases it."""
        ref, pin = _unpinned(_versioned(ref, "pull", pinned=True), pin, "pull")
        concurrency = _check_download_options(concurrency, limit_rate)
        store = self._store
        client, remote = self._registries.resolve(ref, pin=pin)
        # A pull without a pin installs a pinned install again, unpinned (its files are shared).
        again = force or (not pin and not keep_pinned and getattr(store.intact(ref), "pinned", False))
        if not again and not pin:  # mid-swap after a crash, it is answered below, once recovered under the lock
            store.raise_if_installed(ref, remote.manifest_hash)
        with store.model_lock(ref):
            # Before anything touches ref's directory: on a case-insensitive disk (Windows,
            # macOS) it may be the directory of an installed version spelled otherwise.
            installed_models = self.list_installed()
            _check_case(ref, installed_models)
            store.reclaim(ref)
            held = store.intact(ref) if keep_pinned and not pin else None
            if held is not None and held.pinned:  # pinned since update looked
                raise AlreadyInstalledError(f"model installed and pinned: {ref}", held)
            if not again:  # another thread or process may have installed it meanwhile
                store.raise_if_installed(ref, remote.manifest_hash, pin=bool(pin))
            if progress is not None:
                progress(PullProgress("manifest", 0, 0, 0, 0, 0))
            manifest = self._registries.manifest(remote.manifest_hash, client)
            with store.installing(ref, manifest, installed_models, alias_of=remote.alias_of,
                                  registry_url=client.origin, share=self._share_files, pinned=bool(pin)) as staging:
                job = self._job(client, staging, f"pull {ref}", staging.chunks(), concurrency, progress,
                                staging.sources, limit_rate)
                job.run()
                for path in staging.flush():
                    job.set_current_file(path)
                job.report()
            return staging.installed

    def ensure(
        self,
        ref: RefLike,
        *,
        force: bool = False,
        concurrency: int = 4,
        progress: Callable[[PullProgress], None] | None = None,
        limit_rate: float | None = None,
        pin: str = "",
    ) -> str:
        """The directory of ``ref``, pulling it first only if it is not installed (with
        ``pin``: not installed as that manifest).

        No network request is made when it is installed. Safe to call from many
        threads and processes at once: one of them downloads, the others wait.

        Args:
            ref: ``ModelRef`` or ``"group/model version"`` (or ``"... version@<sha256>"``).
            force, concurrency, progress, limit_rate, pin: as for ``pull``; with ``force``
                it pulls (verifying every byte again) even when installed.

        Raises:
            the errors of ``pull``, except ``AlreadyInstalledError``.
        """
        ref, pin = _unpinned(_versioned(ref, "ensure", pinned=True), pin, "ensure")
        installed = self._store.intact(ref)
        if installed is not None and not force and installed.manifest_hash == (pin or installed.manifest_hash):
            if not pin or installed.pinned:
                return installed.path
            with self._store.model_lock(ref):  # installed unpinned: held from now on, with no network
                installed = self._store.hold(ref, pin)
            if installed is not None and installed.manifest_hash == pin:
                return installed.path
        try:
            return self.pull(ref, force=force, concurrency=concurrency, progress=progress, limit_rate=limit_rate,
                             pin=pin).path
        except AlreadyInstalledError as exc:
            return exc.installed.path

    def verify(
        self,
        ref: RefLike,
        *,
        repair: bool = False,
        concurrency: int = 4,
        progress: Callable[[PullProgress], None] | None = None,
        limit_rate: float | None = None,
    ) -> VerifyResult:
        """Re-hash an installed version's files against its manifest's chunk hashes.

        A repair fetches from the configured registry if it lists the installed
        manifest, else from the registry the version was installed from.

        A stored manifest that another tool re-serialized (the Go original does) is
        replaced by the published one, fetched by its hash, and the files are checked
        against that; with no registry to fetch it from, they are checked against the
        copy, and a warning says the manifest itself could not be checked.

        Args:
            ref: the installed version.
            repair: fetch (or copy from other installed versions) only the damaged
                chunks, and rewrite only the damaged files.
            concurrency, progress, limit_rate: as for ``pull``, when repairing.

        Returns:
            A ``VerifyResult``: the files damaged or missing, those that only share a
            damaged chunk, and (with ``repair``) those rewritten. ``damaged`` and
            ``sharing_damaged_chunk`` say what was found before the repair.

        Raises:
            NotInstalledError: ``ref`` is not installed.
            NetworkError, HashMismatchError, StorageError: the repair failed.
        """
        ref = _versioned(ref, "verify")
        concurrency = _check_download_options(concurrency, limit_rate)
        store = self._store
        with _Verification(store, ref, repair=repair) as check:

            @cache
            def source() -> _RegistryClient:  # asked only when something must be fetched
                return self._registries.installed_source(check.installed)

            if check.needs_published():
                try:
                    check.use_published(self._registries.manifest(check.installed.manifest_hash, source()))
                except ModelsError as exc:
                    check.use_published(exc)
            if check.scan() and repair:
                with store.cache_lock(shared=True), check.repairing() as scratch:
                    copies, kin = store.copies(self.list_installed(), ref, besides=True)
                    sources = _local_sources(scratch.manifest, scratch.bad, copies, kin)
                    self._job(source(), scratch, f"repair {ref}", scratch.chunks(), concurrency, progress, sources,
                              limit_rate).run()
        return check.result()

    def prune_cache(self) -> int:
        """Delete what failed and crashed pulls left, and model and group directories left
        empty; return the bytes freed.

        This waits for running pulls to finish first.

        Raises:
            StorageError: something could not be deleted.
        """
        freed = self._store.prune()
        self._logger.info("pruned %d bytes from %s", freed, self.data_dir)
        return freed

    def remove(self, ref: RefLike) -> None:
        """Delete the installed version ``ref``.

        Raises:
            NotInstalledError: it is not installed.
        """
        ref = _versioned(ref, "remove")
        with self._store.model_lock(ref):
            self._store.remove(ref)

    def remove_all(self, group: str, model: str) -> list[ModelRef]:
        """Delete every installed version of ``group/model``; return what was removed.

        Raises:
            NotInstalledError: no version of it is installed.
        """
        from contextlib import suppress

        refs = [item.ref for item in self.list_installed() if (item.ref.group, item.ref.model) == (group, model)]
        if not refs:
            raise NotInstalledError(f"model not installed: {ModelRef(group, model)} (no versions)")
        removed = []
        for ref in refs:
            with suppress(NotInstalledError):  # removed meanwhile by someone else
                self.remove(ref)
                removed.append(ref)
        return removed

    def export(self, refs: Iterable[RefLike], directory: str | os.PathLike[str]) -> list[InstalledModel]:
        """Write installed versions into ``directory`` as a registry (``models.json`` and
        ``data/<sha256>``) that ``Config(registry_url=directory)`` installs from; return them.

        Each object is rebuilt from the installed files, checked against its hash and
        written atomically; objects already there are kept if they hash right. An alias is
        written as an alias, with its target. Entries already in ``directory``'s
        models.json stay (a version exported again is replaced); models.json is written
        last, so an interrupted export lists nothing it lacks.

        Args:
            refs: versions, or ``"group/model"`` for every installed version of it.
            directory: created if needed; an earlier export is merged into.

        Raises:
            NotInstalledError: a ref is not installed.
            HashMismatchError: an installed file is damaged (``verify --repair`` fixes it).
            StorageError: the directory cannot be written, is (or is inside) the data
                directory or has it as its ``data/``, or a chunk is over 4 GiB and it is
                on FAT32.
            RegistryError: ``directory`` holds a models.json that is not an index, or one
                whose entries contradict an exported alias.
        """
        wanted = _installed_refs(self._store, [refs] if isinstance(refs, (str, ModelRef)) else refs)
        root = os.path.abspath(os.fspath(directory))
        data = os.path.join(root, "data")
        _check_export_target(self.data_dir, root, data)
        try:
            os.makedirs(data, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create", data, exc) from exc
        fat = _file_system(data)
        fat = fat if fat in _FAT_KINDS else ""
        exported = []
        with _FileLock(os.path.join(root, _EXPORT_LOCK)):
            # What a killed export was writing; no other name in the user's directory is touched.
            _remove_abandoned(data, _HASH_RE)
            _remove_abandoned(root, r"models\.json")
            for ref in wanted:
                with self._store.model_lock(ref):
                    self._store.reclaim(ref)
                    installed = self._store.get(ref)
                    _export_version(self._store, installed, data, fat)
                exported.append(installed)
                self._logger.info("exported %s to %s", ref, root)
            _fsync_directory(data)  # every object's rename is durable before models.json lists it
            index_path = os.path.join(root, "models.json")
            doc = _export_index(index_path)
            _export_entries(doc, exported, index_path)
            _write_export_index(index_path, doc, exported)
        return exported


# --- Command line -----------------------------------------------------------------
# A thin shell over the public API: register_subcommands() for parent tools,
# main() for `python -m xprim_models` and the `xprim-models` script.


def _format_duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    return [
        "   ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in [headers, *rows]
    ]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


_STALL_NOTICE_AFTER = 5.0  # seconds without progress before a terminal says what it waits for


def _terminal_width(stream: Any) -> int:
    """Columns of the terminal ``stream`` writes to, read afresh (it may have been resized)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        columns = os.environ.get("COLUMNS", "")
        return int(columns) if columns.isdigit() and int(columns) > 0 else 80


def _fit(candidates: Sequence[str], width: int) -> str:
    """The first candidate shorter than ``width`` (the last column is left free: no wrapping
    on any terminal), else the last one cut to fit."""
    for candidate in candidates:
        if len(candidate) < width:
            return candidate
    return candidates[-1][: max(width - 1, 0)]


class _Console:
    """Where the CLI's words go: stdout for results, stderr for the rest.

    Also the Manager's logger. On a terminal it keeps one unfinished line (progress)
    that log lines break and restore, and a stall notice may stand in for it.
    """

    def __init__(self, args: argparse.Namespace, prog: str = "xprim-models") -> None:
        self.json = bool(getattr(args, "models_json", False))
        self.quiet = bool(getattr(args, "models_quiet", False))
        self.verbose = bool(getattr(args, "models_verbose", False))
        self.prog = prog  # the command words before ours ("mytool models"), for hints
        self.registry_hint = ""  # how this command line takes a registry URL; "" when embedded
        self.terminal = not (self.quiet or self.json) and sys.stderr.isatty()
        self.partial = ""
        self.lock = threading.RLock()  # the Manager's worker threads log too
        self.request: tuple[str, int, int] | None = None  # the last request: (url, attempt, attempts)
        self.moved = time.monotonic()  # when progress or output last moved
        self.notice = ""  # the stall notice on screen, if any
        self.downloading = False  # a pull reached its chunks: a failure now leaves something to resume
        self.watch: _StallWatch | None = None

    # What a stream that cannot encode a character (a cp1252 console or pipe on Windows,
    # PYTHONIOENCODING=ascii) shows instead: ASCII that means the same, not "?".
    _ASCII_FALLBACK = str.maketrans({"\u2192": "->", "\u00d7": "x"})

    @staticmethod
    def _write(stream: Any, text: str) -> None:
        try:
            try:
                stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(stream, "encoding", None) or "ascii"
                text = text.translate(_Console._ASCII_FALLBACK)
                stream.write(text.encode(encoding, "replace").decode(encoding))
            stream.flush()
        except BrokenPipeError:
            raise  # the reader went away: the command stops quietly
        except OSError as exc:
            if os.name == "nt" and exc.errno == errno.EINVAL:  # how Windows reports a pipe nobody reads
                raise BrokenPipeError(errno.EPIPE, "the reading end of the pipe was closed") from exc
            # output redirected to a full or failing disk
            name = "standard output" if stream is sys.stdout else "standard error"
            raise StorageError(f"cannot write to {name}: {exc.strerror or exc}; free space where it goes, "
                               "or send it elsewhere") from exc

    def out(self, text: str = "") -> None:
        with self.lock:
            self._clear_notice()
            self._write(sys.stdout, text + "\n")

    def err(self, text: str, end: str = "\n") -> None:
        with self.lock:
            self._clear_notice()
            self._write(sys.stderr, text + end)
            if not text.startswith("\r"):  # a redrawn progress line is not news
                self.moved = time.monotonic()
            # Remember an unfinished line (progress) so a log line can break and restore it.
            if end:
                self.partial = ""
            else:
                self.partial = text if text.startswith("\r") else self.partial + text

    def document(self, doc: Mapping[str, Any]) -> None:
        """Print ``doc`` as strict JSON (RFC 8259: no NaN or Infinity), streamed in pieces of about 64 KiB.

        A value that is an iterator is a list encoded one item at a time, so a long list's
        documents never all exist at once (``list --remote --json`` of a registry's every alias).
        """
        import collections.abc
        import json

        encoder = json.JSONEncoder(indent=2, ensure_ascii=False, allow_nan=False)

        def text() -> Iterator[str]:  # what json.dumps(doc, indent=2) prints, item by item
            yield "{"
            for number, (key, value) in enumerate(doc.items()):
                yield f'{"," if number else ""}\n  {encoder.encode(key)}: '
                if not isinstance(value, collections.abc.Iterator):
                    yield encoder.encode(value).replace("\n", "\n  ")
                    continue
                empty = True
                for item in value:
                    indented = encoder.encode(item).replace("\n", "\n    ")
                    yield f'{"," if not empty else "["}\n    {indented}'
                    empty = False
                yield "[]" if empty else "\n  ]"
            yield "\n}" if doc else "}"

        pieces: list[str] = []
        size = 0
        for piece in text():
            pieces.append(piece)
            size += len(piece)
            if size >= 1 << 16:
                self._write(sys.stdout, "".join(pieces))
                pieces, size = [], 0
        self.out("".join(pieces))

    # Stall notices: what a terminal shows when nothing has moved for a while.

    def _clear_notice(self) -> None:
        if self.notice:
            self.notice = ""
            self._write(sys.stderr, "\r\x1b[2K" + self.partial.lstrip("\r"))

    def check_stall(self) -> None:
        """Say what the CLI is waiting for, once nothing has moved for a few seconds (a watcher
        thread calls this about twice a second)."""
        with self.lock:
            idle = time.monotonic() - self.moved
            if not self.terminal or self.request is None or idle < _STALL_NOTICE_AFTER:
                return
            from urllib.parse import urlsplit

            url, attempt, attempts = self.request
            host = urlsplit(url).netloc or url
            notice = f"waiting for {host} (attempt {attempt} of {attempts}, {int(idle)}s without progress)"
            if notice == self.notice:
                return
            self.notice = notice
            shown = self.partial.lstrip("\r").replace("\x1b[2K", "")
            width = _terminal_width(sys.stderr)
            alone = f"{notice[0].upper()}{notice[1:]}"
            line = _fit([f"{shown} {notice}", alone] if shown else [alone], width)
            self._write(sys.stderr, f"\r\x1b[2K{line}")

    # The Manager's logger: debug lines with --verbose, warnings unless --quiet (a notice
    # such as "Waiting for another download" without the label).
    def _log(self, level: str, message: str, *args: Any) -> None:
        with self.lock:
            partial = self.partial
            label = f"{level}: " if level else ""
            self.err(("\n" if partial else "") + f"{label}{message % args if args else message}")
            if partial:
                self.err(partial.lstrip("\r"), end="")

    def _track(self, extra: Mapping[str, Any] | None) -> None:
        attempt = (extra or {}).get(_ATTEMPT_KEY)
        if attempt is None:
            return
        self.request = attempt  # one assignment: the watcher reads whichever it finds
        if self.terminal and self.watch is None:
            with self.lock:
                if self.watch is None:  # the first request: from now on, stalls are news
                    self.watch = _StallWatch(self)
                    self.watch.start()

    def close(self) -> None:
        """The command is over: no more stall notices."""
        with self.lock:
            watch, self.watch = self.watch, None
        if watch is not None:
            watch.stop()

    def debug(self, message: str, *args: Any, extra: Mapping[str, Any] | None = None, **_: Any) -> None:
        self._track(extra)
        if self.verbose:
            self._log("debug", message, *args)

    def info(self, message: str, *args: Any, extra: Mapping[str, Any] | None = None, **_: Any) -> None:
        self._track(extra)
        if self.verbose:
            self._log("info", message, *args)

    def warning(self, message: str, *args: Any, extra: Mapping[str, Any] | None = None, **_: Any) -> None:
        self._track(extra)
        if not self.quiet:
            self._log("" if extra and extra.get(_NOTICE_KEY) else "warning", message, *args)

    def error(self, message: str, *args: Any, extra: Mapping[str, Any] | None = None, **_: Any) -> None:
        self._track(extra)
        self._log("error", message, *args)


class _StallWatch:
    """A thread that lets the console notice a stall while the command waits on the network."""

    def __init__(self, console: _Console) -> None:
        self.console = console
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="xprim-models-stall", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.wait(0.5):
            try:
                self.console.check_stall()
            except (OSError, ValueError):  # stderr went away: the command itself will notice
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not threading.current_thread():
            self.thread.join()


class _ProgressPrinter:
    """Renders PullProgress on stderr: one redrawn line on a terminal, a few plain lines otherwise."""

    _BAR = 20

    def __init__(self, console: _Console, writing: str = "Extracting files") -> None:
        self.console = console
        self.writing = writing  # what the last phase does to the files
        self.enabled = not (console.quiet or console.json)
        self.terminal = console.terminal
        self.phase = ""
        self.last_draw = 0.0
        self.next_step = 0  # quarter of the download last reported off a terminal
        self.samples: list[tuple[float, int]] = []
        self.last: PullProgress | None = None
        self.completed = -1  # bytes_completed last seen: progress moves when it grows
        self.started = 0.0  # when the chunks phase began

    def __call__(self, progress: PullProgress) -> None:
        if progress.phase == "chunks":
            self.console.downloading = True
        moved = progress.bytes_completed != self.completed or progress.phase != self.phase
        if moved:
            self.completed = progress.bytes_completed
            self.console.moved = time.monotonic()
        if not self.enabled:
            return
        self.last = progress
        if progress.phase != self.phase:
            self._enter(progress.phase, progress)
        if progress.phase == "chunks" and progress.chunks_total and (moved or not self.console.notice):
            self._download(progress)

    def _enter(self, phase: str, progress: PullProgress) -> None:
        previous, self.phase = self.phase, phase
        if previous == "manifest":
            self.console.err("done")
        if phase == "manifest":
            self.console.err("Fetching manifest... ", end="")
        elif phase == "chunks":
            self.started = time.monotonic()
            if not self.terminal and progress.chunks_total:
                self.console.err(
                    f"Getting {_plural(progress.chunks_total, 'chunk')} ({_format_size(progress.bytes_total)})"
                )
        elif phase == "extracting":
            if previous == "chunks" or not previous:
                self._summary(progress)
            self.console.err(f"{self.writing}... ", end="")

    def _speed(self, progress: PullProgress, now: float) -> float:
        self.samples.append((now, progress.bytes_downloaded))
        while len(self.samples) > 2 and now - self.samples[0][0] > 5:
            self.samples.pop(0)
        elapsed = now - self.samples[0][0]
        return (progress.bytes_downloaded - self.samples[0][1]) / elapsed if elapsed > 0 else 0.0

    @staticmethod
    def _verb(progress: PullProgress) -> str:
        # Bytes found on this disk (the cache, another installed version, an interrupted
        # pull's files) are verified, not downloaded: say so.
        return "Verifying" if progress.bytes_completed and not progress.bytes_downloaded else "Downloading"

    def _download(self, progress: PullProgress) -> None:
        now = time.monotonic()
        total = progress.bytes_total
        fraction = progress.bytes_completed / total if total else 1.0
        percent = min(int(fraction * 100), 99)  # 100% comes with the summary, once every chunk is verified
        counts = f"{progress.chunks_completed}/{_plural(progress.chunks_total, 'chunk')}"
        sizes = f"{_format_size(progress.bytes_completed)}/{_format_size(total)}"
        verb = self._verb(progress)
        if not self.terminal:
            step = min(int(fraction * 4), 3)  # 25%, 50%, 75%; the summary says the rest
            if step > self.next_step and progress.chunks_completed < progress.chunks_total:
                self.next_step = step
                self.console.err(f"{verb}: {counts} {percent}% {sizes}")
            return
        speed = self._speed(progress, now)
        if now - self.last_draw < 0.1 or (not progress.bytes_completed and now - self.started < 0.5):
            return  # nothing yet: what is on this disk is often found at once, and says Verifying
        self.last_draw = now
        rate = f" {_format_size(speed)}/s" if speed > 0 and progress.bytes_downloaded else ""
        eta = f" ETA {_format_duration((total - progress.bytes_completed) / speed)}" if rate else ""
        head, tail = f"{verb}: {counts}", f" {percent}% {sizes}"
        # As the terminal narrows: a shorter bar, no bar, no ETA, no speed, no sizes, no words.
        width = _terminal_width(sys.stderr)
        bar_room = width - 1 - len(head + tail + rate + eta) - 3
        candidates = []
        if bar_room >= 5:
            cells = min(self._BAR, bar_room)
            filled = int(fraction * cells)
            bar = "=" * filled + (">" if filled < cells else "") + " " * (cells - filled - 1)
            candidates.append(f"{head} [{bar}]{tail}{rate}{eta}")
        candidates += [f"{head}{tail}{rate}{eta}", f"{head}{tail}{rate}", f"{head}{tail}",
                       f"{head} {percent}%", f"{counts} {percent}%", f"{percent}%"]
        self.console.err(f"\r\x1b[2K{_fit(candidates, width)}", end="")

    def _summary(self, progress: PullProgress) -> None:
        """The line that ends the chunks phase: what was downloaded, and what was already here."""
        if not progress.chunks_total:
            if self.terminal and self.console.partial:
                self.console.err("\r\x1b[2K", end="")
            return  # an empty model: nothing to show
        total = progress.bytes_total
        downloaded = min(progress.bytes_downloaded, total)
        chunks = _plural(progress.chunks_total, "chunk")
        if downloaded >= total:
            line = f"Downloaded {chunks} ({_format_size(total)})"
        elif not downloaded:
            line = f"Reused {chunks} ({_format_size(total)}) already on this disk; nothing downloaded"
        else:
            line = (f"Downloaded {_format_size(downloaded)}, reused {_format_size(total - downloaded)} "
                    f"already on this disk ({chunks})")
        if self.terminal:
            line = f"\r\x1b[2K{_fit([line, line.split(';')[0], line.split(' (')[0]], _terminal_width(sys.stderr))}"
        self.console.err(line)

    def finish(self) -> None:
        """The pull returned: close whatever line is open."""
        if not self.enabled or not self.phase:
            return
        if self.phase == "chunks" and self.last is not None:
            self._summary(self.last)
            self.console.err(f"{self.writing}... ", end="")
        self.console.err("done")
        self.phase = ""

    def abort(self) -> None:
        """The pull failed: end an open line so the error starts on its own."""
        if self.enabled and self.phase:
            self.console.err("")
            self.phase = ""


def _ref_fields(ref: ModelRef) -> dict[str, str]:
    return {"group": ref.group, "model": ref.model, "version": ref.version}


def _pinned_ref(ref: ModelRef, manifest_hash: str) -> str:
    """``group/model version@<sha256>``: what ``pull`` takes to get exactly this manifest."""
    return f"{ref.group}/{ref.model} {ref.version}@{manifest_hash}"


def _installed_json(item: InstalledModel) -> dict[str, Any]:
    return {
        **_ref_fields(item.ref),
        "manifest_hash": item.manifest_hash,
        "pinned_ref": _pinned_ref(item.ref, item.manifest_hash),
        "total_size": item.total_size,
        "file_count": item.file_count,
        "installed_at": _format_time(item.installed_at),
        "path": item.path,
        "alias_of": item.alias_of,
        "registry_url": item.registry_url,
        "pinned": item.pinned,
    }


def _remote_json(item: RemoteModel) -> dict[str, Any]:
    doc: dict[str, Any] = {
        **_ref_fields(item.ref),
        "manifest_hash": item.manifest_hash,
        "pinned_ref": _pinned_ref(item.ref, item.manifest_hash),
        "alias_of": item.alias_of,
        "metadata": dict(item.metadata),
    }
    if isinstance(item, RemoteModelDetail):
        doc.update(
            total_size=item.total_size, chunk_size=item.chunk_size, chunk_count=item.chunk_count,
            file_count=len(item.files),
        )
    return doc


def _files_json(files: Sequence[FileInfo]) -> list[dict[str, Any]]:
    return [{"path": info.path, "size": info.size} for info in files]


def _local_time(moment: datetime, with_time: bool) -> str:
    if moment == _UNKNOWN_TIME:
        return "unknown"
    try:
        moment = moment.astimezone()
    except (OverflowError, ValueError, OSError):  # Go's zero time, 0001-01-01T00:00:00Z, west of Greenwich
        pass  # (Windows converts no time before 1970 to local time: OSError)
    date = f"{moment.year:04d}-{moment:%m-%d}"  # %Y drops leading zeros on some platforms
    return f"{date} {moment:%H:%M:%S}" if with_time else date


def _version_label(ref: ModelRef, alias_of: str) -> str:
    return f"{ref.version} -> {alias_of}" if alias_of else ref.version


def _ref_text(args: argparse.Namespace) -> str:
    """The ref a command line gave: ``GROUP/MODEL [VERSION]``, or both as one word."""
    return f"{args.models_ref} {args.models_version}".strip()


def _command_list(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    if args.models_remote:
        remote = manager.list_remote(detail=True)
        if console.json:
            console.document({"models": (_remote_json(item) for item in remote)})
        elif not remote:
            console.out("The registry lists no models")
        else:
            rows = [
                [item.ref.group, item.ref.model, _version_label(item.ref, item.alias_of),
                 _format_size(item.total_size if isinstance(item, RemoteModelDetail) else 0)]
                for item in remote
            ]
            for line in _table(["GROUP", "MODEL", "VERSION", "SIZE"], rows):
                console.out(line)
        return 0
    installed = manager.list_installed()
    if console.json:
        console.document({"models": (_installed_json(item) for item in installed)})
    elif not installed:
        console.out("No models installed")
    else:
        rows = [
            [item.ref.group, item.ref.model, _version_label(item.ref, item.alias_of),
             _format_size(item.total_size), _local_time(item.installed_at, False)]
            for item in installed
        ]
        for line in _table(["GROUP", "MODEL", "VERSION", "SIZE", "INSTALLED"], rows):
            console.out(line)
    return 0


def _pull_one(manager: Manager, ref: ModelRef, console: _Console, args: argparse.Namespace,
              *, force: bool = False, keep_pinned: bool = False) -> InstalledModel:
    printer = _ProgressPrinter(console)
    try:
        installed = manager._pull(ref, force=force, concurrency=args.models_concurrency, progress=printer,
                                  limit_rate=args.models_limit_rate, keep_pinned=keep_pinned)
    except BaseException:
        printer.abort()
        raise
    printer.finish()
    return installed


def _command_pull(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    ref = _versioned(_ref_text(args), "pull", pinned=True)  # "g/m v" also comes as one word; "v@<sha256>" pins
    try:
        installed = _pull_one(manager, ref, console, args, force=args.models_force)
    except AlreadyInstalledError as exc:
        if console.json:
            console.document({"status": "already_installed", "model": _installed_json(exc.installed)})
        else:
            console.out(f"Model already installed: {ref}")
            console.out("Use --force to install it again (its chunks on this disk are hashed again and reused)")
        return 0
    if console.json:
        console.document({"status": "installed", "model": _installed_json(installed)})
    else:
        console.out(f"Model installed: {ref} ({_format_size(installed.total_size)})")
        console.out(f"Path: {installed.path}")
    return 0


def _command_remove(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    base = _as_ref(_ref_text(args))
    if args.models_all == bool(base.version):
        raise InvalidRefError("remove: give either a version or --all")
    if args.models_all:
        removed = manager.remove_all(base.group, base.model)
    else:
        removed = [base]
        manager.remove(base)
    if console.json:
        console.document({"removed": [_ref_fields(ref) for ref in removed]})
        return 0
    for ref in removed:
        console.out(f"Removed: {ref}")
    if args.models_all:
        console.out(f"Removed {len(removed)} version{'s' if len(removed) != 1 else ''}")
    return 0


def _command_info(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    ref = _versioned(_ref_text(args), "info")
    installed: InstalledModel | None = None
    files: list[FileInfo] = []
    try:
        installed = manager.get_installed(ref)
        files = manager.files(ref)
    except NotInstalledError as exc:
        if not args.models_remote:
            raise NotInstalledError(f"{exc} (use --remote to see the registry's copy)") from exc
    remote = manager.get_remote_detail(ref) if args.models_remote else None
    if console.json:
        console.document({
            **_ref_fields(ref),
            "installed": {**_installed_json(installed), "files": _files_json(files)} if installed else None,
            "remote": {**_remote_json(remote), "files": _files_json(remote.files)} if remote else None,
        })
        return 0
    alias_of = (remote.alias_of if remote else installed.alias_of if installed else "")
    lines = [("Model", f"{ref}" + (f" (alias of {alias_of})" if alias_of else ""))]
    if installed is not None:
        status = "Installed, pinned" if installed.pinned else "Installed"
        if remote is not None and remote.manifest_hash != installed.manifest_hash:
            status += " (update available)"
        lines += [("Status", status), ("Size", _format_size(installed.total_size)),
                  ("Files", str(installed.file_count)),
                  ("Installed", _local_time(installed.installed_at, True)), ("Path", installed.path),
                  ("Registry", installed.registry_url or "unknown"),
                  ("Pin", _pinned_ref(installed.ref, installed.manifest_hash))]
    else:
        assert remote is not None
        lines += [("Status", "Available (not installed)"), ("Size", _format_size(remote.total_size)),
                  ("Pin", _pinned_ref(ref, remote.manifest_hash))]
    if remote is not None:
        chunks = f"{remote.chunk_count} \u00d7 {_format_size(remote.chunk_size)}" if remote.chunk_count else "0"
        lines.append(("Chunks", chunks))
        if installed is None:
            lines.append(("Files", str(len(remote.files))))
    for label, value in lines:
        console.out(f"{label + ':':<14}{value}")
    shown = files or (list(remote.files) if remote else [])
    if shown:
        console.out()
        console.out("Files:")
        paths = [_printable(info.path) for info in shown]
        width = max(len(path) for path in paths)
        for path, info in zip(paths, shown):
            console.out(f"  {path:<{width}}    {_format_size(info.size)}")
    if remote is not None and remote.metadata:
        import json

        console.out()
        console.out("Metadata:")
        for key in sorted(remote.metadata):
            value = remote.metadata[key]
            console.out(f"  {_printable(key)}: {_printable(value) if isinstance(value, str) else json.dumps(value)}")
    return 0


def _printable(text: str) -> str:
    """``text`` with its control characters (C0, DEL, C1) shown as escapes: a registry's
    metadata reaches a terminal, where ESC and CSI would be commands, not text."""
    return re.sub("[\x00-\x1f\x7f-\x9f]", lambda found: f"\\x{ord(found.group()):02x}", text)


def _command_path(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    path = manager.path(_versioned(_ref_text(args), "path"))
    if console.json:
        console.document({"path": path})
    else:
        console.out(path)
    return 0


def _update_label(installed: InstalledModel, remote: RemoteModel) -> str:
    old = installed.alias_of or installed.ref.version
    new = remote.alias_of or remote.ref.version
    if old == new:  # the same name now holds other bytes: show the manifests
        old, new = installed.manifest_hash[:12], remote.manifest_hash[:12]
    return f"{old} \u2192 {new}"


def _command_update(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    installed = manager.list_installed()
    if args.models_ref:
        base = _as_ref(_ref_text(args))
        installed = [item for item in installed if (item.ref.group, item.ref.model) == (base.group, base.model)
                     and base.version in ("", item.ref.version)]
        if not installed:
            raise NotInstalledError(f"model not installed: {base}")
    if not installed:
        if console.json:
            console.document({"updates": []})
        else:
            console.out("No models installed")
        return 0
    if not manager.config.registry_url and not all(item.registry_url for item in installed):
        raise RegistryError("update: no registry URL is configured")  # _run_command says how to give one
    if not console.json:
        console.out("Checking for updates...")
        console.out()
    exit_code = 0
    results = []
    with manager._registries.one_index_each():  # each registry's models.json once, for the checks and the pulls
        for item in installed:
            result = _update_one(manager, item, args, console)
            results.append(result)
            if result["error"] is not None:
                exit_code = exit_code or result["error"]["exit_code"] or 1
    if console.json:
        console.document({"updates": results})
    return exit_code


def _update_one(manager: Manager, item: InstalledModel, args: argparse.Namespace,
                console: _Console) -> dict[str, Any]:
    """Check ``item`` (the configured registry first, then the one it came from), and with
    ``--apply`` pull the update; its ``update --json`` entry."""
    result: dict[str, Any] = {
        **_ref_fields(item.ref), "installed_hash": item.manifest_hash, "installed_alias_of": item.alias_of,
        "remote_hash": None, "remote_alias_of": None, "update_available": False, "applied": False,
        "registry_url": None, "installed_registry_url": item.registry_url, "source_changed": False, "error": None,
        "pinned": item.pinned,
    }
    if item.pinned:  # held at its pin: not even checked, so a registry that is down costs nothing
        if not console.json:
            console.out(f"{item.ref}: pinned to {item.manifest_hash[:12]}, not checked "
                        f"(pull {item.ref} without a pin to follow the registry again)")
        return result
    try:
        client, remote = manager._registries.resolve(item.ref)
        moved = bool(item.registry_url) and (not _recordable(item.registry_url)  # recorded anew with --apply
                                             or _registry_key(item.registry_url) != _registry_key(client.origin))
        result.update(remote_hash=remote.manifest_hash, remote_alias_of=remote.alias_of,
                      registry_url=client.origin, source_changed=moved)
        note = f"; source: {item.registry_url} \u2192 {client.origin}" if moved else ""
        if remote.manifest_hash == item.manifest_hash:
            if moved and args.models_apply:  # the same bytes, from the registry that now serves them
                manager._registries.record_source(item, client.origin)
                note += " (recorded)"
            if not console.json:
                console.out(f"{item.ref}: up to date{note}")
            return result
        result["update_available"] = True
        if not console.json:
            console.out(f"{item.ref}: update available ({_update_label(item, remote)}){note}")
        if args.models_apply:
            if not console.json:
                console.out(f"Downloading update for {item.ref}...")
            try:
                updated = _pull_one(manager, item.ref, console, args, keep_pinned=True)
            except AlreadyInstalledError as exc:
                updated = exc.installed  # another process applied it meanwhile, or pinned it
            if updated.pinned and updated.manifest_hash != remote.manifest_hash:
                result["pinned"] = True
                if not console.json:
                    console.out(f"{item.ref}: pinned meanwhile (to {updated.manifest_hash[:12]}), not updated")
                return result
            result["applied"] = True
            if not console.json:
                console.out(f"Updated: {item.ref} ({_format_size(updated.total_size)})")
    except ModelsError as exc:
        result["error"] = {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}
        message = re.sub(rf"^\w+ {re.escape(str(item.ref))}: ", "", _with_hints(exc, manager.config, console))
        if not manager.config.registry_url and item.registry_url and isinstance(exc, (NetworkError, RegistryError)):
            how = console.registry_hint or f"configure {manager.config.app_name}'s registry URL"
            if _recordable(item.registry_url):  # else _with_hints says how to give one
                message += f"\nhint: if the registry moved from {item.registry_url}, {how}: the new one is asked first"
        console.err(f"error: {item.ref}: {message}")  # said once: "pull g/m v: needs ..." names it too
    return result


def _command_verify(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    # A repair fetches from the configured registry, else from the one each model came from.
    if args.models_ref:
        refs = [_as_ref(_ref_text(args))]
        if not refs[0].version:
            raise InvalidRefError("verify: give a version too ('verify group/model version'), or no model at all")
    else:
        refs = [item.ref for item in manager.list_installed()]
        if not refs:
            if console.json:
                console.document({"results": []})
            else:
                console.out("No models installed")
            return 0
    exit_code = 0
    results = []
    with manager._registries.one_index_each():  # a repair asks each registry for models.json once
        for ref in refs:
            printer = _ProgressPrinter(console, "Rewriting damaged files") if args.models_repair else None
            try:
                result = manager.verify(ref, repair=args.models_repair, concurrency=args.models_concurrency,
                                        progress=printer, limit_rate=args.models_limit_rate)
            except BaseException:
                if printer is not None:
                    printer.abort()
                raise
            if printer is not None and printer.phase:
                printer.finish()
            files = list(result.repaired if args.models_repair else result.damaged)
            sharing = [] if args.models_repair else list(result.sharing_damaged_chunk)
            damaged = [] if args.models_repair else files
            results.append({**_ref_fields(ref), "damaged": damaged, "sharing_damaged_chunk": sharing,
                            "repaired": files if args.models_repair else []})
            if damaged or sharing:
                exit_code = HashMismatchError.exit_code
            if console.json:
                continue
            if not files and not sharing:
                console.out(f"{ref}: ok")
                continue
            if files:
                verb = "repaired" if args.models_repair else "damaged or missing"
                console.out(f"{ref}: {_plural(len(files), 'file')} {verb}")
                for path in files:
                    console.out(f"  {_printable(path)}")
            if sharing:
                console.out(f"{ref}: {_plural(len(sharing), 'file')} sharing a damaged chunk (perhaps intact: "
                            "the chunk's hash cannot say which of its files holds the damage)")
                for path in sharing:
                    console.out(f"  {_printable(path)}")
            if not args.models_repair:
                console.out(f"To repair it: {console.prog} verify {ref} --repair")
    if console.json:
        console.document({"results": results})
    return exit_code


def _export_refs(words: Sequence[str]) -> list[ModelRef]:
    """``org/a v1 org/b "org/c v2" org/d``: a word with a slash starts a ref, a word after it
    without one is its version; a ref without a version is every installed version."""
    refs: list[ModelRef] = []
    for word in " ".join(words).split():
        if "/" in word:
            refs.append(_as_ref(word))
        elif refs and not refs[-1].version:
            refs[-1] = _as_ref(f"{refs[-1]} {word}")
        else:
            raise InvalidRefError(f"export: {word!r} is neither a group/model nor the version of one before it")
    return refs


def _command_export(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    directory = os.path.abspath(os.path.expanduser(args.models_to))
    exported = manager.export(_export_refs(args.models_refs), directory)
    if console.json:
        console.document({"directory": directory, "exported": [_installed_json(item) for item in exported]})
        return 0
    for item in exported:
        console.out(f"Exported: {item.ref} ({_format_size(item.total_size)})")
    console.out(f"Registry: {directory} (a registry directory: give it as the registry URL to pull from it)")
    return 0


def _command_prune(manager: Manager, args: argparse.Namespace, console: _Console) -> int:
    freed = manager.prune_cache()
    if console.json:
        console.document({"freed_bytes": freed})
    else:
        console.out(f"Freed {_format_size(freed)}" if freed else "Nothing to prune")
    return 0


def _rate(text: str) -> float:
    """``500K`` (500,000), ``2M``, ``1.5G``, ``2MB/s`` or plain bytes per second; decimal units, as
    sizes are shown, and binary ones when asked for by name: ``512KiB`` (524,288), ``2MiB``, ``1GiB``."""
    import argparse

    match = re.fullmatch(r"(?i)\s*(\d+(?:\.\d+)?)\s*(?:([kmg])(i?))?b?(?:/s)?\s*", text)
    value = 0.0
    if match:
        prefix, binary = (match.group(2) or "").lower(), match.group(3)
        value = float(match.group(1)) * (1024 if binary else 1000) ** " kmg".index(prefix or " ")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a rate like 500K (500,000 bytes/s), 2M or 2MiB, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _add_output_flags(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    import argparse

    # On subcommands the default is SUPPRESS, so a flag given before the
    # command word is not reset by the subparser's default.
    default: Any = False if top_level else argparse.SUPPRESS
    group = parser.add_argument_group("output options")
    group.add_argument("--json", dest="models_json", action="store_true", default=default,
                       help="print one JSON document on stdout")
    group.add_argument("--quiet", "-q", dest="models_quiet", action="store_true", default=default,
                       help="no progress or warnings")
    group.add_argument("--verbose", "-v", dest="models_verbose", action="store_true", default=default,
                       help="log requests, retries and chunks reused on stderr")


def _with_hints(exc: ModelsError, config: Config, console: _Console) -> str:
    """The error's message, and what the user can do about it on this command line."""
    message = str(exc)
    url = config.registry_url
    if isinstance(exc, RegistryError) and not url and "no registry URL is configured" in message:
        # Only the parent tool knows how its users set a registry: embedded, stay neutral.
        hint = console.registry_hint
        return f"no registry URL is configured{': ' + hint if hint else f' for {config.app_name}'}"
    if isinstance(exc, RegistryError) and not url and "so it is not asked" in message and console.registry_hint:
        message += f"\nhint: {console.registry_hint}"  # a recorded registry no install records
    if isinstance(exc, ModelNotFoundError) and url:
        message += f"; '{console.prog} list --remote' shows what the registry has"
    colon = re.search(r"'([^'\s/:]+/[^'\s/:]+):([^'\s/:]+)'", message) if isinstance(exc, InvalidRefError) else None
    if colon:  # the docker and ollama habit
        message += f"\nhint: the version is a word of its own: {colon[1]} {colon[2]}"
    if (isinstance(exc, (RegistryError, NetworkError, ModelNotFoundError)) and url
            and not re.match(r"(?i)[a-z][a-z0-9+.-]*://", url) and not os.path.isdir(os.path.expanduser(url))):
        message += f"\nhint: {url} is not a directory; if it is a server, write http://{url}"
    if isinstance(exc, NetworkError) and console.downloading:
        message += "\nthe verified chunks are kept: run the same command again to resume"
    return message


def _run_command(
    handler: Callable[[Manager, argparse.Namespace, _Console], int],
    configure: Callable[[argparse.Namespace], tuple[Config, Mapping[str, Any]]],
    prog: str,
    usage: Callable[[], str],
    registry_hint: str,
    args: argparse.Namespace,
) -> int:
    """Run ``handler`` as command ``prog`` ("mytool models pull"); ``usage`` is its usage text and
    ``configure`` gives the Config and Manager options for the parsed arguments."""
    config, manager_options = configure(args)
    console = _Console(args, prog.rsplit(" ", 1)[0])
    console.registry_hint = registry_hint
    try:
        try:
            return handler(Manager(config, **{"logger": console, **manager_options}), args, console)
        finally:
            console.close()
    except ModelsError as exc:
        code = exc.exit_code
        message = _with_hints(exc, config, console)
        try:
            if console.json:
                console.document({"error": {"type": type(exc).__name__, "message": message, "exit_code": code}})
            if code == 2:  # a usage error found after parsing: show the usage, as argparse does
                console.err(usage().rstrip())
            console.err(f"error: {message}")
        except BrokenPipeError:
            _silence_stdout()
        except StorageError:
            pass  # stderr itself cannot be written: the exit code is all that is left
        return code
    except KeyboardInterrupt:
        resume = ": run the same command again to resume (verified chunks are kept)" if console.downloading else ""
        console.err(f"interrupted{resume}")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """The reader went away (``| head``): stop quietly, and keep Python from
    complaining when it flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# Every option and positional stores under a models_ name, so a parent tool's own
# --model, --force or --json is never overwritten by ours.


def _ref_arguments(parser: argparse.ArgumentParser,
                   version_help: str = "for example fp16, or an alias; needed, here or in one word with GROUP/MODEL "
                                       "('fast-whisper/tiny fp16')") -> None:
    # argparse takes VERSION as optional (usage: [VERSION]): "group/model version" may come as one word.
    parser.add_argument("models_ref", metavar="GROUP/MODEL", help="for example fast-whisper/tiny")
    parser.add_argument("models_version", metavar="VERSION", nargs="?", default="", help=version_help)


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", dest="models_concurrency", type=_positive_int, default=4, metavar="N",
                        help="parallel chunk downloads (default 4, at most 16)")
    parser.add_argument("--limit-rate", dest="models_limit_rate", type=_rate, default=None, metavar="RATE",
                        help="cap the download rate in bytes per second: 500K is 500,000, 2M is 2,000,000 "
                        "(2MiB is 2 x 1024 x 1024)")


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", dest="models_remote", action="store_true", help="list what the registry offers")


def _pull_arguments(parser: argparse.ArgumentParser) -> None:
    _ref_arguments(parser)
    parser.epilog = ("VERSION@<sha256> pins the manifest: exactly those bytes are installed,\n"
                     "whatever the registry lists now ('info' shows an installed version's pin)")
    parser.add_argument("--force", dest="models_force", action="store_true", help="install again even if installed")
    _download_arguments(parser)


def _remove_arguments(parser: argparse.ArgumentParser) -> None:
    _ref_arguments(parser, "for example fp16, or an alias; or --all")
    parser.add_argument("--all", dest="models_all", action="store_true",
                        help="remove every installed version of the model")


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    _ref_arguments(parser)
    parser.add_argument("--remote", dest="models_remote", action="store_true", help="also show the registry's copy")


def _update_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models_ref", metavar="GROUP/MODEL", nargs="?", default="",
                        help="check only this model (default: every installed one)")
    parser.add_argument("models_version", metavar="VERSION", nargs="?", default="",
                        help="check only this version of it")
    parser.add_argument("--apply", dest="models_apply", action="store_true", help="download the updates")
    _download_arguments(parser)


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models_ref", metavar="GROUP/MODEL", nargs="?", default="",
                        help="verify only this model version (default: every installed one)")
    parser.add_argument("models_version", metavar="VERSION", nargs="?", default="",
                        help="for example fp16, or an alias (required with GROUP/MODEL)")
    parser.add_argument("--repair", dest="models_repair", action="store_true",
                        help="fetch and rewrite only what is damaged")
    _download_arguments(parser)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models_refs", metavar="GROUP/MODEL [VERSION]", nargs="+",
                        help="installed versions, e.g. acme/whisper v3 acme/whisper latest; "
                        "a model without a version: every installed version of it")
    parser.add_argument("--to", dest="models_to", metavar="DIR", required=True,
                        help="the registry directory to write (an earlier export is merged into)")


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    pass  # prune takes none


# The commands, in the order help lists them: (name, summary, handler, arguments).
# register_subcommands and main both build their parsers from this table alone.
_COMMAND_TABLE: tuple[tuple[str, str, Callable[[Manager, argparse.Namespace, _Console], int],
                            Callable[[argparse.ArgumentParser], None]], ...] = (
    ("list", "list installed models (or the registry's, with --remote)", _command_list, _list_arguments),
    ("pull", "download and install a model version", _command_pull, _pull_arguments),
    ("remove", "remove an installed model version", _command_remove, _remove_arguments),
    ("info", "show details of a model version", _command_info, _info_arguments),
    ("path", "print the directory of an installed model version", _command_path, _ref_arguments),
    ("update", "check installed models for updates", _command_update, _update_arguments),
    ("verify", "re-hash installed files; --repair fixes what is damaged", _command_verify, _verify_arguments),
    ("prune", "delete what failed pulls left, and empty model directories", _command_prune, _prune_arguments),
    ("export", "write installed versions as a registry directory, to pull from with no network",
     _command_export, _export_arguments),
)


def register_subcommands(
    subparsers: argparse._SubParsersAction[Any], config: Config, **manager_options: Any
) -> None:
    """Add ``list``, ``pull``, ``remove``, ``info``, ``path``, ``update``, ``verify``, ``prune``
    and ``export`` to a parent's subparsers.

    Each command sets ``func(args) -> int`` on the parsed namespace; it returns
    the exit code and never raises ``ModelsError`` or calls ``sys.exit``.

    Args:
        subparsers: what ``parser.add_subparsers()`` returned.
        config: the application's name and registry.
        **manager_options: passed to ``Manager`` (``headers``, ``timeout``, ``retries``,
            ``opener``...), and so used for every registry a command reaches: the
            configured one and those that installed models came from.
    """
    _register(subparsers, lambda args: (config, manager_options))


def _register(
    subparsers: argparse._SubParsersAction[Any],
    configure: Callable[[argparse.Namespace], tuple[Config, Mapping[str, Any]]],
    *,
    registry_hint: str = "",
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Add every command of the table to ``subparsers``. ``configure`` gives the Config and
    Manager options for the parsed arguments; main also passes how its users give a
    registry, and ``extra`` options each command takes."""
    for name, summary, handler, arguments in _COMMAND_TABLE:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=summary, description=summary)
        parser.set_defaults(func=partial(_run_command, handler, configure, parser.prog, parser.format_usage,
                                         registry_hint))
        _add_output_flags(parser, top_level=False)
        if extra is not None:
            extra(parser)
        arguments(parser)


def _header_option(text: str) -> tuple[str, str]:
    """One ``--header 'Name: value'``, checked; the error never quotes the value (a secret)."""
    import argparse

    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError("takes 'Name: value', for example 'Authorization: Bearer TOKEN'")
    try:
        ((name, value),) = _check_headers({name.strip(): value.strip()}).items()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xprim-models`` command line; return its exit code (never raises ``SystemExit``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = arguments[:arguments.index("--")] if "--" in arguments else arguments
    try:
        args = _main_parser(json_errors="--json" in options).parse_args(arguments)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    result: int = args.func(args)
    return result


def _configure(args: argparse.Namespace) -> tuple[Config, dict[str, Any]]:
    """main's Config and Manager options, from --registry, --data-dir and --header wherever they were."""
    config = Config("xprim-models", args.models_registry or os.environ.get("XPRIM_MODELS_REGISTRY_URL", ""))
    options: dict[str, Any] = {"data_dir": args.models_data_dir} if args.models_data_dir else {}
    if getattr(args, "models_header", None):
        options["headers"] = dict(args.models_header)
    return config, options


def _usage_error_document(message: str) -> None:
    """The README's JSON error document, on stdout, for a command line argparse rejects."""
    import argparse

    try:
        _Console(argparse.Namespace(models_json=True)).document(
            {"error": {"type": "UsageError", "message": message, "exit_code": 2}})
    except BrokenPipeError:
        _silence_stdout()
    except StorageError:
        pass  # stdout cannot be written: stderr and the exit code still say it


def _main_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    """main's parser; with ``json_errors`` (--json was given), a usage error also prints a JSON
    document on stdout, as every other error does."""
    import argparse

    columns = os.environ.get("COLUMNS", "")
    width = (int(columns) if columns.isdigit() else _terminal_width(sys.stdout)) - 2

    class Parser(argparse.ArgumentParser):
        """argparse's, with help sized once, without importing shutil: argparse would size it
        again for every argument it checks (start-up time). The command parsers are of this class too."""

        def _get_formatter(self) -> argparse.HelpFormatter:
            return argparse.RawDescriptionHelpFormatter(self.prog, width=width)

        def error(self, message: str) -> NoReturn:
            if json_errors:
                _usage_error_document(message)
            super().error(message)

    def global_options(parser: argparse.ArgumentParser, *, after_command: bool = False) -> None:
        # Also accepted after the command word, but listed once.
        hidden: Any = argparse.SUPPRESS if after_command else None
        parser.add_argument("--registry", dest="models_registry", metavar="URL", default=hidden,
                            help=hidden or "registry URL or directory (default: $XPRIM_MODELS_REGISTRY_URL)")
        parser.add_argument("--data-dir", dest="models_data_dir", metavar="DIR", default=hidden,
                            help=hidden or "where models live (default: $XPRIM_MODELS_MODELS_DIR, else the platform's)")
        parser.add_argument("--header", dest="models_header", metavar="'NAME: VALUE'", action="append",
                            type=_header_option, default=hidden,
                            help=hidden or "send this header with every registry request, "
                            "like curl -H (repeatable; e.g. 'Authorization: Bearer TOKEN')")

    parser = Parser(
        prog="xprim-models", description="Download and manage models from an XPRIM registry.",
        epilog=(
            "examples:\n"
            "  xprim-models --registry https://models.example.com pull fast-whisper/tiny fp16\n"
            "  xprim-models list\n"
            "  xprim-models path fast-whisper/tiny fp16\n"
            "  xprim-models --registry https://models.example.com update --apply"
        ),
    )
    global_options(parser)
    parser.add_argument("--version", action="version", version=f"xprim-models {__version__}")
    _add_output_flags(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register(commands, _configure, registry_hint="give --registry URL, or set XPRIM_MODELS_REGISTRY_URL",
              extra=lambda command: global_options(command, after_command=True))
    return parser


if __name__ == "__main__":
    sys.exit(main())
