"""Certificate signing requests for finalize (RFC 8555 §7.4, RFC 8738 §3)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_client.keys import PrivateKey
from ca_client.models import Identifier

# RFC 5280 upper bound for a commonName.
_MAX_COMMON_NAME = 64


def build_csr(key: PrivateKey, identifiers: Sequence[Identifier]) -> bytes:
    """A DER CSR naming every identifier in a subjectAltName.

    RFC 8555 §7.4: "The CSR MUST indicate the exact same set of requested identifiers as the
    initial newOrder request. Identifiers of type "dns" MUST appear either in the commonName
    portion of the requested subject name or in an extensionRequest attribute requesting a
    subjectAltName extension, or both." All go in the SAN; the first DNS name is also the CN
    because some relying software still looks there. RFC 8738 §3 puts IP identifiers only in
    the SAN as iPAddress: a CN holding an IP makes step-ca see an extra DNS name and answer
    badCSR, so an IP-only CSR has an empty subject.
    """
    if not identifiers:
        raise ValueError("a CSR needs at least one identifier")
    names: list[x509.GeneralName] = []
    common_name: str | None = None
    for identifier in identifiers:
        if identifier.type == "dns":
            names.append(x509.DNSName(identifier.value))
            if common_name is None and len(identifier.value) <= _MAX_COMMON_NAME:
                common_name = identifier.value
        elif identifier.type == "ip":
            names.append(x509.IPAddress(ipaddress.ip_address(identifier.value)))
        else:
            raise ValueError(f"unsupported identifier type {identifier.type!r}")
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
    hash_algorithm: hashes.SHA256 | hashes.SHA384 = hashes.SHA256()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        hash_algorithm = hashes.SHA384()
    csr = builder.sign(key, hash_algorithm)
    return csr.public_bytes(Encoding.DER)


__all__ = ["build_csr"]
