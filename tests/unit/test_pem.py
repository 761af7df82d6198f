"""The combined PEM layout and the checks that guard a deployed certificate (sidecar.pem)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar import pem
from sidecar.placeholder import make_placeholder

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def root() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def intermediate(root: trustme.CA) -> trustme.CA:
    return root.create_child_ca()


def issue(
    ca: trustme.CA, *names: str, not_after: datetime | None = None
) -> tuple[bytes, list[bytes], bytes]:
    leaf = ca.issue_cert(
        *names,
        not_before=NOW - timedelta(hours=1),
        not_after=not_after or NOW + timedelta(hours=23),
    )
    blobs = [blob.bytes() for blob in leaf.cert_chain_pems]
    return blobs[0], blobs[1:], leaf.private_key_pem.bytes()


@pytest.fixture(scope="module")
def bundle(intermediate: trustme.CA) -> tuple[bytes, list[bytes], bytes]:
    return issue(intermediate, "a.example", "b.example", "127.0.0.1")


def secret_fragments(key_pem: bytes) -> list[bytes]:
    """Pieces of a key's base64 body: none may ever show in an error message."""
    body = b"".join(key_pem.split(b"\n")[1:-2])
    return [body[i : i + 16] for i in range(0, len(body) - 16, 16)]


# -- combined_pem --------------------------------------------------------------------------------


def test_combined_layout_is_leaf_chain_key_without_blank_lines(bundle):
    leaf, chain, key = bundle
    data = pem.combined_pem(leaf, chain, key)
    labels = [line for line in data.split(b"\n") if line.startswith(b"-----BEGIN")]
    assert labels == [b"-----BEGIN CERTIFICATE-----"] * 2 + [b"-----BEGIN EC PRIVATE KEY-----"]
    assert b"\n\n" not in data
    assert data.endswith(b"-----\n") and not data.endswith(b"\n\n")
    assert all(len(line) <= 64 for line in data.split(b"\n"))
    parsed = pem.parse_combined(data)
    assert parsed.leaf.public_bytes(serialization.Encoding.PEM) == leaf
    assert [c.public_bytes(serialization.Encoding.PEM) for c in parsed.chain] == chain


def test_combined_normalises_crlf_blank_lines_and_rewrapped_base64(bundle):
    leaf, chain, key = bundle
    messy_leaf = b"\r\n\r\n" + leaf.replace(b"\n", b"\r\n") + b"\r\n\r\n  \n"
    body = b"".join(chain[0].split(b"\n")[1:-2])
    rewrapped = b"-----BEGIN CERTIFICATE-----\n" + body[:30] + b"\n\n" + body[30:]
    rewrapped += b"   \n-----END CERTIFICATE-----"
    data = pem.combined_pem(messy_leaf, [rewrapped], b"\n" + key + b"\n\n")
    assert data == pem.combined_pem(leaf, chain, key)


def test_combined_accepts_a_chain_given_as_one_blob(bundle, root):
    leaf, chain, key = bundle
    root_pem = root.cert_pem.bytes()
    one = pem.combined_pem(leaf, [chain[0] + root_pem], key)
    two = pem.combined_pem(leaf, [chain[0], root_pem], key)
    assert one == two
    assert len(pem.parse_combined(one).chain) == 2


COMBINE_CASES = [
    ("two leaves", lambda leaf, c, k: (leaf + c[0], [], k), "exactly one certificate"),
    ("no leaf", lambda leaf, c, k: (b"", c, k), "exactly one certificate"),
    ("key in chain", lambda leaf, c, k: (leaf, [k], k), "PRIVATE KEY block"),
    ("cert as key", lambda leaf, c, k: (leaf, c, leaf), "exactly one unencrypted"),
    ("two keys", lambda leaf, c, k: (leaf, c, k + k), "exactly one unencrypted"),
    ("junk", lambda leaf, c, k: (b"junk" + leaf, c, k), "outside"),
    ("bad cert", lambda leaf, c, k: (leaf.replace(b"MI", b"!!", 1), c, k), "not a valid cert"),
    ("bad key", lambda leaf, c, k: (leaf, c, k.replace(b"MH", b"AA", 1)), "not a valid private"),
]


