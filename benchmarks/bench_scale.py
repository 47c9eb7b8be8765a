"""Benchmark ``xprim_models list --remote`` over a large index on a loopback nginx.

The target: ``list --remote`` over an index of 10,000 versions takes under a
second once manifests are cached. This script builds a registry of
``--versions`` versions (``--per-model`` versions of each model, the models
spread over a few groups, each version a distinct one-file manifest, plus
``--aliases`` aliases named ``latest``), keeps it under ``--work`` for later
invocations with the same shape, serves it with a private nginx on 127.0.0.1,
and runs the client as a user would:

    python xprim_models.py --registry URL --data-dir DIR list --remote

first cold (``--cold`` times, each on a fresh data directory: the index and
every manifest come over HTTP and are written to the manifest cache), then
``--repeat`` times warm on the last cold run's data directory (the index over
HTTP, the manifests from the cache), then once more warm with ``--json``. It
prints a table of wall time, versions listed, peak RSS, HTTP requests and TCP
connections for each phase, with the interpreter's start-up
(``xprim_models.py --version``) as the floor.

    python3 benchmarks/bench_scale.py                          # 10,000 versions, data dir on /dev/shm
    python3 benchmarks/bench_scale.py --versions 1000 --repeat 2   # a quick check
    python3 benchmarks/bench_scale.py --out /var/tmp           # data dir on disk (the cold run fsyncs)
    python3 benchmarks/bench_scale.py --cold 3 --json results.json

What is measured, per run:

* wall time of the whole command, from spawn to exit (taken by a launcher):
  Python start-up, fetching and validating models.json, reading (cold:
  fetching, validating and caching) every manifest, and printing the table;
* versions listed: every run's output is parsed and must name exactly the
  versions and aliases published (and, for ``--json``, their manifest hashes,
  alias targets and sizes), else the script fails;
* peak RSS: ``ru_maxrss`` from ``os.wait4`` on the command, spawned by a
  minimal ``python -I -S`` launcher (see ``benchmarks/bench_pull.py``: Linux
  carries a parent's peak RSS through fork and exec); the launcher's own peak
  is the floor, printed under the table;
* HTTP requests and TCP connections: lines, and distinct ``$connection``
  serial numbers, that nginx appended to its access log during the run (the
  fallback Python server counts connections only).

``sync`` is called between runs, outside the timing; the registry is read once
before the first run so nginx finds it in the page cache. The server comes from
``bench_pull.start_server`` (nginx, installed with apt-get if missing, else a
threaded Python server with a warning).

Standard library only; Linux is the target (``/proc``, ``os.wait4``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pull  # a sibling script, found through the line above

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "xprim_models.py")
GROUPS = ("audio", "speech", "text", "vision")
ALIAS = "latest"  # points at the last version of a model
FILE_NAME = "config.json"  # the one file of every version
CHUNK_SIZE = 10 << 20  # publish.py's default; every model here is a single short chunk
TARGET_SECONDS = 1.0  # the goal for a warm `list --remote` of 10,000 versions
log = bench_pull.log


# --- Registry ------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Row:
    """One line of ``list --remote``: a version, or an alias with its target's manifest."""

    group: str
    model: str
    version: str
    manifest_hash: str
    alias_of: str
    total_size: int


@dataclass
class Registry:
    root: str
    versions: int
    aliases: int
    manifests: int  # distinct manifests, which a cold run fetches and caches
    expected: list[Row]  # what `list --remote` must print, in its order


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(content: bytes) -> bytes:
    """The manifest publish.py writes for one file whose bytes fit in one chunk."""
    manifest = {"total_size": len(content), "chunk_size": CHUNK_SIZE, "chunks": [sha256(content)],
                "files": [{"path": FILE_NAME, "size": len(content)}]}
    return json.dumps(manifest, indent=1).encode("utf-8")


