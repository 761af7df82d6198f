"""The tls-alpn-01 responder (RFC 8737; IP identifiers per RFC 8738 §6).

RFC 8737 §3: the CA opens a TLS connection to port 443 "with the ALPN extension with the
single protocol name 'acme-tls/1' and ... the Server Name Indication extension set to the
domain name being validated"; the server presents "a self-signed certificate" that contains
"a subjectAltName extension containing the dNSName being validated and no other identifiers"
and "the acmeIdentifier extension", which "MUST be critical" and holds the SHA-256 digest of
the key authorization. RFC 8738 §6 does the same for an IP address: the SNI is the address's
reverse-DNS name ("in-addr.arpa" / "ip6.arpa") and the SAN "a single iPAddress".

Python's ``ssl`` module cannot refuse a handshake whose ClientHello lacks ``acme-tls/1`` (its
ALPN callback silently negotiates nothing instead), so the responder reads the ClientHello
itself first (`parse_client_hello`, pure), refuses with a TLS alert when the ALPN or SNI is not
one it serves, and only then runs the handshake through memory BIOs. The certificate is still
chosen in the ``sni_callback``, per identifier, so a name cleaned up mid-handshake is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_client.challenges import _listen
from ca_client.challenges.base import (
    ChallengeSetupError,
    check_key_authorization,
    format_address,
    tls_alpn01_digest,
)
from ca_client.models import Identifier

logger = logging.getLogger(__name__)

ACME_TLS_ALPN_PROTOCOL = "acme-tls/1"
# RFC 8737 §6.1: id-pe-acmeIdentifier OBJECT IDENTIFIER ::= { id-pe 31 }
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_MAX_CLIENT_HELLO = 1 << 16
_MAX_RECORD = (1 << 14) + 2048  # RFC 8446 §5.1/§5.2 plaintext limit plus expansion slack

# RFC 8446 §6.2 alert descriptions used to refuse a connection.
ALERT_DECODE_ERROR = 50
ALERT_UNRECOGNIZED_NAME = 112
ALERT_NO_APPLICATION_PROTOCOL = 120


class IncompleteClientHello(Exception):
    """More bytes are needed before the ClientHello can be parsed."""


class MalformedClientHello(Exception):
    """The bytes are not a TLS ClientHello this responder understands."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None  # host_name from server_name (RFC 6066 §3), as sent
    alpn_protocols: tuple[str, ...] | None  # None when the extension is absent (RFC 7301)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, length: int) -> bytes:
        if length > self.remaining:
            raise MalformedClientHello("field runs past the end of its container")
        chunk = self._data[self._pos : self._pos + length]
        self._pos += length
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.uint(length_size))


def parse_client_hello(data: bytes) -> ClientHello:
    """Read SNI and ALPN from the first handshake message in ``data`` (TLS records).

    Raises `IncompleteClientHello` when ``data`` ends before the message does, and
    `MalformedClientHello` for anything else that is not a well-formed ClientHello
    (RFC 8446 §4.1.2, §5.1; RFC 5246 §7.4.1.2 has the same layout).
    """
    handshake = bytearray()
    offset = 0
    while True:
        if len(handshake) >= 4:
            if handshake[0] != _CLIENT_HELLO:
                raise MalformedClientHello("first handshake message is not a ClientHello")
            length = int.from_bytes(handshake[1:4], "big")
            if length > _MAX_CLIENT_HELLO:
                raise MalformedClientHello("ClientHello too large")
            if len(handshake) >= 4 + length:
                return _parse_client_hello_body(bytes(handshake[4 : 4 + length]))
        if len(data) - offset < 5:
            raise IncompleteClientHello
        # A ClientHello may be split over several records (RFC 8446 §5.1), so reassemble.
        record_type = data[offset]
        record_length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if record_type != _HANDSHAKE_RECORD or data[offset + 1] != 3:
            raise MalformedClientHello("not a TLS handshake record")
        if record_length == 0 or record_length > _MAX_RECORD:
            raise MalformedClientHello("bad TLS record length")
        if len(data) - offset - 5 < record_length:
            raise IncompleteClientHello
        handshake += data[offset + 5 : offset + 5 + record_length]
        offset += 5 + record_length


