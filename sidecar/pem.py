"""The combined PEM that HAProxy loads, and the checks made before one replaces another.

HAProxy reads one file per certificate (``crt <dir>``): the leaf, then the intermediates, then the
private key. Its runtime API is stricter than its file loader: a payload sent with ``set ssl cert``
ends at the first empty line, so the layout here never contains one.

Everything in this module is pure: bytes in, values out. Errors are ``PemError`` with a message
that says what is wrong and never quotes key material.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sidecar.domains import comparable_name
from sidecar.placeholder import is_placeholder

__all__ = [
    "CertFacts",
    "CombinedPem",
    "Deployable",
    "PemError",
    "PrivateKey",
    "cert_names",
    "combine_for_deploy",
    "combined_pem",
    "describe_cert",
    "key_matches",
    "key_type_name",
    "normalise_names",
    "parse_certificates",
    "parse_combined",
    "validate_for_deploy",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# A PEM block (RFC 7468 §2): the label on BEGIN and END must be the same.
_BLOCK = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]+)-----(?P<body>.*?)-----END (?P=label)-----",
    re.DOTALL,
)
_CERT_LABEL = b"CERTIFICATE"
_KEY_LABELS = frozenset({b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY"})


class PemError(ValueError):
    """A PEM bundle or file that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class CombinedPem:
    leaf: x509.Certificate
    chain: list[x509.Certificate]
    key: PrivateKey


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the sidecar, ``status`` and ``/metrics`` show about one certificate.

    ``serial_hex`` is upper-case hex without separators, as HAProxy's ``show ssl cert`` and
    OpenSSL print it; compare serials as ``serial`` (an int) where the formatting may differ.
    """

    serial_hex: str
    serial: int
    not_before: datetime
    not_after: datetime
    names: tuple[str, ...]
    issuer: str
    is_placeholder: bool
    key_type: str | None


def _blocks(data: bytes, *, strict: bool = True) -> list[tuple[bytes, bytes]]:
    """Split ``data`` into (label, normalised block) pairs.

    ``strict``: text outside the blocks is an error, as in RFC 7468 §3's strict mode, which
    RFC 8555 §9.1 requires of a certificate chain and which is what the sidecar writes. CA
    bundles often carry explanatory text (RFC 7468 §5.2 allows it there): not strict.
    """
    data = data.replace(b"\r\n", b"\n")
    blocks: list[tuple[bytes, bytes]] = []
    position = 0
    for match in _BLOCK.finditer(data):
        if strict and data[position : match.start()].strip():
            raise PemError("unexpected text outside the PEM blocks")
        body = b"".join(match.group("body").split())
        if not body:
            raise PemError(f"empty PEM block {match.group('label').decode()}")
        blocks.append((match.group("label"), _wrap(match.group("label"), body)))
        position = match.end()
    if strict and data[position:].strip():
        raise PemError("unexpected text outside the PEM blocks")
    return blocks


def _wrap(label: bytes, base64_body: bytes) -> bytes:
    """One block in the canonical RFC 7468 form: 64-column lines, no blank lines."""
    lines = [base64_body[i : i + 64] for i in range(0, len(base64_body), 64)]
    return b"\n".join([b"-----BEGIN " + label + b"-----", *lines, b"-----END " + label + b"-----"])


def _load_certificate(block: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(block)
    except ValueError:
        raise PemError(f"{what} is not a valid certificate") from None


def _load_key(block: bytes) -> PrivateKey:
    # The cryptography error may quote parts of the input: replace it, keys never reach a message.
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except TypeError:
        raise PemError("the private key is encrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PemError("the private key block is not a valid private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PemError("the private key is neither EC nor RSA")
    return key


def _certificate_blocks(data: bytes, what: str, *, strict: bool = True) -> list[bytes]:
    blocks = _blocks(data, strict=strict)
    for label, _ in blocks:
        if label != _CERT_LABEL:
            raise PemError(f"{what} holds a {label.decode()} block, expected only certificates")
    return [block for _, block in blocks]


def combined_pem(leaf_pem: bytes, chain_pems: Sequence[bytes], key_pem: bytes) -> bytes:
    """The file HAProxy loads: leaf, intermediates, key; each block normalised, no blank lines.

    Every block is parsed on the way, so a malformed input raises ``PemError`` here rather than
    producing a file HAProxy would refuse.
    """
    certificate_blocks, key_block = _layout(leaf_pem, chain_pems, key_pem)
    for index, block in enumerate(certificate_blocks):
        _load_certificate(block, "the leaf" if index == 0 else f"chain certificate {index}")
    _load_key(key_block)
    return b"\n".join([*certificate_blocks, key_block]) + b"\n"


class Deployable(NamedTuple):
    """What `combine_for_deploy` checked: the bytes to write, parsed, and their leaf's facts."""

    data: bytes
    bundle: CombinedPem
    facts: CertFacts


def combine_for_deploy(
    leaf_pem: bytes,
    chain_pems: Sequence[bytes],
    key_pem: bytes,
    expected_names: Iterable[str],
    now: datetime,
) -> Deployable:
    """`combined_pem`, checked as `validate_for_deploy` checks it, and described.

    Each block is parsed once, by the check, on the very bytes that will be written (not once to
    build them and again to check them), and the leaf's names and placeholder mark are read
    once for both the check and the `CertFacts`.
    """
    certificate_blocks, key_block = _layout(leaf_pem, chain_pems, key_pem)
    data = b"\n".join([*certificate_blocks, key_block]) + b"\n"
    bundle = parse_combined(data)
    facts = describe_cert(bundle.leaf)
    _check_for_deploy(bundle, facts.names, facts.is_placeholder, expected_names, now)
    return Deployable(data, bundle, facts)


