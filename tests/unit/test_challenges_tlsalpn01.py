"""tls-alpn-01 responder: ClientHello parsing, the validation certificate, real handshakes."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca_client.challenges import ChallengeSetupError, ResponderBindError, TlsAlpn01Responder
from ca_client.challenges.tlsalpn01 import (
    ACME_IDENTIFIER_OID,
    ClientHello,
    IncompleteClientHello,
    MalformedClientHello,
    build_validation_certificate,
    parse_client_hello,
    sni_name,
)
from ca_client.models import Identifier

pytestmark = pytest.mark.anyio

THUMBPRINT = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = f"{TOKEN}.{THUMBPRINT}"


def _client_context(
    alpn: list[str] | None = None, version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    # The CA checks the self-signed certificate's contents, not its chain (RFC 8737 §3).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


def _client_hello(server_hostname: str | None, alpn: list[str] | None) -> bytes:
    """The exact bytes a real OpenSSL client sends first."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = _client_context(alpn).wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


# --- pure: ClientHello ----------------------------------------------------------------------


def test_parse_real_client_hello() -> None:
    hello = parse_client_hello(_client_hello("a.example", ["acme-tls/1"]))
    assert hello == ClientHello("a.example", ("acme-tls/1",))


def test_parse_client_hello_without_sni_or_alpn() -> None:
    assert parse_client_hello(_client_hello(None, None)) == ClientHello(None, None)
    hello = parse_client_hello(_client_hello("b.example", ["h2", "http/1.1"]))
    assert hello == ClientHello("b.example", ("h2", "http/1.1"))


def test_parse_client_hello_split_over_records() -> None:
    record = _client_hello("a.example", ["acme-tls/1"])
    header, body = record[:3], record[5:]
    # RFC 8446 §5.1: one handshake message may be fragmented over several records.
    first, second = body[:10], body[10:]
    split = b"".join(header + len(part).to_bytes(2, "big") + part for part in (first, second))
    assert parse_client_hello(split).server_name == "a.example"
    with pytest.raises(IncompleteClientHello):
        parse_client_hello(split[: len(header) + 2 + len(first) + 7])


@pytest.mark.parametrize("cut", [0, 3, 5, 40, -1])
def test_truncated_client_hello_is_incomplete(cut: int) -> None:
    record = _client_hello("a.example", ["acme-tls/1"])
    with pytest.raises(IncompleteClientHello):
        parse_client_hello(record[:cut])


def test_inconsistent_inner_lengths_are_malformed() -> None:
    record = bytearray(_client_hello("a.example", ["acme-tls/1"]))
    record[5 + 4 + 34] = 0xFF  # session id length now runs past the message
    with pytest.raises(MalformedClientHello):
        parse_client_hello(bytes(record))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x17\x03\x03\x00\x05hello",  # application data first
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(MalformedClientHello):
        parse_client_hello(data)


# --- pure: names and the certificate --------------------------------------------------------


def test_sni_names() -> None:
    assert sni_name(Identifier.dns("A.Example.")) == "a.example"
    # RFC 8738 §6: the reverse-DNS name of the address.
    assert sni_name(Identifier.ip("127.0.0.1")) == "1.0.0.127.in-addr.arpa"
    assert sni_name(Identifier.ip("2001:db8::1")).endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    with pytest.raises(ChallengeSetupError, match="wildcard"):
        sni_name(Identifier.dns("*.a.example"))


def _acme_identifier_value(certificate: x509.Certificate) -> tuple[bool, bytes]:
    extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    return extension.critical, extension.value.value


def _assert_validation_certificate(
    certificate: x509.Certificate, san: x509.GeneralName, key_authorization: str
) -> None:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [san]  # RFC 8737 §3: "no other identifiers"
    critical, value = _acme_identifier_value(certificate)
    assert critical
    # DER: OCTET STRING (tag 4), length 32, SHA-256(keyAuthorization).
    assert value == b"\x04\x20" + hashlib.sha256(key_authorization.encode()).digest()
    certificate.verify_directly_issued_by(certificate)  # self-signed


