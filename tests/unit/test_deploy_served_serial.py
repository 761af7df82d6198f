"""A hot update counts only when HAProxy then reports the new serial (docs/commands.md: "Success is
confirmed by `show ssl cert <file>` showing the new serial").

A real HAProxy reports what it committed, so the failure needs a stand-in: a small runtime-API
server that takes the whole transaction (set, commit) and then, like a stale process behind the
same address, still reports the old certificate. The same server, honest, shows that the
transaction itself is what a deploy expects, so the failure is for the serial alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from sidecar.deploy import DeployConfig, Deployer, DeployResult
from tests.peers.haproxy import TestPKI

pytestmark = pytest.mark.anyio

HAPROXY_PATH = "/c/a.example.pem"


def _show(serial: str) -> bytes:
    return (
        f"Filename: {HAPROXY_PATH}\nStatus: Used\nSerial: {serial}\n"
        "notBefore: Jan  1 00:00:00 2020 GMT\nnotAfter: Jan  1 00:00:00 2030 GMT\n\n"
    ).encode()


@dataclass
class FakeRuntimeApi:
    """HAProxy's certificate commands, enough for an update of a loaded file."""

    path: Path
    serving: str  # the serial it reports
    honest: bool = True
    commands: list[str] = field(default_factory=list)
    _pending: str | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = (await reader.read()).decode()  # the client half-closes after its command
        line, _, payload = data.partition("\n")
        self.commands.append(line)
        answer = b"Unknown command\n"
        if line == "show ssl cert":
            pending = f"# transaction\n*{HAPROXY_PATH}\n" if self._pending else ""
            answer = f"{pending}# filename\n{HAPROXY_PATH}\n".encode()
        elif line == f"show ssl cert {HAPROXY_PATH}":
            answer = _show(self.serving)
        elif line == f"set ssl cert {HAPROXY_PATH} <<":
            leaf = x509.load_pem_x509_certificate(payload.encode())
            self._pending = f"{leaf.serial_number:X}"
            answer = f"Transaction created for certificate {HAPROXY_PATH}!\n".encode()
        elif line == f"commit ssl cert {HAPROXY_PATH}" and self._pending:
            if self.honest:
                self.serving = self._pending
            self._pending = None
            answer = f"Committing {HAPROXY_PATH}\nSuccess!\n".encode()
        elif line.startswith("abort ssl cert"):
            self._pending = None
            answer = f"Transaction aborted for certificate '{HAPROXY_PATH}'!\n".encode()
        writer.write(answer)
        await writer.drain()
        writer.close()


@pytest.fixture
async def runtime_api(tmp_path: Path) -> AsyncIterator[FakeRuntimeApi]:
    api = FakeRuntimeApi(tmp_path / "admin.sock", serving="0BAD")
    server = await asyncio.start_unix_server(api.serve, str(api.path))
    try:
        yield api
    finally:
        server.close()


async def _deploy(api: FakeRuntimeApi) -> tuple[DeployResult, str]:
    pem, serial = TestPKI().issue("a.example")

    async def no_wait(_seconds: float) -> None:
        await asyncio.sleep(0)

    deployer = Deployer(
        DeployConfig.build(sockets=[f"unix:{api.path}"], certs_dir=Path("/c")), sleep=no_wait
    )
    result = await deployer.deploy(
        "a.example",
        Path(HAPROXY_PATH),
        pem,
        f"{serial:X}",
        not_after=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        names=["a.example"],
    )
    return result, f"{serial:X}"


async def test_a_committed_update_reporting_the_new_serial_is_a_success(
    runtime_api: FakeRuntimeApi,
) -> None:
    result, serial = await _deploy(runtime_api)
    assert result.ok, result
    assert runtime_api.serving == serial
    assert f"commit ssl cert {HAPROXY_PATH}" in runtime_api.commands


async def test_an_update_still_reporting_the_old_serial_is_a_failure(
    runtime_api: FakeRuntimeApi,
) -> None:
    runtime_api.honest = False
    result, _ = await _deploy(runtime_api)
    assert not result.ok, result
    (socket,) = result.sockets
    assert not socket.ok
    assert "0BAD" in (socket.error or ""), socket
    # Retried before giving up: a transient stale answer gets its chances.
    assert runtime_api.commands.count(f"commit ssl cert {HAPROXY_PATH}") == socket.attempts > 1
