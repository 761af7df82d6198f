"""Keys and JWKs: RFC 7638's worked example, every key type, PEM round trips."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca_client.keys import (
    KeyType,
    b64url,
    b64url_decode,
    generate_private_key,
    jwk_thumbprint,
    jwk_thumbprint_of_jwk,
    key_type_of,
    load_private_key_pem,
    private_key_to_pem,
    public_jwk,
)

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_of_rfc7638_example_jwk() -> None:
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint_of_jwk(jwk) == RFC7638_THUMBPRINT


def test_thumbprint_of_rfc7638_example_key_object() -> None:
    # The same key as a cryptography object: public_jwk must re-encode n and e exactly.
    n = int.from_bytes(b64url_decode(RFC7638_N), "big")
    key = rsa.RSAPublicNumbers(65537, n).public_key()
    assert public_jwk(key) == {"e": "AQAB", "kty": "RSA", "n": RFC7638_N}
    assert jwk_thumbprint(key) == RFC7638_THUMBPRINT


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_generated_keys_have_their_type_and_round_trip_through_pem(key_type: KeyType) -> None:
    key = generate_private_key(key_type)
    assert key_type_of(key) is key_type
    pem = private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    again = load_private_key_pem(pem)
    assert jwk_thumbprint(again) == jwk_thumbprint(key)


@pytest.mark.parametrize(("key_type", "bits"), [(KeyType.RSA_3072, 3072), (KeyType.RSA_4096, 4096)])
def test_large_rsa_keys(key_type: KeyType, bits: int) -> None:
    key = generate_private_key(key_type)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == bits


def test_ec_jwk_coordinates_are_full_length() -> None:
    # RFC 7518 §6.2.1.2: x and y are the full coordinate length even with leading zero bytes.
    for curve, size in ((ec.SECP256R1(), 32), (ec.SECP384R1(), 48)):
        for _ in range(20):
            jwk = public_jwk(ec.generate_private_key(curve))
            assert len(b64url_decode(jwk["x"])) == size
            assert len(b64url_decode(jwk["y"])) == size
            assert set(jwk) == {"crv", "kty", "x", "y"}


def test_key_type_strings_are_the_contract_spellings() -> None:
    assert [k.value for k in KeyType] == ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
    assert KeyType("ec-p384") is KeyType.EC_P384
    with pytest.raises(ValueError, match="ec-p999"):
        KeyType("ec-p999")


def test_unsupported_curve_is_refused() -> None:
    with pytest.raises(ValueError, match="secp521r1"):
        key_type_of(ec.generate_private_key(ec.SECP521R1()))


def test_bad_pem_error_does_not_echo_the_input() -> None:
    secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
    secret += b"-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError) as caught:
        load_private_key_pem(secret)
    assert "c2VjcmV0" not in str(caught.value)


def test_b64url_has_no_padding() -> None:
    assert b64url(b"\xff\xfe") == "__4"
    assert b64url_decode("__4") == b"\xff\xfe"
