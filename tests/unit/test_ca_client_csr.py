"""CSR contents for dns and ip identifiers (RFC 8555 §7.4, RFC 8738)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ca_client.csr import build_csr
from ca_client.keys import KeyType, generate_private_key, public_key_der
from ca_client.models import Identifier


def _sans(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[Any]]:
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)


@pytest.mark.parametrize("key_type", list(KeyType)[:3])
def test_dns_and_ip_names_all_in_san_and_first_dns_is_cn(key_type: KeyType) -> None:
    key = generate_private_key(key_type)
    identifiers = [
        Identifier.ip("127.0.0.1"),
        Identifier.dns("a.test"),
        Identifier.dns("b.test"),
        Identifier.ip("::1"),
    ]
    csr = x509.load_der_x509_csr(build_csr(key, identifiers))
    assert csr.is_signature_valid
    assert public_key_der(csr.public_key()) == public_key_der(key)  # type: ignore[arg-type]
    dns, ips = _sans(csr)
    assert dns == ["a.test", "b.test"]
    assert ips == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["a.test"]


def test_ip_only_csr_has_no_common_name() -> None:
    # An IP in the CN would be read as a DNS name by step-ca and refused as badCSR.
    csr = x509.load_der_x509_csr(
        build_csr(generate_private_key(KeyType.EC_P256), [Identifier.ip("10.0.0.1")])
    )
    assert len(csr.subject) == 0
    assert _sans(csr)[1] == [ipaddress.ip_address("10.0.0.1")]


def test_long_name_goes_only_in_san() -> None:
    name = ("x" * 60) + ".example.test"
    csr = x509.load_der_x509_csr(
        build_csr(generate_private_key(KeyType.EC_P256), [Identifier.dns(name)])
    )
    assert len(csr.subject) == 0
    assert _sans(csr)[0] == [name]


def test_wildcard_name_is_kept_verbatim() -> None:
    csr = x509.load_der_x509_csr(
        build_csr(generate_private_key(KeyType.EC_P256), [Identifier.dns("*.a.test")])
    )
    assert _sans(csr)[0] == ["*.a.test"]


def test_empty_or_unknown_identifiers_are_refused() -> None:
    key = generate_private_key(KeyType.EC_P256)
    with pytest.raises(ValueError, match="at least one"):
        build_csr(key, [])
    with pytest.raises(ValueError, match="email"):
        build_csr(key, [Identifier("email", "a@b.test")])
