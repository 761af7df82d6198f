"""What every challenge solver shares: the solver protocol and the key-authorization maths.

RFC 8555 §8.1: "A key authorization is a string that concatenates the token for the challenge
with a key fingerprint, separated by a "." character: keyAuthorization = token || '.' ||
base64url(Thumbprint(accountKey))".
"""

from __future__ import annotations

import base64
import hashlib
from typing import Protocol

from ca_client.models import Identifier


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 8555 §6.1)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_authorization(token: str, thumbprint: str) -> str:
    return f"{token}.{thumbprint}"


def dns01_txt_value(key_authorization: str) -> str:
    """RFC 8555 §8.4: the TXT record holds base64url(SHA-256(keyAuthorization))."""
    return b64url(hashlib.sha256(key_authorization.encode("ascii")).digest())


def dns01_record_name(identifier: Identifier) -> str:
    """RFC 8555 §8.4: ``_acme-challenge.`` prepended; a wildcard's ``*.`` is dropped first."""
    name = identifier.value.removeprefix("*.").rstrip(".")
    return f"_acme-challenge.{name}."


def tls_alpn01_digest(key_authorization: str) -> bytes:
    """RFC 8737 §3: the acmeIdentifier extension holds SHA-256(keyAuthorization)."""
    return hashlib.sha256(key_authorization.encode("ascii")).digest()


class ChallengeSolver(Protocol):
    """Makes one challenge type provable for the CA, then takes it away again."""

    @property
    def challenge_type(self) -> str: ...

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        """Make the proof available; return only once the CA can see it."""

    async def cleanup(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        """Remove the proof; never raises for a proof that is already gone."""
