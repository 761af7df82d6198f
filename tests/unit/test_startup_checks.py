"""preflight.STARTUP_CHECKS: the one table of which command runs which start-up check
(issue 18, item 5). The command line runs a command's row once, before the command starts; no
other module lists or repeats them, and `issue` reads the CA bundle once for its checks."""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import preflight
from sidecar.cli import build_parser, main
from tests.unit.test_cli import Calls, base_flags

# test_cli's fixtures (the command stand-ins, a work directory), re-exported to use by name.
from tests.unit.test_cli import calls as calls  # noqa: PLC0414
from tests.unit.test_cli import workdir as workdir  # noqa: PLC0414

REPO = Path(__file__).resolve().parents[2]
# The functions that do one start-up check; only preflight's table may call them at start-up.
# (bundle_watch reads the bundle for another reason: `run` waits for it to appear.)
CHECK_FUNCTIONS = frozenset({"check_ca_bundle", "check_directories", "check_sockets"})


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("CERT_SIDECAR_"):
            monkeypatch.delenv(name)
    yield


def _commands() -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert subparsers.choices is not None
    return set(subparsers.choices)


def test_every_command_has_a_row_and_reload_has_one_too() -> None:
    assert set(preflight.STARTUP_CHECKS) == _commands() | {"reload"}
    # `run` waits for the CA bundle rather than refusing to start without it (CONTRACT.md).
    assert "ca_bundle" not in preflight.STARTUP_CHECKS["run"]
    assert "ca_bundle" not in preflight.STARTUP_CHECKS["reload"]


def test_no_module_runs_a_check_outside_the_table() -> None:
    """Before, cli.py, oneshot.py (twice), service.py and wiring.rebuild each listed checks."""
    callers = []
    for path in sorted((REPO / "sidecar").rglob("*.py")):
        if path.name == "preflight.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else None
            name = function.id if isinstance(function, ast.Name) else name
            preflight_check = name == "check" and "preflight" in ast.unparse(function)
            if name in CHECK_FUNCTIONS or preflight_check:
                callers.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
            if name == "load_ca_bundle" and path.name != "bundle_watch.py":
                callers.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert callers == []


@pytest.mark.parametrize("command", ["run", "issue", "renew", "revoke"])
def test_an_unusable_haproxy_socket_stops_the_command_before_it_starts(
    command: str, workdir: Path, calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_socket = workdir / "api.sock"
    not_a_socket.write_text("")
    name = ["a.example"] if command == "revoke" else []
    argv = [command, *name, *base_flags(workdir), "--haproxy-socket", f"unix:{not_a_socket}"]
    assert main(argv) == 2
    assert calls.seen == []
    assert capsys.readouterr().err == (
        f"cert-sidecar: error: --haproxy-socket: {not_a_socket} is not a unix socket "
        f"({preflight._owner_mode(not_a_socket)})\n"
    )


@pytest.mark.parametrize("command", ["check-config", "status", "healthcheck"])
def test_the_commands_that_do_not_use_the_socket_do_not_check_it(
    command: str, workdir: Path, calls: Calls
) -> None:
    not_a_socket = workdir / "api.sock"
    not_a_socket.write_text("")
    assert main([command, *base_flags(workdir), "--haproxy-socket", f"unix:{not_a_socket}"]) == 0


def test_issue_reads_the_ca_bundle_once_for_its_checks(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`issue` parsed the bundle twice before any network I/O (cli, then oneshot). Now: once
    for the start-up check, once more for the TLS context of the CA it then asks (here a closed
    port, so nothing further is read)."""
    bundle = workdir / "root.pem"
    reads: list[Path] = []
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == bundle:
            reads.append(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    flags = [*base_flags(workdir), "--directory", "https://127.0.0.1:1/acme/acme/directory"]
    # The real oneshot module (test_cli's stand-ins may have been left in sys.modules).
    monkeypatch.delitem(sys.modules, "sidecar.oneshot", raising=False)
    assert main(["issue", *flags, "--log-level", "error"]) == 1
    assert "the ACME directory https://127.0.0.1:1/" in capsys.readouterr().err
    assert len(reads) == 2
