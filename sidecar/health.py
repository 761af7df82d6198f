"""``/healthz``, ``/readyz``, ``/metrics`` on ``--health-listen``; ``cert-sidecar healthcheck``.

The server is a deliberately small HTTP/1.1 implementation on asyncio streams (no framework: three
read-only endpoints do not earn a dependency). It is strict rather than forgiving, because the
only clients are probes, Prometheus and curl: one request per connection (``Connection: close``),
GET and HEAD only, no request body, bounded request head, a short wait for the first byte, a
deadline for reading the request and for writing the answer, and a cap on simultaneous
connections, per source and in all, so a slow or hostile client cannot pin the service's event
loop or memory. The cap never refuses a newcomer: when it is reached, the connection idle the
longest (no whole request yet, or its answer written) is closed instead
(``ca_client.challenges.serving``, shared with the challenge responders), so a pile of idle local
sockets cannot make ``healthcheck`` fail. A client given up on (evicted, or not reading its answer
within ``WRITE_TIMEOUT``) is reset (``SO_LINGER`` 0), not closed: a close would leave the unsent
answer in the kernel's send queue until TCP gives up, minutes later.

``cmd_healthcheck`` runs every few seconds inside the container (Docker/compose ``HEALTHCHECK``):
it uses asyncio streams and imports nothing heavy (``sidecar.metrics`` is pure and light).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from ca_client.challenges import serving
from ca_client.challenges.serving import (
    ConnectionLimits,
    HeadNotRead,
    HttpRequest,
    HttpRequestError,
    Slot,
    dual_stack_socket,
    normalize_host,
    read_request_head,
    reset_connection,
)
from ca_client.lifecycle import StartStop
from sidecar.errors import OperationError, one_line, os_error_text
from sidecar.metrics import (
    CONTENT_TYPE as METRICS_CONTENT_TYPE,
)
from sidecar.metrics import (
    CertStatus,
    Metrics,
    readiness,
    render,
    status_to_json,
)

__all__ = [
    "HEALTHCHECK_TIMEOUT",
    "HealthBindError",
    "HealthServer",
    "HealthSnapshot",
    "HttpRequest",
    "HttpRequestError",
    "cmd_healthcheck",
    "connect_host",
    "parse_request_head",
    "readyz_body",
]

logger = logging.getLogger(__name__)

HEALTHCHECK_TIMEOUT = 3.0

MAX_HEAD_BYTES = 8 * 1024  # request line + headers; probes send a few hundred bytes
MAX_HEADERS = 64
FIRST_BYTE_TIMEOUT = 2.0  # probes and Prometheus write their request as soon as they connect
READ_TIMEOUT = 5.0  # from accepting a connection to having the whole request head
# From a whole request to the client having read the answer (a /metrics answer for 1,000
# certificates is a few hundred KiB); a client still not done is reset.
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # Prometheus and a probe or two need a handful
MAX_PER_SOURCE = 16  # one address (all local probes share 127.0.0.1: eviction keeps them going)
_MAX_PROBE_ANSWER = 4 * 1024 * 1024
_MAX_DISCARD = 64 * 1024  # what a client may still send after its request, before it closes

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HealthBindError(OperationError):
    """The health listener could not be opened (address in use, no such address, ...)."""


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """What the service loop reports at the moment of a request.

    ``alive`` is false when the loop knows it is broken (its scheduler stopped, it is shutting
    down): ``/healthz`` then answers 503 with ``detail``. ``statuses`` and ``metrics`` feed
    ``/readyz`` and ``/metrics``.
    """

    statuses: Sequence[CertStatus]
    metrics: Metrics
    alive: bool = True
    detail: str | None = None


# --- pure: request parsing and answers ---------------------------------------------------------


def parse_request_head(head: bytes) -> HttpRequest:
    """Parse a request head strictly (the parser shared with the http-01 responder).

    Only origin-form targets (``/path?query``): a probe never needs the absolute form.
    """
    return serving.parse_request_head(head, max_headers=MAX_HEADERS)


def readyz_body(snapshot: HealthSnapshot, now: datetime) -> tuple[bool, dict[str, Any]]:
    """Readiness and the ``/readyz`` JSON body: per-certificate state, reasons and CA errors."""
    ready, reasons = readiness(snapshot.statuses, now)
    if not snapshot.alive:
        ready = False
        reasons = [f"service loop: {snapshot.detail or 'not running'}", *reasons]
    metrics = snapshot.metrics
    body: dict[str, Any] = {
        "ready": ready,
        "reasons": reasons,
        "ca": {
            "reachable": metrics.ca_reachable,
            "error": metrics.ca_error,
            "clock_skew_seconds": metrics.clock_skew,
        },
        "certificates": [status_to_json(status, now) for status in snapshot.statuses],
    }
    return ready, body


def _response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    head_only: bool = False,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in extra_headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def _text(status: int, text: str, *, head_only: bool = False, **kwargs: Any) -> bytes:
    return _response(
        status, (text + "\n").encode(), "text/plain; charset=utf-8", head_only=head_only, **kwargs
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- the server ------------------------------------------------------------------------------


async def _deliver(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes
) -> None:
    """Write ``answer`` and wait until the client has it: its end of the connection closes.

    ``drain()`` returning says only that the kernel took the bytes: it takes a whole ``/metrics``
    answer into the send queue of a client that never reads. So the answer ends with a FIN, and
    the client's own close (every client reads to the end of a ``Connection: close`` answer,
    then closes) is what says it was delivered; the caller's deadline covers the whole wait and
    resets the connection when it passes.
    """
    writer.write(answer)
    await writer.drain()
    if not writer.can_write_eof():  # pragma: no cover - TCP transports can
        return
    writer.write_eof()
    discarded = 0
    while discarded < _MAX_DISCARD and (chunk := await reader.read(65536)):
        discarded += len(chunk)  # a client has nothing more to send: ignore it, bounded


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class HealthServer(StartStop):
    """``GET /healthz``, ``/readyz``, ``/metrics`` on ``host:port`` (port 0: any free port).

    ``snapshot`` is called once per ``/readyz`` or ``/metrics`` request, in the event loop, and
    must not block for long; ``clock`` gives the time readiness is judged at. ``liveness``, when
    given, answers ``/healthz`` as ``(alive, detail)`` without building a whole snapshot (probes
    ask every few seconds); otherwise ``/healthz`` uses the snapshot's ``alive`` and ``detail``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], HealthSnapshot],
        *,
        clock: Callable[[], datetime] = _utc_now,
        liveness: Callable[[], tuple[bool, str | None]] | None = None,
    ) -> None:
        self._host = normalize_host(host)
        self._port = port
        self._snapshot = snapshot
        self._clock = clock
        self._liveness = liveness
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._limits = ConnectionLimits(total=MAX_CONNECTIONS, per_source=MAX_PER_SOURCE)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs, for logs and for tests that asked for port 0."""
        if self._server is None:
            return []
        return [(sock.getsockname()[0], sock.getsockname()[1]) for sock in self._server.sockets]

    @property
    def port(self) -> int:
        addresses = self.addresses
        if not addresses:
            raise RuntimeError("health server is not listening; call start() first")
        return addresses[0][1]

    async def start(self) -> None:
        if self._server is not None:
            return
        # Read at start, not import, so that tests can lower them.
        self._limits = ConnectionLimits(total=MAX_CONNECTIONS, per_source=MAX_PER_SOURCE)
        try:
            if self._host == "::":
                self._server = await asyncio.start_server(
                    self._on_connection, sock=dual_stack_socket(self._port), limit=MAX_HEAD_BYTES
                )
            else:
                self._server = await asyncio.start_server(
                    self._on_connection,
                    self._host or None,
                    self._port,
                    limit=MAX_HEAD_BYTES,
                    reuse_address=True,
                )
        except OSError as exc:
            address = f"{_url_host(self._host or '*')}:{self._port}"
            reason = os_error_text(exc)
            raise HealthBindError(f"--health-listen {address}: cannot listen: {reason}") from exc
        logger.debug("health_listening", extra={"addresses": self.addresses})

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's wait_closed() does not wait for open connections: end them here so that
        # shutdown is bounded by us, not by a slow client. Aborting the transport makes a pending
        # read fail, so each handler returns normally (a cancelled handler task would be logged
        # by asyncio as an unhandled error).
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio always runs handlers in a task
            writer.transport.abort()
            return
        # When full, the connection idle the longest is reset to make room: its pending read then
        # sees end-of-stream and its handler returns.
        slot = self._limits.admit(
            writer.get_extra_info("peername"), lambda: reset_connection(writer.transport)
        )
        self._connections[task] = writer
        finished = False
        try:
            answer = await self._answer(reader, slot)
            if answer is not None:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await _deliver(reader, writer, answer)
            finished = True
        except (TimeoutError, ConnectionError):
            pass  # the client went away or stalled: nothing to tell it
        finally:
            self._limits.release(slot)
            del self._connections[task]
            if finished:
                writer.close()
            else:
                # Given up on (stalled, gone, or shutting down): drop what the kernel still
                # holds for it rather than leave it in the send queue.
                reset_connection(writer.transport)

    def _alive(self) -> tuple[bool, str | None]:
        if self._liveness is not None:
            return self._liveness()
        snapshot = self._snapshot()
        return snapshot.alive, snapshot.detail

    async def _answer(self, reader: asyncio.StreamReader, slot: Slot) -> bytes | None:
        try:
            head = await read_request_head(
                reader, first_byte_timeout=FIRST_BYTE_TIMEOUT, head_timeout=READ_TIMEOUT
            )
            # A whole request: a flood of idle connections no longer makes room by closing it.
            self._limits.answering(slot)
        except HeadNotRead as exc:
            # Nothing sent, or a TCP probe that connected and closed: answer nothing.
            return None if exc.status is None else _text(exc.status, str(exc))
        try:
            request = parse_request_head(head)
        except HttpRequestError as exc:
            return _text(exc.status, str(exc))
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return _text(405, "method not allowed", extra_headers=[("Allow", "GET, HEAD")])
        if request.path not in ("/healthz", "/readyz", "/metrics"):
            return _text(404, "not found", head_only=head_only)
        try:
            if request.path == "/healthz":
                alive, detail = self._alive()
                if alive:
                    return _text(200, "ok", head_only=head_only)
                return _text(503, one_line(detail or "not alive"), head_only=head_only)
            snapshot = self._snapshot()
            now = self._clock()
            if request.path == "/readyz":
                ready, body = readyz_body(snapshot, now)
                data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
                return _response(
                    200 if ready else 503, data, "application/json", head_only=head_only
                )
            data = render(snapshot.statuses, snapshot.metrics, now).encode()
            return _response(200, data, METRICS_CONTENT_TYPE, head_only=head_only)
        except Exception:
            # A bug in building the snapshot must not take the listener down; log it once per
            # request and answer 500 so that the probe shows something is wrong.
            logger.exception("health_request_failed", extra={"path": request.path})
            return _text(500, "internal error", head_only=head_only)


# --- cert-sidecar healthcheck ------------------------------------------------------------------


class _HasHealthListen(Protocol):
    @property
    def health_listen(self) -> tuple[str, int]: ...


def connect_host(listen_host: str) -> str:
    """Where to connect for a server listening on ``listen_host``: the wildcard addresses are not
    destinations, so use the loopback of the same family."""
    host = normalize_host(listen_host)
    if host in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class _NoAnswer(Exception):
    """Connected, but the server closed or reset the connection before answering anything."""


async def _probe(host: str, port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = (
            f"GET /readyz HTTP/1.1\r\nHost: {_url_host(host)}:{port}\r\n"
            "User-Agent: cert-sidecar-healthcheck\r\nConnection: close\r\n\r\n"
        )
        # The server closes after one answer; /readyz is small, so cap what we accept.
        chunks: list[bytes] = []
        size = 0
        try:
            writer.write(request.encode("ascii"))
            await writer.drain()
            while chunk := await reader.read(65536):
                size += len(chunk)
                if size > _MAX_PROBE_ANSWER:
                    raise ValueError("answer too large")
                chunks.append(chunk)
        except ConnectionError as exc:
            if chunks:
                raise
            # A reset before any byte is not "unreachable": something accepted, then dropped us.
            raise _NoAnswer(os_error_text(exc)) from exc
        response = b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not response:
        raise _NoAnswer("closed without answering")
    status_line, _, rest = response.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError("not an HTTP answer")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(parts[1]), body


# The healthcheck's whole output stays within what container engines keep of a probe: podman
# keeps 500 characters (HealthMaxLogSize's default), Docker 4096 bytes. The reasons hold a CA's
# error text (attacker-influenced), so they are cut to fit, never the line left to grow.
HEALTHCHECK_OUTPUT_LIMIT = 500
# A reason ends with the hint on what to do (`errors.with_hint`, the issuer's contact hint):
# a cut keeps this many characters of its end, and takes from the middle, the CA's words.
_KEPT_END = 220
_CUT = "..."


def _shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its start and its last ``_KEPT_END``, the cut
    in between marked."""
    if len(text) <= limit:
        return text
    end = min(_KEPT_END, limit // 2)
    return text[: limit - end - len(_CUT)] + _CUT + text[-end:]


def _not_ready_reason(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
        reasons = [one_line(str(reason)) for reason in data["reasons"]]
    except (ValueError, KeyError, TypeError):
        reasons = []
    if not reasons:
        return f"not ready (HTTP {status})"
    head = "not ready: "
    # "healthcheck: " before it and the newline after it.
    room = HEALTHCHECK_OUTPUT_LIMIT - len("healthcheck: ") - len(head) - 1
    # The first reason whole but for its middle; the next ones while they fit, then a count.
    more = f"; and {len(reasons)} more"
    shown = [_shorten(reasons[0], room - len(more))]
    for index, reason in enumerate(reasons[1:], start=1):
        rest = len(reasons) - index - 1
        tail = f"; and {rest} more" if rest else ""
        if len("; ".join([*shown, reason]) + tail) > room:
            shown.append(f"and {len(reasons) - index} more")
            break
        shown.append(reason)
    return head + "; ".join(shown)


async def cmd_healthcheck(
    settings: _HasHealthListen,
    *,
    timeout: float = HEALTHCHECK_TIMEOUT,  # noqa: ASYNC109 - the deadline is this command's contract
    stderr: TextIO | None = None,
) -> int:
    """``cert-sidecar healthcheck``: 0 when the running sidecar's ``/readyz`` answers 200.

    Otherwise 1, with one line on stderr saying why (not reachable, no answer in time, or the
    readiness reasons from the body).
    """
    out = stderr if stderr is not None else sys.stderr
    listen_host, port = settings.health_listen
    host = connect_host(listen_host)
    url = f"http://{_url_host(host)}:{port}/readyz"
    try:
        async with asyncio.timeout(timeout):
            status, body = await _probe(host, port)
    except TimeoutError:
        print(f"healthcheck: no answer from {url} within {timeout:g} s", file=out)
        return 1
    except _NoAnswer as exc:
        # Saturated (too many connections), restarting, or not the health server on that port.
        print(
            f"healthcheck: {url} accepted the connection but {exc} (connection dropped before "
            "any answer: the server may be overloaded or restarting)",
            file=out,
        )
        return 1
    except OSError as exc:
        reason = os_error_text(exc)
        print(f"healthcheck: cannot reach {url}: {one_line(reason)}", file=out)
        return 1
    except ValueError as exc:
        print(f"healthcheck: bad answer from {url}: {exc}", file=out)
        return 1
    if status == 200:
        return 0
    print(f"healthcheck: {_not_ready_reason(status, body)}", file=out)
    return 1
