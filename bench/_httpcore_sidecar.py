"""``cert-sidecar`` with httpx's own pool (httpcore) in place of ``ca_client.http11``.

For issue 17's measurement (``bench/many.py --transports``): the same command line as the
``cert-sidecar`` console script, but the connection pool to the CA is
``httpx.AsyncHTTPTransport`` (httpcore's ``AsyncConnectionPool``) with the same limits as
http11 (``max_connections`` connections, all of them kept alive, 5 s keep-alive expiry, the
same TLS context), behind a semaphore that lets at most ``max_connections`` requests in at
once. httpcore's CPU churn came from requests queued inside its pool (each one re-offered
every released connection, with a ``poll`` per idle connection per offer); with the semaphore
no request ever waits inside it.

A request holds its slot until its body is closed, as a connection is busy until then.

Usage (as the console script): .venv/bin/python bench/_httpcore_sidecar.py issue ...
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

import ca_client.transport  # noqa: E402
from ca_client.http11 import KEEPALIVE_EXPIRY  # noqa: E402


class _SlotStream(httpx.AsyncByteStream):
    """The response body; closing it gives the request's slot back (once)."""

    def __init__(self, stream: httpx.AsyncByteStream, slots: asyncio.Semaphore) -> None:
        self._stream = stream
        self._slots = slots
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if not self._released:
                self._released = True
                self._slots.release()


class SemaphoreHttpcore(httpx.AsyncBaseTransport):
    """httpcore's pool with at most ``max_connections`` requests in flight."""

    def __init__(self, ssl_context: ssl.SSLContext, *, max_connections: int) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._inner = httpx.AsyncHTTPTransport(
            verify=ssl_context,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _SlotStream(response.stream, self._slots)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def main() -> int:
    # AcmeTransport builds its pool as Http11Transport(ssl_context, max_connections=n).
    ca_client.transport.Http11Transport = SemaphoreHttpcore  # type: ignore[misc,assignment]
    from sidecar.cli import main as sidecar_main

    return sidecar_main()


if __name__ == "__main__":
    sys.exit(main())
