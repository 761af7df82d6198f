"""Resource parsing, Link headers, PEM chains, chain choice, issued-certificate checks."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_client.client import select_chain, split_pem_chain, verify_issued_certificate
from ca_client.errors import CertificateMismatch, MalformedResponse, Unauthorized
from ca_client.keys import KeyType, PrivateKey, generate_private_key
from ca_client.models import (
    Authorization,
    Directory,
    Identifier,
    Order,
    RenewalInfo,
    parse_timestamp,
)
from ca_client.transport import parse_link_headers


def test_identifier_from_string() -> None:
    assert Identifier.from_string("a.test") == Identifier("dns", "a.test")
    assert Identifier.from_string("127.0.0.1") == Identifier("ip", "127.0.0.1")
    assert Identifier.from_string("::0001") == Identifier("ip", "::1")


def test_directory_requires_the_rfc_fields() -> None:
    body = {
        "newNonce": "https://ca/nonce",
        "newAccount": "https://ca/acct",
        "newOrder": "https://ca/order",
        "revokeCert": "https://ca/revoke",
        "renewalInfo": "https://ca/ari",
        "meta": {"externalAccountRequired": True, "termsOfService": "https://ca/tos"},
    }
    directory = Directory.from_json(body, url="https://ca/dir")
    assert directory.renewal_info == "https://ca/ari"
    assert directory.external_account_required
    del body["newOrder"]
    with pytest.raises(MalformedResponse, match="newOrder"):
        Directory.from_json(body, url="https://ca/dir")
    with pytest.raises(MalformedResponse):
        Directory.from_json(["not", "a", "dict"], url="https://ca/dir")


def test_order_parsing_with_error_and_bad_fields() -> None:
    body = {
        "status": "invalid",
        "identifiers": [{"type": "dns", "value": "a.test"}],
        "authorizations": ["https://ca/authz/1"],
        "finalize": "https://ca/order/1/finalize",
        "error": {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "no"},
    }
    order = Order.from_json(body, url="https://ca/order/1")
    assert isinstance(order.error, Unauthorized)
    assert order.identifiers == (Identifier.dns("a.test"),)
    with pytest.raises(MalformedResponse, match="authorizations"):
        Order.from_json({**body, "authorizations": "https://ca/authz/1"}, url="u")
    with pytest.raises(MalformedResponse, match="identifier"):
        Order.from_json({**body, "identifiers": [{"type": "dns"}]}, url="u")


def test_wildcard_authorization() -> None:
    authorization = Authorization.from_json(
        {
            "identifier": {"type": "dns", "value": "a.test"},
            "status": "pending",
            "wildcard": True,
            "challenges": [
                {"type": "dns-01", "url": "https://ca/chall/1", "status": "pending", "token": "tok"}
            ],
        },
        url="https://ca/authz/1",
    )
    assert authorization.wildcard
    assert authorization.challenge("dns-01") is not None
    assert authorization.challenge("http-01") is None


def test_timestamps_with_nanoseconds_and_offsets() -> None:
    assert parse_timestamp("2026-11-28T01:02:03.123456789Z") == datetime.datetime(
        2026, 11, 28, 1, 2, 3, 123456, tzinfo=datetime.UTC
    )
    assert parse_timestamp("2026-11-28T02:02:03+01:00") == datetime.datetime(
        2026, 11, 28, 1, 2, 3, tzinfo=datetime.UTC
    )


def test_renewal_info_window() -> None:
    info = RenewalInfo.from_json(
        {
            "suggestedWindow": {"start": "2026-01-02T04:00:00Z", "end": "2026-01-03T04:00:00Z"},
            "explanationURL": "https://ca/why",
        },
        url="u",
        retry_after=21600.0,
    )
    assert info.end - info.start == datetime.timedelta(days=1)
    assert info.retry_after == 21600.0
    with pytest.raises(MalformedResponse, match="ends before"):
        RenewalInfo.from_json(
            {"suggestedWindow": {"start": "2026-01-03T04:00:00Z", "end": "2026-01-02T04:00:00Z"}},
            url="u",
            retry_after=None,
        )


def test_link_headers_keep_every_alternate() -> None:
    links = parse_link_headers(
        [
            '<https://ca/cert/1/1>;rel="alternate", </cert/1/2>; rel=alternate',
            '<https://ca/dir>;rel="index"',
            '<https://ca/x>; title="no rel"',
        ],
        "https://ca/cert/1",
    )
    assert links == (
        ("alternate", "https://ca/cert/1/1"),
        ("alternate", "https://ca/cert/1/2"),
        ("index", "https://ca/dir"),
    )


# --- certificates -------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    issuer: str,
    key: PrivateKey,
    signer: PrivateKey,
    sans: list[x509.GeneralName] | None = None,
) -> str:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(Encoding.PEM).decode()


def test_split_pem_chain_normalises_line_ends() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    one, two = _cert("a", "b", key, key), _cert("b", "c", key, key)
    body = one.replace("\n", "\r\n") + "\r\n\r\n" + two + "trailing junk"
    assert split_pem_chain(body) == [one, two]
    assert split_pem_chain("<html>nope</html>") == []


def test_select_chain_by_top_issuer_cn() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("leaf", "Int", key, key)
    chain_a = [leaf, _cert("Int", "Root A", key, key)]
    chain_b = [leaf, _cert("Int", "Root B", key, key)]
    assert select_chain([chain_a, chain_b], "root b") == 1
    assert select_chain([chain_a, chain_b], "Root A") == 0
    assert select_chain([chain_a, chain_b], "Root C") == 0
    assert select_chain([chain_a, chain_b], None) == 0


def test_verify_issued_certificate() -> None:
    ca_key = generate_private_key(KeyType.EC_P256)
    cert_key = generate_private_key(KeyType.EC_P256)
    sans: list[x509.GeneralName] = [
        x509.DNSName("A.test"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    ]
    good = _cert("a.test", "CA", cert_key, ca_key, sans)
    wanted = [Identifier.dns("a.test"), Identifier.ip("10.0.0.1")]
    assert verify_issued_certificate(good, cert_key, wanted).subject == _name("a.test")
    with pytest.raises(CertificateMismatch, match="not for the key"):
        verify_issued_certificate(good, generate_private_key(KeyType.EC_P256), wanted)
    with pytest.raises(CertificateMismatch, match=r"b\.test"):
        verify_issued_certificate(good, cert_key, [*wanted, Identifier.dns("b.test")])
    with pytest.raises(CertificateMismatch, match=r"10\.0\.0\.2"):
        verify_issued_certificate(good, cert_key, [Identifier.ip("10.0.0.2")])
