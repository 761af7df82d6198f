"""JWS signing (RFC 8555 §6.2, RFC 7515): verified with cryptography, not with our own code."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ca_client.jws import eab_binding, sign
from ca_client.keys import KeyType, PrivateKey, b64url_decode, generate_private_key, public_jwk


def _decode(part: str) -> dict[str, object]:
    decoded = json.loads(b64url_decode(part))
    assert isinstance(decoded, dict)
    return decoded


def _verify(jws: dict[str, str], key: PrivateKey) -> None:
    """Verify a flattened JWS with the public key, the way a CA does (raises if bad)."""
    signing_input = f"{jws['protected']}.{jws['payload']}".encode("ascii")
    signature = b64url_decode(jws["signature"])
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        size = (public.curve.key_size + 7) // 8
        assert len(signature) == 2 * size
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        digest: hashes.HashAlgorithm = hashes.SHA256() if size == 32 else hashes.SHA384()
        public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize(
    ("key_type", "alg"),
    [(KeyType.EC_P256, "ES256"), (KeyType.EC_P384, "ES384"), (KeyType.RSA_2048, "RS256")],
)
def test_signature_verifies_and_header_uses_kid(key_type: KeyType, alg: str) -> None:
    key = generate_private_key(key_type)
    jws = sign(
        {"identifiers": [{"type": "dns", "value": "a.test"}]},
        key,
        url="https://ca/new-order",
        nonce="n0nce",
        kid="https://ca/acct/1",
    )
    _verify(jws, key)
    header = _decode(jws["protected"])
    assert header == {
        "alg": alg,
        "nonce": "n0nce",
        "url": "https://ca/new-order",
        "kid": "https://ca/acct/1",
    }
    assert _decode(jws["payload"]) == {"identifiers": [{"type": "dns", "value": "a.test"}]}


def test_without_kid_the_header_carries_the_public_jwk() -> None:
    key = generate_private_key(KeyType.EC_P256)
    jws = sign({"termsOfServiceAgreed": True}, key, url="https://ca/new-account", nonce="x")
    header = _decode(jws["protected"])
    assert "kid" not in header
    assert header["jwk"] == public_jwk(key)
    _verify(jws, key)


def test_post_as_get_has_empty_payload() -> None:
    # RFC 8555 §6.3: "the 'payload' field of the JWS object MUST be present and set to the
    # empty string ("")".
    key = generate_private_key(KeyType.EC_P256)
    jws = sign(None, key, url="https://ca/order/1", nonce="x", kid="https://ca/acct/1")
    assert jws["payload"] == ""
    _verify(jws, key)


def test_tampered_payload_fails_verification() -> None:
    key = generate_private_key(KeyType.EC_P256)
    jws = sign({"a": 1}, key, url="https://ca/x", nonce="x", kid="k")
    jws["payload"] = sign({"a": 2}, key, url="https://ca/x", nonce="x", kid="k")["payload"]
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        _verify(jws, key)


def test_eab_binding_is_hs256_over_the_account_jwk() -> None:
    account_key = generate_private_key(KeyType.EC_P256)
    mac_key = b"0123456789abcdef0123456789abcdef"
    binding = eab_binding(account_key, kid="kid-1", hmac_key=mac_key, url="https://ca/new-account")
    # RFC 8555 §7.3.4: alg, kid, url; no nonce; payload is the account's public JWK.
    assert _decode(binding["protected"]) == {
        "alg": "HS256",
        "kid": "kid-1",
        "url": "https://ca/new-account",
    }
    assert _decode(binding["payload"]) == public_jwk(account_key)
    expected = hmac.new(
        mac_key, f"{binding['protected']}.{binding['payload']}".encode(), hashlib.sha256
    ).digest()
    assert b64url_decode(binding["signature"]) == expected
