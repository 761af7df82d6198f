"""A self-signed stand-in certificate, so HAProxy can start before the CA has issued anything.

HAProxy refuses to start when a ``crt`` file it is told to load is missing, and with
``strict-sni`` on an empty directory it answers no handshake at all. The sidecar therefore writes
a placeholder for a name that has no certificate yet and replaces it with the real one at once.
The placeholder is recognisable (subject ``O=cert-sidecar placeholder``, self-signed) so that
readiness, ``status`` and the renewal policy never mistake it for a real certificate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PLACEHOLDER_LIFETIME", "PLACEHOLDER_ORGANIZATION", "is_placeholder", "make_placeholder"]

PLACEHOLDER_ORGANIZATION = "cert-sidecar placeholder"

# Why a day: no client trusts a self-signed certificate, so its lifetime does not protect
# anyone; it only decides what a person debugging a stuck first issuance sees. HAProxy loads
# expired certificates too, so a short lifetime buys nothing at start-up, while a placeholder that
# has expired during a long first CA outage would read "expired" instead of "placeholder" in
# client errors. A day covers a night-long outage and is still plainly temporary. The
# placeholder is always due for replacement whatever its dates (see policy.due_reason).
PLACEHOLDER_LIFETIME = timedelta(days=1)

# Backdated like step-ca's certificates, so a container whose clock runs slightly behind the
# one that wrote the file does not see a not-yet-valid certificate.
_BACKDATE = timedelta(minutes=5)

# X.520 ub-common-name: a longer name cannot be the CN; the SANs carry every name anyway.
_MAX_COMMON_NAME = 64


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_placeholder(
    name: str,
    domains: Sequence[str],
    *,
    now: datetime,
    lifetime: timedelta = PLACEHOLDER_LIFETIME,
) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``domains`` and its EC P-256 key, both PEM: (cert, key).

    ``name`` is the certificate's name (the file name); it becomes the CN when no domain is short
    enough. P-256 because generating it takes a millisecond, and every TLS client speaks it.
    """
    if not domains:
        raise ValueError("a placeholder needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = next((d for d in domains if len(d) <= _MAX_COMMON_NAME), name)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, PLACEHOLDER_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:_MAX_COMMON_NAME]),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(d) for d in domains]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def is_placeholder(cert: x509.Certificate) -> bool:
    """Whether ``cert`` is one of ours: self-issued with the placeholder organisation."""
    organizations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return cert.issuer == cert.subject and any(
        attribute.value == PLACEHOLDER_ORGANIZATION for attribute in organizations
    )
