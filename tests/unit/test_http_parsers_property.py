"""Property tests (Hypothesis) for the HTTP request-head parsers that read strangers' bytes.

Two parsers: the http-01 responder's (`ca_client.challenges.http01.parse_request_head`) and the
health server's (`sidecar.health.parse_request_head`), plus the reader both servers use to take
a head off the socket (`ca_client.challenges._http.read_request_head`). For any bytes: nothing
escapes but the module's own error, and valid requests parse to what was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca_client.challenges import _http, http01
from sidecar import health

pytestmark = pytest.mark.timeout(300)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARSERS: dict[str, tuple[Callable[[bytes], Any], type[Any]]] = {
    "http01": (http01.parse_request_head, http01.HttpRequestError),
    "health": (health.parse_request_head, health.HttpRequestError),
}

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKENS = st.text(TCHAR, min_size=1, max_size=20)
# Field values: visible ASCII and inner spaces (RFC 9110 §5.5), no leading or trailing space.
VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
PATHS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~/%", max_size=60).map("/".__add__)
PIECES = st.sampled_from(
    [b"GET", b"HEAD", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\r\n\r\n", b":", b"Host",
     b"\r", b"\n", b"\t", b"\x00", b"\xff", b"http://a/", b"?", b"Content-Length: 1", b"a"]
)  # fmt: skip
HEADS = st.one_of(
    st.binary(max_size=2000),
    st.lists(PIECES, max_size=40).map(b"".join),
    st.lists(PIECES, max_size=40).map(lambda pieces: b"".join(pieces) + b"\r\n\r\n"),
)


@pytest.mark.parametrize("name", sorted(PARSERS))
@SETTINGS
@given(head=HEADS)
def test_any_bytes_raise_only_the_modules_error(name: str, head: bytes) -> None:
    parse, error = PARSERS[name]
    try:
        parse(head)
    except error as exc:
        assert 400 <= exc.status <= 599


@pytest.mark.parametrize("name", sorted(PARSERS))
@SETTINGS
@given(
    method=st.sampled_from(["GET", "HEAD"]) | TOKENS,
    path=PATHS,
    query=st.one_of(st.just(""), st.text("abc=&123", max_size=20).map("?".__add__)),
    minor=st.sampled_from([0, 1]),
    fields=st.lists(
        st.tuples(
            TOKENS.filter(
                lambda field: field.lower() not in ("host", "content-length", "transfer-encoding")
            ),
            VALUES,
        ),
        max_size=20,
    ),
)
def test_valid_requests_parse(
    name: str,
    method: str,
    path: str,
    query: str,
    minor: int,
    fields: list[tuple[str, str]],
) -> None:
    parse, _ = PARSERS[name]
    lines = [f"{method} {path}{query} HTTP/1.{minor}", "Host: a.example"]
    lines += [f"{field}: {value}" for field, value in fields]
    request = parse(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    assert (request.method, request.path, request.version) == (method, path, (1, minor))
    expected = [("host", "a.example"), *((field.lower(), value) for field, value in fields)]
    assert list(request.headers) == expected


async def _read(data: bytes, limit: int) -> bytes | _http.HeadNotRead:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    try:
        return await _http.read_request_head(reader, first_byte_timeout=5, head_timeout=5)
    except _http.HeadNotRead as exc:
        return exc


@SETTINGS
@given(data=HEADS, limit=st.integers(min_value=16, max_value=4096))
def test_head_reader_returns_a_whole_head_or_its_own_error(data: bytes, limit: int) -> None:
    outcome = asyncio.run(_read(data, limit))
    if isinstance(outcome, _http.HeadNotRead):
        assert outcome.status in (None, 400, 408, 431)
        return
    assert outcome.endswith(b"\r\n\r\n")
    assert data.startswith(outcome)
    assert b"\r\n\r\n" not in outcome[:-4]
    # The first byte, then up to the reader's limit before the separator, and the separator.
    assert len(outcome) <= 1 + limit + 4