def plan(versions: int, per_model: int, aliases: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The models.json document and the ``data/`` blobs (digest → bytes) of the registry."""
    models = -(-versions // per_model)
    width = max(4, len(str(models - 1)))
    index: dict[str, Any] = {}
    blobs: dict[str, bytes] = {}
    names: list[tuple[str, str, str]] = []  # group, model, last version
    for number in range(models):
        group = GROUPS[number * len(GROUPS) // models]
        model = f"model-{number:0{width}d}"
        entries: dict[str, Any] = index.setdefault(group, {}).setdefault(model, {})
        count = min(per_model, versions - number * per_model)
        for step in range(1, count + 1):
            version = f"v{step}"
            content = json.dumps({"model": f"{group}/{model}", "version": version}).encode("utf-8") + b"\n"
            manifest = manifest_bytes(content)
            digest = sha256(manifest)
            blobs[sha256(content)] = content
            blobs[digest] = manifest
            entries[version] = {"hash": digest}
        names.append((group, model, f"v{count}"))
    for slot in range(min(aliases, models)):
        group, model, last = names[slot * models // min(aliases, models)]
        index[group][model][ALIAS] = {"alias": last}
    return index, blobs


def expected_rows(index: dict[str, Any], blobs: dict[str, bytes]) -> list[Row]:
    rows: list[Row] = []
    for group, models in index.items():
        for model, entries in models.items():
            for version, entry in entries.items():
                target = entry.get("alias", "")
                digest = entries[target]["hash"] if target else entry["hash"]
                size = json.loads(blobs[digest])["total_size"]
                rows.append(Row(group, model, version, digest, target, size))
    return sorted(rows)


def index_text(index: dict[str, Any]) -> str:
    return json.dumps(index, indent=2, sort_keys=True) + "\n"  # as publish.py's _save_index writes it


def check_publish_format(index: dict[str, Any], blobs: dict[str, bytes]) -> None:
    """Publish the first version with examples/publish.py and check it matches ours byte for byte."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from publish import publish  # type: ignore[import-not-found]

    group = min(index)
    model = min(index[group])
    version = "v1"
    digest = index[group][model][version]["hash"]
    content = blobs[json.loads(blobs[digest])["chunks"][0]]
    with tempfile.TemporaryDirectory(prefix="xprim-bench-publish-") as scratch:
        theirs = publish(scratch, group, model, version, [(FILE_NAME, content)], chunk_size=CHUNK_SIZE)
        with open(os.path.join(scratch, "models.json"), encoding="utf-8") as handle:
            their_index = handle.read()
    ours = index_text({group: {model: {version: index[group][model][version]}}})
    if theirs != digest or their_index != ours:
        raise RuntimeError(f"examples/publish.py now writes {group}/{model} {version} differently "
                           f"(manifest {theirs}, ours {digest}): update plan() in {__file__}")


def registry_intact(root: str, index: dict[str, Any], blobs: dict[str, bytes]) -> bool:
    try:
        with open(os.path.join(root, "models.json"), encoding="utf-8") as handle:
            if handle.read() != index_text(index):
                return False
        return set(os.listdir(os.path.join(root, "data"))) == set(blobs)
    except OSError:
        return False


def build_registry(work: str, versions: int, per_model: int, aliases: int) -> Registry:
    """Create (or reuse) ``<work>/scale-<versions>x<per_model>-<aliases>``."""
    root = os.path.join(work, f"scale-{versions}x{per_model}-{aliases}")
    index, blobs = plan(versions, per_model, aliases)
    expected = expected_rows(index, blobs)
    manifests = len({row.manifest_hash for row in expected})
    registry = Registry(root, versions, len(expected) - versions, manifests, expected)
    if registry_intact(root, index, blobs):
        log(f"reusing registry {root}")
        return registry
    log(f"building registry {root} ({versions} versions, {registry.aliases} aliases)...")
    started = time.perf_counter()
    check_publish_format(index, blobs)
    # Built beside its final place and renamed, so an interrupted build is never reused.
    # publish() rewrites models.json on every call; the blobs and the index are written once here.
    building = tempfile.mkdtemp(prefix=os.path.basename(root) + ".building-", dir=work)
    try:
        data = os.path.join(building, "data")
        os.makedirs(data)
        for digest, blob in blobs.items():
            with open(os.path.join(data, digest), "wb") as handle:
                handle.write(blob)
        with open(os.path.join(building, "models.json"), "w", encoding="utf-8") as handle:
            handle.write(index_text(index))
        os.chmod(building, 0o755)  # noqa: S103 - mkdtemp's 0700 would hide it from nginx workers
        shutil.rmtree(root, ignore_errors=True)
        os.rename(building, root)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    size = os.path.getsize(os.path.join(root, "models.json"))
    log(f"built in {time.perf_counter() - started:.1f}s: {len(blobs)} blobs, models.json {size / (1 << 20):.1f} MiB")
    return registry


# --- Runs ----------------------------------------------------------------------------


# Runs a command with its stdout in the file argv[1] and prints "exit-code seconds
# peak-RSS-KiB own-peak-RSS-KiB"; see bench_pull.LAUNCHER for why a small launcher.
LAUNCHER = """
import os, signal, sys, time
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
null = os.open(os.devnull, os.O_RDWR)
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1)]
started = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ, file_actions=actions)
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
print(os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss, own)
"""

PHASES = ("start-up", "cold", "warm", "warm --json")


@dataclass
class Run:
    phase: str
    repetition: int
    seconds: float
    peak_rss_kib: int
    requests: int | None  # None: the server does not count them
    connections: int
    listed: int  # rows of output that named a published version or alias


@dataclass
class Phase:
    key: str  # one of PHASES
    runs: list[Run] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, registry: Registry, server: bench_pull.Server, out: str) -> None:
        self.args, self.registry, self.server, self.out = args, registry, server, out
        self.data_dir = ""
        self.rss_floor_kib = 0
        self.manifests_cached = 0
        self.stderr_seen: set[str] = set()

    def command(self, phase: str) -> list[str]:
        base = [self.args.python, self.args.client]
        if phase == "start-up":
            return [*base, "--version"]
        listing = ["--registry", self.server.url, "--data-dir", self.data_dir, "list", "--remote"]
        return [*base, *listing, "--json"] if phase == "warm --json" else [*base, *listing]

    def run(self, phase: str, repetition: int) -> Run:
        if phase == "cold":  # a data directory with an empty manifest cache
            self.data_dir = os.path.join(self.out, f"data-{repetition}")
            shutil.rmtree(self.data_dir, ignore_errors=True)
        command = self.command(phase)
        stdout = os.path.join(self.out, "stdout")
        os.sync()
        mark = self.server.mark()
        returncode, output, stderr = bench_pull.launch(LAUNCHER, [stdout, *command])
        fields = output.split()
        if returncode != 0 or len(fields) != 4 or fields[0] != b"0":
            raise RuntimeError(f"{' '.join(command)} failed ({output!r}):\n{stderr}")
        if stderr and stderr not in self.stderr_seen:  # a warning is worth seeing, once
            self.stderr_seen.add(stderr)
            log(f"  {phase}: the client wrote on stderr:\n{stderr}")
        seconds, peak_rss_kib, self.rss_floor_kib = float(fields[1]), int(fields[2]), int(fields[3])
        connections = self.server.connections_since(mark)  # waits for nginx's log to settle
        requests = requests_since(self.server, mark)
        with open(stdout, encoding="utf-8") as handle:
            text = handle.read()
        listed = self.verify(phase, text)
        if phase == "cold":
            with contextlib.suppress(OSError):
                self.manifests_cached = len(os.listdir(os.path.join(self.data_dir, "cache", "manifests")))
        return Run(phase, repetition, seconds, peak_rss_kib, requests, connections, listed)

    def verify(self, phase: str, text: str) -> int:
        """Check the output lists every published version and alias; return how many rows it has."""
        expected = self.registry.expected
        if phase == "start-up":
            if not text.startswith("xprim-models "):
                raise RuntimeError(f"--version printed {text[:200]!r}")
            return 0
        if phase == "warm --json":
            try:
                models = json.loads(text)["models"]
                got = [Row(item["group"], item["model"], item["version"], item["manifest_hash"],
                           item["alias_of"], item["total_size"]) for item in models]
            except (ValueError, KeyError, TypeError) as exc:
                raise RuntimeError(f"list --remote --json printed no model list ({exc!r}): {text[:500]!r}") from exc
            bad = [item for item in models if item.get("file_count") != 1]
            if bad:
                raise RuntimeError(f"list --remote --json: {len(bad)} rows without file_count 1, e.g. {bad[0]}")
            want = expected
        else:
            lines = text.splitlines()
            if not lines or lines[0].split() != ["GROUP", "MODEL", "VERSION", "SIZE"]:
                raise RuntimeError(f"list --remote printed no table: {text[:500]!r}")
            got = []
            for line in lines[1:]:  # GROUP MODEL VERSION [-> TARGET] SIZE
                cells = [*line.split(), "", "", "", "", ""]
                alias_of = cells[4] if cells[3] == "->" else ""
                got.append(Row(cells[0], cells[1], cells[2], "", alias_of, 0))
            want = [Row(row.group, row.model, row.version, "", row.alias_of, 0) for row in expected]
        if got != want:
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            raise RuntimeError(
                f"{phase}: list --remote printed {len(got)} rows, expected {len(want)}; "
                f"{len(missing)} missing (first: {missing[:3]}), {len(extra)} unexpected (first: {extra[:3]})"
                + ("; same rows in another order" if not missing and not extra else "")
            )
        return len(got)