def _parse_client_hello_body(body: bytes) -> ClientHello:
    cursor = _Cursor(body)
    cursor.take(2 + 32)  # legacy_version, random
    cursor.vector(1)  # legacy_session_id
    cursor.vector(2)  # cipher_suites
    cursor.vector(1)  # legacy_compression_methods
    if cursor.remaining == 0:
        return ClientHello(None, None)  # RFC 5246 §7.4.1.2: extensions may be absent
    extensions = _Cursor(cursor.vector(2))
    if cursor.remaining:
        raise MalformedClientHello("bytes after the extensions")
    server_name: str | None = None
    alpn: tuple[str, ...] | None = None
    seen: set[int] = set()
    while extensions.remaining:
        extension_type = extensions.uint(2)
        extension_data = extensions.vector(2)
        if extension_type in seen:  # RFC 8446 §4.2: at most one of each type
            raise MalformedClientHello("repeated extension")
        seen.add(extension_type)
        if extension_type == _EXT_SERVER_NAME:
            server_name = _parse_server_name(extension_data)
        elif extension_type == _EXT_ALPN:
            alpn = _parse_alpn(extension_data)
    return ClientHello(server_name, alpn)


def _parse_server_name(data: bytes) -> str | None:
    outer = _Cursor(data)
    names = _Cursor(outer.vector(2))
    if outer.remaining:
        raise MalformedClientHello("bytes after server_name list")
    host_name: str | None = None
    while names.remaining:
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == 0:  # RFC 6066 §3: host_name(0); at most one per type
            if host_name is not None:
                raise MalformedClientHello("two host_name entries")
            try:
                host_name = name.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedClientHello("host_name is not ASCII") from None
    return host_name


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    outer = _Cursor(data)
    protocols = _Cursor(outer.vector(2))
    if outer.remaining:
        raise MalformedClientHello("bytes after ALPN list")
    names: list[str] = []
    while protocols.remaining:
        name = protocols.vector(1)
        if not name:  # RFC 7301 §3.1: empty strings MUST NOT be included
            raise MalformedClientHello("empty ALPN protocol name")
        names.append(name.decode("latin-1"))
    if not names:
        raise MalformedClientHello("empty ALPN list")
    return tuple(names)


def alert_record(description: int) -> bytes:
    """A plaintext fatal alert record (RFC 8446 §6), sent before any handshake reply."""
    return bytes([21, 3, 3, 0, 2, 2, description])


def sni_name(identifier: Identifier) -> str:
    """The SNI the CA sends for ``identifier``: the name, or for an IP its reverse-DNS name.

    RFC 8738 §6: "the SNI extension ... MUST be set to the reverse-DNS name of the IP address".
    Names compare case-insensitively and without a trailing dot.
    """
    if identifier.type == "ip":
        return ipaddress.ip_address(identifier.value).reverse_pointer
    if identifier.type != "dns":
        raise ChallengeSetupError(f"tls-alpn-01 cannot prove a {identifier.type!r} identifier")
    if identifier.value.startswith("*."):
        # RFC 8737 §3: "The "tls-alpn-01" challenge ... MUST NOT be used for wildcard domains"
        # (it is not offered for them, RFC 8555 §7.1.3).
        raise ChallengeSetupError(f"tls-alpn-01 cannot prove wildcard {identifier.value!r}")
    return normalize_server_name(identifier.value)


def normalize_server_name(name: str) -> str:
    return name.rstrip(".").lower()


def build_validation_certificate(
    identifier: Identifier,
    key_authorization: str,
    key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> x509.Certificate:
    """The self-signed certificate of RFC 8737 §3 (and RFC 8738 §6 for IPs)."""
    san: x509.GeneralName
    if identifier.type == "ip":
        san = x509.IPAddress(ipaddress.ip_address(identifier.value))
    else:
        san = x509.DNSName(identifier.value.rstrip("."))
    # RFC 8737 §3: "Authorization ::= OCTET STRING (SIZE (32))", the extnValue holding its DER.
    digest = tls_alpn01_digest(key_authorization)
    acme_identifier = b"\x04" + bytes([len(digest)]) + digest
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME tls-alpn-01 challenge")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, acme_identifier),
            critical=True,  # RFC 8737 §3: "The acmeIdentifier extension MUST be critical"
        )
        .sign(key, hashes.SHA256())
    )


def _base_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8737 §4: "ACME servers ... MUST only negotiate TLS 1.2 or higher".
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_ALPN_PROTOCOL])
    context.options |= ssl.OP_NO_TICKET  # the connection ends at the handshake: no resumption
    context.num_tickets = 0
    return context


