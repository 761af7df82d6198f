"""Identifier validation and certificate names: pure functions, no I/O.

A certificate covers ``dns`` names (RFC 8555 §9.7.7) and ``ip`` addresses (RFC 8738). Names
are checked here, before any order is placed, so that a typo fails at start-up with a clear
message instead of as a ``rejectedIdentifier`` problem from the CA half-way through a run.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

__all__ = [
    "CERT_NAME_PATTERN",
    "MAX_CERT_NAME",
    "IdentifierKind",
    "certificate_name",
    "comparable_name",
    "is_wildcard",
    "normalize_dns_name",
    "normalize_identifier",
    "validate_certificate_name",
]

IdentifierKind = Literal["dns", "ip"]

# RFC 1035 §2.3.1 "LDH" label, as relaxed by RFC 1123 §2.1 (a label may start with a digit).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_LABEL = 63
_MAX_NAME = 253  # 255 octets on the wire, minus the length octet and the root label
CERT_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
# A certificate name is part of file names: <name>.pem, <name>.lock, the directory <name>.
# Linux refuses a file name longer than NAME_MAX (255 bytes) with ENAMETOOLONG, which would
# only show at the first write; the longest suffix is ".lock". (Temporary files,
# .<name>.pem.<random>, keep the end of a long name and so fit whatever the name.)
NAME_MAX = 255
MAX_CERT_NAME = NAME_MAX - len(".lock")
_WILDCARD_PREFIX = "*."
_WILDCARD_FILE_PREFIX = "_wildcard."


def _to_ascii(name: str) -> str:
    """U-labels become A-labels (``bücher.example`` -> ``xn--bcher-kva.example``).

    The stdlib ``idna`` codec implements IDNA 2003 (RFC 3490), which also lower-cases and
    NFKC-normalises (nameprep); that is what resolvers and CAs accept for the common cases.
    """
    if name.isascii():
        return name.lower()
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"{name!r} is not a valid internationalised domain name") from exc


def _check_label(label: str, name: str) -> None:
    if not label:
        raise ValueError(f"{name!r} has an empty label")
    if len(label) > _MAX_LABEL:
        raise ValueError(f"{name!r} has a label longer than {_MAX_LABEL} characters")
    if not _LABEL.fullmatch(label):
        raise ValueError(
            f"{name!r}: label {label!r} may hold only letters, digits and inner hyphens"
        )
    if label.startswith("xn--"):
        # An A-label must decode as punycode, or the CA will refuse it later.
        try:
            label.encode("ascii").decode("idna")
        except UnicodeError as exc:
            raise ValueError(f"{name!r}: label {label!r} is not valid punycode") from exc


def normalize_dns_name(name: str) -> str:
    """Return ``name`` lower-cased, as A-labels, without a trailing dot; ``ValueError`` if invalid.

    A wildcard is allowed only as the whole leftmost label (RFC 8555 §7.1.3: "*." prefix).
    """
    text = name.strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text:
        raise ValueError("empty name")
    wildcard = text.startswith(_WILDCARD_PREFIX)
    base = text[len(_WILDCARD_PREFIX) :] if wildcard else text
    if "*" in base:
        raise ValueError(f"{name!r}: a wildcard '*' may only be the whole leftmost label")
    ascii_name = _to_ascii(base)
    if len(ascii_name) + (len(_WILDCARD_PREFIX) if wildcard else 0) > _MAX_NAME:
        raise ValueError(f"{name!r} is longer than {_MAX_NAME} characters")
    labels = ascii_name.split(".")
    for label in labels:
        _check_label(label, name)
    # RFC 3696 §2: a top-level domain is never all-numeric; such a "name" is a mistyped address.
    if labels[-1].isdigit():
        raise ValueError(f"{name!r} is neither a valid IP address nor a DNS name")
    if wildcard and len(labels) < 2:
        raise ValueError(f"{name!r}: a wildcard must sit below a domain, not a top-level name")
    return (_WILDCARD_PREFIX if wildcard else "") + ascii_name


def normalize_identifier(value: str) -> tuple[IdentifierKind, str]:
    """Classify and normalise one name: an IP literal is ``ip`` (RFC 8738), anything else ``dns``.

    IP addresses come back in canonical form (``2001:DB8::0:1`` -> ``2001:db8::1``).
    """
    text = value.strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return "dns", normalize_dns_name(text)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{value!r}: an address with a zone index cannot be in a certificate")
    return "ip", str(address)


def comparable_name(name: str) -> str:
    """A name as a TLS client compares it: an IP address canonical, a DNS name without a
    trailing dot and in lower case. For names already stored or read from a certificate, so it
    never refuses one (``normalize_identifier`` is the check for names a user writes)."""
    try:
        return str(ipaddress.ip_address(name.strip()))
    except ValueError:
        return name.strip().rstrip(".").lower()


def is_wildcard(name: str) -> bool:
    return name.startswith(_WILDCARD_PREFIX)


def validate_certificate_name(name: str) -> str:
    """A certificate name becomes a file name, ``<certs_dir>/<name>.pem``: keep it safe."""
    if not CERT_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"certificate name {name!r} may hold only letters, digits, '.', '_' and '-'"
        )
    if name.startswith("."):
        # Dot-files are the sidecar's temporary files, which HAProxy skips and start-up removes.
        raise ValueError(f"certificate name {name!r} must not start with '.'")
    if len(name) > MAX_CERT_NAME:  # ASCII only (the pattern above), so characters are bytes
        raise ValueError(
            f"certificate name {name[:20]}... is {len(name)} characters long, over"
            f" {MAX_CERT_NAME} (file names are limited to {NAME_MAX} bytes); give a shorter"
            " name (the TOML [[certificates]] name key)"
        )
    return name


def certificate_name(first_identifier: str) -> str:
    """Derive a certificate's name from its first (normalised) identifier.

    ``*.a.b`` -> ``_wildcard.a.b``; an IPv6 address has its colons replaced by ``-`` (the
    ``ipv6-literal`` convention) since ``:`` is not allowed in a certificate name.
    """
    if is_wildcard(first_identifier):
        derived = _WILDCARD_FILE_PREFIX + first_identifier[len(_WILDCARD_PREFIX) :]
    else:
        derived = first_identifier.replace(":", "-")
    return validate_certificate_name(derived)