def requests_since(server: bench_pull.Server, mark: int) -> int | None:
    if not isinstance(server, bench_pull.Nginx):
        return None
    with open(server.access_log, "rb") as handle:
        handle.seek(mark)
        return sum(1 for line in handle if line.strip())


# --- Report --------------------------------------------------------------------------


def spread(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def table(phases: list[Phase], args: argparse.Namespace, bench: Bench) -> str:
    registry, server, out = bench.registry, bench.server, bench.out
    python = bench_pull.tool_version([args.python, "--version"], r"Python (\S+)")
    client = bench_pull.tool_version([args.python, args.client, "--version"], r"xprim-models (\S+)")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        f"machine: {bench_pull.cpu_model()}, {os.cpu_count()} cores, Python {python}, {server.description}; "
        f"load average {load}; data dir: {out} ({bench_pull.filesystem(out)})",
        f"registry: {registry.versions} versions ({args.per_model} per model, {len(GROUPS)} groups) "
        f"+ {registry.aliases} aliases, {registry.manifests} manifests; xprim-models {client}",
        f"{'phase':<13}{'runs':>5}{'median s':>10}{'min s':>8}{'max s':>8}{'listed':>8}{'peak RSS MiB':>14}"
        f"{'requests':>10}{'connections':>13}",
    ]
    for phase in phases:
        if not phase.runs:
            continue
        seconds = [run.seconds for run in phase.runs]
        requests = [run.requests for run in phase.runs if run.requests is not None]
        rss = max(run.peak_rss_kib for run in phase.runs) / 1024
        lines.append(
            f"{phase.key:<13}{len(seconds):>5}{statistics.median(seconds):>10.3f}{min(seconds):>8.3f}"
            f"{max(seconds):>8.3f}{spread([run.listed for run in phase.runs]):>8}{rss:>14.1f}"
            f"{spread(requests) if requests else '?':>10}{spread([run.connections for run in phase.runs]):>13}"
        )
    lines.append(f"(peak RSS cannot read below the launcher's own {bench.rss_floor_kib / 1024:.1f} MiB; "
                 f"the cold run left {bench.manifests_cached} manifests in the cache)")
    warm = next((phase for phase in phases if phase.key == "warm"), None)
    if warm and warm.runs:
        median = statistics.median(run.seconds for run in warm.runs)
        verdict = "under" if median < TARGET_SECONDS else "OVER"
        lines.append(f"warm median {median:.3f}s for {registry.versions} versions: {verdict} the "
                     f"{TARGET_SECONDS:g} s target")
    return "\n".join(lines)