def test_build_validation_certificate_dns_and_ip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime(2026, 11, 28, tzinfo=datetime.UTC)
    certificate = build_validation_certificate(
        Identifier.dns("a.example"), KEY_AUTHORIZATION, key, now
    )
    _assert_validation_certificate(certificate, x509.DNSName("a.example"), KEY_AUTHORIZATION)
    assert certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc

    certificate = build_validation_certificate(
        Identifier.ip("127.0.0.1"), KEY_AUTHORIZATION, key, now
    )
    _assert_validation_certificate(
        certificate,
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        KEY_AUTHORIZATION,
    )


# --- real handshakes ------------------------------------------------------------------------


async def _handshake(
    port: int,
    server_name: str | None,
    alpn: list[str] | None = None,
    version: ssl.TLSVersion | None = None,
) -> tuple[x509.Certificate, str | None, bytes]:
    """A real TLS handshake; returns the served certificate, the ALPN, and what follows."""
    context = _client_context(["acme-tls/1"] if alpn is None else alpn, version)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_name
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        protocol = tls.selected_alpn_protocol()
        try:
            async with asyncio.timeout(30):  # a hang guard only; the server closes at once
                after = await reader.read()
        except (ssl.SSLError, ConnectionResetError):
            after = b""
        return x509.load_der_x509_certificate(der), protocol, after
    finally:
        writer.close()


