"""http-01 responder: the pure parser, and the real server on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ca_client.challenges import ChallengeSetupError, Http01Responder, ResponderBindError
from ca_client.challenges.base import check_key_authorization
from ca_client.challenges.http01 import (
    HttpRequestError,
    choose_response,
    parse_request_head,
)
from ca_client.errors import AcmeError
from ca_client.models import Identifier
from tests.peers.require import require, require_unprivileged_python

pytestmark = pytest.mark.anyio

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
THUMBPRINT = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
KEY_AUTHORIZATION = f"{TOKEN}.{THUMBPRINT}"
NAME = Identifier.dns("a.example")


# --- pure: parsing --------------------------------------------------------------------------


def test_parse_origin_form_request() -> None:
    request = parse_request_head(
        b"GET /.well-known/acme-challenge/abc?x=1 HTTP/1.1\r\nHost: a.example\r\n"
        b"User-Agent: Go-http-client/1.1\r\n\r\n"
    )
    assert request.method == "GET"
    assert request.path == "/.well-known/acme-challenge/abc"
    assert request.version == (1, 1)
    assert ("host", "a.example") in request.headers


def test_parse_absolute_form_and_leading_empty_line() -> None:
    request = parse_request_head(
        b"\r\nGET http://a.example:80/.well-known/acme-challenge/abc HTTP/1.1\r\n"
        b"Host: a.example\r\n\r\n"
    )
    assert request.path == "/.well-known/acme-challenge/abc"


def test_parse_http10_needs_no_host() -> None:
    assert parse_request_head(b"GET / HTTP/1.0\r\n\r\n").version == (1, 0)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host in 1.1
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # double space
        (b"GET /\r\nHost: a\r\n\r\n", 400),  # HTTP/0.9 style
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTQ/1.1\r\nHost: a\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # space before colon
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),  # bare LF
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET \xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_parse_refuses_malformed_heads(head: bytes, status: int) -> None:
    with pytest.raises(HttpRequestError) as caught:
        parse_request_head(head)
    assert caught.value.status == status


# --- pure: choosing the answer --------------------------------------------------------------


def _request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: a.example\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", f"/.well-known/acme-challenge/{TOKEN}", 200),
        ("HEAD", f"/.well-known/acme-challenge/{TOKEN}", 200),
        ("GET", "/.well-known/acme-challenge/unknown", 404),
        ("GET", "/.well-known/acme-challenge/", 404),
        ("GET", f"/.well-known/acme-challenge/{TOKEN}/x", 404),
        ("GET", f"/.well-known/acme-challenge/../acme-challenge/{TOKEN}", 404),
        ("GET", f"/.well-known/acme-challenge/%2E{TOKEN}", 404),
        ("GET", "/", 404),
        ("GET", f"/other/{TOKEN}", 404),
        ("POST", f"/.well-known/acme-challenge/{TOKEN}", 405),
        ("DELETE", "/.well-known/acme-challenge/unknown", 405),
    ],
)
def test_choose_response(method: str, path: str, status: int) -> None:
    response = choose_response(
        parse_request_head(_request(method, path)), {TOKEN: KEY_AUTHORIZATION}
    )
    assert response.status == status
    if status == 200:
        assert response.body == KEY_AUTHORIZATION.encode()
    else:
        assert KEY_AUTHORIZATION.encode() not in response.body
    if status == 405:
        assert response.allow == "GET, HEAD"


@pytest.mark.parametrize(
    ("token", "key_authorization"),
    [
        ("", "."),
        ("a/b", "a/b.thumb"),
        ("a..b", "a..b.thumb"),
        ("abc=", "abc=.thumb"),
        ("abc", "abd.thumb"),  # key authorization for another token
        ("abc", "abc"),  # no thumbprint
        ("abc", "abc.th+umb"),
    ],
)
def test_bad_tokens_and_key_authorizations_are_refused(token: str, key_authorization: str) -> None:
    with pytest.raises(ChallengeSetupError):
        check_key_authorization(token, key_authorization)


# --- the real server ------------------------------------------------------------------------


async def _exchange(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    # The responder closes the connection after one answer; 30 s only bounds a hang.
    response = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return response


def _status_and_body(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


async def test_serves_held_token_only_until_cleanup() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        port = responder.bound_port
        assert port != 0
        path = f"/.well-known/acme-challenge/{TOKEN}"

        status, _, _ = _status_and_body(await _exchange(port, _request("GET", path)))
        assert status == 404

        await responder.present(NAME, TOKEN, KEY_AUTHORIZATION)
        status, headers, body = _status_and_body(await _exchange(port, _request("GET", path)))
        assert (status, body) == (200, KEY_AUTHORIZATION.encode())
        assert headers["Content-Type"] == "text/plain"
        assert headers["Connection"] == "close"
        assert headers["Content-Length"] == str(len(KEY_AUTHORIZATION))

        status, headers, body = _status_and_body(await _exchange(port, _request("HEAD", path)))
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == str(len(KEY_AUTHORIZATION))

        status, _, _ = _status_and_body(await _exchange(port, _request("POST", path)))
        assert status == 405
        status, _, _ = _status_and_body(await _exchange(port, _request("GET", "/")))
        assert status == 404

        await responder.cleanup(NAME, TOKEN, KEY_AUTHORIZATION)
        await responder.cleanup(NAME, TOKEN, KEY_AUTHORIZATION)  # already gone: no error
        status, _, body = _status_and_body(await _exchange(port, _request("GET", path)))
        assert status == 404
        assert KEY_AUTHORIZATION.encode() not in body


async def test_present_refuses_a_token_that_is_not_base64url() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        with pytest.raises(ChallengeSetupError, match="not base64url"):
            await responder.present(NAME, "../etc", "../etc.abc")


async def test_oversized_request_head_gets_431() -> None:
    async with Http01Responder("127.0.0.1", 0, max_request_bytes=1024) as responder:
        request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 4000 + b"\r\n\r\n"
        status, _, _ = _status_and_body(await _exchange(responder.bound_port, request))
        assert status == 431


async def test_malformed_request_gets_400() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        status, _, _ = _status_and_body(await _exchange(responder.bound_port, b"HELLO\r\n\r\n"))
        assert status == 400


async def test_stalled_request_gets_408_and_is_closed() -> None:
    async with Http01Responder("127.0.0.1", 0, read_timeout=0.2) as responder:
        # Half a request head and then silence: the responder gives up and closes.
        status, _, _ = _status_and_body(
            await _exchange(responder.bound_port, b"GET / HTTP/1.1\r\nHost: a\r\n")
        )
        assert status == 408


async def test_many_concurrent_orders() -> None:
    tokens = {
        f"token-{i:03d}_{'x' * 20}": f"token-{i:03d}_{'x' * 20}.{THUMBPRINT}" for i in range(60)
    }
    async with Http01Responder("127.0.0.1", 0) as responder:
        await asyncio.gather(
            *(responder.present(NAME, token, value) for token, value in tokens.items())
        )
        answers = await asyncio.gather(
            *(
                _exchange(
                    responder.bound_port, _request("GET", f"/.well-known/acme-challenge/{token}")
                )
                for token in tokens
            )
        )
        for token, answer in zip(tokens, answers, strict=True):
            assert _status_and_body(answer)[::2] == (200, tokens[token].encode())


async def test_close_ends_open_connections() -> None:
    responder = Http01Responder("127.0.0.1", 0)
    await responder.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    writer.write(b"GET / HTTP/1.1\r\n")  # never finished
    await writer.drain()
    await responder.aclose()
    try:
        leftover = await asyncio.wait_for(reader.read(), 30)  # bounds a hang only
    except ConnectionResetError:
        leftover = b""  # the kernel resets a connection closed with unread input
    assert leftover == b""  # closed without an answer
    writer.close()
    await responder.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        _ = responder.bound_port


async def test_bind_failure_is_typed_and_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        responder = Http01Responder("127.0.0.1", port)
        with pytest.raises(ResponderBindError) as caught:
            await responder.start()
    assert caught.value.address == f"127.0.0.1:{port}"
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "http-01" in str(caught.value)
    assert isinstance(caught.value, AcmeError)


async def test_unassignable_address_is_a_bind_error() -> None:
    with pytest.raises(ResponderBindError, match=r"192\.0\.2\.1:0"):
        await Http01Responder("192.0.2.1", 0).start()  # TEST-NET-1: not on this machine


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_ipv6_literal_in_brackets() -> None:
    require(_ipv6_available(), "no IPv6 loopback here")
    async with Http01Responder("[::1]", 0) as responder:
        await responder.present(NAME, TOKEN, KEY_AUTHORIZATION)
        answer = await _exchange(
            responder.bound_port, _request("GET", f"/.well-known/acme-challenge/{TOKEN}"), "::1"
        )
        assert _status_and_body(answer)[0] == 200
        assert responder.address == "[::1]:0"


async def test_any_ipv6_address_is_dual_stack() -> None:
    require(_ipv6_available(), "no IPv6 loopback here")
    async with Http01Responder("[::]", 0) as responder:
        await responder.present(NAME, TOKEN, KEY_AUTHORIZATION)
        request = _request("GET", f"/.well-known/acme-challenge/{TOKEN}")
        for client_host in ("::1", "127.0.0.1"):
            answer = await _exchange(responder.bound_port, request, client_host)
            assert _status_and_body(answer)[0] == 200, client_host


PRIVILEGED_BIND = """
import asyncio, sys
from ca_client.challenges import Http01Responder, ResponderBindError
try:
    asyncio.run(Http01Responder("127.0.0.1", 1).start())
except ResponderBindError as exc:
    print(type(exc).__name__, exc)
"""


def test_bind_without_permission_is_a_bind_error() -> None:
    # Root may bind anything, so run as nobody: ports below 1024 are then refused (EACCES).
    setpriv = require_unprivileged_python()
    result = subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            PRIVILEGED_BIND,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert result.stdout.strip() == (
        "ResponderBindError http-01 responder cannot listen on 127.0.0.1:1: Permission denied"
    ), result.stderr
