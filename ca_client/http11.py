"""A lean HTTP/1.1 connection pool for the CA, as an httpx transport.

Why not httpcore (httpx's default): with many concurrent orders it spent more CPU managing its
pool than on the requests. Every request that waits for a connection is re-offered every
connection each time one is released, and every idle connection is polled with a syscall
(``select.poll``) on each of those offers. Profiled with 100 certificates in one ``issue``:
about 9,000 pool entries and 30,000 polls for about 600 requests. Here a request takes an idle
connection of its origin (the most recently used one) or opens a new one, and waits on a
semaphore only when ``max_connections`` requests are already in flight; a released connection
goes back to the idle list in O(1). ``bench/RESULTS.md`` has the measurements; re-measured for
issue 17 against httpcore with a semaphore in front (so that no request waits inside its pool),
httpcore still cost 10-17 ms more CPU per certificate, and it hands bytes left after one answer
to the next request (``tests/unit/test_http11.py`` checks both pools with the same byte streams).

A connection is reused only when nothing is left unread after a complete answer (neither in
h11's buffer nor in the stream reader's) and the answer had one framing (not both
Content-Length and Transfer-Encoding, RFC 9112 §6.3): otherwise leftover bytes (a second
answer, a body on a HEAD answer) would become the next request's answer, perhaps another
order's. An idle connection that received anything while idle is discarded when taken.

Only what ACME needs: HTTPS (the CA is always reached over TLS, RFC 8555 §6.1), no proxies,
no HTTP/2 (measured: one multiplexed h2 connection cost more CPU than HTTP/1.1 here). h11
parses and frames the messages, so header limits, chunked bodies and "Connection: close" are
its well-tested code, not ours. Errors are raised as httpx's exception classes, with the
original ``OSError``/``ssl`` error as the cause, so :meth:`ca_client.transport.AcmeTransport._send`
stays the one place that turns transport failures into ``ca_client.errors``.

A kept-alive connection the CA closed is noticed when it is taken from the idle list (its
reader has seen EOF) and replaced; one that the CA closes at the very moment a request is
written fails that request with :class:`httpx.RemoteProtocolError`, which ``AcmeTransport``
retries when the request is idempotent. Idle connections are closed after
:data:`KEEPALIVE_EXPIRY` seconds, so a sidecar that renews a few times a day holds no sockets
in between. A CA that went away without closing anything (a container restarted) is noticed
only by a timeout; then every idle connection to it is closed too, so that the retry does not
meet another silent one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Final, SupportsIndex, cast

import h11
import httpx

#: Seconds an idle connection is kept for reuse (httpcore's default too). Renewals come in
#: bursts, so within a pass connections are reused; between passes they are closed. Short,
#: because a CA container that restarts may vanish without closing its connections (its
#: network namespace goes, and with it any FIN or RST), and a request written to such a
#: connection only ends at its read timeout.
KEEPALIVE_EXPIRY: Final = 5.0
#: Bytes asked of the socket per read. ACME answers are a few kB; a chain fits in one read.
READ_SIZE: Final = 64 * 1024
#: Largest response head (status line and headers) accepted. A CA's head is under 2 kB.
MAX_HEAD_BYTES: Final = 64 * 1024

Origin = tuple[str, int]


class PoolClosed(httpx.TransportError):
    """A request on a pool after its ``aclose``; ``AcmeTransport`` turns it into
    :class:`ca_client.errors.TransportClosed`."""


class _Reader(asyncio.StreamReader):
    """A stream reader that counts the bytes the connection delivered to it.

    asyncio reads the socket as soon as it is readable, so bytes the CA sends after a complete
    response sit in this reader's buffer, not in the socket: a ``poll`` of the socket (what
    httpcore does) would not see them. Counting what came in against what was read out does,
    without a syscall.
    """

    def __init__(self) -> None:
        super().__init__(limit=READ_SIZE)
        self.received = 0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.received += len(cast("bytes", data))  # asyncio's protocol feeds bytes
        super().feed_data(data)


class _Connection:
    """One TLS connection to one origin, with its h11 state."""

    __slots__ = ("consumed", "idle_since", "origin", "reader", "state", "writer")

    def __init__(self, origin: Origin, reader: _Reader, writer: asyncio.StreamWriter) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.state = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.idle_since = 0.0
        self.consumed = 0  # bytes read out of ``reader``

    def reusable(self) -> bool:
        """Still open, the CA has not closed its side, and no byte is waiting.

        A byte that arrives when no request is outstanding answers nothing we asked: a second
        response, a body on a HEAD answer, a body longer than its Content-Length. Reusing the
        connection would hand it to the next request, perhaps another order's, as its answer
        (an attacker's ``201 Created`` with its own ``Location``). Such a connection is closed.
        """
        trailing, closed = self.state.trailing_data
        return not (
            trailing
            or closed
            or self.reader.received != self.consumed
            or self.reader.at_eof()
            or self.writer.transport.is_closing()
        )

    def close(self) -> None:
        # abort, not close: no TLS close_notify round trip to wait for, nothing left to send.
        self.writer.transport.abort()


class _Body(httpx.AsyncByteStream):
    """The response body, read from the connection as httpx asks for it; the connection goes
    back to the pool when the whole message was read, else it is closed."""

    def __init__(
        self,
        pool: Http11Transport,
        connection: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._request = request
        self._read_timeout = read_timeout
        self._complete = False
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while not self._complete:
            try:
                event = await _next_event(connection, self._request, self._read_timeout)
            except httpx.TransportError:
                self._pool._drop_idle(connection.origin)
                raise
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
            else:  # pragma: no cover - h11 yields only Data or EndOfMessage in a body
                raise httpx.RemoteProtocolError(
                    f"unexpected {type(event).__name__} in a response body", request=self._request
                )

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        self._pool._release(self._connection)


async def _next_event(
    connection: _Connection, request: httpx.Request, read_timeout: float | None
) -> h11.Event:
    """The next h11 event of the response, reading from the socket as needed."""
    state = connection.state
    while True:
        try:
            event = state.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(
                f"invalid HTTP/1.1 from the CA: {exc}", request=request
            ) from exc
        if isinstance(event, h11.Event):
            if isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError(
                    "the CA closed the connection without a complete response", request=request
                )
            return event
        if event is h11.PAUSED:  # pragma: no cover - only after a complete response
            raise httpx.RemoteProtocolError("the CA answered more than asked", request=request)
        try:
            async with asyncio.timeout(read_timeout):
                data = await connection.reader.read(READ_SIZE)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out reading from the CA", request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(f"reading from the CA failed: {exc}", request=request) from exc
        connection.consumed += len(data)
        if not data and state.their_state is h11.SEND_RESPONSE:
            # EOF before a single byte of the answer: typically a kept-alive connection the CA
            # closed just as the request went out (httpcore says the same thing here).
            raise httpx.RemoteProtocolError(
                "server disconnected without sending a response", request=request
            )
        state.receive_data(data)


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTPS/1.1 with a pool of at most ``max_connections`` requests in flight.

    ``ssl_context`` is the only trust (the caller builds it from the CA bundle); each
    connection verifies the server's name (``server_hostname`` is the URL's host).
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._in_use: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    # --- httpx's interface ----------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise PoolClosed("the connection pool to the CA is closed", request=request)
        url = request.url
        if url.scheme != "https":
            raise httpx.UnsupportedProtocol(
                f"only https:// is supported, not {url.scheme!r}", request=request
            )
        origin: Origin = (url.host, url.port or 443)
        timeouts = request.extensions.get("timeout", {})
        pool_timeout = timeouts.get("pool")
        try:
            async with asyncio.timeout(pool_timeout):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no free connection to the CA", request=request) from exc
        connection: _Connection | None = None
        try:
            connection = self._take_idle(origin)
            if connection is None:
                connection = await self._connect(origin, request, timeouts.get("connect"))
            self._in_use.add(connection)
            head = await self._exchange(connection, request, timeouts)
        except BaseException as exc:
            # Any failure, cancellation included: the connection's state is unknown.
            if connection is not None:
                self._in_use.discard(connection)
                connection.close()
            self._slots.release()
            if isinstance(exc, httpx.TransportError):
                self._drop_idle(origin)
            raise
        return httpx.Response(
            head.status_code,
            headers=list(head.headers),
            stream=_Body(self, connection, request, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": bytes(head.reason)},
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        for connection in self._in_use:
            connection.close()
        self._in_use.clear()

    # --- connections ----------------------------------------------------------------------

    def _take_idle(self, origin: Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        cutoff = asyncio.get_running_loop().time() - self._keepalive_expiry
        while connections:
            connection = connections.pop()  # the most recently used: least likely expired
            if connection.idle_since > cutoff and connection.reusable():
                return connection
            connection.close()
        return None

    async def _connect(
        self, origin: Origin, request: httpx.Request, connect_timeout: float | None
    ) -> _Connection:
        host, port = origin
        loop = asyncio.get_running_loop()
        reader = _Reader()
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            async with asyncio.timeout(connect_timeout):
                # asyncio.open_connection, with the counting reader above.
                transport, _ = await loop.create_connection(
                    lambda: protocol, host, port, ssl=self._ssl_context, server_hostname=host
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"timed out connecting to {host}:{port}", request=request
            ) from exc
        except OSError as exc:  # ssl.SSLError included: the cause tells verification apart
            raise httpx.ConnectError(
                f"cannot connect to {host}:{port}: {exc}", request=request
            ) from exc
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return _Connection(origin, reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        timeouts: dict[str, float | None],
    ) -> h11.Response:
        """Send the request, then read up to the end of the response head."""
        state = connection.state
        body = await request.aread()
        target = request.url.raw_path
        headers = list(request.headers.raw)
        try:
            data = state.send(h11.Request(method=request.method, target=target, headers=headers))
            if body:
                data += state.send(h11.Data(data=body))
            data += state.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        try:
            async with asyncio.timeout(timeouts.get("write")):
                connection.writer.write(data)
                await connection.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("timed out writing to the CA", request=request) from exc
        except OSError as exc:
            raise httpx.WriteError(f"writing to the CA failed: {exc}", request=request) from exc
        while True:
            event = await _next_event(connection, request, timeouts.get("read"))
            if isinstance(event, h11.Response):
                break
            # 1xx informational answers (RFC 9110 §15.2) precede the real one; skip them.
        names = {name for name, _ in event.headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            # RFC 9112 §6.3: such a message "might indicate an attempt to perform request
            # smuggling or response splitting and ought to be handled as an error"; the two
            # framings disagree on where this answer ends and the next begins. h11 follows
            # Transfer-Encoding; we refuse, and the caller closes the connection.
            raise httpx.RemoteProtocolError(
                "the CA's answer has both Content-Length and Transfer-Encoding (RFC 9112 §6.3)",
                request=request,
            )
        return event

    def _drop_idle(self, origin: Origin) -> None:
        """Close the origin's idle connections after one of its connections failed: what
        broke it (a CA restart, a changed network path) has most likely broken them too, and
        a retry must not meet the same silent connection again."""
        for connection in self._idle.pop(origin, []):
            connection.close()

    def _release(self, connection: _Connection) -> None:
        """Back to the idle list when both sides finished the exchange (a body read to its
        end, no "Connection: close"), else closed."""
        self._in_use.discard(connection)
        self._slots.release()
        state = connection.state
        if (
            not self._closed
            and state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and connection.reusable()
        ):
            state.start_next_cycle()
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.setdefault(connection.origin, []).append(connection)
            if self._sweep is None:
                self._sweep = loop.call_later(self._keepalive_expiry, self._close_expired)
            return
        connection.close()

    def _close_expired(self) -> None:
        """Close connections idle for longer than the expiry; come back while any remain."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._keepalive_expiry
        oldest_kept: float | None = None
        for origin, connections in list(self._idle.items()):
            kept = []
            for connection in connections:
                if connection.idle_since <= cutoff:
                    connection.close()
                else:
                    kept.append(connection)
                    if oldest_kept is None or connection.idle_since < oldest_kept:
                        oldest_kept = connection.idle_since
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]
        if oldest_kept is not None:
            delay = max(oldest_kept + self._keepalive_expiry - loop.time(), 0.0)
            self._sweep = loop.call_later(delay, self._close_expired)

    # --- for tests and status -------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use."""
        idle = sum(len(connections) for connections in self._idle.values())
        return idle + len(self._in_use)


__all__ = ["KEEPALIVE_EXPIRY", "Http11Transport", "PoolClosed"]
