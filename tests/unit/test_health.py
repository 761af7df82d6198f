"""Health server: the pure request parser, then the real server and healthcheck on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from sidecar import health
from sidecar.health import (
    HealthBindError,
    HealthServer,
    HealthSnapshot,
    HttpRequestError,
    cmd_healthcheck,
    connect_host,
    parse_request_head,
)
from sidecar.metrics import CertStatus, Metrics

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
# Every wait on the server below ends on an event (an answer, a close, a registered
# connection); this only turns a hang into a failure, and is generous for a loaded machine.
DEADLINE = 30.0


def good(name: str = "a.example") -> CertStatus:
    return CertStatus(
        name=name,
        domains=(name,),
        state="valid",
        not_before=NOW - HOUR,
        not_after=NOW + 23 * HOUR,
        serial="01",
        deployed_serial="01",
    )


def placeholder(name: str = "p.example") -> CertStatus:
    return CertStatus(
        name=name,
        domains=(name,),
        state="placeholder",
        is_placeholder=True,
        not_before=NOW - HOUR,
        not_after=NOW + HOUR,
        serial="02",
    )


@dataclass
class FakeSettings:
    """Only the attribute ``cmd_healthcheck`` reads (Settings.health_listen)."""

    health_listen: tuple[str, int]


# --- pure: parser ------------------------------------------------------------------------------


def test_parse_simple_get() -> None:
    request = parse_request_head(
        b"GET /metrics?name[]=x HTTP/1.1\r\nHost: localhost:9102\r\nAccept: */*\r\n\r\n"
    )
    assert (request.method, request.path, request.version) == ("GET", "/metrics", (1, 1))
    assert ("host", "localhost:9102") in request.headers


def test_parse_http10_without_host_and_content_length_zero() -> None:
    request = parse_request_head(b"HEAD /healthz HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert request.version == (1, 0)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET  /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /healthz\r\n\r\n", 400),
        (b"GET http://a/healthz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.x\r\nHost: a\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\nHost: a\n\n", 400),  # bare LF
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 70 + b"\r\n", 431),
    ],
)
def test_parse_rejects(head: bytes, status: int) -> None:
    with pytest.raises(HttpRequestError) as caught:
        parse_request_head(head)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "::1"),
        ("[::]", "::1"),
        ("[::1]", "::1"),
        ("10.1.2.3", "10.1.2.3"),
        ("health.local", "health.local"),
    ],
)
def test_connect_host(listen: str, target: str) -> None:
    assert connect_host(listen) == target


# --- the real server ---------------------------------------------------------------------------


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    try:
        async with asyncio.timeout(DEADLINE):
            return await reader.read()
    except TimeoutError:
        raise AssertionError(f"no end of stream from the server within {DEADLINE} s") from None


async def until(condition: Callable[[], object], what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE):
            while not condition():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}") from None


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def exchange(host: str, port: int, data: bytes) -> Response | None:
    """Send raw bytes and half-close, read to EOF; ``None`` when the server closed without
    answering."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        raw = await read_to_eof(reader)
    except ConnectionResetError:
        raw = b""  # aborted by the server
    writer.close()
    if not raw:
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return Response(int(status), headers, body)


