"""One HTTP/1.1 request head from a stranger: reading it with two deadlines, parsing it strictly.

Shared by the http-01 responder and the sidecar's health server, the two servers that read HTTP
from the network; one parser means one set of rules to harden and to test.

Reading (`read_request_head`): a connection that sends nothing is closed after
``first_byte_timeout`` (a real client, the CA's validator or a probe, writes its request as soon
as it connects), and a head that has started must be complete within ``head_timeout`` of the
accept, so a client dribbling one byte a second holds its slot for a few seconds at most. The
size limit is the ``StreamReader``'s own ``limit``.

Parsing (`parse_request_head`, pure): RFC 9112 §2-§5, strict rather than forgiving, since the
only clients are ACME validators, probes, Prometheus and curl. Anything ambiguous is refused
with a 4xx rather than guessed at: bare CR or LF, obsolete line folding, whitespace before a
colon, control characters, a missing or repeated Host, and any request body (its length would
come from Content-Length or Transfer-Encoding, RFC 9112 §6.3; refusing it means the end of the
head is the end of the request, and nothing can be smuggled after it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "HeadNotRead",
    "HttpRequest",
    "HttpRequestError",
    "parse_request_head",
    "read_request_head",
]

MAX_TARGET_LENGTH = 2048
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class HttpRequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str  # the path of the request target, without the query
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...] = ()  # names lower-cased, in order


def _is_token(text: str) -> bool:
    """RFC 9110 §5.6.2: token = 1*tchar."""
    return bool(text) and all(char in _TOKEN_CHARS for char in text)


def _has_control(text: str) -> bool:
    return any((ord(char) < 0x20 and char != "\t") or char == "\x7f" for char in text)


def parse_request_head(
    head: bytes, *, max_headers: int = 64, absolute_form: bool = False
) -> HttpRequest:
    """Parse a request line and header fields ending in CRLF CRLF (RFC 9112 §2-§5), strictly.

    ``absolute_form`` also accepts ``http://host/path`` targets (RFC 9112 §3.2.2), which a
    server MUST accept; the health server, which only probes reach, takes origin-form only.
    """
    if not head.endswith(b"\r\n\r\n"):
        raise HttpRequestError(400, "request head must end with an empty line (CRLF)")
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
    lines = head[:-4].lstrip(b"\r\n").split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise HttpRequestError(400, "bare CR or LF in request head")
    try:
        request_line = lines[0].decode("ascii")
    except UnicodeDecodeError:
        raise HttpRequestError(400, "request line is not ASCII") from None
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise HttpRequestError(400, "request line is not 'method SP target SP version'")
    method, target, version_text = parts
    if not _is_token(method):
        raise HttpRequestError(400, "malformed method")
    version = _version(version_text)
    if len(target) > MAX_TARGET_LENGTH:
        raise HttpRequestError(414, "request target too long")
    if not target or any(ord(char) <= 0x20 or char == "\x7f" for char in target):
        raise HttpRequestError(400, "malformed request target")
    path = _target_path(target, absolute_form=absolute_form)
    if len(lines) - 1 > max_headers:
        raise HttpRequestError(431, "too many header fields")
    headers = tuple(_field(line) for line in lines[1:])
    names = [name for name, _ in headers]
    # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
    # request message that lacks a Host header field and to any request message that contains
    # more than one Host header field".
    if names.count("host") > 1 or (version >= (1, 1) and "host" not in names):
        raise HttpRequestError(400, "exactly one Host header is required")
    if "transfer-encoding" in names or any(
        name == "content-length" and value != "0" for name, value in headers
    ):
        raise HttpRequestError(400, "a request body is not accepted")
    return HttpRequest(method=method, path=path, version=version, headers=headers)


def _version(text: str) -> tuple[int, int]:
    """RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT; only major version 1 is served."""
    if (
        len(text) != 8
        or not text.startswith("HTTP/")
        or text[6] != "."
        or text[5] not in "0123456789"
        or text[7] not in "0123456789"
    ):
        raise HttpRequestError(400, "malformed HTTP version")
    if text[5] != "1":
        raise HttpRequestError(505, "only HTTP/1.x is served")
    return 1, int(text[7])


def _target_path(target: str, *, absolute_form: bool) -> str:
    """The path of an origin-form or (if allowed) absolute-form target (RFC 9112 §3.2)."""
    if target.startswith("/"):
        return target.partition("?")[0]
    if absolute_form and target[:7].lower() == "http://":
        try:
            return urlsplit(target).path or "/"
        except ValueError:  # e.g. an unbalanced "[" in the authority
            raise HttpRequestError(400, "malformed request target") from None
    raise HttpRequestError(400, "unsupported request target form")


def _field(line: bytes) -> tuple[str, str]:
    """One ``name: value`` line: the name lower-cased, the value without surrounding blanks."""
    if line[:1] in (b" ", b"\t"):
        raise HttpRequestError(400, "obsolete line folding")  # RFC 9112 §5.2
    name_bytes, colon, value_bytes = line.partition(b":")
    name = name_bytes.decode("latin-1")
    # RFC 9112 §5.1: no whitespace between the field name and the colon.
    if not colon or not _is_token(name):
        raise HttpRequestError(400, "malformed header field")
    # RFC 9110 §5.5: field values are visible characters, blanks and obs-text (kept as latin-1).
    value = value_bytes.decode("latin-1").strip(" \t")
    if _has_control(value):
        raise HttpRequestError(400, "control character in a header field")
    return name.lower(), value


class HeadNotRead(Exception):
    """No whole request head. ``status`` is what to answer (None: close without answering)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_request_head(
    reader: asyncio.StreamReader, *, first_byte_timeout: float, head_timeout: float
) -> bytes:
    """The bytes up to and including the first CRLF CRLF; raises `HeadNotRead` otherwise."""
    deadline = asyncio.get_running_loop().time() + head_timeout
    try:
        async with asyncio.timeout(min(first_byte_timeout, head_timeout)):
            first = await reader.read(1)
    except TimeoutError:
        raise HeadNotRead(None, "nothing received") from None
    if not first:
        raise HeadNotRead(None, "closed before sending anything")
    try:
        async with asyncio.timeout_at(deadline):
            head = first + await reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        raise HeadNotRead(408, "request timeout") from None
    except asyncio.LimitOverrunError:
        raise HeadNotRead(431, "request head too large") from None
    except asyncio.IncompleteReadError as exc:
        # A connection opened and closed with only blank lines is a probe: answer nothing.
        if not (first + exc.partial).strip():
            raise HeadNotRead(None, "closed before a request") from None
        raise HeadNotRead(400, "incomplete request") from None
    # The first byte was taken apart from the search: a "\r" followed by "\n\r\n" ended the
    # head already (the bytes after it belong to no request this server answers).
    return head[: head.find(b"\r\n\r\n") + 4]
