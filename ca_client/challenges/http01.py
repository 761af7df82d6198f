"""The http-01 responder (RFC 8555 §8.3): a deliberately tiny HTTP/1.1 server.

RFC 8555 §8.3: the CA sends "an HTTP GET request to the URL
``http://{domain}/.well-known/acme-challenge/{token}``" and expects "the key authorization"
as the body of a 2xx response. Nothing else is needed, so this is not a web server: it reads one
request head (size- and time-limited), answers it and closes the connection. Only tokens the
responder currently holds are answered; every other request is refused, so the port leaks
nothing and serves nothing an attacker could use.

The parsing and the choice of the response are pure functions (`parse_request_head`, the
parser shared with the health server in ``_http``, and `choose_response`); `Http01Responder`
only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from ca_client.challenges import _http, _listen
from ca_client.challenges._http import HttpRequest, HttpRequestError
from ca_client.challenges._limits import Slot
from ca_client.challenges.base import check_key_authorization, format_address, is_base64url
from ca_client.models import Identifier

__all__ = [
    "CHALLENGE_PATH_PREFIX",
    "Http01Responder",
    "HttpRequest",
    "HttpRequestError",
    "HttpResponse",
    "choose_response",
    "parse_request_head",
]

logger = logging.getLogger(__name__)

CHALLENGE_PATH_PREFIX = "/.well-known/acme-challenge/"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}

_MAX_HEADER_LINES = 100


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    allow: str | None = None

    def render(self, *, include_body: bool = True) -> bytes:
        """The bytes on the wire. ``Connection: close`` always: one request per connection."""
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}",
            "Content-Type: text/plain",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
        ]
        if self.allow is not None:
            lines.append(f"Allow: {self.allow}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head + self.body if include_body else head


def parse_request_head(head: bytes) -> HttpRequest:
    """Parse a request head strictly (`ca_client.challenges._http`), absolute-form allowed.

    RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests", and a validator
    could send one; everything else ambiguous is refused with 400.
    """
    return _http.parse_request_head(head, max_headers=_MAX_HEADER_LINES, absolute_form=True)


def choose_response(request: HttpRequest, tokens: dict[str, str]) -> HttpResponse:
    """What to answer: the key authorization for a held token, a refusal for everything else."""
    if not request.path.startswith(CHALLENGE_PATH_PREFIX):
        return HttpResponse(404, b"not found\n")
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(405, b"method not allowed\n", allow="GET, HEAD")
    token = request.path.removeprefix(CHALLENGE_PATH_PREFIX)
    key_authorization = tokens.get(token) if is_base64url(token) else None
    if key_authorization is None:
        return HttpResponse(404, b"not found\n")
    # RFC 8555 §8.3: "the body of the response is ... the key authorization" (ASCII).
    return HttpResponse(200, key_authorization.encode("ascii"))


class Http01Responder(_listen.Listener):
    """Answers ``GET /.well-known/acme-challenge/<token>`` for the tokens it holds.

    One long-lived responder serves any number of concurrent orders: `present` adds a token,
    `cleanup` removes it. Use as ``async with Http01Responder(host, port) as responder:``.

    Anyone can connect, so each connection is bounded: ``first_byte_timeout`` to start the
    request, ``read_timeout`` (from the accept) for the whole head, ``max_request_bytes`` for its
    size, at most ``max_per_source`` connections from one address (an IPv6 /64), and at most
    ``max_connections`` in all, where a newcomer is let in by closing the connection that has
    been idle the longest: one that has not sent a whole request head, or whose answer is
    written (see `ca_client.challenges._limits`). A request being answered is closed only when
    every slot is. A CA validating hundreds of names at once from one address still fits: 128
    per source.
    """

    challenge_type = "http-01"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_request_bytes: int = 8192,
        read_timeout: float = 5.0,
        first_byte_timeout: float = 3.0,
        max_connections: int = 512,
        max_per_source: int = 128,
    ) -> None:
        super().__init__(host, port, max_connections=max_connections, max_per_source=max_per_source)
        self._max_request_bytes = max_request_bytes
        self._read_timeout = read_timeout
        self._first_byte_timeout = first_byte_timeout
        self._tokens: dict[str, str] = {}

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("http-01 responder already started")
        self._server = await _listen.start_listener(
            self.challenge_type,
            self.host,
            self.port,
            self._on_connection,
            limit=self._max_request_bytes,
        )
        logger.info(
            "http-01 responder listening on %s",
            format_address(_listen.normalize_host(self.host) or "*", self.bound_port),
        )

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        check_key_authorization(token, key_authorization)
        self._tokens[token] = key_authorization
        logger.debug("http-01 token %s presented for %s", token, identifier.value)

    async def cleanup(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        self._tokens.pop(token, None)
        logger.debug("http-01 token %s removed for %s", token, identifier.value)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot
    ) -> None:
        response, include_body = await self._read_and_answer(reader, slot)
        if response is None:
            return
        writer.write(response.render(include_body=include_body))
        async with asyncio.timeout(self._read_timeout):
            await writer.drain()
        if response.status >= 400:
            # Refused: nothing the client still waits for may be lost by closing it now. A
            # key authorization (200) stays protected until the connection is closed.
            self._answered(slot)
            await self._linger(reader, writer)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then drain what the client still sends, before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        error response before the client reads it (RFC 9112 §9.6 "tear-down"). A refused request
        may well have unread input: an oversized head, a body, or a dribbler still sending
        after its 408. The connection keeps its slot meanwhile, so it can still be evicted.
        """
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(min(self._read_timeout, 2.0)):
                discarded = 0
                while discarded < 1 << 20 and (chunk := await reader.read(65536)):
                    discarded += len(chunk)

    async def _read_and_answer(
        self, reader: asyncio.StreamReader, slot: Slot
    ) -> tuple[HttpResponse | None, bool]:
        try:
            head = await _http.read_request_head(
                reader,
                first_byte_timeout=self._first_byte_timeout,
                head_timeout=self._read_timeout,
            )
            self._answering(slot)
        except _http.HeadNotRead as exc:
            if exc.status is None:
                return None, False
            return HttpResponse(exc.status, f"{exc}\n".encode("ascii")), True
        try:
            request = parse_request_head(head)
        except HttpRequestError as exc:
            logger.debug("http-01 responder refused a request: %s", exc)
            return HttpResponse(exc.status, f"{exc}\n".encode("ascii")), True
        response = choose_response(request, self._tokens)
        logger.debug(
            "http-01 responder: %s %s -> %d", request.method, request.path[:200], response.status
        )
        return response, request.method != "HEAD"