async def get(port: int, path: str, host: str = "127.0.0.1", method: str = "GET") -> Response:
    response = await exchange(host, port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert response is not None
    return response


class Snapshots:
    """A mutable source of snapshots, as the service loop would be."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.statuses: list[CertStatus] = [good()]
        self.alive = True
        self.fail = False

    def __call__(self) -> HealthSnapshot:
        if self.fail:
            raise RuntimeError("snapshot bug")
        return HealthSnapshot(
            statuses=list(self.statuses),
            metrics=self.metrics,
            alive=self.alive,
            detail=None if self.alive else "scheduler stopped",
        )


@asynccontextmanager
async def serving(
    snapshots: Callable[[], HealthSnapshot], host: str = "127.0.0.1"
) -> AsyncIterator[HealthServer]:
    async with HealthServer(host, 0, snapshots, clock=lambda: NOW) as server:
        yield server


async def test_endpoints_answer() -> None:
    snapshots = Snapshots()
    async with serving(snapshots) as server:
        healthz = await get(server.port, "/healthz")
        assert (healthz.status, healthz.body) == (200, b"ok\n")
        assert healthz.headers["connection"] == "close"
        assert int(healthz.headers["content-length"]) == len(healthz.body)

        readyz = await get(server.port, "/readyz")
        assert readyz.status == 200
        assert readyz.headers["content-type"] == "application/json"
        body = json.loads(readyz.body)
        assert body["ready"] is True
        assert body["certificates"][0]["name"] == "a.example"

        metrics = await get(server.port, "/metrics")
        assert metrics.status == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b"\ncert_sidecar_ready 1\n" in metrics.body

        missing = await get(server.port, "/nothing")
        assert missing.status == 404

        head = await get(server.port, "/readyz", method="HEAD")
        assert head.status == 200
        assert head.body == b""
        assert int(head.headers["content-length"]) == len(readyz.body)

        post = await get(server.port, "/healthz", method="POST")
        assert post.status == 405
        assert post.headers["allow"] == "GET, HEAD"


async def test_readyz_unready_and_ca_errors_in_body() -> None:
    snapshots = Snapshots()
    snapshots.metrics.set_ca_reachable(False, "connection refused")
    async with serving(snapshots) as server:
        # A CA outage alone: still ready, but the body says so.
        response = await get(server.port, "/readyz")
        body = json.loads(response.body)
        assert response.status == 200
        assert body["ca"] == {
            "reachable": False,
            "error": "connection refused",
            "clock_skew_seconds": None,
        }

        snapshots.statuses = [good(), placeholder()]
        response = await get(server.port, "/readyz")
        body = json.loads(response.body)
        assert response.status == 503
        assert body["ready"] is False
        assert body["reasons"] == ["p.example: placeholder certificate, not yet issued by the CA"]
        states = {cert["name"]: cert["state"] for cert in body["certificates"]}
        assert states == {"a.example": "valid", "p.example": "placeholder"}


async def test_not_alive_and_broken_snapshot() -> None:
    snapshots = Snapshots()
    async with serving(snapshots) as server:
        snapshots.alive = False
        healthz = await get(server.port, "/healthz")
        assert (healthz.status, healthz.body) == (503, b"scheduler stopped\n")
        readyz = await get(server.port, "/readyz")
        assert readyz.status == 503
        assert json.loads(readyz.body)["reasons"][0].startswith("service loop:")

        snapshots.fail = True
        assert (await get(server.port, "/metrics")).status == 500
        # The listener survives a failing request.
        snapshots.fail = False
        snapshots.alive = True
        assert (await get(server.port, "/healthz")).status == 200


async def test_liveness_callback_answers_healthz_alone() -> None:
    def no_snapshot() -> HealthSnapshot:
        raise AssertionError("/healthz must not build a snapshot when liveness is given")

    state: list[tuple[bool, str | None]] = [(True, None)]
    async with HealthServer("127.0.0.1", 0, no_snapshot, liveness=lambda: state[0]) as server:
        assert (await get(server.port, "/healthz")).status == 200
        state[0] = (False, "scheduler\nstopped")
        response = await get(server.port, "/healthz")
        assert (response.status, response.body) == (503, b"scheduler stopped\n")
        assert (await get(server.port, "/readyz")).status == 500


async def test_bad_requests_on_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(Snapshots()) as server:
        bad = await exchange("127.0.0.1", server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert bad is not None and bad.status == 400

        huge = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        too_large = await exchange("127.0.0.1", server.port, huge)
        assert too_large is not None and too_large.status == 431

        # A connection closed without a request gets no answer.
        assert await exchange("127.0.0.1", server.port, b"") is None

        # A client that never finishes its request is answered 408 once the read deadline passes.
        monkeypatch.setattr(health, "READ_TIMEOUT", 0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        raw = await read_to_eof(reader)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 408 ")


async def test_connection_cap_makes_room_for_the_newcomer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Full: the newcomer is answered and the oldest unfinished request is closed instead (a
    # refusal would let a few idle sockets fail every probe).
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 1)
    async with serving(Snapshots()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # incomplete: holds the only slot
        await writer.drain()
        await until(lambda: server._connections, "the server to hold the first connection")
        answered = await exchange(
            "127.0.0.1", server.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert answered is not None and answered.status == 200
        # The evicted connection is aborted: end-of-stream or a reset.
        with contextlib.suppress(ConnectionResetError):
            assert await read_to_eof(reader) == b""
        writer.close()


async def test_close_ends_open_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    # The idle client's read deadlines are far beyond DEADLINE: a close that waited for them
    # fails here instead of passing slowly.
    monkeypatch.setattr(health, "FIRST_BYTE_TIMEOUT", 3600.0)
    monkeypatch.setattr(health, "READ_TIMEOUT", 3600.0)
    server = HealthServer("127.0.0.1", 0, Snapshots())
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await until(lambda: server._connections, "the server to hold the connection")
    try:
        async with asyncio.timeout(DEADLINE):
            await server.aclose()
    except TimeoutError:
        raise AssertionError("aclose waited for the idle client") from None
    assert await read_to_eof(reader) == b""
    writer.close()


async def test_ipv6_listen() -> None:
    async with serving(Snapshots(), host="::1") as server:
        assert (await get(server.port, "/healthz", host="::1")).status == 200


async def test_dual_stack_wildcard_listen() -> None:
    async with serving(Snapshots(), host="[::]") as server:
        assert (await get(server.port, "/healthz", host="::1")).status == 200
        assert (await get(server.port, "/healthz", host="127.0.0.1")).status == 200


async def test_bind_error_names_the_address() -> None:
    async with serving(Snapshots()) as server:
        with pytest.raises(HealthBindError, match=f"127.0.0.1:{server.port}"):
            async with HealthServer("127.0.0.1", server.port, Snapshots()):
                pass


# --- healthcheck -------------------------------------------------------------------------------


async def test_healthcheck_ready_and_unready() -> None:
    snapshots = Snapshots()
    async with serving(snapshots, host="0.0.0.0") as server:
        err = io.StringIO()
        assert await cmd_healthcheck(FakeSettings(("0.0.0.0", server.port)), stderr=err) == 0
        assert err.getvalue() == ""

        snapshots.statuses = [placeholder()]
        err = io.StringIO()
        assert await cmd_healthcheck(FakeSettings(("0.0.0.0", server.port)), stderr=err) == 1
        line = err.getvalue()
        assert line.count("\n") == 1
        assert "not ready: p.example: placeholder" in line


async def test_healthcheck_ipv6_wildcard() -> None:
    async with serving(Snapshots(), host="::") as server:
        assert await cmd_healthcheck(FakeSettings(("::", server.port)), stderr=io.StringIO()) == 0


async def test_healthcheck_nothing_listening() -> None:
    # Take a free port and release it: nothing listens there afterwards.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    err = io.StringIO()
    assert await cmd_healthcheck(FakeSettings(("127.0.0.1", port)), stderr=err) == 1
    assert err.getvalue() == (
        f"healthcheck: cannot reach http://127.0.0.1:{port}/readyz: connection refused\n"
    )
    assert err.getvalue().count("\n") == 1


async def test_healthcheck_timeout_and_garbage() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    noisy = await asyncio.start_server(garbage, "127.0.0.1", 0)
    try:
        err = io.StringIO()
        port = quiet.sockets[0].getsockname()[1]
        code = await cmd_healthcheck(FakeSettings(("127.0.0.1", port)), timeout=0.05, stderr=err)
        assert code == 1
        assert "no answer" in err.getvalue()

        err = io.StringIO()
        port = noisy.sockets[0].getsockname()[1]
        assert await cmd_healthcheck(FakeSettings(("127.0.0.1", port)), stderr=err) == 1
        assert "bad answer" in err.getvalue()
    finally:
        release.set()
        for server in (quiet, noisy):
            server.close()
            await server.wait_closed()
