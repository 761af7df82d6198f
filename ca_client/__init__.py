"""An async ACME (RFC 8555) client on httpx and cryptography.

The names below are imported lazily (PEP 562): ``import ca_client.models`` or
``from ca_client.keys import KeyType`` does not pay for httpx, which only ``transport.py``
imports and only :class:`AcmeClient` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ca_client.client import AcmeClient
    from ca_client.errors import (
        AccountDoesNotExist,
        AcmeError,
        AcmeProblem,
        ACMETimeout,
        BadCSR,
        BadNonce,
        CAUnreachable,
        CertificateMismatch,
        MalformedResponse,
        NoSolver,
        NotACME,
        OrderFailed,
        RateLimited,
        RejectedIdentifier,
        ServerInternal,
        TLSVerificationFailed,
        TransportError,
        Unauthorized,
    )
    from ca_client.keys import KeyType, PrivateKey, generate_private_key
    from ca_client.models import (
        Account,
        Authorization,
        Challenge,
        Directory,
        ExternalAccountBinding,
        Identifier,
        IssuedCertificate,
        Order,
        RenewalInfo,
    )
    from ca_client.renewal_info import certificate_id

_EXPORTS: dict[str, str] = {
    "AcmeClient": "ca_client.client",
    "KeyType": "ca_client.keys",
    "PrivateKey": "ca_client.keys",
    "generate_private_key": "ca_client.keys",
    "certificate_id": "ca_client.renewal_info",
    **{
        name: "ca_client.models"
        for name in (
            "Account",
            "Authorization",
            "Challenge",
            "Directory",
            "ExternalAccountBinding",
            "Identifier",
            "IssuedCertificate",
            "Order",
            "RenewalInfo",
        )
    },
    **{
        name: "ca_client.errors"
        for name in (
            "ACMETimeout",
            "AccountDoesNotExist",
            "AcmeError",
            "AcmeProblem",
            "BadCSR",
            "BadNonce",
            "CAUnreachable",
            "CertificateMismatch",
            "MalformedResponse",
            "NoSolver",
            "NotACME",
            "OrderFailed",
            "RateLimited",
            "RejectedIdentifier",
            "ServerInternal",
            "TLSVerificationFailed",
            "TransportError",
            "Unauthorized",
        )
    },
}

__all__ = [
    "ACMETimeout",
    "Account",
    "AccountDoesNotExist",
    "AcmeClient",
    "AcmeError",
    "AcmeProblem",
    "Authorization",
    "BadCSR",
    "BadNonce",
    "CAUnreachable",
    "CertificateMismatch",
    "Challenge",
    "Directory",
    "ExternalAccountBinding",
    "Identifier",
    "IssuedCertificate",
    "KeyType",
    "MalformedResponse",
    "NoSolver",
    "NotACME",
    "Order",
    "OrderFailed",
    "PrivateKey",
    "RateLimited",
    "RejectedIdentifier",
    "RenewalInfo",
    "ServerInternal",
    "TLSVerificationFailed",
    "TransportError",
    "Unauthorized",
    "certificate_id",
    "generate_private_key",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ca_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
