"""Connection limits of the responders and the health server: per source, newcomers first.

Pure accounting first (`ConnectionLimits`), then the real servers on loopback, with the
"attacker" connecting from another loopback address (127.0.3.x) than the genuine client
(127.0.0.1), as the CA and an attacker would on a real network.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import pytest

from ca_client.challenges import Http01Responder, TlsAlpn01Responder
from ca_client.challenges._client_hello import MAX_RECORDS
from ca_client.challenges._limits import ConnectionLimits, source_of
from ca_client.models import Identifier
from sidecar import health
from sidecar.health import cmd_healthcheck
from tests.unit.test_health import FakeSettings, Snapshots, serving

pytestmark = pytest.mark.anyio

THUMBPRINT = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = f"{TOKEN}.{THUMBPRINT}"
NAME = Identifier.dns("a.example")
ATTACKER = "127.0.3.200"
HALF_HTTP = b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a\r\n"
HALF_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
# Deadlines far beyond the test: only the limits may close the held connections.
PATIENT = {"read_timeout": 60.0}


# --- pure: the accounting ----------------------------------------------------------------------


class Closed(list[str]):
    """Which connections the limits closed, by name."""

    def closer(self, name: str) -> Callable[[], None]:
        return lambda: self.append(name)


def test_per_source_cap_closes_that_sources_oldest() -> None:
    limits, closed = ConnectionLimits(total=10, per_source=2), Closed()
    first = limits.admit(("10.0.0.1", 1), closed.closer("a1"))
    limits.admit(("10.0.0.1", 2), closed.closer("a2"))
    limits.admit(("10.0.0.2", 1), closed.closer("b1"))
    limits.admit(("10.0.0.1", 3), closed.closer("a3"))
    assert closed == ["a1"]
    assert first.evicted
    assert (limits.count("10.0.0.1"), len(limits), limits.evictions) == (2, 3, 1)
    limits.release(first)  # the evicted connection's handler ends later: nothing changes
    assert len(limits) == 3


def test_full_closes_the_connection_idle_longest_not_the_busiest_source() -> None:
    # The finding: a validator checking three names at once was the busiest source, so an
    # attacker with one connection from each of many sources had all three closed first.
    limits, closed = ConnectionLimits(total=8, per_source=8), Closed()
    validator = [limits.admit(("10.0.0.9", port), closed.closer(f"ca{port}")) for port in range(3)]
    for slot in validator:
        limits.answering(slot)  # each has sent its whole request
    for host in range(5):
        limits.admit((f"10.1.0.{host}", 1), closed.closer(f"early{host}"))
    for host in range(20):
        limits.admit((f"10.2.0.{host}", 1), closed.closer(f"flood{host}"))
    assert not any(name.startswith("ca") for name in closed)
    assert closed[:5] == [f"early{host}" for host in range(5)]  # idle the longest first
    assert not any(slot.evicted for slot in validator) and len(limits) == 8


def test_a_prompt_validator_outlives_older_idle_connections() -> None:
    # Connected, request not complete yet (one round trip): idle, but the newest idle.
    limits, closed = ConnectionLimits(total=8, per_source=8), Closed()
    for host in range(8):
        limits.admit((f"10.1.0.{host}", 1), closed.closer(f"early{host}"))
    validator = [limits.admit(("10.0.0.9", port), closed.closer(f"ca{port}")) for port in range(3)]
    for host in range(4):
        limits.admit((f"10.2.0.{host}", 1), closed.closer(f"flood{host}"))
    assert closed == [f"early{host}" for host in range(7)]
    assert not any(slot.evicted for slot in validator)


def test_an_answered_connection_is_idle_again_from_then() -> None:
    limits, closed = ConnectionLimits(total=3, per_source=3), Closed()
    refused = limits.admit(("10.0.0.1", 1), closed.closer("refused"))
    limits.answering(refused)
    limits.admit(("10.0.0.2", 1), closed.closer("idle"))
    limits.answered(refused)  # its 404 is written: only closing is left
    limits.admit(("10.0.0.3", 1), closed.closer("third"))
    limits.admit(("10.0.0.4", 1), closed.closer("new"))
    limits.admit(("10.0.0.5", 1), closed.closer("newer"))
    assert closed == ["idle", "refused"]  # in the order they became idle


def test_when_every_slot_is_answering_the_one_answering_longest_goes() -> None:
    # Refusing the newcomer instead would let stalled handshakes keep the validator out.
    limits, closed = ConnectionLimits(total=2, per_source=2), Closed()
    first = limits.admit(("10.0.0.1", 1), closed.closer("first"))
    second = limits.admit(("10.0.0.2", 1), closed.closer("second"))
    limits.answering(second)
    limits.answering(first)
    newcomer = limits.admit(("10.0.0.3", 1), closed.closer("new"))
    assert closed == ["second"] and not newcomer.evicted and len(limits) == 2


def test_per_source_cap_spares_that_sources_answering_connections() -> None:
    limits, closed = ConnectionLimits(total=10, per_source=3), Closed()
    busy = limits.admit(("10.0.0.1", 1), closed.closer("busy"))
    limits.answering(busy)
    limits.admit(("10.0.0.1", 2), closed.closer("idle1"))
    limits.admit(("10.0.0.1", 3), closed.closer("idle2"))
    limits.admit(("10.0.0.1", 4), closed.closer("idle3"))
    limits.admit(("10.0.0.1", 5), closed.closer("idle4"))
    assert closed == ["idle1", "idle2"] and not busy.evicted
    assert limits.count("10.0.0.1") == 3


def test_progress_after_release_or_eviction_changes_nothing() -> None:
    limits, closed = ConnectionLimits(total=1, per_source=1), Closed()
    old = limits.admit(("10.0.0.1", 1), closed.closer("old"))
    new = limits.admit(("10.0.0.2", 1), closed.closer("new"))
    limits.answering(old)  # its handler had not noticed the eviction yet
    limits.answered(old)
    assert old.evicted and len(limits) == 1
    limits.answering(new)
    limits.answering(new)  # twice: no double counting
    limits.answered(new)
    limits.release(new)
    assert len(limits) == 0


def test_release_frees_the_slot_once() -> None:
    limits, closed = ConnectionLimits(total=1, per_source=1), Closed()
    slot = limits.admit(("10.0.0.1", 1), closed.closer("a"))
    limits.release(slot)
    limits.release(slot)
    assert len(limits) == 0 and limits.count("10.0.0.1") == 0
    limits.admit(("10.0.0.2", 1), closed.closer("b"))
    assert closed == []


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        (("192.0.2.7", 80), "192.0.2.7"),
        (("::ffff:192.0.2.7", 80, 0, 0), "192.0.2.7"),  # an IPv4 client of a dual-stack socket
        (("2001:db8:1:2:aaaa::1", 80, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 80, 0, 0), "2001:db8:1:2::/64"),
        (("fe80::1%lo", 80, 0, 1), "fe80::/64"),
        (None, "?"),
        ("", ""),
    ],
)
def test_sources(peer: object, source: str) -> None:
    assert source_of(peer) == source


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(total=0, per_source=1)


# --- real servers ------------------------------------------------------------------------------


async def _open_from(
    source: str, port: int, payload: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(payload)
    await writer.drain()
    return reader, writer


@contextlib.asynccontextmanager
async def holding(
    port: int, count: int, payload: bytes, source: str = ATTACKER
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    connections = [await _open_from(source, port, payload) for _ in range(count)]
    try:
        yield connections
    finally:
        for _, writer in connections:
            writer.transport.abort()


async def _until(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def _read_or_reset(reader: asyncio.StreamReader) -> bytes:
    """All the server sent before closing; a reset counts as closing (evictions reset)."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def _http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(30):
        answer = await reader.read()
    writer.close()
    return answer


