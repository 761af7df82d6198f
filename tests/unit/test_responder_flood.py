"""A validator in flight while a flood of one connection from each of many sources arrives.

Real responders on loopback. The attacker spreads over many sources (127.0.6.1, 127.0.6.2, ...,
one connection each, the client socket bound before connect), as an attacker with an IPv6 /48
(65,536 /64 sources) can; the validator connects from 127.0.0.1 with three connections, one per
name, as a CA checking three names at once does. Before the fix the responders closed the oldest
connection of the busiest source to make room, and the validator was that source.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

import pytest

from ca_client.challenges import Http01Responder, TlsAlpn01Responder
from ca_client.challenges._listen import Listener
from ca_client.models import Identifier

pytestmark = pytest.mark.anyio

THUMBPRINT = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
NAMES = [Identifier.dns(f"v{index}.example") for index in range(3)]
TOKENS = [f"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-o{index}" for index in range(3)]
HALF_HTTP = b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a\r\n"
HALF_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
SLOTS = 32
# While a validator's request is on its way it is idle like the attacker's connections, but the
# newest idle: it goes only after every older one. Three evictions sufficed before the fix.
FLOOD_IDLE = SLOTS - 4
# Once being answered, no flood of idle connections closes it, however large.
FLOOD = 2 * SLOTS
# Only the limits may close a connection here: every deadline is far beyond the test's length.
DEADLINE = 30.0


def _attacker(index: int) -> str:
    return f"127.0.{6 + index // 250}.{1 + index % 250}"


async def _open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


class Flood:
    """One held connection from each of many sources, each sending a part of a request."""

    def __init__(self, port: int, payload: bytes) -> None:
        self.port = port
        self.payload = payload
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, count: int) -> None:
        for _ in range(count):
            _, writer = await _open_from(_attacker(len(self.writers)), self.port)
            writer.write(self.payload)
            await writer.drain()
            self.writers.append(writer)

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def flood(port: int, payload: bytes) -> AsyncIterator[Flood]:
    attacker = Flood(port, payload)
    try:
        yield attacker
    finally:
        attacker.close()


async def _until(responder: Listener, *, connections: int = 0, evictions: int = 0) -> None:
    async with asyncio.timeout(DEADLINE):
        while len(responder._connections) < connections or responder.evictions < evictions:
            await asyncio.sleep(0.005)


async def test_http01_validator_is_answered_under_a_many_source_flood() -> None:
    async with Http01Responder(
        "127.0.0.1",
        0,
        max_connections=SLOTS,
        max_per_source=SLOTS,
        read_timeout=60.0,
        first_byte_timeout=60.0,
    ) as responder:
        for name, token in zip(NAMES, TOKENS, strict=True):
            await responder.present(name, token, f"{token}.{THUMBPRINT}")
        port = responder.bound_port
        async with flood(port, HALF_HTTP) as attacker:
            await attacker.open(SLOTS)
            await _until(responder, connections=SLOTS)
            # The validator connects for three names at once; its requests are on their way
            # (a round trip: the start is in, the end not yet) when the flood goes on.
            validator = []
            for name, token in zip(NAMES, TOKENS, strict=True):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\n".encode())
                validator.append((name, token, reader, writer))
            await _until(responder, evictions=3)
            await attacker.open(FLOOD_IDLE)
            await _until(responder, evictions=3 + FLOOD_IDLE)
            for name, _, _, writer in validator:
                writer.write(f"Host: {name.value}\r\n\r\n".encode())
            for _, token, reader, writer in validator:
                async with asyncio.timeout(DEADLINE):
                    try:
                        answer = await reader.read()
                    except ConnectionResetError:
                        answer = b"(reset)"
                writer.close()
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                assert answer.endswith(f"{token}.{THUMBPRINT}".encode())


class _TlsClient:
    """A TLS 1.2 client driven step by step over memory BIOs: it can stop mid-handshake.

    TLS 1.2, because there the server's Finished comes only after the client's: the handshake
    completes only if the server kept the connection through the pause.
    """

    def __init__(self, server_name: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a self-signed validation certificate, by design
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["acme-tls/1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)

    def step(self) -> bool:
        """Run the handshake as far as it goes; True once complete."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True


async def _client_hello_answered(
    client: _TlsClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Send the ClientHello, then read until the server's first flight is all in."""
    client.step()
    writer.write(client.outgoing.read())
    async with asyncio.timeout(DEADLINE):
        while True:
            chunk = await reader.read(65536)
            assert chunk, "closed before the server's first flight"
            client.incoming.write(chunk)
            if client.step() or client.outgoing.pending:
                return  # the client has its next flight: the server waits for it


async def _finish(
    client: _TlsClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    writer.write(client.outgoing.read())
    async with asyncio.timeout(DEADLINE):
        while not client.step():
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            client.incoming.write(chunk)
    return True


async def test_tls_alpn01_handshakes_in_flight_survive_a_many_source_flood() -> None:
    async with TlsAlpn01Responder(
        "127.0.0.1",
        0,
        max_connections=SLOTS,
        max_per_source=SLOTS,
        handshake_timeout=60.0,
        hello_timeout=60.0,
        first_byte_timeout=60.0,
    ) as responder:
        for name, token in zip(NAMES, TOKENS, strict=True):
            await responder.present(name, token, f"{token}.{THUMBPRINT}")
        port = responder.bound_port
        async with flood(port, HALF_HELLO) as attacker:
            await attacker.open(SLOTS)
            await _until(responder, connections=SLOTS)
            # Three validation handshakes, each past its ClientHello and being answered.
            validator = []
            for name in NAMES:
                client = _TlsClient(name.value)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await _client_hello_answered(client, reader, writer)
                validator.append((client, reader, writer))
            await attacker.open(FLOOD)
            await _until(responder, evictions=3 + FLOOD)
            outcomes = [await _finish(*connection) for connection in validator]
            for _, _, writer in validator:
                writer.close()
            assert outcomes == [True, True, True]
            assert [client.tls.selected_alpn_protocol() for client, _, _ in validator] == [
                "acme-tls/1"
            ] * 3