async def _refused(port: int, server_name: str | None, alpn: list[str] | None) -> ssl.SSLError:
    with pytest.raises(ssl.SSLError) as caught:
        await _handshake(port, server_name, alpn)
    return caught.value


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_handshake_serves_the_validation_certificate(version: ssl.TLSVersion) -> None:
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        await responder.present(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
        certificate, protocol, after = await _handshake(
            responder.bound_port, "A.EXAMPLE", version=version
        )
        assert protocol == "acme-tls/1"
        _assert_validation_certificate(certificate, x509.DNSName("a.example"), KEY_AUTHORIZATION)
        assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
        assert after == b""  # RFC 8737 §3: the connection ends with the handshake


async def test_ip_identifiers_use_reverse_dns_sni() -> None:
    other = f"other.{THUMBPRINT}"
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        await responder.present(Identifier.ip("127.0.0.1"), TOKEN, KEY_AUTHORIZATION)
        await responder.present(Identifier.ip("2001:db8::1"), "other", other)
        certificate, _, _ = await _handshake(responder.bound_port, "1.0.0.127.in-addr.arpa")
        _assert_validation_certificate(
            certificate,
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            KEY_AUTHORIZATION,
        )
        v6_name = sni_name(Identifier.ip("2001:db8::1"))
        certificate, _, _ = await _handshake(responder.bound_port, v6_name)
        _assert_validation_certificate(
            certificate, x509.IPAddress(ipaddress.ip_address("2001:db8::1")), other
        )


async def test_unknown_or_missing_sni_is_refused() -> None:
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        await responder.present(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
        error = await _refused(responder.bound_port, "b.example", ["acme-tls/1"])
        assert "UNRECOGNIZED_NAME" in str(error).upper().replace(" ", "_")
        error = await _refused(responder.bound_port, None, ["acme-tls/1"])
        assert "UNRECOGNIZED_NAME" in str(error).upper().replace(" ", "_")


@pytest.mark.parametrize("alpn", [[], ["h2", "http/1.1"]])
async def test_handshake_without_acme_tls_alpn_is_refused(alpn: list[str]) -> None:
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        await responder.present(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
        error = await _refused(responder.bound_port, "a.example", alpn)
        assert "NO_APPLICATION_PROTOCOL" in str(error).upper().replace(" ", "_")
        # Offered among others, acme-tls/1 is what gets negotiated.
        _, protocol, _ = await _handshake(responder.bound_port, "a.example", ["h2", "acme-tls/1"])
        assert protocol == "acme-tls/1"


async def test_cleanup_stops_serving_and_fresh_keys_per_present() -> None:
    name = Identifier.dns("a.example")
    second = f"second.{THUMBPRINT}"
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        port = responder.bound_port
        await responder.present(name, TOKEN, KEY_AUTHORIZATION)
        first_cert, _, _ = await _handshake(port, "a.example")

        # Two orders for one name at once: the newer is served until it is cleaned up.
        await responder.present(name, "second", second)
        newer, _, _ = await _handshake(port, "a.example")
        _assert_validation_certificate(newer, x509.DNSName("a.example"), second)
        assert newer.public_key() != first_cert.public_key()

        await responder.cleanup(name, "second", second)
        again, _, _ = await _handshake(port, "a.example")
        _assert_validation_certificate(again, x509.DNSName("a.example"), KEY_AUTHORIZATION)

        await responder.cleanup(name, TOKEN, KEY_AUTHORIZATION)
        await responder.cleanup(name, TOKEN, KEY_AUTHORIZATION)  # already gone: no error
        await _refused(port, "a.example", ["acme-tls/1"])


async def test_garbage_is_answered_with_an_alert_and_closed() -> None:
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 30)  # bounds a hang only
        except ConnectionResetError:
            answer = b""
        writer.close()
        assert answer in (b"", b"\x15\x03\x03\x00\x02\x02\x32")  # fatal decode_error alert


async def test_present_refuses_wildcards_and_bad_tokens() -> None:
    responder = TlsAlpn01Responder("127.0.0.1", 0)
    with pytest.raises(ChallengeSetupError):
        await responder.present(Identifier.dns("*.a.example"), TOKEN, KEY_AUTHORIZATION)
    with pytest.raises(ChallengeSetupError):
        await responder.present(Identifier.dns("a.example"), "a/b", "a/b.c")


async def test_many_names_concurrently() -> None:
    names = [f"n{i}.example" for i in range(20)]
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        await asyncio.gather(
            *(
                responder.present(Identifier.dns(name), f"t{i}", f"t{i}.{THUMBPRINT}")
                for i, name in enumerate(names)
            )
        )
        results = await asyncio.gather(*(_handshake(responder.bound_port, name) for name in names))
        for i, (certificate, _, _) in enumerate(results):
            _assert_validation_certificate(
                certificate, x509.DNSName(names[i]), f"t{i}.{THUMBPRINT}"
            )


async def test_bind_failure_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ResponderBindError, match=rf"tls-alpn-01 .*127\.0\.0\.1:{port}"):
            await TlsAlpn01Responder("127.0.0.1", port).start()


def _memory_handshake(server_context: ssl.SSLContext, server_name: str) -> x509.Certificate:
    """Client and server wired through memory BIOs: the server context's own SNI selection."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = _client_context(["acme-tls/1"]).wrap_bio(
        client_in, client_out, server_hostname=server_name
    )
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done: set[str] = set()
    for _ in range(20):
        for label, side in (("client", client), ("server", server)):
            if label not in done:
                try:
                    side.do_handshake()
                    done.add(label)
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if done == {"client", "server"}:
            break
    assert server.selected_alpn_protocol() == "acme-tls/1"
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_sni_callback_selects_per_name_and_refuses_names_cleaned_up() -> None:
    # The ClientHello pre-check normally refuses unknown names first; the SNI callback is what
    # picks the certificate, and refuses a name cleaned up between the two.
    responder = TlsAlpn01Responder("127.0.0.1", 0)
    second = f"second.{THUMBPRINT}"
    await responder.present(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
    await responder.present(Identifier.dns("b.example"), "second", second)
    server_context = responder._context
    _assert_validation_certificate(
        _memory_handshake(server_context, "a.example"), x509.DNSName("a.example"), KEY_AUTHORIZATION
    )
    _assert_validation_certificate(
        _memory_handshake(server_context, "b.example"), x509.DNSName("b.example"), second
    )
    await responder.cleanup(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
    with pytest.raises(ssl.SSLError, match=r"(?i)callback failed|unrecognized.name"):
        _memory_handshake(server_context, "a.example")
