"""ca_client against a hostile or misconfigured CA: plain http, no trust given, huge bodies."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme

from ca_client.client import AcmeClient
from ca_client.errors import MalformedResponse, NotACME, TLSVerificationFailed
from ca_client.keys import KeyType, generate_private_key
from ca_client.transport import MAX_RESPONSE_BYTES

pytestmark = pytest.mark.anyio

DIRECTORY = "https://ca.test/directory"


def _client(handler: httpx.MockTransport, url: str = DIRECTORY) -> AcmeClient:
    return AcmeClient(url, generate_private_key(KeyType.EC_P256), transport=handler)


def _directory(base: str) -> dict[str, str]:
    return {
        "newNonce": f"{base}/new-nonce",
        "newAccount": f"{base}/new-account",
        "newOrder": f"{base}/new-order",
        "revokeCert": f"{base}/revoke-cert",
        "keyChange": f"{base}/key-change",
    }


def test_a_plain_http_directory_is_refused() -> None:
    with pytest.raises(ValueError, match="https://"):
        AcmeClient("http://ca.test/directory", generate_private_key(KeyType.EC_P256))


async def test_plain_http_urls_handed_out_by_the_ca_are_refused() -> None:
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        if request.url.path == "/directory":
            return httpx.Response(200, json=_directory("http://ca.test"))
        return httpx.Response(200, headers={"Replay-Nonce": "n"})

    async with _client(httpx.MockTransport(handler)) as client:
        with pytest.raises(NotACME, match="not https://"):
            await client.new_account()
    # Nothing was sent to the http:// URLs, not even a HEAD for a nonce.
    assert requests == [DIRECTORY]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_huge_body_is_refused_without_reading_it_all(declared: bool) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b" " * 65536
        while sent < 64 * MAX_RESPONSE_BYTES:
            sent += len(chunk)
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=b"{" + b" " * (2 * MAX_RESPONSE_BYTES) + b"}")
        return httpx.Response(200, content=endless())

    async with _client(httpx.MockTransport(handler)) as client:
        with pytest.raises(MalformedResponse, match="larger than"):
            await client.directory()
    if not declared:
        assert sent <= MAX_RESPONSE_BYTES + 2 * 65536


@pytest.fixture
async def tls_directory(tmp_path: Path) -> AsyncIterator[tuple[str, trustme.CA]]:
    """A real TLS server answering a directory, with a certificate from a fresh trustme CA."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    body = json.dumps(_directory("https://127.0.0.1")).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}/directory", ca
    finally:
        server.close()
        await server.wait_closed()


async def test_without_an_ssl_context_nothing_is_trusted(
    tls_directory: tuple[str, trustme.CA], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = tls_directory
    # The system store, as ssl.create_default_context() sees it, trusts this CA:
    store = tmp_path / "store.pem"
    ca.cert_pem.write_to_path(str(store))
    monkeypatch.setenv("SSL_CERT_FILE", str(store))
    async with AcmeClient(url, generate_private_key(KeyType.EC_P256)) as client:
        with pytest.raises(TLSVerificationFailed, match="no ssl_context was given"):
            await client.directory()
    # With the CA given as the ssl_context, the same server is fine.
    context = ssl.create_default_context(cafile=str(store))
    async with AcmeClient(url, generate_private_key(KeyType.EC_P256), ssl_context=context) as ok:
        directory = await ok.directory()
    assert directory.new_order.endswith("/new-order")
