"""What every challenge solver shares: the solver protocol and the key-authorization maths.

RFC 8555 §8.1: "A key authorization is a string that concatenates the token for the challenge
with a key fingerprint, separated by a "." character: keyAuthorization = token || '.' ||
base64url(Thumbprint(accountKey))".
"""

from __future__ import annotations

import base64
import hashlib
from typing import Protocol

from ca_client.errors import AcmeError
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


# RFC 8555 §8.1: a token "MUST NOT contain any characters outside the base64url alphabet";
# §8.3 repeats it for http-01 and adds that the token names a file path. Refusing anything else
# keeps a hostile or broken CA from steering the responders with "/" or ".." in a token.
_BASE64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def is_base64url(value: str) -> bool:
    """True for a non-empty string of the unpadded base64url alphabet only (RFC 8555 §6.1)."""
    return bool(value) and all(char in _BASE64URL_ALPHABET for char in value)


def check_key_authorization(token: str, key_authorization: str) -> None:
    """Refuse a token or key authorization that RFC 8555 §8.1 would not produce.

    A key authorization is ``token "." base64url(thumbprint)``; anything else is a caller's bug
    or a CA sending junk, and serving it would only fail the validation later, less clearly.
    """
    if not is_base64url(token):
        raise ChallengeSetupError(f"refusing challenge token {token[:64]!r}: not base64url")
    prefix, dot, thumbprint = key_authorization.partition(".")
    if prefix != token or not dot or not is_base64url(thumbprint):
        raise ChallengeSetupError(
            f"key authorization for token {token[:64]!r} is not '<token>.<base64url thumbprint>'"
        )


class ChallengeSetupError(AcmeError):
    """A solver could not make its proof available (bind failed, hook failed, bad token)."""


class ResponderBindError(ChallengeSetupError):
    """A responder could not listen on its address (in use, no permission, no such address)."""

    def __init__(self, challenge_type: str, address: str, reason: str) -> None:
        super().__init__(f"{challenge_type} responder cannot listen on {address}: {reason}")
        self.challenge_type = challenge_type
        self.address = address
        self.reason = reason


class DnsHookError(ChallengeSetupError):
    """The dns-01 hook did not run, timed out, or exited non-zero."""

    def __init__(self, hook: str, action: str, detail: str, returncode: int | None = None) -> None:
        super().__init__(f"dns-01 hook {hook!r} {action} failed: {detail}")
        self.hook = hook
        self.action = action
        self.detail = detail
        self.returncode = returncode


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets as RFC 3986 writes them."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
