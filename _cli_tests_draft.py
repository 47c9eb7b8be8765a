import errno
import hashlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import test_xprim_models as _base
import xprim_models as xm
from test_xprim_models import *  # noqa: F403
from test_xprim_models import HERE, MODEL_FILES, Fault, RegistryServer, manifest_of, publish, run_cli, tree

# Draft only (not to be appended): the star import would make pytest run the
# main file's test classes a second time from this module.
for _name in [name for name in vars(_base) if name.startswith("Test")]:
    globals().pop(_name, None)


# --- CLI helpers ------------------------------------------------------------------

V1_SIZE = sum(len(content) for content in MODEL_FILES.values())  # 6514 bytes: "6.4 KB"
V2_FILES = {**MODEL_FILES, "config.json": b'{"layers": 3}\n'}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SNAKE_CASE = re.compile(r"[a-z][a-z0-9_]*")
PTY_BAR = re.compile(r"Downloading: \d+/\d+ chunks \[[=> ]{20}\] \d+%")


def cli_run(server: RegistryServer, data_dir: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m xprim_models --registry <server> --data-dir <data_dir> ARGS``, checked for tracebacks."""
    result = run_cli("--registry", server.url, "--data-dir", str(data_dir), *args, env=env, timeout=timeout)
    cli_no_traceback(result)
    return result


def cli_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def cli_install(server: RegistryServer, data_dir: Path, *versions: str) -> None:
    """Install versions of org/tiny in-process, as the standalone CLI (app ``xprim-models``) would."""
    manager = xm.Manager(xm.Config("xprim-models", server.url), data_dir=str(data_dir), retry_backoff=0.01)
    for version in versions:
        manager.pull(f"org/tiny {version}")


def cli_keys(doc: Any) -> Iterator[str]:
    """Every object key in a JSON document, recursively."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield key
            yield from cli_keys(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from cli_keys(value)


def cli_document(result: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document on stdout (json.loads rejects anything after it), with snake_case keys."""
    doc = json.loads(result.stdout)
    assert all(SNAKE_CASE.fullmatch(key) for key in cli_keys(doc)), doc
    return doc


def cli_check_installed_json(item: dict[str, Any], data_dir: Path, version: str, alias_of: str = "") -> None:
    assert (item["group"], item["model"], item["version"], item["alias_of"]) == ("org", "tiny", version, alias_of)
    assert item["total_size"] == V1_SIZE and item["file_count"] == len(MODEL_FILES)
    assert RFC3339_UTC.fullmatch(item["installed_at"]), item["installed_at"]
    assert item["path"] == str(data_dir / "org" / "tiny" / version)
    assert re.fullmatch(r"[0-9a-f]{64}", item["manifest_hash"])


def cli_local_time(rfc3339: str, with_time: bool) -> str:
    """What the human output shows for a JSON time (the tests run with TZ=UTC)."""
    moment = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_time else "%Y-%m-%d")


def cli_closed_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def cli_chunk(registry_dir: Path, version: str, index: int) -> str:
    return str(manifest_of(registry_dir, "org", "tiny", version)["chunks"][index])


def cli_signal_on_request(monkeypatch: pytest.MonkeyPatch, server: RegistryServer, path: str) -> threading.Event:
    """An Event set as soon as the server starts answering ``path``."""
    seen = threading.Event()
    respond = server.respond

    def watching(request: Any, requested: str, fault: Fault | None) -> None:
        if requested == path:
            seen.set()
        respond(request, requested, fault)

    monkeypatch.setattr(server, "respond", watching)
    return seen


def cli_read_until_eof(fd: int, process: subprocess.Popen[bytes], limit: float = 30) -> bytes:
    """Everything written to a pty until the child has closed it (EIO on Linux, b'' elsewhere)."""
    deadline = time.monotonic() + limit
    output = b""
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            process.kill()
            pytest.fail(f"no EOF on the pty within {limit}s; got {output!r}")
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return output
            raise
        if not data:
            return output
        output += data


EMBEDDING_SCRIPT = """\
    # A parent tool embedding the models commands exactly as DESIGN.md section 4 shows.
    import argparse
    import json
    import os
    import sys

    import xprim_models

    parser = argparse.ArgumentParser(prog="whisper-tool")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="manage models")
    xprim_models.register_subcommands(
        models.add_subparsers(dest="models_command", required=True),
        xprim_models.Config(app_name="whisper-tool", registry_url=os.environ["WHISPER_TOOL_REGISTRY"]),
        **json.loads(os.environ.get("WHISPER_TOOL_MANAGER_OPTIONS", "{}")))
    args = parser.parse_args()
    sys.exit(args.func(args))      # each registered command sets func; it returns the exit code
"""


# --- CLI: the standalone command --------------------------------------------------


class TestCli:
    # main() and global options ------------------------------------------------

    def test_main_returns_exit_codes_and_never_raises_system_exit(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert xm.main(["--help"]) == 0
        assert "usage: xprim-models" in capsys.readouterr().out
        assert xm.main(["--version"]) == 0
        assert capsys.readouterr().out == f"xprim-models {xm.__version__}\n"
        assert xm.main([]) == 2
        assert "usage:" in capsys.readouterr().err
        assert xm.main(["pull", "org/tiny"]) == 2  # the version is required
        assert "the following arguments are required: VERSION" in capsys.readouterr().err
        base = ["--registry", server.url, "--data-dir", str(data_dir)]
        result = xm.main([*base, "path", "org/tiny", "v1"])
        assert result == 4 and isinstance(result, int)
        assert capsys.readouterr().err == "error: model not installed: org/tiny v1\n"
        assert xm.main([*base, "list", "--remote", "--json"]) == 0
        assert [item["version"] for item in json.loads(capsys.readouterr().out)["models"]] == ["latest", "v1", "v2"]

    def test_version_flag(self) -> None:
        result = run_cli("--version")
        assert (result.returncode, result.stdout) == (0, f"xprim-models {xm.__version__}\n")

    def test_registry_flag_wins_over_the_environment_variable(
        self, server: RegistryServer, model: dict[str, bytes], tmp_path: Path
    ) -> None:
        env = {"XPRIM_MODELS_REGISTRY_URL": server.url}
        from_env = run_cli("list", "--remote", "--json", env=env)
        assert from_env.returncode == 0, from_env.stderr
        assert len(json.loads(from_env.stdout)["models"]) == 3
        assert server.requests["models.json"] == 1
        elsewhere = tmp_path / "other-registry"
        publish.publish(str(elsewhere), "other", "thing", "v9", {"a.bin": b"abc"})
        from_flag = run_cli("--registry", str(elsewhere), "list", "--remote", "--json", env=env)
        assert from_flag.returncode == 0, from_flag.stderr
        assert [(m["group"], m["version"]) for m in json.loads(from_flag.stdout)["models"]] == [("other", "v9")]
        assert server.requests["models.json"] == 1  # the flag won: the server was not asked

    def test_no_registry_configured_is_an_error(self) -> None:
        result = run_cli("list", "--remote")
        cli_no_traceback(result)
        assert result.returncode == 1
        assert result.stderr.startswith("error: no registry URL is configured")

    def test_data_dir_flag_env_var_and_default(
        self, server: RegistryServer, model: dict[str, bytes], tmp_path: Path, isolated_env: Path
    ) -> None:
        default = run_cli("--registry", server.url, "pull", "org/tiny", "v1")
        assert default.returncode == 0, default.stderr
        base = Path(xm.Manager(xm.Config("xprim-models")).data_dir)  # the platform's, below the private HOME
        assert base.parts[-2:] == ("xprim-models", "models") and isolated_env in base.parents
        expected = base / "org" / "tiny" / "v1"
        assert default.stdout.endswith(f"Path: {expected}\n")
        env = {"XPRIM_MODELS_MODELS_DIR": str(tmp_path / "from-env")}
        from_env = run_cli("--registry", server.url, "pull", "org/tiny", "v1", env=env)
        assert from_env.stdout.endswith(f"Path: {tmp_path / 'from-env' / 'org' / 'tiny' / 'v1'}\n")
        from_flag = run_cli("--registry", server.url, "--data-dir", str(tmp_path / "flag"), "pull", "org/tiny", "v1",
                            env=env)
        assert from_flag.stdout.endswith(f"Path: {tmp_path / 'flag' / 'org' / 'tiny' / 'v1'}\n")
        assert tree(tmp_path / "flag" / "org" / "tiny" / "v1") == MODEL_FILES

    # Output flags before and after the command word ------------------------------

    @pytest.mark.parametrize("position", ["before", "after"])
    def test_output_flags_before_and_after_the_command(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes], position: str
    ) -> None:
        def args(flag: str, *command: str) -> list[str]:
            return [flag, *command] if position == "before" else [*command, flag]

        as_json = cli_run(server, data_dir, *args("--json", "list", "--remote"))
        assert [item["version"] for item in cli_document(as_json)["models"]] == ["latest", "v1", "v2"]
        verbose = cli_run(server, data_dir, *args("--verbose", "list", "--remote"))
        assert f"GET {server.url}/models.json" in verbose.stderr
        assert verbose.stdout.startswith("GROUP")
        quiet = cli_run(server, data_dir, *args("--quiet", "pull", "org/tiny", "v1"))
        assert (quiet.returncode, quiet.stderr) == (0, "")
        assert "Model installed: org/tiny v1 (6.4 KB)\n" in quiet.stdout

    def test_flag_after_the_command_keeps_one_given_before(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        result = cli_run(server, data_dir, "--json", "list", "--remote", "--verbose")
        assert len(cli_document(result)["models"]) == 3
        assert f"GET {server.url}/models.json" in result.stderr

    def test_no_debug_lines_without_verbose(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        result = cli_run(server, data_dir, "list", "--remote")
        assert (result.returncode, result.stderr) == (0, "")

    # Human output --------------------------------------------------------------

    def test_list_human(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        empty = cli_run(server, data_dir, "list")
        assert (empty.returncode, empty.stdout, empty.stderr) == (0, "No models installed\n", "")
        cli_install(server, data_dir, "v1", "v2")
        dates = [cli_local_time(item["installed_at"], False)
                 for item in cli_document(cli_run(server, data_dir, "list", "--json"))["models"]]
        result = cli_run(server, data_dir, "list")
        assert result.returncode == 0
        assert result.stdout == (
            "GROUP   MODEL   VERSION   SIZE     INSTALLED\n"
            f"org     tiny    v1        6.4 KB   {dates[0]}\n"
            f"org     tiny    v2        6.4 KB   {dates[1]}\n"
        )

    def test_list_remote_human(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        result = cli_run(server, data_dir, "list", "--remote")
        assert result.returncode == 0
        assert result.stdout == (
            "GROUP   MODEL   VERSION        SIZE\n"
            "org     tiny    latest -> v1   6.4 KB\n"
            "org     tiny    v1             6.4 KB\n"
            "org     tiny    v2             6.4 KB\n"
        )

    def test_pull_human_and_already_installed(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        result = cli_run(server, data_dir, "pull", "org/tiny", "v1")
        assert result.returncode == 0
        path = data_dir / "org" / "tiny" / "v1"
        assert result.stdout == f"\nModel installed: org/tiny v1 (6.4 KB)\nPath: {path}\n"
        assert tree(path) == MODEL_FILES
        downloads = server.chunk_requests()
        again = cli_run(server, data_dir, "pull", "org/tiny", "v1")
        assert again.returncode == 0
        assert again.stdout == "Model already installed: org/tiny v1\nUse --force to re-download\n"
        assert server.chunk_requests() == downloads  # nothing downloaded
        forced = cli_run(server, data_dir, "pull", "org/tiny", "v1", "--force")
        assert forced.returncode == 0
        assert forced.stdout == f"\nModel installed: org/tiny v1 (6.4 KB)\nPath: {path}\n"

    def test_info_installed_human(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1")
        installed_at = cli_document(cli_run(server, data_dir, "--json", "list"))["models"][0]["installed_at"]
        result = cli_run(server, data_dir, "info", "org/tiny", "v1")
        assert result.returncode == 0
        assert result.stdout == textwrap.dedent(f"""\
            Model:        org/tiny v1
            Status:       Installed
            Size:         6.4 KB
            Files:        4
            Installed:    {cli_local_time(installed_at, True)}
            Path:         {data_dir / "org" / "tiny" / "v1"}

            Files:
              model.safetensors     4.9 KB
              config.json           14 B
              sub/tokenizer.json    1.5 KB
              empty.txt             0 B
            """)

    def test_info_remote_human(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        result = cli_run(server, data_dir, "info", "org/tiny", "v1", "--remote")
        assert result.returncode == 0
        assert result.stdout == textwrap.dedent("""\
            Model:        org/tiny v1
            Status:       Available (not installed)
            Size:         6.4 KB
            Chunks:       7 \u00d7 1 KB
            Files:        4

            Files:
              model.safetensors     4.9 KB
              config.json           14 B
              sub/tokenizer.json    1.5 KB
              empty.txt             0 B

            Metadata:
              framework: onnx
            """)

    def test_remove_human(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1", "v2", "latest")
        one = cli_run(server, data_dir, "remove", "org/tiny", "latest")
        assert (one.returncode, one.stdout) == (0, "Removed: org/tiny latest\n")
        assert not (data_dir / "org" / "tiny" / "latest").exists()
        every = cli_run(server, data_dir, "remove", "org/tiny", "--all")
        assert every.returncode == 0
        assert every.stdout == "Removed: org/tiny v1\nRemoved: org/tiny v2\nRemoved 2 versions\n"
        assert not (data_dir / "org" / "tiny" / "v1").exists() and not (data_dir / "org" / "tiny" / "v2").exists()
        assert cli_run(server, data_dir, "list").stdout == "No models installed\n"

    @pytest.mark.parametrize("args", [["org/tiny", "v1"], ["org/tiny", "--all"]], ids=["version", "all"])
    def test_remove_not_installed(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes], args: list[str]
    ) -> None:
        result = cli_run(server, data_dir, "remove", *args)
        assert (result.returncode, result.stdout) == (4, "")
        assert result.stderr.startswith("error: model not installed: org/tiny")

    def test_path_prints_only_the_path(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        cli_install(server, data_dir, "v1")
        result = cli_run(server, data_dir, "path", "org/tiny", "v1")
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{data_dir / 'org' / 'tiny' / 'v1'}\n", "")

    # update --------------------------------------------------------------------------

    def test_update_reports_and_applies(
        self, server: RegistryServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        cli_install(server, data_dir, "latest")
        current = cli_run(server, data_dir, "update")
        assert (current.returncode, current.stdout) == (0, "Checking for updates...\n\norg/tiny latest: up to date\n")
        publish.add_alias(str(registry_dir), "org", "tiny", "latest", "v2")
        check = cli_run(server, data_dir, "update", "org/tiny")
        assert check.returncode == 0
        assert check.stdout == "Checking for updates...\n\norg/tiny latest: update available (v1 \u2192 v2)\n"
        assert tree(data_dir / "org" / "tiny" / "latest") == MODEL_FILES  # only checked
        before = server.requests.copy()
        applied = cli_run(server, data_dir, "update", "--apply")
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout == (
            "Checking for updates...\n\n"
            "org/tiny latest: update available (v1 \u2192 v2)\n"
            "Downloading update for org/tiny latest...\n"
            "Updated: org/tiny latest (6.4 KB)\n"
        )
        assert "Extracting files... done\n" in applied.stderr
        assert tree(data_dir / "org" / "tiny" / "latest") == V2_FILES
        # What was fetched: the v2 manifest and its chunks, each once (nothing of v1).
        delta = server.requests - before
        v2_hash = json.loads((registry_dir / "models.json").read_text())["org"]["tiny"]["v2"]["hash"]
        v2_chunks = set(manifest_of(registry_dir, "org", "tiny", "v2")["chunks"])
        assert {path: count for path, count in delta.items() if path.startswith("data/")} == {
            f"data/{digest}": 1 for digest in {v2_hash, *v2_chunks}}
        after = cli_run(server, data_dir, "--json", "update")
        (entry,) = cli_document(after)["updates"]
        assert (entry["version"], entry["update_available"], entry["remote_alias_of"]) == ("latest", False, "v2")

    def test_update_nothing_installed_and_unknown_model(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]
    ) -> None:
        nothing = cli_run(server, data_dir, "update")
        assert (nothing.returncode, nothing.stdout) == (0, "No models installed\n")
        cli_install(server, data_dir, "v1")
        result = cli_run(server, data_dir, "update", "org/other")
        assert (result.returncode, result.stderr) == (4, "error: model not installed: org/other\n")

    def test_update_failing_check_does_not_stop_the_others(
        self, server: RegistryServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        cli_install(server, data_dir, "v1", "v2")
        index = json.loads((registry_dir / "models.json").read_text())
        del index["org"]["tiny"]["v1"]
        index["org"]["tiny"]["latest"] = {"alias": "v2"}
        (registry_dir / "models.json").write_text(json.dumps(index))
        changed = {**MODEL_FILES, "config.json": b'{"layers": 4}\n'}
        publish.publish(str(registry_dir), "org", "tiny", "v2", changed, chunk_size=1024)  # v2 rebuilt
        checked = cli_run(server, data_dir, "--json", "update")
        assert checked.returncode == 3
        first, second = cli_document(checked)["updates"]
        assert first["version"] == "v1" and first["remote_hash"] is None
        assert first["error"]["type"] == "VersionNotFoundError" and first["error"]["exit_code"] == 3
        assert (second["version"], second["update_available"], second["applied"], second["error"]) == (
            "v2", True, False, None)
        applied = cli_run(server, data_dir, "update", "--apply")
        assert applied.returncode == 3
        assert "error: org/tiny v1: version not found" in applied.stderr
        assert "org/tiny v2: update available" in applied.stdout
        assert "Updated: org/tiny v2 (6.4 KB)\n" in applied.stdout
        assert tree(data_dir / "org" / "tiny" / "v2") == changed
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES  # the failing one is left alone

    # JSON documents ------------------------------------------------------------

    def test_json_documents(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        assert cli_document(cli_run(server, data_dir, "list", "--json")) == {"models": []}
        remote = cli_document(cli_run(server, data_dir, "list", "--remote", "--json"))["models"]
        assert [(m["group"], m["model"], m["version"], m["alias_of"]) for m in remote] == [
            ("org", "tiny", "latest", "v1"), ("org", "tiny", "v1", ""), ("org", "tiny", "v2", "")]
        assert all((m["total_size"], m["chunk_size"], m["chunk_count"], m["file_count"]) == (V1_SIZE, 1024, 7, 4)
                   for m in remote)
        assert remote[1]["metadata"] == {"framework": "onnx"}

        pulled = cli_document(cli_run(server, data_dir, "--json", "pull", "org/tiny", "latest"))
        assert pulled["status"] == "installed"
        cli_check_installed_json(pulled["model"], data_dir, "latest", alias_of="v1")
        again = cli_document(cli_run(server, data_dir, "--json", "pull", "org/tiny", "latest"))
        assert again["status"] == "already_installed"
        cli_check_installed_json(again["model"], data_dir, "latest", alias_of="v1")

        (listed,) = cli_document(cli_run(server, data_dir, "--json", "list"))["models"]
        cli_check_installed_json(listed, data_dir, "latest", alias_of="v1")
        assert cli_document(cli_run(server, data_dir, "path", "org/tiny", "latest", "--json")) == {
            "path": str(data_dir / "org" / "tiny" / "latest")}

        info = cli_document(cli_run(server, data_dir, "info", "org/tiny", "latest", "--remote", "--json"))
        assert (info["group"], info["model"], info["version"]) == ("org", "tiny", "latest")
        cli_check_installed_json(info["installed"], data_dir, "latest", alias_of="v1")
        expected_files = [{"path": path, "size": len(content)} for path, content in MODEL_FILES.items()]
        assert info["installed"]["files"] == expected_files
        assert info["remote"]["files"] == expected_files
        assert (info["remote"]["total_size"], info["remote"]["chunk_count"], info["remote"]["alias_of"]) == (
            V1_SIZE, 7, "v1")
        local_only = cli_document(cli_run(server, data_dir, "--json", "info", "org/tiny", "latest"))
        assert local_only["remote"] is None and local_only["installed"]["files"] == expected_files

        (update,) = cli_document(cli_run(server, data_dir, "--json", "update"))["updates"]
        assert (update["group"], update["model"], update["version"]) == ("org", "tiny", "latest")
        assert update["update_available"] is False and update["error"] is None

        removed = cli_document(cli_run(server, data_dir, "--json", "remove", "org/tiny", "--all"))
        assert removed == {"removed": [{"group": "org", "model": "tiny", "version": "latest"}]}

    # Progress --------------------------------------------------------------------

    def test_progress_off_a_terminal(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        result = cli_run(server, data_dir, "pull", "org/tiny", "v1")
        assert result.returncode == 0
        assert result.stderr.startswith("Fetching manifest... done\n")
        assert result.stderr.endswith("Extracting files... done\n")
        assert "Downloading: 7/7 chunks 100% 6.4 KB\n" in result.stderr
        assert "\r" not in result.stderr and "\x1b" not in result.stderr

    @pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
    def test_progress_on_a_terminal(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        master, slave = pty.openpty()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
                 "pull", "org/tiny", "v1"],
                stdin=slave, stdout=slave, stderr=slave, cwd=HERE,
            )
            os.close(slave)
            slave = -1
            output = cli_read_until_eof(master, process).decode()
            assert process.wait(timeout=10) == 0
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        assert "Traceback" not in output
        assert "\r" in output
        assert PTY_BAR.search(output), output
        assert "Downloading: 7/7 chunks [====================] 100% 6.4 KB" in output
        assert "Model installed: org/tiny v1 (6.4 KB)" in output
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES

    # Exit codes and error messages -------------------------------------------------

    @pytest.mark.parametrize(
        "case",
        [
            (["pull", "org/tiny", "v9"], 3, "error: version not found: org/tiny v9", True),
            (["pull", "org/nope", "v1"], 3, "error: model not found in registry: org/nope", False),
            (["info", "org/nope", "v1", "--remote"], 3, "error: model not found in registry: org/nope", False),
            (["path", "org/tiny", "v1"], 4, "error: model not installed: org/tiny v1", True),
            (["info", "org/tiny", "v1"], 4, "error: model not installed: org/tiny v1", False),
            (["remove", "org/tiny", "v1"], 4, "error: model not installed: org/tiny v1", False),
            (["remove", "org/tiny"], 2, "error: remove: give either a version or --all", True),
            (["pull", "org/tiny", "v1 v2"], 2, "error: invalid model reference", False),
        ],
        ids=["version-not-found", "model-not-found", "info-remote-not-found", "path-not-installed",
             "info-not-installed", "remove-not-installed", "remove-without-version", "bad-ref"],
    )
    def test_error_exit_codes(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes],
        case: tuple[list[str], int, str, bool],
    ) -> None:
        args, code, message, check_json = case
        human = cli_run(server, data_dir, *args)
        assert (human.returncode, human.stdout) == (code, "")
        assert human.stderr.startswith(message), human.stderr
        if not check_json:
            return
        as_json = cli_run(server, data_dir, "--json", *args)
        assert as_json.returncode == code
        error = cli_document(as_json)["error"]
        assert set(error) == {"type", "message", "exit_code"}
        assert error["exit_code"] == code
        assert as_json.stderr == f"error: {error['message']}\n"

    @pytest.mark.parametrize(
        "args",
        [["pull", "org/tiny"], ["pull", "org/tiny", "v1", "--concurrency", "0"], ["frobnicate"]],
        ids=["missing-version", "bad-concurrency", "unknown-command"],
    )
    def test_usage_errors_exit_2(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes], args: list[str]
    ) -> None:
        result = cli_run(server, data_dir, *args)
        assert result.returncode == 2
        assert "usage: xprim-models" in result.stderr
        assert server.requests == {}

    def test_hash_mismatch_exits_6(
        self, server: RegistryServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        chunk = cli_chunk(registry_dir, "v1", 2)
        server.always["data/" + chunk] = Fault(corrupt=True)
        result = cli_run(server, data_dir, "pull", "org/tiny", "v1")
        assert result.returncode == 6
        assert result.stdout == ""
        assert "error: pull org/tiny v1: chunk 3/7" in result.stderr and "hash mismatch" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("error: ")
        assert not (data_dir / "org" / "tiny" / "v1").exists()
        as_json = cli_run(server, data_dir, "--json", "pull", "org/tiny", "v1")
        assert as_json.returncode == 6
        assert cli_document(as_json)["error"]["type"] == "HashMismatchError"

    def test_hash_mismatch_message_names_the_hash_received(
        self, server: RegistryServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes]
    ) -> None:
        chunk = cli_chunk(registry_dir, "v1", 2)
        server.always["data/" + chunk] = Fault(corrupt=True)
        result = cli_run(server, data_dir, "pull", "org/tiny", "v1")
        assert result.returncode == 6
        body = (registry_dir / "data" / chunk).read_bytes()
        received = hashlib.sha256(bytes([body[0] ^ 0xFF]) + body[1:]).hexdigest()
        assert hashlib.sha256(b"").hexdigest() not in result.stderr
        assert f"(got {received})" in result.stderr
        downloads = server.requests["data/" + chunk]
        assert result.stderr.count("downloading it again") == downloads - 1

    def test_storage_error_exits_7(self, server: RegistryServer, tmp_path: Path, model: dict[str, bytes]) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory\n")
        for args in (["list"], ["pull", "org/tiny", "v1"]):
            result = cli_run(server, blocker / "models", *args)
            assert (result.returncode, result.stdout) == (7, ""), result.stderr
            assert result.stderr.startswith("error: cannot ") and str(blocker) in result.stderr
        as_json = cli_run(server, blocker / "models", "--json", "list")
        assert cli_document(as_json)["error"]["type"] == "StorageError"

    @pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
    def test_ctrl_c_exits_130_and_the_pull_resumes(
        self, server: RegistryServer, data_dir: Path, registry_dir: Path, model: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        stalled = cli_chunk(registry_dir, "v1", 3)
        server.always["data/" + stalled] = Fault(stall=True)
        reached = cli_signal_on_request(monkeypatch, server, "data/" + stalled)
        process = subprocess.Popen(
            [sys.executable, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
             "pull", "org/tiny", "v1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE,
        )
        try:
            assert reached.wait(timeout=20), "the pull never asked for the stalled chunk"
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, stderr
        assert "Traceback" not in stdout + stderr
        assert stdout == ""
        assert re.search(r"^interrupted: run the same command again to resume", stderr, re.MULTILINE), stderr
        assert not (data_dir / "org" / "tiny" / "v1").exists()
        # Verified chunks were kept: the resumed pull does not fetch them again.
        cached = [path.name for path in (data_dir / "cache" / "chunks").iterdir() if "." not in path.name]
        del server.always["data/" + stalled]
        resumed = cli_run(server, data_dir, "pull", "org/tiny", "v1")
        assert resumed.returncode == 0, resumed.stderr
        assert tree(data_dir / "org" / "tiny" / "v1") == MODEL_FILES
        assert all(server.requests["data/" + name] == 1 for name in cached)

    @pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")
    def test_closed_pipe_head(self, server: RegistryServer, data_dir: Path, registry_dir: Path,
                              model: dict[str, bytes]) -> None:
        # `xprim-models list --remote | head -1`, with far more output than a pipe buffers.
        index = json.loads((registry_dir / "models.json").read_text())
        index["org"]["tiny"].update({f"an-alias-with-a-rather-long-name-{n:04d}": {"alias": "v1"} for n in range(2000)})
        (registry_dir / "models.json").write_text(json.dumps(index))
        writer = subprocess.Popen(
            [sys.executable, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
             "list", "--remote"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE,
        )
        assert writer.stdout is not None
        reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.readline())"],
                                  stdin=writer.stdout, stdout=subprocess.PIPE)
        writer.stdout.close()
        try:
            first, _ = reader.communicate(timeout=30)
            _, errors = writer.communicate(timeout=30)
        finally:
            for process in (reader, writer):
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        assert first.decode().split() == ["GROUP", "MODEL", "VERSION", "SIZE"]
        assert errors.decode() == ""

    @pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")
    @pytest.mark.parametrize("args", [["list", "--remote"], ["path", "org/tiny", "v1"]], ids=["list", "path"])
    def test_closed_pipe_before_any_output(
        self, server: RegistryServer, data_dir: Path, model: dict[str, bytes], args: list[str]
    ) -> None:
        cli_install(server, data_dir, "v1")
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
        try:
            result = subprocess.run(
                [sys.executable, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir), *args],
                stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=HERE, timeout=30, check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
        assert result.stderr == ""

    @pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")
    @pytest.mark.xfail(reason="a JSON error document written to a closed stdout raises BrokenPipeError inside "
                              "_run_command's `except ModelsError` handler, which is not caught: Traceback",
                       strict=True)
    def test_closed_pipe_json_error(self, server: RegistryServer, data_dir: Path, model: dict[str, bytes]) -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "xprim_models", "--registry", server.url, "--data-dir", str(data_dir),
                 "--json", "path", "org/tiny", "v1"],
                stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=HERE, timeout=30, check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 4


# --- CLI: embedded in a parent tool ------------------------------------------------


class TestEmbedding:
    @pytest.fixture
    def whisper_tool(self, tmp_path: Path) -> Path:
        script = tmp_path / "whisper_tool.py"
        script.write_text(textwrap.dedent(EMBEDDING_SCRIPT))
        return script

    @staticmethod
    def run_tool(script: Path, registry: str, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``whisper-tool ARGS`` as a subprocess, importing xprim_models through PYTHONPATH."""
        result = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, cwd=script.parent,
            timeout=timeout, check=False,
            env={**os.environ, "PYTHONPATH": str(HERE), "WHISPER_TOOL_REGISTRY": registry, **(env or {})},
        )
        cli_no_traceback(result)
        return result

    def test_registers_six_commands_each_with_func(
        self, server: RegistryServer, model: dict[str, bytes], capsys: pytest.CaptureFixture[str]
    ) -> None:
        import argparse

        parser = argparse.ArgumentParser(prog="whisper-tool")
        commands = parser.add_subparsers(dest="command", required=True)
        models = commands.add_parser("models")
        subparsers = models.add_subparsers(dest="models_command", required=True)
        xm.register_subcommands(subparsers, xm.Config("whisper-tool", server.url), retries=0)
        assert set(subparsers.choices) == {"list", "pull", "remove", "info", "path", "update"}
        for argv in (["list"], ["pull", "org/tiny", "v1"], ["remove", "org/tiny", "--all"],
                     ["info", "org/tiny", "v1"], ["path", "org/tiny", "v1"], ["update"]):
            args = parser.parse_args(["models", *argv])
            assert callable(args.func), argv
        args = parser.parse_args(["models", "list", "--remote", "--json"])
        result = args.func(args)
        assert result == 0 and isinstance(result, int)
        assert len(json.loads(capsys.readouterr().out)["models"]) == 3
        args = parser.parse_args(["models", "path", "org/tiny", "v1"])
        assert args.func(args) == 4  # an error is an exit code, not an exception

    def test_list_pull_path(
        self, server: RegistryServer, model: dict[str, bytes], whisper_tool: Path, isolated_env: Path
    ) -> None:
        empty = self.run_tool(whisper_tool, server.url, "models", "list")
        assert (empty.returncode, empty.stdout) == (0, "No models installed\n")
        pulled = self.run_tool(whisper_tool, server.url, "models", "pull", "org/tiny", "v1")
        assert pulled.returncode == 0, pulled.stderr
        base = Path(xm.Manager(xm.Config("whisper-tool")).data_dir)  # the platform's, below the private HOME
        assert base.parts[-2:] == ("whisper-tool", "models") and isolated_env in base.parents
        home = base / "org" / "tiny" / "v1"
        assert pulled.stdout == f"\nModel installed: org/tiny v1 (6.4 KB)\nPath: {home}\n"
        assert "Fetching manifest... done\n" in pulled.stderr and "Extracting files... done\n" in pulled.stderr
        assert tree(home) == MODEL_FILES
        assert (home / ".whisper-tool").is_dir()  # the metadata directory follows the app name
        path = self.run_tool(whisper_tool, server.url, "models", "path", "org/tiny", "v1")
        assert (path.returncode, path.stdout) == (0, f"{home}\n")
        listed = self.run_tool(whisper_tool, server.url, "models", "list")
        assert listed.stdout.splitlines()[1].split()[:4] == ["org", "tiny", "v1", "6.4"]
        as_json = self.run_tool(whisper_tool, server.url, "models", "list", "--json")
        (item,) = cli_document(as_json)["models"]
        assert (item["version"], item["path"], item["total_size"]) == ("v1", str(home), V1_SIZE)

    def test_data_dir_follows_the_app_name(
        self, server: RegistryServer, model: dict[str, bytes], whisper_tool: Path, tmp_path: Path
    ) -> None:
        env = {"WHISPER_TOOL_MODELS_DIR": str(tmp_path / "whisper-models"),
               "XPRIM_MODELS_MODELS_DIR": str(tmp_path / "not-this-one")}
        pulled = self.run_tool(whisper_tool, server.url, "models", "pull", "org/tiny", "v1", "--quiet", env=env)
        assert (pulled.returncode, pulled.stderr) == (0, "")
        target = tmp_path / "whisper-models" / "org" / "tiny" / "v1"
        assert tree(target) == MODEL_FILES
        assert not (tmp_path / "not-this-one").exists()
        path = self.run_tool(whisper_tool, server.url, "models", "path", "org/tiny", "v1", env=env)
        assert path.stdout == f"{target}\n"

    def test_output_flags_after_the_command(
        self, server: RegistryServer, model: dict[str, bytes], whisper_tool: Path
    ) -> None:
        result = self.run_tool(whisper_tool, server.url, "models", "list", "--remote", "--json", "--verbose")
        assert len(cli_document(result)["models"]) == 3
        assert f"GET {server.url}/models.json" in result.stderr

    def test_network_error_exits_5(self, model: dict[str, bytes], whisper_tool: Path) -> None:
        closed = f"http://127.0.0.1:{cli_closed_port()}"
        env = {"WHISPER_TOOL_MANAGER_OPTIONS": json.dumps({"retries": 1, "retry_backoff": 0, "timeout": 5})}
        for args in (["list", "--remote"], ["pull", "org/tiny", "v1"]):
            result = self.run_tool(whisper_tool, closed, "models", *args, env=env)
            assert (result.returncode, result.stdout) == (5, ""), result.stderr
            assert result.stderr.startswith("error: ") and "(after 2 attempts)" in result.stderr
        as_json = self.run_tool(whisper_tool, closed, "models", "list", "--remote", "--json", env=env)
        assert as_json.returncode == 5
        assert cli_document(as_json)["error"]["type"] == "NetworkError"
        assert cli_document(as_json)["error"]["exit_code"] == 5

    def test_usage_error_exits_2(self, server: RegistryServer, whisper_tool: Path) -> None:
        result = self.run_tool(whisper_tool, server.url, "models", "pull", "org/tiny")
        assert result.returncode == 2
        assert "usage: whisper-tool models pull" in result.stderr
