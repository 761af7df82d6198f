"""sidecar.logs for the people who read the log (issue 16, item 8): a sentence first, no null
fields, ca_client's duplicates of sidecar events at debug only, console on a terminal, and no
timestamp of its own under journald. Runs from real commands: tests/integration/test_logs_stepca.py.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trustme
from hypothesis import given
from hypothesis import strategies as st

from ca_client.models import serial_hex
from sidecar.haproxy import normalize_serial
from sidecar.log_messages import COVERED, MESSAGES
from sidecar.logs import configure_logging, get_logger, writes_to_journal

REPO = Path(__file__).resolve().parents[2]
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
_EVENT_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _sidecar_events() -> dict[str, str]:
    """Every event name the sidecar logs (the first argument of a log call), and where."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "sidecar").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and _EVENT_NAME.fullmatch(node.args[0].value)
            ):
                found.setdefault(node.args[0].value, f"{path.name}:{node.lineno}")
    return found


def test_every_event_the_sidecar_logs_has_a_sentence() -> None:
    events = _sidecar_events()
    assert len(events) > 40  # the scan finds the log calls at all
    missing = {name: where for name, where in events.items() if name not in MESSAGES}
    assert not missing, f"add a sentence to sidecar/log_messages.py MESSAGES for {missing}"
    assert set(COVERED.values()) <= set(events)


def test_json_starts_with_the_sentence_and_leaves_out_null_fields() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    log = get_logger("sidecar.manager").bind(cert="a.example")
    # What Manager logs after a runtime-API deploy: fallback, verified and error unset.
    log.info(
        "haproxy_updated",
        serial="0A1B",
        mode="runtime-api",
        error=None,
        fallback=None,
        verified=None,
    )
    get_logger("sidecar.service").info("service_stopped")
    logging.getLogger("ca_client.transport").info("retrying %s: %s", "https://ca/x", "refused")
    logging.getLogger("sidecar.health").warning("health_request_failed")  # stdlib, named
    updated, stopped, library, health = _json_lines(stream)
    assert list(updated)[:5] == ["message", "timestamp", "level", "event", "cert"]
    assert updated["message"] == "a.example: HAProxy serves the new certificate"
    assert updated["event"] == "haproxy_updated"
    assert {"error", "fallback", "verified"}.isdisjoint(updated)
    assert (stopped["message"], stopped["event"]) == ("cert-sidecar stopped", "service_stopped")
    assert library["message"] == "retrying https://ca/x: refused"
    assert next(iter(library)) == "message"
    assert (health["message"], health["event"]) == (
        "health request failed",
        "health_request_failed",
    )


def test_console_is_one_line_per_event_sentence_first_no_nulls() -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    get_logger("sidecar.manager").bind(cert="a.example").error(
        "cert_renewal_failed", error="could not connect\nto the target", failures=2, fallback=None
    )
    (line,) = stream.getvalue().splitlines()
    assert _TIMESTAMP.match(line)
    assert line.split(None, 2)[1:] == [
        "error",
        'a.example: renewal failed  error="could not connect\\nto the target" failures=2'
        "  [cert_renewal_failed]",
    ]
    assert "None" not in line


def test_ca_client_lines_that_repeat_a_sidecar_event_are_debug_only() -> None:
    client = logging.getLogger("ca_client.client")
    for level, shown in (("info", []), ("debug", ["debug"])):
        stream = io.StringIO()
        configure_logging("json", level, stream=stream)
        for acme_event in COVERED:
            client.info("said by the sidecar too", extra={"acme_event": acme_event})
        client.info("ACME order %s: %s", "https://ca/o/1", "pending")
        levels = [line["level"] for line in _json_lines(stream)]
        assert levels == [*shown * len(COVERED), "info"]


def test_console_under_journald_has_no_timestamp_and_a_priority(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w") as stream:
        status = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert writes_to_journal(stream, environ)
        configure_logging("console", "info", stream=stream, environ=environ)
        get_logger("sidecar.service").warning("config_reload_failed", error="bad")
        get_logger("sidecar.service").info("service_stopped")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[0].startswith("<4>warning configuration not reloaded")
    assert lines[1].startswith("<6>info    cert-sidecar stopped")
    assert not _TIMESTAMP.search("\n".join(lines))


def test_journal_stream_of_another_stream_changes_nothing(tmp_path: Path) -> None:
    """JOURNAL_STREAM inherited by a process whose stderr goes elsewhere (a terminal, a pipe)."""
    with (tmp_path / "other").open("w") as other, (tmp_path / "mine").open("w") as stream:
        status = os.fstat(other.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert not writes_to_journal(stream, environ)
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not writes_to_journal(io.StringIO(), environ)
        configure_logging("console", "info", stream=stream, environ=environ)
        get_logger("sidecar.service").info("service_stopped")
    assert _TIMESTAMP.match((tmp_path / "mine").read_text())


def _log_format_chosen(tmp_path: Path, *, terminal: bool) -> str:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    args = [sys.executable, "-m", "sidecar", "check-config", "--domain", "a.example"]
    args += ["--ca-bundle", str(ca), "--certs-dir", str(tmp_path), "--state-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERT_SIDECAR_")}
    env["PYTHONPATH"] = str(REPO)
    primary, secondary = pty.openpty() if terminal else os.pipe()
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
            env=env,
            timeout=60,
            check=True,
            text=True,
        )
    finally:
        os.close(primary)
        os.close(secondary)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("log_format")]
    # check-config follows each value with where it came from ("# default: ...").
    return line.split("  #", 1)[0]


def test_console_for_a_terminal_json_otherwise(tmp_path: Path) -> None:
    assert _log_format_chosen(tmp_path, terminal=True) == 'log_format = "console"'
    assert _log_format_chosen(tmp_path, terminal=False) == 'log_format = "json"'


@given(st.integers(min_value=1, max_value=2**159))
def test_ca_client_spells_a_serial_as_the_sidecar_does(serial: int) -> None:
    assert serial_hex(serial) == normalize_serial(serial) == normalize_serial(f"{serial:x}")
