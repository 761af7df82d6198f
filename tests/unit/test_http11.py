"""ca_client.http11 against real TLS servers on loopback: pooling, keep-alive, hostile answers.

Each test scripts the server's side byte by byte (asyncio + a trustme CA), so that what a
real CA does only sometimes (close a kept-alive connection, answer in chunks, stall, send
garbage) happens on every run.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca_client.errors import ACMETimeout, CAUnreachable, MalformedResponse
from ca_client.http11 import Http11Transport
from ca_client.transport import MAX_RESPONSE_BYTES, AcmeTransport

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class Server:
    """A scripted HTTPS server; counts connections (open now, most at once, in all)."""

    url: str
    client_context: ssl.SSLContext
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


_CA = trustme.CA()


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _CA.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    _CA.configure_trust(client)
    return server, client


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: its head, and a Content-Length body when there is one."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def start(handler: Handler) -> Server:
        server_context, client_context = _contexts()
        state = Server("", client_context)

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            state.connections += 1
            state.open_now += 1
            state.most_open = max(state.most_open, state.open_now)
            try:
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                state.open_now -= 1
                writer.transport.abort()
                state.closed.set()
                tasks.discard(task)

        server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=server_context)
        servers.append(server)
        state.url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return state

    yield start
    for server in servers:
        server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _client(server: Server, **options: float) -> httpx.AsyncClient:
    transport = Http11Transport(
        server.client_context,
        max_connections=int(options.pop("max_connections", 4)),
        **options,
    )
    return httpx.AsyncClient(transport=transport, timeout=10.0)


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()


async def test_sequential_requests_share_one_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve(keep_alive)
    async with _client(server) as client:
        for _ in range(5):
            response = await client.post(server.url + "/acme", content=b"x" * 100)
            assert response.status_code == 200
            assert response.json() == {}
    assert server.connections == 1


async def test_concurrent_requests_never_exceed_max_connections(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.01)  # so that requests overlap; the assertion does not time
            writer.write(OK)
            await writer.drain()

    server = await serve(slow)
    async with _client(server, max_connections=3) as client:
        responses = await asyncio.gather(*(client.get(server.url + "/") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert server.most_open <= 3
    assert server.connections <= 3


async def test_a_kept_alive_connection_the_server_closed_is_replaced(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)  # keep-alive by HTTP/1.1 default, then the server closes anyway
        await writer.drain()

    server = await serve(one_then_close)
    async with _client(server) as client:
        assert (await client.get(server.url + "/")).status_code == 200
        await asyncio.wait_for(server.closed.wait(), 10)
        transport = client._transport
        assert isinstance(transport, Http11Transport)
        # The client has seen the EOF once the loop ran its callbacks; no request failed.
        for _ in range(100):
            await asyncio.sleep(0)
        assert (await client.get(server.url + "/")).status_code == 200
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}",  # delimited by the close
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["connection-close", "close-delimited", "http-1.0"],
)
async def test_an_answer_that_ends_the_connection_is_not_reused(
    serve: Callable[..., Awaitable[Server]], answer: bytes
) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        if b"Content-Length" in answer:
            await asyncio.sleep(0.5)  # the server does not close first: the client must

    server = await serve(once)
    async with _client(server) as client:
        for _ in range(3):
            response = await client.get(server.url + "/")
            assert response.content == b"{}"
    assert server.connections == 3


async def test_chunked_bodies_and_informational_answers_are_read(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b'{"a"', b": ", b"1}"):
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    server = await serve(chunked)
    async with _client(server) as client:
        for _ in range(2):
            assert (await client.get(server.url + "/")).json() == {"a": 1}
    assert server.connections == 1


async def test_head_answers_have_no_body_and_keep_the_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nReplay-Nonce: n1\r\nContent-Length: 500\r\n\r\n")
            await writer.drain()

    server = await serve(head)
    async with _client(server) as client:
        for _ in range(3):
            response = await client.head(server.url + "/new-nonce")
            assert response.headers["replay-nonce"] == "n1"
            assert response.content == b""
    assert server.connections == 1


def _acme(server: Server, **options: float) -> AcmeTransport:
    loop = asyncio.get_running_loop()
    transport = Http11Transport(
        server.client_context, max_connections=int(options.pop("max_connections", 4))
    )
    return AcmeTransport(
        ssl_context=server.client_context,
        timeout=float(options.pop("timeout", 10.0)),
        clock=loop.time,
        sleep=asyncio.sleep,
        transport=transport,
    )


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * (128 * 1024) + b"\r\n\r\n",  # a head past the limit
        b"",
    ],
    ids=["not-http", "truncated", "negative-length", "bad-chunk", "huge-head", "nothing"],
)
async def test_a_broken_answer_is_one_ca_unreachable_error(
    serve: Callable[..., Awaitable[Server]], answer: bytes
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    server = await serve(broken)
    acme = _acme(server)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(CAUnreachable) as caught:
            await acme.get(server.url + "/directory", deadline=loop.time() + 10)
        assert isinstance(caught.value.__cause__, httpx.TransportError)
    finally:
        await acme.aclose()


async def test_a_stalled_answer_times_out_and_frees_its_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    stall = asyncio.Event()

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            if not stall.is_set():
                stall.set()
                await asyncio.sleep(3600)
            writer.write(OK)
            await writer.drain()

    server = await serve(stalled)
    acme = _acme(server, max_connections=1, timeout=0.2)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(ACMETimeout):
            await acme.get(server.url + "/directory", deadline=loop.time() + 60)
        # The only slot is free again, and the stalled connection was not reused.
        response = await acme.get(server.url + "/directory", deadline=loop.time() + 60)
        assert response.status == 200
    finally:
        await acme.aclose()
    assert server.connections == 2


async def test_a_cancelled_request_frees_its_slot(serve: Callable[..., Awaitable[Server]]) -> None:
    first = asyncio.Event()

    async def hang_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if not first.is_set():
            first.set()
            await asyncio.sleep(3600)
        writer.write(OK)
        await writer.drain()
        await keep_alive(reader, writer)

    server = await serve(hang_first)
    async with _client(server, max_connections=1) as client:
        hanging = asyncio.ensure_future(client.get(server.url + "/"))
        await asyncio.wait_for(first.wait(), 10)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        transport = client._transport
        assert isinstance(transport, Http11Transport)
        assert transport.open_connections == 0
        response = await asyncio.wait_for(client.get(server.url + "/"), 10)
        assert response.status_code == 200


async def test_a_body_past_the_cap_is_refused_and_its_connection_closed(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        # 64 MiB at most. Once the peer is gone asyncio's drain() neither raises nor yields,
        # so the loop also checks and yields itself.
        for _ in range(1024):
            if writer.is_closing():
                break
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)

    server = await serve(endless)
    acme = _acme(server)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(MalformedResponse, match="larger than"):
            await acme.get(server.url + "/directory", deadline=loop.time() + 30)
        transport = acme._transport
        assert isinstance(transport, Http11Transport)
        assert transport.open_connections == 0
    finally:
        await acme.aclose()
    assert MAX_RESPONSE_BYTES < 64 * 1024 * 1024


async def test_idle_connections_are_closed_after_the_expiry(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve(keep_alive)
    async with _client(server, keepalive_expiry=0.05) as client:
        assert (await client.get(server.url + "/")).status_code == 200
        transport = client._transport
        assert isinstance(transport, Http11Transport)
        assert transport.open_connections == 1
        # The server sees the client close it, with no request made in between.
        await asyncio.wait_for(server.closed.wait(), 10)
        assert transport.open_connections == 0


async def test_plain_http_is_refused(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve(keep_alive)
    async with _client(server) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(server.url.replace("https://", "http://") + "/")
    assert server.connections == 0


async def test_a_certificate_for_another_name_is_a_verification_error(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve(keep_alive)
    other = Server(server.url.replace("127.0.0.1", "localhost"), server.client_context)
    async with _client(other) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(other.url + "/")
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    answer=st.binary(max_size=300) | st.builds(lambda t: b"HTTP/1.1 " + t, st.binary(max_size=300))
)
async def test_any_answer_gives_a_response_or_a_transport_error(
    serve: Callable[..., Awaitable[Server]], answer: bytes
) -> None:
    async def arbitrary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    server = await serve(arbitrary)
    async with _client(server) as client:
        try:
            response = await asyncio.wait_for(client.get(server.url + "/"), 10)
        except httpx.TransportError:
            return
        assert 100 <= response.status_code <= 999


async def test_after_a_connection_goes_silent_a_retry_opens_a_new_one(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    # A CA container that restarts can vanish without closing its connections: requests on
    # them are never answered. Once one has timed out, its idle siblings are not tried next.
    silent = asyncio.Event()
    answered = asyncio.Event()

    async def restarting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected_before = silent.is_set()
        while True:
            await read_request(reader)
            if silent.is_set() and not connected_before:
                await asyncio.sleep(3600)
            await asyncio.wait_for(answered.wait(), 10)  # both first requests in flight at once
            writer.write(OK)
            await writer.drain()

    server = await serve(restarting)
    async with _client(server, max_connections=2) as client:
        first = [asyncio.ensure_future(client.get(server.url + "/")) for _ in range(2)]
        async with asyncio.timeout(10):
            while server.connections < 2:
                await asyncio.sleep(0.01)
        answered.set()
        assert [(await f).status_code for f in first] == [200, 200]
        transport = client._transport
        assert isinstance(transport, Http11Transport)
        assert transport.open_connections == 2
        silent.set()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url + "/", timeout=0.2)
        response = await client.get(server.url + "/", timeout=5.0)
        assert response.status_code == 200
    assert server.connections == 3


async def test_an_answer_trickled_a_byte_at_a_time_is_bounded_as_a_whole(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    # Slow bytes: each byte well within the read timeout, the answer never complete. The
    # request's timeout bounds the whole exchange, not each read.
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for byte in b"HTTP/1.1 200 OK\r\nX: " + b"a" * 10_000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    server = await serve(trickle)
    acme = _acme(server, timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(ACMETimeout, match="no complete answer"):
            await acme.get(server.url + "/directory", deadline=started + 60)
    finally:
        await acme.aclose()
    # Bounded by the 0.5 s timeout, not by the 200 s the trickle would take (generous margin).
    assert loop.time() - started < 30


# --- issue 17, finding 1: bytes after a complete answer never answer the next request -------

EVIL = (
    b"HTTP/1.1 201 Created\r\nLocation: https://evil.example/order/1\r\nContent-Length: 0\r\n\r\n"
)


def _own(path: bytes) -> bytes:
    """An answer that names the request it answers (its path)."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)


