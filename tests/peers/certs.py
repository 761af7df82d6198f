"""Test PKI helpers: a root and an intermediate CA as step-ca expects them (EC P-256).

Pure functions over ``cryptography`` objects (no disk I/O), so tests can also build CA
material of their own, e.g. "a different root" for a wrong-trust case.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "CAPair",
    "cert_pem",
    "ec_key_pem",
    "make_intermediate",
    "make_root",
]

# Long enough never to expire during a run, short enough not to trip "validity too long" checks.
_ROOT_LIFETIME = dt.timedelta(days=3650)
_INTERMEDIATE_LIFETIME = dt.timedelta(days=1825)
# Clock skew between this process and the CA/clients must not make a fresh CA "not yet valid".
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class CAPair:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return cert_pem(self.certificate)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cert-sidecar tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    lifetime: dt.timedelta,
    path_length: int | None,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_root(
    common_name: str = "cert-sidecar test root CA",
    key: ec.EllipticCurvePrivateKey | None = None,
    now: dt.datetime | None = None,
) -> CAPair:
    """A self-signed root. Passing the ``key`` of an earlier root gives an equivalent root
    (same subject and key, hence the same key identifier), which verifies the same chains."""
    now = now or dt.datetime.now(dt.UTC)
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    certificate = _ca_builder(subject, subject, key.public_key(), _ROOT_LIFETIME, None, now).sign(
        key, hashes.SHA256()
    )
    return CAPair(certificate, key)


def make_intermediate(
    root: CAPair,
    common_name: str = "cert-sidecar test intermediate CA",
    now: dt.datetime | None = None,
) -> CAPair:
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _ca_builder(
        _name(common_name),
        root.certificate.subject,
        key.public_key(),
        _INTERMEDIATE_LIFETIME,
        0,
        now,
    ).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
        critical=False,
    )
    return CAPair(builder.sign(root.key, hashes.SHA256()), key)


def cert_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def ec_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """Unencrypted SEC1 ("EC PRIVATE KEY"): step-ca loads it without a password file."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")