def _layout(
    leaf_pem: bytes, chain_pems: Sequence[bytes], key_pem: bytes
) -> tuple[list[bytes], bytes]:
    """The normalised certificate blocks (leaf first) and key block of a combined PEM, checked
    for shape (one leaf, certificates only, one unencrypted key) but not parsed."""
    leaf_blocks = _certificate_blocks(leaf_pem, "the leaf")
    if len(leaf_blocks) != 1:
        raise PemError(f"the leaf must be exactly one certificate, got {len(leaf_blocks)}")
    chain_blocks = [b for pem in chain_pems for b in _certificate_blocks(pem, "the chain")]
    key_blocks = _blocks(key_pem)
    if len(key_blocks) != 1 or key_blocks[0][0] not in _KEY_LABELS:
        raise PemError("the key must be exactly one unencrypted PEM private key")
    return leaf_blocks + chain_blocks, key_blocks[0][1]


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM certificate file (a leaf, a chain, a CA bundle), in order;
    explanatory text between them is allowed, other PEM blocks are not."""
    blocks = _certificate_blocks(data, "the file", strict=False)
    if not blocks:
        raise PemError("no certificate found")
    return [_load_certificate(block, f"certificate {i + 1}") for i, block in enumerate(blocks)]


def parse_combined(data: bytes) -> CombinedPem:
    """Parse a combined PEM; refuse anything HAProxy would refuse or serve wrongly."""
    bundle = _parse_combined(data)
    if not key_matches(bundle.leaf, bundle.key):
        raise PemError("the private key does not match the certificate")
    return bundle


def _parse_combined(data: bytes) -> CombinedPem:
    if not data.strip():
        raise PemError("the file is empty")
    blocks = _blocks(data)
    if not blocks:
        raise PemError("not a PEM file: no PEM block found")
    certificates: list[x509.Certificate] = []
    keys: list[PrivateKey] = []
    for label, block in blocks:
        if label == _CERT_LABEL:
            if keys:
                raise PemError("a certificate follows the private key")
            certificates.append(_load_certificate(block, f"certificate {len(certificates) + 1}"))
        elif label in _KEY_LABELS:
            keys.append(_load_key(block))
        elif label == b"ENCRYPTED PRIVATE KEY":
            raise PemError("the private key is encrypted; HAProxy needs it in the clear")
        else:
            raise PemError(f"unexpected PEM block {label.decode()}")
    if not certificates:
        raise PemError("no certificate found")
    if not keys:
        raise PemError("no private key found")
    if len(keys) > 1:
        raise PemError(f"{len(keys)} private keys found, expected one")
    return CombinedPem(leaf=certificates[0], chain=certificates[1:], key=keys[0])


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    """Whether ``key`` is the private half of the certificate's public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def key_type_name(key: object) -> str | None:
    """The ``KeyType`` value (``ec-p256``, ``rsa-2048``, ...) of a public or private key."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name)
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return None


def normalise_names(names: Iterable[str]) -> frozenset[str]:
    """Names compared the way a TLS client would: DNS names case-insensitively, IPs canonically."""
    return frozenset(comparable_name(name) for name in names)


def cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's subjectAltName DNS names and IP addresses, in order.

    A certificate without SANs falls back to its common name: clients stopped honouring the CN
    (RFC 6125 §6.4.4), but reporting it says more than reporting nothing.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(attribute.value) for attribute in common_names)
    names = [str(name) for name in san.get_values_for_type(x509.DNSName)]
    names += [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def describe_cert(cert: x509.Certificate) -> CertFacts:
    serial = cert.serial_number
    serial_hex = format(serial, "X")
    if len(serial_hex) % 2:
        serial_hex = "0" + serial_hex
    return CertFacts(
        serial_hex=serial_hex,
        serial=serial,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        names=cert_names(cert),
        issuer=cert.issuer.rfc4514_string(),
        is_placeholder=is_placeholder(cert),
        key_type=key_type_name(cert.public_key()),
    )


def validate_for_deploy(
    pem_bytes: bytes,
    expected_names: Iterable[str],
    now: datetime,
    *,
    allow_placeholder: bool = False,
) -> CombinedPem:
    """Check a combined PEM before it replaces the deployed one; raise ``PemError`` if unfit.

    A good certificate must never be replaced by a bad one, so this refuses a malformed bundle, a
    key that does not match, an expired leaf, a leaf that does not cover every expected name, a
    chain whose first certificate did not sign the leaf, and (unless asked) a placeholder.
    """
    bundle = parse_combined(pem_bytes)
    leaf = bundle.leaf
    _check_for_deploy(
        bundle,
        cert_names(leaf),
        is_placeholder(leaf),
        expected_names,
        now,
        allow_placeholder=allow_placeholder,
    )
    return bundle


def _check_for_deploy(
    bundle: CombinedPem,
    names: Iterable[str],
    placeholder: bool,
    expected_names: Iterable[str],
    now: datetime,
    *,
    allow_placeholder: bool = False,
) -> None:
    """`validate_for_deploy`'s checks of a parsed bundle (``names`` and ``placeholder``: its
    leaf's, as `cert_names` and `is_placeholder` read them)."""
    leaf = bundle.leaf
    if now >= leaf.not_valid_after_utc:
        raise PemError(f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}")
    missing = normalise_names(expected_names) - normalise_names(names)
    if missing:
        raise PemError(f"the certificate does not cover {', '.join(sorted(missing))}")
    if placeholder and not allow_placeholder:
        raise PemError("the certificate is a placeholder")
    for child, parent in zip([leaf, *bundle.chain], bundle.chain, strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise PemError(
                f"the chain is out of order: {child.subject.rfc4514_string()} "
                f"is not signed by {parent.subject.rfc4514_string()}"
            ) from None