async def answer_with_own_path(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        request = await read_request(reader)
        writer.write(_own(request.split(b" ", 2)[1]))
        await writer.drain()


async def _settle() -> None:
    """Let the event loop deliver what the in-process server wrote (one loop, loopback)."""
    for _ in range(100):
        await asyncio.sleep(0)


@pytest.mark.parametrize("apart", [False, True], ids=["same-write", "written-later"])
async def test_a_second_answer_after_the_first_never_answers_the_next_request(
    serve: Callable[[Handler], Awaitable[Server]], apart: bool
) -> None:
    # The reproduction of issue 17: a 201 with an attacker's Location appended to the answer.
    # Whether it came in the same read as the answer (left in h11's buffer) or later, while
    # the connection was idle (left in the stream reader's), it must not be the next answer.
    appended = asyncio.Event()

    async def appending(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            return await answer_with_own_path(reader, writer)
        request = await read_request(reader)
        answer = _own(request.split(b" ", 2)[1])
        if apart:
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(EVIL)
        else:
            writer.write(answer + EVIL)
        await writer.drain()
        appended.set()
        await answer_with_own_path(reader, writer)

    server = await serve(appending)
    async with _client(server) as client:
        first = await client.get(server.url + "/first")
        assert (first.status_code, first.content) == (200, b"/first")
        await asyncio.wait_for(appended.wait(), 10)
        await _settle()
        second = await client.get(server.url + "/second")
        assert (second.status_code, second.content) == (200, b"/second")
        assert "location" not in second.headers
    assert server.connections == 2  # the connection with the extra bytes was not reused


async def test_a_body_on_a_head_answer_is_not_the_next_answer(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # RFC 9110 §9.3.2: a HEAD answer has no body, whatever its Content-Length says. Bytes
    # sent as one anyway belong to no request.
    async def head_with_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            return await answer_with_own_path(reader, writer)
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nReplay-Nonce: n1\r\nContent-Length: %d\r\n\r\n" % len(EVIL)
        )
        writer.write(EVIL)
        await writer.drain()
        await answer_with_own_path(reader, writer)

    server = await serve(head_with_body)
    async with _client(server) as client:
        nonce = await client.head(server.url + "/new-nonce")
        assert nonce.headers["replay-nonce"] == "n1"
        await _settle()
        answer = await client.get(server.url + "/order")
        assert (answer.status_code, answer.content) == (200, b"/order")
    assert server.connections == 2


async def test_both_content_length_and_transfer_encoding_is_an_error_and_not_reused(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # RFC 9112 §6.3: "ought to be handled as an error". The two framings disagree on where the
    # answer ends; here chunked framing ends it early and leaves a 201 for the next request.
    async def ambiguous(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            return await answer_with_own_path(reader, writer)
        await read_request(reader)
        body = b"2\r\n{}\r\n0\r\n\r\n" + EVIL
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
            % len(body)
            + body
        )
        await writer.drain()
        await answer_with_own_path(reader, writer)

    server = await serve(ambiguous)
    async with _client(server) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="Content-Length and Transfer-Encoding"):
            await client.get(server.url + "/first")
        await _settle()
        answer = await client.get(server.url + "/second")
        assert (answer.status_code, answer.content) == (200, b"/second")
    assert server.connections == 2


_STATUS_LINES = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.1 201 Created", b"HTTP/1.1 100 Continue", b"HTTP/1.0 200 OK"]
)
_HEADER_LINES = st.sampled_from(
    [
        b"Content-Length: 0",
        b"Content-Length: 2",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Location: https://evil.example/order",
    ]
)
_BODIES = st.sampled_from([b"", b"{}", b"2\r\n{}\r\n0\r\n\r\n", b"0\r\n\r\n"])
#: Answers built like HTTP messages, so that complete ones, two in a row, ones cut short and
#: ones with a body too many are all likely; raw bytes in between for the rest.
_ANSWERS = st.lists(
    st.builds(
        lambda status, headers, body: b"\r\n".join([status, *headers, b"", body]),
        _STATUS_LINES,
        st.lists(_HEADER_LINES, max_size=3),
        _BODIES,
    )
    | st.binary(max_size=8),
    min_size=1,
    max_size=3,
).map(b"".join)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(answer=_ANSWERS)
async def test_any_byte_stream_answers_only_its_own_request(
    serve: Callable[[Handler], Awaitable[Server]], answer: bytes
) -> None:
    # Whatever the first answer on a connection is (complete, cut short, two answers, garbage),
    # the first request gets a response or a transport error, and the next request gets its
    # own answer: never a byte of the first one's.
    async def first_arbitrary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections == 1:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        await answer_with_own_path(reader, writer)

    server = await serve(first_arbitrary)
    async with _client(server) as client:
        try:
            # Short: an answer cut short is only ended by the timeout (then a transport error).
            first = await client.get(server.url + "/first", timeout=0.3)
        except httpx.TransportError:
            pass
        else:
            assert 100 <= first.status_code <= 999
        await _settle()
        second = await client.get(server.url + "/second", timeout=10.0)
        assert (second.status_code, second.content) == (200, b"/second")


# --- issue 17: http11 against httpcore (httpx's own pool), the same byte streams --------------


def _outcome(result: httpx.Response | BaseException) -> tuple[object, ...]:
    """What a caller can tell apart: the answer, or the kind of transport error."""
    if isinstance(result, httpx.Response):
        return ("response", result.status_code, result.content)
    if isinstance(result, httpx.TimeoutException):
        return ("timeout",)
    if isinstance(result, httpx.ProtocolError):
        return ("protocol error",)
    if isinstance(result, httpx.NetworkError):
        return ("network error",)
    raise result  # anything else is a bug in either client


async def _first_answer(
    serve: Callable[[Handler], Awaitable[Server]], answer: bytes, pool: str
) -> tuple[object, ...]:
    """Request once through ``pool`` from a server that sends ``answer`` and closes cleanly."""

    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()  # with TLS close_notify: an end of the stream, not a broken one
        await writer.wait_closed()

    server = await serve(answer_then_close)
    transport: httpx.AsyncBaseTransport
    if pool == "http11":
        transport = Http11Transport(server.client_context, max_connections=4)
    else:
        transport = httpx.AsyncHTTPTransport(verify=server.client_context, trust_env=False)
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
        try:
            result: httpx.Response | BaseException = await client.get(server.url + "/")
        except httpx.TransportError as exc:
            result = exc
    return _outcome(result)


def _both_framings(answer: bytes) -> bool:
    # Any head of the answer: a final head may follow 1xx interim heads.
    return any(
        block.startswith(b"http/")
        and b"content-length:" in block
        and b"transfer-encoding:" in block
        for block in answer.lower().split(b"\r\n\r\n")
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(answer=_ANSWERS)
async def test_http11_and_httpcore_read_any_answer_alike(
    serve: Callable[[Handler], Awaitable[Server]], answer: bytes
) -> None:
    # Both frame HTTP/1.1 with h11, so for one answer on one connection they must agree: the
    # same status and body, or an error of the same kind. The one deliberate difference:
    # http11 refuses an answer with both Content-Length and Transfer-Encoding (RFC 9112 §6.3),
    # which httpcore reads as chunked.
    ours = await _first_answer(serve, answer, "http11")
    if _both_framings(answer) and ours == ("protocol error",):
        return
    theirs = await _first_answer(serve, answer, "httpcore")
    assert ours == theirs


async def test_httpcore_hands_an_appended_answer_to_the_next_request_and_http11_does_not(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # The measured reason http11 stays (bench/RESULTS.md, issue 17) is CPU; this is the other
    # one. If this ever fails for httpcore, httpcore learnt to refuse such a connection.
    results: dict[str, tuple[int, bytes]] = {}
    for pool in ("http11", "httpcore"):
        connections = 0

        async def appending(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            if connections == 1:
                request = await read_request(reader)
                writer.write(_own(request.split(b" ", 2)[1]) + EVIL)
                await writer.drain()
            await answer_with_own_path(reader, writer)

        server = await serve(appending)
        transport: httpx.AsyncBaseTransport
        if pool == "http11":
            transport = Http11Transport(server.client_context, max_connections=4)
        else:
            transport = httpx.AsyncHTTPTransport(verify=server.client_context, trust_env=False)
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            first = await client.get(server.url + "/first")
            assert first.content == b"/first"
            await _settle()
            second = await client.get(server.url + "/second")
        results[pool] = (second.status_code, second.content)
    assert results == {"http11": (200, b"/second"), "httpcore": (201, b"")}