async def test_http01_full_of_one_source_still_answers_another() -> None:
    async with Http01Responder(
        "127.0.0.1", 0, max_connections=8, max_per_source=8, **PATIENT
    ) as responder:
        await responder.present(NAME, TOKEN, KEY_AUTHORIZATION)
        port = responder.bound_port
        async with holding(port, 8, HALF_HTTP):
            await _until(lambda: len(responder._connections) == 8)
            answer = await _http_get(port, f"/.well-known/acme-challenge/{TOKEN}")
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(KEY_AUTHORIZATION.encode())
            assert responder.evictions == 1


async def test_http01_per_source_cap() -> None:
    async with Http01Responder(
        "127.0.0.1", 0, max_connections=64, max_per_source=4, **PATIENT
    ) as responder:
        port = responder.bound_port
        async with holding(port, 10, HALF_HTTP) as connections:
            await _until(lambda: responder.evictions == 6)
            assert responder._limits.count(ATTACKER) == 4
            # The oldest six were the ones closed (reset), without an answer.
            for reader, _ in connections[:6]:
                async with asyncio.timeout(30):
                    assert await _read_or_reset(reader) == b""


async def test_http01_silent_connection_closed_after_first_byte_wait() -> None:
    async with Http01Responder("127.0.0.1", 0, first_byte_timeout=0.2) as responder:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
        async with asyncio.timeout(30):
            assert await reader.read() == b""  # closed, nothing said
        assert time.monotonic() - started >= 0.2
        writer.close()


