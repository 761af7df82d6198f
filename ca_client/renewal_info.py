"""RFC 9773 (ACME Renewal Information) certificate identifiers. Pure.

RFC 9773 §4.1: "The unique identifier is constructed by concatenating the base64url encoding
of the keyIdentifier field of the certificate's Authority Key Identifier (AKI) extension, the
'.' character, and the base64url encoding of the DER-encoded Serial Number field (without the
tag and length bytes). All trailing '=' characters MUST be stripped."
"""

from __future__ import annotations

from cryptography import x509

from ca_client.keys import b64url


def serial_der_bytes(serial: int) -> bytes:
    """The content octets of a DER INTEGER: two's complement, minimal, a 0x00 lead if the top
    bit would otherwise be set (so 0x87654321 is ``00 87 65 43 21``)."""
    if serial < 0:
        raise ValueError("certificate serial numbers are positive (RFC 5280 §4.1.2.2)")
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def certificate_id_from_parts(key_identifier: bytes, serial: int) -> str:
    return f"{b64url(key_identifier)}.{b64url(serial_der_bytes(serial))}"


def load_certificate(cert: x509.Certificate | bytes | str) -> x509.Certificate:
    """A certificate from an object, PEM text/bytes (first certificate) or DER bytes."""
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode("ascii") if isinstance(cert, str) else cert
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def certificate_id(cert: x509.Certificate | bytes | str) -> str:
    """The RFC 9773 certificate ID; ``ValueError`` when the certificate has no AKI keyIdentifier."""
    certificate = load_certificate(cert)
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise ValueError("certificate has no Authority Key Identifier extension") from exc
    if aki.key_identifier is None:
        raise ValueError("certificate's Authority Key Identifier has no keyIdentifier")
    return certificate_id_from_parts(aki.key_identifier, certificate.serial_number)


def renewal_info_url(base: str, cert_id: str) -> str:
    """RFC 9773 §4.1: the renewalInfo URL, a "/", then the certificate ID."""
    return f"{base.rstrip('/')}/{cert_id}"


__all__ = [
    "certificate_id",
    "certificate_id_from_parts",
    "load_certificate",
    "renewal_info_url",
    "serial_der_bytes",
]
