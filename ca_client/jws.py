"""Flattened JSON JWS for ACME requests (RFC 8555 §6.2, RFC 7515 §7.2.2).

RFC 8555 §6.2: "The JWS Protected Header MUST include the following fields: alg, nonce, url,
and either jwk or kid" -- ``jwk`` "for newAccount requests, and for revokeCert requests
authenticated by a certificate key", ``kid`` (the account URL) for everything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ca_client.keys import PrivateKey, b64url, public_jwk

# RFC 7518 §3.4: ES256 signs with SHA-256 on P-256, ES384 with SHA-384 on P-384; the signature
# is r || s, each as a fixed-length big-endian integer.
_EC_ALGORITHMS: dict[str, tuple[str, hashes.HashAlgorithm, int]] = {
    "secp256r1": ("ES256", hashes.SHA256(), 32),
    "secp384r1": ("ES384", hashes.SHA384(), 48),
    "secp521r1": ("ES512", hashes.SHA512(), 66),
}


def algorithm_for(key: PrivateKey) -> str:
    """The JWS ``alg`` used for a key: ES256/ES384 by curve, RS256 for any RSA key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _EC_ALGORITHMS[key.curve.name][0]
    return "RS256"


def _signature(key: PrivateKey, signing_input: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _, hash_algorithm, size = _EC_ALGORITHMS[key.curve.name]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_algorithm)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def _encode_payload(payload: Mapping[str, Any] | None) -> str:
    # RFC 8555 §6.3: a POST-as-GET request has the empty string as payload.
    if payload is None:
        return ""
    return b64url(json.dumps(payload, separators=(",", ":")).encode("utf-8"))


def _encode_header(protected: Mapping[str, Any]) -> str:
    return b64url(json.dumps(protected, separators=(",", ":")).encode("utf-8"))


def sign(
    payload: Mapping[str, Any] | None,
    key: PrivateKey,
    *,
    url: str,
    nonce: str,
    kid: str | None = None,
) -> dict[str, str]:
    """Sign an ACME request body.

    ``payload=None`` makes a POST-as-GET (§6.3). Without ``kid`` the public key goes in the
    header as ``jwk`` (newAccount, revokeCert with the certificate's key).
    """
    protected: dict[str, Any] = {"alg": algorithm_for(key), "nonce": nonce, "url": url}
    if kid is not None:
        protected["kid"] = kid
    else:
        protected["jwk"] = public_jwk(key)
    protected_b64 = _encode_header(protected)
    payload_b64 = _encode_payload(payload)
    signature = _signature(key, f"{protected_b64}.{payload_b64}".encode("ascii"))
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)}


def eab_binding(account_key: PrivateKey, *, kid: str, hmac_key: bytes, url: str) -> dict[str, str]:
    """The ``externalAccountBinding`` member of a newAccount payload (RFC 8555 §7.3.4).

    "The JWS's payload MUST be the account key (jwk) ... The protected header MUST contain alg
    (a MAC-based algorithm), kid (the key identifier from the CA), url (the newAccount URL)" and
    MUST NOT contain a nonce. HS256 is the algorithm every CA supports.
    """
    protected = {"alg": "HS256", "kid": kid, "url": url}
    protected_b64 = _encode_header(protected)
    payload_b64 = _encode_payload(public_jwk(account_key))
    mac = hmac.HMAC(hmac_key, hashes.SHA256())
    mac.update(f"{protected_b64}.{payload_b64}".encode("ascii"))
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(mac.finalize())}


__all__ = ["algorithm_for", "eab_binding", "sign"]