# --- Main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=10_000, help="concrete versions in the index (default 10000)")
    parser.add_argument("--per-model", type=int, default=10, help="versions of each model (default 10)")
    parser.add_argument("--aliases", type=int, default=10,
                        help=f"models that also get a '{ALIAS}' alias, at most one per model (default 10)")
    parser.add_argument("--cold", type=int, default=1, help="cold runs, each on a fresh data directory (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="warm runs, and start-up runs (default 5)")
    parser.add_argument("--out", metavar="DIR",
                        help="where the client's data directories go; a temporary directory is made inside it "
                             "(default: under /dev/shm if it exists, else the system temp dir)")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    parser.add_argument("--work", metavar="DIR", default=os.path.join(cache, "xprim-models-bench"),
                        help="where registries are built and kept for reuse (default %(default)s)")
    parser.add_argument("--client", default=CLIENT, metavar="PATH",
                        help="the xprim_models.py to run (default: this checkout's)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the client (default: this one)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="also write raw results as JSON to FILE (or stdout)")
    args = parser.parse_args(argv)
    if args.versions < 1 or args.per_model < 1 or args.cold < 1 or args.repeat < 1 or args.aliases < 0:
        parser.error("--versions, --per-model, --cold and --repeat must be at least 1; --aliases at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so nginx and the scratch directories are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(args.work, exist_ok=True)
    registry = build_registry(args.work, args.versions, args.per_model, args.aliases)
    bench_pull.warm_page_cache(registry.root)
    server = bench_pull.start_server(registry.root)
    phases = [Phase(key) for key in PHASES]
    counts = {"start-up": args.repeat, "cold": args.cold, "warm": args.repeat, "warm --json": 1}
    try:
        with bench_pull.scratch(args.out) as out:
            bench = Bench(args, registry, server, out)
            log(f"serving {registry.root} at {server.url} ({server.description}); data directories in {out}")
            for phase in phases:
                for repetition in range(counts[phase.key]):
                    run = bench.run(phase.key, repetition)
                    phase.runs.append(run)
                    requests = "?" if run.requests is None else str(run.requests)
                    log(f"  {phase.key:<12} {repetition + 1}/{counts[phase.key]} {run.seconds:7.3f}s "
                        f"{run.peak_rss_kib / 1024:7.1f} MiB {run.listed:6d} listed {requests:>6} requests "
                        f"{run.connections:6d} connections")
            print(table(phases, args, bench), flush=True)
            if args.json:
                document = {
                    "versions": registry.versions, "per_model": args.per_model, "aliases": registry.aliases,
                    "manifests": registry.manifests, "manifests_cached": bench.manifests_cached,
                    "out": out, "out_filesystem": bench_pull.filesystem(out), "rss_floor_kib": bench.rss_floor_kib,
                    "server": server.description, "cpu": bench_pull.cpu_model(), "cores": os.cpu_count(),
                    "load_average": os.getloadavg(),
                    "phases": [{"key": p.key, "runs": [asdict(run) for run in p.runs]} for p in phases],
                }
                bench_pull.write_json(args.json, document)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