def _validation_context(identifier: Identifier, key_authorization: str) -> ssl.SSLContext:
    """A server context holding a fresh key and its validation certificate (blocking)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = build_validation_certificate(identifier, key_authorization, key, now)
    context = _base_context()
    # ssl can only load a key from a file. The key is a throwaway that proves nothing once the
    # challenge is over; it lives for a moment in a 0700 directory and is deleted at once.
    with tempfile.TemporaryDirectory(prefix="tls-alpn-01-") as directory:
        path = os.path.join(directory, "validation.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(certificate.public_bytes(serialization.Encoding.PEM))
            file.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        context.load_cert_chain(path)
    return context


@dataclass(frozen=True, slots=True)
class _Presented:
    token: str
    key_authorization: str
    context: ssl.SSLContext


class TlsAlpn01Responder(_listen.Listener):
    """Answers tls-alpn-01 validation handshakes for the identifiers it holds.

    One long-lived responder serves any number of concurrent orders. Only one certificate can
    answer a given SNI, so when two orders present the same identifier at once the most recent
    one is served (and the earlier one again once the later one is cleaned up).
    """

    challenge_type = "tls-alpn-01"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        handshake_timeout: float = 10.0,
        max_connections: int = 512,
    ) -> None:
        super().__init__(host, port, max_connections=max_connections)
        self._handshake_timeout = handshake_timeout
        self._presented: dict[str, list[_Presented]] = {}
        self._context = _base_context()
        self._context.sni_callback = self._select_context

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("tls-alpn-01 responder already started")
        self._server = await _listen.start_listener(
            self.challenge_type, self.host, self.port, self._handle_connection
        )
        logger.info(
            "tls-alpn-01 responder listening on %s",
            format_address(_listen.normalize_host(self.host) or "*", self.bound_port),
        )

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        check_key_authorization(token, key_authorization)
        name = sni_name(identifier)
        # Key generation and signing take a few milliseconds of CPU: keep them off the loop.
        context = await asyncio.to_thread(_validation_context, identifier, key_authorization)
        entries = self._presented.setdefault(name, [])
        if entries:
            logger.warning(
                "tls-alpn-01: %s presented by two orders at once; serving the newer", name
            )
        entries.append(_Presented(token, key_authorization, context))
        logger.debug("tls-alpn-01 certificate presented for %s (SNI %s)", identifier.value, name)

    async def cleanup(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        try:
            name = sni_name(identifier)
        except ChallengeSetupError:
            return  # never presented
        entries = [entry for entry in self._presented.get(name, []) if entry.token != token]
        if entries:
            self._presented[name] = entries
        else:
            self._presented.pop(name, None)
        logger.debug("tls-alpn-01 certificate removed for %s", identifier.value)

    def _lookup(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name is None:
            return None
        entries = self._presented.get(normalize_server_name(server_name))
        return entries[-1].context if entries else None

    def _select_context(
        self, connection: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        context = self._lookup(server_name)
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = context
        return None

    def _refusal(self, hello: ClientHello) -> int | None:
        """The alert to refuse ``hello`` with, or None to go on with the handshake."""
        if hello.alpn_protocols is None or ACME_TLS_ALPN_PROTOCOL not in hello.alpn_protocols:
            return ALERT_NO_APPLICATION_PROTOCOL
        if self._lookup(hello.server_name) is None:
            return ALERT_UNRECOGNIZED_NAME
        return None

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= self._max_connections or task is None:
            writer.close()
            return
        self._connections.add(task)
        try:
            async with asyncio.timeout(self._handshake_timeout):
                await self._serve(reader, writer)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            logger.debug("tls-alpn-01 handshake ended: %s", exc)
        except asyncio.CancelledError:
            pass  # aclose(): end quietly (asyncio logs handler tasks that end cancelled)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(self._handshake_timeout):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            received += chunk
            try:
                hello = parse_client_hello(received)
                break
            except IncompleteClientHello:
                if len(received) > _MAX_CLIENT_HELLO + 4096:
                    writer.write(alert_record(ALERT_DECODE_ERROR))
                    return
            except MalformedClientHello as exc:
                logger.debug("tls-alpn-01 refused a connection: %s", exc)
                writer.write(alert_record(ALERT_DECODE_ERROR))
                return
        refusal = self._refusal(hello)
        if refusal is not None:
            logger.debug(
                "tls-alpn-01 refused SNI %r ALPN %r (alert %d)",
                hello.server_name,
                hello.alpn_protocols,
                refusal,
            )
            writer.write(alert_record(refusal))
            return

        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(received)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    await writer.drain()
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    incoming.write(chunk)
            logger.debug(
                "tls-alpn-01 validation handshake for %s (%s)", hello.server_name, tls.version()
            )
            # RFC 8737 §3: after the handshake "the ACME server MUST ... close the connection";
            # the responder closes too, with a close_notify, and reads nothing further.
            with contextlib.suppress(ssl.SSLError):
                tls.unwrap()
        finally:
            # The client must see what OpenSSL produced last: our Finished, or the alert.
            pending = outgoing.read()
            if pending:
                writer.write(pending)
                await writer.drain()