@pytest.mark.parametrize(
    ("case", "make", "message"), COMBINE_CASES, ids=[c[0] for c in COMBINE_CASES]
)
def test_combined_refuses_malformed_parts(bundle, case, make, message):
    leaf, chain, key = bundle
    with pytest.raises(pem.PemError, match=message) as caught:
        pem.combined_pem(*make(leaf, chain, key))
    for fragment in secret_fragments(key):
        assert fragment.decode() not in str(caught.value)


# -- parse_combined ------------------------------------------------------------------------------


def _other_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


PARSE_CASES = [
    ("empty", lambda leaf, c, k: b"", "empty"),
    ("whitespace", lambda leaf, c, k: b" \n\n", "empty"),
    ("binary", lambda leaf, c, k: bytes(range(256)), "outside the PEM blocks"),
    ("text", lambda leaf, c, k: b"hello\n", "outside the PEM blocks"),
    ("only key", lambda leaf, c, k: k, "no certificate"),
    ("no key", lambda leaf, c, k: leaf + c[0], "no private key"),
    ("two keys", lambda leaf, c, k: leaf + k + k, "2 private keys"),
    ("wrong key", lambda leaf, c, k: leaf + c[0] + _other_key_pem(), "does not match"),
    ("key first", lambda leaf, c, k: k + leaf, "follows the private key"),
    ("garbage between", lambda leaf, c, k: leaf + b"garbage\n" + k, "outside"),
    (
        "unknown block",
        lambda leaf, c, k: leaf + b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n" + k,
        "FOO",
    ),
    ("bad base64", lambda leaf, c, k: leaf.replace(b"MI", b"@@", 1) + k, "not a valid certificate"),
    ("truncated", lambda leaf, c, k: leaf + k[: len(k) // 2], "outside"),
    ("encrypted key", lambda leaf, c, k: leaf + _encrypted(k), "private key is encrypted"),
    (
        "empty block",
        lambda leaf, c, k: b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n" + k,
        "empty PEM block",
    ),
]


@pytest.mark.parametrize(("case", "make", "message"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_combined_errors_are_precise_and_never_quote_the_key(bundle, case, make, message):
    leaf, chain, key = bundle
    with pytest.raises(pem.PemError, match=message) as caught:
        pem.parse_combined(make(leaf, chain, key))
    for fragment in secret_fragments(key):
        assert fragment.decode() not in str(caught.value)


def test_parse_combined_accepts_pkcs8_and_rsa_keys(intermediate):
    leaf = intermediate.issue_cert("rsa.example", key_type=trustme.KeyType.RSA)
    blobs = [b.bytes() for b in leaf.cert_chain_pems]
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    parsed = pem.parse_combined(pem.combined_pem(blobs[0], blobs[1:], pkcs8))
    assert isinstance(parsed.key, rsa.RSAPrivateKey)
    assert pem.key_type_name(parsed.key) == "rsa-2048"


def test_parse_certificates_reads_a_bundle_and_refuses_keys(bundle, root):
    leaf, chain, key = bundle
    certificates = pem.parse_certificates(leaf + chain[0] + root.cert_pem.bytes())
    assert len(certificates) == 3
    # CA bundles carry comments (RFC 7468 §5.2 explanatory text): allowed here.
    commented = b"# Root CA\nSubject: CN=x\n" + root.cert_pem.bytes() + b"trailing note\n"
    assert len(pem.parse_certificates(commented)) == 1
    with pytest.raises(pem.PemError, match="no certificate"):
        pem.parse_certificates(b"just text")
    with pytest.raises(pem.PemError, match="no certificate"):
        pem.parse_certificates(b"\n")
    with pytest.raises(pem.PemError, match="PRIVATE KEY"):
        pem.parse_certificates(leaf + key)


# -- facts ---------------------------------------------------------------------------------------


def test_cert_names_lists_dns_and_ip_sans(bundle):
    leaf = x509.load_pem_x509_certificate(bundle[0])
    assert pem.cert_names(leaf) == ("a.example", "b.example", "127.0.0.1")


def test_cert_names_falls_back_to_the_common_name():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "legacy.example")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert pem.cert_names(cert) == ("legacy.example",)


def test_key_matches(bundle):
    leaf = x509.load_pem_x509_certificate(bundle[0])
    own = serialization.load_pem_private_key(bundle[2], password=None)
    other = serialization.load_pem_private_key(_other_key_pem(), password=None)
    assert isinstance(own, ec.EllipticCurvePrivateKey)
    assert isinstance(other, ec.EllipticCurvePrivateKey)
    assert pem.key_matches(leaf, own)
    assert not pem.key_matches(leaf, other)


def test_describe_cert(bundle):
    leaf = x509.load_pem_x509_certificate(bundle[0])
    facts = pem.describe_cert(leaf)
    assert facts.serial == leaf.serial_number
    assert int(facts.serial_hex, 16) == leaf.serial_number
    assert facts.serial_hex == facts.serial_hex.upper() and len(facts.serial_hex) % 2 == 0
    assert facts.not_before == NOW - timedelta(hours=1)
    assert facts.not_after == NOW + timedelta(hours=23)
    assert facts.not_after.tzinfo is not None
    assert facts.names == ("a.example", "b.example", "127.0.0.1")
    assert facts.issuer == x509.load_pem_x509_certificate(bundle[1][0]).subject.rfc4514_string()
    assert facts.is_placeholder is False
    assert facts.key_type == "ec-p256"


def test_describe_cert_pads_the_serial_hex_to_whole_bytes():
    cert_pem, _ = make_placeholder("p", ["p.example"], now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    facts = pem.describe_cert(cert)
    assert bytes.fromhex(facts.serial_hex) == cert.serial_number.to_bytes(
        len(facts.serial_hex) // 2, "big"
    )
    assert facts.is_placeholder is True


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ec-p256"),
        (ec.generate_private_key(ec.SECP384R1()), "ec-p384"),
        (ec.generate_private_key(ec.SECP521R1()), None),
        (rsa.generate_private_key(65537, 2048), "rsa-2048"),
    ],
)
def test_key_type_name(key, expected):
    assert pem.key_type_name(key) == expected
    assert pem.key_type_name(key.public_key()) == expected


def test_normalise_names():
    assert pem.normalise_names(["A.Example.", "::0:1", "b.example"]) == {
        "a.example",
        "::1",
        "b.example",
    }


# -- validate_for_deploy -------------------------------------------------------------------------


def test_validate_for_deploy_accepts_a_good_bundle(bundle):
    data = pem.combined_pem(*bundle)
    parsed = pem.validate_for_deploy(data, ["b.example", "A.EXAMPLE", "127.0.0.1"], NOW)
    assert pem.cert_names(parsed.leaf)[0] == "a.example"


def test_validate_for_deploy_refuses_an_expired_certificate(bundle):
    data = pem.combined_pem(*bundle)
    with pytest.raises(pem.PemError, match="expired"):
        pem.validate_for_deploy(data, ["a.example"], NOW + timedelta(hours=23))


def test_validate_for_deploy_refuses_missing_names(bundle):
    data = pem.combined_pem(*bundle)
    with pytest.raises(pem.PemError, match=r"does not cover c\.example"):
        pem.validate_for_deploy(data, ["a.example", "c.example"], NOW)


def test_validate_for_deploy_refuses_a_mismatched_key(bundle):
    leaf, chain, _ = bundle
    with pytest.raises(pem.PemError, match="does not match"):
        pem.validate_for_deploy(leaf + chain[0] + _other_key_pem(), ["a.example"], NOW)


def test_validate_for_deploy_refuses_garbage():
    with pytest.raises(pem.PemError):
        pem.validate_for_deploy(b"\x00\x01garbage", ["a.example"], NOW)


def test_validate_for_deploy_refuses_a_chain_from_another_ca(bundle):
    leaf, _, key = bundle
    stranger = trustme.CA().create_child_ca().cert_pem.bytes()
    with pytest.raises(pem.PemError, match="not signed by"):
        pem.validate_for_deploy(pem.combined_pem(leaf, [stranger], key), ["a.example"], NOW)


def test_validate_for_deploy_refuses_a_chain_out_of_order(bundle, root):
    leaf, chain, key = bundle
    data = pem.combined_pem(leaf, [root.cert_pem.bytes(), chain[0]], key)
    with pytest.raises(pem.PemError, match="out of order"):
        pem.validate_for_deploy(data, ["a.example"], NOW)


def test_validate_for_deploy_refuses_a_placeholder_unless_asked():
    cert_pem, key_pem = make_placeholder("a.example", ["a.example"], now=NOW)
    data = pem.combined_pem(cert_pem, [], key_pem)
    with pytest.raises(pem.PemError, match="placeholder"):
        pem.validate_for_deploy(data, ["a.example"], NOW)
    assert pem.validate_for_deploy(data, ["a.example"], NOW, allow_placeholder=True)


# -- combine_for_deploy --------------------------------------------------------------------------


def test_combine_for_deploy_is_combined_pem_validated_and_described(bundle):
    leaf, chain, key = bundle
    messy_leaf = b"\r\n" + leaf.replace(b"\n", b"\r\n") + b"\r\n\n"
    data, parsed, facts = pem.combine_for_deploy(messy_leaf, chain, key, ["b.example"], NOW)
    assert data == pem.combined_pem(leaf, chain, key)
    checked = pem.validate_for_deploy(data, ["b.example"], NOW)
    assert (parsed.leaf, parsed.chain) == (checked.leaf, checked.chain)
    assert parsed.key.private_numbers() == checked.key.private_numbers()
    assert facts == pem.describe_cert(parsed.leaf)


def _placeholder(leaf: bytes, chain: list[bytes], key: bytes) -> tuple[bytes, list[bytes], bytes]:
    cert_pem, key_pem = make_placeholder("a.example", ["a.example"], now=NOW)
    return cert_pem, [], key_pem


def _stranger(leaf: bytes, chain: list[bytes], key: bytes) -> tuple[bytes, list[bytes], bytes]:
    return leaf, [trustme.CA().create_child_ca().cert_pem.bytes()], key


def _same(leaf: bytes, chain: list[bytes], key: bytes) -> tuple[bytes, list[bytes], bytes]:
    return leaf, chain, key


A = ["a.example"]
# Everything combined_pem and validate_for_deploy refuse, though each block is parsed only once.
DEPLOY_CASES = [
    *[(case, make, A, NOW, message) for case, make, message in COMBINE_CASES],
    ("other key", lambda leaf, c, k: (leaf, c, _other_key_pem()), A, NOW, "does not match"),
    ("expired", _same, A, NOW + timedelta(hours=23), "expired"),
    ("names", _same, [*A, "c.example"], NOW, r"does not cover c\.example"),
    ("another CA", _stranger, A, NOW, "not signed by"),
    ("placeholder", _placeholder, A, NOW, "placeholder"),
]


@pytest.mark.parametrize(
    ("case", "make", "names", "now", "message"), DEPLOY_CASES, ids=[c[0] for c in DEPLOY_CASES]
)
def test_combine_for_deploy_refuses_what_either_check_refuses(
    bundle, case, make, names, now, message
):
    leaf, chain, key = bundle
    with pytest.raises(pem.PemError, match=message) as caught:
        pem.combine_for_deploy(*make(leaf, chain, key), names, now)
    for fragment in secret_fragments(key):
        assert fragment.decode() not in str(caught.value)


def test_combine_for_deploy_refuses_a_chain_out_of_order(bundle, root):
    leaf, chain, key = bundle
    with pytest.raises(pem.PemError, match="out of order"):
        pem.combine_for_deploy(leaf, [root.cert_pem.bytes(), chain[0]], key, A, NOW)


def test_pem_error_is_a_value_error():
    assert issubclass(pem.PemError, ValueError)
