"""RFC 9773 §4.1 certificate identifiers, against the RFC's own example."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_client.keys import b64url_decode
from ca_client.renewal_info import (
    certificate_id,
    certificate_id_from_parts,
    renewal_info_url,
    serial_der_bytes,
)

# RFC 9773 §4.1 example: AKI keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:
# DE:01:C8:D4 and serial 0x87654321 give "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".
RFC9773_KEY_ID = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
RFC9773_SERIAL = 0x87654321
RFC9773_CERT_ID = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def _certificate(serial: int, key_identifier: bytes | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc9773.test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if key_identifier is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(key_identifier, None, None), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def test_rfc9773_example_from_parts() -> None:
    assert certificate_id_from_parts(RFC9773_KEY_ID, RFC9773_SERIAL) == RFC9773_CERT_ID


def test_rfc9773_example_from_a_certificate_in_every_form() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = _certificate(RFC9773_SERIAL, RFC9773_KEY_ID)
    assert certificate_id(cert) == RFC9773_CERT_ID
    assert certificate_id(cert.public_bytes(Encoding.PEM)) == RFC9773_CERT_ID
    assert certificate_id(cert.public_bytes(Encoding.PEM).decode()) == RFC9773_CERT_ID
    assert certificate_id(cert.public_bytes(Encoding.DER)) == RFC9773_CERT_ID


@pytest.mark.parametrize(
    ("serial", "encoded"),
    [(0x87654321, "0087654321"), (0x7F, "7f"), (0x80, "0080"), (0x0100, "0100"), (1, "01")],
)
def test_serial_is_der_integer_content(serial: int, encoded: str) -> None:
    assert serial_der_bytes(serial).hex() == encoded


def test_the_id_halves_decode_back() -> None:
    key_id_part, serial_part = RFC9773_CERT_ID.split(".")
    assert b64url_decode(key_id_part) == RFC9773_KEY_ID
    assert int.from_bytes(b64url_decode(serial_part), "big") == RFC9773_SERIAL


def test_certificate_without_aki_has_no_id() -> None:
    with pytest.raises(ValueError, match="Authority Key Identifier"):
        certificate_id(_certificate(5, None))


def test_url_joins_with_one_slash() -> None:
    assert renewal_info_url("https://ca/renewal-info/", "a.b") == "https://ca/renewal-info/a.b"
    assert renewal_info_url("https://ca/renewal-info", "a.b") == "https://ca/renewal-info/a.b"