async def test_http01_dribbling_client_gets_408_at_the_head_deadline() -> None:
    # Bytes keep arriving, one every 20 ms, but the whole head is due 0.5 s after the accept.
    async with Http01Responder("127.0.0.1", 0, read_timeout=0.5) as responder:
        reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
        started = time.monotonic()

        async def dribble() -> None:
            with contextlib.suppress(OSError):
                for byte in HALF_HTTP * 10:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.02)

        dribbler = asyncio.create_task(dribble())
        async with asyncio.timeout(30):
            answer = await reader.read()
        dribbler.cancel()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 5.0


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["acme-tls/1"])
    return context


async def test_tls_alpn01_full_of_one_source_still_serves_another() -> None:
    async with TlsAlpn01Responder(
        "127.0.0.1", 0, max_connections=8, max_per_source=8, handshake_timeout=60, hello_timeout=60
    ) as responder:
        await responder.present(NAME, TOKEN, KEY_AUTHORIZATION)
        port = responder.bound_port
        async with holding(port, 8, HALF_HELLO):
            await _until(lambda: len(responder._connections) == 8)
            async with asyncio.timeout(30):
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=_client_context(), server_hostname="a.example"
                )
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "acme-tls/1"
            writer.close()
            assert responder.evictions == 1


async def test_tls_alpn01_silent_connection_closed_after_first_byte_wait() -> None:
    async with TlsAlpn01Responder("127.0.0.1", 0, first_byte_timeout=0.2) as responder:
        reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
        async with asyncio.timeout(30):
            assert await reader.read() == b""
        writer.close()


async def test_tls_alpn01_one_byte_records_are_cut_off() -> None:
    # A ClientHello announcing 65,000 bytes in 1-byte records: refused with decode_error once
    # it passes the record cap, not after 65,000 records.
    header = b"\x01" + (65000).to_bytes(3, "big")
    records = b"".join(b"\x16\x03\x01\x00\x01" + bytes([byte]) for byte in header)
    records += b"\x16\x03\x01\x00\x01\x00" * MAX_RECORDS
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
        writer.write(records)
        async with asyncio.timeout(30):
            answer = await reader.read()
        writer.close()
    assert answer == b"\x15\x03\x03\x00\x02\x02\x32"  # fatal decode_error (RFC 8446 §6)


# --- the health server -------------------------------------------------------------------------


@pytest.fixture
def patient_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deadlines far beyond the test: only the limits may close the held connections."""
    monkeypatch.setattr(health, "FIRST_BYTE_TIMEOUT", 60.0)
    monkeypatch.setattr(health, "READ_TIMEOUT", 60.0)


@pytest.mark.usefixtures("patient_health")
async def test_healthcheck_passes_with_70_idle_local_sockets() -> None:
    # The finding: 70 idle connections to the health port made `healthcheck` fail.
    async with serving(Snapshots()) as server:
        settings = FakeSettings(("127.0.0.1", server.port))
        async with holding(server.port, 70, b"", source="127.0.0.1"):
            await _until(lambda: len(server._connections) == health.MAX_PER_SOURCE)
            err = io.StringIO()
            assert await cmd_healthcheck(settings, stderr=err) == 0, err.getvalue()


@pytest.mark.usefixtures("patient_health")
async def test_health_server_keeps_room_for_other_sources() -> None:
    half = b"GET /healthz HTTP/1.1\r\n"
    async with serving(Snapshots()) as server:
        settings = FakeSettings(("127.0.0.1", server.port))
        async with holding(server.port, health.MAX_CONNECTIONS + 10, half):
            await _until(lambda: server._limits.count(ATTACKER) == health.MAX_PER_SOURCE)
            err = io.StringIO()
            assert await cmd_healthcheck(settings, stderr=err) == 0, err.getvalue()


async def test_health_server_closes_silent_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "FIRST_BYTE_TIMEOUT", 0.1)
    async with serving(Snapshots()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(30):
            assert await reader.read() == b""
        writer.close()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_healthcheck_says_the_connection_was_dropped(how: str) -> None:
    # What a saturated server does to a probe: accept, then close or reset without a word. That
    # is not "not an HTTP answer", nor "cannot reach".
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if how == "close":
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        linger_zero = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER {on, 0 s}: a reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        err = io.StringIO()
        assert await cmd_healthcheck(FakeSettings(("127.0.0.1", port)), stderr=err) == 1
    finally:
        server.close()
        await server.wait_closed()
    message = err.getvalue()
    assert message.count("\n") == 1
    assert "not an HTTP answer" not in message and "cannot reach" not in message
    assert f"http://127.0.0.1:{port}/readyz accepted the connection but " in message
    assert ("reset" in message) if how == "reset" else ("closed without answering" in message), (
        message
    )
