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
itself first (`ClientHelloReader` in ``_client_hello``: pure, incremental, bounded), refuses
with a TLS alert when the ALPN or SNI is not one it serves, and only then runs the handshake
through memory BIOs. The certificate is still chosen in the ``sni_callback``, per identifier, so
a name cleaned up mid-handshake is refused.
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
from ca_client.challenges._client_hello import (
    ClientHello,
    ClientHelloReader,
    IncompleteClientHello,
    MalformedClientHello,
    parse_client_hello,
)
from ca_client.challenges._limits import Slot
from ca_client.challenges.base import (
    ChallengeSetupError,
    check_key_authorization,
    format_address,
    tls_alpn01_digest,
)
from ca_client.models import Identifier

__all__ = [
    "ACME_IDENTIFIER_OID",
    "ACME_TLS_ALPN_PROTOCOL",
    "ClientHello",
    "IncompleteClientHello",
    "MalformedClientHello",
    "TlsAlpn01Responder",
    "alert_record",
    "build_validation_certificate",
    "normalize_server_name",
    "parse_client_hello",
    "sni_name",
]

logger = logging.getLogger(__name__)

ACME_TLS_ALPN_PROTOCOL = "acme-tls/1"
# RFC 8737 §6.1: id-pe-acmeIdentifier OBJECT IDENTIFIER ::= { id-pe 31 }
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

# RFC 8446 §6.2 alert descriptions used to refuse a connection.
ALERT_DECODE_ERROR = 50
ALERT_UNRECOGNIZED_NAME = 112
ALERT_NO_APPLICATION_PROTOCOL = 120


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
        hello_timeout: float = 5.0,
        first_byte_timeout: float = 3.0,
        max_connections: int = 512,
        max_per_source: int = 128,
    ) -> None:
        super().__init__(host, port, max_connections=max_connections, max_per_source=max_per_source)
        self._handshake_timeout = handshake_timeout
        self._hello_timeout = min(hello_timeout, handshake_timeout)
        self._first_byte_timeout = min(first_byte_timeout, self._hello_timeout)
        self._presented: dict[str, list[_Presented]] = {}
        self._context = _base_context()
        self._context.sni_callback = self._select_context

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("tls-alpn-01 responder already started")
        self._server = await _listen.start_listener(
            self.challenge_type, self.host, self.port, self._on_connection
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

    async def _read_client_hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[ClientHello | None, bytes]:
        """The ClientHello and every byte read so far (for OpenSSL), or None after an alert.

        Deadlines: the first byte within ``first_byte_timeout``, the whole ClientHello within
        ``hello_timeout`` of the accept; each byte is parsed once (`ClientHelloReader`).
        """
        parser = ClientHelloReader()
        received = bytearray()
        deadline = asyncio.get_running_loop().time() + self._hello_timeout
        async with asyncio.timeout(self._first_byte_timeout):
            chunk = await reader.read(65536)
        try:
            while chunk:
                received += chunk
                hello = parser.feed(chunk)
                if hello is not None:
                    return hello, bytes(received)
                async with asyncio.timeout_at(deadline):
                    chunk = await reader.read(65536)
        except MalformedClientHello as exc:
            logger.debug("tls-alpn-01 refused a connection: %s", exc)
            writer.write(alert_record(ALERT_DECODE_ERROR))
        return None, b""

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot
    ) -> None:
        async with asyncio.timeout(self._handshake_timeout):
            await self._handshake(reader, writer, slot)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot
    ) -> None:
        hello, received = await self._read_client_hello(reader, writer)
        if hello is None:
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
            return  # still idle: a refused client may be closed to make room
        # A whole ClientHello for a name we serve: the handshake is protected from here.
        self._answering(slot)

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
