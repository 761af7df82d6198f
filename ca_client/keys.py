"""Private keys for accounts and certificates, and their public JWK form (RFC 7517, RFC 7638)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca_client.key_types import KeyType


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 8555 §6.1, RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.EC_P256: ec.SECP256R1(),
    KeyType.EC_P384: ec.SECP384R1(),
}
_RSA_BITS: dict[KeyType, int] = {
    KeyType.RSA_2048: 2048,
    KeyType.RSA_3072: 3072,
    KeyType.RSA_4096: 4096,
}
# RFC 7518 §6.2.1.1 curve names, and the byte length of a coordinate (§6.2.1.2).
_JWK_CURVES: dict[str, tuple[str, int]] = {
    "secp256r1": ("P-256", 32),
    "secp384r1": ("P-384", 48),
    "secp521r1": ("P-521", 66),
}


def generate_private_key(key_type: KeyType | str = KeyType.EC_P256) -> PrivateKey:
    key_type = KeyType(key_type)
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    """The :class:`KeyType` of an existing key; ``ValueError`` for other curves or sizes."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        for key_type, curve in _CURVES.items():
            if curve.name == key.curve.name:
                return key_type
        raise ValueError(f"unsupported EC curve {key.curve.name}")
    for key_type, bits in _RSA_BITS.items():
        if bits == key.key_size:
            return key_type
    raise ValueError(f"unsupported RSA key size {key.key_size}")


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: what HAProxy and every ACME tool read."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes) -> PrivateKey:
    """Load an unencrypted EC or RSA private key (PKCS#8, SEC1 or PKCS#1 PEM).

    Raises ``ValueError`` with a message that never echoes the key material.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")  # noqa: TRY004
    return key


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key.public_key()
    return key


def _int_bytes(value: int, length: int | None = None) -> bytes:
    if length is None:
        length = max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK of a key with exactly the members RFC 7638 §3.2 requires.

    EC: ``crv``, ``kty``, ``x``, ``y`` (coordinates at full field length, RFC 7518 §6.2.1.2);
    RSA: ``e``, ``kty``, ``n`` (minimal big-endian, RFC 7518 §6.3.1).
    """
    public = _public(key)
    if isinstance(public, ec.EllipticCurvePublicKey):
        crv, size = _JWK_CURVES[public.curve.name]
        numbers = public.public_numbers()
        return {
            "crv": crv,
            "kty": "EC",
            "x": b64url(_int_bytes(numbers.x, size)),
            "y": b64url(_int_bytes(numbers.y, size)),
        }
    rsa_numbers = public.public_numbers()
    return {
        "e": b64url(_int_bytes(rsa_numbers.e)),
        "kty": "RSA",
        "n": b64url(_int_bytes(rsa_numbers.n)),
    }


def jwk_thumbprint_of_jwk(jwk: dict[str, str]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, no whitespace; base64url."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps(
        {name: jwk[name] for name in required}, sort_keys=True, separators=(",", ":")
    )
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def jwk_thumbprint(key: PrivateKey | PublicKey) -> str:
    """The RFC 7638 thumbprint of a key: what key authorizations (RFC 8555 §8.1) are built on."""
    return jwk_thumbprint_of_jwk(public_jwk(key))


def public_key_der(key: PrivateKey | PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER: the form in which two public keys are compared."""
    return _public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


__all__ = [
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "b64url",
    "b64url_decode",
    "generate_private_key",
    "jwk_thumbprint",
    "jwk_thumbprint_of_jwk",
    "key_type_of",
    "load_private_key_pem",
    "private_key_to_pem",
    "public_jwk",
    "public_key_der",
]
