"""HTTP for ACME: with `ca_client.http11` (the pool it uses), the only module that imports httpx.

:class:`AcmeTransport` owns one ``httpx.AsyncClient`` over one connection pool
(:class:`ca_client.http11.Http11Transport`, shared by every concurrent order; tests may give
another httpx transport), the nonce pool, request signing and the retry rules:

* ``badNonce`` (RFC 8555 §6.5): "the client SHOULD retry the request using the new nonce" that
  came with the error -- done here, so callers never see it unless the CA keeps refusing;
* 429 and 503 with ``Retry-After`` (§6.6, RFC 9110 §10.2.3): waited out and retried when the
  wait fits before the request's deadline, else raised as a typed error;
* connection failures on idempotent requests (GET, HEAD, POST-as-GET, and what the caller
  marks idempotent), and on any request that never got a connection: retried twice with a
  short pause, because a kept-alive connection the CA closed looks exactly like that;
* HTTP 500/502/504 on idempotent requests: retried three times with a short pause;
* every httpx/ssl exception is converted, in :meth:`AcmeTransport._send`, into the error tree
  of :mod:`ca_client.errors`.

Trust comes only from the ``ssl.SSLContext`` given; without one nothing is trusted (not the
system store: the CA bundle is the only trust). ``trust_env=False`` keeps ``HTTPS_PROXY``,
``SSL_CERT_FILE`` and ``.netrc`` out of it. Verification is never disabled.

Hostile or broken peers are bounded: only ``https://`` URLs are fetched (RFC 8555 §6.1, and
plain http would bypass the trust above); a body larger than :data:`MAX_RESPONSE_BYTES` is cut
off and a compressed one (``Content-Encoding`` other than identity, never asked for) refused,
both raised as :class:`MalformedResponse`; ``Link`` values are parsed in one linear pass and
only up to :data:`MAX_LINK_VALUE_CHARS`; a request on a closed client raises
:class:`TransportClosed`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx

from ca_client import jws
from ca_client.errors import (
    AcmeError,
    AcmeProblem,
    ACMETimeout,
    BadNonce,
    CAUnreachable,
    MalformedResponse,
    NotACME,
    RateLimited,
    ServerInternal,
    TLSVerificationFailed,
    TransportClosed,
    TransportError,
)
from ca_client.http11 import Http11Transport, PoolClosed
from ca_client.keys import PrivateKey
from ca_client.retry import fits_before_deadline, parse_retry_after

logger = logging.getLogger(__name__)

USER_AGENT = "cert-sidecar-ca_client/0.1"
JOSE_JSON = "application/jose+json"
PROBLEM_JSON = "application/problem+json"
PEM_CHAIN = "application/pem-certificate-chain"

#: badNonce answers tolerated for one request. Pebble refuses 5 % of good nonces on purpose;
#: ten in a row means something else is wrong.
MAX_BAD_NONCE_RETRIES = 10
#: 429/503 answers waited out for one request.
MAX_BUSY_RETRIES = 5
#: Connection failures retried for one idempotent request.
MAX_NETWORK_RETRIES = 2
#: HTTP 500/502/504 answers retried for one idempotent request. step-ca 0.19 answers
#: serverInternal when two requests of one account race in its database (compare-and-swap of
#: the account's order list), which concurrent orders on one account do.
MAX_SERVER_ERROR_RETRIES = 3
#: Wait after a 503 without Retry-After (doubles each time).
DEFAULT_UNAVAILABLE_DELAY = 1.0
#: The nonce pool keeps at most this many; older ones would only be refused as stale.
NONCE_POOL_SIZE = 64
#: Largest body read from the CA. The biggest ACME answers are certificate chains and orders
#: with many identifiers, a few tens of kB; anything near this is not an ACME server.
MAX_RESPONSE_BYTES = 1024 * 1024

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AcmeResponse:
    """A finished HTTP answer, detached from httpx."""

    url: str
    status: int
    headers: Mapping[str, str]
    content: bytes
    links: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None
    _json_cache: list[Any] = field(default_factory=list, compare=False, repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def location(self) -> str | None:
        value = self.headers.get("location")
        return urljoin(self.url, value) if value else None

    def links_with_rel(self, rel: str) -> tuple[str, ...]:
        return tuple(url for link_rel, url in self.links if link_rel == rel)

    def json(self) -> Any:
        """The decoded JSON body; :class:`MalformedResponse` when it is not JSON."""
        if not self._json_cache:
            try:
                self._json_cache.append(json.loads(self.content))
            # RecursionError: "[[[[..." nested past the parser's recursion limit (a 1 MiB
            # body holds a million levels); not JSON any ACME server sends.
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise MalformedResponse(
                    f"invalid JSON from the CA ({self.content_type or 'no content type'}, "
                    f"HTTP {self.status})",
                    url=self.url,
                    status=self.status,
                ) from exc
        return self._json_cache[0]

    def text(self) -> str:
        try:
            return self.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedResponse("body is not UTF-8 text", url=self.url) from exc


#: Longest ``Link`` field value considered; longer ones are ignored whole. A CA's links (up,
#: index, a few alternate chains) take a few hundred bytes; a cut value could end mid-URL.
MAX_LINK_VALUE_CHARS = 16 * 1024
_OWS = " \t"
_NAME_ENDS = '=;,<>"' + _OWS  # what ends a link-param's name


def _skip_ows(value: str, index: int) -> int:
    while index < len(value) and value[index] in _OWS:
        index += 1
    return index


def _parse_param_value(value: str, index: int) -> tuple[str, int]:
    """A token or quoted-string (RFC 9110 §5.6.4) at ``index``, and the index after it."""
    if index < len(value) and value[index] == '"':
        chars: list[str] = []
        index += 1
        while index < len(value) and value[index] != '"':
            if value[index] == "\\" and index + 1 < len(value):
                index += 1
            chars.append(value[index])
            index += 1
        return "".join(chars), index + 1
    end = index
    while end < len(value) and value[end] not in ';,"' and value[end] not in _OWS:
        end += 1
    return value[index:end], end


def parse_link_value(value: str) -> list[tuple[str, dict[str, str]]]:
    """One ``Link`` field value (RFC 8288 §3) as ``(target, {param: value})`` pairs, in order.

    ``link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param )``, with
    ``link-param = token BWS [ "=" BWS ( token / quoted-string ) ]``; link-values are
    separated by commas. Parameter names are lower-cased; a repeated one keeps its first
    value (§3.3: "occurrences after the first MUST be ignored" for rel). A malformed
    link-value is skipped up to the next ``<``. One pass: each character is looked at a
    bounded number of times, whatever the input (a regex here took 10 s for 60,000 ``<``).
    """
    links: list[tuple[str, dict[str, str]]] = []
    index = 0
    length = len(value)
    while True:
        start = value.find("<", index)
        if start < 0:
            return links
        end = value.find(">", start + 1)
        if end < 0:
            return links
        target = value[start + 1 : end].strip()
        params: dict[str, str] = {}
        index = end + 1
        while True:
            index = _skip_ows(value, index)
            if index >= length or value[index] != ";":
                break
            index = _skip_ows(value, index + 1)
            name_end = index
            while name_end < length and value[name_end] not in _NAME_ENDS:
                name_end += 1
            name = value[index:name_end].lower()
            index = _skip_ows(value, name_end)
            param = ""
            if index < length and value[index] == "=":
                param, index = _parse_param_value(value, _skip_ows(value, index + 1))
            if name and name not in params:
                params[name] = param
        links.append((target, params))


def parse_link_headers(values: list[str], base_url: str) -> tuple[tuple[str, str], ...]:
    """RFC 8288 ``Link`` values to ``(rel, absolute URL)`` pairs, in order, one per rel.

    RFC 8555 §7.4.2: the CA "MAY provide one or more link relation header fields [RFC8288]
    with relation "alternate"", so several links with the same rel must all be kept (httpx's
    ``Response.links`` keeps one per rel). Values longer than :data:`MAX_LINK_VALUE_CHARS`
    are ignored; a target that is not a URL is skipped.
    """
    links: list[tuple[str, str]] = []
    for value in values:
        if len(value) > MAX_LINK_VALUE_CHARS:
            logger.debug("ignoring a Link header of %d characters", len(value))
            continue
        for target, params in parse_link_value(value):
            rels = params.get("rel")
            if not rels:
                continue
            try:
                url = urljoin(base_url, target)
            except ValueError:  # e.g. "http://[" (an unclosed IPv6 literal)
                continue
            for rel in rels.split():
                links.append((rel.lower(), url))
    return tuple(links)


def _has_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _trust_nothing() -> ssl.SSLContext:
    """Verification on, no root loaded: what "the given bundle is the only trust" means
    when no bundle was given. Every handshake fails with a verification error."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _read_capped(response: httpx.Response, url: str) -> bytes:
    """The body as sent, refused past :data:`MAX_RESPONSE_BYTES` without reading it all.

    Never decoded: we ask for ``Accept-Encoding: identity``, and an answer with any other
    ``Content-Encoding`` is refused before a byte of it is read. httpx would inflate each chunk
    in full before the size could be checked, so the cap would bound only the compressed size
    (an 828-byte body gzipped twice inflates to 871 MB).
    """
    encodings = [
        coding.strip().lower()
        for coding in response.headers.get("content-encoding", "").split(",")
        if coding.strip()
    ]
    refused = [coding for coding in encodings if coding != "identity"]
    if refused:
        raise MalformedResponse(
            f"the CA sent a {', '.join(refused)}-encoded answer, which was not asked for "
            f"(Accept-Encoding: identity); refusing it undecoded: {url}",
            url=url,
            status=response.status_code,
        )
    too_large = MalformedResponse(
        f"answer larger than {MAX_RESPONSE_BYTES} bytes from {url}: not an ACME server",
        url=url,
        status=response.status_code,
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise too_large
    if response.is_stream_consumed:
        # Built from bytes already in memory (a test's MockTransport): nothing left to stream.
        body = response.content
        if len(body) > MAX_RESPONSE_BYTES:
            raise too_large
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class AcmeTransport:
    """One connection pool to one CA, with nonces, signing and retries.

    ``clock`` is wall-clock time (POSIX seconds) used for deadlines, Retry-After dates and the
    Date-header skew; ``sleep`` is awaited for every wait. Both are injectable so that tests
    never wait on real time.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        timeout: float = 30.0,
        clock: Clock,
        sleep: Sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = USER_AGENT,
        max_connections: int = 32,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._timeout = timeout
        self._nonces: collections.deque[str] = collections.deque(maxlen=NONCE_POOL_SIZE)
        self.new_nonce_url: str | None = None
        #: server Date minus our clock, seconds, from the latest answer with a Date header
        self.last_server_date_skew: float | None = None
        self._trust_given = ssl_context is not None
        if transport is None:
            transport = Http11Transport(
                ssl_context if ssl_context is not None else _trust_nothing(),
                max_connections=max_connections,
            )
        # The transport is called directly, without an httpx.AsyncClient around it: the
        # client's cookie jar, auth and redirect flows and header merging cost about a tenth
        # of the sidecar's CPU per request (py-spy, 1,000 renewals) and ACME needs none of
        # them (no cookies, no redirects: a redirect is not an ACME answer).
        self._transport = transport
        # identity: a compressed answer would be decoded before any size check could stop it
        # (an 828-byte body, gzipped twice, is 871 MB), and ACME answers are small anyway.
        self._default_headers = (
            ("User-Agent", user_agent),
            ("Accept-Language", "en"),
            ("Accept-Encoding", "identity"),
        )
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        await self._transport.aclose()

    def _closed_error(self, method: str, url: str) -> TransportClosed:
        return TransportClosed(
            f"the ACME client was closed (shut down or replaced) during {method} {url}", url=url
        )

    # --- the single conversion point ------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> AcmeResponse:
        if self._closed:
            raise self._closed_error(method, url)
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise ACMETimeout(f"deadline passed before {method} {url}", url=url)
        if not url.lower().startswith("https://"):
            # RFC 8555 §6.1: "Each ACME function is accomplished by the client sending a
            # sequence of HTTPS requests to the server". A directory or Location naming http
            # would send the account's signed requests in clear and skip the trust check.
            raise NotACME(f"refusing a URL that is not https://: {url}", url=url)
        timeout = min(self._timeout, remaining)
        try:
            request = httpx.Request(
                method,
                url,
                headers=[*self._default_headers, *(headers or {}).items()],
                content=content,
                extensions={
                    "timeout": {
                        "connect": timeout,
                        "read": timeout,
                        "write": timeout,
                        "pool": timeout,
                    }
                },
            )
            # One bound on the whole exchange, not only on each read: a CA trickling its answer
            # a byte at a time, each within the read timeout, would otherwise hold the request
            # (and the order's slot) for as long as it likes.
            whole = asyncio.timeout(timeout)
            try:
                async with whole:
                    response = await self._transport.handle_async_request(request)
                    response.request = request
                    try:
                        body = await _read_capped(response, url)
                    finally:
                        await response.aclose()
            except TimeoutError as exc:
                if not whole.expired():
                    raise  # a socket's own ETIMEDOUT: the clauses below say what it means
                raise ACMETimeout(
                    f"no complete answer from the CA within {timeout:.1f}s: {url}", url=url
                ) from exc
        except ACMETimeout:
            raise  # already ours (and an OSError, which the last clause would take)
        except (httpx.HTTPError, OSError) as exc:
            # Closed under a request in flight: its connection was aborted, which would
            # otherwise read as the CA's failure (and be retried, on a closed pool).
            if self._closed or isinstance(exc, PoolClosed):
                raise self._closed_error(method, url) from exc
            raise self._converted(exc, url, timeout) from exc
        return self._record(response, body)

    def _converted(self, exc: httpx.HTTPError | OSError, url: str, timeout: float) -> AcmeError:
        """The ``ca_client`` error that an httpx or socket error stands for."""
        if isinstance(exc, httpx.ConnectTimeout):
            return CAUnreachable(f"timed out connecting to {url}", url=url, connect_failed=True)
        if isinstance(exc, httpx.TimeoutException):
            return ACMETimeout(f"no answer from the CA within {timeout:.1f}s: {url}", url=url)
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return NotACME(f"not an http(s) URL: {url}", url=url)
        if isinstance(exc, httpx.DecodingError):
            return MalformedResponse(f"undecodable body from {url}", url=url)
        verify_error = _has_cause(exc, ssl.SSLCertVerificationError)
        if verify_error is not None:
            reason = getattr(verify_error, "verify_message", None) or str(verify_error)
            if not self._trust_given:
                reason += "; no ssl_context was given, so nothing is trusted"
            return TLSVerificationFailed(
                f"the CA's TLS certificate is not trusted ({reason}): {url}", url=url
            )
        if _has_cause(exc, ssl.SSLError) is not None:
            return CAUnreachable(f"TLS handshake with the CA failed: {url}", url=url)
        return CAUnreachable(
            f"cannot reach the CA ({type(exc).__name__}: {exc or 'connection failed'}): {url}",
            url=url,
            connect_failed=isinstance(exc, httpx.ConnectError),
        )

    def _record(self, response: httpx.Response, body: bytes) -> AcmeResponse:
        url = str(response.request.url)
        headers = {name.lower(): value for name, value in response.headers.items()}
        nonce = response.headers.get("replay-nonce")
        # RFC 8555 §6.5: "The server MUST include a Replay-Nonce header field in every
        # successful response to a POST request and SHOULD provide it in error responses".
        if nonce:
            self._nonces.append(nonce)
        now = self._clock()
        date = response.headers.get("date")
        if date:
            try:
                server_time = email.utils.parsedate_to_datetime(date)
            except (TypeError, ValueError, IndexError):
                server_time = None
            if server_time is not None and server_time.tzinfo is not None:
                self.last_server_date_skew = server_time.timestamp() - now
        logger.debug("%s %s -> %s", response.request.method, url, response.status_code)
        return AcmeResponse(
            url=url,
            status=response.status_code,
            headers=headers,
            content=body,
            links=parse_link_headers(response.headers.get_list("link"), url),
            retry_after=parse_retry_after(response.headers.get("retry-after"), now),
        )

    # --- errors ---------------------------------------------------------------------------

    @staticmethod
    def error_for(response: AcmeResponse) -> AcmeError:
        """The exception an error answer stands for (RFC 8555 §6.7)."""
        body: object = None
        if response.content_type in (PROBLEM_JSON, "application/json") or (
            response.content[:1] == b"{"
        ):
            try:
                body = response.json()
            except MalformedResponse:
                body = None
        if isinstance(body, Mapping) and isinstance(body.get("type"), str):
            return AcmeProblem.from_json(
                body, status=response.status, url=response.url, retry_after=response.retry_after
            )
        summary = f"HTTP {response.status} ({response.content_type or 'no content type'})"
        if response.status == 429:
            return RateLimited(
                "urn:ietf:params:acme:error:rateLimited",
                summary,
                status=429,
                url=response.url,
                retry_after=response.retry_after,
            )
        if response.status >= 500:
            return CAUnreachable(
                f"the CA answered {summary}: {response.url}",
                url=response.url,
                status=response.status,
            )
        return NotACME(
            f"not an ACME answer, {summary}: {response.url}",
            url=response.url,
            status=response.status,
        )

    # --- requests with retries ------------------------------------------------------------

    async def _request(
        self,
        build: Callable[[], Awaitable[tuple[str, Mapping[str, str], bytes | None]]],
        url: str,
        *,
        deadline: float,
        idempotent: bool,
        signed: bool,
    ) -> AcmeResponse:
        bad_nonces = busy = network = server_errors = 0
        while True:
            method, headers, content = await build()
            try:
                response = await self._send(
                    method, url, deadline=deadline, headers=headers, content=content
                )
            except CAUnreachable as exc:
                # A request that never left (no connection) is safe to repeat whatever it is;
                # one that may have reached the CA only when repeating it changes nothing.
                if (idempotent or exc.connect_failed) and network < MAX_NETWORK_RETRIES:
                    delay = 0.05 * 2**network
                    if fits_before_deadline(delay, self._clock(), deadline):
                        network += 1
                        logger.info("retrying %s after a connection failure: %s", url, exc)
                        await self._sleep(delay)
                        continue
                raise
            if response.status < 400:
                return response
            error = self.error_for(response)
            if isinstance(error, BadNonce) and signed and bad_nonces < MAX_BAD_NONCE_RETRIES:
                bad_nonces += 1
                logger.debug("badNonce from %s, retrying with a fresh nonce", url)
                continue
            if (
                idempotent
                and response.status in (500, 502, 504)
                and isinstance(error, ServerInternal | CAUnreachable)
                and server_errors < MAX_SERVER_ERROR_RETRIES
            ):
                delay = 0.05 * 2**server_errors
                if fits_before_deadline(delay, self._clock(), deadline):
                    server_errors += 1
                    logger.info(
                        "CA answered HTTP %s for %s, retrying: %s", response.status, url, error
                    )
                    await self._sleep(delay)
                    continue
            if response.status in (429, 503) and busy < MAX_BUSY_RETRIES:
                delay = response.retry_after
                if delay is None and response.status == 503:
                    delay = DEFAULT_UNAVAILABLE_DELAY * 2**busy
                if delay is not None and fits_before_deadline(delay, self._clock(), deadline):
                    busy += 1
                    logger.info(
                        "CA answered HTTP %s for %s, retrying in %.2fs", response.status, url, delay
                    )
                    await self._sleep(delay)
                    continue
            raise error

    async def get(
        self, url: str, *, deadline: float, accept: str = "application/json"
    ) -> AcmeResponse:
        """A plain GET (the directory, RFC 9773 renewal info)."""

        async def build() -> tuple[str, Mapping[str, str], bytes | None]:
            return "GET", {"Accept": accept}, None

        return await self._request(build, url, deadline=deadline, idempotent=True, signed=False)

    async def _nonce(self, deadline: float) -> str:
        """RFC 8555 §7.2: a pooled nonce, or a fresh one from HEAD newNonce."""
        if self._nonces:
            # The newest first: the pool drops the oldest, which a CA may have expired.
            return self._nonces.pop()
        if self.new_nonce_url is None:
            raise TransportError("no newNonce URL known (directory not loaded)")
        url = self.new_nonce_url

        async def build() -> tuple[str, Mapping[str, str], bytes | None]:
            return "HEAD", {}, None

        response = await self._request(build, url, deadline=deadline, idempotent=True, signed=False)
        nonce = response.headers.get("replay-nonce")
        if not nonce:
            raise MalformedResponse("newNonce answered without a Replay-Nonce", url=url)
        # _record pooled it already; take it back out for this request.
        with contextlib.suppress(ValueError):
            self._nonces.remove(nonce)
        return nonce

    async def post(
        self,
        url: str,
        payload: Mapping[str, Any] | None,
        key: PrivateKey,
        *,
        kid: str | None,
        deadline: float,
        accept: str = "application/json",
        idempotent: bool | None = None,
    ) -> AcmeResponse:
        """A signed POST; ``payload=None`` is POST-as-GET (RFC 8555 §6.3).

        Each attempt takes a new nonce and is signed again (a nonce is single-use, §6.5).
        ``idempotent`` (default: only POST-as-GET) allows repeating the request after a
        connection failure or a server error: say True only when a repeat changes nothing
        that matters (a second newOrder just makes another order).
        """

        async def build() -> tuple[str, Mapping[str, str], bytes | None]:
            nonce = await self._nonce(deadline)
            body = jws.sign(payload, key, url=url, nonce=nonce, kid=kid)
            headers = {"Content-Type": JOSE_JSON, "Accept": accept}
            return "POST", headers, json.dumps(body).encode("ascii")

        if idempotent is None:
            idempotent = payload is None
        return await self._request(
            build, url, deadline=deadline, idempotent=idempotent, signed=True
        )


__all__ = ["AcmeResponse", "AcmeTransport", "parse_link_headers"]
