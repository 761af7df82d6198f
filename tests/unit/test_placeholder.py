"""The self-signed placeholder that lets HAProxy start before the first issuance."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar import pem
from sidecar.placeholder import (
    PLACEHOLDER_LIFETIME,
    PLACEHOLDER_ORGANIZATION,
    is_placeholder,
    make_placeholder,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_placeholder_is_self_signed_with_the_names_and_the_marker():
    cert_pem, key_pem = make_placeholder(
        "demo.example", ["demo.example", "*.api.example", "10.0.0.1"], now=NOW
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    organizations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == [PLACEHOLDER_ORGANIZATION]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["demo.example", "*.api.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert is_placeholder(cert)
    # It is a usable combined PEM: the key matches and the layout rules hold.
    bundle = pem.parse_combined(pem.combined_pem(cert_pem, [], key_pem))
    assert pem.key_matches(bundle.leaf, bundle.key)


def test_placeholder_validity_is_backdated_and_bounded():
    cert_pem, _ = make_placeholder("a", ["a.example"], now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.not_valid_before_utc < NOW
    assert cert.not_valid_after_utc == NOW + PLACEHOLDER_LIFETIME
    short, _ = make_placeholder("a", ["a.example"], now=NOW, lifetime=timedelta(minutes=10))
    assert x509.load_pem_x509_certificate(short).not_valid_after_utc == NOW + timedelta(minutes=10)


def test_each_placeholder_has_its_own_key_and_serial():
    first = make_placeholder("a", ["a.example"], now=NOW)
    second = make_placeholder("a", ["a.example"], now=NOW)
    assert first[1] != second[1]
    serials = {x509.load_pem_x509_certificate(c).serial_number for c, _ in (first, second)}
    assert len(serials) == 2


def test_long_names_do_not_break_the_common_name():
    long_name = ".".join(["a" * 60, "b" * 60, "example"])
    cert_pem, _ = make_placeholder("long", [long_name], now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "long"
    assert pem.cert_names(cert) == (long_name,)


def test_placeholder_needs_a_name():
    with pytest.raises(ValueError, match="at least one name"):
        make_placeholder("a", [], now=NOW)


def test_real_certificates_are_not_placeholders():
    ca = trustme.CA(organization_name=PLACEHOLDER_ORGANIZATION)
    # Same organisation, but issued by a CA: not ours.
    leaf = ca.issue_cert("a.example", organization_name=PLACEHOLDER_ORGANIZATION)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    assert not is_placeholder(cert)
    # A self-signed certificate of someone else's is not ours either.
    ca_cert = x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes())
    assert not is_placeholder(ca_cert)


def test_openssl_and_python_ssl_load_the_placeholder(tmp_path: Path):
    """What HAProxy does with it: load the combined file as a server certificate."""
    cert_pem, key_pem = make_placeholder("a", ["a.example"], now=datetime.now(UTC))
    combined = tmp_path / "a.example.pem"
    combined.write_bytes(pem.combined_pem(cert_pem, [], key_pem))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(combined)
    result = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(combined)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert PLACEHOLDER_ORGANIZATION in result.stdout


def _haproxy_check(tmp_path: Path, pem_bytes: bytes) -> subprocess.CompletedProcess[str]:
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    (certs / "a.example.pem").write_bytes(pem_bytes)
    config = tmp_path / "haproxy.cfg"
    # "haproxy -c" parses and loads the certificates but binds nothing, so any port will do.
    config.write_text(
        "defaults\n  mode http\n  timeout client 1s\n  timeout server 1s\n  timeout connect 1s\n"
        f"frontend tls\n  bind 127.0.0.1:8443 ssl crt {certs} strict-sni\n"
    )
    return subprocess.run(
        ["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )


@pytest.mark.haproxy
def test_haproxy_accepts_the_placeholder(tmp_path: Path):
    """HAProxy must be able to start on the placeholder alone: that is its whole purpose."""
    cert_pem, key_pem = make_placeholder("a.example", ["a.example"], now=datetime.now(UTC))
    combined = pem.combined_pem(cert_pem, [], key_pem)
    result = _haproxy_check(tmp_path, combined)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same check refuses a file without its key, so it does test the certificate.
    refused = _haproxy_check(tmp_path, cert_pem)
    assert refused.returncode != 0
