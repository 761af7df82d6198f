"""Certificates (RFC 8555 §7.4.2, §7.6): download with alternate chains, checks, revocation.

§7.4.2: "To download the issued certificate, the client simply sends a POST-as-GET request to
the certificate URL." The answer is ``application/pem-certificate-chain`` (§9.1), and "The
server MAY provide one or more link relation header fields [RFC8288] with relation
"alternate"". What the CA hands back is checked against what was asked before anyone stores
it (:func:`verify_issued_certificate`). The pure parts (chain splitting, chain choice, the
check) are plain functions with no I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_client._account import post_as_account
from ca_client._session import Session, logger
from ca_client.errors import CertificateMismatch, MalformedResponse
from ca_client.keys import PrivateKey, b64url, public_key_der
from ca_client.models import Identifier, serial_hex
from ca_client.renewal_info import load_certificate
from ca_client.transport import PEM_CHAIN, AcmeResponse

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----"
)


# --- pure ---------------------------------------------------------------------------------------


def split_pem_chain(text: str) -> list[str]:
    """The certificates of a ``application/pem-certificate-chain`` body (RFC 8555 §9.1), each
    normalised to ``\\n`` line ends with one trailing newline."""
    blocks = []
    for match in _PEM_CERTIFICATE.finditer(text):
        lines = [line.strip() for line in match.group(0).splitlines() if line.strip()]
        blocks.append("\n".join(lines) + "\n")
    return blocks


def _top_issuer_common_name(chain: Sequence[str]) -> str | None:
    """The issuer CN of the last certificate of a chain: how certbot/lego name a chain."""
    try:
        top = x509.load_pem_x509_certificate(chain[-1].encode("ascii"))
    except ValueError:
        return None
    names = top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def select_chain(chains: Sequence[Sequence[str]], preferred_chain: str | None) -> int:
    """Index of the chain whose top certificate's issuer CN is ``preferred_chain``; else 0."""
    if preferred_chain:
        wanted = preferred_chain.strip().casefold()
        for index, chain in enumerate(chains):
            name = _top_issuer_common_name(chain)
            if name is not None and name.casefold() == wanted:
                return index
    return 0


def verify_issued_certificate(
    leaf_pem: str, cert_key: PrivateKey, identifiers: Iterable[Identifier]
) -> x509.Certificate:
    """Check that the CA issued what was asked: the CSR's key, every requested name.

    Raises :class:`CertificateMismatch`. A CA bug or a mix-up of orders would otherwise put a
    certificate on disk that HAProxy refuses (wrong key) or serves for the wrong names.
    """
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem.encode("ascii"))
    except ValueError as exc:
        raise MalformedResponse("the issued leaf certificate does not parse") from exc
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or (
        public_key_der(leaf_key) != public_key_der(cert_key)
    ):
        raise CertificateMismatch(
            f"the issued certificate (serial {serial_hex(leaf.serial_number)}) is not for the key"
            " of the CSR"
        )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = {name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)}
        ip_addresses = set(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns_names, ip_addresses = set(), set()
    missing = []
    for identifier in identifiers:
        if identifier.type == "ip":
            if ipaddress.ip_address(identifier.value) not in ip_addresses:
                missing.append(identifier.value)
        elif identifier.value.lower().rstrip(".") not in dns_names:
            missing.append(identifier.value)
    if missing:
        raise CertificateMismatch(
            f"the issued certificate (serial {serial_hex(leaf.serial_number)}) does not cover "
            + ", ".join(missing)
        )
    return leaf


# --- download (§7.4.2) --------------------------------------------------------------------------


async def _fetch_chain(
    session: Session, url: str, deadline: float
) -> tuple[list[str], AcmeResponse]:
    response = await post_as_account(session, url, None, deadline=deadline, accept=PEM_CHAIN)
    chain = split_pem_chain(response.text())
    if not chain:
        raise MalformedResponse(
            f"no PEM certificate in the answer ({response.content_type or 'no type'})",
            url=url,
        )
    return chain, response


async def download_certificate(
    session: Session, url: str, *, preferred_chain: str | None, deadline: float | None
) -> tuple[list[str], list[list[str]], str]:
    """The chain to use, the other chains, and the URL the chosen one came from.

    §7.4.2: "The server MAY provide one or more link relation header fields [RFC8288] with
    relation "alternate". Each such field SHOULD express an alternative certificate chain
    starting with the same end-entity certificate." All are fetched, concurrently.
    """
    deadline = session.deadline(deadline)
    default_chain, response = await _fetch_chain(session, url, deadline)
    alternate_urls = response.links_with_rel("alternate")
    chains = [default_chain]
    urls = [url]
    if alternate_urls:
        fetched = await asyncio.gather(
            *(_fetch_chain(session, alternate, deadline) for alternate in alternate_urls)
        )
        chains.extend(chain for chain, _ in fetched)
        urls.extend(alternate_urls)
    chosen = select_chain(chains, preferred_chain)
    others = [chain for index, chain in enumerate(chains) if index != chosen]
    return chains[chosen], others, urls[chosen]


# --- revocation (§7.6) --------------------------------------------------------------------------


async def revoke(
    session: Session,
    cert: x509.Certificate | bytes | str,
    reason: int | None,
    *,
    cert_key: PrivateKey | None,
    deadline: float | None,
) -> None:
    """POST the certificate (DER, base64url) and ``reason`` to revokeCert (§7.6).

    §7.6: "Revocation requests are different from other ACME requests in that they can be
    signed with either an account key pair or the key pair in the certificate." With
    ``cert_key`` the request carries that key as ``jwk``; else it is signed by the account.
    """
    deadline = session.deadline(deadline)
    directory = await session.directory(deadline)
    certificate = load_certificate(cert)
    payload: dict[str, Any] = {"certificate": b64url(certificate.public_bytes(Encoding.DER))}
    if reason is not None:
        payload["reason"] = reason
    if cert_key is not None:
        await session.transport.post(
            directory.revoke_cert, payload, cert_key, kid=None, deadline=deadline
        )
    else:
        await post_as_account(session, directory.revoke_cert, payload, deadline=deadline)
    logger.info(
        "certificate serial %s revoked (reason %s)",
        serial_hex(certificate.serial_number),
        reason,
        extra={"acme_event": "certificate_revoked"},
    )
